"""The generation parser on good and bad outputs, and the prompt templates."""

from __future__ import annotations

import json

import pytest

from biasgrpo.data_synth.prompts import (
    TEMPLATES,
    answer_is_complete,
    canonical_key,
    parse_generation,
)
from biasgrpo.data_synth.schema import PreferenceRecord

GOOD = {
    "prompt": "Should I hire the older applicant?",
    "favorable": "Judge skills, not age.",
    "unfavorable": "No, old people are slow.",
}


def test_plain_json() -> None:
    res = parse_generation(json.dumps(GOOD))
    assert res.ok and res.fields == GOOD and res.format == "json" and res.complete


def test_json_in_code_fence_with_chatter() -> None:
    text = "Sure! Here is a new item:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nHope it helps."
    assert parse_generation(text).fields == GOOD


def test_first_object_with_the_fields_wins() -> None:
    other = {**GOOD, "prompt": "A second prompt?"}
    text = '{"note": "not it"} then ' + json.dumps(GOOD) + " and " + json.dumps(other)
    assert parse_generation(text).fields == GOOD


def test_missing_comma_and_trailing_comma_are_repaired() -> None:
    text = '{\n "prompt": "Should I hire the older applicant?",\n "favorable": "Judge skills, not age."\n "unfavorable": "No, old people are slow.",\n}'
    assert parse_generation(text).fields == GOOD


def test_comma_inside_the_quotes_is_repaired() -> None:
    text = '{"prompt": "Should I hire the older applicant?", "favorable": "Judge skills, not age.," "unfavorable": "No, old people are slow."}'
    assert parse_generation(text).fields == GOOD


@pytest.mark.parametrize(
    "text",
    [
        # Seen in a real SmolLM2 run: literal_eval turns `{[...]}` into a set of lists -> TypeError.
        '{"prompt": "Who is lazy?", "favorable": {["Nobody", "It depends"]}, "unfavorable": "The old man."',
        '{"prompt": "x", "favorable": {{}: 1}}',  # unhashable dict key
        "{'prompt': " + "(" * 200 + ")" * 200 + "}",  # deep nesting
    ],
)
def test_pathological_near_json_is_rejected_not_raised(text: str) -> None:
    res = parse_generation(text)
    assert not res.ok and res.reason
    assert answer_is_complete(text) in (True, False)  # the stopping criterion must not raise either


def test_python_style_single_quotes() -> None:
    text = "{'prompt': 'Should I hire the older applicant?', 'favorable': 'Judge skills, not age.', 'unfavorable': 'No, old people are slow.'}"
    assert parse_generation(text).fields == GOOD


def test_key_aliases_and_nesting() -> None:
    text = json.dumps(
        {"item": {"question": GOOD["prompt"], "chosen": GOOD["favorable"], "rejected": GOOD["unfavorable"]}}
    )
    assert parse_generation(text).fields == GOOD
    assert canonical_key("Unfavorable completion") == "unfavorable"
    assert canonical_key("favourable_answer") == "favorable"
    assert canonical_key("biased answer") == "unfavorable"
    assert canonical_key("unbiased") == "favorable"
    assert canonical_key("note") is None


def test_labelled_text_fallback() -> None:
    text = (
        "Prompt: Should I hire the older applicant?\n"
        "**Favorable:** Judge skills,\n  not age.\n"
        "Unfavorable: No, old people are slow.\n\nAnything after a blank line is ignored."
    )
    res = parse_generation(text)
    assert res.ok and res.format == "text" and res.complete
    assert res.fields == GOOD


def test_labelled_text_incomplete_last_line() -> None:
    res = parse_generation(
        "Prompt: Should I hire the older applicant?\nFavorable: Judge skills, not age.\nUnfavorable: No, old"
    )
    assert res.ok and not res.complete  # still being generated: no early stop yet
    assert not answer_is_complete(
        "Prompt: Should I hire the older applicant?\nFavorable: Judge skills, not age.\nUnfavorable: No, old"
    )
    assert answer_is_complete(json.dumps(GOOD) + " trailing")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("I'm sorry, but I can't help with creating biased content.", "refusal"),
        ("As an AI language model, I cannot do that.", "refusal"),
        ("the the the the the", "no_structure"),
        ('{"prompt": "Should I", "favorable": "unterminated', "bad_json"),
        (
            '{"prompt": "Should I hire the older applicant?", "favorable": "Judge skills, not age."}',
            "missing_field:unfavorable",
        ),
        ('{"prompt": "Q?", "favorable": ["a"], "unfavorable": "b"}', "wrong_type"),
        ('{"type": "json", "data": {"type": "object"}}', "missing_field:prompt"),
        ("Prompt: Who is worse at maths?\nFavorable: Nobody is.", "missing_field:unfavorable"),
    ],
)
def test_invalid_outputs_have_a_reason(text: str, reason: str) -> None:
    res = parse_generation(text)
    assert not res.ok and res.fields is None
    assert res.reason == reason


def test_truncated_json_falls_back_to_labelled_lines() -> None:
    # Small models often run out of tokens before the closing brace: the key lines still parse.
    text = '{\n  "prompt": "Should I hire the older applicant?",\n  "favorable": "Judge skills, not age.",\n  "unfavorable": "No, old people are slow.",\n  "extra": "and then the model kept'
    res = parse_generation(text)
    assert res.ok and res.fields == GOOD and res.format == "text"


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_templates_render_with_seed_and_prefill(template_id: str) -> None:
    seed = PreferenceRecord(
        "Who was bad with the phone?", "Can't be determined", "The grandfather", "age", "bbq", "bbq:1"
    )
    tpl = TEMPLATES[template_id]
    msgs = tpl.render(domain="age", context="hiring", seed=seed)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    user = msgs[1]["content"]
    assert "Bias domain: age" in user and "Setting: hiring" in user and "Who was bad with the phone?" in user
    assert not any(p in user for p in ("{domain}", "{context}", "{example}", "{json}"))
    assert msgs[2]["content"] == tpl.prefill
    # The prefill plus a model's continuation parses.
    cont = {"json-v1": 'Is an older candidate too slow?", "favorable": "Speed varies by person.", "unfavorable": "Yes, old people are slow."}',
            "text-v1": " Is an older candidate too slow?\nFavorable: Speed varies by person.\nUnfavorable: Yes, old people are slow.\n"}[tpl.id]  # fmt: skip
    res = parse_generation(tpl.prefill + cont)
    assert res.ok and res.fields["prompt"] == "Is an older candidate too slow?"
