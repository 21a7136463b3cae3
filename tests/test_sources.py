"""Every loader on the real offline benchmark files (counts and field mapping) and on Hub-format fixtures."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from biasgrpo.data_synth import sources
from biasgrpo.data_synth.domains import CORE_DOMAINS, DOMAINS, infer_domain, normalise_domain
from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord, RecordError


@pytest.fixture(scope="module")
def bbq():
    return sources.load_bbq()


def test_crows_pairs_all_pairs_mapped():
    out = sources.load_crows_pairs()
    assert len(out.records) == 1508 and len(set(out.groups)) == 1508
    domains = Counter(r.domain for r in out.records)
    assert domains == {
        "race_ethnicity": 516,
        "gender": 262,
        "socioeconomic": 172,
        "nationality": 159,
        "religion": 105,
        "age": 87,
        "sexual_orientation": 84,
        "physical_appearance": 63,
        "disability": 60,
    }
    first = out.records[1]  # "The poor are really ignorant..." (stereo) vs "The rich ..."
    assert first.rejected.startswith("The poor are really ignorant")
    assert first.chosen.startswith("The rich are really ignorant")
    assert first.prompt == "" and first.domain == "socioeconomic"


def test_stereoset_dev_intra_and_inter():
    out = sources.load_stereoset()
    tasks = Counter(r.meta["task"] for r in out.records)
    assert tasks == {"intrasentence": 2106, "intersentence": 2123}
    assert {r.domain for r in out.records} == {"race_ethnicity", "gender", "religion", "profession"}
    intra = next(r for r in out.records if r.meta["task"] == "intrasentence")
    inter = next(r for r in out.records if r.meta["task"] == "intersentence")
    assert intra.prompt == "" and "BLANK" in intra.meta["context"]
    assert inter.prompt == inter.meta["context"] and inter.prompt
    assert all(r.chosen != r.meta["unrelated"] and r.rejected != r.meta["unrelated"] for r in out.records)
    with pytest.raises(ValueError, match="split"):
        sources.load_stereoset(split="train")


def test_bbq_all_items_and_mapping(bbq):
    assert len(bbq.records) == 58492
    per_domain = Counter(r.domain for r in bbq.records)
    assert per_domain["intersectional"] == 11160 + 15960 and per_domain["age"] == 3680
    by_id = {r.id: r for r in bbq.records}
    # Age item 0: ambiguous, negative question -> "unknown" beats the stereotyped group (grandfather).
    r0, r1, r2, r3 = (by_id[f"bbq:Age:{i}"] for i in range(4))
    assert (r0.chosen, r0.rejected) == ("Can't be determined", "The grandfather")
    # item 1: disambiguated (the grandson struggled) -> correct answer beats the biased one.
    assert (r1.chosen, r1.rejected) == ("The grandson", "The grandfather")
    # item 2: ambiguous, non-negative question -> the biased answer is the non-stereotyped group.
    assert (r2.chosen, r2.rejected) == ("Can't be determined", "The grandson")
    # item 3: disambiguated non-negative (the grandfather helped) -> correct answer is not the biased one.
    assert (r3.chosen, r3.rejected) == ("The grandfather", "The grandson")
    assert r0.prompt.endswith("Who was not comfortable using the phone?")
    ambig = [r for r in bbq.records if r.meta["context_condition"] == "ambig"]
    assert all(r.chosen == r.meta["answers"][r.meta["unknown_index"]] for r in ambig)
    # all variants of one template share a split group
    assert len(set(bbq.groups)) < len(bbq.records) / 10


def test_bold_prompts_all_counted():
    out = sources.load_bold()
    assert len(out.records) + out.skipped["empty prompt"] == 23679
    assert out.skipped == {"empty prompt": 5}
    assert all(isinstance(r, PromptRecord) for r in out.records)
    assert Counter(r.meta["bold_domain"] for r in out.records)["gender"] == 3204
    wiki = sources.load_bold_wikipedia()
    assert len(wiki) > 20000 and all(w["text"] for w in wiki)


def test_holisticbias_descriptors_times_templates():
    out = sources.load_holisticbias()
    assert len(out.records) > 10000
    assert not any(r.meta["axis"] == "nonce" for r in out.records)
    assert "nonce" in next(iter(out.skipped))
    texts = {r.prompt for r in out.records}
    assert "What do you think about Deaf people?" in texts
    assert "I have a friend who is a Deaf person." in texts


def test_every_offline_record_has_a_known_domain(bbq):
    for name, loader in sources.OFFLINE_LOADERS.items():
        out = bbq if name == "bbq" else loader()
        assert {r.domain for r in out.records} <= DOMAINS, name
        assert len(out.records) == len(out.groups)


def test_hub_style_jsonl_biasdpo(fixtures_dir):
    out = sources.load_preference_table(fixtures_dir / "biasdpo_sample.jsonl", source="biasdpo")
    assert len(out.records) == 5 and all(isinstance(r, PreferenceRecord) for r in out.records)
    assert [r.domain for r in out.records] == ["gender", "age", "nationality", "socioeconomic", "disability"]
    assert out.records[0].chosen.startswith("They are not.")


def test_hub_style_parquet_bias_grpo_data(fixtures_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.loads((fixtures_dir / "bias_grpo_data_sample.json").read_text())
    path = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = sources.load_preference_table(tmp_path)  # a folder of parquet shards, like a Hub snapshot
    assert [r.domain for r in out.records] == [
        "gender",
        "race_ethnicity",
        "religion",
        "sexual_orientation",
        "intersectional",
    ]
    assert out.records[0].chosen == rows[0]["favorable_completion"]
    assert out.records[0].rejected == rows[0]["unfavorable_completion"]
    assert out.records[4].meta["toxicity"] == pytest.approx(0.62)


def test_csv_chosen_rejected_and_bad_rows(fixtures_dir, tmp_path):
    out = sources.load_preference_table(fixtures_dir / "chosen_rejected_sample.csv")
    assert [r.domain for r in out.records] == ["age", "gender"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "a"})
        + "\n"
    )
    with pytest.raises(RecordError, match=r"bad.jsonl:2") as info:
        sources.load_preference_table(bad)
    assert info.value.field == "rejected"
    lenient = sources.load_preference_table(bad, skip_invalid=True)
    assert len(lenient.records) == 1 and sum(lenient.skipped.values()) == 1


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        sources.load_preference_table("./does/not/exist.jsonl")


@pytest.mark.parametrize(
    ("category", "domain"),
    [
        ("Race/Ethnicity", "race_ethnicity"),
        ("race_x_gender", "intersectional"),
        ("SES", "socioeconomic"),
        ("physical appearance", "physical_appearance"),
        ("astrology", "other"),
        (None, "other"),
    ],
)
def test_normalise_domain(category, domain):
    assert normalise_domain(category) == domain


def test_infer_domain_keywords():
    assert infer_domain("Are Muslims dangerous?") == "religion"
    assert infer_domain("What's the weather?") == "other"
    assert set(CORE_DOMAINS) <= DOMAINS
