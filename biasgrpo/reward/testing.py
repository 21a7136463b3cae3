"""Helpers for tests elsewhere (server, adapters, GRPO): build a tiny exported scorer folder in seconds.

    from biasgrpo.reward.testing import make_tiny_scorer_dir

    @pytest.fixture(scope="session")
    def tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory):
        return make_tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory.mktemp("tiny-scorer"))

The model has random weights (it scores nothing meaningful) but the folder is a real export: fp32 and int8
ONNX graphs, ``tokenizer.json``, ``scorer.json`` and a model card, loadable with ``Scorer.load``.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_tiny_reward_model(
    encoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_length: int = 64,
) -> Path:
    """Save a random ``BertForSequenceClassification`` (num_labels=1) on top of a tiny encoder folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from biasgrpo.reward.model import write_reward_config
    from biasgrpo.reward.template import InputTemplate

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=1)
    with torch.no_grad():
        # Wide random weights spread the scores across texts, so the int8 rank-parity check is meaningful
        # (with the default 0.02 init every text scores about the same and ranks are noise).
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 1.0 if "embeddings" in name else 0.3)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(out)
    write_reward_config(
        out,
        kind="sequence_classification",
        max_length=max_length,
        input_template=InputTemplate().to_dict(),
        objective="random",
    )
    return out


def make_tiny_scorer_dir(
    encoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_length: int = 64,
    quantize: bool = True,
) -> Path:
    """Build a tiny random reward model and export it; returns the scorer folder ``out_dir/onnx``."""
    from biasgrpo.reward.export import ExportConfig, export_onnx

    out = Path(out_dir)
    model_dir = make_tiny_reward_model(encoder_dir, out / "model", seed=seed, max_length=max_length)
    export_onnx(model_dir, out / "onnx", ExportConfig(max_length=max_length, quantize=quantize))
    return out / "onnx"
