"""The evaluation stage of a pipeline: evaluate a base and a trained policy, compare, write everything.

    from biasgrpo.evaluate.stage import evaluate_and_compare
    cmp = evaluate_and_compare("smollm2", "runs/demo/grpo/policy", "runs/demo/eval", EvalConfig(limit=100),
                               reward_fn=scorer_reward_fn("runs/demo/reward/onnx"))

Writes into ``out_dir``: ``base.json`` and ``trained.json`` (results), ``compare.json``, ``compare.md``
(the side-by-side table, the demo targets and BBQ per category) and ``plots/{bold_scores,benchmarks}.png``.
A result already on disk with the same config is reused, so an interrupted stage resumes and a rerun
costs seconds; every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biasgrpo.evaluate.config import EvalConfig
from biasgrpo.evaluate.policy import (
    RewardFn,
    evaluate_model,
    evaluate_policy,
    jsonable,
    load_eval,
    write_eval,
)
from biasgrpo.evaluate.report import (
    compare_results,
    comparison_markdown,
    plot_benchmarks,
    plot_score_distributions,
    targets_table,
    write_markdown,
)

logger = logging.getLogger(__name__)

# A policy is an alias / folder / Hub id, or an already loaded (model, tokenizer) pair.
Policy = str | os.PathLike[str] | tuple[Any, Any]


def _same_config(result: Mapping[str, Any], config: EvalConfig, reward_given: bool) -> bool:
    saved = dict(result.get("config", {}))
    if saved != json.loads(json.dumps(jsonable(config.to_dict()))):
        return False
    return ("bold" in result.get("skipped", {})) == (not reward_given and "bold" in config.benchmarks)


def evaluate_cached(
    policy: Policy,
    path: str | os.PathLike[str],
    config: EvalConfig,
    reward_fn: RewardFn | None = None,
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``policy`` into ``path``, or load ``path`` when it holds a result with the same config."""
    path = Path(path)
    if path.is_file():
        try:
            result = load_eval(path)
        except ValueError as exc:
            logger.warning("%s is unreadable (%s); evaluating again", path, exc)
        else:
            if _same_config(result, config, reward_fn is not None):
                logger.info("%s exists with the same config: reusing it", path)
                return result
            logger.info("%s was evaluated with another config: evaluating again", path)
    if isinstance(policy, tuple):
        model, tokenizer = policy
        result = evaluate_policy(model, tokenizer, config, reward_fn, model_name=name)
    else:
        result = evaluate_model(policy, config, reward_fn)
        if name:
            result["model"] = name
    write_eval(result, path)
    return json.loads(json.dumps(jsonable(result)))  # the same form as a reloaded result (NaN -> None)


def evaluate_and_compare(
    base: Policy,
    trained: Policy,
    out_dir: str | os.PathLike[str],
    config: EvalConfig | None = None,
    reward_fn: RewardFn | None = None,
    *,
    names: tuple[str, str] = ("base", "trained"),
    max_ppl_rise: float = 0.10,
) -> dict[str, Any]:
    """Evaluate both policies (reusing results on disk), compare them, write the report files; returns the comparison."""
    config = config or EvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = evaluate_cached(base, out / "base.json", config, reward_fn, name=names[0])
    t = evaluate_cached(trained, out / "trained.json", config, reward_fn, name=names[1])
    cmp = compare_results(b, t)
    write_markdown(out / "compare.json", json.dumps(jsonable(cmp), indent=1) + "\n")
    md = comparison_markdown(b, t, cmp) + "\n## Targets\n\n" + targets_table(cmp, max_ppl_rise=max_ppl_rise)
    write_markdown(out / "compare.md", md)
    labels = {names[0]: b, names[1]: t}
    plot_score_distributions(labels, out / "plots" / "bold_scores.png", threshold=config.bold_threshold)
    plot_benchmarks(labels, out / "plots" / "benchmarks.png")
    return cmp
