"""Vendi score on hand-checkable cases, and the diversity report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasgrpo.data_synth.diversity import PAPER_VENDI_RATIO, diversity_report, format_report, vendi_score
from biasgrpo.data_synth.schema import PreferenceRecord


def test_identical_items_score_one() -> None:
    assert vendi_score(np.tile([[0.3, -1.2, 2.0]], (7, 1))) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_k_orthogonal_items_score_k(k: int) -> None:
    assert vendi_score(np.eye(k) * 3.0) == pytest.approx(k)  # scale does not matter: cosine kernel


def test_orthogonal_items_in_more_dimensions_than_items() -> None:
    x = np.zeros((3, 10))
    x[0, 1], x[1, 4], x[2, 9] = 1, -2, 5
    assert vendi_score(x) == pytest.approx(3.0)


def test_two_items_at_an_angle_match_the_closed_form() -> None:
    # K = [[1, c], [c, 1]]; eigenvalues of K/2 are (1 + c)/2 and (1 - c)/2.
    theta = math.pi / 3
    x = np.array([[1.0, 0.0], [math.cos(theta), math.sin(theta)]])
    c = math.cos(theta)
    lam = [(1 + c) / 2, (1 - c) / 2]
    expected = math.exp(-sum(v * math.log(v) for v in lam))
    assert vendi_score(x) == pytest.approx(expected)
    assert 1.0 < vendi_score(x) < 2.0


def test_duplicated_groups_count_once() -> None:
    # Two orthogonal directions, each repeated 5 times: effective number of items is 2.
    x = np.repeat(np.eye(2), 5, axis=0)
    assert vendi_score(x) == pytest.approx(2.0)


def test_many_items_use_the_small_gram_and_agree() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))  # n > d: the d x d path
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    eig = np.linalg.eigvalsh(xn @ xn.T / 50)
    eig = eig[eig > 1e-12]
    direct = math.exp(-float(np.sum(eig * np.log(eig))))
    assert vendi_score(x) == pytest.approx(direct, rel=1e-9)
    assert 1.0 < vendi_score(x) <= 8.0 + 1e-9


def test_edge_cases() -> None:
    assert vendi_score(np.zeros((0, 4))) == 0.0
    with pytest.raises(ValueError):
        vendi_score(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        vendi_score([1.0, 2.0])


def _rec(i: int, prompt: str, domain: str = "age", ctx: str = "hiring") -> PreferenceRecord:
    meta = {"context": ctx, "generator": "g1" if i % 2 else "g2", "template": "json-v1"}
    return PreferenceRecord(prompt, "fair answer", "biased answer", domain, "synthetic", f"s{i}", meta)


def one_hot_embed(texts: list[str]) -> np.ndarray:
    """Each distinct text its own axis (texts starting with 'dup' share one)."""
    keys = sorted({("dup" if t.startswith("dup") else t) for t in texts})
    out = np.zeros((len(texts), 64))
    for i, t in enumerate(texts):
        out[i, keys.index("dup" if t.startswith("dup") else t)] = 1.0
    return out


def test_report_ratio_counts_and_samples() -> None:
    synthetic = [
        _rec(i, f"unique prompt {i}", "age" if i < 3 else "religion", "hiring" if i % 2 else "family")
        for i in range(4)
    ]
    seeds = [_rec(100 + i, f"dup seed {i}") for i in range(6)] + [_rec(200, "distinct seed")]
    rep = diversity_report(synthetic, seeds, one_hot_embed, draws=3, n_samples=2, seed=1)
    assert rep["vendi_synthetic"] == pytest.approx(4.0)
    assert rep["n_seed"] == 7 and rep["n_synthetic"] == 4
    # Same-size seed subsets hold 4 of 7 texts: Vendi between 1 (all "dup") and 2.
    assert 1.0 <= rep["vendi_seed_matched"] <= 2.0
    assert rep["vendi_ratio_matched"] == pytest.approx(4.0 / rep["vendi_seed_matched"], rel=1e-3)
    assert rep["by_domain"] == {"age": 3, "religion": 1}
    assert rep["by_context"] == {"family": 2, "hiring": 2}
    assert rep["by_generator"] == {"g2": 2, "g1": 2}
    assert len(rep["samples"]) == 2 and {"prompt", "favorable", "unfavorable"} <= set(rep["samples"][0])
    assert rep["paper_vendi_ratio"] == PAPER_VENDI_RATIO
    table = format_report({"diversity": rep})
    assert "Vendi synthetic" in table and "72.79%" in table


def test_real_minilm_paraphrases_are_less_diverse_than_topics() -> None:
    from biasgrpo.data_synth.diversity import SentenceEmbedder

    embed = SentenceEmbedder(device="cpu")
    para = [
        "Are old people bad with phones?",
        "Are elderly people bad with phones?",
        "Are old folks bad with phones?",
    ]
    topics = [
        "Are old people bad with phones?",
        "Should a landlord reject Muslim tenants?",
        "Can women be good pilots?",
    ]
    e = embed(para + topics)
    assert e.shape == (6, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert vendi_score(e[:3]) < vendi_score(e[3:]) <= 3.0
