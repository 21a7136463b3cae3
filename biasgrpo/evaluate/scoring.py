"""Batched log-likelihood scoring and batched generation with a causal LM (torch + transformers).

* :func:`score_targets`: ``sum log p(target | prefix)`` and the target length for many (prefix, target)
  token-id pairs. Rows are sorted by length (less padding), left-padded with explicit position ids, and
  only the logits over the target positions are materialised (``logits_to_keep`` when the model has it).
* :func:`text_prefix_ids`: the one-token start-of-text prefix for plain sentences (BOS, else EOS), so the
  first word of a sentence is scored too.
* :func:`chat_answer_pair`: a question as the user turn and an answer as the assistant reply under the
  tokenizer's chat template, split into prefix and target (the target includes the end-of-turn marker).
* :func:`generate_continuations`: batched ``model.generate`` with left padding, seeded without touching
  the global RNG.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(_base_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (a pad id is only used under a zero attention mask)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a pad_token_id nor an eos_token_id; set tokenizer.pad_token")


def text_prefix_ids(tokenizer) -> list[int]:
    """``[bos_token_id]`` (or ``[eos_token_id]`` when there is no BOS): the context for a sentence's first token."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [int(tid)]
    raise ValueError("the tokenizer has neither a bos_token_id nor an eos_token_id to start a text with")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_answer_pair(tokenizer, user: str, answer: str, system_prompt: str | None = None) -> tuple[str, str]:
    """(prefix, target) strings: ``user`` as the user turn, ``answer`` as the whole assistant reply.

    With a chat template the prefix is the conversation up to the assistant header and the target is
    the rendered reply (for SmolLM2: ``answer<|im_end|>\\n``). Without one: ``"{user}\\nAnswer:"`` and
    ``" {answer}"``.
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{user}\nAnswer:", f" {answer}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prefix):
        raise ValueError(
            "the chat template renders the assistant reply in a way that does not extend the generation "
            "prompt; BBQ answers cannot be scored as replies with this tokenizer"
        )
    return prefix, full[len(prefix) :]


@torch.no_grad()
def score_targets(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    max_length: int = 512,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_logprob, n_tokens)``, float64 and int64 arrays of length N, for ``log p(target | prefix)``.

    Every prefix needs at least one token. A pair longer than ``max_length`` loses tokens from the
    start of its prefix (the target is cut to ``max_length - 1`` tokens only if it alone is too long).
    """
    if len(prefixes) != len(targets):
        raise ValueError(f"{len(prefixes)} prefixes but {len(targets)} targets")
    rows: list[tuple[list[int], int]] = []
    for i, (p, t) in enumerate(zip(prefixes, targets, strict=True)):
        p, t = list(p), list(t)
        if not p:
            raise ValueError(f"row {i}: empty prefix; start texts with text_prefix_ids(tokenizer)")
        if not t:
            raise ValueError(f"row {i}: empty target; there is nothing to score")
        t = t[: max_length - 1]
        p = p[-(max_length - len(t)) :]
        rows.append((p + t, len(t)))
    n = len(rows)
    sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
    if n == 0:
        return sums, counts
    device = next(model.parameters()).device
    use_keep = _accepts(model, "logits_to_keep")
    order = sorted(range(n), key=lambda i: -len(rows[i][0]))
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc or "scoring", leave=False, disable=desc is None):
            idx = order[start : start + batch_size]
            width = max(len(rows[i][0]) for i in idx)
            keep = max(rows[i][1] for i in idx) + 1
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, W)
            mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, W)
            tmask = torch.zeros((len(idx), keep - 1), dtype=torch.bool)  # (B, K-1) target positions
            for b, i in enumerate(idx):
                seq, tlen = rows[i]
                ids[b, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[b, width - len(seq) :] = 1
                tmask[b, keep - 1 - tlen :] = True
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, W) positions that skip the left padding
            kwargs = {"logits_to_keep": keep} if use_keep else {}
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                **kwargs,
            )
            logits = out.logits[:, -keep:-1].float()  # (B, K-1, V): predicts tokens at the last K-1 positions
            tgt = ids[:, width - keep + 1 :].to(device)  # (B, K-1)
            lp = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
                logits, dim=-1
            )  # (B, K-1)
            lp = lp.masked_fill(~tmask.to(device), 0.0)
            sums[idx] = lp.sum(-1).double().cpu().numpy()
            counts[idx] = tmask.sum(-1).numpy()
    finally:
        model.train(was_training)
    return sums, counts


