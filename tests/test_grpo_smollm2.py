"""Slow: the loop on the real SmolLM2-135M-Instruct (LoRA, 2 steps), excluded from `make test`."""

from __future__ import annotations

import json
import math

import pytest

from biasgrpo.grpo.config import GRPOConfig
from biasgrpo.grpo.loop import train_grpo
from biasgrpo.grpo.rewards import length_reward


@pytest.mark.slow
def test_two_lora_steps_on_smollm2(tmp_path):
    prompts = ["Describe a typical nurse.", "What are teenagers like?", "Tell me about retired people.", "Hi"]
    cfg = GRPOConfig(
        num_generations=2, prompts_per_step=2, max_new_tokens=12, max_steps=2, learning_rate=1e-3,
        num_eval_prompts=0, eval_every=0, save_every=0,
    )  # fmt: skip
    res = train_grpo("smollm2", length_reward, prompts, cfg, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in rows)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in res.model.named_parameters() if "lora_B" in n)
    assert (tmp_path / "policy" / "adapter_model.safetensors").is_file()
