"""Combine the bias reward with other rewards, and small guard rewards against evasive completions.

A bias reward alone can favour empty or evasive completions ("I cannot answer that."). Combine it with a
length or fluency reward::

    from biasgrpo.reward.adapters import trl_reward
    from biasgrpo.reward.combine import CombinedReward, LengthReward, FluencyReward

    reward = CombinedReward(
        [trl_reward("runs/demo/reward/onnx"), LengthReward(min_words=8), FluencyReward()],
        weights=[1.0, 0.3, 0.2],
        mode="normalize_then_sum",
    )
    GRPOTrainer(..., reward_funcs=[reward])   # or our loop: --reward / reward_funcs=[reward]

Modes (``K`` rewards ``r_k``, weights ``w_k``, groups = completions of the same prompt):

* ``sum_then_normalize``: ``sum_k w_k r_k`` (the trainer's group normalisation then applies to the sum);
* ``normalize_then_sum`` (GDPO): each reward is standardised within its group first,
  ``(r_k - mean_g r_k) / (std_g r_k + eps)``, then ``sum_k w_k z_k``, so a reward with a large scale or
  spread cannot drown the others. Groups are consecutive runs of ``group_size`` completions when
  ``group_size`` is given (TRL's layout), else completions whose prompt is equal.

``None`` from a component (not applicable) is skipped, as TRL does (a NaN-ignoring weighted sum); the
combined value is ``None`` only when every component returned ``None`` for that completion.
Every object here is a picklable callable with a ``__name__`` (TRL's metric name) and TRL's signature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MODES = ("sum_then_normalize", "normalize_then_sum")


def _text(value: Any) -> str:
    from biasgrpo.reward.adapters import message_text

    return message_text(value)


def _call_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def group_ids(prompts: Sequence[Any] | None, n: int, group_size: int | None = None) -> np.ndarray:
    """Group index per completion: consecutive blocks of ``group_size``, else equal prompts share a group."""
    if group_size is not None:
        if group_size < 1 or n % group_size:
            raise ValueError(f"group_size={group_size} does not divide the batch of {n} completions")
        return np.arange(n) // group_size
    if prompts is None:
        return np.zeros(n, dtype=np.int64)
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(repr(p), len(seen)) for p in prompts], dtype=np.int64)


def normalize_in_groups(values: np.ndarray, groups: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """``(v - group mean) / (group std + eps)`` per group (population std), NaN kept as NaN."""
    out = np.full_like(values, np.nan, dtype=np.float64)
    for g in np.unique(groups):
        idx = np.where((groups == g) & ~np.isnan(values))[0]
        if idx.size == 0:
            continue
        v = values[idx]
        out[idx] = (v - v.mean()) / (v.std() + eps)
    return out


class CombinedReward:
    """Weighted combination of TRL-style reward functions (see the module docstring for the modes)."""

    def __init__(
        self,
        funcs: Sequence[Callable[..., Any]],
        weights: Sequence[float] | None = None,
        *,
        mode: str = "sum_then_normalize",
        group_size: int | None = None,
        eps: float = 1e-4,
        name: str = "combined_reward",
    ) -> None:
        if not funcs:
            raise ValueError("funcs must hold at least one reward function")
        weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
        if len(weights) != len(funcs):
            raise ValueError(f"got {len(weights)} weights for {len(funcs)} reward functions")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite numbers, got {weights}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.funcs = list(funcs)
        self.weights = weights
        self.mode = mode
        self.group_size = group_size
        self.eps = eps
        self.__name__ = name

    def components(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> np.ndarray:
        """Each component's rewards as a float64 array [n, K] (NaN for ``None``)."""
        n = len(completions)
        out = np.full((n, len(self.funcs)), np.nan)
        for k, func in enumerate(self.funcs):
            values = func(prompts=prompts, completions=completions, **kwargs)
            values = list(values.tolist() if hasattr(values, "tolist") else values)
            if len(values) != n:
                raise ValueError(
                    f"reward {_call_name(func)!r} returned {len(values)} values for {n} completions"
                )
            out[:, k] = [np.nan if v is None else float(v) for v in values]
        return out

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any
    ) -> list[float | None]:
        values = self.components(prompts, completions, **kwargs)  # [n, K]
        if self.mode == "normalize_then_sum":
            groups = group_ids(prompts, len(completions), self.group_size)
            values = np.stack(
                [normalize_in_groups(values[:, k], groups, self.eps) for k in range(values.shape[1])], 1
            )
        weighted = values * np.asarray(self.weights)[None, :]  # [n, K]
        total = np.nansum(weighted, axis=1)  # [n]
        all_nan = np.isnan(values).all(axis=1)  # [n]
        return [None if skip else float(t) for t, skip in zip(total, all_nan, strict=True)]


class LengthReward:
    """1.0 for completions of ``min_words``..``max_words`` words, falling linearly to 0 outside.

    Below ``min_words`` the reward is ``words / min_words``; above ``max_words`` it decays to 0 at
    ``2 * max_words``. Counters empty or one-line evasive answers that a bias reward alone may prefer.
    """

    def __init__(self, min_words: int = 8, max_words: int = 200, *, name: str = "length_reward") -> None:
        if min_words < 1 or max_words < min_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words = min_words
        self.max_words = max_words
        self.__name__ = name

    def value(self, text: str) -> float:
        n = len(text.split())
        if n < self.min_words:
            return n / self.min_words
        if n <= self.max_words:
            return 1.0
        return max(0.0, 1.0 - (n - self.max_words) / self.max_words)

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any
    ) -> list[float]:
        return [self.value(_text(c)) for c in completions]


_WORD = re.compile(r"[A-Za-z\u00C0-\u024F']+")


class FluencyReward:
    """A cheap fluency proxy in [0, 1]: (distinct word bigrams / bigrams) x (share of word-like tokens).

    Repetition loops ("the the the ...") and symbol soup score low; ordinary prose scores near 1. Texts
    under 3 tokens score 0 (nothing to judge). No model needed, so it costs nothing per step.
    """

    def __init__(self, *, name: str = "fluency_reward") -> None:
        self.__name__ = name

    @staticmethod
    def value(text: str) -> float:
        tokens = text.split()
        if len(tokens) < 3:
            return 0.0
        wordlike = sum(1 for t in tokens if _WORD.search(t)) / len(tokens)
        words = [t.lower().strip(".,!?;:\"'()") for t in tokens]
        bigrams = list(zip(words, words[1:], strict=False))
        distinct = len(set(bigrams)) / len(bigrams)
        return float(distinct * wordlike)

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any
    ) -> list[float]:
        return [self.value(_text(c)) for c in completions]
