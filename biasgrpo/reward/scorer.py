"""Score text with an exported bias reward model: ONNX Runtime + tokenizers + numpy, no torch.

A scorer folder (written by :func:`biasgrpo.reward.export.export_onnx`) holds::

    model.onnx        fp32 graph: input_ids, attention_mask[, token_type_ids] -> score [batch]
    model.int8.onnx   the same graph with dynamically quantised (per-channel int8) weights
    tokenizer.json    the Hugging Face ``tokenizers`` file
    scorer.json       max length, input template, score normalisation, provenance, parity results
    README.md         the model card

Usage::

    from biasgrpo.reward.scorer import Scorer
    scorer = Scorer.load("runs/demo/reward/onnx")
    scorer.score("Women are bad at maths.")                   # -> float
    scorer.score(["text a", "text b"], prompts=["p", "p"])     # -> np.ndarray float32, shape [2]

Higher scores always mean *less biased*. The scorer is thread-safe: one instance can serve many threads.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.reward.template import InputTemplate, encode_rows, pad

logger = logging.getLogger(__name__)

SCORER_FORMAT = "biasgrpo-scorer"
SCORER_FORMAT_VERSION = 1
SCORER_CONFIG = "scorer.json"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FP32 = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
PRECISIONS = ("auto", "int8", "fp32")
PROVIDERS = ("auto", "cpu", "cuda")
NORMALIZATIONS = ("none", "affine", "sigmoid")
DEFAULT_MODEL_NAME = "default-v1"


class ScorerLoadError(ValueError):
    """A scorer folder exists but is incomplete or corrupt (the message names the file and the fix)."""


def _missing_extra(exc: ImportError) -> ImportError:
    return ImportError(
        f"{exc}. The scorer needs ONNX Runtime: pip install 'biasgrpo[cpu]' (or 'biasgrpo[gpu]' for CUDA)"
    )


def default_model_dir() -> Path:
    """Where ``biasgrpo reward build-default`` puts the default reward model (inside the cache)."""
    from biasgrpo.assets import cache_dir

    return cache_dir() / "reward" / DEFAULT_MODEL_NAME / "onnx"


def _cuda_device_count() -> int:
    """Number of CUDA devices the driver sees, probed quietly (0 when there is no driver or GPU)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


