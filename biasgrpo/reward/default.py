"""The default bias reward model: data build -> teacher -> distill -> export, sized for 2 CPU cores.

``biasgrpo reward build-default`` writes into ``<cache>/reward/default-v1/`` (``load_scorer()`` with no
argument loads ``.../onnx``). Each stage is skipped when its output already exists, unless ``rebuild``.
The recipe (sized to finish in under 20 minutes on 2 idle cores):

* teacher: the offline all-MiniLM-L6-v2 encoder, ``mixed`` objective (Bradley-Terry + MSE to 1/0, so
  scores sit roughly in [0, 1] and rank pairs), 2 epochs over a source-balanced subsample of 3,400 pairs
  (all ~1,240 CrowS-Pairs training pairs, ~1,080 StereoSet, ~1,080 BBQ; word embeddings frozen);
* student: the teacher's first 3 encoder layers (and its classifier), fine-tuned on the teacher's scores
  (MSE + margin-MSE on pairs) over 3,000 training texts (1,500 pairs) plus 1,000 unlabelled BOLD /
  HolisticBias prompts;
* export: fp32 + int8 ONNX, parity-checked; evaluation on the test split is written into the model card.

What it cannot do: BBQ's disambiguated questions ask which person the context says did something, i.e.
reading comprehension; a 6-layer MiniLM trained for minutes on a CPU stays at chance there (it scores both
answers alike), while it ranks BBQ's ambiguous pairs (unknown vs stereotyped answer) almost perfectly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from biasgrpo.data_synth.schema import atomic_write_text, write_json

logger = logging.getLogger(__name__)


def default_train_config() -> Any:
    from biasgrpo.reward.train import TrainConfig

    return TrainConfig(
        base_model="minilm",
        objective="mixed",
        epochs=2,
        batch_size=16,
        lr=1e-4,
        max_length=128,
        max_train=3400,
        max_val=400,
        freeze_embeddings=True,
    )


def default_distill_config() -> Any:
    from biasgrpo.reward.distill import DistillConfig

    # Measured on the data build, one teacher, 2,000 test texts (PyTorch fp32): this truncated student
    # reached Spearman 0.915 with the teacher (3 epochs, lr 2e-4; 0.877 with 2 epochs at 1e-4), and the
    # teacher's pairwise accuracy; the previous default (frozen 3-layer encoder + MLP head) is below it.
    return DistillConfig(
        student="truncated", num_layers=3, objective="both", epochs=3, lr=2e-4, batch_size=32,
        max_length=128, max_records=1500, max_unlabeled=1000, max_val=300,
    )  # fmt: skip


def build_default(
    out: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    train_config: Any = None,
    distill_config: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the default reward model; returns paths, timings (seconds per stage) and test metrics."""
    from biasgrpo.data_synth.schema import load_records
    from biasgrpo.reward.distill import distill_teacher
    from biasgrpo.reward.distill import distillation_rows as rows_of
    from biasgrpo.reward.export import ExportConfig, export_onnx, model_card_text
    from biasgrpo.reward.metrics import evaluate_records
    from biasgrpo.reward.scorer import Scorer, default_model_dir
    from biasgrpo.reward.train import train_teacher

    root = Path(out) if out is not None else default_model_dir().parent
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()

    data = Path(data_dir) if data_dir is not None else root / "data"
    t = time.time()
    if not (data / "train.jsonl").is_file() or (rebuild and data_dir is None):
        # Stages meet through files: the data build runs as its own command, so the reward component
        # depends on the record files, not on the data-building code.
        cmd = [sys.executable, "-m", "biasgrpo.cli", "data", "build", "--out", str(data)]
        logger.info("building the dataset: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (data / "train.jsonl").is_file():
            raise RuntimeError(f"`biasgrpo data build --out {data}` failed:\n{proc.stderr[-2000:]}")
    timings["data"] = round(time.time() - t, 1)

    teacher_dir, student_dir, onnx_dir = root / "teacher", root / "student", root / "onnx"
    t = time.time()
    if rebuild or not (teacher_dir / "metrics.json").is_file():
        train_teacher(
            train_config or default_train_config(),
            data / "train.jsonl",
            data / "val.jsonl",
            teacher_dir,
            progress=progress,
        )
    timings["teacher"] = round(time.time() - t, 1)

    t = time.time()
    if rebuild or not (student_dir / "metrics.json").is_file():
        unlabeled = data / "prompts_train.jsonl"
        distill_teacher(
            teacher_dir, data / "train.jsonl", student_dir, distill_config or default_distill_config(),
            val_data=data / "val.jsonl", unlabeled_data=unlabeled if unlabeled.is_file() else None, progress=progress,
        )  # fmt: skip
    timings["distill"] = round(time.time() - t, 1)

    t = time.time()
    if rebuild or not (onnx_dir / "scorer.json").is_file():
        val = load_records(data / "val.jsonl")[:200]
        texts, prompts, _ = rows_of(val)
        export_onnx(student_dir, onnx_dir, ExportConfig(), validation_texts=texts, validation_prompts=prompts)
    timings["export"] = round(time.time() - t, 1)
    timings["build_total"] = round(time.time() - t_all, 1)

    t = time.time()
    test = load_records(data / "test.jsonl")
    report = evaluate_records(Scorer.load(onnx_dir).score, test)
    timings["eval_test"] = round(time.time() - t, 1)
    write_json(root / "eval_test.json", report)
    teacher_metrics = json.loads((teacher_dir / "metrics.json").read_text())
    student_metrics = json.loads((student_dir / "metrics.json").read_text())
    summary = {
        "test_pairwise_accuracy": report.get("pairwise", {}).get("accuracy"),
        "test_by_source": report.get("pairwise", {}).get("by_source"),
        "test_by_subset": report.get("pairwise", {}).get("by_subset"),
        "teacher_best_val": (teacher_metrics.get("best") or {}).get("select"),
        "student_vs_teacher_val": student_metrics.get("val_vs_teacher"),
    }
    card = {
        "title": "biasgrpo default bias reward model (MiniLM-L6 teacher -> its first 3 layers, distilled, int8 ONNX)",
        "training_data": f"`biasgrpo data build` at {data}: CrowS-Pairs, StereoSet (dev) and BBQ preference pairs "
        "(chosen = less biased), source-balanced subsample; unlabelled BOLD / HolisticBias prompts for distillation. "
        "Licences: CC BY-SA 4.0 (CrowS-Pairs, StereoSet, BOLD, HolisticBias), CC BY 4.0 (BBQ).",
        "metrics": "```json\n" + json.dumps({**summary, "timings_s": timings}, indent=2) + "\n```",
        "intended_use": "A fast reward signal for bias-reducing RL fine-tuning (GRPO, PPO) and for ranking "
        "completions. Scores are relative: compare completions of the same prompt.",
        "limitations": "Trained on English benchmark templates; it learns what these benchmarks call biased, "
        "rewards evasive 'cannot be determined' answers on BBQ-like questions, and can be gamed. It does not do "
        "the reading comprehension that BBQ's disambiguated questions need: there it scores the supported and "
        "the other answer about alike (see bbq:disambig above, near 0.5). Pair it with a fluency or task reward "
        "and inspect samples.",
    }
    scorer_cfg = json.loads((onnx_dir / "scorer.json").read_text())
    atomic_write_text(onnx_dir / "README.md", model_card_text(scorer_cfg, card))
    os.chmod(onnx_dir / "README.md", 0o644)
    result = {"root": str(root), "onnx": str(onnx_dir), "timings": timings, "summary": summary}
    write_json(root / "build_default.json", result)
    return result
