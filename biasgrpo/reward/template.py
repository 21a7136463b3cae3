"""How a (prompt, completion) pair becomes token ids: the one input template shared by training and scoring.

Training (PyTorch) and scoring (ONNX Runtime) must see exactly the same ids, so both call
:func:`encode` here, which needs only the ``tokenizers`` library and numpy (no torch).

Template ``pair`` (the default) feeds an encoder the way cross-encoders are trained::

    [CLS] prompt [SEP] completion [SEP]      (BERT-style post-processor of the tokenizer)
    [CLS] completion [SEP]                   when the prompt is empty or missing

Template ``concat`` joins the texts as one sequence: ``prompt + separator + completion``.

Truncation never drops the completion first: when the pair does not fit in ``max_length`` tokens the
prompt keeps its *last* tokens (those nearest to the completion), down to ``prompt_min_tokens``, and only
then is the completion cut at its end. Every truncated row is flagged so callers can report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TEMPLATE_KINDS = ("pair", "concat")


@dataclass(frozen=True)
class InputTemplate:
    """The input template, stored in ``scorer.json`` and ``train_config.json``."""

    kind: str = "pair"
    separator: str = "\n"  # only for kind="concat"
    prompt_min_tokens: int = 16  # a long completion leaves the prompt at least this many tokens

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATE_KINDS:
            raise ValueError(f"template kind {self.kind!r} is unknown; expected one of {TEMPLATE_KINDS}")
        if self.prompt_min_tokens < 0:
            raise ValueError(f"prompt_min_tokens must be >= 0, got {self.prompt_min_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputTemplate:
        data = dict(data or {})
        unknown = set(data) - {"kind", "separator", "prompt_min_tokens", "description"}
        if unknown:
            raise ValueError(f"input template has unknown field(s) {sorted(unknown)}")
        data.pop("description", None)
        return cls(**data)

    def describe(self) -> str:
        if self.kind == "pair":
            return "[CLS] prompt [SEP] completion [SEP] (completion only when there is no prompt)"
        return f"prompt + {self.separator!r} + completion (completion only when there is no prompt)"


@dataclass
class Encoded:
    """A padded batch: int64 arrays of shape [batch, seq] and a per-row truncation flag."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    truncated: np.ndarray  # bool [batch]
    lengths: np.ndarray  # int [batch], tokens before padding

    def as_inputs(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays a model with these input names expects."""
        return {name: getattr(self, name) for name in names}


def _specials(tokenizer: Any, pair: bool) -> int:
    return int(tokenizer.post_processor.num_special_tokens_to_add(pair)) if tokenizer.post_processor else 0


def _fit(tokenizer: Any, completion: Any, prompt_enc: Any | None, template: InputTemplate, max_length: int):
    """Truncate raw (special-token-free) encodings in place to fit, then add special tokens."""
    if prompt_enc is None:
        budget = max_length - _specials(tokenizer, False)
        truncated = len(completion) > budget
        if truncated:
            completion.truncate(budget, direction="right")
        return tokenizer.post_process(completion, None, add_special_tokens=True), truncated
    budget = max_length - _specials(tokenizer, True)
    n_p, n_c = len(prompt_enc), len(completion)
    truncated = n_p + n_c > budget
    if truncated:
        keep_p = min(max(budget - n_c, min(n_p, template.prompt_min_tokens)), n_p, budget)
        keep_c = budget - keep_p
        if keep_p < n_p:
            prompt_enc.truncate(keep_p, direction="left")
        if keep_c < n_c:
            completion.truncate(keep_c, direction="right")
    return tokenizer.post_process(prompt_enc, completion, add_special_tokens=True), truncated


def encode_rows(
    tokenizer: Any,
    texts: Sequence[str],
    prompts: Sequence[str | None] | None,
    template: InputTemplate,
    max_length: int,
) -> tuple[list[Any], np.ndarray]:
    """Encode rows into ``tokenizers.Encoding`` objects of at most ``max_length`` tokens (unpadded).

    Returns ``(encodings, truncated)`` where ``truncated`` is a bool array, one flag per row.
    """
    if max_length < 4:
        raise ValueError(f"max_length must be >= 4, got {max_length}")
    texts = list(texts)
    has_prompt = [bool(prompts[i]) if prompts is not None else False for i in range(len(texts))]
    if template.kind == "concat":
        texts = [f"{prompts[i]}{template.separator}{t}" if has_prompt[i] else t for i, t in enumerate(texts)]
        has_prompt = [False] * len(texts)
    completions = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    with_prompt = [i for i, h in enumerate(has_prompt) if h]
    prompt_encs: list[Any] = [None] * len(texts)
    if with_prompt:
        for i, enc in zip(
            with_prompt,
            tokenizer.encode_batch([prompts[i] for i in with_prompt], add_special_tokens=False),
            strict=True,
        ):
            prompt_encs[i] = enc
    out, flags = [], []
    for comp, pr in zip(completions, prompt_encs, strict=True):
        enc, trunc = _fit(tokenizer, comp, pr, template, max_length)
        out.append(enc)
        flags.append(trunc)
    return out, np.array(flags, dtype=bool)


def pad(
    encodings: Sequence[Any], truncated: np.ndarray | None = None, pad_id: int = 0, pad_to: int | None = None
) -> Encoded:
    """Right-pad encodings to the longest one (or to ``pad_to``) into int64 arrays."""
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    width = max(int(lengths.max()) if len(encodings) else 1, pad_to or 0)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    flags = truncated if truncated is not None else np.zeros(len(encodings), dtype=bool)
    return Encoded(ids, mask, types, np.asarray(flags, dtype=bool), lengths)


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    prompts: Sequence[str | None] | None,
    template: InputTemplate,
    max_length: int,
    pad_id: int = 0,
    pad_to: int | None = None,
) -> Encoded:
    """Encode rows and pad them into one batch; see the module docstring for the template and truncation."""
    encs, flags = encode_rows(tokenizer, texts, prompts, template, max_length)
    return pad(encs, flags, pad_id=pad_id, pad_to=pad_to)
