"""`data build`: deterministic, group-aware, domain-stratified splits with a complete manifest."""

from __future__ import annotations

import filecmp
import json
from collections import Counter, defaultdict

import pytest

from biasgrpo.data_synth.build import BuildConfig, build_dataset, group_split, load_manifest
from biasgrpo.data_synth.schema import PreferenceRecord, load_records

SMALL = ["crows_pairs", "stereoset", "bold"]


@pytest.fixture(scope="module")
def full_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    return out, build_dataset(BuildConfig(out=str(out)), progress=False)


def test_manifest_counts_every_benchmark_item(full_build):
    out, manifest = full_build
    assert manifest["loaded_per_source"] == {
        "bbq": 58492,
        "bold": 23674,
        "crows_pairs": 1508,
        "holisticbias": 14950,
        "stereoset": 4229,
    }
    assert manifest["rows_skipped"]["bold"] == {"empty prompt": 5}
    assert sum(manifest["loaded_per_source_domain"]["bbq"].values()) == 58492
    pref = manifest["preference"]
    written = {s: sum(1 for _ in open(out / f"{s}.jsonl")) for s in ("train", "val", "test")}
    assert pref["by_split"] == written
    # loaded = written + duplicates, per source
    for src in ("bbq", "crows_pairs", "stereoset"):
        assert (
            pref["by_source"][src]["total"] + manifest["duplicates_dropped"].get(src, 0)
            == manifest["loaded_per_source"][src]
        )
    assert manifest["licences"]["bbq"]["licence"] == "CC BY 4.0"
    assert load_manifest(out)["seed"] == 13


def test_no_benchmark_item_crosses_splits(full_build):
    out, _ = full_build
    where: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "val", "test"):
        for rec in load_records(out / f"{split}.jsonl"):
            assert isinstance(rec, PreferenceRecord)
            key = (
                f"bbq:{rec.meta['category']}:{rec.meta['question_index']}" if rec.source == "bbq" else rec.id
            )
            where[key].add(split)
    assert all(len(s) == 1 for s in where.values())
    prompt_where: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "test"):
        for rec in load_records(out / f"prompts_{split}.jsonl"):
            key = rec.meta.get("name") or rec.meta.get("descriptor")
            prompt_where[f"{rec.source}:{key}"].add(split)
    assert all(len(s) == 1 for s in prompt_where.values())


def test_splits_are_stratified_by_domain(full_build):
    _, manifest = full_build
    for domain, c in manifest["preference"]["by_domain"].items():
        if c["total"] >= 500:
            assert 0.7 <= c["train"] / c["total"] <= 0.9, domain
            assert c["val"] > 0 and c["test"] > 0, domain


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = build_dataset(BuildConfig(out=str(tmp_path / "a"), sources=SMALL, seed=1), progress=False)
    b = build_dataset(BuildConfig(out=str(tmp_path / "b"), sources=SMALL, seed=1), progress=False)
    c = build_dataset(BuildConfig(out=str(tmp_path / "c"), sources=SMALL, seed=2), progress=False)
    for name in a["files"]:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    assert not filecmp.cmp(tmp_path / "a" / "test.jsonl", tmp_path / "c" / "test.jsonl", shallow=False)
    assert a["preference"]["by_split"] == b["preference"]["by_split"]
    assert c["preference"]["by_source"]["crows_pairs"]["total"] == 1507


def test_extra_local_table_and_subsample(tmp_path, fixtures_dir):
    m = build_dataset(
        BuildConfig(
            out=str(tmp_path),
            sources=["crows_pairs"],
            extra=[str(fixtures_dir / "biasdpo_sample.jsonl")],
            max_per_source=100,
        ),
        progress=False,
    )
    assert m["loaded_per_source"] == {"biasdpo_sample": 5, "crows_pairs": 100}
    assert m["licences"]["biasdpo_sample"] == {"licence": "user supplied"}


def test_group_split_fractions_and_grouping():
    recs = [
        PreferenceRecord("", f"c{i}", f"r{i}", "age" if i % 2 else "gender", "t", str(i)) for i in range(1000)
    ]
    groups = [str(i // 4) for i in range(1000)]
    split = group_split(recs, groups, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    sizes = Counter({k: len(v) for k, v in split.items()})
    assert sum(sizes.values()) == 1000
    assert abs(sizes["train"] - 800) <= 8 and abs(sizes["test"] - 100) <= 8
    group_of = {r.id: groups[int(r.id)] for r in recs}
    seen: dict[str, str] = {}
    for name, rs in split.items():
        for r in rs:
            assert seen.setdefault(group_of[r.id], name) == name


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sources": ["nope"]}, "unknown source"),
        ({"val_frac": 0.6, "test_frac": 0.5}, "must be < 1"),
        ({"test_frac": -0.1}, "test_frac"),
        ({"max_per_source": 0}, "max_per_source"),
        ({"stereoset_split": "x"}, "stereoset_split"),
    ],
)
def test_config_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BuildConfig(**kwargs)


def test_manifest_is_json(full_build):
    out, _ = full_build
    json.loads((out / "manifest.json").read_text())
