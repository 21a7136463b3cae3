"""The one configuration object of a GRPO run: typed, validated, saved as JSON next to the run.

``GRPOConfig()`` holds the defaults (group size 4 as in the BiasGRPO paper); ``GRPOConfig.tiny()`` is a
preset that runs on CPU in seconds with the tiny test models. Override fields from strings with
:meth:`GRPOConfig.with_overrides` (what the CLI's ``--set key=value`` uses).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
REWARD_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
LR_SCHEDULES = ("linear", "constant")
DTYPES = ("float32", "bfloat16")


@dataclass
class GRPOConfig:
    """Every knob of a GRPO run (see docs/grpo.md for what each one does)."""

    # -- sampling
    num_generations: int = 4  # G: completions per prompt (the group)
    prompts_per_step: int = (
        4  # prompts per optimisation step; the batch holds prompts_per_step * G completions
    )
    max_new_tokens: int = 64
    max_prompt_length: int = 256  # longer prompts are truncated from the left
    temperature: float = 1.0
    top_p: float = 1.0
    use_chat_template: bool = True
    system_prompt: str | None = None
    mask_truncated: bool = False  # drop completions that hit max_new_tokens without EOS from the loss
    # -- optimisation
    max_steps: int = 100
    learning_rate: float = 1e-5
    lr_schedule: str = "linear"  # linear decay to 0 after warm-up, or constant after warm-up
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    gradient_accumulation_steps: int = 1  # micro-batches the step's completions are split into
    num_iterations: int = 1  # mu: optimiser passes over each generated batch
    # -- GRPO objective
    beta: float = 0.04  # KL coefficient (k3 estimator); 0 skips the reference forward entirely
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # > epsilon_low gives DAPO's clip-higher
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    std_floor: float = 1e-4  # advantages divide by max(std, std_floor)
    filter_zero_std: bool = False  # drop groups whose reward std <= zero_std_tol from the loss
    zero_std_tol: float = 1e-6
    reward_weights: list[float] | None = None  # one per reward function; None = all 1.0
    reward_aggregation: str = "sum_then_normalize"
    # -- model
    lora: bool = True
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    dtype: str = "float32"
    # -- bookkeeping
    seed: int = 0
    eval_every: int = 10  # steps between held-out evaluations (0 = only before and after)
    num_eval_prompts: int = 16  # held out from the prompt list when no eval prompts are given
    eval_temperature: float = 0.0  # 0 = greedy decoding for the held-out reward
    num_samples_logged: int = 4  # sample completions written at each eval
    save_every: int = 50  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = keep all)
    torch_threads: int = 0  # 0 = leave torch's default

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GRPOConfig.{name} must be an integer >= 1, got {value!r}")

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"GRPOConfig.{name} must be a finite number >= 0, got {value!r}")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(
                    f"GRPOConfig.{name} must be one of {list(options)}, got {getattr(self, name)!r}"
                )

        for name in (
            "num_generations",
            "prompts_per_step",
            "max_new_tokens",
            "max_prompt_length",
            "max_steps",
        ):
            positive(name)
        for name in ("gradient_accumulation_steps", "num_iterations", "lora_rank"):
            positive(name)
        for name in ("learning_rate", "warmup_steps", "weight_decay", "beta", "epsilon_low", "epsilon_high"):
            non_negative(name)
        for name in ("std_floor", "zero_std_tol", "eval_every", "num_eval_prompts", "save_every"):
            non_negative(name)
        for name in (
            "keep_checkpoints",
            "num_samples_logged",
            "eval_temperature",
            "lora_dropout",
            "torch_threads",
        ):
            non_negative(name)
        if self.num_generations < 2:
            raise ValueError(
                f"GRPOConfig.num_generations must be >= 2 (group-relative advantages need a group), "
                f"got {self.num_generations}"
            )
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"GRPOConfig.temperature must be > 0, got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"GRPOConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if self.epsilon_low >= 1.0:
            raise ValueError(
                f"GRPOConfig.epsilon_low must be < 1 (ratio clip at 1 - eps), got {self.epsilon_low}"
            )
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ValueError("GRPOConfig.adam_beta1 and adam_beta2 must be in [0, 1)")
        batch = self.prompts_per_step * self.num_generations
        if batch % self.gradient_accumulation_steps:
            raise ValueError(
                f"GRPOConfig.gradient_accumulation_steps={self.gradient_accumulation_steps} must divide "
                f"prompts_per_step * num_generations = {batch}"
            )
        choice("loss_type", LOSS_TYPES)
        choice("scale_rewards", SCALE_REWARDS)
        choice("reward_aggregation", REWARD_AGGREGATIONS)
        choice("lr_schedule", LR_SCHEDULES)
        choice("dtype", DTYPES)
        if self.reward_weights is not None:
            if not isinstance(self.reward_weights, list | tuple) or not self.reward_weights:
                raise ValueError(
                    f"GRPOConfig.reward_weights must be a non-empty list, got {self.reward_weights!r}"
                )
            self.reward_weights = [float(w) for w in self.reward_weights]
            if not all(math.isfinite(w) for w in self.reward_weights):
                raise ValueError(f"GRPOConfig.reward_weights must be finite, got {self.reward_weights}")
        if not self.lora_target_modules:
            raise ValueError("GRPOConfig.lora_target_modules must name at least one module")

    # ---------------------------------------------------------------- presets and (de)serialisation
    @classmethod
    def tiny(cls, **overrides: Any) -> GRPOConfig:
        """A preset that runs in seconds on CPU with the 2-layer test models."""
        base = dict(
            num_generations=2,
            prompts_per_step=2,
            max_new_tokens=8,
            max_prompt_length=64,
            max_steps=2,
            learning_rate=1e-2,
            beta=0.04,
            lora=False,
            eval_every=0,
            num_eval_prompts=2,
            save_every=0,
            torch_threads=1,  # a 2-layer model gains nothing from more threads, and they cost on a busy machine
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> GRPOConfig:
        """Build from a mapping; unknown keys are an error naming the key (typos never pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown GRPOConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as JSON, atomically."""
        from biasgrpo.data_synth.schema import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GRPOConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of GRPOConfig fields")
        return cls.from_dict(data, where=str(path))

    def with_overrides(self, assignments: list[str]) -> GRPOConfig:
        """Return a copy with ``key=value`` strings applied (values parsed by the field's type)."""
        data = self.to_dict()
        hints = get_type_hints(type(self))
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"--set expects key=value, got {item!r}")
            key, raw = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if key not in hints:
                raise ValueError(f"--set {item!r}: unknown GRPOConfig field {key!r}; known: {sorted(hints)}")
            data[key] = _parse_value(raw.strip(), hints[key], key)
        return type(self).from_dict(data)


def _parse_value(raw: str, hint: Any, key: str) -> Any:
    """Parse a ``--set`` value by the dataclass field type (JSON for lists, none/null for optionals)."""
    args = get_args(hint)
    if type(None) in args:
        if raw.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = get_origin(hint)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if origin is list:
            value = (
                json.loads(raw) if raw.startswith("[") else [v.strip() for v in raw.split(",") if v.strip()]
            )
            inner = get_args(hint)[0] if get_args(hint) else str
            return [inner(v) for v in value]
        return raw
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ValueError(f"--set {key}={raw!r}: cannot parse as {hint}") from None
