"""Distillation: train a compact student to reproduce a teacher's scores (``biasgrpo reward distill``).

Two student kinds:

* ``truncated``: the first k encoder layers of a sequence classifier (by default the teacher itself),
  initialised from it and fine-tuned; saved in the standard HF layout.
* ``embedding_head``: a frozen sentence encoder (default: the offline MiniLM) + mean pooling + a small
  trained head (linear or MLP). The encoder is frozen, so embeddings are computed once and only the head
  trains: seconds, not minutes.

Objectives: ``mse`` on scores, ``margin_mse`` on pairs ((s_c - s_r) vs (t_c - t_r)), or ``both``.
The teacher is any callable ``teacher(texts, prompts) -> scores`` (:func:`distill_from_model`), so
another reward model, an ONNX scorer or an LLM judge can teach; :func:`distill` wires a trained
teacher folder in. Distillation data: the labelled texts plus unlabelled ones (prompts, synthetic data).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord, ScalarRecord, atomic_dir, write_json
from biasgrpo.reward.data import Batcher, balanced_subsample, read_records
from biasgrpo.reward.metrics import evaluate_records, mse, pairwise_accuracy, spearman
from biasgrpo.reward.model import (
    EmbeddingHeadModel,
    ScoreModule,
    TorchScorer,
    make_head,
    read_reward_config,
    truncate_layers,
    write_reward_config,
)
from biasgrpo.reward.template import TEMPLATE_KINDS, InputTemplate

logger = logging.getLogger(__name__)

STUDENTS = ("truncated", "embedding_head")
DISTILL_OBJECTIVES = ("mse", "margin_mse", "both")
Teacher = Callable[[list[str], list[str | None]], Any]


@dataclass
class DistillConfig:
    """Settings of ``biasgrpo reward distill`` (saved as ``distill_config.json`` next to the student)."""

    student: str = "truncated"
    num_layers: int = 3  # truncated: encoder layers kept
    student_base: str | None = (
        None  # truncated: classifier to cut (default: the teacher folder) or base encoder
    )
    encoder: str = (
        "minilm"  # embedding_head: the frozen sentence encoder; "teacher" = the teacher's own encoder
    )
    encoder_layers: int | None = None  # embedding_head: keep only the first k layers of the frozen encoder
    head: str = "mlp"  # embedding_head: linear | mlp
    head_hidden: int = 256
    objective: str = "both"
    margin_weight: float = 1.0
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4  # truncated student; the head uses head_lr
    freeze_embeddings: bool = (
        True  # truncated: keep the word-embedding matrix fixed (most of a small model's weights)
    )
    head_lr: float = 2e-3
    head_epochs: int = 60
    max_length: int = 128
    template: str = "pair"
    max_records: int | None = None  # balanced subsample of the labelled records
    max_unlabeled: int | None = 2000
    max_val: int | None = 1000
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.student not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, got {self.student!r}")
        if self.objective not in DISTILL_OBJECTIVES:
            raise ValueError(f"objective must be one of {DISTILL_OBJECTIVES}, got {self.objective!r}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if self.template not in TEMPLATE_KINDS:
            raise ValueError(f"template must be one of {TEMPLATE_KINDS}, got {self.template!r}")
        for name in ("num_layers", "epochs", "batch_size", "head_epochs", "head_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ValueError("lr and head_lr must be > 0")
        if self.margin_weight < 0:
            raise ValueError(f"margin_weight must be >= 0, got {self.margin_weight}")

    @classmethod
    def tiny(cls, **overrides: Any) -> DistillConfig:
        base = dict(
            freeze_embeddings=False,
            num_layers=1,
            epochs=2,
            batch_size=8,
            lr=1e-3,
            head_epochs=20,
            max_length=32,
            max_records=24,
            max_unlabeled=8,
            max_val=16,
        )
        return cls(**{**base, **overrides})


class _Memo:
    """Caches a teacher's score per (text, prompt), so no row is sent to the teacher twice."""

    def __init__(self, fn: Teacher) -> None:
        self.fn = fn
        self.cache: dict[tuple[str, str | None], float] = {}

    def __call__(self, texts: list[str], prompts: list[str | None]) -> np.ndarray:
        keys = list(zip(texts, prompts, strict=True))
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            scores = np.asarray(
                self.fn([k[0] for k in todo], [k[1] for k in todo]), dtype=np.float32
            ).reshape(-1)
            if len(scores) != len(todo):
                raise ValueError(f"the teacher returned {len(scores)} scores for {len(todo)} texts")
            self.cache.update(zip(todo, scores.tolist(), strict=True))
        return np.array([self.cache[k] for k in keys], dtype=np.float32)


