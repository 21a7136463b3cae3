"""Rollout: prompts in, a group of G sampled completions per prompt out, with masks and truncation flags.

Sampling is a short KV-cached loop rather than ``model.generate``: each prompt is prefilled once and its
cache is repeated G times (``generate(num_return_sequences=G)`` prefills every copy), tokens are drawn
with ``torch.multinomial`` from an explicit ``torch.Generator`` so a run's samples are reproducible from
its saved generator state, and the loop stops as soon as every completion has emitted EOS.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """One step's samples, group-major: rows [g*G, (g+1)*G) are the G completions of prompt g."""

    prompts: list[str]  # (P,) the user prompts as given
    prompt_ids: torch.Tensor  # (P, Lp) left-padded
    prompt_mask: torch.Tensor  # (P, Lp)
    completion_ids: torch.Tensor  # (P*G, T) padded after EOS with pad_token_id
    completion_mask: torch.Tensor  # (P*G, T) 1 up to and including EOS
    truncated: torch.Tensor  # (P*G,) bool: hit max_new_tokens without EOS
    completions: list[str]  # (P*G,) decoded completion text (special tokens dropped)
    group_size: int

    @property
    def repeated_prompts(self) -> list[str]:
        return [p for p in self.prompts for _ in range(self.group_size)]


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS plus the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id and the model's generation config names none")
    return sorted(ids)


def format_prompts(
    tokenizer, prompts: Sequence[str], *, use_chat_template: bool = True, system_prompt: str | None = None
) -> list[str]:
    """Prompt strings as the policy sees them: the chat template with a generation prompt, when it has one."""
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    out = []
    for p in prompts:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": p}
        ]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def tokenize_prompts(
    tokenizer, texts: Sequence[str], max_length: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask), each (P, Lp); over-long prompts keep their last ``max_length`` tokens."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_length:] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (P, Lp)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (P, Lp)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) -> (B, L), 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward() keyword for the KV cache: ``cache`` in transformers >= 5.x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache of a forward output (``cache`` in transformers >= 5.x, ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out.past_key_values


def _sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row from (N, V) logits with temperature and nucleus (top-p) filtering -> (N,).

    Inverse-CDF sampling (one uniform per row against the cumulative probabilities) draws exactly from
    softmax(logits / T) and is an order of magnitude faster on CPU than ``torch.multinomial`` over a 50k
    vocabulary.
    """
    if temperature <= 0:
        return logits.argmax(-1)  # (N,)
    with _few_threads(logits):
        return _inverse_cdf_sample(logits, temperature, top_p, generator)


@contextlib.contextmanager
def _few_threads(t: torch.Tensor):
    """Run a few vocabulary-sized elementwise ops on one CPU thread: at this size, waking a second thread
    costs more than it saves (10x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    if t.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _inverse_cdf_sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)  # (N, V)
        probs = probs.masked_fill(
            probs.cumsum(-1) - probs > top_p, 0.0
        )  # keep the smallest set with mass >= top_p
    cdf = probs.cumsum(-1)  # (N, V)
    u = torch.rand(cdf.size(0), 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]  # (N, 1)
    idx = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.size(1) - 1)  # (N, 1)
    if order is not None:
        idx = torch.gather(order, -1, idx)
    return idx.squeeze(-1)  # (N,)


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_generations: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample G completions per prompt. ``temperature <= 0`` means greedy.

    prompt_ids, prompt_mask: (P, Lp). Returns completion_ids (P*G, T), completion_mask (P*G, T) and
    truncated (P*G,), with T <= max_new_tokens (the loop stops once every row has emitted EOS).
    """
    g = num_generations
    cache_kw = cache_kwarg(model)
    positions = position_ids_from_mask(prompt_mask)  # (P, Lp)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = output_cache(out)
    cache.batch_repeat_interleave(g)  # every prompt prefilled once, its cache shared by its G samples
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)  # (N, V), N = P*G
    attn = prompt_mask.repeat_interleave(g, dim=0)  # (N, Lp)
    next_pos = positions[:, -1:].repeat_interleave(g, dim=0) + 1  # (N, 1)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long)
    done = torch.zeros(attn.size(0), dtype=torch.bool)  # (N,)
    tokens: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        nxt = _sample_next(logits, temperature, top_p, generator)  # (N,)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        tokens.append(nxt)
        done |= torch.isin(nxt, eos)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)  # (N, Lp + t + 1)
        out = model(
            input_ids=nxt.unsqueeze(-1),
            attention_mask=attn,
            position_ids=next_pos,
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = output_cache(out)
        logits = out.logits[:, -1]  # (N, V)
        next_pos = next_pos + 1
    completion_ids = torch.stack(tokens, dim=1)  # (N, T)
    mask, truncated = completion_mask_at_eos(completion_ids, eos)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_token_id)
    return completion_ids, mask, truncated


def completion_mask_at_eos(completion_ids: torch.Tensor, eos_token_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (N, T) that is 1 up to and including the first EOS, and truncated (N,) = no EOS at all."""
    eos = torch.as_tensor(
        list(eos_token_ids) if not isinstance(eos_token_ids, torch.Tensor) else eos_token_ids
    )
    is_eos = torch.isin(completion_ids, eos)  # (N, T)
    t = completion_ids.size(1)
    has_eos = is_eos.any(dim=1)  # (N,)
    first = torch.where(
        has_eos, is_eos.long().argmax(dim=1), torch.full_like(has_eos, t, dtype=torch.long)
    )  # (N,)
    idx = torch.arange(t).unsqueeze(0)  # (1, T)
    mask = (idx <= first.unsqueeze(1)).long()  # (N, T)
    return mask, ~has_eos


