"""GRPO maths against hand-computed cases: advantages, multi-reward aggregation, clipped surrogate, KL, losses."""

from __future__ import annotations

import math

import pytest
import torch

from biasgrpo.grpo.advantages import combine_rewards, group_advantages, nanstd, zero_std_groups
from biasgrpo.grpo.loss import aggregate_loss, clipped_surrogate, entropy_from_logits, kl_k3, token_logprobs

NAN = float("nan")


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_group_advantages_group_scaling_zero_mean_per_group():
    adv = group_advantages(t([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3, scale="group", std_floor=1e-4)
    # group 1: mean 2, unbiased std 1 -> [-1, 0, 1]; group 2: std 0 -> centred values are 0
    assert torch.allclose(adv, t([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(adv.view(2, 3).sum(1), t([0.0, 0.0]))


def test_group_advantages_batch_and_none_scaling():
    r = t([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    # batch std of [1,2,3,0,0,0]: mean 1, squared deviations 0+1+4+1+1+1 = 8, / 5 -> std sqrt(1.6)
    expected = t([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / math.sqrt(1.6)
    assert torch.allclose(group_advantages(r, 3, scale="batch"), expected)
    assert torch.allclose(group_advantages(r, 3, scale="none"), t([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def test_std_floor_limits_amplification_of_tiny_differences():
    r = t([0.0, 0.001])  # std = 0.001 / sqrt(2)
    tiny = group_advantages(r, 2, std_floor=1e-4)
    assert torch.allclose(tiny, t([-1 / math.sqrt(2), 1 / math.sqrt(2)]))
    floored = group_advantages(r, 2, std_floor=0.1)
    assert torch.allclose(floored, t([-0.0005 / 0.1, 0.0005 / 0.1]))


def test_none_rewards_are_excluded_and_get_zero_advantage():
    adv = group_advantages(t([1.0, NAN, 3.0]), 3)
    # mean and std over the two scored values: mean 2, std sqrt(2)
    assert torch.allclose(adv, t([-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]))
    assert not torch.isnan(adv).any()


def test_zero_std_groups_and_nanstd():
    r = t([1.0, 1.0, 0.2, 0.7, 3.0, NAN])
    assert zero_std_groups(r, 2).tolist() == [True, False, True]  # a single scored value has std 0
    assert float(nanstd(t([1.0, 3.0, NAN]))) == pytest.approx(math.sqrt(2))


def test_group_advantages_rejects_ragged_batches():
    with pytest.raises(ValueError, match="multiple of 3"):
        group_advantages(t([1.0, 2.0]), 3)


def test_multi_reward_sum_then_normalize():
    per_func = t([[1.0, 10.0], [3.0, 10.0], [2.0, 40.0], [2.0, 0.0]])
    total, adv = combine_rewards(per_func, [1.0, 0.1], 2, aggregation="sum_then_normalize")
    assert torch.allclose(total, t([2.0, 4.0, 6.0, 2.0]))
    s = 1 / math.sqrt(2)  # each group's two totals sit +-std/sqrt(2) from their mean
    assert torch.allclose(adv, t([-s, s, s, -s]))


def test_multi_reward_normalize_then_sum():
    per_func = t([[1.0, 10.0], [3.0, 10.0], [2.0, 40.0], [2.0, 0.0]])
    total, adv = combine_rewards(per_func, [1.0, 0.1], 2, aggregation="normalize_then_sum", std_floor=1e-4)
    s = 1 / math.sqrt(2)
    # per-function group z-scores: f1 -> [-s, s, 0, 0]; f2 -> [0, 0, s, -s]; weighted sum:
    summed = [-s, s, 0.1 * s, -0.1 * s]
    std = math.sqrt(sum(v * v for v in summed) / 3)  # mean is 0
    assert torch.allclose(adv, t([v / std for v in summed]))
    assert torch.allclose(total, t([2.0, 4.0, 6.0, 2.0]))  # the logged reward is still the plain weighted sum
    # the two aggregations genuinely differ here: f2's large raw range dominates sum-then-normalise
    _, adv_sum = combine_rewards(per_func, [1.0, 0.1], 2, aggregation="sum_then_normalize")
    assert not torch.allclose(adv, adv_sum)


def test_multi_reward_unscorable_row():
    per_func = t([[1.0, NAN], [NAN, NAN], [0.0, 1.0], [2.0, 2.0]])
    total, adv = combine_rewards(per_func, [1.0, 1.0], 2)
    assert math.isnan(float(total[1])) and float(total[0]) == 1.0
    assert float(adv[1]) == 0.0 and float(adv[0]) == 0.0  # alone in its group


def test_token_logprobs_and_entropy_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens), ref, atol=1e-6)
    uniform = torch.zeros(1, 1, 8)
    assert float(entropy_from_logits(uniform)) == pytest.approx(math.log(8), rel=1e-6)


def test_kl_k3_zero_when_equal_and_hand_value():
    lp = torch.log(torch.tensor([[0.5, 0.1]]))
    assert torch.allclose(kl_k3(lp, lp), torch.zeros_like(lp))
    # ref = 0.25, pi = 0.5: d = log(0.5); exp(d) - d - 1 = 0.5 + log 2 - 1
    got = kl_k3(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))
    assert float(got) == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)


def test_clipped_surrogate_asymmetric_hand_case():
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])
    logp, old = torch.log(ratios), torch.zeros(2, 3)
    sur = clipped_surrogate(logp, old, torch.tensor([1.0, -2.0]), epsilon_low=0.2, epsilon_high=0.28)
    # A=+1: min(r, clip(r, 0.8, 1.28)) = [1.28, 0.5, 1.1]; A=-2: min(-2r, -2clip) = [-3, -1.6, -2.2]
    assert torch.allclose(sur.loss, torch.tensor([[-1.28, -0.5, -1.1], [3.0, 1.6, 2.2]]), atol=1e-6)
    assert sur.clipped_high.tolist() == [[True, False, False], [False, False, False]]
    assert sur.clipped_low.tolist() == [[False, False, False], [False, True, False]]


def test_clipped_surrogate_gradient_is_zero_when_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_(True)
    sur = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    sur.loss.sum().backward()
    assert logp.grad[0, 0] == 0.0  # ratio 1.5 > 1.2 with A > 0: no push further
    assert logp.grad[0, 1] == pytest.approx(-1.1)  # d(-r)/dlogp = -r


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("grpo", (1.5 + 4.0) / 2), ("dr_grpo", 15 / (2 * 4)), ("dapo", 15 / 5)],
)
def test_aggregations_hand_values(loss_type, expected):
    per_token = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert float(aggregate_loss(per_token, mask, loss_type, max_len=4)) == pytest.approx(expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_aggregation_is_exact_under_gradient_accumulation(loss_type):
    torch.manual_seed(0)
    per_token = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    full = aggregate_loss(per_token, mask, loss_type, max_len=5)
    parts = sum(
        aggregate_loss(
            per_token[i : i + 2],
            mask[i : i + 2],
            loss_type,
            max_len=5,
            total_sequences=6,
            total_tokens=mask.sum(),
        )
        for i in (0, 2, 4)
    )
    assert float(parts) == pytest.approx(float(full), rel=1e-6)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "ppo", max_len=1)
