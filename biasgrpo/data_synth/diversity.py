"""Diversity of a synthetic set against its seed: the Vendi score on MiniLM embeddings, counts, samples.

The Vendi score (Friedman and Dieng, 2023) of items ``x_1..x_n`` under a similarity kernel ``K`` with
``K_ii = 1`` is ``exp(H(λ))``, where ``λ`` are the eigenvalues of ``K / n`` and ``H`` their Shannon entropy:
the effective number of distinct items (identical items -> 1, ``n`` mutually orthogonal items -> ``n``). We
use the cosine kernel on L2-normalised sentence embeddings, ``K = X Xᵀ``. ``K / n`` and ``Xᵀ X / n`` share
their non-zero eigenvalues, so large sets cost a ``d x d`` eigen-decomposition (``d = 384`` for MiniLM)
instead of ``n x n``.

The score grows with the number of items, so the headline ratio compares the synthetic set with random
seed subsets *of the same size* (mean over a few draws); the ratio against a larger seed sample (up to
``max_seed`` texts) is reported too.
Records are embedded by their prompt (the favorable completion when a record has no prompt), the same view
the near-duplicate filter uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.data_synth.filters import Embed, record_view
from biasgrpo.data_synth.schema import PreferenceRecord, Record, write_json

logger = logging.getLogger(__name__)

PAPER_VENDI_RATIO = 0.7279  # the paper's synthetic / seed Vendi ratio: the number to beat


def vendi_score(embeddings: np.ndarray | Sequence[Sequence[float]], *, normalize: bool = True) -> float:
    """Vendi score with the cosine kernel of the rows of ``embeddings`` (n x d); 0.0 for no rows."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n x d), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return 0.0
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("an embedding row is all zeros; the cosine kernel is undefined for it")
        x = x / norms
    gram = x @ x.T if n <= x.shape[1] else x.T @ x  # same non-zero spectrum
    eig = np.linalg.eigvalsh(gram / n)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-np.sum(eig * np.log(eig))))


