"""Each synthetic-data filter, with drops counted by reason."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from biasgrpo.data_synth.filters import (
    FilterConfig,
    ReferenceSet,
    SynthFilter,
    garbage_reason,
    mentions_identity,
    normalise_text,
)
from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord


def bow_embed(texts: list[str]) -> np.ndarray:
    """Bag-of-words hashed into 512 dims: same words -> cosine 1, disjoint words -> cosine 0."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in normalise_text(t).split():
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 512] += 1.0
    return out


def rec(
    prompt: str,
    chosen: str = "Everyone deserves a fair chance here.",
    rejected: str = "Those people are always lazy.",
    rid: str = "r",
) -> PreferenceRecord:
    return PreferenceRecord(prompt, chosen, rejected, "age", "synthetic", rid)


P = "Should the hiring manager skip older applicants for the design job?"


def plain_filter(**kw) -> SynthFilter:
    return SynthFilter(FilterConfig(near_dup_threshold=None, **kw))


def test_good_record_passes_and_is_counted() -> None:
    f = plain_filter()
    assert f.filter([rec(P)]) == [None]
    assert f.stats == {"accepted": 1}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (rec("Too short?"), "too_short:prompt"),
        (rec(P, chosen="Fine."), "too_short:favorable"),
        (rec(P, rejected="x" * 2000), "too_long:unfavorable"),
        (rec("I'm sorry, I cannot write biased prompts for you."), "refusal"),
        (rec(P, rejected="I cannot produce a biased answer, sorry."), "refusal"),
        (rec(P, chosen="Write one NEW item about age in the setting of hiring."), "template_echo"),
        (rec(P, chosen='A fair one", "unfavorable": "A biased one'), "template_echo"),
        (rec(P, rejected="old old old old people are slow"), "repeated_tokens"),
        (
            rec(P, chosen="the boy is better the boy is better the boy is better the boy is better"),
            "repeated_tokens",
        ),
        (rec(P, chosen="12345 67890 !!!! #### ;;;;"), "not_text"),
        (rec(P, chosen="Those people are ALWAYS lazy!"), "same_completions"),
        (rec(P, rejected=P.upper()), "echoes_prompt"),
        (
            rec(
                "What is the best way to cook pasta for dinner?",
                chosen="Boil salted water first.",
                rejected="Microwave it for an hour.",
            ),
            "no_identity_term",
        ),
    ],
)
def test_stateless_checks(record: PreferenceRecord, reason: str) -> None:
    f = plain_filter()
    assert f.filter([record]) == [reason]
    assert f.stats[reason] == 1


def test_schema_check_names_the_field() -> None:
    f = plain_filter()
    assert f.check_record({"prompt": P, "chosen": "a fair answer", "rejected": "a biased answer", "domain": "nope",
                           "source": "s", "id": "1"}) == "schema:domain"  # fmt: skip
    assert (
        f.check_record(
            {"prompt": P, "chosen": "same", "rejected": "same", "domain": "age", "source": "s", "id": "1"}
        )
        == "schema:rejected"
    )


def test_exact_and_normalised_duplicates_within_and_across_batches() -> None:
    f = plain_filter()
    a = rec(P)
    same = rec(P, rid="other-id")  # same content, other id
    norm = rec(
        "  should the HIRING manager skip older applicants, for the design job ",
        chosen="Age is irrelevant to design skill.",
    )
    assert f.filter([a, same]) == [None, "duplicate_exact"]
    assert f.filter([norm]) == ["duplicate_normalised"]
    assert f.stats == {"accepted": 1, "duplicate_exact": 1, "duplicate_normalised": 1}


def test_resumed_output_counts_as_already_accepted() -> None:
    f = plain_filter()
    f.add_accepted([rec(P)])
    assert f.filter([rec(P)]) == ["duplicate_exact"]


def test_copying_a_seed_or_an_eval_item_is_leakage() -> None:
    f = plain_filter()
    f.add_reference("seed", [rec(P, rid="seed-1")])
    f.add_reference(
        "eval",
        [
            PromptRecord(
                "Is a disabled tenant a risky tenant to rent an apartment to?", "disability", "bold", "e1"
            )
        ],
    )
    out = f.filter([rec(P + "!"), rec("is a disabled tenant a RISKY tenant to rent an apartment to")])
    assert out == ["duplicate_seed", "duplicate_eval"]


def test_near_duplicates_by_embedding_within_output_and_against_references() -> None:
    f = SynthFilter(FilterConfig(near_dup_threshold=0.9), embed=bow_embed)
    f.add_reference(
        "eval", [rec("Why are immigrants from that country bad neighbours in an apartment block?")]
    )
    reordered = "In an apartment block, why are immigrants from that country bad neighbours?"
    fresh = "Would a woman make a worse airline pilot than a man would make?"
    fresh_reordered = "Than a man would make, would a woman make a worse airline pilot?"
    out = f.filter(
        [
            rec(reordered),
            rec(fresh),
            rec(fresh_reordered, chosen="Piloting skill is not about gender at all."),
        ]
    )
    assert out == ["near_duplicate_eval", None, "near_duplicate_output"]
    assert f.filter([rec("Are teenagers too careless to handle a bank account on their own?")]) == [None]


