"""Reward-model metrics in numpy only: pairwise accuracy, Spearman, MSE, calibration, grouped reports.

Everything here works on plain arrays so it can score a torch model, an ONNX scorer or any callable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties get their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"arrays differ in length: {len(a)} vs {len(b)}")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks)."""
    return pearson(rankdata(a), rankdata(b))


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    return float(np.mean((pred - target) ** 2))


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Fraction of pairs where the chosen (less biased) text scores strictly higher; ties count half."""
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if len(chosen) == 0:
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def calibration(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability table and expected calibration error of probabilities ``prob`` against 0/1 (or [0,1]) outcomes."""
    prob = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    outcome = np.asarray(outcome, dtype=np.float64)
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    table, ece = [], 0.0
    for b in range(n_bins):
        sel = bins == b
        if not sel.any():
            continue
        conf, acc = float(prob[sel].mean()), float(outcome[sel].mean())
        ece += sel.mean() * abs(conf - acc)
        table.append(
            {
                "bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}",
                "n": int(sel.sum()),
                "mean_prob": conf,
                "mean_outcome": acc,
            }
        )
    return {"ece": float(ece), "bins": table}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


ScoreFn = Callable[[list[str], list[str]], np.ndarray]


def _grouped(keys: Sequence[str], chosen: np.ndarray, rejected: np.ndarray) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    return {
        k: {"n": len(idx), "accuracy": pairwise_accuracy(chosen[idx], rejected[idx])}
        for k, idx in sorted(groups.items())
    }


def subset_key(record: Any) -> str:
    """``source:context_condition`` when the record's meta has one (BBQ), else the source."""
    meta = getattr(record, "meta", None)
    cond = meta.get("context_condition") if isinstance(meta, dict) else None
    return f"{record.source}:{cond}" if isinstance(cond, str) and cond else record.source


def evaluate_records(score_fn: ScoreFn, records: Sequence[Any]) -> dict[str, Any]:
    """Evaluate a scoring function ``score_fn(texts, prompts) -> scores`` on preference and/or scalar records.

    Preference records give pairwise accuracy (overall, per domain, per source, and per subset when a
    record's ``meta`` names its ``context_condition``: BBQ's ambiguous pairs test bias, its disambiguated
    pairs test reading comprehension, so one number would hide which one a model fails) and the calibration
    of the Bradley-Terry probability sigmoid(s_chosen - s_rejected); scalar records give Spearman, MSE and
    the calibration of the (clipped) score against the label.
    """
    prefs = [r for r in records if getattr(r, "kind", None) == "preference"]
    scalars = [r for r in records if getattr(r, "kind", None) == "scalar"]
    if not prefs and not scalars:
        raise ValueError("no preference or scalar records to evaluate")
    out: dict[str, Any] = {}
    if prefs:
        prompts = [r.prompt for r in prefs]
        chosen = np.asarray(score_fn([r.chosen for r in prefs], prompts), dtype=np.float64)
        rejected = np.asarray(score_fn([r.rejected for r in prefs], prompts), dtype=np.float64)
        subsets = [subset_key(r) for r in prefs]
        out["pairwise"] = {
            "n": len(prefs),
            "accuracy": pairwise_accuracy(chosen, rejected),
            "mean_margin": float(np.mean(chosen - rejected)),
            "by_domain": _grouped([r.domain for r in prefs], chosen, rejected),
            "by_source": _grouped([r.source for r in prefs], chosen, rejected),
            "by_subset": _grouped(subsets, chosen, rejected) if any(":" in k for k in subsets) else {},
            "calibration": calibration(sigmoid(chosen - rejected), np.ones(len(prefs))),
        }
    if scalars:
        pred = np.asarray(score_fn([r.text for r in scalars], [r.prompt for r in scalars]), dtype=np.float64)
        labels = np.array([r.label for r in scalars])
        out["scalar"] = {
            "n": len(scalars),
            "mse": mse(pred, labels),
            "spearman": spearman(pred, labels),
            "calibration": calibration(pred, labels),
        }
    return out


def format_report(report: dict[str, Any]) -> str:
    """A readable markdown rendering of :func:`evaluate_records` output."""
    lines: list[str] = []
    pw = report.get("pairwise")
    if pw:
        lines += [
            f"Pairwise accuracy: {pw['accuracy']:.4f} on {pw['n']} pairs (mean margin {pw['mean_margin']:.4f}, "
            f"BT calibration ECE {pw['calibration']['ece']:.4f})",
            "",
            "| group | n | accuracy |",
            "|---|---|---|",
        ]
        for name in ("by_source", "by_subset", "by_domain"):
            for key, row in pw.get(name, {}).items():
                lines.append(f"| {name[3:]}={key} | {row['n']} | {row['accuracy']:.4f} |")
    sc = report.get("scalar")
    if sc:
        if lines:
            lines.append("")
        lines.append(
            f"Scalar labels: n={sc['n']} MSE {sc['mse']:.4f} Spearman {sc['spearman']:.4f} "
            f"ECE {sc['calibration']['ece']:.4f}"
        )
    return "\n".join(lines)
