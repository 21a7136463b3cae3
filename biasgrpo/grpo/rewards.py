"""Reward functions for the loop: calling them safely, a few built-ins, and loading one from a CLI spec.

The loop needs only TRL's protocol: ``f(prompts, completions, **kwargs) -> list[float | None]``, one value
per completion (``None`` = cannot score this one). ``kwargs`` carries ``completion_ids`` (lists of token
ids) and any extra prompt columns. A function that raises or returns the wrong number of values stops the
run with an error naming the function.

Built-ins (for smoke runs and tests): ``length`` (completion length in words / 50, capped at 1) and
``keyword:WORD`` (fraction of words equal to WORD). ``default`` or a folder loads the bias reward scorer
(:mod:`biasgrpo.reward.scorer`), imported only when asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something unusable (the message names the function)."""


def reward_func_name(func: RewardFunc) -> str:
    """The metric name of a reward function: its ``__name__`` (TRL's convention), else its class name."""
    return getattr(func, "__name__", None) or type(func).__name__


def call_reward_funcs(
    funcs: Sequence[RewardFunc],
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    **extra: Any,
) -> torch.Tensor:
    """Call every function on the batch; returns (B, K) float64 rewards with NaN for ``None``."""
    n = len(completions)
    out = torch.full((n, len(funcs)), float("nan"), dtype=torch.float64)  # (B, K)
    for k, func in enumerate(funcs):
        name = reward_func_name(func)
        try:
            values = func(prompts=prompts, completions=completions, completion_ids=completion_ids, **extra)
        except Exception as exc:
            raise RewardFunctionError(f"reward function {name!r} raised {type(exc).__name__}: {exc}") from exc
        if hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, list | tuple):
            raise RewardFunctionError(
                f"reward function {name!r} returned {type(values).__name__}; expected a list of {n} floats or None"
            )
        if len(values) != n:
            raise RewardFunctionError(
                f"reward function {name!r} returned {len(values)} values for {n} completions; expected one each"
            )
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise RewardFunctionError(
                    f"reward function {name!r} returned {v!r} at index {i}; expected a float or None"
                ) from None
            if not math.isfinite(fv):
                raise RewardFunctionError(
                    f"reward function {name!r} returned {fv} at index {i}; use None for unscorable completions"
                )
            out[i, k] = fv
    return out


# ---------------------------------------------------------------------------------------------- built-ins
def length_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Completion length in words / 50, capped at 1 (a cheap, deterministic reward for smoke runs)."""
    return [min(len(c.split()) / 50.0, 1.0) for c in completions]


def make_keyword_reward(word: str) -> RewardFunc:
    """Reward = fraction of whitespace-separated words equal to ``word`` (case-insensitive)."""
    target = word.lower()

    def keyword_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        out = []
        for c in completions:
            words = [w.strip(".,!?;:\"'").lower() for w in c.split()]
            out.append(sum(w == target for w in words) / len(words) if words else 0.0)
        return out

    keyword_reward.__name__ = f"keyword_{word}"
    return keyword_reward


def scorer_reward(scorer: Any, *, name: str = "bias_reward", use_prompts: bool = True) -> RewardFunc:
    """Wrap a :class:`biasgrpo.reward.scorer.Scorer` (or anything with ``score(texts, prompts=...)``)."""

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        scores = scorer.score(list(completions), prompts=list(prompts) if use_prompts else None)
        return [float(s) for s in scores]

    reward.__name__ = name
    return reward


def load_reward(spec: str | os.PathLike[str]) -> RewardFunc:
    """Resolve a ``--reward`` value: ``length``, ``keyword:WORD``, ``default`` (the built default scorer)
    or a scorer folder (``scorer.json`` inside)."""
    text = str(spec)
    if text == "length":
        return length_reward
    if text.startswith("keyword:") and len(text) > len("keyword:"):
        return make_keyword_reward(text.split(":", 1)[1])
    if text != "default" and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(
            f"--reward {text!r}: not a built-in reward (length, keyword:WORD), not 'default' and not a folder"
        )
    try:
        from biasgrpo.reward.scorer import load_scorer
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"--reward {text!r} needs the bias reward scorer (biasgrpo.reward.scorer), which is not available "
            f"({exc}); use --reward length for a smoke run"
        ) from None
    try:
        scorer = load_scorer(None if text == "default" else Path(text).expanduser())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"--reward {text!r}: no reward model there ({exc}). Pass --reward DIR with an exported scorer "
            "folder, or --reward length for a smoke run."
        ) from None
    return scorer_reward(scorer)
