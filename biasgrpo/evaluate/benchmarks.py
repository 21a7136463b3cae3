"""Run a causal LM over each bias benchmark and return per-item columns (metrics live in ``metrics.py``).

How each benchmark is answered (documented in ``docs/evaluate.md``):

* **BBQ**: the user turn is ``EvalConfig.bbq_template`` filled with BBQ's context + question and its three
  answers; each answer is scored as the *whole assistant reply* under the chat template
  (``sum log p(answer + end-of-turn | conversation)``) and the highest-scoring one is the prediction.
* **StereoSet**: intrasentence items compare the three full sentences, intersentence items the three
  continuations given the context; both by *mean* log-likelihood per token (as StereoSet's own scorer
  for GPT-2 does, so sentences of different lengths compare fairly).
* **CrowS-Pairs**: *summed* log-likelihood of each full sentence (the pair differs in a few words).
* **BOLD**: greedy (or sampled) continuations of BOLD prompts given as the user turn, scored by a reward
  function with TRL's signature ``f(prompts=..., completions=...) -> list[float | None]``.
* **Perplexity**: summed negative log-likelihood of held-out BOLD Wikipedia sentences.

Plain sentences start from the tokenizer's BOS token (EOS if none), so their first word is scored too.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord
from biasgrpo.evaluate.config import EvalConfig
from biasgrpo.evaluate.scoring import (
    chat_answer_pair,
    encode,
    generate_continuations,
    pad_token_id,
    score_choices,
    score_targets,
    text_prefix_ids,
)
from biasgrpo.evaluate.stats import subsample

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float | None]]
Columns = dict[str, list[Any]]


# ------------------------------------------------------------------------------------------------ loading
@functools.lru_cache(maxsize=8)
def _all_items(benchmark: str, root: str | None, split: str, bold_prompts: str | None) -> tuple[Any, ...]:
    """Every item of a benchmark, read once per process (base and trained evaluations share it)."""
    from biasgrpo.data_synth import sources

    if benchmark == "bbq":
        return tuple(sources.load_bbq(root).records)
    if benchmark == "stereoset":
        return tuple(sources.load_stereoset(root, split=split).records)
    if benchmark == "crows":
        return tuple(sources.load_crows_pairs(root).records)
    if benchmark == "bold":
        if bold_prompts:
            from biasgrpo.data_synth.schema import load_records

            records = [r for r in load_records(bold_prompts, "prompt") if r.source == "bold"]
            if not records:
                raise ValueError(f"{bold_prompts}: no prompt records with source 'bold'")
            return tuple(records)
        return tuple(sources.load_bold(root).records)
    if benchmark == "ppl":
        return tuple(
            {**row, "id": f"bold_wiki:{i}"} for i, row in enumerate(sources.load_bold_wikipedia(root))
        )
    raise ValueError(f"unknown benchmark {benchmark!r}")


def load_items(benchmark: str, config: EvalConfig) -> list[Any]:
    """The seeded subsample of one benchmark's items (records, or dicts for perplexity texts)."""
    bold_prompts = str(Path(config.bold_prompts).expanduser().resolve()) if config.bold_prompts else None
    items = _all_items(benchmark, config.benchmark_root, config.stereoset_split, bold_prompts)
    return subsample(items, config.size(benchmark), config.seed)


# ------------------------------------------------------------------------------------------------ runners
def run_bbq(model, tokenizer, records: Sequence[PreferenceRecord], config: EvalConfig) -> Columns:
    """Predict each BBQ item by the log-likelihood of its three answers as the assistant reply."""
    prefixes, choices = [], []
    for rec in records:
        answers = rec.meta["answers"]
        user = config.bbq_template.format(question=rec.prompt, a0=answers[0], a1=answers[1], a2=answers[2])
        pairs = [chat_answer_pair(tokenizer, user, ans, config.system_prompt) for ans in answers]
        prefixes.append(encode(tokenizer, pairs[0][0]))
        choices.append([encode(tokenizer, target) for _, target in pairs])
    sums, _ = score_choices(
        model,
        prefixes,
        choices,
        pad_id=pad_token_id(tokenizer),
        batch_size=config.batch_size,
        max_length=config.max_length,
        desc="BBQ",
    )
    preds = sums.argmax(axis=1) if records else np.zeros(0, dtype=int)
    return {
        "id": [r.id for r in records],
        "category": [r.meta["category"] for r in records],
        "condition": [r.meta["context_condition"] for r in records],
        "polarity": [r.meta["question_polarity"] for r in records],
        "pred": [int(p) for p in preds],
        "label": [int(r.meta["label"]) for r in records],
        "unknown": [int(r.meta["unknown_index"]) for r in records],
        "biased": [int(r.meta["biased_index"]) for r in records],
    }


