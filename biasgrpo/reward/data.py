"""Training data for reward models: records -> pairs / scalar rows -> padded torch batches.

Preference records feed the pairwise objective directly and the regression objective through
``preference_to_scalar`` (chosen -> 1.0, rejected -> 0.0); scalar records feed regression. Batches are
tokenized with :func:`biasgrpo.reward.template.encode`, the same function the ONNX scorer uses, so
a model is trained on exactly the ids it will be scored on.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasgrpo.data_synth.schema import PreferenceRecord, ScalarRecord, load_records, preference_to_scalar
from biasgrpo.reward.template import InputTemplate, encode


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    source: str = ""
    domain: str = ""


@dataclass
class Scalar:
    prompt: str
    text: str
    label: float
    source: str = ""
    domain: str = ""


def read_records(data: str | os.PathLike[str] | Sequence[Any]) -> list[Any]:
    """Records from a JSONL file (validated), or the given records as a list."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such data file (build one with `biasgrpo data build --out DIR`)"
            )
        return load_records(path)
    return list(data)


def balanced_subsample(records: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """At most ``n`` records, shared as evenly as possible across sources (small sources are kept whole).

    BBQ has ~40x more pairs than CrowS-Pairs; a plain random subsample would all but drop the small
    benchmarks, so each source gets an equal quota and unused quota flows to the larger sources.
    """
    records = list(records)
    if n is None or n >= len(records):
        out = records[:]
        random.Random(seed).shuffle(out)
        return out
    by_source: dict[str, list[Any]] = defaultdict(list)
    for rec in records:
        by_source[getattr(rec, "source", "")].append(rec)
    rng = random.Random(seed)
    for items in by_source.values():
        rng.shuffle(items)
    quota: dict[str, int] = {}
    remaining, pending = n, sorted(by_source, key=lambda s: len(by_source[s]))
    while pending:
        share = remaining // len(pending)
        src = pending.pop(0)
        take = min(len(by_source[src]), share if pending else remaining)
        quota[src] = take
        remaining -= take
    out = [rec for src, items in by_source.items() for rec in items[: quota[src]]]
    rng.shuffle(out)
    return out


def to_pairs(records: Sequence[Any]) -> list[Pair]:
    """Preference records as pairs; ``meta['margin']`` (a number) becomes the pair's margin."""
    pairs = []
    for rec in records:
        if isinstance(rec, PreferenceRecord):
            margin = rec.meta.get("margin", 0.0) if isinstance(rec.meta, dict) else 0.0
            margin = (
                float(margin) if isinstance(margin, (int, float)) and not isinstance(margin, bool) else 0.0
            )
            pairs.append(Pair(rec.prompt, rec.chosen, rec.rejected, margin, rec.source, rec.domain))
    return pairs


def to_scalars(records: Sequence[Any], expand_pairs: bool = True) -> list[Scalar]:
    """Scalar records, plus preference records expanded to chosen=1 / rejected=0 when ``expand_pairs``."""
    out = [
        Scalar(r.prompt, r.text, r.label, r.source, r.domain) for r in records if isinstance(r, ScalarRecord)
    ]
    if expand_pairs:
        prefs = [r for r in records if isinstance(r, PreferenceRecord)]
        out += [Scalar(s.prompt, s.text, s.label, s.source, s.domain) for s in preference_to_scalar(prefs)]
    return out


class Batcher:
    """Turns rows into padded torch tensors with the shared template (one tokenizer, one max length)."""

    def __init__(
        self,
        tokenizer: Any,
        template: InputTemplate,
        max_length: int,
        input_names: Sequence[str],
        pad_id: int = 0,
    ):
        from biasgrpo.reward.model import raw_tokenizer

        self.tokenizer = tokenizer if hasattr(tokenizer, "post_process") else raw_tokenizer(tokenizer)
        self.template = template
        self.max_length = max_length
        self.input_names = list(input_names)
        self.pad_id = pad_id

    def tensors(self, texts: Sequence[str], prompts: Sequence[str | None] | None) -> dict[str, Any]:
        import torch

        enc = encode(self.tokenizer, texts, prompts, self.template, self.max_length, pad_id=self.pad_id)
        return {k: torch.from_numpy(v) for k, v in enc.as_inputs(self.input_names).items()}

    def pair_batch(self, pairs: Sequence[Pair]) -> tuple[dict[str, Any], Any]:
        """Chosen rows then rejected rows in one batch (scores[:B] vs scores[B:]) and the margins."""
        import torch

        texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        prompts = [p.prompt for p in pairs] * 2
        return self.tensors(texts, prompts), torch.tensor([p.margin for p in pairs], dtype=torch.float32)

    def scalar_batch(self, rows: Sequence[Scalar]) -> tuple[dict[str, Any], Any]:
        import torch

        inputs = self.tensors([r.text for r in rows], [r.prompt for r in rows])
        return inputs, torch.tensor([r.label for r in rows], dtype=torch.float32)


def batches(items: Sequence[Any], batch_size: int, seed: int | None = None) -> Iterator[list[Any]]:
    """Consecutive batches, shuffled first when ``seed`` is given."""
    order = list(range(len(items)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield [items[i] for i in order[start : start + batch_size]]
