"""Reports on evaluation results: paired comparison, markdown tables and PNG plots (matplotlib, Agg).

from biasgrpo.evaluate.report import compare_results, compare_table, results_table, plot_score_distributions
cmp = compare_results(load_eval("base.json"), load_eval("trained.json"))
print(compare_table(cmp))                      # base | trained | delta [95% CI] | CI excludes 0
plot_score_distributions({"base": base, "GRPO": trained}, "plots/bold_scores.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biasgrpo.evaluate.metrics import metric_fn
from biasgrpo.evaluate.stats import paired_bootstrap
from biasgrpo.markdown import table

# (benchmark, metric) -> (label, ideal). Ideal: "up" (higher is better), "down", or a number to approach.
METRIC_INFO: dict[tuple[str, str], tuple[str, str | float]] = {
    ("bbq", "acc_amb"): ("BBQ accuracy, ambiguous (%)", "up"),
    ("bbq", "acc_dis"): ("BBQ accuracy, disambiguated (%)", "up"),
    ("bbq", "s_amb"): ("BBQ bias score s_AMB", 0.0),
    ("bbq", "s_dis"): ("BBQ bias score s_DIS", 0.0),
    ("stereoset", "ss"): ("StereoSet ss", 50.0),
    ("stereoset", "lms"): ("StereoSet lms", "up"),
    ("stereoset", "icat"): ("StereoSet icat", "up"),
    ("stereoset", "intrasentence.ss"): ("StereoSet intrasentence ss", 50.0),
    ("stereoset", "intrasentence.lms"): ("StereoSet intrasentence lms", "up"),
    ("stereoset", "intrasentence.icat"): ("StereoSet intrasentence icat", "up"),
    ("stereoset", "intersentence.ss"): ("StereoSet intersentence ss", 50.0),
    ("stereoset", "intersentence.lms"): ("StereoSet intersentence lms", "up"),
    ("stereoset", "intersentence.icat"): ("StereoSet intersentence icat", "up"),
    ("crows", "pct_stereo"): ("CrowS-Pairs % stereotype preferred", 50.0),
    ("bold", "mean_score"): ("BOLD mean bias reward", "up"),
    ("bold", "pct_below"): ("BOLD % below threshold", "down"),
    ("ppl", "ppl"): ("Perplexity (BOLD Wikipedia)", "down"),
    ("ppl", "nll_per_token"): ("NLL per token (BOLD Wikipedia)", "down"),
}
HEADLINE = [
    ("bbq", "acc_amb"),
    ("bbq", "acc_dis"),
    ("bbq", "s_amb"),
    ("bbq", "s_dis"),
    ("stereoset", "ss"),
    ("stereoset", "lms"),
    ("stereoset", "icat"),
    ("crows", "pct_stereo"),
    ("bold", "mean_score"),
    ("bold", "pct_below"),
    ("ppl", "ppl"),
]


def _label(bench: str, metric: str) -> str:
    return METRIC_INFO.get((bench, metric), (f"{bench} {metric}", ""))[0]


def _ideal(bench: str, metric: str) -> str:
    ideal = METRIC_INFO.get((bench, metric), ("", ""))[1]
    if isinstance(ideal, str):
        return {"up": "higher", "down": "lower"}.get(ideal, "")
    return f"-> {ideal:g}"


def direction(bench: str, metric: str, base: float | None, trained: float | None) -> str:
    """ "better", "worse" or "same" for the trained value against the metric's ideal ("" when unknown)."""
    ideal = METRIC_INFO.get((bench, metric), ("", ""))[1]
    if base is None or trained is None or not (math.isfinite(base) and math.isfinite(trained)) or ideal == "":
        return ""
    if ideal == "up":
        gain = trained - base
    elif ideal == "down":
        gain = base - trained
    else:
        gain = abs(base - float(ideal)) - abs(trained - float(ideal))
    return "better" if gain > 0 else "worse" if gain < 0 else "same"


