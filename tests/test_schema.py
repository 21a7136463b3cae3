"""Record validation and JSONL IO: each kind of bad row is named by file, line and field."""

from __future__ import annotations

import json
import os

import pytest

from biasgrpo import PreferenceRecord, RecordError, ScalarRecord, load_records, read_jsonl, write_jsonl
from biasgrpo.data_synth.schema import preference_to_scalar, record_from_dict

PREF = {
    "prompt": "p",
    "chosen": "good",
    "rejected": "bad",
    "domain": "gender",
    "source": "t",
    "id": "1",
    "meta": {},
}
SCALAR = {
    "prompt": "",
    "text": "t",
    "label": 0.5,
    "domain": "age",
    "source": "t",
    "id": "2",
    "meta": {"a": 1},
}


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_roundtrip_keeps_every_field(tmp_path):
    recs = [record_from_dict(PREF), record_from_dict({**PREF, "id": "x", "meta": {"k": [1, 2]}})]
    n = write_jsonl(tmp_path / "a.jsonl", recs)
    back = load_records(tmp_path / "a.jsonl")
    assert n == 2 and back == recs
    assert isinstance(back[0], PreferenceRecord)


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("{not json", None, "invalid JSON"),
        (json.dumps({k: v for k, v in PREF.items() if k != "chosen"}), "chosen", "missing"),
        (json.dumps({**PREF, "rejected": 3}), "rejected", "expected a string"),
        (json.dumps({**PREF, "domain": "astrology"}), "domain", "unknown domain"),
        (json.dumps({**PREF, "chosen": "  "}), "chosen", "empty"),
        (json.dumps({**PREF, "meta": [1]}), "meta", "expected an object"),
        (json.dumps([1, 2]), None, "JSON object"),
    ],
)
def test_bad_preference_row_names_file_line_field(tmp_path, line, field, needle):
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(PREF), json.dumps({**PREF, "id": "2"}), line])
    with pytest.raises(RecordError) as info:
        read_jsonl(path)
    msg = str(info.value)
    assert f"{path}:3" in msg and needle in msg
    assert info.value.field == field
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize(
    ("label", "needle"),
    [
        (1.5, r"outside \[0, 1\]"),
        (-0.1, r"outside \[0, 1\]"),
        ("0.3", "expected a number"),
        (True, "expected a number"),
        (float("nan"), "outside"),
    ],
)
def test_bad_scalar_label(tmp_path, label, needle):
    row = json.dumps({**SCALAR, "label": label})
    path = _write_lines(tmp_path / "s.jsonl", [json.dumps(SCALAR), row])
    with pytest.raises(RecordError, match=needle) as info:
        read_jsonl(path, "scalar")
    assert info.value.field == "label" and info.value.where == f"{path}:2"


def test_kind_is_fixed_by_first_row(tmp_path):
    path = _write_lines(tmp_path / "mixed.jsonl", [json.dumps(PREF), json.dumps(SCALAR)])
    with pytest.raises(RecordError, match=r"mixed.jsonl:2") as info:
        read_jsonl(path)
    assert info.value.field == "chosen"


def test_skip_invalid_counts_every_bad_row(tmp_path):
    lines = [
        json.dumps(PREF),
        "{oops",
        json.dumps({**PREF, "domain": "?"}),
        json.dumps({**PREF, "id": "3"}),
        "",
    ]
    path = _write_lines(tmp_path / "m.jsonl", lines)
    recs, report = read_jsonl(path, skip_invalid=True)
    assert [r.id for r in recs] == ["1", "3"]
    assert report.n_read == 2 and report.n_skipped == 2
    assert ":2:" in report.errors[0] and ":3:" in report.errors[1]


def test_write_is_atomic_and_validates(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [PREF])
    before = path.read_bytes()
    with pytest.raises(RecordError):
        write_jsonl(path, [PREF, {**PREF, "label": 2.0, "chosen": None}])
    assert path.read_bytes() == before  # the old file survives a failed write
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_identical_chosen_and_rejected_rejected():
    with pytest.raises(RecordError, match="identical"):
        record_from_dict({**PREF, "rejected": "good"})


def test_preference_to_scalar_labels_and_grouping():
    rec = record_from_dict(PREF)
    chosen, rejected = list(preference_to_scalar([rec]))
    assert isinstance(chosen, ScalarRecord)
    assert (chosen.text, chosen.label, rejected.text, rejected.label) == ("good", 1.0, "bad", 0.0)
    assert chosen.meta["pair_id"] == rejected.meta["pair_id"] == "1"
