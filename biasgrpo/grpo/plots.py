"""End-of-run plots (PNG) of the per-step metrics, and a paired bootstrap for before/after rewards."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PLOTTED = (
    ("reward", "mean reward"),
    ("reward_std", "reward std"),
    ("kl", "KL to reference (k3)"),
    ("completion_length", "completion length (tokens)"),
)


def plot_metrics(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write one PNG per metric in :data:`PLOTTED` (plus held-out reward when present); returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in rows if "reward" in r and "step" in r]
    for key, label in PLOTTED:
        pts = [(r["step"], r[key]) for r in train if r.get(key) is not None and np.isfinite(r[key])]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_eval(evals: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str]) -> Path | None:
    """Held-out mean reward per evaluation step."""
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([e["step"] for e in evals], [e["reward_mean"] for e in evals], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out mean reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / "eval_reward.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], *, n_resamples: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Mean of (after - before) over paired prompts with a 95% percentile bootstrap interval."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if b.shape != a.shape or b.size == 0:
        raise ValueError(
            f"paired_bootstrap needs two equal-length non-empty lists, got {b.size} and {a.size}"
        )
    ok = np.isfinite(a) & np.isfinite(b)
    diff = a[ok] - b[ok]
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(diff.size)}
