"""The GRPO loop on the tiny causal LM: it trains, resumes exactly, checks rewards, and has a working CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from biasgrpo.grpo.config import GRPOConfig
from biasgrpo.grpo.loop import train_grpo
from biasgrpo.grpo.rewards import RewardFunctionError, call_reward_funcs, make_keyword_reward

PROMPTS = [f"Tell me something about topic number {i}." for i in range(10)]


def char_reward(prompts, completions, **kwargs):
    """Completion length in characters / 40: varies between samples of an untrained model."""
    return [len(c) / 40.0 for c in completions]


def sometimes_none(prompts, completions, **kwargs):
    return [None if i % 3 == 0 else float(len(c) % 5) for i, c in enumerate(completions)]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_two_steps_change_parameters_with_finite_metrics(tiny_causal_lm, tmp_path):
    model, tok = tiny_causal_lm
    before = _params(model)
    cfg = GRPOConfig.tiny(max_steps=2, reward_weights=[1.0, 0.5], gradient_accumulation_steps=2)
    res = train_grpo(
        model, [char_reward, sometimes_none], PROMPTS, cfg, tmp_path, tokenizer=tok, progress=False
    )
    after = _params(res.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in (
        "reward",
        "reward_std",
        "kl",
        "entropy",
        "loss",
        "grad_norm",
        "completion_length",
        "tokens_per_s",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert "rewards/char_reward/mean" in rows[0] and "rewards/sometimes_none/std" in rows[0]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert rows[1]["kl"] > 0
    for f in (
        "config.json",
        "eval.jsonl",
        "samples.jsonl",
        "summary.json",
        "policy/config.json",
        "plots/reward.png",
    ):
        assert (tmp_path / f).is_file(), f
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval_before"]["step"] == 0 and summary["eval_after"]["step"] == 2


def test_lora_trains_adapters_only_and_reference_is_the_base(tiny_causal_lm_dir, tmp_path):
    cfg = GRPOConfig.tiny(max_steps=2, lora=True, lora_rank=4, lr_schedule="constant", num_iterations=2)
    res = train_grpo(str(tiny_causal_lm_dir), char_reward, PROMPTS, cfg, tmp_path, progress=False)
    trainable = [n for n, p in res.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_b = [p for n, p in res.model.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at zero: nonzero means it trained
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["kl"] > 0
    assert (tmp_path / "policy" / "adapter_config.json").is_file()


@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_exactly(tiny_causal_lm_dir, tmp_path, lora):
    cfg = GRPOConfig.tiny(max_steps=4, save_every=2, lora=lora, lora_rank=4, warmup_steps=1, eval_every=2)
    straight = train_grpo(str(tiny_causal_lm_dir), char_reward, PROMPTS, cfg, tmp_path / "a", progress=False)
    first = train_grpo(
        str(tiny_causal_lm_dir), char_reward, PROMPTS, cfg, tmp_path / "b", stop_at_step=2, progress=False
    )
    assert first.step == 2
    resumed = train_grpo(
        str(tiny_causal_lm_dir), char_reward, PROMPTS, cfg, tmp_path / "b", resume=True, progress=False
    )
    assert resumed.step == 4
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["reward"] for r in rows_a] == [r["reward"] for r in rows_b]  # same samples after resuming


def test_reward_function_errors_name_the_function():
    def broken(prompts, completions, **kw):
        raise KeyError("label")

    def short(prompts, completions, **kw):
        return [1.0]

    def not_a_number(prompts, completions, **kw):
        return ["high", 1.0]

    args = (["p", "p"], ["a", "b"], [[1], [2]])
    with pytest.raises(RewardFunctionError, match="'broken' raised KeyError"):
        call_reward_funcs([broken], *args)
    with pytest.raises(RewardFunctionError, match="'short' returned 1 values for 2 completions"):
        call_reward_funcs([short], *args)
    with pytest.raises(RewardFunctionError, match="'not_a_number' returned 'high'"):
        call_reward_funcs([not_a_number], *args)
    got = call_reward_funcs(
        [make_keyword_reward("fair"), lambda prompts, completions, **kw: [None, 2]], *args
    )
    assert got[0, 0] == 0.0 and math.isnan(float(got[0, 1])) and got[1, 1] == 2.0


def test_train_stops_with_a_clear_error_on_a_bad_reward(tiny_causal_lm, tmp_path):
    model, tok = tiny_causal_lm

    def wrong_length(prompts, completions, **kw):
        return [0.0] * (len(completions) + 1)

    with pytest.raises(RewardFunctionError, match="wrong_length"):
        train_grpo(model, wrong_length, PROMPTS, GRPOConfig.tiny(), tmp_path, tokenizer=tok, progress=False)


def test_zero_variance_groups_are_filtered(tiny_causal_lm, tmp_path):
    model, tok = tiny_causal_lm
    before = _params(model)

    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    cfg = GRPOConfig.tiny(max_steps=1, filter_zero_std=True, beta=0.0)
    res = train_grpo(model, constant, PROMPTS, cfg, tmp_path, tokenizer=tok, progress=False)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["frac_reward_zero_std"] == 1.0 and row["frac_filtered"] == 1.0
    after = _params(res.model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # no signal, no update


def test_cli_train_and_sample(tiny_causal_lm_dir, tmp_path):
    from typer.testing import CliRunner

    from biasgrpo.grpo.cli import app

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--policy", str(tiny_causal_lm_dir), "--reward", "length", "--prompts", str(prompts)]
    res = runner.invoke(
        app, [*args, "--out", str(out), "--preset", "tiny", "--set", "max_steps=1", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert "held-out reward" in res.output
    assert json.loads((out / "config.json").read_text())["max_steps"] == 1
    res = runner.invoke(
        app, ["sample", "--policy", str(out / "policy"), "--prompts", str(prompts), "--limit", "2"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]  # stderr has load bars
    assert len(lines) == 2 and lines[0]["prompt"] == PROMPTS[0]
    bad = runner.invoke(app, [*args, "--out", str(out), "--set", "betta=1"])
    assert bad.exit_code != 0 and "betta" in bad.output
    missing = runner.invoke(
        app, [*args[:4], "--reward", str(tmp_path / "nope"), "--prompts", str(prompts), "--out", str(out)]
    )
    assert missing.exit_code != 0 and "nope" in missing.output


def test_loop_modules_depend_only_on_the_reward_protocol():
    """The training maths and loop never import the reward package (only the CLI's reward loader does, lazily)."""
    import ast
    from pathlib import Path

    import biasgrpo.grpo as pkg

    root = Path(pkg.__file__).parent
    for name in ("config", "advantages", "loss", "rollout", "loop", "checkpoint", "plots"):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.startswith(("biasgrpo.reward", "biasgrpo.evaluate")) for m in imported), name
