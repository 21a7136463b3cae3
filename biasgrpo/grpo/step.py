"""One GRPO update: roll out a group per prompt, score, group-relative advantages, clipped surrogate + KL.

::

    prompts (P) --rollout--> P*G completions --reward funcs--> rewards (P*G, K)
      --combine_rewards--> advantages (P*G,) --[ref log-probs if beta > 0, old log-probs if mu > 1]-->
      mu x (micro-batched forward/backward of the clipped surrogate + beta * KL) -> AdamW step

:func:`biasgrpo.grpo.loop.train_grpo` calls this once per step and owns everything around it (data order,
evaluation, checkpoints, logging).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from biasgrpo.grpo.advantages import combine_rewards, nanstd, zero_std_groups
from biasgrpo.grpo.config import GRPOConfig
from biasgrpo.grpo.loss import aggregate_loss, clipped_surrogate, kl_k3, masked_mean
from biasgrpo.grpo.rewards import RewardFunc, call_reward_funcs
from biasgrpo.grpo.rollout import rollout, sequence_logprobs


def grpo_step(
    model: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    tokenizer,
    prompts: list[str],
    funcs: Sequence[RewardFunc],
    names: Sequence[str],
    weights: Sequence[float],
    config: GRPOConfig,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generator: torch.Generator,
) -> dict[str, Any]:
    """One GRPO step on ``prompts``; returns the step's metrics."""
    g = config.num_generations
    t0, cpu0 = time.perf_counter(), time.process_time()
    ro = rollout(
        model,
        tokenizer,
        prompts,
        num_generations=g,
        max_new_tokens=config.max_new_tokens,
        max_prompt_length=config.max_prompt_length,
        temperature=config.temperature,
        top_p=config.top_p,
        generator=generator,
        use_chat_template=config.use_chat_template,
        system_prompt=config.system_prompt,
    )
    t1 = time.perf_counter()
    ids_list = [row[m.bool()].tolist() for row, m in zip(ro.completion_ids, ro.completion_mask, strict=True)]
    per_func = call_reward_funcs(funcs, ro.repeated_prompts, ro.completions, ids_list)  # (B, K)
    total, adv = combine_rewards(
        per_func,
        weights,
        g,
        aggregation=config.reward_aggregation,
        scale=config.scale_rewards,
        std_floor=config.std_floor,
    )
    t2 = time.perf_counter()
    zero = zero_std_groups(total, g, config.zero_std_tol)  # (P,)
    loss_mask = ro.completion_mask.clone()  # (B, T)
    if config.mask_truncated:
        loss_mask[ro.truncated] = 0
    keep = loss_mask.sum(1) > 0  # (B,)
    if config.filter_zero_std:
        keep &= ~zero.repeat_interleave(g)
    idx = keep.nonzero().squeeze(1)  # (B_kept,)
    micro = [m for m in torch.tensor_split(idx, config.gradient_accumulation_steps) if m.numel()]

    def logps(m: torch.nn.Module, rows: torch.Tensor, with_entropy: bool = False):
        return sequence_logprobs(
            m,
            ro.prompt_ids,
            ro.prompt_mask,
            ro.completion_ids[rows],
            ro.completion_mask[rows],
            prompt_index=rows // g,
            temperature=config.temperature,
            with_entropy=with_entropy,
        )

    ref_logp: dict[int, torch.Tensor] = {}
    old_logp: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for j, rows in enumerate(micro):
            if config.beta > 0:
                if ref_model is not None:
                    ref_logp[j] = logps(ref_model, rows)[0]
                else:
                    with model.disable_adapter():
                        ref_logp[j] = logps(model, rows)[0]
            if config.num_iterations > 1:
                old_logp[j] = logps(model, rows)[0]
    n_tokens = loss_mask[idx].sum().clamp(min=1).item()
    stats: dict[str, list[float]] = {k: [] for k in ("kl", "entropy", "clip_low", "clip_high", "loss")}
    grad_norm = float("nan")
    lr = optimizer.param_groups[0]["lr"]  # the rate this step's updates use
    for it in range(config.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for j, rows in enumerate(micro):
            lp, ent = logps(model, rows, with_entropy=(it == 0))  # (b, T)
            mask = loss_mask[rows]  # (b, T)
            old = old_logp[j] if config.num_iterations > 1 else lp.detach()
            sur = clipped_surrogate(lp, old, adv[rows].to(lp.dtype), config.epsilon_low, config.epsilon_high)
            per_token = sur.loss  # (b, T)
            if config.beta > 0:
                kl = kl_k3(lp, ref_logp[j])  # (b, T)
                per_token = per_token + config.beta * kl
                if it == 0:
                    stats["kl"].append(masked_mean(kl.detach(), mask) * mask.sum().item())
            loss = aggregate_loss(
                per_token,
                mask,
                config.loss_type,
                max_len=config.max_new_tokens,
                total_sequences=idx.numel(),
                total_tokens=n_tokens,
            )
            loss.backward()
            step_loss += float(loss.detach())
            if it == 0:
                w = mask.sum().item()
                stats["entropy"].append(masked_mean(ent, mask) * w)
                stats["clip_low"].append(masked_mean(sur.clipped_low.float(), mask) * w)
                stats["clip_high"].append(masked_mean(sur.clipped_high.float(), mask) * w)
        if micro:
            if config.max_grad_norm > 0:
                params = [p for p in model.parameters() if p.requires_grad]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            optimizer.step()
        stats["loss"].append(step_loss)
        scheduler.step()
    t3 = time.perf_counter()
    lengths = ro.completion_mask.sum(1).float()  # (B,)
    n_gen = int(lengths.sum())
    row: dict[str, Any] = {
        "reward": float(torch.nanmean(total)),
        "reward_std": float(nanstd(total)),
    }
    for k, name in enumerate(names):
        row[f"rewards/{name}/mean"] = float(torch.nanmean(per_func[:, k]))
        row[f"rewards/{name}/std"] = float(nanstd(per_func[:, k]))
    row.update(
        frac_reward_zero_std=float(zero.float().mean()),
        frac_filtered=1.0 - float(keep.float().mean()),
        kl=sum(stats["kl"]) / n_tokens if stats["kl"] else 0.0,
        entropy=sum(stats["entropy"]) / n_tokens if micro else float("nan"),
        **{
            "clip_ratio/low": sum(stats["clip_low"]) / n_tokens if micro else 0.0,
            "clip_ratio/high": sum(stats["clip_high"]) / n_tokens if micro else 0.0,
        },
        loss=float(np.mean(stats["loss"])),
        grad_norm=grad_norm,
        lr=lr,
        completion_length=float(lengths.mean()),
        completion_clipped_ratio=float(ro.truncated.float().mean()),
        tokens_per_s=n_gen / max(t3 - t0, 1e-9),
        completions_per_s=lengths.numel() / max(t3 - t0, 1e-9),
        step_time=t3 - t0,
        step_cpu_time=time.process_time() - cpu0,  # CPU seconds, all threads: robust to a busy machine
        time_generate=t1 - t0,
        time_reward=t2 - t1,
        time_update=t3 - t2,
    )
    row["clip_ratio/region"] = row["clip_ratio/low"] + row["clip_ratio/high"]
    return row
