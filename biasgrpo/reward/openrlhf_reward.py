"""OpenRLHF in-process reward file: ``--remote_rm_url /path/to/openrlhf_reward.py``.

OpenRLHF imports this file by path and calls ``reward_func(queries, prompts, labels)``. The scorer folder
comes from the environment variable ``BIASGRPO_REWARD_MODEL`` (set it in the Ray runtime env); optional
``BIASGRPO_REWARD_PRECISION`` (auto/int8/fp32) and ``BIASGRPO_STRIP_TOKENS`` (comma-separated template
tokens that replace the default list). Print the path to pass to OpenRLHF with::

    python -c "import biasgrpo.reward.openrlhf_reward as m; print(m.__file__)"

Queries are split and cleaned exactly like the HTTP server does (:mod:`biasgrpo.reward.query`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from biasgrpo.reward.adapters import get_scorer
from biasgrpo.reward.query import DEFAULT_STRIP_TOKENS, QueryCleaner

PRECISION_ENV = "BIASGRPO_REWARD_PRECISION"
STRIP_TOKENS_ENV = "BIASGRPO_STRIP_TOKENS"


def _cleaner() -> QueryCleaner:
    raw = os.environ.get(STRIP_TOKENS_ENV)
    if not raw:
        return QueryCleaner()
    tokens = tuple(t.strip() for t in raw.split(",") if t.strip())
    return QueryCleaner(strip_tokens=tokens or DEFAULT_STRIP_TOKENS)


def score_queries(
    queries: Sequence[str],
    prompts: Sequence[str] | None = None,
    *,
    cleaner: QueryCleaner | None = None,
    model_dir: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Score OpenRLHF queries; returns plain lists: ``{"rewards", "scores", "extra_logs"}``.

    ``rewards`` are the scorer's scores; ``scores`` are the same values (OpenRLHF uses them for dynamic
    filtering); ``extra_logs`` holds per-query ``bias_raw``, ``truncated`` and ``unsplit`` (1 when the
    prompt was not found in the query).
    """
    if isinstance(queries, str) or (prompts is not None and isinstance(prompts, str)):
        raise TypeError("queries and prompts must be lists of strings, not a single string")
    queries = list(queries)
    if not queries:
        return {"rewards": [], "scores": [], "extra_logs": {"bias_raw": [], "truncated": [], "unsplit": []}}
    cleaner = cleaner or QueryCleaner()
    if prompts is None:
        prompts = [None] * len(queries)
    if len(prompts) != len(queries):
        raise ValueError(
            f"prompts has {len(prompts)} entries but queries has {len(queries)}: they must match"
        )
    clean_prompts, responses, flags = [], [], []
    for q, p in zip(queries, prompts, strict=True):
        cp, cr, found = cleaner.split(q, p)
        clean_prompts.append(cp)
        responses.append(cr)
        flags.append(0.0 if found else 1.0)
    load_kwargs = (
        {"precision": precision or os.environ.get(PRECISION_ENV)}
        if (precision or os.environ.get(PRECISION_ENV))
        else {}
    )
    result = get_scorer(model_dir, **load_kwargs).score_with_info(responses, prompts=clean_prompts)
    scores = [float(s) for s in result.scores]
    return {
        "rewards": scores,
        "scores": list(scores),
        "extra_logs": {
            "bias_raw": [float(x) for x in result.raw],
            "truncated": [float(x) for x in result.truncated],
            "unsplit": flags,
        },
    }


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None
) -> dict[str, Any]:
    """OpenRLHF's reward-function contract. ``labels`` are ignored (the bias reward needs no reference).

    Returns ``{"rewards": tensor, "scores": tensor, "extra_logs": {name: tensor}}`` as torch tensors when
    torch is importable (it always is inside OpenRLHF), else as lists.
    """
    out = score_queries(queries, prompts, cleaner=_cleaner())
    try:
        import torch
    except ImportError:  # pragma: no cover - OpenRLHF always has torch
        return out
    return {
        "rewards": torch.tensor(out["rewards"], dtype=torch.float32),
        "scores": torch.tensor(out["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in out["extra_logs"].items()},
    }