def fmt(value: Any) -> str:
    """A number for a table: 3 decimals below 10, 1 from 10 up (and for 0); ``n/a`` for None/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value)
    return f"{v:.1f}" if abs(v) >= 10 or v == 0 else f"{v:.3f}"


def fmt_ci(m: Mapping[str, Any], key: str = "value") -> str:
    """``value [low, high]``."""
    return f"{fmt(m.get(key))} [{fmt(m.get('ci_low'))}, {fmt(m.get('ci_high'))}]"


def _columns(items: Mapping[str, list[Any]]) -> dict[str, np.ndarray]:
    """JSON columns back to arrays (null -> NaN in numeric columns)."""
    out = {}
    for k, v in items.items():
        if any(isinstance(x, int | float) and not isinstance(x, bool) for x in v) and any(
            x is None for x in v
        ):
            v = [math.nan if x is None else x for x in v]
        out[k] = np.asarray(v)
    return out


def compare_results(
    base: Mapping[str, Any],
    trained: Mapping[str, Any],
    *,
    n_resamples: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Trained minus base on every metric both results have, with a paired 95% bootstrap interval.

    Items are matched by id (evaluate both policies with the same seed and sizes so they share items).
    Without per-item columns (``keep_items=False``) only the point deltas are given (intervals null).
    """
    cfg = base.get("config", {})
    n_resamples = n_resamples or int(cfg.get("n_resamples", 1000))
    seed = int(cfg.get("seed", 0)) if seed is None else seed
    alpha = float(cfg.get("alpha", 0.05))
    out: dict[str, Any] = {
        "base_model": base.get("model"),
        "trained_model": trained.get("model"),
        "benchmarks": {},
    }
    notes: list[str] = []
    for name, b in base.get("benchmarks", {}).items():
        t = trained.get("benchmarks", {}).get(name)
        if t is None:
            notes.append(f"{name}: only in the base result")
            continue
        if b.get("params") != t.get("params"):
            notes.append(
                f"{name}: parameters differ ({b.get('params')} vs {t.get('params')}); base's are used"
            )
        rows: dict[str, Any] = {}
        if "items" in b and "items" in t:
            paired = paired_bootstrap(
                _columns(b["items"]),
                _columns(t["items"]),
                metric_fn(name, b.get("params")),
                n_resamples=n_resamples,
                seed=seed,
                alpha=alpha,
            )
            if paired and next(iter(paired.values()))["n"] < max(b["n"], t["n"]):
                notes.append(
                    f"{name}: only {next(iter(paired.values()))['n']} items are shared by both results; the "
                    "delta is on those, base and trained values on all of each (use the same --seed and sizes)"
                )
            rows = paired
            for (
                k,
                row,
            ) in rows.items():  # paired values drive the delta; the displayed values are the full ones
                row["base_paired"], row["trained_paired"] = row["base"], row["trained"]
                row["base"] = b["metrics"].get(k, {}).get("value", row["base"])
                row["trained"] = t["metrics"].get(k, {}).get("value", row["trained"])
        else:
            notes.append(f"{name}: no per-item results, so no interval on the difference")
            for k, bm in b["metrics"].items():
                if k in t["metrics"]:
                    bv, tv = bm["value"], t["metrics"][k]["value"]
                    delta = None if bv is None or tv is None else tv - bv
                    rows[k] = {"base": bv, "trained": tv, "delta": delta, "ci_low": None, "ci_high": None}
                    rows[k].update(excludes_zero=None, n=None)
        for k, row in rows.items():
            row["base_ci"] = [b["metrics"].get(k, {}).get("ci_low"), b["metrics"].get(k, {}).get("ci_high")]
            row["trained_ci"] = [
                t["metrics"].get(k, {}).get("ci_low"),
                t["metrics"].get(k, {}).get("ci_high"),
            ]
            row["direction"] = direction(
                name, k, row.get("base_paired", row["base"]), row.get("trained_paired", row["trained"])
            )
        out["benchmarks"][name] = rows
    for name in trained.get("benchmarks", {}):
        if name not in base.get("benchmarks", {}):
            notes.append(f"{name}: only in the trained result")
    out["notes"] = notes
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    return table(header, rows) + "\n"


def _ordered(metrics: Mapping[str, Any], bench: str, headline_only: bool) -> list[str]:
    head = [m for b, m in HEADLINE if b == bench and m in metrics]
    return head if headline_only else head + [m for m in metrics if m not in head]


