"""GRPOConfig: validation errors name the field, JSON round trip, --set overrides."""

from __future__ import annotations

import pytest

from biasgrpo.grpo.config import GRPOConfig


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"prompts_per_step": 0}, "prompts_per_step"),
        ({"loss_type": "ppo"}, "loss_type"),
        ({"scale_rewards": "std"}, "scale_rewards"),
        ({"reward_aggregation": "mean"}, "reward_aggregation"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"beta": -0.1}, "beta"),
        ({"epsilon_low": 1.0}, "epsilon_low"),
        ({"gradient_accumulation_steps": 3}, "gradient_accumulation_steps"),
        ({"reward_weights": []}, "reward_weights"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ],
)
def test_invalid_values_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_defaults_follow_the_paper_and_tiny_preset_is_small():
    assert GRPOConfig().num_generations == 4
    tiny = GRPOConfig.tiny()
    assert tiny.max_new_tokens <= 16 and tiny.max_steps <= 4 and not tiny.lora


def test_json_round_trip(tmp_path):
    cfg = GRPOConfig(reward_weights=[1.0, 0.5], loss_type="dapo", epsilon_high=0.28)
    path = cfg.save(tmp_path / "config.json")
    assert GRPOConfig.load(path) == cfg


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"num_generation": 8}')
    with pytest.raises(ValueError, match="num_generation"):
        GRPOConfig.load(path)


def test_overrides_parse_by_type():
    cfg = GRPOConfig().with_overrides(
        [
            "beta=0",
            "lora=false",
            "loss_type=dr_grpo",
            "reward_weights=[1, 0.25]",
            "system_prompt=none",
            "seed=3",
        ]
    )
    assert cfg.beta == 0.0 and cfg.lora is False and cfg.loss_type == "dr_grpo"
    assert cfg.reward_weights == [1.0, 0.25] and cfg.system_prompt is None and cfg.seed == 3
    with pytest.raises(ValueError, match="unknown GRPOConfig field 'betta'"):
        GRPOConfig().with_overrides(["betta=0.1"])
    with pytest.raises(ValueError, match="cannot parse"):
        GRPOConfig().with_overrides(["max_steps=ten"])
