"""Reward models in PyTorch: the teacher (a Hugging Face sequence classifier) and the two student kinds.

* **Teacher / truncated student**: ``AutoModelForSequenceClassification`` with ``num_labels=1``, saved in
  the standard Hugging Face layout so TRL, OpenRLHF and ``from_pretrained`` load it as is. A truncated
  student is the same class with only the first k encoder layers of the teacher (:func:`truncate_layers`).
* **Embedding-head student** (:class:`EmbeddingHeadModel`): a frozen sentence encoder, mean pooling and a
  small trained head (linear or MLP). Saved as ``encoder/`` (HF layout), ``head.safetensors`` and
  ``reward_config.json``.

Every folder we write carries ``reward_config.json`` (kind, max length, input template, objective), which
export reads; a plain HF classifier folder without it still loads, with the default template.

:func:`load_reward_model` returns a :class:`ScoreModule`: ``forward(input_ids, attention_mask[,
token_type_ids]) -> score [batch]``, the exact graph that export writes to ONNX.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasgrpo.data_synth.schema import write_json
from biasgrpo.reward.template import InputTemplate

logger = logging.getLogger(__name__)

REWARD_CONFIG = "reward_config.json"
KINDS = ("sequence_classification", "embedding_head")


def read_reward_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``reward_config.json`` of a model folder, or defaults for a plain HF sequence classifier."""
    path = Path(model_dir) / REWARD_CONFIG
    if not path.is_file():
        return {
            "kind": "sequence_classification",
            "max_length": 128,
            "input_template": InputTemplate().to_dict(),
        }
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if cfg.get("kind") not in KINDS:
        raise ValueError(f"{path}: field 'kind' must be one of {KINDS}, got {cfg.get('kind')!r}")
    return cfg


def write_reward_config(model_dir: str | os.PathLike[str], **fields: Any) -> Path:
    """Write ``reward_config.json`` (kind, max_length, input_template, ... ) into a model folder."""
    return write_json(Path(model_dir) / REWARD_CONFIG, fields)


def accepts_token_type_ids(model: nn.Module) -> bool:
    """True when the model takes token type ids that carry information (BERT yes, RoBERTa/DistilBERT no)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "type_vocab_size", 0) < 2:
        return False
    return "token_type_ids" in inspect.signature(model.forward).parameters


def build_teacher(base: str | None = "minilm", *, seed: int = 0) -> tuple[nn.Module, Any]:
    """A fresh ``AutoModelForSequenceClassification`` (one output) on top of ``base`` and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from biasgrpo.assets import resolve_model

    path = resolve_model(base, default="minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: a fast (tokenizers-backed) tokenizer is required for ONNX scoring")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if model.config.pad_token_id is None:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.problem_type = "regression"
    return model, tokenizer


def _encoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """The ModuleList holding a classifier's transformer layers, and the config field counting them."""
    base = getattr(model, model.base_model_prefix, model)
    for path, field in (
        ("encoder.layer", "num_hidden_layers"),
        ("transformer.layer", "n_layers"),
        ("layers", "num_hidden_layers"),
    ):
        obj: Any = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj, field
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} to truncate")


def truncate_layers(model: nn.Module, num_layers: int) -> nn.Module:
    """A copy of a sequence classifier keeping the first ``num_layers`` encoder layers (initialised from it)."""
    import copy

    layers, field = _encoder_layers(model)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [1, {len(layers)}] for this model, got {num_layers}")
    student = copy.deepcopy(model)
    s_layers, _ = _encoder_layers(student)
    del s_layers[num_layers:]
    setattr(student.config, field, num_layers)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = student.config.layer_types[:num_layers]
    return student