def choose_providers(provider: str = "auto") -> list[str]:
    """ONNX Runtime providers: CUDA when onnxruntime-gpu and a GPU are present (or asked for), else CPU.

    onnxruntime-gpu advertises the CUDA provider even on machines without a GPU and then prints library
    errors when a session tries it, so ``auto`` first asks the CUDA driver whether a device exists.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _missing_extra(exc) from None
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if not has_cuda_ep:
            raise RuntimeError(
                "provider='cuda' needs onnxruntime-gpu: pip uninstall onnxruntime && pip install 'biasgrpo[gpu]'"
            )
        if _cuda_device_count() == 0:
            raise RuntimeError("provider='cuda' but the CUDA driver reports no GPU on this machine")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if has_cuda_ep and _cuda_device_count() > 0:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def read_scorer_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``scorer.json``; errors name the file, the field and how to fix it."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"reward model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ScorerLoadError(f"{model_dir} is a file, expected an exported scorer folder")
    path = model_dir / SCORER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {model_dir} is not an exported scorer folder "
            "(create one with `biasgrpo reward export --model TRAINED_DIR --out DIR`)"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScorerLoadError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(cfg, dict) or cfg.get("format") != SCORER_FORMAT:
        raise ScorerLoadError(f"{path}: field 'format' must be {SCORER_FORMAT!r}; re-export the model")
    if cfg.get("format_version", 0) > SCORER_FORMAT_VERSION:
        raise ScorerLoadError(
            f"{path}: format_version {cfg.get('format_version')} is newer than this biasgrpo supports "
            f"({SCORER_FORMAT_VERSION}); upgrade biasgrpo"
        )
    for key, kind in (("max_length", int), ("inputs", list), ("output", str), ("models", dict)):
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool):
            raise ScorerLoadError(f"{path}: field '{key}' is missing or not a {kind.__name__}")
    if cfg["max_length"] < 4:
        raise ScorerLoadError(f"{path}: field 'max_length' must be >= 4, got {cfg['max_length']}")
    norm = cfg.get("normalization") or {"kind": "none"}
    if norm.get("kind") not in NORMALIZATIONS:
        raise ScorerLoadError(f"{path}: field 'normalization.kind' must be one of {NORMALIZATIONS}")
    if norm["kind"] != "none" and not float(norm.get("scale", 1.0)) > 0:
        raise ScorerLoadError(f"{path}: field 'normalization.scale' must be > 0")
    cfg["normalization"] = norm
    try:
        cfg["input_template"] = InputTemplate.from_dict(cfg.get("input_template"))
    except (TypeError, ValueError) as exc:
        raise ScorerLoadError(f"{path}: field 'input_template': {exc}") from None
    return cfg


def normalize_scores(raw: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """Apply the score normalisation stored in ``scorer.json`` (none, affine or sigmoid)."""
    kind = normalization.get("kind", "none")
    if kind == "none":
        return raw.astype(np.float32, copy=False)
    z = (raw.astype(np.float64) - float(normalization.get("shift", 0.0))) / float(
        normalization.get("scale", 1.0)
    )
    if kind == "sigmoid":
        z = 1.0 / (1.0 + np.exp(-z))
    return z.astype(np.float32)


@dataclass
class ScoreResult:
    """Scores with per-row diagnostics, from :meth:`Scorer.score_with_info`."""

    scores: np.ndarray  # float32 [n]
    raw: np.ndarray  # float32 [n], before normalisation
    truncated: np.ndarray  # bool [n], True where the input was cut to max_length
    n_tokens: np.ndarray  # int [n], tokens fed to the model


def _check_inputs(texts: Any, prompts: Any) -> tuple[list[str], list[str | None] | None, bool]:
    single = isinstance(texts, str)
    if texts is None:
        raise TypeError("texts must be a string or a list of strings, got None")
    if single:
        texts = [texts]
        if prompts is not None and not isinstance(prompts, str):
            raise TypeError(
                "a single text takes a single prompt string (or None), got " + type(prompts).__name__
            )
        prompts = None if prompts is None else [prompts]
    elif isinstance(texts, (bytes, dict)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is an empty batch: pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
    if prompts is not None:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list with one prompt per text, got a single string")
        prompts = list(prompts)
        if len(prompts) != len(texts):
            raise ValueError(
                f"prompts has {len(prompts)} entries but texts has {len(texts)}: they must match"
            )
        for i, p in enumerate(prompts):
            if p is not None and not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a string or None, got {type(p).__name__}")
    return texts, prompts, single


class Scorer:
    """A loaded ONNX reward model. Build with :meth:`load`; call :meth:`score`."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        config: dict[str, Any],
        model_dir: Path,
        model_file: str,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.model_dir = Path(model_dir)
        self.model_file = model_file
        self.batch_size = batch_size
        self.template: InputTemplate = config["input_template"]
        self.max_length: int = int(config["max_length"])
        self.pad_id: int = int(config.get("pad_id", 0))
        self.input_names: list[str] = [i.name for i in session.get_inputs()]
        self.output_name: str = config["output"]
        self.normalization: dict[str, Any] = config["normalization"]
        self._lock = threading.Lock()
        self.n_scored = 0
        self.n_truncated = 0
        self._warned_truncation = False

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        *,
        precision: str = "auto",
        provider: str = "auto",
        num_threads: int | None = None,
        batch_size: int = 32,
    ) -> Scorer:
        """Load an exported scorer folder.

        ``precision``: ``auto`` (int8 when ``model.int8.onnx`` exists and the provider is the CPU, else
        fp32), ``int8`` or ``fp32``. ``provider``: ``auto`` (CUDA when onnxruntime-gpu and a GPU are present,
        else CPU), ``cpu`` or ``cuda``. ``num_threads``: ONNX Runtime intra-op threads (default: all cores).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model_dir = Path(model_dir).expanduser()
        cfg = read_scorer_config(model_dir)
        providers = choose_providers(provider)
        models = cfg["models"]
        int8_file = models.get("int8")
        has_int8 = bool(int8_file) and (model_dir / int8_file).is_file()
        if precision == "int8" and not has_int8:
            raise FileNotFoundError(
                f"{model_dir / (int8_file or MODEL_INT8)} is missing: export with int8 enabled"
            )
        # Dynamic int8 (MatMulInteger) runs on the CPU provider; on CUDA the fp32 graph is the fast one.
        use_int8 = precision == "int8" or (
            precision == "auto" and has_int8 and providers[0] == "CPUExecutionProvider"
        )
        model_file = int8_file if use_int8 else models.get("fp32", MODEL_FP32)
        model_path = model_dir / model_file
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path} is missing; re-export the model")
        tok_path = model_dir / cfg.get("tokenizer", TOKENIZER_FILE)
        if not tok_path.is_file():
            raise FileNotFoundError(f"{tok_path} is missing; re-export the model")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing_extra(exc) from None
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a corrupt file
            raise ScorerLoadError(
                f"{tok_path} is not a valid tokenizers file ({exc}); re-export the model"
            ) from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider-assignment warnings on every load
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ScorerLoadError(
                f"{model_path} could not be loaded by ONNX Runtime ({exc}); re-export the model"
            ) from None
        names = {i.name for i in session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ScorerLoadError(
                f"{model_path} must take input_ids and attention_mask, it takes {sorted(names)}"
            )
        if cfg["output"] not in {o.name for o in session.get_outputs()}:
            raise ScorerLoadError(
                f"{model_path} has no output named {cfg['output']!r} (scorer.json field 'output')"
            )
        logger.info("Loaded %s with %s", model_path, session.get_providers()[0])
        return cls(session, tokenizer, cfg, model_dir, model_file, batch_size=batch_size)

    @property
    def precision(self) -> str:
        return "int8" if self.model_file == self.config["models"].get("int8") else "fp32"

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __repr__(self) -> str:
        return f"Scorer({str(self.model_dir)!r}, precision={self.precision!r}, provider={self.provider!r})"

    def _run(self, batch: Any) -> np.ndarray:
        out = self.session.run([self.output_name], batch.as_inputs(self.input_names))[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch.lengths), -1)[:, 0]

    def score_with_info(
        self,
        texts: str | Sequence[str],
        prompts: str | Sequence[str | None] | None = None,
        *,
        batch_size: int | None = None,
    ) -> ScoreResult:
        """Score rows and return :class:`ScoreResult` (scores, raw scores, truncation flags, token counts)."""
        texts, prompts, _ = _check_inputs(texts, prompts)
        bs = batch_size or self.batch_size
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        encs, truncated = encode_rows(self.tokenizer, texts, prompts, self.template, self.max_length)
        lengths = np.array([len(e.ids) for e in encs], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths share a batch
        raw = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            raw[idx] = self._run(pad([encs[i] for i in idx], truncated[idx], pad_id=self.pad_id))
        n_trunc = int(truncated.sum())
        with self._lock:
            self.n_scored += len(texts)
            self.n_truncated += n_trunc
            warn = n_trunc > 0 and not self._warned_truncation
            self._warned_truncation = self._warned_truncation or warn
        if warn:
            logger.warning(
                "%d of %d inputs were longer than max_length=%d tokens and were truncated "
                "(prompt first, from its start); Scorer.n_truncated counts them all",
                n_trunc,
                len(texts),
                self.max_length,
            )
        return ScoreResult(normalize_scores(raw, self.normalization), raw, truncated, lengths)

    def score(
        self,
        texts: str | Sequence[str],
        prompts: str | Sequence[str | None] | None = None,
        *,
        batch_size: int | None = None,
    ) -> np.ndarray | float:
        """Scores (higher = less biased): a float for one string, a float32 array for a list."""
        single = isinstance(texts, str)
        result = self.score_with_info(texts, prompts, batch_size=batch_size)
        return float(result.scores[0]) if single else result.scores

    __call__ = score


def load_scorer(model_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Scorer:
    """Load a scorer folder; with no argument, the default reward model built into the cache.

    Keyword arguments go to :meth:`Scorer.load` (``precision``, ``provider``, ``num_threads``, ``batch_size``).
    """
    if model_dir is None:
        path = default_model_dir()
        if not (path / SCORER_CONFIG).is_file():
            raise FileNotFoundError(
                f"The default reward model is not built yet (expected at {path}). Build it once with "
                "`biasgrpo reward build-default` (about 20 minutes on 2 CPU cores), or pass a scorer folder."
            )
        model_dir = path
    return Scorer.load(model_dir, **kwargs)
