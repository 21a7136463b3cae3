"""Turn an OpenRLHF ``query`` (prompt + response, decoded with chat-template tokens kept) into scorer inputs.

OpenRLHF sends ``query`` = the chat-formatted prompt followed by the generated response, decoded **with**
special tokens, and ``prompts`` = the chat-formatted prompt alone. The bias scorer was trained on plain
``(prompt, completion)`` text, so each query is cleaned in three steps (:meth:`QueryCleaner.split`):

1. **Separate the response.** Find the prompt string inside the query (last occurrence that leaves a
   suffix) and take everything after it. When the prompt is not found verbatim (a tokenizer round trip
   can change whitespace), both strings are stripped of template tokens and the search is repeated. When
   that fails too, the whole cleaned query is scored as the response (counted as ``unsplit``).
2. **Clean the response.** Remove every known template token (``strip_tokens``; configurable) and
   surrounding whitespace, so trailing ``<|im_end|>``/``</s>``/padding does not reach the scorer.
3. **Clean the prompt.** Take the content of the *last user turn* when the prompt matches one of the known
   chat formats (ChatML, Llama 3, Gemma, Mistral ``[INST]``, Phi-3); otherwise strip template tokens.
   System prompts and role headers are therefore not scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# Special tokens of the common chat templates; extend or replace through QueryCleaner(strip_tokens=...).
DEFAULT_STRIP_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<|pad|>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
)

# Content of a user turn, per chat format (the last match in a prompt wins).
DEFAULT_USER_TURN_PATTERNS: tuple[str, ...] = (
    r"<\|im_start\|>user\s*\n(.*?)(?:<\|im_end\|>|$)",  # ChatML (Qwen, SmolLM)
    r"<\|start_header_id\|>user<\|end_header_id\|>\s*(.*?)(?:<\|eot_id\|>|$)",  # Llama 3
    r"<start_of_turn>user\s*\n(.*?)(?:<end_of_turn>|$)",  # Gemma
    r"<\|user\|>\s*(.*?)(?:<\|end\|>|<\|assistant\|>|$)",  # Phi-3
    r"\[INST\](.*?)\[/INST\]",  # Mistral / Llama 2
)


@dataclass(frozen=True)
class QueryCleaner:
    """How queries are split and cleaned; see the module docstring for the three steps."""

    strip_tokens: tuple[str, ...] = DEFAULT_STRIP_TOKENS
    user_turn_patterns: tuple[str, ...] = DEFAULT_USER_TURN_PATTERNS
    _token_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _turn_res: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.strip_tokens)
        for tok in tokens:
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"strip_tokens must be non-empty strings, got {tok!r}")
        object.__setattr__(self, "strip_tokens", tokens)
        # Longest first, so "<|im_start|>" is removed before a shorter token that is a prefix of it.
        alternation = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
        object.__setattr__(self, "_token_re", re.compile(alternation) if tokens else None)
        compiled = []
        for pattern in self.user_turn_patterns:
            try:
                compiled.append(re.compile(pattern, re.DOTALL))
            except re.error as exc:
                raise ValueError(f"user_turn_patterns: {pattern!r} is not a valid regex ({exc})") from None
        object.__setattr__(self, "_turn_res", tuple(compiled))

    def strip(self, text: str) -> str:
        """Remove every template token and surrounding whitespace."""
        if self._token_re is not None:
            text = self._token_re.sub("", text)
        return text.strip()

    def clean_prompt(self, prompt: str) -> str:
        """The last user turn's content when the prompt is in a known chat format, else the stripped prompt."""
        for regex in self._turn_res:
            matches = regex.findall(prompt)
            if matches:
                return self.strip(matches[-1])
        return self.strip(prompt)

    def split(self, query: str, prompt: str | None) -> tuple[str, str, bool]:
        """``(clean_prompt, clean_response, found)``; ``found`` is False when the prompt was not located."""
        if not prompt:
            return "", self.strip(query), prompt == ""
        idx = query.rfind(prompt)
        if idx >= 0:
            return self.clean_prompt(prompt), self.strip(query[idx + len(prompt) :]), True
        bare_query, bare_prompt = self.strip(query), self.strip(prompt)
        idx = bare_query.rfind(bare_prompt) if bare_prompt else -1
        if idx >= 0:
            return self.clean_prompt(prompt), self.strip(bare_query[idx + len(bare_prompt) :]), True
        return self.clean_prompt(prompt), bare_query, False

    def split_many(
        self, queries: Sequence[str], prompts: Sequence[str | None] | None
    ) -> tuple[list[str], list[str], int]:
        """Split a batch; returns ``(prompts, responses, n_unsplit)``."""
        if prompts is None:
            prompts = [None] * len(queries)
        if len(prompts) != len(queries):
            raise ValueError(
                f"prompts has {len(prompts)} entries but query has {len(queries)}: they must match"
            )
        out_p, out_r, unsplit = [], [], 0
        for q, p in zip(queries, prompts, strict=True):
            cp, cr, found = self.split(q, p)
            out_p.append(cp)
            out_r.append(cr)
            unsplit += not found
        return out_p, out_r, unsplit