def results_table(result: Mapping[str, Any], *, headline_only: bool = False) -> str:
    """Markdown: one row per metric with its value, 95% interval, item count and ideal direction."""
    rows = []
    for bench, entry in result.get("benchmarks", {}).items():
        for m in _ordered(entry["metrics"], bench, headline_only):
            v = entry["metrics"][m]
            rows.append([_label(bench, m), fmt(v["value"]), f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]"])
            rows[-1] += [str(v["n"]), _ideal(bench, m)]
    text = _table(["Metric", "Value", "95% CI", "n", "Ideal"], rows)
    for bench, reason in result.get("skipped", {}).items():
        text += f"\n{bench}: {reason}\n"
    return text


def group_table(result: Mapping[str, Any], benchmark: str, metrics: list[str] | None = None) -> str:
    """Markdown: a benchmark's metrics per group (BBQ category, bias type, BOLD domain) with intervals."""
    entry = result["benchmarks"][benchmark]
    groups = entry.get("by_group", {})
    if not groups:
        return ""
    metrics = metrics or _ordered(entry["metrics"], benchmark, True) or list(entry["metrics"])
    rows = []
    sizes = entry.get("group_sizes", {})
    for g, ms in groups.items():
        n = sizes.get(g, max((m["n"] for m in ms.values()), default=0))
        rows.append([g, str(n)] + [fmt_ci(ms[m]) if m in ms else "n/a" for m in metrics])
    return _table([entry.get("group_key") or "group", "n"] + [_label(benchmark, m) for m in metrics], rows)


def timing_table(result: Mapping[str, Any]) -> str:
    """Markdown: items and seconds per benchmark (data loading + model work; the bootstrap is not included)."""
    rows = []
    for bench, entry in result.get("benchmarks", {}).items():
        per = entry["seconds"] / entry["n"] if entry["n"] else float("nan")
        rows.append([bench, str(entry["n"]), f"{entry['seconds']:.1f}", f"{per:.3f}"])
    rows.append(["total", "", f"{result.get('seconds_total', float('nan')):.1f}", ""])
    return _table(["Benchmark", "n", "seconds", "s/item"], rows)


def compare_table(comparison: Mapping[str, Any], *, headline_only: bool = False) -> str:
    """Markdown: base and trained (95% CI), the paired difference with its interval, and whether it excludes 0."""
    rows = []
    for bench, metrics in comparison.get("benchmarks", {}).items():
        for m in _ordered(metrics, bench, headline_only):
            r = metrics[m]
            ex = {True: "yes", False: "no", None: "n/a"}[r.get("excludes_zero")]
            rows.append(
                [
                    _label(bench, m),
                    f"{fmt(r['base'])} [{fmt(r['base_ci'][0])}, {fmt(r['base_ci'][1])}]",
                    f"{fmt(r['trained'])} [{fmt(r['trained_ci'][0])}, {fmt(r['trained_ci'][1])}]",
                    f"{fmt(r['delta'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                    ex,
                    r.get("direction", ""),
                    _ideal(bench, m),
                    str(r.get("n") or ""),
                ]
            )
    header = ["Metric", "Base [95% CI]", "Trained [95% CI]", "Delta [95% CI]", "CI excludes 0", "Change"]
    text = _table(header + ["Ideal", "n"], rows)
    for note in comparison.get("notes", []):
        text += f"\n- {note}"
    return text + ("\n" if comparison.get("notes") else "")


# ------------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save a figure atomically (temporary file in the same folder, then rename) and close it."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _pyplot().close(fig)
    return path


def plot_score_distributions(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, threshold: float | None = None
) -> Path | None:
    """Overlaid histograms of the BOLD continuation scores of each result (``{label: result}``)."""
    series = {}
    for label, res in results.items():
        items = res.get("benchmarks", {}).get("bold", {}).get("items")
        if items:
            s = np.asarray([math.nan if x is None else x for x in items["score"]], dtype=float)
            series[label] = s[np.isfinite(s)]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    allv = np.concatenate(list(series.values()))
    bins = np.linspace(allv.min(), allv.max() if allv.max() > allv.min() else allv.min() + 1, 30)
    for label, s in series.items():
        ax.hist(s, bins=bins, alpha=0.5, label=f"{label} (mean {s.mean():.3f})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("bias reward of continuation (higher = less biased)")
    ax.set_ylabel("continuations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_benchmarks(results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Grouped bars with 95% intervals of the percentage metrics (BBQ, StereoSet, CrowS) of each result."""
    keys = [(b, m) for b, m in HEADLINE if b in ("bbq", "stereoset", "crows") and not m.startswith("s_")]
    keys = [
        k
        for k in keys
        if any(k[1] in r.get("benchmarks", {}).get(k[0], {}).get("metrics", {}) for r in results.values())
    ]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(keys))
    for j, (label, res) in enumerate(results.items()):
        vals, lo, hi = [], [], []
        for b, m in keys:
            v = res.get("benchmarks", {}).get(b, {}).get("metrics", {}).get(m, {})
            val = v.get("value")
            val = math.nan if val is None else val
            vals.append(val)
            lo.append(max(val - (v.get("ci_low") if v.get("ci_low") is not None else val), 0))
            hi.append(max((v.get("ci_high") if v.get("ci_high") is not None else val) - val, 0))
        ax.bar(x + j * width, vals, width, yerr=[lo, hi], capsize=2, label=label)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x + width * (len(results) - 1) / 2)
    ax.set_xticklabels([f"{b}\n{m}" for b, m in keys], fontsize=7)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_markdown(path: str | os.PathLike[str], text: str) -> Path:
    """Write a markdown report atomically."""
    from biasgrpo.data_synth.schema import atomic_write_text

    return atomic_write_text(path, text)


def comparison_markdown(
    base: Mapping[str, Any], trained: Mapping[str, Any], comparison: Mapping[str, Any]
) -> str:
    """A full markdown section: the comparison table, then each result's BBQ per-category table."""
    parts = [
        f"## Base ({comparison.get('base_model')}) vs trained ({comparison.get('trained_model')})\n",
        compare_table(comparison),
    ]
    for label, res in (("Base", base), ("Trained", trained)):
        if "bbq" in res.get("benchmarks", {}):
            parts += [f"\n### {label}: BBQ per category\n", group_table(res, "bbq")]
    return "\n".join(parts)


def kv_table(mapping: Mapping[str, Any], header: tuple[str, str] = ("Metric", "Value")) -> str:
    """Markdown two-column table of a flat mapping (e.g. reward-model metrics or a diversity report)."""
    rows = [
        [str(k), fmt(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)]
        for k, v in mapping.items()
    ]
    return _table(list(header), rows)


def check_targets(comparison: Mapping[str, Any], *, max_ppl_rise: float = 0.10) -> list[dict[str, Any]]:
    """The demo's acceptance targets (issue 7) read off a comparison; each ``{target, observed, met}``.

    1. BOLD mean bias reward improves and its paired 95% interval excludes zero;
    2. BBQ ambiguous accuracy is not worse beyond its interval (no significant drop);
    3. perplexity rises by less than ``max_ppl_rise`` (relative).
    ``met`` is None when the comparison lacks the benchmark.
    """
    b = comparison.get("benchmarks", {})
    out = []
    row = b.get("bold", {}).get("mean_score")
    out.append(
        {
            "target": "BOLD mean bias reward improves (95% CI excludes 0)",
            "observed": None
            if row is None
            else f"delta {fmt(row['delta'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
            "met": None if row is None else bool(row["delta"] > 0 and row["excludes_zero"]),
        }
    )
    row = b.get("bbq", {}).get("acc_amb")
    out.append(
        {
            "target": "BBQ ambiguous accuracy not significantly worse",
            "observed": None
            if row is None
            else f"delta {fmt(row['delta'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
            "met": None if row is None else not (row["delta"] < 0 and row["excludes_zero"]),
        }
    )
    row = b.get("ppl", {}).get("ppl")
    rise = None if row is None or not row["base"] else row["trained"] / row["base"] - 1
    out.append(
        {
            "target": f"perplexity rise < {100 * max_ppl_rise:g}%",
            "observed": None
            if rise is None
            else f"{100 * rise:+.1f}% ({fmt(row['base'])} -> {fmt(row['trained'])})",
            "met": None if rise is None else bool(rise < max_ppl_rise),
        }
    )
    return out


def targets_table(comparison: Mapping[str, Any], *, max_ppl_rise: float = 0.10) -> str:
    """Markdown of :func:`check_targets`."""
    rows = [
        [t["target"], t["observed"] or "not evaluated", {True: "yes", False: "no", None: "n/a"}[t["met"]]]
        for t in check_targets(comparison, max_ppl_rise=max_ppl_rise)
    ]
    return _table(["Target", "Observed", "Met"], rows)
