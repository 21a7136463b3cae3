"""Evaluate one policy on every benchmark and read/write the result JSON.

In-process use (the pipeline)::

    from biasgrpo.evaluate import EvalConfig, evaluate_policy, write_eval
    result = evaluate_policy(model, tokenizer, EvalConfig(limit=50), reward_fn=reward, model_name="base")
    write_eval(result, "runs/demo/eval/base.json")

The result holds, per benchmark: ``n`` items, ``seconds`` taken, ``metrics`` (``{name: {value, ci_low,
ci_high, n}}``, 95% percentile bootstrap), ``by_group`` (the same per BBQ category / bias type / domain),
and ``items`` (per-item columns, so two results on the same items can be compared pairwise).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.evaluate.config import EvalConfig
from biasgrpo.evaluate.metrics import METRICS, metric_counts, metric_fn
from biasgrpo.evaluate.stats import bootstrap

logger = logging.getLogger(__name__)

EVAL_FORMAT = "biasgrpo-eval"
EVAL_FORMAT_VERSION = 1
RewardFn = Callable[..., Sequence[float | None]]
NO_REWARD = "skipped: no reward function given (pass --reward SCORER_DIR or reward_fn=...)"


def summarize(
    benchmark: str,
    items: dict[str, list[Any]],
    params: dict[str, Any] | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Metrics with bootstrap intervals, overall and per group, from a benchmark's per-item columns.

    Each metric's ``n`` is the number of items behind it (e.g. only the ambiguous ones for ``acc_amb``).
    """
    fn = metric_fn(benchmark, params)
    group_key = METRICS[benchmark][1]
    out: dict[str, Any] = {
        "metrics": bootstrap(items, fn, n_resamples=n_resamples, seed=seed, alpha=alpha),
        "group_key": group_key,
        "by_group": {},
        "group_sizes": {},
    }
    for k, n in metric_counts(benchmark, items).items():
        if k in out["metrics"]:
            out["metrics"][k]["n"] = n
    if group_key and group_key in items:
        keys = np.asarray(items[group_key]).astype(str)
        for g in sorted(set(keys.tolist())):
            sel = np.flatnonzero(keys == g)
            sub = {k: np.asarray(v)[sel] for k, v in items.items()}
            out["by_group"][g] = bootstrap(sub, fn, n_resamples=n_resamples, seed=seed, alpha=alpha)
            out["group_sizes"][g] = int(sel.size)
            for k, n in metric_counts(benchmark, sub).items():
                if k in out["by_group"][g]:
                    out["by_group"][g][k]["n"] = n
    return out


def _run_one(benchmark: str, model, tokenizer, config: EvalConfig, reward_fn: RewardFn | None):
    from biasgrpo.evaluate import benchmarks as B

    items = B.load_items(benchmark, config)
    if benchmark == "bbq":
        return B.run_bbq(model, tokenizer, items, config)
    if benchmark == "stereoset":
        return B.run_stereoset(model, tokenizer, items, config)
    if benchmark == "crows":
        return B.run_crows(model, tokenizer, items, config)
    if benchmark == "ppl":
        return B.run_perplexity(model, tokenizer, items, config)
    return B.run_bold(model, tokenizer, items, config, reward_fn)


