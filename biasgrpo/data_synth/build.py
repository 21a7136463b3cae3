"""Build the dataset every later stage uses: load sources, deduplicate, split, write, document.

Output folder (``biasgrpo data build --out DIR``)::

    DIR/train.jsonl  DIR/val.jsonl  DIR/test.jsonl      preference records (CrowS-Pairs, StereoSet, BBQ, Hub)
    DIR/prompts_train.jsonl  DIR/prompts_test.jsonl     prompt records for GRPO / evaluation (BOLD, HolisticBias)
    DIR/manifest.json                                   counts per source/domain/split, seed, licences, config

Splitting is group-aware and stratified by domain: every record carries the benchmark item it came from
(a BBQ template, a StereoSet item, a BOLD person, a HolisticBias descriptor), whole groups are assigned
to splits, and within each domain groups are dealt to whichever split is furthest below its target
share. The shuffle is seeded, so the same sources and seed always give the same files.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biasgrpo.data_synth import sources
from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord, Record, write_json, write_jsonl

logger = logging.getLogger(__name__)

PREFERENCE_SPLITS = ("train", "val", "test")
PROMPT_SPLITS = ("train", "test")


@dataclass
class BuildConfig:
    """Settings of ``biasgrpo data build``; saved into the manifest."""

    out: str = "data/build"
    sources: list[str] = field(default_factory=lambda: list(sources.OFFLINE_LOADERS))
    extra: list[str] = field(default_factory=list)  # Hub ids or local files/folders of preference tables
    seed: int = 13
    val_frac: float = 0.1
    test_frac: float = 0.1
    prompt_test_frac: float = 0.1
    stereoset_split: str = "dev"
    max_per_source: int | None = None  # seeded subsample per source, for quick experiments
    skip_invalid: bool = False  # for the extra tables only; skipped rows are counted in the manifest

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in sources.OFFLINE_LOADERS]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; choose from {sorted(sources.OFFLINE_LOADERS)}")
        for name in ("val_frac", "test_frac", "prompt_test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError(f"val_frac + test_frac must be < 1, got {self.val_frac + self.test_frac}")
        if self.max_per_source is not None and self.max_per_source < 1:
            raise ValueError(f"max_per_source must be >= 1, got {self.max_per_source}")
        if self.stereoset_split not in ("dev", "test", "all"):
            raise ValueError(f"stereoset_split must be dev, test or all, got {self.stereoset_split!r}")


_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text.strip().lower())


def _dedup_key(rec: Record) -> tuple[str, ...]:
    if isinstance(rec, PreferenceRecord):
        return ("p", _norm(rec.prompt), _norm(rec.chosen), _norm(rec.rejected))
    return ("q", _norm(rec.prompt))


def deduplicate(records: list[Record], groups: list[str]) -> tuple[list[Record], list[str], Counter[str]]:
    """Drop exact duplicates after whitespace/case normalisation; returns the drop count per source."""
    seen: set[tuple[str, ...]] = set()
    kept: list[Record] = []
    kept_groups: list[str] = []
    dropped: Counter[str] = Counter()
    for rec, group in zip(records, groups, strict=True):
        key = _dedup_key(rec)
        if key in seen:
            dropped[rec.source] += 1
            continue
        seen.add(key)
        kept.append(rec)
        kept_groups.append(group)
    return kept, kept_groups, dropped


def group_split(
    records: list[Record], groups: list[str], fractions: dict[str, float], seed: int
) -> dict[str, list[Record]]:
    """Assign whole groups to splits, stratified by domain, deterministically for a given seed.

    ``fractions`` maps split name -> share (summing to 1). Within a domain, groups (in a seeded shuffle of
    their sorted keys) go to the split whose record count is furthest below its target.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_domain: dict[str, list[str]] = defaultdict(list)
    for g in sorted(members):
        by_domain[records[members[g][0]].domain].append(g)
    out: dict[str, list[int]] = {name: [] for name in fractions}
    for domain in sorted(by_domain):
        keys = by_domain[domain]
        random.Random(f"{seed}:{domain}").shuffle(keys)
        total = sum(len(members[g]) for g in keys)
        counts = dict.fromkeys(fractions, 0)
        for g in keys:
            # deficit = how far a split is below its target share of this domain
            name = max(fractions, key=lambda s: (fractions[s] * total - counts[s], fractions[s]))
            out[name].extend(members[g])
            counts[name] += len(members[g])
    return {name: [records[i] for i in sorted(idx)] for name, idx in out.items()}


def _subsample(records: list[Record], groups: list[str], n: int, seed: int) -> tuple[list[Record], list[str]]:
    if len(records) <= n:
        return records, groups
    idx = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in idx], [groups[i] for i in idx]


