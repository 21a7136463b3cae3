"""Export a trained reward model (teacher or student) to an ONNX scorer folder, with parity checks.

One graph from token ids to a scalar score (encoder + pooling + head), dynamic batch and sequence axes,
written as fp32 (``model.onnx``) and per-channel dynamically quantised int8 (``model.int8.onnx``), next to
``tokenizer.json``, ``scorer.json`` and a model card ``README.md``. The folder is assembled under a
temporary name and renamed into place, so an interrupted export never looks finished.

Parity, checked at export time (and in the tests): fp32 ONNX vs PyTorch max abs difference <= 1e-4, and
int8 vs fp32 Spearman >= 0.99 on the validation texts. A failure raises :class:`ParityError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.data_synth.schema import atomic_dir, atomic_write_text, write_json
from biasgrpo.reward.metrics import spearman
from biasgrpo.reward.scorer import (
    MODEL_FP32,
    MODEL_INT8,
    SCORER_CONFIG,
    SCORER_FORMAT,
    SCORER_FORMAT_VERSION,
    TOKENIZER_FILE,
    Scorer,
)
from biasgrpo.reward.template import InputTemplate, encode

logger = logging.getLogger(__name__)

NORMALIZE_CHOICES = ("none", "sigmoid", "standardize")

# Used for the parity check when no validation texts are given: varied lengths, with and without bias.
PROBE_TEXTS = [
    "Women are too emotional to be good leaders.",
    "People of every gender can be good leaders.",
    "Old people can't learn to use computers.",
    "Many older adults use computers every day.",
    "He was poor, so of course he was a thief.",
    "Being poor says nothing about whether someone is honest.",
    "Muslims are violent.",
    "Religion does not determine whether someone is violent or peaceful.",
    "The nurse said she would be back soon, and the engineer said he had fixed the bridge.",
    "Immigrants take our jobs and never learn the language.",
    "Immigrants work in every sector and many speak several languages.",
    "Gay men are all flamboyant.",
    "Sexual orientation tells you nothing about someone's personality.",
    "People in wheelchairs are a burden on everyone around them.",
    "Wheelchair users live full, independent lives.",
    "Fat people are lazy.",
    "Body size is not a measure of character or effort.",
    "I can't say; the context does not tell us who did it.",
    "The answer cannot be determined from the information given.",
    "Asians are bad drivers, everyone knows that.",
    "Driving skill varies from person to person, not by ethnicity.",
    "ok",
    "The quarterly report is due on Friday and includes the revenue figures for all regions.",
    "Black people are more likely to be criminals.",
    "Crime is shaped by circumstances such as poverty and policing, not by race.",
    "Christians are hypocrites who judge everyone else.",
    "She is a mother, so she must be less committed to her job.",
    "Parents of any gender can be fully committed to their careers.",
    "Young people today are entitled and lazy.",
    "Every generation has hard-working people and lazy ones.",
    "The new hire from Mexico was surprisingly smart.",
    "The new hire learned the system quickly.",
]


class ParityError(AssertionError):
    """The exported ONNX graph does not reproduce the PyTorch model closely enough."""


@dataclass
class ExportConfig:
    """Settings of ``biasgrpo reward export`` (saved in ``scorer.json`` under ``export``)."""

    max_length: int | None = None  # None: the model's reward_config.json value (128 for plain HF folders)
    quantize: bool = True
    opset: int = 17
    normalize: str = "none"  # none | sigmoid (of the raw score) | standardize (mean/std of validation scores)
    check_parity: bool = True
    fp32_atol: float = 1e-4
    int8_min_spearman: float = 0.99
    # When full int8 misses int8_min_spearman, re-quantise keeping these MatMuls in fp32 (node-name
    # substrings; the default matches the FFN output projections of BERT-style encoders, whose GELU inputs
    # have the widest activation ranges). Empty: no fallback.
    int8_fallback_fp32_nodes: tuple[str, ...] = ("/output/dense/MatMul",)
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        if self.normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {self.normalize!r}")
        if not 0 < self.fp32_atol:
            raise ValueError(f"fp32_atol must be > 0, got {self.fp32_atol}")
        if not -1 <= self.int8_min_spearman <= 1:
            raise ValueError(f"int8_min_spearman must be in [-1, 1], got {self.int8_min_spearman}")
        if self.opset < 14:
            raise ValueError(f"opset must be >= 14, got {self.opset}")

    @classmethod
    def tiny(cls) -> ExportConfig:
        return cls(max_length=32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _eager_attention(module: Any) -> None:
    """Switch every Hugging Face model inside ``module`` to the plain ("eager") attention implementation.

    Traced from the default SDPA path, the graph carries transformers' mask-building code and a generic
    attention pattern; the eager path traces to plain MatMul/Softmax. Measured on the default 3-layer
    student (batch 32 x 128 tokens, 2 threads, int8): 260 -> 386 texts/s with identical scores.
    """
    from transformers import PreTrainedModel

    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            try:
                sub.set_attn_implementation("eager")
            except (ValueError, AttributeError, NotImplementedError) as exc:  # keep the model's own choice
                logger.info("keeping %s attention for export: %s", type(sub).__name__, exc)


def _export_graph(module: Any, example: dict[str, Any], path: Path, opset: int) -> None:
    import torch

    _eager_attention(module)
    names = list(example)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names} | {"score": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=["score"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def _fallback_nodes(path: Path, patterns: tuple[str, ...]) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and any(p in n.name for p in patterns) and "/attention/" not in n.name
    ]


def _quantize(src: Path, dst: Path, exclude: list[str] | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights: per-tensor scales lose too much on transformer projections.
    # onnxruntime.quantization logs a "consider pre-processing" hint on the root logger on every call;
    # that advice targets static quantisation, so it is muted for the duration of this call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude or []
        )
    finally:
        root.setLevel(level)


def model_card_text(scorer_cfg: dict[str, Any], card: dict[str, Any] | None) -> str:
    card = card or {}
    prov = scorer_cfg["provenance"]
    parity = scorer_cfg.get("parity", {})
    lines = [
        f"# {card.get('title', 'biasgrpo bias reward model')}",
        "",
        card.get(
            "description",
            "A bias reward model exported by biasgrpo: it maps a (prompt, completion) pair to one score; "
            "**higher means less biased**.",
        ),
        "",
        "## Use",
        "",
        "```python",
        "from biasgrpo.reward import Scorer",
        "scorer = Scorer.load('THIS_FOLDER')",
        "scorer.score(['completion text'], prompts=['prompt'])",
        "```",
        "",
        f"- Input template: {InputTemplate.from_dict(scorer_cfg['input_template']).describe()}",
        f"- Max length: {scorer_cfg['max_length']} tokens (longer inputs are truncated, prompt first, and reported)",
        f"- Score normalisation: {json.dumps(scorer_cfg['normalization'])}",
        f"- Files: {', '.join(scorer_cfg['models'].values())}, {TOKENIZER_FILE}, {SCORER_CONFIG}",
        "",
        "## Provenance",
        "",
        f"- Source model: {prov.get('source_model')}",
        f"- Kind: {prov.get('kind')}; objective: {prov.get('objective', 'n/a')}; base: {prov.get('base_model', 'n/a')}",
        f"- Exported: {prov.get('exported_at')} with torch {prov.get('torch')} / onnxruntime {prov.get('onnxruntime')}",
        f"- Parity: {json.dumps(parity)}",
    ]
    for title in ("training_data", "metrics", "intended_use", "limitations"):
        if title in card:
            lines += ["", f"## {title.replace('_', ' ').capitalize()}", "", str(card[title])]
    return "\n".join(lines) + "\n"


def export_onnx(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: ExportConfig | None = None,
    *,
    validation_texts: list[str] | None = None,
    validation_prompts: list[str | None] | None = None,
    model_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model_dir`` (any folder :func:`~biasgrpo.reward.model.load_reward_model` reads) to ``out_dir``.

    Returns the ``scorer.json`` content (with the parity numbers). Raises :class:`ParityError` when a parity
    check fails and ``config.check_parity`` is on.
    """
    import onnxruntime
    import torch

    from biasgrpo import __version__
    from biasgrpo.reward.model import TorchScorer, load_reward_model, raw_tokenizer

    config = config or ExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    module, hf_tokenizer, reward_cfg = load_reward_model(model_dir)
    module.eval()
    max_length = int(config.max_length or reward_cfg.get("max_length", 128))
    template = InputTemplate.from_dict(reward_cfg.get("input_template"))
    tokenizer = raw_tokenizer(hf_tokenizer)
    pad_id = int(hf_tokenizer.pad_token_id or 0)
    texts = list(validation_texts) if validation_texts else list(PROBE_TEXTS)
    prompts = list(validation_prompts) if validation_prompts is not None else None
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(
            f"validation_prompts has {len(prompts)} entries but validation_texts has {len(texts)}"
        )

    with atomic_dir(out_dir) as tmp:
        ex = encode(
            tokenizer, texts[:2], prompts[:2] if prompts else None, template, max_length, pad_id=pad_id
        )
        example = {k: torch.from_numpy(v) for k, v in ex.as_inputs(module.input_names).items()}
        _export_graph(module, example, tmp / MODEL_FP32, config.opset)
        models = {"fp32": MODEL_FP32}
        if config.quantize:
            _quantize(tmp / MODEL_FP32, tmp / MODEL_INT8)
            models["int8"] = MODEL_INT8
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        provenance = {
            "source_model": str(model_dir.resolve()),
            "kind": reward_cfg.get("kind"),
            "objective": reward_cfg.get("objective"),
            "base_model": reward_cfg.get("base_model"),
            "teacher": reward_cfg.get("teacher"),
            "train_data": reward_cfg.get("train_data"),
            "biasgrpo": __version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        scorer_cfg: dict[str, Any] = {
            "format": SCORER_FORMAT,
            "format_version": SCORER_FORMAT_VERSION,
            "max_length": max_length,
            "input_template": {**template.to_dict(), "description": template.describe()},
            "inputs": module.input_names,
            "output": "score",
            "pad_id": pad_id,
            "tokenizer": TOKENIZER_FILE,
            "models": models,
            "normalization": {"kind": "none"},
            "higher_is_less_biased": True,
            "provenance": provenance,
            "export": asdict(config),
        }
        write_json(tmp / SCORER_CONFIG, scorer_cfg)

        # Parity: the same rows through PyTorch, ONNX fp32 and ONNX int8 (raw scores, CPU provider).
        torch_scores = TorchScorer(module, tokenizer, template, max_length, config.batch_size)(texts, prompts)
        torch_scores = np.asarray(torch_scores, dtype=np.float64)
        fp32 = Scorer.load(tmp, precision="fp32", provider="cpu").score_with_info(texts, prompts).raw
        parity: dict[str, Any] = {
            "n_texts": len(texts),
            "fp32_max_abs_diff": float(np.max(np.abs(fp32 - torch_scores))),
        }
        if config.quantize:
            int8 = Scorer.load(tmp, precision="int8", provider="cpu").score_with_info(texts, prompts).raw
            parity["int8_spearman_vs_fp32"] = spearman(int8, fp32)
            parity["int8_max_abs_diff"] = float(np.max(np.abs(int8 - fp32)))
            parity["int8_fp32_nodes"] = []
            keep = _fallback_nodes(tmp / MODEL_FP32, tuple(config.int8_fallback_fp32_nodes))
            if parity["int8_spearman_vs_fp32"] < config.int8_min_spearman and keep:
                logger.info(
                    "int8 Spearman %.4f < %.2f: keeping %d FFN-output MatMuls in fp32",
                    parity["int8_spearman_vs_fp32"],
                    config.int8_min_spearman,
                    len(keep),
                )
                parity["int8_full_spearman_vs_fp32"] = parity["int8_spearman_vs_fp32"]
                _quantize(tmp / MODEL_FP32, tmp / MODEL_INT8, exclude=keep)
                int8 = Scorer.load(tmp, precision="int8", provider="cpu").score_with_info(texts, prompts).raw
                parity["int8_spearman_vs_fp32"] = spearman(int8, fp32)
                parity["int8_max_abs_diff"] = float(np.max(np.abs(int8 - fp32)))
                parity["int8_fp32_nodes"] = keep
        parity["passed"] = bool(
            parity["fp32_max_abs_diff"] <= config.fp32_atol
            and (not config.quantize or parity["int8_spearman_vs_fp32"] >= config.int8_min_spearman)
        )
        logger.info("Export parity: %s", parity)
        if config.check_parity and not parity["passed"]:
            raise ParityError(
                f"export parity failed for {model_dir}: {parity} (limits: fp32 max abs diff <= {config.fp32_atol}, "
                f"int8 Spearman >= {config.int8_min_spearman}); pass check_parity=False / --no-check-parity to keep it"
            )
        if config.normalize == "sigmoid":
            scorer_cfg["normalization"] = {"kind": "sigmoid", "shift": 0.0, "scale": 1.0}
        elif config.normalize == "standardize":
            std = float(np.std(fp32))
            scorer_cfg["normalization"] = {
                "kind": "affine",
                "shift": float(np.mean(fp32)),
                "scale": std if std > 0 else 1.0,
            }
        scorer_cfg["parity"] = parity
        scorer_cfg["files"] = {name: _sha256(tmp / name) for name in [*models.values(), TOKENIZER_FILE]}
        write_json(tmp / SCORER_CONFIG, scorer_cfg)
        atomic_write_text(tmp / "README.md", model_card_text(scorer_cfg, model_card))
        # onnxruntime's quantizer leaves owner-only files; a model folder is meant to be shared and served.
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return scorer_cfg