def _teacher_scores(
    teacher: Teacher, texts: list[str], prompts: list[str | None], chunk: int = 256, progress: bool = True
) -> np.ndarray:
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(texts), chunk), desc="teacher scores", disable=not progress, unit="chunk"):
        scores = teacher(texts[start : start + chunk], prompts[start : start + chunk])
        out.append(np.asarray(scores, dtype=np.float32).reshape(-1))
    scores = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
    if len(scores) != len(texts) or not np.all(np.isfinite(scores)):
        raise ValueError("the teacher must return one finite score per text")
    return scores


def _build_student(config: DistillConfig) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    from biasgrpo.assets import resolve_model
    from biasgrpo.reward.model import build_teacher

    if config.student == "embedding_head":
        path = resolve_model(config.encoder, default="minilm")
        encoder = AutoModel.from_pretrained(path)
        if config.encoder_layers is not None:
            layers = encoder.encoder.layer
            if not 1 <= config.encoder_layers <= len(layers):
                raise ValueError(f"encoder_layers must be in [1, {len(layers)}], got {config.encoder_layers}")
            del layers[config.encoder_layers :]
            encoder.config.num_hidden_layers = config.encoder_layers
        torch.manual_seed(config.seed)
        head = make_head(encoder.config.hidden_size, config.head, config.head_hidden)
        return EmbeddingHeadModel(encoder, head), AutoTokenizer.from_pretrained(path)
    if config.student_base is None:
        raise ValueError(
            "a truncated student needs student_base: a sequence-classifier folder or a base encoder"
        )
    base = Path(config.student_base)
    if (
        base.is_dir()
        and read_reward_config(base)["kind"] == "sequence_classification"
        and (base / "config.json").is_file()
    ):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(base)
        tokenizer = AutoTokenizer.from_pretrained(base)
        if getattr(model.config, "num_labels", 1) != 1:
            model, tokenizer = build_teacher(str(base), seed=config.seed)
    else:
        model, tokenizer = build_teacher(config.student_base, seed=config.seed)
    return truncate_layers(model, config.num_layers), tokenizer


def _train_truncated(
    module: ScoreModule, batcher: Batcher, rows, targets, pairs, config, progress: bool
) -> list[float]:
    from tqdm.auto import tqdm

    texts, prompts = rows
    n = len(texts)
    use_mse = config.objective in ("mse", "both")
    use_margin = config.objective in ("margin_mse", "both") and len(pairs) > 0
    steps_per_epoch = (math.ceil(n / config.batch_size) if use_mse else 0) + (
        math.ceil(len(pairs) / config.batch_size) if use_margin else 0
    )
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.01
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, total)))
    gen = torch.Generator().manual_seed(config.seed)
    tgt = torch.from_numpy(targets)
    losses: list[float] = []
    module.train()
    bar = tqdm(total=total, desc=f"distill {config.student}", disable=not progress, unit="step")
    for _ in range(config.epochs):
        work = []
        if use_mse:
            perm = torch.randperm(n, generator=gen).tolist()
            work += [("mse", perm[s : s + config.batch_size]) for s in range(0, n, config.batch_size)]
        if use_margin:
            perm = torch.randperm(len(pairs), generator=gen).tolist()
            work += [
                ("margin", [pairs[i] for i in perm[s : s + config.batch_size]])
                for s in range(0, len(pairs), config.batch_size)
            ]
        for j in torch.randperm(len(work), generator=gen).tolist():
            kind, idx = work[j]
            if kind == "mse":
                inputs = batcher.tensors([texts[i] for i in idx], [prompts[i] for i in idx])
                loss = F.mse_loss(module(**inputs), tgt[idx])
            else:
                ci, ri = [c for c, _ in idx], [r for _, r in idx]
                inputs = batcher.tensors([texts[i] for i in ci + ri], [prompts[i] for i in ci + ri])
                s = module(**inputs)  # [2B]
                loss = config.margin_weight * F.mse_loss(s[: len(ci)] - s[len(ci) :], tgt[ci] - tgt[ri])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.5f}")
    bar.close()
    module.eval()
    return losses