def build_dataset(config: BuildConfig, progress: bool = True) -> dict[str, Any]:
    """Load, deduplicate, split and write the dataset; returns the manifest (also written to disk)."""
    from tqdm.auto import tqdm

    start = time.time()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    prefs: list[Record] = []
    pref_groups: list[str] = []
    prompts: list[Record] = []
    prompt_groups: list[str] = []
    loaded: Counter[str] = Counter()
    raw_domains: dict[str, Counter[str]] = defaultdict(Counter)
    skipped: dict[str, dict[str, int]] = {}
    jobs: list[tuple[str, Any]] = [(name, sources.OFFLINE_LOADERS[name]) for name in config.sources]
    jobs += [(str(x), None) for x in config.extra]
    for name, loader in tqdm(jobs, desc="loading sources", disable=not progress):
        if loader is None:
            result = sources.load_preference_table(name, skip_invalid=config.skip_invalid)
        elif name == "stereoset":
            result = loader(split=config.stereoset_split)
        else:
            result = loader()
        if result.skipped:
            skipped[name] = result.skipped
        recs, grps = result.records, result.groups
        if config.max_per_source is not None:
            recs, grps = _subsample(recs, grps, config.max_per_source, config.seed)
        for rec, grp in zip(recs, grps, strict=True):
            loaded[rec.source] += 1
            raw_domains[rec.source][rec.domain] += 1
            if isinstance(rec, PromptRecord):
                prompts.append(rec)
                prompt_groups.append(grp)
            else:
                prefs.append(rec)
                pref_groups.append(grp)

    prefs, pref_groups, dropped_p = deduplicate(prefs, pref_groups)
    prompts, prompt_groups, dropped_q = deduplicate(prompts, prompt_groups)
    pref_fracs = {
        "train": 1 - config.val_frac - config.test_frac,
        "val": config.val_frac,
        "test": config.test_frac,
    }
    pref_splits = group_split(prefs, pref_groups, pref_fracs, config.seed)
    prompt_fracs = {"train": 1 - config.prompt_test_frac, "test": config.prompt_test_frac}
    prompt_splits = group_split(prompts, prompt_groups, prompt_fracs, config.seed)

    files: dict[str, int] = {}
    for name in PREFERENCE_SPLITS:
        files[f"{name}.jsonl"] = write_jsonl(out / f"{name}.jsonl", pref_splits[name])
    for name in PROMPT_SPLITS:
        files[f"prompts_{name}.jsonl"] = write_jsonl(out / f"prompts_{name}.jsonl", prompt_splits[name])

    def counts(split_map: dict[str, list[Record]]) -> dict[str, Any]:
        per: dict[str, Any] = {"by_split": {}, "by_source": {}, "by_domain": {}}
        for split, recs in split_map.items():
            per["by_split"][split] = len(recs)
            for rec in recs:
                per["by_source"].setdefault(rec.source, Counter())[split] += 1
                per["by_domain"].setdefault(rec.domain, Counter())[split] += 1
        for key in ("by_source", "by_domain"):
            per[key] = {
                k: dict(sorted(v.items())) | {"total": sum(v.values())} for k, v in sorted(per[key].items())
            }
        return per

    used_sources = sorted(set(loaded))
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": config.seed,
        "config": asdict(config),
        "files": files,
        "loaded_per_source": dict(sorted(loaded.items())),
        "loaded_per_source_domain": {s: dict(sorted(c.items())) for s, c in sorted(raw_domains.items())},
        "duplicates_dropped": dict(sorted((dropped_p + dropped_q).items())),
        "rows_skipped": skipped,
        "preference": counts(pref_splits),
        "prompts": counts(prompt_splits),
        "licences": {
            s: asdict(sources.SOURCE_INFO[s]) if s in sources.SOURCE_INFO else {"licence": "user supplied"}
            for s in used_sources
        },
        "seconds": round(time.time() - start, 1),
    }
    write_json(out / "manifest.json", manifest)
    logger.info("wrote %s in %.1fs", out, manifest["seconds"])
    return manifest


def format_manifest_table(manifest: dict[str, Any]) -> str:
    """A short markdown table of counts per domain and split (what `data build` prints)."""
    lines = ["| kind | domain | " + " | ".join(PREFERENCE_SPLITS) + " | total |", "|---|---|---|---|---|---|"]
    for kind, splits in (("preference", PREFERENCE_SPLITS), ("prompts", PROMPT_SPLITS)):
        for domain, c in manifest[kind]["by_domain"].items():
            cells = [str(c.get(s, 0)) if s in splits else "-" for s in PREFERENCE_SPLITS]
            lines.append(f"| {kind} | {domain} | " + " | ".join(cells) + f" | {c['total']} |")
    lines.append("")
    lines.append("| source | loaded | duplicates dropped | skipped rows | licence |")
    lines.append("|---|---|---|---|---|")
    skipped = {k.split(":")[0]: v for k, v in manifest["rows_skipped"].items()}
    for src, n in manifest["loaded_per_source"].items():
        lic = manifest["licences"].get(src, {}).get("licence", "")
        skip = "; ".join(f"{r}: {c}" for r, c in skipped.get(src, {}).items()) or "0"
        lines.append(f"| {src} | {n} | {manifest['duplicates_dropped'].get(src, 0)} | {skip} | {lic} |")
    return "\n".join(lines)


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a built dataset folder."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the data first with `biasgrpo data build --out {folder}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))
