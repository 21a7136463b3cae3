"""Teacher training: fine-tune a Hugging Face encoder as a bias reward model (``biasgrpo reward train``).

Objectives (higher score = less biased):

* ``regression``: MSE between the score and a label in [0, 1] (the paper's RoBERTa-base reward model);
  preference pairs count as chosen -> 1.0, rejected -> 0.0.
* ``pairwise``: Bradley-Terry, ``-log sigmoid(r_chosen - r_rejected - margin)``, plus an optional
  reward-centering term ``center_coef * mean((r_chosen + r_rejected)^2)`` (TRL's RewardTrainer form).
* ``mixed``: pairwise + ``regression_weight`` x regression on the same pairs (and on scalar records).

The output folder is a standard ``AutoModelForSequenceClassification`` (num_labels=1) plus the tokenizer,
``reward_config.json`` (template, max length), ``train_config.json`` and ``metrics.json``. The best
checkpoint by validation (pairwise accuracy, else -MSE) is the one kept.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from biasgrpo.data_synth.schema import atomic_dir, write_json
from biasgrpo.reward.data import Batcher, balanced_subsample, batches, read_records, to_pairs, to_scalars
from biasgrpo.reward.metrics import evaluate_records
from biasgrpo.reward.model import ScoreModule, TorchScorer, build_teacher, write_reward_config
from biasgrpo.reward.template import TEMPLATE_KINDS, InputTemplate

logger = logging.getLogger(__name__)

OBJECTIVES = ("regression", "pairwise", "mixed")


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0, center_coef: float = 0.0
) -> torch.Tensor:
    """Bradley-Terry loss ``mean(-logsigmoid(c - r - margin)) + center_coef * mean((c + r)^2)``; c, r: [B]."""
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def regression_loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean squared error between scores and labels in [0, 1]; both [B]."""
    return F.mse_loss(pred, label)