@torch.no_grad()
def _embed(
    model: EmbeddingHeadModel, batcher: Batcher, texts: list[str], prompts: list[str | None], progress: bool
) -> torch.Tensor:
    from tqdm.auto import tqdm

    model.eval()
    order = np.argsort([-len(t) - len(p or "") for t, p in zip(texts, prompts, strict=True)], kind="stable")
    out = torch.empty(len(texts), model.encoder.config.hidden_size)
    for start in tqdm(range(0, len(order), 64), desc="embed", disable=not progress, unit="batch"):
        idx = order[start : start + 64].tolist()
        inputs = batcher.tensors([texts[i] for i in idx], [prompts[i] for i in idx])
        out[idx] = model.embed(**inputs)
    return out


def _train_head(
    model: EmbeddingHeadModel, emb: torch.Tensor, targets: np.ndarray, pairs, config
) -> list[float]:
    tgt = torch.from_numpy(targets)
    opt = torch.optim.AdamW(model.head.parameters(), lr=config.head_lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(config.seed)
    use_mse = config.objective in ("mse", "both")
    use_margin = config.objective in ("margin_mse", "both") and len(pairs) > 0
    pair_t = torch.tensor(pairs, dtype=torch.long) if use_margin else None
    losses: list[float] = []
    bs = max(config.batch_size, 128)
    model.head.train()
    for _ in range(config.head_epochs):
        perm = torch.randperm(len(emb), generator=gen)
        for s in range(0, len(emb), bs):
            idx = perm[s : s + bs]
            loss = torch.zeros(())
            if use_mse:
                loss = loss + F.mse_loss(model.head(emb[idx])[:, 0], tgt[idx])
            if use_margin:
                pi = pair_t[torch.randint(len(pair_t), (min(bs, len(pair_t)),), generator=gen)]
                diff = model.head(emb[pi[:, 0]])[:, 0] - model.head(emb[pi[:, 1]])[:, 0]
                loss = loss + config.margin_weight * F.mse_loss(diff, tgt[pi[:, 0]] - tgt[pi[:, 1]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def distill_from_model(
    teacher: Teacher,
    texts: Sequence[str],
    prompts: Sequence[str | None] | None,
    out_dir: str | os.PathLike[str],
    config: DistillConfig | None = None,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    val_texts: Sequence[str] | None = None,
    val_prompts: Sequence[str | None] | None = None,
    val_records: Sequence[Any] | None = None,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Distill any scoring function into a student saved at ``out_dir``; returns the metrics.

    ``teacher(texts, prompts)`` returns one score per text (higher = less biased). ``pairs`` are
    (chosen_index, rejected_index) into ``texts`` for the margin objective. Validation reports the
    student's Spearman/MSE against the teacher on ``val_texts`` and pairwise accuracy on ``val_records``.
    """
    t0 = time.time()
    config = config or DistillConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    texts = list(texts)
    prompts = list(prompts) if prompts is not None else [None] * len(texts)
    if not texts:
        raise ValueError("distillation needs at least one text")
    if len(prompts) != len(texts):
        raise ValueError(f"prompts has {len(prompts)} entries but texts has {len(texts)}")
    pairs = [tuple(p) for p in (pairs or [])]
    teacher = _Memo(teacher)  # validation texts often repeat training or pair texts: score each once
    targets = _teacher_scores(teacher, texts, prompts, progress=progress)

    model, tokenizer = _build_student(config)
    module = ScoreModule(model)
    if config.student == "truncated" and config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    template = InputTemplate(kind=config.template)
    pad_id = int(tokenizer.pad_token_id or 0)
    batcher = Batcher(tokenizer, template, config.max_length, module.input_names, pad_id)
    if config.student == "embedding_head":
        emb = _embed(model, batcher, texts, prompts, progress)
        losses = _train_head(model, emb, targets, pairs, config)
    else:
        losses = _train_truncated(module, batcher, (texts, prompts), targets, pairs, config, progress)
    module.eval()

    student_scorer = TorchScorer(module, batcher.tokenizer, template, config.max_length, batch_size=64)
    student_scorer.pad_id = pad_id
    metrics: dict[str, Any] = {
        "student": config.student,
        "n_texts": len(texts),
        "n_pairs": len(pairs),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "n_parameters": sum(p.numel() for p in module.parameters()),
        "n_trained_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }
    if val_texts:
        vt, vp = list(val_texts), list(val_prompts) if val_prompts is not None else [None] * len(val_texts)
        t_val = _teacher_scores(teacher, vt, vp, progress=False)
        s_val = student_scorer(vt, vp)
        metrics["val_vs_teacher"] = {
            "n": len(vt),
            "spearman": spearman(s_val, t_val),
            "mse": mse(s_val, t_val),
        }
    if val_records:
        prefs = [r for r in val_records if isinstance(r, PreferenceRecord)]
        metrics["val_student"] = evaluate_records(student_scorer, val_records)
        if prefs:
            tc = _teacher_scores(
                teacher, [r.chosen for r in prefs], [r.prompt for r in prefs], progress=False
            )
            tr = _teacher_scores(
                teacher, [r.rejected for r in prefs], [r.prompt for r in prefs], progress=False
            )
            metrics["val_teacher_pairwise_accuracy"] = pairwise_accuracy(tc, tr)
    metrics["seconds"] = round(time.time() - t0, 1)

    out_dir = Path(out_dir)
    reward_fields = {
        "max_length": config.max_length,
        "input_template": template.to_dict(),
        "objective": f"distill:{config.objective}",
        "base_model": config.encoder if config.student == "embedding_head" else config.student_base,
        **(provenance or {}),
    }
    with atomic_dir(out_dir) as tmp:
        if config.student == "embedding_head":
            model.save(tmp, tokenizer, **reward_fields)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_reward_config(tmp, kind="sequence_classification", **reward_fields)
        write_json(tmp / "distill_config.json", asdict(config))
        write_json(tmp / "metrics.json", metrics)
    return metrics


def distillation_rows(
    records: Sequence[Any], unlabeled: Sequence[Any] = ()
) -> tuple[list[str], list[str | None], list[tuple[int, int]]]:
    """Texts, prompts and (chosen, rejected) index pairs from records, plus unlabelled prompt records/strings."""
    texts: list[str] = []
    prompts: list[str | None] = []
    pairs: list[tuple[int, int]] = []
    for rec in records:
        if isinstance(rec, PreferenceRecord):
            pairs.append((len(texts), len(texts) + 1))
            texts += [rec.chosen, rec.rejected]
            prompts += [rec.prompt or None] * 2
        elif isinstance(rec, ScalarRecord):
            texts.append(rec.text)
            prompts.append(rec.prompt or None)
    for item in unlabeled:
        text = item.prompt if isinstance(item, PromptRecord) else str(item)
        texts.append(text)
        prompts.append(None)
    return texts, prompts, pairs


def distill_teacher(
    teacher_dir: str | os.PathLike[str],
    train_data: str | os.PathLike[str] | list[Any],
    out_dir: str | os.PathLike[str],
    config: DistillConfig | None = None,
    *,
    val_data: str | os.PathLike[str] | list[Any] | None = None,
    unlabeled_data: str | os.PathLike[str] | list[Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Distill a trained teacher folder into a student at ``out_dir`` (see :func:`distill_from_model`)."""
    config = config or DistillConfig()
    teacher = TorchScorer.from_dir(teacher_dir, batch_size=64)
    if config.student == "truncated" and config.student_base is None:
        config = DistillConfig(**{**asdict(config), "student_base": str(teacher_dir)})
    if config.student == "embedding_head" and config.encoder == "teacher":
        config = DistillConfig(**{**asdict(config), "encoder": str(teacher_dir)})
    records = balanced_subsample(read_records(train_data), config.max_records, config.seed)
    unlabeled = read_records(unlabeled_data) if unlabeled_data is not None else []
    if config.max_unlabeled is not None:
        unlabeled = balanced_subsample(unlabeled, config.max_unlabeled, config.seed)
    texts, prompts, pairs = distillation_rows(records, unlabeled)
    val_records = (
        balanced_subsample(read_records(val_data), config.max_val, config.seed)
        if val_data is not None
        else []
    )
    vt, vp, _ = distillation_rows(val_records)
    return distill_from_model(
        teacher,
        texts,
        prompts,
        out_dir,
        config,
        pairs=pairs,
        val_texts=vt or None,
        val_prompts=vp or None,
        val_records=val_records or None,
        progress=progress,
        provenance={"teacher": str(Path(teacher_dir).resolve())},
    )