def rollout(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_generations: int,
    max_new_tokens: int,
    max_prompt_length: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
) -> Rollout:
    """Format, tokenize and sample G completions for each prompt in one batched call."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = format_prompts(
        tokenizer, prompts, use_chat_template=use_chat_template, system_prompt=system_prompt
    )
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, texts, max_prompt_length, pad)
    was_training = model.training
    model.eval()
    try:
        completion_ids, completion_mask, truncated = sample_completions(
            model,
            prompt_ids,
            prompt_mask,
            num_generations=num_generations,
            max_new_tokens=max_new_tokens,
            eos_token_ids=eos_token_ids(model, tokenizer),
            pad_token_id=pad,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
        )
    finally:
        model.train(was_training)
    completions = tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(completion_ids, completion_mask, strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(
        list(prompts),
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        truncated,
        completions,
        num_generations,
    )


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prompt_index: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens (and their entropy (N, T), detached, when asked).

    prompt_ids/prompt_mask: (P, Lp) distinct prompts; completion_*: (N, T); prompt_index: (N,) the prompt
    row each completion continues (default: row i continues prompt i). Each prompt is run once and its
    KV cache is shared by its completions (gradients flow back through the cache), so a group of G costs
    one prompt forward instead of G. Logits are divided by the sampling temperature, giving the log-probs
    of the distribution the tokens were drawn from.
    """
    from biasgrpo.grpo.loss import entropy_from_logits, token_logprobs

    n, t = completion_ids.shape
    if prompt_index is None:
        prompt_index = torch.arange(n)
    uniq, inverse = torch.unique(prompt_index, return_inverse=True)  # (U,), (N,)
    p_ids, p_mask = prompt_ids[uniq], prompt_mask[uniq]  # (U, Lp)
    p_pos = position_ids_from_mask(p_mask)  # (U, Lp)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1)
    pieces = [out.logits[:, -1:][inverse]]  # (N, 1, V): predicts completion token 0
    if t > 1:
        cache = output_cache(out)
        cache.batch_select_indices(inverse)  # (U, ...) -> (N, ...), differentiable gather
        attn = torch.cat([p_mask[inverse], completion_mask], dim=1)  # (N, Lp + T)
        pos = p_pos[inverse, -1:] + 1 + torch.arange(t).unsqueeze(0)  # (N, T)
        pieces.append(
            model(
                input_ids=completion_ids,
                attention_mask=attn,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=torch.arange(t - 1),  # (N, T - 1, V): position i predicts token i + 1
                **{cache_kwarg(model): cache},
            ).logits
        )
    # Log-probs piece by piece: concatenating (N, T, V) logits would hold one more vocabulary-sized copy.
    logps, ents = [], []
    start = 0
    for logits in pieces:
        logits = logits.float()
        if temperature > 0 and temperature != 1.0:
            logits = logits / temperature
        tokens = completion_ids[:, start : start + logits.size(1)]
        start += logits.size(1)
        logps.append(token_logprobs(logits, tokens))  # (N, t_piece)
        if with_entropy:
            with torch.no_grad():
                # row by row: the entropy's temporaries stay one row of logits in size
                ents.append(torch.cat([entropy_from_logits(row) for row in logits.detach().unsqueeze(1)]))
    logp = torch.cat(logps, dim=1)  # (N, T)
    ent = torch.cat(ents, dim=1) if with_entropy else None  # (N, T)
    return logp, ent
