"""``biasgrpo eval``: evaluate a policy on the bias benchmarks, and compare two evaluations.

    biasgrpo eval policy --model smollm2 --limit 100 --reward runs/demo/reward/onnx --out runs/eval/base.json
    biasgrpo eval compare runs/eval/base.json runs/eval/trained.json --out runs/eval/compare.md

Heavy libraries are imported inside the commands so ``biasgrpo --help`` stays instant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Evaluate policies on BBQ, StereoSet, CrowS-Pairs, BOLD generation and perplexity; compare two runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=2)


def _compare(base: Path, trained: Path, out: Path | None, plots: Path | None, resamples: int | None) -> None:
    from biasgrpo.evaluate.policy import load_eval
    from biasgrpo.evaluate.report import (
        compare_results,
        comparison_markdown,
        plot_benchmarks,
        plot_score_distributions,
        write_markdown,
    )

    try:
        b, t = load_eval(base), load_eval(trained)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    cmp = compare_results(b, t, n_resamples=resamples)
    text = comparison_markdown(b, t, cmp)
    typer.echo(text)
    if out is not None:
        write_markdown(out, text)
        typer.echo(f"wrote {out}")
    if plots is not None:
        labels = {"base": b, "trained": t}
        thr = b.get("benchmarks", {}).get("bold", {}).get("params", {}).get("threshold")
        for p in (
            plot_score_distributions(labels, plots / "bold_scores.png", threshold=thr),
            plot_benchmarks(labels, plots / "benchmarks.png"),
        ):
            if p is not None:
                typer.echo(f"wrote {p}")


@app.command("policy")
def policy_command(
    model: str = typer.Option("smollm2", "--model", "-m", help="Alias (smollm2), local folder or Hub id."),
    limit: int | None = typer.Option(None, "--limit", help="Items per benchmark (seeded subsample)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample, generation and bootstrap."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the result JSON here (and a .md beside it)."
    ),
    benchmarks: str = typer.Option(
        "bbq,stereoset,crows,bold,ppl", "--benchmarks", "-b", help="Comma-separated subset to run."
    ),
    reward: str | None = typer.Option(
        None, "--reward", help="Scorer folder (or 'default') for BOLD generation; without it BOLD is skipped."
    ),
    bold_prompts: Path | None = typer.Option(
        None, "--bold-prompts", help="Prompt-record JSONL (e.g. DATA/prompts_test.jsonl); default: all BOLD."
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", help="BOLD: report the % of continuations below this."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per forward pass."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="BOLD continuation length."),
    temperature: float = typer.Option(0.0, "--temperature", help="BOLD decoding (0 = greedy)."),
    device: str = typer.Option("cpu", "--device", help="torch device of the policy (cpu, cuda)."),
    threads: int | None = typer.Option(
        None, "--threads", help="torch CPU threads while evaluating (1 is faster on a busy machine)."
    ),
    compare: tuple[Path, Path] | None = typer.Option(
        None, "--compare", help="BASE.json TRAINED.json: compare two results instead of evaluating."
    ),
) -> None:
    """Evaluate a policy: BBQ, StereoSet, CrowS-Pairs, BOLD generation, perplexity, with 95% intervals."""
    if compare is not None and compare[0] is not None:
        _compare(compare[0], compare[1], None, None, None)
        return
    import time

    from biasgrpo.evaluate.config import EvalConfig
    from biasgrpo.evaluate.policy import evaluate_model, scorer_reward_fn, write_eval
    from biasgrpo.evaluate.report import results_table, timing_table, write_markdown

    try:
        config = EvalConfig(
            benchmarks=benchmarks,
            limit=limit,
            seed=seed,
            bold_prompts=str(bold_prompts) if bold_prompts else None,
            bold_threshold=threshold,
            batch_size=batch_size,
            n_resamples=resamples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            torch_threads=threads,
        )
    except ValueError as exc:
        _fail(str(exc).replace("EvalConfig.", "--").replace("bold_prompts", "bold-prompts"))
    reward_fn = None
    if "bold" in config.benchmarks:
        if reward is None:
            typer.echo("BOLD generation skipped: no --reward scorer folder given.", err=True)
        else:
            try:
                reward_fn = scorer_reward_fn(reward)
            except FileNotFoundError as exc:
                _fail(str(exc))
    t0 = time.perf_counter()
    try:
        result = evaluate_model(model, config, reward_fn, device=device)
    except FileNotFoundError as exc:
        _fail(f"--model {model!r}: {exc}")
    text = f"# Evaluation of {model}\n\n" + results_table(result) + "\n## Time\n\n" + timing_table(result)
    typer.echo(text)
    if out is not None:
        write_eval(result, out)
        write_markdown(out.with_suffix(".md"), text)
        typer.echo(f"wrote {out} and {out.with_suffix('.md')} ({time.perf_counter() - t0:.0f} s)")


@app.command("compare")
def compare_command(
    base: Path = typer.Argument(..., help="Result JSON of the base policy."),
    trained: Path = typer.Argument(..., help="Result JSON of the trained policy."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the markdown report here."),
    plots: Path | None = typer.Option(None, "--plots", help="Write PNG plots into this folder."),
    resamples: int | None = typer.Option(
        None, "--resamples", help="Bootstrap resamples (default: as evaluated)."
    ),
) -> None:
    """Base vs trained side by side: deltas with paired 95% bootstrap intervals and whether each excludes 0."""
    _compare(base, trained, out, plots, resamples)