class SentenceEmbedder:
    """L2-normalised sentence embeddings with sentence-transformers (default: the offline MiniLM).

    Large lists (reference sets) are cached on disk under ``cache_dir()/embeddings`` keyed by the model and
    the exact texts, so restarting a run does not embed the seed again.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        device: str | None = None,
        cache_min: int = 256,
    ) -> None:
        from biasgrpo.assets import resolve_model

        self.model_path = resolve_model(model, default="minilm")
        self.batch_size = batch_size
        self.device = device
        self.cache_min = cache_min
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ImportError(
                    "embeddings need sentence-transformers: pip install 'biasgrpo[train]'"
                ) from exc
            self._model = SentenceTransformer(self.model_path, device=self.device)
        return self._model

    def _cache_path(self, texts: list[str]) -> Path:
        from biasgrpo.assets import cache_dir

        h = hashlib.sha1(str(self.model_path).encode())
        for t in texts:
            h.update(b"\0" + t.encode("utf-8"))
        return cache_dir() / "embeddings" / f"{h.hexdigest()}.npy"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        path = self._cache_path(texts) if len(texts) >= self.cache_min else None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                emb = np.load(path)
                if emb.shape[0] == len(texts):
                    return emb
        emb = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, emb)
            os.replace(tmp, path)
        return emb


def diversity_report(
    synthetic: Sequence[PreferenceRecord],
    seeds: Sequence[Record],
    embed: Embed,
    *,
    draws: int = 5,
    n_samples: int = 5,
    max_seed: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Vendi of the synthetic set and of the seed (same embedding), their ratios, counts and random samples.

    The seed is embedded through a random sample of at most ``max_seed`` texts (a 50k-record seed would
    take tens of minutes on a CPU); the same-size ratio draws its subsets from that sample.
    """
    rng = random.Random(seed)
    syn_views = [record_view(r) for r in synthetic]
    all_seed_views = sorted({v for v in (record_view(r) for r in seeds) if v.strip()})
    seed_views = rng.sample(all_seed_views, min(max_seed, len(all_seed_views)))
    syn_emb = embed(syn_views) if syn_views else np.zeros((0, 1))
    seed_emb = embed(seed_views) if seed_views else np.zeros((0, 1))
    v_syn = vendi_score(syn_emb)
    v_seed = vendi_score(seed_emb)
    m = min(len(syn_views), len(seed_views))
    matched = (
        [vendi_score(seed_emb[rng.sample(range(len(seed_views)), m)]) for _ in range(draws)] if m else []
    )
    v_matched = float(np.mean(matched)) if matched else 0.0

    def counts(key: str) -> dict[str, int]:
        return dict(Counter(str(r.meta.get(key)) for r in synthetic).most_common())

    samples = [
        {
            "id": r.id,
            "domain": r.domain,
            "context": r.meta.get("context"),
            "generator": r.meta.get("generator"),
            "prompt": r.prompt,
            "favorable": r.chosen,
            "unfavorable": r.rejected,
        }
        for r in rng.sample(list(synthetic), min(n_samples, len(synthetic)))
    ]
    return {
        "n_synthetic": len(syn_views),
        "n_seed": len(all_seed_views),
        "n_seed_embedded": len(seed_views),
        "embedding": "prompt (favorable completion when a record has no prompt), cosine kernel",
        "vendi_synthetic": round(v_syn, 4),
        "vendi_seed": round(v_seed, 4),
        "vendi_seed_matched": round(v_matched, 4),
        "vendi_seed_matched_std": round(float(np.std(matched)), 4) if matched else 0.0,
        "matched_draws": len(matched),
        "vendi_ratio_matched": round(v_syn / v_matched, 4) if v_matched else None,
        "vendi_ratio_full": round(v_syn / v_seed, 4) if v_seed else None,
        "paper_vendi_ratio": PAPER_VENDI_RATIO,
        "by_domain": dict(Counter(r.domain for r in synthetic).most_common()),
        "by_context": counts("context"),
        "by_generator": counts("generator"),
        "by_template": counts("template"),
        "samples": samples,
    }


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report.json`` atomically."""
    return write_json(path, report)


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a report (run counts when present, diversity, counts, samples)."""
    parts: list[str] = []
    run = report.get("run")
    if run:
        rows = [
            (
                "accepted",
                f"{run['accepted']} ({run['accepted_this_run']} this run, {run['resumed_from']} resumed)",
            ),
            ("generations this run", run["generations_this_run"]),
            (
                "acceptance rate",
                f"{run['acceptance_rate_this_run']:.1%}"
                if run["acceptance_rate_this_run"] is not None
                else "-",
            ),
            ("records / minute", run["records_per_minute"]),
            ("generations / minute", run["generations_per_minute"]),
            ("rejected (total)", run["rejected_total"]),
        ]
        rows += [(f"  {k}", v) for k, v in run["rejected_by_reason"].items()]
        parts += ["Synthesis", _table(rows)]
    div = report.get("diversity")
    if div:
        ratio = div["vendi_ratio_matched"]
        rows = [
            ("synthetic records", div["n_synthetic"]),
            ("seed texts (distinct)", div["n_seed"]),
            ("Vendi synthetic", div["vendi_synthetic"]),
            ("Vendi seed (same size)", f"{div['vendi_seed_matched']} ± {div['vendi_seed_matched_std']}"),
            (f"Vendi seed ({div['n_seed_embedded']} sampled)", div["vendi_seed"]),
            (
                "ratio, same size",
                f"{ratio:.2%} (paper: {PAPER_VENDI_RATIO:.2%})" if ratio is not None else "-",
            ),
            (
                "ratio, seed sample",
                f"{div['vendi_ratio_full']:.2%}" if div["vendi_ratio_full"] is not None else "-",
            ),
        ]
        parts += ["Diversity", _table(rows)]
        for key in ("by_domain", "by_context", "by_generator"):
            parts += [key.replace("_", " "), _table(list(div[key].items()) or [("-", 0)])]
        for s in div["samples"]:
            parts.append(
                f"- [{s['domain']} / {s['context']} / {s['generator']}]\n    prompt: {s['prompt']}\n"
                f"    favorable: {s['favorable']}\n    unfavorable: {s['unfavorable']}"
            )
    return "\n".join(parts)
