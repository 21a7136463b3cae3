"""Bias reward models: train a teacher, distill a student, export to ONNX, score without torch.

Public names are imported lazily, so ``import biasgrpo.reward`` (and the scorer) never imports torch;
the training functions pull torch in only when first used.

    from biasgrpo.reward import Scorer, load_scorer
    scorer = load_scorer("runs/demo/reward/onnx")
    scorer.score(["some completion"], prompts=["some prompt"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS = {
    "Scorer": "biasgrpo.reward.scorer",
    "ScoreResult": "biasgrpo.reward.scorer",
    "ScorerLoadError": "biasgrpo.reward.scorer",
    "load_scorer": "biasgrpo.reward.scorer",
    "default_model_dir": "biasgrpo.reward.scorer",
    "InputTemplate": "biasgrpo.reward.template",
    "evaluate_records": "biasgrpo.reward.metrics",
    "TrainConfig": "biasgrpo.reward.train",
    "train_teacher": "biasgrpo.reward.train",
    "DistillConfig": "biasgrpo.reward.distill",
    "distill_teacher": "biasgrpo.reward.distill",
    "distill_from_model": "biasgrpo.reward.distill",
    "ExportConfig": "biasgrpo.reward.export",
    "ParityError": "biasgrpo.reward.export",
    "export_onnx": "biasgrpo.reward.export",
    "TorchScorer": "biasgrpo.reward.model",
    "load_reward_model": "biasgrpo.reward.model",
    "build_default": "biasgrpo.reward.default",
}

__all__ = [
    "DistillConfig",
    "ExportConfig",
    "InputTemplate",
    "ParityError",
    "ScoreResult",
    "Scorer",
    "ScorerLoadError",
    "TorchScorer",
    "TrainConfig",
    "build_default",
    "default_model_dir",
    "distill_teacher",
    "distill_from_model",
    "evaluate_records",
    "export_onnx",
    "load_reward_model",
    "load_scorer",
    "train_teacher",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from biasgrpo.reward.default import build_default
    from biasgrpo.reward.distill import DistillConfig, distill_from_model, distill_teacher
    from biasgrpo.reward.export import ExportConfig, ParityError, export_onnx
    from biasgrpo.reward.metrics import evaluate_records
    from biasgrpo.reward.model import TorchScorer, load_reward_model
    from biasgrpo.reward.scorer import Scorer, ScoreResult, ScorerLoadError, default_model_dir, load_scorer
    from biasgrpo.reward.template import InputTemplate
    from biasgrpo.reward.train import TrainConfig, train_teacher


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'biasgrpo.reward' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
