"""``runs/<name>/report.md``: one page that gathers what every pipeline stage wrote.

Read-only over the run folder (see :mod:`biasgrpo.pipeline` for the layout); a section whose stage has not
produced its files says so instead of failing, so the report can be written at any point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biasgrpo.data_synth.schema import atomic_write_text, write_json
from biasgrpo.markdown import table


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return table(header, rows, cell=_fmt)


def _data_section(run: Path) -> list[str]:
    manifest = _load(run / "data" / "manifest.json")
    if manifest is None:
        return ["## Data\n", "_not built yet_\n"]
    pref, prompts = manifest["preference"]["by_split"], manifest["prompts"]["by_split"]
    rows = [
        [s, n, manifest["licences"].get(s, {}).get("licence", "")]
        for s, n in manifest["loaded_per_source"].items()
    ]
    return [
        "## Data\n",
        f"Preference records: train {pref['train']}, val {pref['val']}, test {pref['test']}; "
        f"prompts: train {prompts['train']}, test {prompts['test']} (seed {manifest['seed']}).\n",
        _table(["source", "records loaded", "licence"], rows) + "\n",
    ]


def _synth_section(run: Path) -> list[str]:
    report = _load(run / "synth" / "report.json")
    if report is None:
        return ["## Synthesis\n", "_skipped or not run_\n"]
    out = ["## Synthesis (LLM-extended data)\n"]
    r = report.get("run") or {}
    if r:
        out.append(
            _table(
                ["accepted", "generations", "acceptance rate", "records/min", "rejected by reason"],
                [
                    [
                        r.get("accepted"),
                        r.get("generations_this_run"),
                        r.get("acceptance_rate_this_run"),
                        r.get("records_per_minute"),
                        ", ".join(f"{k}: {v}" for k, v in r.get("rejected_by_reason", {}).items()),
                    ]
                ],
            )  # fmt: skip
            + "\n"
        )
    div = report.get("diversity")
    if div:
        keys = [
            k
            for k in ("n_synthetic", "vendi_synthetic", "vendi_seed_matched", "vendi_ratio_matched")
            if k in div
        ]
        out.append(_table(["diversity", "value"], [[k, div[k]] for k in keys]) + "\n")
        out.append("The paper's synthetic data reached 72.79% of its seed's Vendi score.\n")
    return out


def _reward_section(run: Path) -> list[str]:
    root = run / "reward"
    test = _load(root / "eval_test.json")
    teacher = _load(root / "teacher" / "metrics.json")
    student = _load(root / "student" / "metrics.json")
    scorer = _load(root / "onnx" / "scorer.json")
    if test is None and teacher is None:
        return ["## Reward model\n", "_not trained yet_\n"]
    out = ["## Reward model (teacher -> student -> ONNX int8)\n"]
    pairwise = (test or {}).get("pairwise", {})
    rows = [["test pairwise accuracy (int8 ONNX student)", pairwise.get("accuracy")]]
    for src, m in (pairwise.get("by_source") or {}).items():
        rows.append([f"  {src}", m.get("accuracy") if isinstance(m, dict) else m])
    for sub, m in (pairwise.get("by_subset") or {}).items():
        if ":" in sub:  # e.g. bbq:ambig / bbq:disambig; plain sources are listed above
            rows.append([f"  {sub}", m.get("accuracy") if isinstance(m, dict) else m])
    if teacher:
        rows.append(["teacher best val", json.dumps((teacher.get("best") or {}).get("select"))])
    if student:
        rows.append(["student vs teacher (val)", json.dumps(student.get("val_vs_teacher"))])
    if scorer:
        rows.append(["export parity", json.dumps(scorer.get("parity"))])
    out.append(_table(["metric", "value"], rows) + "\n")
    return out


def _grpo_section(run: Path) -> list[str]:
    root = run / "grpo"
    metrics = _rows(root / "metrics.jsonl")
    if not metrics:
        return ["## GRPO\n", "_not run yet_\n"]
    evals = _rows(root / "eval.jsonl")
    first, last = metrics[0], metrics[-1]
    keys = [k for k in ("reward", "reward_std", "kl", "entropy", "completion_length", "frac_reward_zero_std",
                        "step_time") if k in last]  # fmt: skip
    out = [
        "## GRPO training\n",
        _table(["metric", "first step", "last step"], [[k, first.get(k), last.get(k)] for k in keys]),
    ]
    if evals:
        out.append(
            "\nHeld-out reward (greedy): "
            + ", ".join(f"step {e['step']}: {_fmt(e['reward_mean'])}" for e in evals)
        )
    plots = sorted((root / "plots").glob("*.png")) if (root / "plots").is_dir() else []
    out += [f"\n![{p.stem}]({p.relative_to(run)})" for p in plots]
    samples = _rows(root / "samples.jsonl")
    if samples:
        step = samples[-1]["step"]
        out.append(f"\nSample completions at step {step}:\n")
        for s in [s for s in samples if s["step"] == step][:3]:
            out.append(
                f"- **{s['prompt'][:120]}** -> {s['completion'][:200]!r} (reward {_fmt(s.get('reward'))})"
            )
    return out + [""]


def _eval_section(run: Path) -> tuple[list[str], dict[str, Any] | None]:
    from biasgrpo.evaluate import report as er

    base, trained = _load(run / "eval" / "base.json"), _load(run / "eval" / "trained.json")
    if base is None or trained is None:
        return ["## Evaluation\n", "_not run yet_\n"], None
    comparison = er.compare_results(base, trained)
    write_json(run / "eval" / "comparison.json", comparison)
    out = [
        "## Base vs GRPO (paper-style table, 95% bootstrap intervals)\n",
        er.comparison_markdown(base, trained, comparison),
    ]
    targets = er.check_targets(comparison)
    out += [
        "\n### Targets\n",
        _table(["target", "observed", "met"], [[t["target"], t["observed"], t["met"]] for t in targets]),
    ]
    plots = run / "eval" / "plots"
    dist = er.plot_score_distributions({"base": base, "trained": trained}, plots / "bold_score_distributions.png",
                                       threshold=base.get("config", {}).get("bold_threshold"))  # fmt: skip
    bars = er.plot_benchmarks({"base": base, "trained": trained}, plots / "benchmarks.png")
    out += [f"\n![{p.stem}]({p.relative_to(run)})" for p in (dist, bars) if p is not None]
    return out + [""], comparison


def write_report(run: str | Path) -> Path:
    """Write ``<run>/report.md`` from the stage outputs; returns its path."""
    run = Path(run)
    cfg = _load(run / "pipeline_config.json") or {}
    timings = _load(run / "timings.json") or {}
    parts = [f"# biasgrpo run: {run.name}\n", f"Preset `{cfg.get('preset', '?')}`, policy `{cfg.get('policy', '?')}`, "
             f"seed {cfg.get('seed', '?')}. Higher bias reward = less biased.\n"]  # fmt: skip
    eval_part, _ = _eval_section(run)
    parts += eval_part
    parts += _grpo_section(run)
    parts += _reward_section(run)
    parts += _synth_section(run)
    parts += _data_section(run)
    if timings:
        parts += ["## Stage times (seconds, from the run that did the work)\n",
                  _table(["stage", "seconds"], [[k, v] for k, v in timings.items()]) + "\n"]  # fmt: skip
    return atomic_write_text(run / "report.md", "\n".join(parts) + "\n")
