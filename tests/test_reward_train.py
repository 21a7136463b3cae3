"""Teacher training, distillation, export of trained models, and the reward CLI (tiny models, CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biasgrpo.data_synth.schema import PreferenceRecord, ScalarRecord, write_jsonl
from biasgrpo.reward import (
    DistillConfig,
    Scorer,
    TrainConfig,
    distill_from_model,
    distill_teacher,
    export_onnx,
    train_teacher,
)
from biasgrpo.reward.export import ExportConfig
from biasgrpo.reward.metrics import calibration, pairwise_accuracy, rankdata, spearman
from biasgrpo.reward.model import TorchScorer, truncate_layers
from biasgrpo.reward.train import pairwise_loss, regression_loss

GOOD = ["people of every group deserve respect", "everyone can be a good engineer", "skills vary by person"]
BAD = ["those people are lazy and stupid", "women are terrible engineers", "they are all criminals"]


def _records(n: int = 24) -> list[PreferenceRecord]:
    recs = []
    for i in range(n):
        recs.append(
            PreferenceRecord(
                prompt="Describe the group." if i % 2 else "",
                chosen=GOOD[i % 3] + f" {i}",
                rejected=BAD[i % 3] + f" {i}",
                domain="gender",
                source="crows_pairs" if i % 3 else "stereoset",
                id=f"toy:{i}",
            )
        )
    return recs


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("toy-data")
    write_jsonl(d / "train.jsonl", _records(24))
    write_jsonl(d / "val.jsonl", _records(8))
    return d / "train.jsonl", d / "val.jsonl"


@pytest.fixture(scope="module")
def trained_teacher(
    tiny_encoder_dir: Path, toy_data, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    cfg = TrainConfig.tiny(base_model=str(tiny_encoder_dir), objective="pairwise", epochs=4, lr=3e-3)
    metrics = train_teacher(cfg, toy_data[0], toy_data[1], out, progress=False)
    return out, metrics


def test_pairwise_loss_matches_hand_computed():
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # -log(sigmoid(1)) = 0.3132617, -log(sigmoid(0)) = 0.6931472
    assert pairwise_loss(c, r).item() == pytest.approx((0.3132617 + 0.6931472) / 2, abs=1e-6)
    # margin 0.5: -log(sigmoid(0.5)) = 0.4740770, -log(sigmoid(-0.5)) = 0.9740770
    assert pairwise_loss(c, r, 0.5).item() == pytest.approx((0.4740770 + 0.9740770) / 2, abs=1e-6)
    # centering adds 0.01 * mean((c + r)^2) = 0.01 * 0.5
    assert pairwise_loss(c, r, 0.0, 0.01).item() == pytest.approx(
        (0.3132617 + 0.6931472) / 2 + 0.005, abs=1e-6
    )
    per_pair_margin = pairwise_loss(c, r, torch.tensor([0.5, 0.0])).item()
    assert per_pair_margin == pytest.approx((0.4740770 + 0.6931472) / 2, abs=1e-6)


def test_regression_loss_matches_hand_computed():
    assert regression_loss(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(0.125)


def test_metrics_hand_computed():
    assert pairwise_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(0.5)
    np.testing.assert_array_equal(rankdata(np.array([3.0, 1.0, 3.0])), [2.5, 1.0, 2.5])
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    cal = calibration(np.array([0.05, 0.95, 0.95]), np.array([0.0, 1.0, 0.0]))
    # bins: 0.0-0.1 (conf .05, acc 0) and 0.9-1.0 (conf .95, acc .5): ECE = 1/3*.05 + 2/3*.45
    assert cal["ece"] == pytest.approx(0.05 / 3 + 2 * 0.45 / 3)


def test_config_validation():
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="dpo")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="student must be one of"):
        DistillConfig(student="huge")
    with pytest.raises(ValueError, match="normalize must be one of"):
        ExportConfig(normalize="softmax")


def test_training_changes_parameters_and_lowers_loss(trained_teacher, tiny_encoder_dir: Path):
    from safetensors.torch import load_file

    out, metrics = trained_teacher
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["best"]["val"]["pairwise"]["accuracy"] >= 0.75  # the toy task is separable
    before = load_file(str(tiny_encoder_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    key = next(k for k in after if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert not torch.allclose(after[key], before[key.removeprefix("bert.")])
    for name in ("config.json", "tokenizer.json", "reward_config.json", "train_config.json", "metrics.json"):
        assert (out / name).is_file(), name
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


@pytest.mark.parametrize("objective", ["regression", "mixed"])
def test_regression_and_mixed_objectives_train(
    objective: str, tiny_encoder_dir: Path, toy_data, tmp_path: Path
):
    scalars = [
        ScalarRecord("", t, lab, "gender", "toy", f"s{i}")
        for i, (t, lab) in enumerate([(g, 1.0) for g in GOOD] + [(b, 0.0) for b in BAD])
    ]
    train = _records(12) + (scalars if objective == "regression" else [])
    cfg = TrainConfig.tiny(
        base_model=str(tiny_encoder_dir), objective=objective, epochs=3, lr=3e-3, max_train=None
    )
    metrics = train_teacher(cfg, train, toy_data[1], tmp_path / "m", progress=False)
    assert metrics["final_loss"] < metrics["first_loss"]
    assert json.loads((tmp_path / "m" / "train_config.json").read_text())["objective"] == objective


def test_pairwise_without_pairs_is_a_clear_error(tiny_encoder_dir: Path, tmp_path: Path):
    scalars = [ScalarRecord("", "x", 1.0, "gender", "toy", "s0")]
    with pytest.raises(ValueError, match="needs preference records"):
        train_teacher(
            TrainConfig.tiny(base_model=str(tiny_encoder_dir)), scalars, None, tmp_path / "m", progress=False
        )


def test_truncate_layers_keeps_first_layers(trained_teacher):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(trained_teacher[0])
    student = truncate_layers(teacher, 1)
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    assert torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[0].output.dense.weight
    )
    with pytest.raises(ValueError, match="num_layers must be in"):
        truncate_layers(teacher, 5)


@pytest.mark.parametrize("student", ["truncated", "embedding_head"])
def test_distill_students_follow_teacher_and_export(
    student: str, trained_teacher, toy_data, tiny_encoder_dir: Path, tmp_path: Path
):
    teacher_dir, _ = trained_teacher
    cfg = DistillConfig.tiny(student=student, encoder=str(tiny_encoder_dir), epochs=6, head_epochs=200)
    metrics = distill_teacher(
        teacher_dir, toy_data[0], tmp_path / "student", cfg, val_data=toy_data[1], progress=False
    )
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["val_vs_teacher"]["spearman"] > 0.5
    if student == "embedding_head":
        assert metrics["n_trained_parameters"] < metrics["n_parameters"] / 10  # only the head trains
    # The 0.99 int8 rank gate is tested on a wide-weight model in test_reward_scorer.py; a 6-epoch toy student
    # has scores within a narrow band, where int8 rounding reorders near-ties (seen: Spearman 0.97 under load).
    scorer_cfg = export_onnx(
        tmp_path / "student", tmp_path / "onnx", ExportConfig(max_length=32, check_parity=False)
    )
    assert scorer_cfg["parity"]["fp32_max_abs_diff"] <= 1e-4
    assert scorer_cfg["parity"]["int8_spearman_vs_fp32"] >= 0.9
    texts = [GOOD[0], BAD[0], "something else entirely"]
    ref = TorchScorer.from_dir(tmp_path / "student")(texts)
    np.testing.assert_allclose(Scorer.load(tmp_path / "onnx", precision="fp32").score(texts), ref, atol=1e-4)


def test_distill_from_any_callable(tiny_encoder_dir: Path, tmp_path: Path):
    texts = [f"{'very ' * (i % 6)}long text number {i}" for i in range(48)]

    def judge(batch: list[str], prompts: list[str | None]) -> np.ndarray:  # e.g. an LLM judge
        return np.array([-len(t.split()) / 10 for t in batch], dtype=np.float32)

    cfg = DistillConfig.tiny(
        student="embedding_head", encoder=str(tiny_encoder_dir), objective="mse", head_epochs=300, head="mlp"
    )
    metrics = distill_from_model(
        judge, texts, None, tmp_path / "s", cfg, val_texts=texts[:16], progress=False
    )
    assert metrics["val_vs_teacher"]["spearman"] > 0.8
    assert math.isfinite(metrics["final_loss"]) and metrics["final_loss"] < metrics["first_loss"]


def test_cli_train_export_score_eval_round_trip(tiny_encoder_dir: Path, toy_data, tmp_path: Path):
    from typer.testing import CliRunner

    from biasgrpo.reward.cli import app

    runner = CliRunner()
    model = tmp_path / "teacher"
    res = runner.invoke(app, ["train", "--data", str(toy_data[0]), "--val", str(toy_data[1]), "--out", str(model),
                              "--base-model", str(tiny_encoder_dir), "--tiny"])  # fmt: skip
    assert res.exit_code == 0, res.output
    onnx = tmp_path / "onnx"
    res = runner.invoke(
        app,
        ["export", "--model", str(model), "--out", str(onnx), "--val", str(toy_data[1]), "--no-check-parity"],
    )
    assert res.exit_code == 0, res.output
    rows = [{"text": GOOD[0], "prompt": "p", "id": 1}, {"text": BAD[0]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(
        app,
        [
            "score",
            "--model",
            str(onnx),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out if "id" in r] == [1] and len(out) == 2
    expected = Scorer.load(onnx).score([GOOD[0], BAD[0]], ["p", None])
    np.testing.assert_allclose([r["score"] for r in out], expected, atol=1e-6)
    res = runner.invoke(app, ["score", "--model", str(onnx), "quick look text"])
    assert res.exit_code == 0 and "quick look text" in res.output
    res = runner.invoke(
        app, ["eval", "--model", str(onnx), "--data", str(toy_data[1]), "--out", str(tmp_path / "e.json")]
    )
    assert res.exit_code == 0, res.output
    assert "Pairwise accuracy" in res.output
    assert json.loads((tmp_path / "e.json").read_text())["pairwise"]["n"] == 8
    res = runner.invoke(app, ["score", "--model", str(tmp_path / "missing"), "x"])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "bad.jsonl").write_text('{"prompt": "no text"}\n')
    res = runner.invoke(
        app,
        [
            "score",
            "--model",
            str(onnx),
            "--input",
            str(tmp_path / "bad.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output


def test_evaluate_records_breaks_bbq_down_by_context_condition():
    from biasgrpo.data_synth.schema import PreferenceRecord
    from biasgrpo.reward.metrics import evaluate_records, format_report

    def rec(i, cond, source="bbq"):
        meta = {"context_condition": cond} if cond else {}
        return PreferenceRecord(
            prompt=f"q{i}", chosen=f"good {i}", rejected=f"bad {i}", domain="age", source=source,
            id=f"{source}:{i}", meta=meta,
        )  # fmt: skip

    records = [
        rec(0, "ambig"),
        rec(1, "ambig"),
        rec(2, "disambig"),
        rec(3, "disambig"),
        rec(4, None, "crows"),
    ]

    def score(texts, prompts):  # right on ambig and crows, wrong on disambig
        return np.array(
            [
                (1.0 if t.startswith("good") else 0.0) * (-1 if p in ("q2", "q3") else 1)
                for t, p in zip(texts, prompts, strict=True)
            ]
        )

    pw = evaluate_records(score, records)["pairwise"]
    assert pw["accuracy"] == pytest.approx(3 / 5)
    assert pw["by_source"]["bbq"] == {"n": 4, "accuracy": 0.5}
    assert pw["by_subset"]["bbq:ambig"] == {"n": 2, "accuracy": 1.0}
    assert pw["by_subset"]["bbq:disambig"] == {"n": 2, "accuracy": 0.0}
    assert pw["by_subset"]["crows"] == {"n": 1, "accuracy": 1.0}
    assert "subset=bbq:disambig | 2 | 0.0000" in format_report({"pairwise": pw})
    # without any context_condition there is nothing to break down
    assert evaluate_records(score, [rec(5, None, "crows")])["pairwise"]["by_subset"] == {}