class MeanPool(nn.Module):
    """Mean of token embeddings over the attention mask (the sentence-transformers default)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, H]


def make_head(dim: int, head: str = "mlp", hidden: int = 256, dropout: float = 0.1) -> nn.Module:
    """A linear or one-hidden-layer MLP head mapping a [B, dim] embedding to a [B, 1] score."""
    if head == "linear":
        return nn.Sequential(nn.Linear(dim, 1))
    if head == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
    raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")


class EmbeddingHeadModel(nn.Module):
    """Frozen sentence encoder + mean pooling (+ L2 normalisation) + trained head -> score [batch]."""

    def __init__(self, encoder: nn.Module, head: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = MeanPool()
        self.head = head
        self.normalize = normalize
        self.use_token_type_ids = accepts_token_type_ids(encoder)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = (
            {"token_type_ids": token_type_ids}
            if self.use_token_type_ids and token_type_ids is not None
            else {}
        )
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        emb = self.pool(hidden, attention_mask)  # [B, H]
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask, token_type_ids))[:, 0]  # [B]

    def save(self, out_dir: str | os.PathLike[str], tokenizer: Any, **reward_fields: Any) -> Path:
        """Write encoder/ (HF layout), head.safetensors, the tokenizer and reward_config.json."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out / "encoder", safe_serialization=True)
        tokenizer.save_pretrained(out)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(out / "head.safetensors"))
        head_spec = {"type": "linear" if len(self.head) == 1 else "mlp"}
        if head_spec["type"] == "mlp":
            head_spec["hidden"] = self.head[0].out_features
        write_reward_config(
            out, kind="embedding_head", head=head_spec, normalize=self.normalize, **reward_fields
        )
        return out

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> EmbeddingHeadModel:
        from safetensors.torch import load_file
        from transformers import AutoModel

        model_dir = Path(model_dir)
        cfg = read_reward_config(model_dir)
        encoder = AutoModel.from_pretrained(model_dir / "encoder")
        spec = cfg.get("head", {"type": "mlp", "hidden": 256})
        head = make_head(encoder.config.hidden_size, spec["type"], spec.get("hidden", 256))
        head.load_state_dict(load_file(str(model_dir / "head.safetensors")))
        return cls(encoder, head, normalize=cfg.get("normalize", True)).eval()


class ScoreModule(nn.Module):
    """Uniform scoring interface: ``forward(input_ids, attention_mask[, token_type_ids]) -> score [batch]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        inner = model.encoder if isinstance(model, EmbeddingHeadModel) else model
        self.use_token_type_ids = accepts_token_type_ids(inner)

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.use_token_type_ids else [])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(self.model, EmbeddingHeadModel):
            return self.model(input_ids, attention_mask, token_type_ids)  # [B]
        kwargs = (
            {"token_type_ids": token_type_ids}
            if self.use_token_type_ids and token_type_ids is not None
            else {}
        )
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0]  # [B]


def load_reward_model(model_dir: str | os.PathLike[str]) -> tuple[ScoreModule, Any, dict[str, Any]]:
    """Load any reward folder we write (or a plain HF classifier): ``(ScoreModule in eval mode, HF tokenizer, reward_config)``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"reward model folder {model_dir} does not exist")
    cfg = read_reward_config(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if cfg["kind"] == "embedding_head":
        model: nn.Module = EmbeddingHeadModel.load(model_dir)
    else:
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir / 'config.json'} is missing: not a Hugging Face model folder"
            )
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        if model.config.num_labels != 1:
            raise ValueError(
                f"{model_dir}: a reward model needs num_labels=1, this one has {model.config.num_labels}"
            )
    return ScoreModule(model).eval(), tokenizer, cfg


def raw_tokenizer(tokenizer: Any) -> Any:
    """A ``tokenizers.Tokenizer`` copy of an HF fast tokenizer with truncation and padding switched off."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; ONNX scoring needs tokenizer.json"
        )
    raw = Tokenizer.from_str(backend.to_str())
    raw.no_truncation()
    raw.no_padding()
    return raw


class TorchScorer:
    """Score texts with a PyTorch reward model using the same template and batching as the ONNX scorer.

    ``TorchScorer(module, tokenizer, template, max_length)(texts, prompts)`` -> float32 array [n].
    """

    def __init__(
        self,
        module: nn.Module,
        tokenizer: Any,
        template: InputTemplate | None = None,
        max_length: int = 128,
        batch_size: int = 32,
    ) -> None:
        self.module = module
        self.tokenizer = raw_tokenizer(tokenizer) if not hasattr(tokenizer, "post_process") else tokenizer
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.template = template or InputTemplate()
        self.max_length = max_length
        self.batch_size = batch_size
        self.input_names = getattr(module, "input_names", ["input_ids", "attention_mask"])

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike[str], **kwargs: Any) -> TorchScorer:
        module, tokenizer, cfg = load_reward_model(model_dir)
        kwargs.setdefault("max_length", int(cfg.get("max_length", 128)))
        kwargs.setdefault("template", InputTemplate.from_dict(cfg.get("input_template")))
        return cls(module, tokenizer, **kwargs)

    @torch.no_grad()
    def __call__(self, texts: list[str], prompts: list[str | None] | None = None) -> Any:
        import numpy as np

        from biasgrpo.reward.template import encode_rows, pad

        was_training = self.module.training
        self.module.eval()
        encs, flags = encode_rows(self.tokenizer, texts, prompts, self.template, self.max_length)
        order = np.argsort([-len(e.ids) for e in encs], kind="stable")
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = pad([encs[i] for i in idx], flags[idx], pad_id=self.pad_id)
            inputs = {k: torch.from_numpy(v) for k, v in batch.as_inputs(self.input_names).items()}
            out[idx] = self.module(**inputs).float().numpy()
        self.module.train(was_training)
        return out
