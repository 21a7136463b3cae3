"""Group-relative advantages: the part of GRPO that replaces PPO's critic.

Completions are laid out group-major: rows ``[g*G, (g+1)*G)`` are the G samples of prompt ``g``.
A missing reward (``None`` from a reward function) is NaN here; a completion that no function could score
gets advantage 0 and is left out of every mean and std.

All functions are pure (tensors in, tensors out) and unit-tested against hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (0 where fewer than 2 values are present)."""
    valid = ~torch.isnan(x)
    n = valid.sum(dim=dim, keepdim=True) if dim is not None else valid.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum(dim=dim, keepdim=True) if dim is not None else sq.sum()
    var = total / (n - 1).clamp(min=1)
    var = torch.where(n > 1, var, torch.zeros_like(var))
    std = var.sqrt()
    if dim is not None and not keepdim:
        std = std.squeeze(dim)
    return std


def group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group reward std broadcast back to the rows: (B,) -> (B,)."""
    return nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)  # (B,)


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "group", std_floor: float = 1e-4
) -> torch.Tensor:
    """A_i = (r_i - mean_group(r)) / max(std, std_floor) with std per ``group``, over the ``batch``, or ``none``.

    rewards: (B,) with B = n_groups * group_size, NaN = unscorable. Returns (B,) advantages, 0 for NaN rows.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of {group_size} rows, got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)  # (n_groups, G)
    centred = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).view(-1)  # (B,)
    if scale == "group":
        std = group_std(rewards, group_size)  # (B,)
    elif scale == "batch":
        std = nanstd(rewards).expand_as(rewards)  # (B,)
    elif scale == "none":
        std = None
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = centred if std is None else centred / std.clamp(min=std_floor)
    return torch.nan_to_num(adv, nan=0.0)  # (B,)


def combine_rewards(
    rewards_per_func: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    group_size: int,
    *,
    aggregation: str = "sum_then_normalize",
    scale: str = "group",
    std_floor: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn per-function rewards into (total reward, advantages), both (B,).

    rewards_per_func: (B, K), NaN where a function returned None.

    * ``sum_then_normalize``: total = weighted sum over the functions that scored the row; advantages from
      the total with :func:`group_advantages` (``scale``, ``std_floor``).
    * ``normalize_then_sum`` (GDPO): each function is normalised within its group first
      ((r - mean) / max(std, floor)), the weighted sum is taken, then the sum is centred and divided by its
      batch std, so functions on different scales contribute by weight, not by raw range. ``scale='none'``
      skips the final division.

    The returned total is always the plain weighted sum (what gets logged as ``reward``), NaN when no
    function scored the row.
    """
    w = torch.as_tensor(weights, dtype=rewards_per_func.dtype)  # (K,)
    if rewards_per_func.dim() != 2 or rewards_per_func.size(1) != w.numel():
        raise ValueError(
            f"rewards_per_func must be (B, {w.numel()}) for {w.numel()} weights, got {tuple(rewards_per_func.shape)}"
        )
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # (B,)
    total = (rewards_per_func * w).nansum(dim=1)  # (B,)
    total = total.masked_fill(unscorable, float("nan"))
    if aggregation == "sum_then_normalize":
        return total, group_advantages(total, group_size, scale=scale, std_floor=std_floor)
    if aggregation != "normalize_then_sum":
        raise ValueError(
            f"aggregation must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}"
        )
    k = rewards_per_func.size(1)
    grouped = rewards_per_func.view(-1, group_size, k)  # (n_groups, G, K)
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)  # (n_groups, 1, K)
    std_k = nanstd(grouped, dim=1, keepdim=True).clamp(min=std_floor)  # (n_groups, 1, K)
    z = ((grouped - mean_k) / std_k).view(-1, k)  # (B, K)
    summed = (z * w).nansum(dim=1).masked_fill(unscorable, float("nan"))  # (B,)
    centred = summed - torch.nanmean(summed)  # (B,)
    adv = centred if scale == "none" else centred / nanstd(summed).clamp(min=std_floor)
    return total, torch.nan_to_num(adv, nan=0.0)


def zero_std_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """Boolean (n_groups,): True where a group's rewards are all equal (std <= tol), i.e. no learning signal."""
    return nanstd(rewards.view(-1, group_size), dim=1) <= tol  # (n_groups,)