@dataclass
class TrainConfig:
    """Settings of ``biasgrpo reward train`` (saved as ``train_config.json``)."""

    base_model: str = "minilm"
    objective: str = "pairwise"
    epochs: int = 1
    batch_size: int = 16  # pairs (pairwise/mixed) or rows (regression) per step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    freeze_embeddings: bool = (
        False  # keep the word-embedding matrix fixed: ~1/2 of MiniLM's weights, faster steps
    )
    max_length: int = 128
    template: str = "pair"
    margin: float = 0.0  # added to every pair's own meta['margin']
    center_coef: float = 0.0
    regression_weight: float = 1.0  # mixed only
    max_train: int | None = None  # balanced subsample across sources
    max_val: int | None = 2000
    eval_every: int | None = None  # steps; None = once per epoch
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.template not in TEMPLATE_KINDS:
            raise ValueError(f"template must be one of {TEMPLATE_KINDS}, got {self.template!r}")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.center_coef < 0 or self.regression_weight < 0:
            raise ValueError("center_coef and regression_weight must be >= 0")
        for name in ("max_train", "max_val", "eval_every", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """Runs on CPU in seconds with the tiny test encoder."""
        base = dict(
            epochs=2, batch_size=4, lr=1e-3, warmup_ratio=0.0, max_length=32, max_train=32, max_val=16
        )
        return cls(**{**base, **overrides})


def _atomic_save(model: Any, tokenizer: Any, out_dir: Path, reward_fields: dict[str, Any]) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_reward_config(tmp, **reward_fields)
        extra = (
            [p for p in out_dir.glob("*.json") if p.name in ("train_config.json", "metrics.json")]
            if out_dir.exists()
            else []
        )
        for p in extra:
            shutil.copy2(p, tmp / p.name)


def validate(scorer: TorchScorer, val_records: list[Any]) -> dict[str, Any]:
    """Validation metrics of a torch model: pairwise accuracy and/or MSE, and the selection score."""
    report = evaluate_records(scorer, val_records)
    if "pairwise" in report:
        select = report["pairwise"]["accuracy"]
    else:
        select = -report["scalar"]["mse"]
    return {"select": select, **report}


def train_teacher(
    config: TrainConfig,
    train_data: str | os.PathLike[str] | list[Any],
    val_data: str | os.PathLike[str] | list[Any] | None,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a teacher reward model and write it to ``out_dir``; returns the metrics written to metrics.json."""
    from tqdm.auto import tqdm

    t0 = time.time()
    out_dir = Path(out_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    train_records = balanced_subsample(read_records(train_data), config.max_train, config.seed)
    val_records = (
        balanced_subsample(read_records(val_data), config.max_val, config.seed)
        if val_data is not None
        else []
    )
    pairs = to_pairs(train_records)
    scalars = to_scalars(train_records, expand_pairs=config.objective == "regression")
    if config.objective != "regression" and not pairs:
        raise ValueError(
            f"objective={config.objective!r} needs preference records (chosen/rejected); the training data has none"
        )
    if config.objective == "pairwise":
        scalars = []
    if not pairs and not scalars:
        raise ValueError("the training data holds no preference or scalar records")
    if config.objective == "regression":
        pairs = []

    model, tokenizer = build_teacher(config.base_model, seed=config.seed)
    module = ScoreModule(model)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    template = InputTemplate(kind=config.template)
    pad_id = int(tokenizer.pad_token_id or 0)
    batcher = Batcher(tokenizer, template, config.max_length, module.input_names, pad_id)
    scorer = TorchScorer(module, batcher.tokenizer, template, config.max_length, batch_size=64)
    scorer.pad_id = pad_id

    steps_per_epoch = math.ceil(len(pairs) / config.batch_size) + math.ceil(len(scalars) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = int(total * config.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    reward_fields = {
        "kind": "sequence_classification",
        "max_length": config.max_length,
        "input_template": template.to_dict(),
        "objective": config.objective,
        "base_model": config.base_model,
        "train_data": str(train_data) if isinstance(train_data, (str, os.PathLike)) else "in-memory records",
    }
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    step = 0
    losses: list[float] = []

    def run_validation(epoch: int) -> None:
        nonlocal best
        entry: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        }
        if val_records:
            entry["val"] = validate(scorer, val_records)
            select = entry["val"]["select"]
        else:
            select = -entry["train_loss"]
        history.append(entry)
        logger.info("epoch %d step %d: %s", epoch, step, {k: v for k, v in entry.items() if k != "val"})
        if best is None or select > best["select"]:
            best = {
                "select": select,
                "epoch": epoch,
                "step": step,
                **({"val": entry["val"]} if "val" in entry else {}),
            }
            _atomic_save(model, tokenizer, out_dir, reward_fields)

    torch.manual_seed(config.seed)
    module.train()
    bar = tqdm(total=total, desc=f"train {config.objective}", disable=not progress, unit="step")
    for epoch in range(1, config.epochs + 1):
        work = [("pair", b) for b in batches(pairs, config.batch_size, seed=config.seed + epoch)]
        work += [("scalar", b) for b in batches(scalars, config.batch_size, seed=config.seed + epoch)]
        order = torch.randperm(
            len(work), generator=torch.Generator().manual_seed(config.seed + epoch)
        ).tolist()
        for i in order:
            kind, rows = work[i]
            if kind == "pair":
                inputs, margins = batcher.pair_batch(rows)
                scores = module(**inputs)  # [2B]
                chosen, rejected = scores[: len(rows)], scores[len(rows) :]
                loss = torch.zeros(())
                if config.objective in ("pairwise", "mixed"):
                    loss = pairwise_loss(chosen, rejected, margins + config.margin, config.center_coef)
                if config.objective == "mixed" and config.regression_weight:
                    target = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))])
                    loss = loss + config.regression_weight * regression_loss(scores, target)
            else:
                inputs, labels = batcher.scalar_batch(rows)
                weight = config.regression_weight if config.objective == "mixed" else 1.0
                loss = weight * regression_loss(module(**inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if config.eval_every and step % config.eval_every == 0 and step < total:
                module.eval()
                run_validation(epoch)
                module.train()
        module.eval()
        run_validation(epoch)
        module.train()
    bar.close()
    module.eval()

    metrics = {
        "objective": config.objective,
        "n_train_pairs": len(pairs),
        "n_train_scalars": len(scalars),
        "n_val_records": len(val_records),
        "steps": step,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "best": best,
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
    }
    write_json(out_dir / "train_config.json", asdict(config))
    write_json(out_dir / "metrics.json", metrics)
    return metrics
