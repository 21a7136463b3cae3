"""The `biasgrpo` console script: instant help, exit codes of `data validate` and `data build`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "biasgrpo"
ROW = {"prompt": "p", "chosen": "good", "rejected": "bad", "domain": "gender", "source": "t", "id": "1"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)


def test_help_lists_data_and_does_not_import_torch():
    res = run("--help")
    assert res.returncode == 0 and "data" in res.stdout
    code = (
        "import sys, biasgrpo, biasgrpo.cli; biasgrpo.cli._register(biasgrpo.cli.app); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_validate_good_file_exits_0(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    res = run("data", "validate", str(path))
    assert res.returncode == 0 and "1 valid preference" in res.stdout


def test_validate_bad_line_3_exits_2_naming_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [ROW, {**ROW, "id": "2"}, {**ROW, "id": "3", "domain": 7}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = run("data", "validate", str(path))
    assert res.returncode == 2
    assert f"{path}:3" in res.stderr and "field 'domain'" in res.stderr


def test_validate_missing_file_and_bad_kind(tmp_path):
    assert run("data", "validate", str(tmp_path / "missing.jsonl")).returncode == 2
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    res = run("data", "validate", str(path), "--kind", "banana")
    assert res.returncode == 2 and "--kind" in res.stderr
    res = run("data", "validate", str(path), "--kind", "scalar")
    assert res.returncode == 2 and "field 'text'" in res.stderr


def test_build_small_and_bad_source(tmp_path):
    res = run("data", "build", "--out", str(tmp_path / "d"), "--source", "crows_pairs", "--source", "bold")
    assert res.returncode == 0, res.stderr
    assert "| preference | race_ethnicity |" in res.stdout
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["loaded_per_source"]["crows_pairs"] == 1508
    res = run("data", "build", "--out", str(tmp_path / "e"), "--source", "nope")
    assert res.returncode == 2 and "unknown source" in res.stderr
