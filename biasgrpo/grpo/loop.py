"""The GRPO training loop: sample a group per prompt, score, compute group-relative advantages, update.

One step (:func:`biasgrpo.grpo.step.grpo_step`)::

    prompts (P) --rollout--> P*G completions --reward funcs--> rewards (P*G, K)
      --combine_rewards--> advantages (P*G,) --[ref log-probs if beta > 0, old log-probs if mu > 1]-->
      mu x (micro-batched forward/backward of the clipped surrogate + beta * KL) -> AdamW step

Everything a step writes goes to ``out_dir``: ``config.json``, ``metrics.jsonl`` (one row per step),
``eval.jsonl`` (held-out reward per evaluation, with per-prompt values), ``samples.jsonl``,
``checkpoints/step_N/``, ``policy/`` (final adapters or weights + tokenizer), ``plots/*.png``,
``summary.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasgrpo.grpo import checkpoint as ckpt
from biasgrpo.grpo.config import GRPOConfig
from biasgrpo.grpo.rewards import RewardFunc, call_reward_funcs, reward_func_name
from biasgrpo.grpo.rollout import eos_token_ids, sample_completions, tokenize_prompts
from biasgrpo.grpo.step import grpo_step

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: where, how far, and the held-out reward before/after."""

    out_dir: Path
    step: int
    evals: list[dict[str, Any]] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The trained policy (a PeftModel with LoRA). Deliberately not a dataclass field, so
        # dataclasses.asdict(result) stays small and JSON-friendly instead of deep-copying the model.
        self.model: Any = None


