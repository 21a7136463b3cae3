"""GRPO's objective as small pure functions: token log-probs, clipped surrogate, k3 KL, entropy, aggregation.

Shapes: B completions, T completion tokens (padded), V vocabulary. ``mask`` is (B, T) with 1 on tokens
that count (completion tokens up to and including EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits``: (B, T, V), (B, T) -> (B, T). Never materialises a full log-softmax copy."""
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the softmax: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(-1)  # (B, T)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0. (B, T) -> (B, T)."""
    d = ref_logp - logp  # (B, T)
    return torch.exp(d) - d - 1.0  # (B, T)


@dataclass
class Surrogate:
    """The clipped surrogate per token, and where the clip was active (for the clip-ratio metrics)."""

    loss: torch.Tensor  # (B, T): -min(ratio * A, clip(ratio) * A)
    clipped_low: torch.Tensor  # (B, T) bool: ratio < 1 - eps_low with A < 0 (clip bound active)
    clipped_high: torch.Tensor  # (B, T) bool: ratio > 1 + eps_high with A > 0


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> Surrogate:
    """PPO-style clipped objective with asymmetric clip range [1 - eps_low, 1 + eps_high].

    logp, old_logp: (B, T); advantages: (B,) one per completion (broadcast over its tokens).
    """
    adv = advantages.unsqueeze(-1)  # (B, 1)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)  # (B, T)
    loss = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    low = (ratio < 1.0 - epsilon_low) & (adv < 0)  # (B, T)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)  # (B, T)
    return Surrogate(loss, low, high)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    max_len: int,
    total_sequences: int | None = None,
    total_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce (B, T) per-token losses to a scalar.

    * ``grpo``: mean over sequences of each sequence's token mean (the paper; short completions weigh more).
    * ``dr_grpo``: sum / (n_sequences * max_len) (Dr. GRPO: no length bias).
    * ``dapo``: sum / number of active tokens (token-level).

    With gradient accumulation pass the whole step's ``total_sequences`` / ``total_tokens`` so that summing
    micro-batch losses gives exactly the loss of the full batch.
    """
    mask = mask.to(per_token_loss.dtype)
    n_seq = total_sequences if total_sequences is not None else per_token_loss.size(0)
    if loss_type == "grpo":
        per_seq = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
        return per_seq.sum() / n_seq
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (n_seq * max_len)
    if loss_type == "dapo":
        n_tok = total_tokens if total_tokens is not None else mask.sum().clamp(min=1.0)
        return (per_token_loss * mask).sum() / n_tok
    raise ValueError(f"loss_type must be 'grpo', 'dr_grpo' or 'dapo', got {loss_type!r}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over mask (a float for logging; 0.0 when the mask is empty)."""
    m = mask.to(x.dtype)
    return float((x * m).sum() / m.sum().clamp(min=1.0))
