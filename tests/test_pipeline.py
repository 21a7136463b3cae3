"""The whole chain on tiny random models: every stage writes its files, a rerun reuses them all."""

from __future__ import annotations

import json
import time

import pytest

from biasgrpo.pipeline import PipelineConfig, _merge_training_data, run_pipeline
from biasgrpo.report import write_report


def test_presets_and_validation():
    demo = PipelineConfig.from_preset("demo")
    assert demo.out == "runs/demo" and demo.grpo["num_generations"] == 4
    paper = PipelineConfig.from_preset("paper", "runs/p")
    assert paper.reward_train["base_model"] == "roberta-base" and paper.grpo["learning_rate"] == 1e-6
    with pytest.raises(ValueError, match="preset"):
        PipelineConfig.from_preset("huge")
    with pytest.raises(ValueError, match="synth_n"):
        PipelineConfig(synth_n=-1)


def test_report_of_an_empty_run_says_what_is_missing(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "_not run yet_" in text and "_not built yet_" in text


def test_merge_keeps_every_record(tmp_path, fixtures_dir):
    from biasgrpo.data_synth.build import BuildConfig, build_dataset
    from biasgrpo.data_synth.schema import load_records

    data = tmp_path / "data"
    build_dataset(BuildConfig(out=str(data), sources=["crows_pairs"], max_per_source=50), progress=False)
    synth = tmp_path / "synth"
    synth.mkdir()
    row = {
        "prompt": "p",
        "chosen": "a fair answer",
        "rejected": "a biased answer",
        "domain": "age",
        "source": "synthetic",
        "id": "s1",
        "meta": {},
    }
    (synth / "synthetic.jsonl").write_text(json.dumps(row) + "\n")
    merged = _merge_training_data(data, synth, tmp_path / "merged")
    n_train = len(load_records(data / "train.jsonl"))
    assert len(load_records(merged / "train.jsonl")) == n_train + 1
    assert (merged / "val.jsonl").read_bytes() == (data / "val.jsonl").read_bytes()


@pytest.mark.timeout(900)
def test_pipeline_end_to_end_on_tiny_models(tmp_path, tiny_encoder_dir, tiny_causal_lm_dir):
    cfg = PipelineConfig(
        preset="tiny",
        out=str(tmp_path / "run"),
        data_max_per_source=60,
        synth_n=0,
        reward_train={"base_model": str(tiny_encoder_dir), "max_train": 40, "max_val": 20, "max_length": 32,
                      "batch_size": 8},
        reward_distill={"num_layers": 1, "encoder_layers": 1, "max_records": 40, "max_unlabeled": 10, "max_val": 20, "max_length": 32},
        policy=str(tiny_causal_lm_dir),
        grpo={"max_steps": 2, "num_generations": 2, "prompts_per_step": 2, "max_new_tokens": 4, "eval_every": 0,
              "num_eval_prompts": 2, "save_every": 0},
        grpo_train_prompts=12,
        eval={"n_bbq": 4, "n_stereoset": 4, "n_crows": 4, "n_bold": 2, "n_ppl": 2, "max_new_tokens": 4,
              "n_resamples": 50},
    )  # fmt: skip
    report = run_pipeline(cfg)
    run = tmp_path / "run"
    for path in ("data/manifest.json", "reward/teacher/metrics.json", "reward/student/metrics.json",
                 "reward/onnx/model.onnx", "reward/onnx/scorer.json", "reward/eval_test.json",
                 "grpo/metrics.jsonl", "grpo/result.json", "eval/base.json", "eval/trained.json"):  # fmt: skip
        assert (run / path).is_file(), path
    text = report.read_text()
    assert "## Base vs GRPO" in text and "BBQ accuracy, ambiguous" in text and "## Reward model" in text
    first = json.loads((run / "timings.json").read_text())
    mtime = (run / "eval" / "trained.json").stat().st_mtime
    start = time.time()
    run_pipeline(cfg)  # every stage's output exists: nothing is recomputed
    assert time.time() - start < 60
    assert (run / "eval" / "trained.json").stat().st_mtime == mtime
    assert json.loads((run / "timings.json").read_text())["grpo"] == first["grpo"]
