"""The ONNX scorer: API, batching invariance, bad inputs, loading errors, export parity, no torch at import."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from biasgrpo.reward import Scorer, ScorerLoadError, load_scorer
from biasgrpo.reward.scorer import normalize_scores
from biasgrpo.reward.template import InputTemplate, encode

TEXTS = [
    "Women are too emotional to lead.",
    "Anyone can lead well.",
    "ok",
    "Old people cannot learn new technology, they are hopeless and slow and should give up trying.",
    "The answer cannot be determined.",
    "He is poor so he must be lazy.",
    "Immigrants contribute to the economy in many ways, from agriculture to software engineering.",
    "Nice weather today.",
]


@pytest.fixture(scope="session")
def tiny_scorer_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biasgrpo.reward.testing import make_tiny_scorer_dir

    return make_tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory.mktemp("tiny-scorer"), max_length=32)


@pytest.fixture(scope="session")
def scorer(tiny_scorer_dir: Path) -> Scorer:
    # fp32: exact invariances hold. int8 quantises activations per batch tensor, so its scores move a
    # little with batch composition (tested separately, with a tolerance).
    return Scorer.load(tiny_scorer_dir, precision="fp32")


def test_import_does_not_pull_torch():
    code = (
        "import sys; import biasgrpo.reward; from biasgrpo.reward import Scorer, load_scorer; "
        "import biasgrpo.reward.scorer; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_folder_layout_and_config(tiny_scorer_dir: Path):
    names = {p.name for p in tiny_scorer_dir.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "scorer.json", "README.md"} <= names
    cfg = json.loads((tiny_scorer_dir / "scorer.json").read_text())
    assert cfg["max_length"] == 32
    assert cfg["input_template"]["kind"] == "pair"
    assert cfg["normalization"] == {"kind": "none"}
    assert cfg["provenance"]["kind"] == "sequence_classification"
    assert cfg["parity"]["fp32_max_abs_diff"] <= 1e-4
    assert cfg["parity"]["int8_spearman_vs_fp32"] >= 0.99


def test_single_string_gives_float_list_gives_float32_array(scorer: Scorer):
    one = scorer.score(TEXTS[0])
    many = scorer.score(TEXTS)
    assert isinstance(one, float)
    assert isinstance(many, np.ndarray) and many.dtype == np.float32 and many.shape == (len(TEXTS),)
    assert one == pytest.approx(float(many[0]), abs=1e-6)
    assert len(set(np.round(many, 5))) > 1  # scores depend on the text


def test_default_precision_is_int8_on_cpu(tiny_scorer_dir: Path, scorer: Scorer):
    int8 = Scorer.load(tiny_scorer_dir)
    assert int8.precision == "int8" and scorer.precision == "fp32"
    assert int8.provider == "CPUExecutionProvider"
    assert not np.array_equal(int8.score(TEXTS), scorer.score(TEXTS))


def test_int8_batching_is_close_and_deterministic(tiny_scorer_dir: Path):
    from biasgrpo.reward.metrics import spearman

    int8 = Scorer.load(tiny_scorer_dir)
    texts = TEXTS * 4
    ref = int8.score(texts, batch_size=32)
    np.testing.assert_array_equal(int8.score(texts, batch_size=32), ref)  # same batches, same bits
    one_by_one = int8.score(texts, batch_size=1)
    assert spearman(one_by_one, ref) >= 0.95
    assert np.max(np.abs(one_by_one - ref)) <= 0.1 * (ref.max() - ref.min())


def test_batching_and_order_invariance(tiny_scorer_dir: Path):
    s = Scorer.load(tiny_scorer_dir, precision="fp32")
    prompts = ["Describe a leader."] * 4 + [None] * 4
    ref = s.score(TEXTS, prompts, batch_size=32)
    one_by_one = s.score(TEXTS, prompts, batch_size=1)
    np.testing.assert_allclose(one_by_one, ref, atol=1e-5)
    perm = list(range(len(TEXTS)))
    random.Random(0).shuffle(perm)
    shuffled = s.score([TEXTS[i] for i in perm], [prompts[i] for i in perm], batch_size=3)
    np.testing.assert_allclose(shuffled, ref[perm], atol=1e-5)


def test_prompt_changes_score_and_none_means_no_prompt(scorer: Scorer):
    base = scorer.score(TEXTS[:2])
    np.testing.assert_allclose(scorer.score(TEXTS[:2], prompts=[None, ""]), base, atol=1e-6)
    with_prompt = scorer.score(TEXTS[:2], prompts=["Who should lead the team?"] * 2)
    assert not np.allclose(with_prompt, base)
    assert scorer.score(TEXTS[0], "Who should lead the team?") == pytest.approx(
        float(with_prompt[0]), abs=1e-6
    )


def test_truncation_is_reported(tiny_scorer_dir: Path, caplog: pytest.LogCaptureFixture):
    s = Scorer.load(tiny_scorer_dir)
    long_text = "word " * 200
    with caplog.at_level(logging.WARNING, logger="biasgrpo.reward.scorer"):
        info = s.score_with_info([long_text, "short"])
    assert info.truncated.tolist() == [True, False]
    assert info.n_tokens[0] == 32
    assert s.n_truncated == 1 and s.n_scored == 2
    assert "truncated" in caplog.text and "max_length=32" in caplog.text


def test_truncation_keeps_completion_and_end_of_prompt(scorer: Scorer):
    tok = scorer.tokenizer
    prompt = " ".join(f"p{i}" for i in range(60))
    enc = encode(tok, ["the completion"], [prompt], InputTemplate(prompt_min_tokens=4), 16)
    decoded = tok.decode(enc.input_ids[0].tolist())
    assert enc.truncated[0] and enc.input_ids.shape == (1, 16)
    assert decoded.endswith("the completion")
    assert "p59" in decoded and "p0 " not in decoded  # the prompt lost its start, not its end


@pytest.mark.parametrize(
    ("texts", "prompts", "exc", "match"),
    [
        (None, None, TypeError, "got None"),
        (["ok", 3], None, TypeError, r"texts\[1\] must be a string, got int"),
        ([], None, ValueError, "empty batch"),
        (["a", "b"], ["p"], ValueError, "prompts has 1 entries but texts has 2"),
        (["a", "b"], "p", TypeError, "single string"),
        (["a"], [7], TypeError, r"prompts\[0\] must be a string or None"),
        ("a", ["p"], TypeError, "single prompt"),
        (42, None, TypeError, "got int"),
    ],
)
def test_bad_inputs_raise_clear_errors(scorer: Scorer, texts, prompts, exc, match):
    with pytest.raises(exc, match=match):
        scorer.score(texts, prompts)


def test_missing_and_corrupt_folders(tiny_scorer_dir: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Scorer.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="scorer.json is missing"):
        Scorer.load(tmp_path)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_scorer_dir, broken)
    (broken / "scorer.json").write_text("{not json")
    with pytest.raises(ScorerLoadError, match="scorer.json is not valid JSON"):
        Scorer.load(broken)

    shutil.rmtree(broken)
    shutil.copytree(tiny_scorer_dir, broken)
    (broken / "model.int8.onnx").write_bytes(b"garbage")
    with pytest.raises(ScorerLoadError, match="model.int8.onnx could not be loaded"):
        Scorer.load(broken)
    (broken / "tokenizer.json").write_text("[]")
    with pytest.raises(ScorerLoadError, match="tokenizer.json is not a valid tokenizers file"):
        Scorer.load(broken, precision="fp32")

    shutil.rmtree(broken)
    shutil.copytree(tiny_scorer_dir, broken)
    (broken / "model.int8.onnx").unlink()
    assert Scorer.load(broken).precision == "fp32"  # auto falls back to fp32
    with pytest.raises(FileNotFoundError, match="model.int8.onnx is missing"):
        Scorer.load(broken, precision="int8")
    cfg = json.loads((broken / "scorer.json").read_text())
    cfg["max_length"] = "long"
    (broken / "scorer.json").write_text(json.dumps(cfg))
    with pytest.raises(ScorerLoadError, match="field 'max_length'"):
        Scorer.load(broken)
    with pytest.raises(ValueError, match="precision must be one of"):
        Scorer.load(tiny_scorer_dir, precision="fp16")
    with pytest.raises(ValueError, match="provider must be one of"):
        Scorer.load(tiny_scorer_dir, provider="tpu")


def test_load_scorer_without_default_says_how_to_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BIASGRPO_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="biasgrpo reward build-default"):
        load_scorer()


def test_thread_safe(scorer: Scorer):
    texts = TEXTS * 4
    ref = scorer.score(texts, batch_size=5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: scorer.score(texts, batch_size=5), range(8)))
    for r in results:
        np.testing.assert_allclose(r, ref, atol=1e-5)


def test_normalization_hand_computed():
    raw = np.array([0.0, 1.0, -1.0], dtype=np.float32)
    np.testing.assert_allclose(normalize_scores(raw, {"kind": "none"}), raw)
    np.testing.assert_allclose(
        normalize_scores(raw, {"kind": "affine", "shift": 1.0, "scale": 2.0}), [-0.5, 0.0, -1.0]
    )
    np.testing.assert_allclose(
        normalize_scores(raw, {"kind": "sigmoid", "shift": 0.0, "scale": 1.0}),
        [0.5, 0.7310586, 0.2689414],
        atol=1e-6,
    )


def test_fp32_onnx_matches_torch_on_new_texts(tiny_scorer_dir: Path):
    from biasgrpo.reward.model import TorchScorer

    torch_scorer = TorchScorer.from_dir(tiny_scorer_dir.parent / "model")
    prompts = ["Tell me about leaders."] * len(TEXTS)
    ref = torch_scorer(TEXTS, prompts)
    got = Scorer.load(tiny_scorer_dir, precision="fp32").score(TEXTS, prompts)
    assert np.max(np.abs(got - ref)) <= 1e-4


def test_int8_fallback_keeps_ffn_output_in_fp32(tiny_scorer_dir: Path, tmp_path: Path):
    from biasgrpo.reward.export import ExportConfig, ParityError, export_onnx

    model_dir = tiny_scorer_dir.parent / "model"
    # A rank threshold no quantised graph can meet forces the fallback, then the parity error.
    with pytest.raises(ParityError, match="int8 Spearman >= 1.0"):
        export_onnx(model_dir, tmp_path / "strict", ExportConfig(max_length=32, int8_min_spearman=1.0))
    cfg = export_onnx(
        model_dir, tmp_path / "kept", ExportConfig(max_length=32, int8_min_spearman=1.0, check_parity=False)
    )
    parity = cfg["parity"]
    assert len(parity["int8_fp32_nodes"]) == 2  # one FFN output projection per layer of the 2-layer model
    assert all("/output/dense/MatMul" in n and "attention" not in n for n in parity["int8_fp32_nodes"])
    assert "int8_full_spearman_vs_fp32" in parity and parity["passed"] is False
    assert not (tmp_path / "strict").exists()  # a failed export leaves nothing behind
    assert Scorer.load(tmp_path / "kept").precision == "int8"
