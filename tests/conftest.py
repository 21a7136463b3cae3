"""Shared fixtures: tiny random models built offline (never downloaded), reused across tests.

Models are built once per session into a temp folder; tests load them from disk (or take a deep copy
of the in-memory model), so no test can leak changes into another.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Tests must never reach a hub: fail fast instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-dim BERT-like encoder with the real MiniLM WordPiece tokenizer, saved HF-style."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from biasgrpo.assets import encoder_path

    out = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-dim Llama-like causal LM with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from biasgrpo.assets import smollm2_tokenizer_path

    out = tmp_path_factory.mktemp("tiny-causal-lm")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def _tiny_causal_lm_session(tiny_causal_lm_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir), AutoTokenizer.from_pretrained(
        tiny_causal_lm_dir
    )


@pytest.fixture()
def tiny_causal_lm(_tiny_causal_lm_session):
    """(model, tokenizer) deep-copied per test, so tests may train it freely."""
    model, tokenizer = _tiny_causal_lm_session
    return copy.deepcopy(model), tokenizer


@pytest.fixture(scope="session")
def _tiny_encoder_session(tiny_encoder_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(tiny_encoder_dir), AutoTokenizer.from_pretrained(tiny_encoder_dir)


@pytest.fixture()
def tiny_encoder(_tiny_encoder_session):
    """(encoder, tokenizer) deep-copied per test."""
    model, tokenizer = _tiny_encoder_session
    return copy.deepcopy(model), tokenizer