def load_policy(policy: str | os.PathLike[str] | torch.nn.Module, config: GRPOConfig, tokenizer=None):
    """(model, tokenizer): a path/alias through ``resolve_model`` or a model object, wrapped with LoRA if asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(policy, torch.nn.Module):
        model = policy
        if tokenizer is None:
            raise ValueError("pass tokenizer= when the policy is a model object")
    else:
        from biasgrpo.assets import resolve_model

        path = resolve_model(policy, default="smollm2")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, config.dtype))
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    model = model.to(getattr(torch, config.dtype))
    if config.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(config.seed)  # LoRA A matrices are drawn from torch's global RNG
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()  # no dropout anywhere: samples, log-probs and updates see the same function
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def prompt_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled order of the training prompts in ``epoch`` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def prompts_at(prompts: Sequence[str], cursor: int, count: int, seed: int) -> list[str]:
    """``count`` prompts starting at global position ``cursor`` of the epoch-shuffled stream."""
    n = len(prompts)
    out = []
    for c in range(cursor, cursor + count):
        out.append(prompts[int(prompt_order(n, c // n, seed)[c % n])])
    return out


def linear_schedule(config: GRPOConfig):
    """LR multiplier per optimiser step: linear warm-up, then linear decay to 0 (or constant)."""
    total = config.max_steps * config.num_iterations
    warm = int(config.warmup_steps) * config.num_iterations

    def factor(s: int) -> float:
        if s < warm:
            return s / max(1, warm)
        if config.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warm))

    return factor


@torch.no_grad()
def evaluate_reward(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    reward_funcs: Sequence[RewardFunc],
    weights: Sequence[float],
    config: GRPOConfig,
    *,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Mean total reward of one completion per held-out prompt (greedy unless ``eval_temperature`` > 0).

    Uses its own generator seeded from the config, so evaluating never moves the training RNG.
    """
    from biasgrpo.grpo.rollout import format_prompts

    gen = torch.Generator().manual_seed(config.seed + 1_000_003)
    pad = tokenizer.pad_token_id
    eos = eos_token_ids(model, tokenizer)
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        texts = format_prompts(
            tokenizer, chunk, use_chat_template=config.use_chat_template, system_prompt=config.system_prompt
        )
        ids, mask = tokenize_prompts(tokenizer, texts, config.max_prompt_length, pad)
        cids, cmask, _ = sample_completions(
            model,
            ids,
            mask,
            num_generations=1,
            max_new_tokens=config.max_new_tokens,
            eos_token_ids=eos,
            pad_token_id=pad,
            temperature=config.eval_temperature,
            top_p=config.top_p,
            generator=gen,
        )
        completions += tokenizer.batch_decode(
            [r[m.bool()].tolist() for r, m in zip(cids, cmask, strict=True)], skip_special_tokens=True
        )
    per_func = call_reward_funcs(reward_funcs, list(prompts), completions, [[] for _ in completions])
    total = (per_func * torch.tensor(weights, dtype=per_func.dtype)).nansum(1)
    total = total.masked_fill(torch.isnan(per_func).all(1), float("nan"))
    return {
        "reward_mean": float(torch.nanmean(total)),
        "rewards": [None if math.isnan(v) else float(v) for v in total.tolist()],
        "completions": completions,
    }


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _truncate_jsonl(path: Path, max_step: int) -> list[dict[str, Any]]:
    """Drop rows written after ``max_step`` (a resumed run rewrites them); returns the kept rows."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if r.get("step", 0) <= max_step]
    from biasgrpo.data_synth.schema import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return kept


# Fields that may change on --resume without changing the run's trajectory (what is logged, not what is
# learned). max_steps is not one of them: the linear LR decay spans it.
_RESUMABLE = {
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "num_samples_logged",
    "torch_threads",
}


def _split_eval(prompts: list[str], config: GRPOConfig) -> tuple[list[str], list[str]]:
    n_eval = config.num_eval_prompts
    if n_eval == 0:
        return prompts, []
    if len(prompts) <= n_eval:
        raise ValueError(
            f"{len(prompts)} prompts cannot spare num_eval_prompts={n_eval} for held-out evaluation; "
            "pass eval prompts separately or lower num_eval_prompts"
        )
    order = np.random.default_rng([config.seed, 999_983]).permutation(len(prompts))
    held = {int(i) for i in order[:n_eval]}
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[int(i)] for i in order[:n_eval]]


def train_grpo(
    policy: str | os.PathLike[str] | torch.nn.Module,
    reward_funcs: RewardFunc | Sequence[RewardFunc],
    prompts: Sequence[str],
    config: GRPOConfig,
    out_dir: str | os.PathLike[str],
    *,
    eval_prompts: Sequence[str] | None = None,
    tokenizer=None,
    resume: bool = False,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``policy`` with GRPO against ``reward_funcs`` on ``prompts``; see the module docstring.

    ``eval_prompts``: held-out prompts (default: ``config.num_eval_prompts`` split off ``prompts``).
    ``resume``: continue from the newest checkpoint in ``out_dir`` exactly (same samples, same updates).
    ``stop_at_step``: stop after this step (checkpointing it) as if interrupted; the LR schedule still
    spans ``config.max_steps``.
    """

    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    if not funcs:
        raise ValueError("train_grpo needs at least one reward function")
    weights = config.reward_weights or [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(
            f"GRPOConfig.reward_weights has {len(weights)} entries for {len(funcs)} reward functions"
        )
    names = [reward_func_name(f) for f in funcs]
    prompts = [str(p) for p in prompts]
    if eval_prompts is None:
        prompts, eval_prompts = _split_eval(prompts, config)
    eval_prompts = list(eval_prompts)
    if not prompts:
        raise ValueError("no training prompts")
    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        return _train(
            policy,
            funcs,
            names,
            weights,
            prompts,
            eval_prompts,
            config,
            out_dir,
            tokenizer,
            resume,
            stop_at_step,
            progress,
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    policy,
    funcs,
    names,
    weights,
    prompts,
    eval_prompts,
    config,
    out_dir,
    tokenizer,
    resume,
    stop_at_step,
    progress,
) -> TrainResult:
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    model, tokenizer = load_policy(policy, config, tokenizer)
    ref_model = None
    if config.beta > 0 and not config.lora:  # with LoRA the reference is the base with adapters disabled
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(config))
    generator = torch.Generator().manual_seed(config.seed)
    step, cursor = 0, 0
    metrics_path, eval_path, samples_path = out / "metrics.jsonl", out / "eval.jsonl", out / "samples.jsonl"
    latest = ckpt.latest_checkpoint(out) if resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(
            latest, model=model, optimizer=optimizer, scheduler=scheduler, generator=generator
        )
        step, cursor = int(state["step"]), int(state["cursor"])
        logger.info("resumed from %s (step %d)", latest, step)
        changed = sorted(
            k for k, v in config.to_dict().items() if state["config"].get(k) != v and k not in _RESUMABLE
        )
        if changed:
            logger.warning(
                "resuming with changed config fields %s: the run will not match an uninterrupted one", changed
            )
        for path in (metrics_path, eval_path, samples_path):
            _truncate_jsonl(path, step)
    else:
        if resume:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", out)
        for path in (metrics_path, eval_path, samples_path):
            path.unlink(missing_ok=True)
    evals = [json.loads(x) for x in eval_path.read_text().splitlines()] if eval_path.is_file() else []

    def run_eval(at_step: int) -> None:
        if not eval_prompts or any(e["step"] == at_step for e in evals):
            return
        res = evaluate_reward(model, tokenizer, eval_prompts, funcs, weights, config)
        row = {"step": at_step, "reward_mean": res["reward_mean"], "rewards": res["rewards"]}
        evals.append(row)
        _append_jsonl(eval_path, row)
        for p, c, r in list(zip(eval_prompts, res["completions"], res["rewards"], strict=True))[
            : config.num_samples_logged
        ]:
            _append_jsonl(samples_path, {"step": at_step, "prompt": p, "completion": c, "reward": r})
        logger.info("step %d: held-out reward %.4f", at_step, res["reward_mean"])

    run_eval(step)  # before training (skipped on resume when it exists)
    last_step = min(config.max_steps, stop_at_step) if stop_at_step is not None else config.max_steps
    bar = tqdm(total=config.max_steps, initial=step, desc="grpo", disable=not progress, dynamic_ncols=True)
    row: dict[str, Any] = {}
    while step < last_step:
        batch = prompts_at(prompts, cursor, config.prompts_per_step, config.seed)
        row = grpo_step(
            model, ref_model, tokenizer, batch, funcs, names, weights, config, optimizer, scheduler, generator
        )
        step += 1
        cursor += config.prompts_per_step
        row = {"step": step, **row}
        _append_jsonl(metrics_path, row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}")
        if config.eval_every and step % config.eval_every == 0:
            run_eval(step)
        if (config.save_every and step % config.save_every == 0) or step == last_step:
            ckpt.save_checkpoint(
                out,
                step=step,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                generator=generator,
                cursor=cursor,
                config=config.to_dict(),
                keep=config.keep_checkpoints,
            )
    bar.close()
    run_eval(step)
    return _finish(out, model, tokenizer, step, evals, row, config, names)


