"""Filters for synthetic preference records; every drop is counted by reason.

Checks run cheapest first, and a record stops at the first failing one:

1. **schema and length**: the record validates as a :class:`PreferenceRecord`; the prompt and both
   completions are within ``[min, max]`` characters (reasons ``schema:<field>``, ``too_short:<field>``,
   ``too_long:<field>``);
2. **garbage**: ``refusal`` (the prompt or the unfavorable completion refuses), ``template_echo`` (the text
   repeats our instructions or the JSON keys), ``repeated_tokens`` (a token run, or few distinct words or
   3-grams), ``not_text`` (too few letters), ``same_completions``, ``echoes_prompt``, and
   ``no_identity_term`` (optional, on by default: the record names no social group at all; the lexicon is
   HolisticBias's ~800 descriptors and gendered nouns plus a few generic words, so a probe that signals
   identity only through personal names is dropped too);
3. **leakage**: the normalised prompt equals a seed or evaluation text (``duplicate_seed``,
   ``duplicate_eval``), or its embedding is within ``near_dup_threshold`` cosine of one
   (``near_duplicate_seed``, ``near_duplicate_eval``);
4. **label check** (optional): a scoring callable with the TRL reward signature
   ``fn(prompts=[...], completions=[...]) -> list[float]`` must score the favorable completion above the
   unfavorable one by more than ``label_margin`` (``label_check``);
5. **output duplicates**, in order, against everything accepted so far, this batch included:
   ``duplicate_exact`` (same prompt and completions), ``duplicate_normalised`` (same prompt after
   lower-casing, Unicode NFKC and dropping punctuation), ``near_duplicate_output`` (embedding cosine).

Near-duplicate checks embed the prompt (the favorable completion when a record has no prompt) with the
callable given as ``embed`` (MiniLM through :class:`biasgrpo.data_synth.diversity.SentenceEmbedder` in the
CLI); ``near_dup_threshold=None`` turns them off. Against large reference sets (a 50k-record train split)
the cosine is taken over each candidate's ``reference_shortlist`` nearest references by TF-IDF (see
:class:`ReferenceSet`); within the output it is exhaustive.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from biasgrpo.data_synth.schema import PreferenceRecord, Record, RecordError

REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:'|no)t|i cannot|i am unable|i'?m unable|i won'?t|"
    r"as an ai|sorry, (?:but )?i)",
    re.IGNORECASE,
)
# Phrases from our own templates (and JSON keys) that have no business inside a generated field.
ECHO_PHRASES: tuple[str, ...] = (
    "bias domain:",
    "for reference only",
    "do not copy",
    "write one new item",
    "json object",
    "a fair, unbiased answer to that prompt",
    "a biased answer that relies on a stereotype",
    "invites a stereotype",
    '"prompt"',
    '"favorable"',
    '"unfavorable"',
    "favorable:",
    "unfavorable:",
    "prompt:",
    "{domain}",
    "{context}",
)

# Generic group words the HolisticBias lexicon lacks (it lists descriptors such as "Mexican", not "race").
GENERIC_IDENTITY_TERMS: tuple[str, ...] = (
    "race", "racial", "ethnic", "ethnicity", "religion", "religious", "faith", "gender", "sex", "nationality",
    "immigrant", "immigrants", "migrant", "migrants", "refugee", "refugees", "foreigner", "foreigners",
    "foreign", "minority", "minorities", "disability", "disabled", "disabilities", "wheelchair", "elderly",
    "old", "older", "young", "younger", "age", "aged", "accent", "poor", "poverty", "rich", "wealthy",
    "income", "class", "orientation", "trans", "transgender", "lgbt", "lgbtq", "queer", "weight", "obese",
    "overweight", "culture", "cultural", "tribe", "caste", "country", "stereotype", "stereotypes",
    "woman", "women", "man", "men", "girl", "girls", "boy", "boys", "mother", "father", "wife", "husband",
    "teenager", "child", "children", "adult", "senior", "retiree", "pensioner",
    "she", "her", "hers", "he", "him", "his", "appearance", "socioeconomic", "identity", "identities",
    # common demonyms HolisticBias lacks (it lists eleven nationalities)
    "afghan", "albanian", "algerian", "argentinian", "australian", "austrian", "bangladeshi", "belgian",
    "bolivian", "brazilian", "british", "english", "scottish", "irish", "welsh", "canadian", "chilean",
    "colombian", "congolese", "danish", "dutch", "ecuadorian", "egyptian", "eritrean", "ethiopian", "finnish",
    "french", "german", "ghanaian", "greek", "haitian", "honduran", "hungarian", "indonesian", "iranian",
    "iraqi", "israeli", "italian", "jamaican", "japanese", "jordanian", "kenyan", "lebanese", "libyan",
    "malaysian", "moroccan", "nepali", "nigerian", "norwegian", "pakistani", "palestinian", "peruvian",
    "polish", "portuguese", "romanian", "russian", "saudi", "senegalese", "somali", "spanish", "sri lankan",
    "sudanese", "swedish", "swiss", "syrian", "taiwanese", "thai", "turkish", "ugandan", "ukrainian",
    "venezuelan", "yemeni", "zimbabwean",
)  # fmt: skip

Embed = Callable[[list[str]], np.ndarray]
logger = logging.getLogger(__name__)
LabelScorer = Callable[..., Sequence[float]]


@dataclass
class FilterConfig:
    """Thresholds for :class:`SynthFilter`."""

    min_prompt_chars: int = 15
    max_prompt_chars: int = 1200
    min_completion_chars: int = 10
    max_completion_chars: int = 1500
    near_dup_threshold: float | None = 0.9
    # Embed only each candidate's top-k lexical (TF-IDF) neighbours in a reference set; None embeds every
    # reference text (exact, cached on disk, but ~25 min for 66k texts on a busy 2-core CPU).
    reference_shortlist: int | None = 16
    label_margin: float = 0.0
    max_token_run: int = 4
    min_distinct_ratio: float = 0.4  # distinct words / words, and distinct 3-grams / 3-grams (>= 12 words)
    min_alpha_ratio: float = 0.6
    identity_check: bool = True

    def __post_init__(self) -> None:
        if self.near_dup_threshold is not None and not -1.0 <= self.near_dup_threshold <= 1.0:
            raise ValueError(
                f"near_dup_threshold must be a cosine in [-1, 1] (or None), got {self.near_dup_threshold}"
            )
        if self.reference_shortlist is not None and self.reference_shortlist < 1:
            raise ValueError(f"reference_shortlist must be >= 1 (or None), got {self.reference_shortlist}")
        if (
            self.min_prompt_chars > self.max_prompt_chars
            or self.min_completion_chars > self.max_completion_chars
        ):
            raise ValueError("min lengths must not exceed max lengths")


def normalise_text(text: str) -> str:
    """Lower-case, NFKC, punctuation dropped, whitespace collapsed: the key for normalised deduplication."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return " ".join(text.split())


