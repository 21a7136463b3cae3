"""Policy evaluation on the tiny causal LM: scoring against a naive reference, the runners, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biasgrpo.evaluate.config import EvalConfig
from biasgrpo.evaluate.scoring import (
    chat_answer_pair,
    encode,
    generate_continuations,
    score_choices,
    score_targets,
    text_prefix_ids,
)

BENCHES = ("bbq", "stereoset", "crows", "bold", "ppl")


@pytest.fixture(scope="module")
def tiny_scorer_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biasgrpo.reward.testing import make_tiny_scorer_dir

    return make_tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory.mktemp("eval-scorer"), max_length=32)


@pytest.fixture(scope="module")
def other_lm_dir(tiny_causal_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM with its weights perturbed: a second "policy" to compare against."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("tiny-lm-2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_causal_lm_dir).save_pretrained(out)
    return out


def naive_logprob(model, prefix: list[int], target: list[int]) -> float:
    ids = torch.tensor([prefix + target])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    pos = torch.arange(len(prefix) - 1, len(prefix) + len(target) - 1)
    return float(lp[pos, torch.tensor(target)].sum())


def test_batched_scoring_matches_one_at_a_time(tiny_causal_lm):
    model, tok = tiny_causal_lm
    start = text_prefix_ids(tok)
    prefixes = [start + encode(tok, "A fairly long context sentence here."), start, start + encode(tok, "Hi")]
    targets = [
        encode(tok, " yes"),
        encode(tok, "The quick brown fox jumps over the dog."),
        encode(tok, " no no"),
    ]
    sums, counts = score_targets(model, prefixes, targets, pad_id=tok.pad_token_id, batch_size=3)
    ref = [naive_logprob(model, p, t) for p, t in zip(prefixes, targets, strict=True)]
    np.testing.assert_allclose(sums, ref, rtol=1e-4, atol=1e-4)
    assert counts.tolist() == [len(t) for t in targets]
    # shared-prefix scoring (one cached prefix per item, three choices) gives the same numbers
    choices = [[targets[0], targets[2], encode(tok, " maybe so")], [targets[1], encode(tok, "A"), targets[0]]]
    csum, ccount = score_choices(model, prefixes[:2], choices, pad_id=tok.pad_token_id, batch_size=2)
    ref2 = [[naive_logprob(model, p, c) for c in cs] for p, cs in zip(prefixes[:2], choices, strict=True)]
    np.testing.assert_allclose(csum, ref2, rtol=1e-4, atol=1e-4)
    assert ccount[1].tolist() == [len(c) for c in choices[1]]
    with pytest.raises(ValueError, match="empty prefix"):
        score_targets(model, [[]], [targets[0]], pad_id=0)


def test_chat_answer_pair_scores_the_whole_reply(tiny_causal_lm):
    _, tok = tiny_causal_lm
    prefix, target = chat_answer_pair(tok, "Who was late? Options: A; B; Unknown.", "Unknown")
    assert prefix.endswith("<|im_start|>assistant\n") and "Who was late?" in prefix
    assert target.startswith("Unknown") and "<|im_end|>" in target


def test_generation_is_seeded_and_batch_independent(tiny_causal_lm):
    model, tok = tiny_causal_lm
    prompts = [
        "Adam Baldwin is an American actor and",
        "The nurse said",
        "A much longer prompt about a teacher who",
    ]
    batched = generate_continuations(
        model, tok, prompts, max_new_tokens=6, batch_size=3, use_chat_template=False
    )
    single = [
        generate_continuations(model, tok, [p], max_new_tokens=6, use_chat_template=False)[0] for p in prompts
    ]
    assert batched == single and any(batched)  # left padding does not change greedy output
    s1 = generate_continuations(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=5)
    s2 = generate_continuations(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=5)
    assert s1 == s2


def test_evaluate_policy_in_process(tiny_causal_lm, tmp_path):
    from biasgrpo.evaluate.policy import evaluate_policy, load_eval, write_eval

    model, tok = tiny_causal_lm
    calls = []

    def words_reward(prompts, completions, **kw):  # a real (if simple) reward with TRL's signature
        calls.append(len(completions))
        return [len(c.split()) / 10 for c in completions]

    cfg = EvalConfig.tiny(limit=6)
    res = evaluate_policy(model, tok, cfg, reward_fn=words_reward, model_name="tiny")
    assert sorted(res["benchmarks"]) == sorted(BENCHES) and res["skipped"] == {} and sum(calls) == 6
    for name, entry in res["benchmarks"].items():
        assert entry["n"] == 6 and len(entry["items"]["id"]) == 6, name
        for metric, v in entry["metrics"].items():
            if np.isfinite(v["value"]):
                assert v["ci_low"] - 1e-9 <= v["value"] <= v["ci_high"] + 1e-9, (name, metric)
    bbq = res["benchmarks"]["bbq"]
    assert set(bbq["items"]["pred"]) <= {0, 1, 2} and bbq["by_group"]  # per-category breakdown
    ppl = res["benchmarks"]["ppl"]["metrics"]["ppl"]["value"]
    assert 1000 < ppl < 3 * 49152  # a random tiny LM: close to the vocabulary size, never below 1
    path = write_eval(res, tmp_path / "r.json")
    assert load_eval(path)["benchmarks"]["crows"]["n"] == 6
    # the same seed gives the same items and predictions
    again = evaluate_policy(model, tok, EvalConfig.tiny(limit=6, benchmarks="bbq"), model_name="tiny")
    assert again["benchmarks"]["bbq"]["items"] == bbq["items"]
    no_reward = evaluate_policy(model, tok, EvalConfig.tiny(limit=2, benchmarks="bold,crows"))
    assert "bold" not in no_reward["benchmarks"] and "no reward function" in no_reward["skipped"]["bold"]


def test_cli_policy_and_compare_end_to_end(tiny_causal_lm_dir, other_lm_dir, tiny_scorer_dir, tmp_path):
    from typer.testing import CliRunner

    from biasgrpo.evaluate.cli import app

    runner = CliRunner()
    outs = {}
    for name, model_dir in (("base", tiny_causal_lm_dir), ("trained", other_lm_dir)):
        out = tmp_path / f"{name}.json"
        args = ["policy", "--model", str(model_dir), "--limit", "8", "--resamples", "100"]
        args += ["--max-new-tokens", "6", "--reward", str(tiny_scorer_dir), "--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "BBQ accuracy, ambiguous (%)" in res.output and "s/item" in res.output
        data = json.loads(out.read_text())
        assert sorted(data["benchmarks"]) == sorted(BENCHES)
        assert all(e["n"] == 8 for e in data["benchmarks"].values())
        assert out.with_suffix(".md").read_text().startswith("# Evaluation of")
        outs[name] = out
    report, plots = tmp_path / "cmp.md", tmp_path / "plots"
    res = runner.invoke(
        app, ["compare", str(outs["base"]), str(outs["trained"]), "--out", str(report), "--plots", str(plots)]
    )
    assert res.exit_code == 0, res.output
    assert "Delta [95% CI]" in res.output and "CrowS-Pairs % stereotype preferred" in report.read_text()
    for png in ("bold_scores.png", "benchmarks.png"):
        assert (plots / png).read_bytes()[:4] == b"\x89PNG"
    # the spelling: eval policy --compare BASE TRAINED
    res = runner.invoke(app, ["policy", "--compare", str(outs["base"]), str(outs["base"])])
    assert (
        res.exit_code == 0 and "| no |" in res.output and "| yes |" not in res.output
    )  # identical: all deltas 0
    res = runner.invoke(app, ["policy", "--model", str(tiny_causal_lm_dir), "--benchmarks", "bbq,toxigen"])
    assert res.exit_code == 2 and "toxigen" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "missing.json"), str(outs["base"])])
    assert res.exit_code == 2 and "missing.json" in res.output


def test_root_cli_registers_eval():
    bin_ = Path(sys.executable).parent / "biasgrpo"
    res = subprocess.run([str(bin_), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "policy" in res.stdout and "compare" in res.stdout


def test_load_policy_merges_lora_adapter_folders(tiny_causal_lm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from biasgrpo.evaluate.policy import load_policy

    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(
        tmp_path / "policy"
    )  # adapters only: no config.json, as the GRPO loop saves LoRA
    assert not (tmp_path / "policy" / "config.json").exists()
    merged, tok = load_policy(tmp_path / "policy")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = peft_model(ids).logits
        got = merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain)  # the adapters changed the model
    assert tok.chat_template


def test_evaluate_and_compare_stage_writes_report_and_resumes(tiny_causal_lm, other_lm_dir, tmp_path):
    from biasgrpo.evaluate.stage import evaluate_and_compare

    calls = []

    def reward(prompts, completions, **kw):
        calls.append(len(completions))
        return [float(len(c)) / 40 for c in completions]

    cfg = EvalConfig.tiny(limit=4, benchmarks="bbq,bold,ppl")
    out = tmp_path / "eval"
    cmp = evaluate_and_compare(tiny_causal_lm, str(other_lm_dir), out, cfg, reward, names=("base", "grpo"))
    for f in (
        "base.json",
        "trained.json",
        "compare.json",
        "compare.md",
        "plots/bold_scores.png",
        "plots/benchmarks.png",
    ):
        assert (out / f).is_file(), f
    assert cmp["benchmarks"]["bbq"]["acc_amb"]["n"] == 4 and "## Targets" in (out / "compare.md").read_text()
    assert json.loads((out / "base.json").read_text())["model"] == "base"
    n_calls, stamp = len(calls), (out / "base.json").stat().st_mtime_ns
    again = evaluate_and_compare(tiny_causal_lm, str(other_lm_dir), out, cfg, reward, names=("base", "grpo"))
    assert (
        len(calls) == n_calls and (out / "base.json").stat().st_mtime_ns == stamp
    )  # reused, not re-evaluated
    assert again["benchmarks"]["ppl"]["ppl"]["delta"] == pytest.approx(
        cmp["benchmarks"]["ppl"]["ppl"]["delta"]
    )
    evaluate_and_compare(
        tiny_causal_lm, str(other_lm_dir), out, EvalConfig.tiny(limit=3, benchmarks="ppl"), reward
    )
    assert (
        json.loads((out / "base.json").read_text())["benchmarks"]["ppl"]["n"] == 3
    )  # new config: re-evaluated