def _finish(out: Path, model, tokenizer, step: int, evals, row, config: GRPOConfig, names) -> TrainResult:
    """Save the policy, plots and summary.json."""
    from biasgrpo.data_synth.schema import write_json
    from biasgrpo.grpo.plots import paired_bootstrap, plot_eval, plot_metrics

    policy_dir = out / "policy"
    model.save_pretrained(policy_dir, safe_serialization=True)
    tokenizer.save_pretrained(policy_dir)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if step else []
    try:
        plot_metrics(rows, out / "plots")
        plot_eval(evals, out / "plots")
    except ImportError:  # matplotlib is in the train extra; plots are a convenience
        logger.warning("matplotlib is not installed: no plots (pip install 'biasgrpo[train]')")
    summary: dict[str, Any] = {"step": step, "reward_funcs": names, "policy_dir": str(policy_dir)}
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        summary.update(
            eval_before={"step": first["step"], "reward_mean": first["reward_mean"]},
            eval_after={"step": last["step"], "reward_mean": last["reward_mean"]},
            improvement=paired_bootstrap(
                [np.nan if v is None else v for v in first["rewards"]],
                [np.nan if v is None else v for v in last["rewards"]],
                seed=config.seed,
            ),
        )
    if rows:
        summary["kl_max"] = max(r["kl"] for r in rows)
        summary["kl_last"] = rows[-1]["kl"]
        summary["mean_step_time_s"] = float(np.mean([r["step_time"] for r in rows]))
    write_json(out / "summary.json", summary)
    result = TrainResult(out, step, evals, row, summary)
    result.model = model
    return result