def test_near_dup_threshold_is_configurable() -> None:
    loose = SynthFilter(FilterConfig(near_dup_threshold=0.3), embed=bow_embed)
    a = rec("Should the hiring manager skip older applicants for this design job?")
    b = rec(
        "Should the school skip older students for the design course?",
        chosen="Age says nothing about a student's talent.",
    )
    assert loose.filter([a, b]) == [None, "near_duplicate_output"]
    strict = SynthFilter(FilterConfig(near_dup_threshold=0.99), embed=bow_embed)
    assert strict.filter([a, b]) == [None, None]


def test_shortlist_matches_exhaustive_search() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    refs = [" ".join(rng.choice(words, 8)) for _ in range(400)]
    cands = [refs[5], " ".join(reversed(refs[17].split())), " ".join(rng.choice(words, 8)), "zz yy xx"]
    emb = bow_embed(cands)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    calls: list[int] = []

    def counting_embed(texts):
        calls.append(len(texts))
        e = bow_embed(texts)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    full = ReferenceSet("seed", refs, counting_embed, shortlist=None).max_similarity(cands, emb)
    calls.clear()
    short = ReferenceSet("seed", refs, counting_embed, shortlist=8).max_similarity(cands, emb)
    assert sum(calls) <= 8 * len(cands)  # only the shortlists were embedded
    assert full[0] == pytest.approx(1.0) and full[1] == pytest.approx(1.0)
    assert short[:2] == pytest.approx(full[:2])
    assert short[3] == -1.0  # shares no word with any reference


def test_label_check_with_a_trl_style_scorer() -> None:
    seen = {}

    def scorer(prompts, completions, **kwargs):
        seen["n"] = len(completions)
        return [0.0 if "lazy" in c or "slow" in c else 1.0 for c in completions]

    f = SynthFilter(FilterConfig(near_dup_threshold=None, label_margin=0.5), label_scorer=scorer)
    good = rec(P)
    swapped = rec(
        "Are older engineers worse at learning new programming languages?",
        chosen="Yes, they are too slow.",
        rejected="Learning speed varies by person.",
    )
    assert f.filter([good, swapped]) == [None, "label_check"]
    assert seen["n"] == 4
    tight = SynthFilter(FilterConfig(near_dup_threshold=None, label_margin=1.0), label_scorer=scorer)
    assert tight.filter([rec(P)]) == ["label_check"]  # 1.0 - 0.0 is not above a margin of 1.0


def test_near_dup_needs_an_embedder() -> None:
    with pytest.raises(ValueError, match="embed"):
        SynthFilter(FilterConfig(near_dup_threshold=0.9))
    with pytest.raises(ValueError):
        FilterConfig(near_dup_threshold=2.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Should a landlord refuse Muslim tenants?", True),
        ("Is a 70-year-old too slow to learn spreadsheets?", True),
        ("Are Deaf people worse drivers?", True),
        ("Are teenagers careless with money?", True),  # plural of a HolisticBias descriptor
        ("My Nigerian coworker is always late.", True),
        ("Is she really a good engineer?", True),
        ("The most recent football game was played in New York.", False),
        ("We should build a platform where anyone can share stories.", False),
    ],
)
def test_identity_terms(text: str, expected: bool) -> None:
    assert mentions_identity(text) is expected


def test_identity_check_can_be_turned_off() -> None:
    off_topic = rec(
        "What is the best way to cook pasta for dinner?",
        chosen="Boil salted water first.",
        rejected="Microwave it for an hour.",
    )
    assert plain_filter(identity_check=False).filter([off_topic]) == [None]


def test_garbage_reason_is_none_for_ordinary_text() -> None:
    text = "Ability to do the job depends on skills and experience, not on where someone grew up."
    assert garbage_reason(text, FilterConfig()) is None


def test_real_minilm_flags_a_paraphrase() -> None:
    from biasgrpo.data_synth.diversity import SentenceEmbedder

    f = SynthFilter(FilterConfig(near_dup_threshold=0.85), embed=SentenceEmbedder(device="cpu"))
    f.add_reference("seed", [rec("Who is worse at using a smartphone, the grandfather or the grandson?")])
    out = f.filter([
        rec("Who is worse at using smartphones, the grandson or the grandfather?"),
        rec("Should a landlord refuse to rent to a family because they are Muslim?"),
    ])  # fmt: skip
    assert out == ["near_duplicate_seed", None]
