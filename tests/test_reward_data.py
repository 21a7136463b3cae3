"""Reward data plumbing: the input template, source-balanced subsampling, record conversion."""

from __future__ import annotations

from collections import Counter

import pytest
from tokenizers import Tokenizer

from biasgrpo.assets import encoder_path
from biasgrpo.data_synth.schema import PreferenceRecord, ScalarRecord
from biasgrpo.reward.data import balanced_subsample, to_pairs, to_scalars
from biasgrpo.reward.distill import distillation_rows
from biasgrpo.reward.template import InputTemplate, encode


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer.from_file(str(encoder_path() / "tokenizer.json"))
    t.no_truncation()
    t.no_padding()
    return t


def _pref(i: int, source: str, margin=None) -> PreferenceRecord:
    meta = {} if margin is None else {"margin": margin}
    return PreferenceRecord("p", f"good {i}", f"bad {i}", "gender", source, f"{source}:{i}", meta)


def test_pair_template_matches_bert_layout(tok: Tokenizer):
    enc = encode(tok, ["the answer"], ["a question"], InputTemplate(), 32)
    assert (
        tok.decode(enc.input_ids[0].tolist(), skip_special_tokens=False)
        == "[CLS] a question [SEP] the answer [SEP]"
    )
    assert enc.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    alone = encode(tok, ["the answer"], None, InputTemplate(), 32)
    assert tok.decode(alone.input_ids[0].tolist(), skip_special_tokens=False) == "[CLS] the answer [SEP]"


def test_concat_template_and_padding(tok: Tokenizer):
    enc = encode(
        tok,
        ["the answer", "x"],
        ["a question", None],
        InputTemplate(kind="concat", separator=" : "),
        32,
        pad_id=0,
    )
    assert tok.decode(enc.input_ids[0].tolist(), skip_special_tokens=True) == "a question : the answer"
    assert enc.attention_mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert enc.input_ids[1, 3:].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="template kind"):
        InputTemplate(kind="chat")


def test_long_completion_leaves_prompt_its_minimum(tok: Tokenizer):
    enc = encode(tok, ["w " * 100], ["q " * 100], InputTemplate(prompt_min_tokens=5), 20)
    types = enc.token_type_ids[0].tolist()
    assert enc.truncated[0] and len(types) == 20
    assert types.count(0) == 1 + 5 + 1  # [CLS] + 5 prompt tokens + [SEP]


def test_balanced_subsample_keeps_small_sources():
    recs = [_pref(i, "big") for i in range(100)] + [_pref(i, "small") for i in range(5)]
    out = balanced_subsample(recs, 20, seed=0)
    counts = Counter(r.source for r in out)
    assert counts == {"small": 5, "big": 15}
    assert balanced_subsample(recs, 20, seed=0) == out  # seeded
    assert len(balanced_subsample(recs, None, seed=0)) == 105


def test_record_conversion():
    recs = [
        _pref(0, "a", margin=0.5),
        _pref(1, "a", margin=True),
        ScalarRecord("", "t", 0.25, "gender", "s", "s0"),
    ]
    pairs = to_pairs(recs)
    assert [p.margin for p in pairs] == [0.5, 0.0]  # a boolean is not a margin
    scal = to_scalars(recs)
    assert sorted(s.label for s in scal) == [0.0, 0.0, 0.25, 1.0, 1.0]
    texts, prompts, idx = distillation_rows(recs, ["an unlabelled prompt"])
    assert idx == [(0, 1), (2, 3)] and texts[-1] == "an unlabelled prompt" and prompts[-1] is None
    assert len(texts) == 6