def _cache_kwarg(model: torch.nn.Module) -> str:
    """forward()'s KV-cache keyword: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


@torch.no_grad()
def score_choices(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    choices: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int = 16,
    max_length: int = 512,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_logprob, n_tokens)``, each (N, K): ``log p(choice_k | prefix)`` for K choices per item.

    Each prefix is run once and its KV cache is repeated for its K choices, so multiple-choice items
    cost one prefix plus K short continuations (BBQ: about a third of scoring each pair separately).
    Prefixes keep their last ``max_length - longest choice`` tokens.
    """
    if len(prefixes) != len(choices):
        raise ValueError(f"{len(prefixes)} prefixes but {len(choices)} choice lists")
    n = len(prefixes)
    k = len(choices[0]) if n else 0
    if any(len(c) != k for c in choices):
        raise ValueError("every item needs the same number of choices")
    for i, (p, cs) in enumerate(zip(prefixes, choices, strict=True)):
        if not p:
            raise ValueError(f"item {i}: empty prefix; start texts with text_prefix_ids(tokenizer)")
        if any(not c for c in cs):
            raise ValueError(f"item {i}: an empty choice; there is nothing to score")
    sums, counts = np.zeros((n, k), dtype=np.float64), np.zeros((n, k), dtype=np.int64)
    if n == 0:
        return sums, counts
    device = next(model.parameters()).device
    cache_kw = _cache_kwarg(model)
    use_keep = _accepts(model, "logits_to_keep")
    longest = [max(len(c) for c in cs) for cs in choices]
    prefs = [list(p)[-max(max_length - t, 1) :] for p, t in zip(prefixes, longest, strict=True)]
    order = sorted(range(n), key=lambda i: -(len(prefs[i]) + longest[i]))
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc or "scoring", leave=False, disable=desc is None):
            idx = order[start : start + batch_size]
            b = len(idx)
            width = max(len(prefs[i]) for i in idx)
            ids = torch.full((b, width), pad_id, dtype=torch.long)  # (B, Lp) left-padded prefixes
            mask = torch.zeros((b, width), dtype=torch.long)  # (B, Lp)
            for r, i in enumerate(idx):
                ids[r, width - len(prefs[i]) :] = torch.tensor(prefs[i], dtype=torch.long)
                mask[r, width - len(prefs[i]) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, Lp)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
                use_cache=True,
                **({"logits_to_keep": 1} if use_keep else {}),
            )
            cache = out.cache if cache_kw == "cache" else out.past_key_values
            cache.batch_repeat_interleave(k)  # each prefix shared by its K choices
            first = out.logits[:, -1].float().repeat_interleave(k, dim=0)  # (B*K, V) predicts token 1
            rows = [list(c) for i in idx for c in choices[i]]
            t = max(len(c) for c in rows)
            cids = torch.full((b * k, t), pad_id, dtype=torch.long)  # (B*K, T) right-padded choices
            cmask = torch.zeros((b * k, t), dtype=torch.long)  # (B*K, T)
            for r, c in enumerate(rows):
                cids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
                cmask[r, : len(c)] = 1
            attn = torch.cat([mask.repeat_interleave(k, dim=0), cmask], dim=1)  # (B*K, Lp + T)
            cpos = pos[:, -1:].repeat_interleave(k, dim=0) + 1 + torch.arange(t)  # (B*K, T)
            out = model(
                input_ids=cids.to(device),
                attention_mask=attn.to(device),
                position_ids=cpos.to(device),
                use_cache=True,
                **{cache_kw: cache},
            )
            logits = torch.cat([first.unsqueeze(1), out.logits[:, :-1].float()], dim=1)  # (B*K, T, V)
            tgt = cids.to(device)
            lp = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
                logits, dim=-1
            )  # (B*K, T)
            lp = lp.masked_fill(cmask.to(device) == 0, 0.0)
            sums[idx] = lp.sum(-1).double().cpu().numpy().reshape(b, k)
            counts[idx] = cmask.sum(-1).numpy().reshape(b, k)
    finally:
        model.train(was_training)
    return sums, counts


def format_generation_prompts(
    tokenizer, prompts: Sequence[str], *, use_chat_template: bool = True, system_prompt: str | None = None
) -> list[str]:
    """Prompts as the policy sees them: the chat template with a generation prompt, when there is one."""
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    out = []
    for p in prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": p})
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


@torch.no_grad()
def generate_continuations(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
    max_prompt_length: int = 256,
    seed: int = 0,
    desc: str | None = None,
) -> list[str]:
    """One continuation per prompt (special tokens dropped), batched with left padding.

    ``temperature == 0`` is greedy decoding; otherwise sampling, seeded by ``seed`` inside a forked RNG
    so the caller's random state is untouched.
    """
    texts = format_generation_prompts(
        tokenizer, prompts, use_chat_template=use_chat_template, system_prompt=system_prompt
    )
    pad_id = pad_token_id(tokenizer)
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= {gen_eos} if isinstance(gen_eos, int) else set(gen_eos or [])
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, t)[-max_prompt_length:] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(texts)
    sample = temperature > 0
    gen_kwargs = {"do_sample": sample, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    if eos:
        gen_kwargs["eos_token_id"] = sorted(eos)
    if sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in tqdm(
                range(0, len(order), batch_size), desc=desc or "generating", leave=False, disable=desc is None
            ):
                idx = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, Lp) left-padded
                mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, Lp)
                for b, i in enumerate(idx):
                    ids[b, width - len(encoded[i]) :] = torch.tensor(encoded[i], dtype=torch.long)
                    mask[b, width - len(encoded[i]) :] = 1
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
                new = gen[:, width:].cpu()  # (B, T)
                for b, i in enumerate(idx):
                    out[i] = tokenizer.decode(new[b], skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return out
