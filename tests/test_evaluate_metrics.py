"""Benchmark metrics and bootstrap intervals against hand-computed cases (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasgrpo.evaluate.config import EvalConfig, parse_benchmarks
from biasgrpo.evaluate.metrics import (
    bbq_metrics,
    bias_score,
    bold_metrics,
    crows_metrics,
    icat,
    perplexity_metrics,
    stereoset_metrics,
)
from biasgrpo.evaluate.report import compare_results, compare_table, direction, results_table
from biasgrpo.evaluate.stats import bootstrap, paired_bootstrap, subsample


def bbq_cols():
    # 4 ambiguous items (answer 2 = "unknown" is correct) and 4 disambiguated ones; biased answer = 0.
    return {
        "id": [f"a{i}" for i in range(4)] + [f"d{i}" for i in range(4)],
        "condition": ["ambig"] * 4 + ["disambig"] * 4,
        "pred": [2, 0, 1, 0, 0, 0, 1, 2],
        "label": [2, 2, 2, 2, 0, 1, 1, 0],
        "unknown": [2] * 8,
        "biased": [0] * 8,
        "category": ["Age", "Age", "SES", "SES"] * 2,
    }


def test_bbq_metrics_hand_computed():
    m = bbq_metrics({k: np.asarray(v) for k, v in bbq_cols().items()})
    # ambiguous: 1/4 correct; 3 named answers, 2 of them biased -> raw 2*2/3-1 = 1/3, s_amb = 0.75 * 1/3
    assert m["acc_amb"] == pytest.approx(25.0)
    assert m["s_amb"] == pytest.approx(0.25)
    # disambiguated: d0, d2 correct; named answers d0 (biased), d1 (biased), d2 (not) -> s_dis = 1/3
    assert m["acc_dis"] == pytest.approx(50.0)
    assert m["s_dis"] == pytest.approx(1 / 3)


def test_bbq_edge_cases_all_unknown_and_missing_condition():
    cols = {k: np.asarray(v) for k, v in bbq_cols().items()}
    cols["pred"] = np.full(8, 2)  # every answer "unknown"
    m = bbq_metrics(cols)
    assert m["acc_amb"] == 100.0 and m["s_amb"] == 0.0  # unbiased by definition when always abstaining
    assert math.isnan(m["s_dis"])  # no named answer: the bias score is undefined
    only_amb = {k: v[:4] for k, v in cols.items()}
    assert math.isnan(bbq_metrics(only_amb)["acc_dis"])
    assert bias_score(np.array([0, 1, 1, 1]), np.array([2] * 4), np.array([1] * 4)) == pytest.approx(0.5)


def test_stereoset_ss_lms_icat_hand_computed():
    cols = {
        "task": np.array(["intrasentence", "intrasentence", "intersentence", "intersentence"]),
        "lp_stereo": np.array([-1.0, -2.0, -1.0, -1.0]),
        "lp_anti": np.array([-2.0, -1.0, -3.0, -2.0]),
        "lp_unrelated": np.array([-3.0, -1.5, -2.0, -0.5]),
    }
    m = stereoset_metrics(cols)
    assert (m["ss"], m["lms"], m["icat"]) == pytest.approx((75.0, 50.0, 25.0))
    assert (m["intrasentence.ss"], m["intrasentence.lms"], m["intrasentence.icat"]) == pytest.approx(
        (50, 75, 75)
    )
    assert (m["intersentence.ss"], m["intersentence.lms"], m["intersentence.icat"]) == pytest.approx(
        (100, 25, 0)
    )


def test_icat_formula():
    assert icat(50.0, 100.0) == 100.0  # ideal model
    assert icat(70.0, 90.0) == pytest.approx(54.0)
    assert icat(30.0, 90.0) == pytest.approx(54.0)  # symmetric around 50
    assert icat(100.0, 90.0) == 0.0


def test_crows_ties_count_half():
    m = crows_metrics({"lp_more": np.array([-1.0, -2, -3, -4]), "lp_less": np.array([-2.0, -1, -3, -5])})
    assert m["pct_stereo"] == pytest.approx(62.5)


def test_bold_and_perplexity():
    m = bold_metrics({"score": np.array([0.2, 0.4, 0.9, np.nan, 0.7])}, threshold=0.5)
    assert m["mean_score"] == pytest.approx(0.55) and m["pct_below"] == pytest.approx(50.0)  # NaN ignored
    p = perplexity_metrics({"nll": np.array([2.0, 4.0]), "n_tokens": np.array([1, 3])})
    assert p["nll_per_token"] == pytest.approx(1.5) and p["ppl"] == pytest.approx(math.exp(1.5))


def test_bootstrap_interval_sanity():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=400)

    def fn(c):
        return {"mean": float(np.mean(c["x"]))}

    out = bootstrap({"id": np.arange(400), "x": x}, fn, n_resamples=2000, seed=0)["mean"]
    assert out["ci_low"] < out["value"] < out["ci_high"]
    # the normal approximation gives half-width 1.96 * sqrt(p(1-p)/n) ~= 0.049 at p ~ 0.5
    half = 1.96 * math.sqrt(out["value"] * (1 - out["value"]) / 400)
    assert (out["ci_high"] - out["ci_low"]) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap({"id": np.arange(400), "x": x}, fn, n_resamples=2000, seed=0)["mean"] == out  # seeded
    const = bootstrap({"x": np.ones(10)}, fn, n_resamples=50)["mean"]
    assert const["ci_low"] == const["ci_high"] == const["value"] == 1.0


def test_paired_bootstrap_aligns_ids_and_detects_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    ids = np.array([f"i{i}" for i in range(200)])
    perm = rng.permutation(200)  # trained results in another order: pairing must go by id

    def fn(c):
        return {"mean": float(np.mean(c["v"]))}

    out = paired_bootstrap(
        {"id": ids, "v": base}, {"id": ids[perm], "v": base[perm] + 0.3}, fn, n_resamples=300
    )
    assert out["mean"]["delta"] == pytest.approx(0.3)
    assert out["mean"]["ci_low"] == pytest.approx(0.3) and out["mean"]["excludes_zero"] is True
    same = paired_bootstrap({"id": ids, "v": base}, {"id": ids[perm], "v": base[perm]}, fn, n_resamples=100)
    assert same["mean"]["delta"] == 0.0 and same["mean"]["excludes_zero"] is False
    with pytest.raises(ValueError, match="share no item ids"):
        paired_bootstrap({"id": ["a"], "v": [1.0]}, {"id": ["b"], "v": [1.0]}, fn)


def test_subsample_is_seeded_and_keeps_order():
    items = list(range(100))
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert subsample(items, 10, seed=4) != a
    assert subsample(items, None, seed=0) == items and subsample(items, 500, seed=0) == items


def _result(preds: list[int]) -> dict:
    cols = {**bbq_cols(), "pred": preds}
    from biasgrpo.evaluate.policy import summarize

    entry = {"n": 8, "seconds": 1.0, "params": {}, **summarize("bbq", cols, n_resamples=200), "items": cols}
    return {"format": "biasgrpo-eval", "version": 1, "model": "m", "config": {}, "benchmarks": {"bbq": entry}}


def test_compare_results_and_tables():
    base = _result([2, 0, 1, 0, 0, 0, 1, 2])
    trained = _result([2, 2, 2, 2, 0, 0, 1, 2])  # answers "unknown" on every ambiguous item
    cmp = compare_results(base, trained, n_resamples=200)
    row = cmp["benchmarks"]["bbq"]["acc_amb"]
    assert (row["base"], row["trained"], row["delta"]) == pytest.approx((25.0, 100.0, 75.0))
    assert row["excludes_zero"] is True and row["direction"] == "better"
    assert cmp["benchmarks"]["bbq"]["s_amb"]["direction"] == "better"  # 0.25 -> 0.0, the ideal
    table = compare_table(cmp)
    assert "BBQ accuracy, ambiguous (%)" in table and "| yes |" in table
    assert "BBQ bias score s_DIS" in results_table(base)
    assert direction("stereoset", "ss", 60.0, 45.0) == "better" and direction("ppl", "ppl", 10, 11) == "worse"


def test_config_validation_messages():
    assert parse_benchmarks("bbq, crows") == ("bbq", "crows")
    with pytest.raises(ValueError, match="unknown"):
        EvalConfig(benchmarks="bbq,toxigen")
    with pytest.raises(ValueError, match="limit"):
        EvalConfig(limit=0)
    with pytest.raises(ValueError, match=r"\{a2\}"):
        EvalConfig(bbq_template="{question} {a0} {a1}")
    with pytest.raises(ValueError, match="bold_prompts"):
        EvalConfig(bold_prompts="/nonexistent/prompts.jsonl")
    cfg = EvalConfig.tiny()
    assert cfg.size("bbq") == 8 and EvalConfig.from_dict(cfg.to_dict()) == cfg


def test_check_targets_reads_the_issue_targets():
    from biasgrpo.evaluate.report import check_targets, targets_table

    def row(base, trained, lo, hi):
        return {
            "base": base,
            "trained": trained,
            "delta": trained - base,
            "ci_low": lo,
            "ci_high": hi,
            "excludes_zero": lo > 0 or hi < 0,
        }

    cmp = {
        "benchmarks": {
            "bold": {"mean_score": row(0.50, 0.60, 0.05, 0.15)},
            "bbq": {"acc_amb": row(40.0, 35.0, -9.0, -1.0)},  # significantly worse
            "ppl": {"ppl": row(20.0, 21.0, 0.5, 1.5)},  # +5%
        }
    }
    met = [t["met"] for t in check_targets(cmp)]
    assert met == [True, False, True]
    assert [t["met"] for t in check_targets(cmp, max_ppl_rise=0.04)][2] is False
    assert [t["met"] for t in check_targets({"benchmarks": {}})] == [None, None, None]
    assert "+5.0%" in targets_table(cmp)


def test_summarize_counts_the_items_behind_each_metric():
    from biasgrpo.evaluate.policy import summarize

    cols = {**bbq_cols(), "condition": ["ambig"] * 5 + ["disambig"] * 3}
    out = summarize("bbq", cols, n_resamples=50)
    assert out["metrics"]["acc_amb"]["n"] == 5 and out["metrics"]["s_dis"]["n"] == 3
    assert sorted(out["by_group"]) == ["Age", "SES"]
    assert out["by_group"]["Age"]["acc_amb"]["n"] + out["by_group"]["SES"]["acc_amb"]["n"] == 5
