"""biasgrpo: bias reward models and group-relative policy optimisation against social bias.

Public API. Importing this package imports neither torch nor transformers; the reward, GRPO and
pipeline names below are loaded on first use.

    from biasgrpo import load_scorer
    scorer = load_scorer("runs/demo/reward/onnx")          # exported ONNX reward (onnxruntime only)
    scorer.score("Nurses can be any gender.")               # -> float; a list -> float32 array
"""

from __future__ import annotations

import importlib
from typing import Any

from biasgrpo.data_synth.schema import (
    PreferenceRecord,
    PromptRecord,
    RecordError,
    ScalarRecord,
    load_records,
    read_jsonl,
    write_jsonl,
)

__version__ = "0.1.0"

# Loaded lazily (name -> module), so `import biasgrpo` stays instant and torch-free.
_LAZY = {
    "Scorer": "biasgrpo.reward.scorer",
    "load_scorer": "biasgrpo.reward.scorer",
    "trl_reward": "biasgrpo.reward.adapters",
    "compute_score": "biasgrpo.reward.adapters",
    "CombinedReward": "biasgrpo.reward.combine",
    "GRPOConfig": "biasgrpo.grpo.config",
    "train_grpo": "biasgrpo.grpo.loop",
    "PipelineConfig": "biasgrpo.pipeline",
    "run_pipeline": "biasgrpo.pipeline",
}

__all__ = [
    "CombinedReward",
    "GRPOConfig",
    "PipelineConfig",
    "PreferenceRecord",
    "PromptRecord",
    "RecordError",
    "ScalarRecord",
    "Scorer",
    "__version__",
    "compute_score",
    "load_records",
    "load_scorer",
    "read_jsonl",
    "run_pipeline",
    "train_grpo",
    "trl_reward",
    "write_jsonl",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'biasgrpo' has no attribute {name!r}")
