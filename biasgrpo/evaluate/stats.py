"""Seeded subsampling and percentile-bootstrap intervals over per-item results.

Every benchmark keeps its per-item outcomes as *columns* (a dict of equal-length lists or arrays, one of
them ``id``) and defines a metric function ``fn(columns) -> dict[str, float]``. The same function gives
the point estimate, the bootstrap distribution (``fn`` on items resampled with replacement) and, for two
policies evaluated on the same items, the paired distribution of the difference. Undefined values (e.g. a
bias score with no non-"unknown" answer in a resample) are NaN and are ignored by the percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

Columns = Mapping[str, Sequence[Any] | np.ndarray]
MetricFn = Callable[[Mapping[str, np.ndarray]], dict[str, float]]
T = TypeVar("T")


def subsample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded random subset of ``limit`` items in their original order (all items when ``limit`` is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def as_arrays(columns: Columns) -> dict[str, np.ndarray]:
    """Columns as numpy arrays, checked to have one length."""
    arrays = {k: np.asarray(v) for k, v in columns.items()}
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    return arrays


def _n_rows(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def _take(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap(
    columns: Columns,
    fn: MetricFn,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "ci_low", "ci_high", "n"}}``: ``fn`` on all items and a percentile interval.

    Items are resampled with replacement ``n_resamples`` times (seeded); the interval is the
    ``alpha/2`` and ``1 - alpha/2`` percentiles of ``fn`` over the resamples (95% by default).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arrays = as_arrays(columns)
    n = _n_rows(arrays)
    if n == 0:
        raise ValueError("bootstrap needs at least one item")
    point = fn(arrays)
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(n_resamples) for k in point}
    for r in range(n_resamples):
        values = fn(_take(arrays, rng.integers(0, n, size=n)))
        for k in point:
            draws[k][r] = values.get(k, math.nan)
    out = {}
    for k, v in point.items():
        lo, hi = _interval(draws[k], alpha)
        out[k] = {"value": float(v), "ci_low": lo, "ci_high": hi, "n": n}
    return out


def paired_bootstrap(
    base: Columns,
    trained: Columns,
    fn: MetricFn,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """``{metric: {"delta", "ci_low", "ci_high", "excludes_zero", "n"}}`` for ``fn(trained) - fn(base)``.

    Items are matched on the ``id`` column; only ids present in both are used (``n`` says how many), and
    each resample draws the same ids for both policies, so item difficulty cancels out.
    """
    a, b = as_arrays(base), as_arrays(trained)
    if "id" not in a or "id" not in b:
        raise ValueError("paired_bootstrap needs an 'id' column in both results")
    pos_b = {str(i): j for j, i in enumerate(b["id"])}
    pairs = [(j, pos_b[str(i)]) for j, i in enumerate(a["id"]) if str(i) in pos_b]
    if not pairs:
        raise ValueError(
            "the two results share no item ids: evaluate both policies with the same seed and limit"
        )
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    a, b = _take(a, ia), _take(b, ib)
    n = len(pairs)
    point_a, point_b = fn(a), fn(b)
    keys = [k for k in point_a if k in point_b]
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(n_resamples) for k in keys}
    for r in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        va, vb = fn(_take(a, idx)), fn(_take(b, idx))
        for k in keys:
            draws[k][r] = vb.get(k, math.nan) - va.get(k, math.nan)
    out = {}
    for k in keys:
        lo, hi = _interval(draws[k], alpha)
        excludes = bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))
        out[k] = {
            "base": float(point_a[k]),
            "trained": float(point_b[k]),
            "delta": float(point_b[k] - point_a[k]),
            "ci_low": lo,
            "ci_high": hi,
            "excludes_zero": excludes,
            "n": n,
        }
    return out