def record_view(record: Record) -> str:
    """The text a record is compared and embedded by: its prompt, else its (favorable) completion."""
    prompt = getattr(record, "prompt", "")
    if prompt.strip():
        return prompt
    return getattr(record, "chosen", None) or getattr(record, "text", "") or ""


def _exact_key(rec: PreferenceRecord) -> str:
    return hashlib.sha1("\0".join((rec.prompt, rec.chosen, rec.rejected)).encode("utf-8")).hexdigest()


def garbage_reason(text: str, config: FilterConfig) -> str | None:
    """Why one field looks like garbage (``repeated_tokens``, ``not_text``, ``template_echo``), or None."""
    low = text.lower()
    if any(p in low for p in ECHO_PHRASES):
        return "template_echo"
    chars = [c for c in text if not c.isspace()]
    if chars and sum(c.isalpha() for c in chars) / len(chars) < config.min_alpha_ratio:
        return "not_text"
    words = normalise_text(text).split()
    run = 1
    for a, b in zip(words, words[1:], strict=False):
        run = run + 1 if a == b else 1
        if run >= config.max_token_run:
            return "repeated_tokens"
    if len(words) >= 12:
        grams = list(zip(words, words[1:], words[2:], strict=False))
        if (
            len(set(words)) / len(words) < config.min_distinct_ratio
            or len(set(grams)) / len(grams) < config.min_distinct_ratio + 0.3
        ):
            return "repeated_tokens"
    return None