def evaluate_policy(
    model,
    tokenizer,
    config: EvalConfig | None = None,
    reward_fn: RewardFn | None = None,
    *,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``config.benchmarks``; returns the result dict (see the module docstring).

    BOLD needs ``reward_fn`` (TRL signature ``f(prompts=..., completions=...) -> list[float | None]``,
    e.g. a wrapped :class:`biasgrpo.reward.scorer.Scorer`); without one it is skipped and the reason is
    recorded under ``skipped``.
    """
    config = config or EvalConfig()
    t_all = time.perf_counter()
    result: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "version": EVAL_FORMAT_VERSION,
        "model": model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "config": config.to_dict(),
        "benchmarks": {},
        "skipped": {},
    }
    try:
        import torch

        result["host"]["torch_threads"] = torch.get_num_threads()
        result["host"]["device"] = str(next(model.parameters()).device)
    except (ImportError, StopIteration):
        pass
    threads_before = None
    if config.torch_threads is not None:
        import torch

        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads)
        result["host"]["torch_threads"] = config.torch_threads
    try:
        _run_all(result, model, tokenizer, config, reward_fn)
    finally:
        if threads_before is not None:
            torch.set_num_threads(threads_before)
    result["seconds_total"] = round(time.perf_counter() - t_all, 2)
    return result


def _run_all(
    result: dict[str, Any], model, tokenizer, config: EvalConfig, reward_fn: RewardFn | None
) -> None:
    for name in config.benchmarks:
        if name == "bold" and reward_fn is None:
            logger.warning("BOLD generation %s", NO_REWARD)
            result["skipped"][name] = NO_REWARD
            continue
        t0 = time.perf_counter()
        items = _run_one(name, model, tokenizer, config, reward_fn)
        t_run = time.perf_counter() - t0
        params = {"threshold": config.bold_threshold} if name == "bold" else {}
        summary = summarize(
            name, items, params, n_resamples=config.n_resamples, seed=config.seed, alpha=config.alpha
        )
        entry = {
            "n": len(items["id"]),
            "seconds": round(t_run, 2),
            "params": params,
            **summary,
        }
        if name == "bold":
            entry["n_unscored"] = int(sum(not np.isfinite(s) for s in items["score"]))
        if config.keep_items:
            entry["items"] = items
        result["benchmarks"][name] = entry
        logger.info("%s: %d items in %.1f s", name, entry["n"], t_run)


def load_policy(
    model: str | os.PathLike[str] | None = None, *, device: str = "cpu", trust_remote_code: bool = False
):
    """(model, tokenizer) from an alias (``smollm2``), a local folder or a Hub id, via ``resolve_model``.

    A folder of LoRA adapters (``adapter_config.json`` and no ``config.json``, as the GRPO loop saves
    ``policy/`` with LoRA) is loaded onto its base model and merged, so it evaluates at full speed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasgrpo.assets import resolve_model

    folder = Path(str(model)).expanduser() if model is not None else None
    if (
        folder is not None
        and (folder / "adapter_config.json").is_file()
        and not (folder / "config.json").is_file()
    ):
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ImportError(
                f"{folder} holds LoRA adapters; loading them needs peft: pip install 'biasgrpo[train]'"
            ) from exc
        adapter_cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = adapter_cfg.get("base_model_name_or_path")
        if not base_name:
            raise ValueError(f"{folder / 'adapter_config.json'}: field 'base_model_name_or_path' is empty")
        base = AutoModelForCausalLM.from_pretrained(
            resolve_model(base_name, default="smollm2"), trust_remote_code=trust_remote_code
        )
        policy = PeftModel.from_pretrained(base, folder).merge_and_unload()
        tok_dir = (
            folder if (folder / "tokenizer_config.json").is_file() else resolve_model(base_name, "smollm2")
        )
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
    else:
        path = resolve_model(model, default="smollm2")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        policy = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    policy = policy.to(device)
    policy.eval()
    return policy, tokenizer


def evaluate_model(
    model: str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    reward_fn: RewardFn | None = None,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Load a policy (alias, folder or Hub id) and evaluate it; ``model`` in the result is the argument."""
    policy, tokenizer = load_policy(model, device=device)
    return evaluate_policy(policy, tokenizer, config, reward_fn, model_name=str(model or "smollm2"))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and NaN/inf as None, ready for ``json.dumps``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN; null means "undefined" (e.g. a bias score with no named answer)
    return obj


def write_eval(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a result atomically as JSON (NaN becomes null)."""
    from biasgrpo.data_synth.schema import atomic_write_text

    return atomic_write_text(path, json.dumps(jsonable(result), indent=1, ensure_ascii=False) + "\n")


def load_eval(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result written by :func:`write_eval`, checking its format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such evaluation result; run `biasgrpo eval policy --out {path}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != EVAL_FORMAT:
        raise ValueError(f"{path}: not a biasgrpo evaluation result (field 'format' is not {EVAL_FORMAT!r})")
    if data.get("version") != EVAL_FORMAT_VERSION:
        raise ValueError(
            f"{path}: evaluation format version {data.get('version')} is not {EVAL_FORMAT_VERSION}"
        )
    return data


def scorer_reward_fn(spec: str | os.PathLike[str]) -> RewardFn:
    """A TRL-signature reward from an exported scorer folder, or ``"default"`` for the default reward model.

    ``f(prompts=..., completions=...)`` returns ``Scorer.score(completions, prompts)`` as a list of floats.
    """
    from biasgrpo.reward.scorer import load_scorer

    text = str(spec)
    if text != "default" and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(
            f"--reward {text!r}: not a scorer folder (with scorer.json) and not 'default'"
        )
    scorer = load_scorer(None if text == "default" else Path(text).expanduser())

    def bias_reward(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
        return [float(s) for s in scorer.score(list(completions), prompts=list(prompts))]

    bias_reward.scorer = scorer  # type: ignore[attr-defined]
    return bias_reward
