"""Rollout on the tiny causal LM: EOS masks, reproducible sampling, shared-prompt log-probs, the sampler."""

from __future__ import annotations

import torch

from biasgrpo.grpo.rollout import (
    _sample_next,
    completion_mask_at_eos,
    format_prompts,
    position_ids_from_mask,
    rollout,
    sequence_logprobs,
    tokenize_prompts,
)


def test_completion_mask_stops_at_first_eos_and_flags_truncation():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, truncated = completion_mask_at_eos(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_chat_template_and_left_padding(tiny_causal_lm):
    _, tok = tiny_causal_lm
    texts = format_prompts(tok, ["hi", "a longer prompt here"], system_prompt="Be fair.")
    assert "Be fair." in texts[0] and texts[0].rstrip().endswith("assistant")
    ids, mask = tokenize_prompts(tok, texts, max_length=512, pad_token_id=tok.pad_token_id)
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and mask[:, -1].tolist() == [1, 1]  # left padded
    ids_cut, _ = tokenize_prompts(tok, texts, max_length=5, pad_token_id=tok.pad_token_id)
    assert ids_cut.shape[1] == 5 and ids_cut[1].tolist() == ids[1, -5:].tolist()  # keeps the end
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1]])).tolist() == [[0, 0, 0, 1]]


def _rollout(model, tok, seed, **kw):
    args = dict(num_generations=3, max_new_tokens=6, max_prompt_length=64, temperature=1.0, top_p=1.0)
    args.update(kw)
    return rollout(
        model, tok, ["Describe a nurse.", "Hello"], generator=torch.Generator().manual_seed(seed), **args
    )


def test_rollout_shapes_masks_and_reproducibility(tiny_causal_lm):
    model, tok = tiny_causal_lm
    a, b, c = _rollout(model, tok, 0), _rollout(model, tok, 0), _rollout(model, tok, 1)
    assert a.completion_ids.shape[0] == 6 and a.completion_ids.shape[1] <= 6
    assert len(a.completions) == 6 and a.repeated_prompts[:3] == ["Describe a nurse."] * 3
    assert torch.equal(a.completion_ids, b.completion_ids)  # same generator seed, same samples
    assert not torch.equal(a.completion_ids, c.completion_ids)
    eos = tok.eos_token_id
    for row, m, tr in zip(a.completion_ids, a.completion_mask, a.truncated, strict=True):
        n = int(m.sum())
        assert (row[:n] == eos).sum() == (0 if tr else 1)  # exactly one EOS, at the end, unless truncated
        assert bool(tr) == (eos not in row[:n].tolist())


def test_rollout_matches_model_generate_when_greedy(tiny_causal_lm):
    model, tok = tiny_causal_lm
    ro = _rollout(model, tok, 0, num_generations=1, temperature=0.0)
    ids, mask = ro.prompt_ids, ro.prompt_mask
    ref = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
    )[:, ids.shape[1] :]
    t = ro.completion_ids.shape[1]
    assert torch.equal(ro.completion_ids[ro.completion_mask.bool()], ref[:, :t][ro.completion_mask.bool()])


def test_shared_prompt_logprobs_equal_a_full_forward(tiny_causal_lm):
    model, tok = tiny_causal_lm
    ro = _rollout(model, tok, 0)
    idx = torch.arange(6) // 3
    logp, ent = sequence_logprobs(
        model,
        ro.prompt_ids,
        ro.prompt_mask,
        ro.completion_ids,
        ro.completion_mask,
        prompt_index=idx,
        temperature=0.7,
        with_entropy=True,
    )
    # reference: one plain forward over prompt + completion per row
    ids = torch.cat([ro.prompt_ids[idx], ro.completion_ids], 1)
    attn = torch.cat([ro.prompt_mask[idx], ro.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    t = ro.completion_ids.shape[1]
    ref = (
        torch.log_softmax(logits[:, -t - 1 : -1] / 0.7, -1)
        .gather(-1, ro.completion_ids.unsqueeze(-1))
        .squeeze(-1)
    )
    m = ro.completion_mask.bool()
    assert torch.allclose(logp[m], ref[m], atol=1e-4)
    assert ent.shape == logp.shape and bool((ent[m] > 0).all())


def test_shared_prompt_logprobs_carry_gradients_into_the_prompt_pass(tiny_causal_lm):
    model, tok = tiny_causal_lm
    ro = _rollout(model, tok, 0)
    logp, _ = sequence_logprobs(
        model,
        ro.prompt_ids,
        ro.prompt_mask,
        ro.completion_ids,
        ro.completion_mask,
        prompt_index=torch.arange(6) // 3,
    )
    (logp * ro.completion_mask).sum().backward()
    k_proj = model.model.layers[0].self_attn.k_proj.weight  # keys reach completions only through the cache
    assert k_proj.grad is not None and float(k_proj.grad.abs().sum()) > 0


def test_sampler_follows_the_distribution_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(20000, 1)
    draws = _sample_next(logits, 1.0, 1.0, g)
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)
    nucleus = _sample_next(logits, 1.0, 0.7, g)  # keeps {0.6, 0.3}: renormalised 2/3, 1/3
    freq = torch.bincount(nucleus, minlength=3).float() / nucleus.numel()
    assert freq[2] == 0 and abs(float(freq[0]) - 2 / 3) < 0.015
    assert _sample_next(logits[:2], 0.0, 1.0, g).tolist() == [0, 0]  # greedy