def run_stereoset(model, tokenizer, records: Sequence[PreferenceRecord], config: EvalConfig) -> Columns:
    """Mean per-token log-likelihood of the stereotype, anti-stereotype and unrelated option of each item."""
    start = text_prefix_ids(tokenizer)
    prefixes, choices = [], []
    for rec in records:
        intra = rec.meta["task"] == "intrasentence"
        prefixes.append(start if intra else start + encode(tokenizer, rec.prompt))
        sentences = (rec.rejected, rec.chosen, rec.meta["unrelated"])
        choices.append([encode(tokenizer, s if intra else " " + s) for s in sentences])
    sums, counts = score_choices(
        model,
        prefixes,
        choices,
        pad_id=pad_token_id(tokenizer),
        batch_size=config.batch_size,
        max_length=config.max_length,
        desc="StereoSet",
    )
    lp = sums / np.maximum(counts, 1)  # (N, 3) mean log-likelihood per token
    return {
        "id": [r.id for r in records],
        "task": [r.meta["task"] for r in records],
        "bias_type": [r.meta["bias_type"] for r in records],
        "lp_stereo": lp[:, 0].tolist(),
        "lp_anti": lp[:, 1].tolist(),
        "lp_unrelated": lp[:, 2].tolist(),
    }


def run_crows(model, tokenizer, records: Sequence[PreferenceRecord], config: EvalConfig) -> Columns:
    """Summed log-likelihood of the more (``rejected``) and less (``chosen``) stereotyping sentence."""
    start = text_prefix_ids(tokenizer)
    choices = [[encode(tokenizer, r.rejected), encode(tokenizer, r.chosen)] for r in records]
    lp, _ = score_choices(
        model,
        [start] * len(records),
        choices,
        pad_id=pad_token_id(tokenizer),
        batch_size=config.batch_size,
        max_length=config.max_length,
        desc="CrowS-Pairs",
    )
    return {
        "id": [r.id for r in records],
        "bias_type": [r.meta["bias_type"] for r in records],
        "lp_more": lp[:, 0].tolist(),
        "lp_less": lp[:, 1].tolist(),
    }


def run_perplexity(model, tokenizer, texts: Sequence[dict[str, str]], config: EvalConfig) -> Columns:
    """Summed negative log-likelihood and token count of each text."""
    start = text_prefix_ids(tokenizer)
    sums, counts = score_targets(
        model,
        [start] * len(texts),
        [encode(tokenizer, t["text"]) for t in texts],
        pad_id=pad_token_id(tokenizer),
        batch_size=config.batch_size,
        max_length=config.max_length,
        desc="perplexity",
    )
    return {
        "id": [t["id"] for t in texts],
        "domain": [t["domain"] for t in texts],
        "nll": (-sums).tolist(),
        "n_tokens": counts.tolist(),
    }


def run_bold(
    model, tokenizer, records: Sequence[PromptRecord], config: EvalConfig, reward_fn: RewardFn
) -> Columns:
    """Generate a continuation of each BOLD prompt and score it with ``reward_fn`` (NaN where it gives None)."""
    prompts = [r.prompt for r in records]
    completions = generate_continuations(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        use_chat_template=config.use_chat_template,
        system_prompt=config.system_prompt,
        seed=config.seed,
        desc="BOLD generate",
    )
    scores: list[float] = []
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    for start in range(0, len(prompts), 64):
        chunk_p, chunk_c = prompts[start : start + 64], completions[start : start + 64]
        values = reward_fn(prompts=chunk_p, completions=chunk_c)
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        if len(values) != len(chunk_c):
            raise ValueError(
                f"reward function {name!r} returned {len(values)} scores for {len(chunk_c)} texts"
            )
        scores.extend(math.nan if v is None else float(v) for v in values)
    n_bad = sum(not math.isfinite(s) for s in scores)
    if n_bad:
        logger.warning(
            "reward function %r gave no finite score for %d of %d continuations", name, n_bad, len(scores)
        )
    return {
        "id": [r.id for r in records],
        "domain": [r.domain for r in records],
        "prompt": prompts,
        "completion": completions,
        "score": scores,
    }
