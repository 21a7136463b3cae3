"""Evaluate policies on bias benchmarks and write reports.

    from biasgrpo.evaluate import EvalConfig, evaluate_model, write_eval, compare_results, compare_table
    base = evaluate_model("smollm2", EvalConfig(limit=100))
    write_eval(base, "runs/eval/base.json")

Importing this package loads numpy only; torch and transformers are imported when a model is evaluated.
"""

from __future__ import annotations

from biasgrpo.evaluate.config import BENCHMARKS, EvalConfig
from biasgrpo.evaluate.policy import (
    evaluate_model,
    evaluate_policy,
    load_eval,
    load_policy,
    scorer_reward_fn,
    summarize,
    write_eval,
)
from biasgrpo.evaluate.report import (
    check_targets,
    compare_results,
    compare_table,
    comparison_markdown,
    group_table,
    kv_table,
    plot_benchmarks,
    plot_score_distributions,
    results_table,
    targets_table,
    timing_table,
    write_markdown,
)
from biasgrpo.evaluate.stage import evaluate_and_compare, evaluate_cached

__all__ = [
    "BENCHMARKS",
    "EvalConfig",
    "check_targets",
    "compare_results",
    "compare_table",
    "comparison_markdown",
    "evaluate_and_compare",
    "evaluate_cached",
    "evaluate_model",
    "evaluate_policy",
    "group_table",
    "kv_table",
    "load_eval",
    "load_policy",
    "plot_benchmarks",
    "plot_score_distributions",
    "results_table",
    "scorer_reward_fn",
    "summarize",
    "targets_table",
    "timing_table",
    "write_eval",
    "write_markdown",
]
