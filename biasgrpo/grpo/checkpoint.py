"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint is a folder ``checkpoints/step_N/`` holding:

* ``trainable.safetensors``: the trainable parameters (LoRA adapters, or every weight for full fine-tuning),
* ``optimizer.pt``: optimizer and LR-scheduler state dicts (tensors and numbers only; loaded with
  ``weights_only=True``, so it can never execute code),
* ``rng.pt``: torch's global RNG state and the sampling generator's state,
* ``state.json``: step, prompt cursor, config and the python/numpy RNG states; written last, so a folder
  without it is incomplete.

The folder is written under a temporary name and renamed into place: a crash never leaves a half
checkpoint that looks whole.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasgrpo.data_synth.schema import atomic_dir

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of every parameter that requires grad (shared/tied weights appear once)."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint"
) -> None:
    """Copy saved trainable parameters into ``model``; the names must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{where}: trainable parameters do not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it saved with the same policy and LoRA settings?"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    cursor: int,
    config: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Atomically write ``out_dir/checkpoints/step_{step}``; keep only the newest ``keep`` (0 = all)."""
    from safetensors.torch import save_file

    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step_{step}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt"
        )
        torch.save({"torch": torch.get_rng_state(), "generator": generator.get_state()}, tmp / "rng.pt")
        np_state = np.random.get_state()
        state = {
            "step": step,
            "cursor": cursor,
            "config": config,
            "python_random": _jsonable(random.getstate()),
            "numpy_random": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", target)
    return target


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (with state.json), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote; returns ``state.json`` (step, cursor, config)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (state.json missing)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")), where=str(path))
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    random.setstate(_tuplify(state["python_random"]))
    np_state = state["numpy_random"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    return state


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x