def _walk_descriptors(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        if "descriptor" in node:
            yield str(node["descriptor"])
            return
        for value in node.values():
            yield from _walk_descriptors(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_descriptors(value)
    elif isinstance(node, str):
        yield node


@functools.lru_cache(maxsize=1)
def identity_pattern() -> re.Pattern[str]:
    """A regex over normalised text matching any identity term (HolisticBias descriptors and nouns + generic words)."""
    terms = set(GENERIC_IDENTITY_TERMS)
    try:
        from biasgrpo.assets import benchmark_root

        base = benchmark_root() / "HolisticBias" / "data" / "v1.1"
        descriptors = json.loads((base / "descriptors.json").read_text(encoding="utf-8"))
        descriptors.pop("nonce", None)  # made-up control words
        terms.update(_walk_descriptors(descriptors))
        nouns = json.loads((base / "nouns.json").read_text(encoding="utf-8"))
        for group in ("female", "male"):
            for pair in nouns.get(group, []):
                terms.update(pair)
    except (OSError, ValueError) as exc:  # the asset package is optional here: fall back to the short list
        logger.warning(
            "HolisticBias lexicon unavailable (%s); the identity check uses %d generic words", exc, len(terms)
        )
    norm = sorted({normalise_text(t) for t in terms if normalise_text(t)}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(t) for t in norm) + r")(?:s|es)?\b")  # plurals too


def mentions_identity(text: str) -> bool:
    """Whether ``text`` names a social group (see :func:`identity_pattern`)."""
    return identity_pattern().search(normalise_text(text)) is not None


class ReferenceSet:
    """Texts synthetic prompts must not copy, with their normalised keys and a near-duplicate search.

    With ``shortlist=k`` the max cosine of a candidate is taken over the embeddings of its ``k`` nearest
    references by TF-IDF (embedded lazily and memoised), so a 60k-text split costs a sparse product per
    batch instead of 60k embeddings. A near duplicate (cosine >= 0.9) shares content words with the
    candidate, so the shortlist holds it in practice; ``shortlist=None`` embeds every text instead.
    """

    def __init__(
        self,
        name: str,
        views: Sequence[str],
        embed: Callable[[list[str]], np.ndarray] | None,
        shortlist: int | None,
    ):
        self.name = name
        self.views = list(views)
        self.keys = {normalise_text(v) for v in self.views}
        self.embed = embed
        self.shortlist = shortlist
        self._emb: np.ndarray | None = None
        self._cache: dict[int, np.ndarray] = {}
        if embed is None or not self.views:
            return
        if shortlist is None:
            self._emb = embed(self.views)
        else:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english", dtype=np.float32)
            try:
                self._matrix = self._tfidf.fit_transform(self.views)
            except ValueError:  # only stop words: nothing to shortlist by
                self._matrix = None

    def __len__(self) -> int:
        return len(self.views)

    def max_similarity(self, views: Sequence[str], emb: np.ndarray) -> np.ndarray:
        """Max cosine of each candidate (its view and unit embedding) to this set; -1 when nothing is near."""
        out = np.full(len(views), -1.0, dtype=np.float32)
        if self.embed is None or not self.views:
            return out
        if self._emb is not None:
            return (emb @ self._emb.T).max(axis=1)
        if self._matrix is None:
            return out
        scores = (self._tfidf.transform(list(views)) @ self._matrix.T).tocsr()
        picks: list[np.ndarray] = []
        for row in range(len(views)):
            lo, hi = scores.indptr[row], scores.indptr[row + 1]
            idx, val = scores.indices[lo:hi], scores.data[lo:hi]
            if len(idx) > self.shortlist:  # type: ignore[operator]
                idx = idx[np.argpartition(-val, self.shortlist)[: self.shortlist]]  # type: ignore[misc]
            picks.append(idx)
        need = sorted({int(i) for p in picks for i in p} - set(self._cache))
        if need:
            for i, vec in zip(need, self.embed([self.views[i] for i in need]), strict=True):
                self._cache[i] = vec
        for row, idx in enumerate(picks):
            if len(idx):
                ref = np.stack([self._cache[int(i)] for i in idx])
                out[row] = float((ref @ emb[row]).max())
        return out


class SynthFilter:
    """Stateful filter: holds reference sets (seed, eval) and everything accepted so far."""

    def __init__(
        self,
        config: FilterConfig | None = None,
        *,
        embed: Embed | None = None,
        label_scorer: LabelScorer | None = None,
    ) -> None:
        self.config = config or FilterConfig()
        if self.config.near_dup_threshold is not None and embed is None:
            raise ValueError("near-duplicate filtering needs an embed function (or near_dup_threshold=None)")
        self.embed = embed if self.config.near_dup_threshold is not None else None
        self.label_scorer = label_scorer
        self.stats: Counter[str] = Counter()
        self._refs: list[ReferenceSet] = []
        self._exact: set[str] = set()
        self._norm: set[str] = set()
        self._out_emb: list[np.ndarray] = []

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.config),
            "label_check": getattr(self.label_scorer, "__name__", None) if self.label_scorer else None,
            "references": {r.name: len(r) for r in self._refs},
        }

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.embed is not None
        emb = np.asarray(self.embed(texts), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)

    def add_reference(self, name: str, records: Iterable[Record]) -> None:
        """Texts that synthetic prompts must not copy: ``seed`` or ``eval`` (reasons are named after it)."""
        views = sorted({v for v in (record_view(r) for r in records) if v.strip()})
        embed = self._embed if self.embed is not None else None
        self._refs.append(ReferenceSet(name, views, embed, self.config.reference_shortlist))

    def add_accepted(self, records: Sequence[PreferenceRecord]) -> None:
        """Records already in the output (a resumed run), so nothing new duplicates them."""
        for rec in records:
            self._exact.add(_exact_key(rec))
            self._norm.add(normalise_text(record_view(rec)))
        if self.embed is not None and records:
            self._out_emb.append(self._embed([record_view(r) for r in records]))

    def check_record(self, data: PreferenceRecord | dict[str, Any]) -> str | None:
        """Stateless checks (schema, length, garbage) on one record; the reason, or None."""
        c = self.config
        try:
            rec = PreferenceRecord.from_dict(data if isinstance(data, dict) else data.to_dict())
        except RecordError as exc:
            return f"schema:{exc.field or 'record'}"
        fields = {"prompt": rec.prompt, "favorable": rec.chosen, "unfavorable": rec.rejected}
        for name, text in fields.items():
            lo, hi = (
                (c.min_prompt_chars, c.max_prompt_chars)
                if name == "prompt"
                else (c.min_completion_chars, c.max_completion_chars)
            )
            if len(text.strip()) < lo:
                return f"too_short:{name}"
            if len(text) > hi:
                return f"too_long:{name}"
        if REFUSAL.match(rec.prompt) or REFUSAL.match(rec.rejected):
            return "refusal"
        for text in fields.values():
            why = garbage_reason(text, c)
            if why:
                return why
        n_prompt, n_chosen, n_rejected = (normalise_text(t) for t in fields.values())
        if n_chosen == n_rejected:
            return "same_completions"
        if n_prompt in (n_chosen, n_rejected):
            return "echoes_prompt"
        if c.identity_check and not mentions_identity(" ".join(fields.values())):
            return "no_identity_term"
        return None

    def filter(self, records: Sequence[PreferenceRecord]) -> list[str | None]:
        """A reason per record (None = accepted). Accepted records join the output state."""
        reasons: list[str | None] = [self.check_record(r) for r in records]
        views = [record_view(r) for r in records]
        norms = [normalise_text(v) for v in views]
        for i in range(len(records)):
            if reasons[i] is None:
                for ref in self._refs:
                    if norms[i] in ref.keys:
                        reasons[i] = f"duplicate_{ref.name}"
                        break
        live = [i for i, r in enumerate(reasons) if r is None]
        emb: dict[int, np.ndarray] = {}
        if self.embed is not None and live:
            threshold = self.config.near_dup_threshold
            vecs = self._embed([views[i] for i in live])
            for ref in self._refs:
                sims = ref.max_similarity([views[i] for i in live], vecs)
                for j, i in enumerate(live):
                    if reasons[i] is None and sims[j] >= threshold:
                        reasons[i] = f"near_duplicate_{ref.name}"
            emb = dict(zip(live, vecs, strict=True))
            live = [i for i in live if reasons[i] is None]
        if self.label_scorer is not None and live:
            prompts = [records[i].prompt for i in live]
            completions = [records[i].chosen for i in live] + [records[i].rejected for i in live]
            scores = [float(s) for s in self.label_scorer(prompts=prompts + prompts, completions=completions)]
            if len(scores) != 2 * len(live):
                raise ValueError(
                    f"label scorer returned {len(scores)} scores for {2 * len(live)} completions"
                )
            for j, i in enumerate(live):
                if not scores[j] - scores[j + len(live)] > self.config.label_margin:
                    reasons[i] = "label_check"
            live = [i for i in live if reasons[i] is None]
        out = np.concatenate(self._out_emb) if self._out_emb else None
        for i in live:  # in order, so a batch cannot hold two copies of one item
            rec = records[i]
            key = _exact_key(rec)
            if key in self._exact:
                reasons[i] = "duplicate_exact"
            elif norms[i] in self._norm:
                reasons[i] = "duplicate_normalised"
            elif (
                i in emb and out is not None and float((out @ emb[i]).max()) >= self.config.near_dup_threshold
            ):  # type: ignore[operator]
                reasons[i] = "near_duplicate_output"
            if reasons[i] is not None:
                continue
            self._exact.add(key)
            self._norm.add(norms[i])
            if i in emb:
                vec = emb[i][None, :]
                self._out_emb.append(vec)
                out = vec if out is None else np.concatenate([out, vec])
        self.stats.update(r if r is not None else "accepted" for r in reasons)
        return reasons
