"""``biasgrpo synth``: extend a seed set of bias preference records with an LLM (thin wrapper over the library)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def _load_scorer(spec: str, arg: str | None = None):
    """``MODULE:ATTR`` is the scorer, or with ``arg`` a factory called as ``ATTR(arg)`` (e.g. a model folder).

    Imported by name, so data_synth never imports the reward package itself.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"{spec!r}: expected MODULE:FUNCTION", param_hint="--label-scorer")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"{spec!r}: {exc}", param_hint="--label-scorer") from None
    if not callable(fn):
        raise typer.BadParameter(f"{spec!r} is not callable", param_hint="--label-scorer")
    return fn(arg) if arg is not None else fn


def synth_command(
    n: int = typer.Option(..., "--n", min=1, help="Number of accepted records to reach."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (synthetic.jsonl, rejected.jsonl, report.json)."
    ),
    generator: list[str] = typer.Option(
        None,
        "--generator",
        "-g",
        help="Generator spec, repeat for a rotation: smollm2 | hf:ID_OR_PATH | openai:MODEL@BASE_URL, "
        "with ,weight=2 ,key_env=VAR ,concurrency=8 ,timeout=60 options. Default: smollm2.",
    ),
    seed_data: Path = typer.Option(
        None,
        "--seed-data",
        help="A `biasgrpo data build` folder or a JSONL of preference records. "
        "Default: the newest data/*/train.jsonl here.",
    ),  # fmt: skip
    eval_data: list[Path] = typer.Option(
        None, "--eval-data", help="More JSONL files/folders the output must not leak into."
    ),
    resume: bool = typer.Option(
        True, "--resume/--overwrite", help="Continue a run in --out (default) or start again."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Generations per batch."),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, help="Tries per task before it is given up."
    ),
    max_generations: int = typer.Option(
        None,
        "--max-generations",
        min=1,
        help="Generation budget for this run; spending it ends the run with exit 0 (rerun to continue). "
        "The default budget, 30 x N, ends it with exit 1.",
    ),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed", help="Run seed: fixes the task plan and sampling seeds."),
    template: list[str] = typer.Option(
        None, "--template", help="Prompt template id(s): json-v1, text-v1. Default json-v1."
    ),
    domain: list[str] = typer.Option(
        None, "--domain", help="Restrict to these domains (default: the 11 core ones)."
    ),
    context: list[str] = typer.Option(
        None, "--context", help="Restrict to these contexts (default: 12 built in)."
    ),
    near_dup_threshold: float = typer.Option(
        0.9,
        "--near-dup-threshold",
        min=-1.0,
        max=1.0,
        help="Cosine above which a prompt is a near duplicate.",
    ),
    no_near_dup: bool = typer.Option(False, "--no-near-dup", help="Skip embedding near-duplicate checks."),
    label_scorer: str = typer.Option(
        None,
        "--label-scorer",
        help="MODULE:FUNCTION with the TRL reward signature (fn(prompts=, completions=) -> floats); "
        "drops pairs it does not rank favorable > unfavorable.",
    ),
    label_scorer_arg: str = typer.Option(
        None,
        "--label-scorer-arg",
        help="Build the scorer as FUNCTION(ARG), e.g. --label-scorer biasgrpo.reward.adapters:trl_reward "
        "--label-scorer-arg runs/demo/reward/onnx.",
    ),
    label_margin: float = typer.Option(
        0.0, "--label-margin", help="Favorable must outscore unfavorable by more than this."
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="Env var holding the HTTP API key (never pass keys as flags)."
    ),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="HTTP request timeout, seconds."),
    max_retries: int = typer.Option(
        4, "--max-retries", min=0, help="HTTP retries on 429/5xx/connection errors."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="HTTP requests in flight per endpoint."),
    device: str = typer.Option(
        None, "--device", help="Device for the local model and the embedder (cpu, cuda)."
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="torch CPU threads. On a shared, busy CPU 1 can be many times faster than 2.",
    ),
    report: bool = typer.Option(
        True, "--report/--no-report", help="Compute the diversity report at the end."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Synthesize bias preference records with an LLM (local model, OpenAI-compatible API, or a rotation)."""
    from biasgrpo.data_synth.diversity import SentenceEmbedder, diversity_report, format_report, write_report
    from biasgrpo.data_synth.domains import CORE_DOMAINS
    from biasgrpo.data_synth.filters import FilterConfig, SynthFilter
    from biasgrpo.data_synth.llm import GenerationError, build_generator
    from biasgrpo.data_synth.prompts import CONTEXTS
    from biasgrpo.data_synth.synthesize import (
        SynthConfig,
        check_resumable,
        discover_seed_data,
        load_seed_data,
        synthesize,
    )

    if threads:
        import torch

        torch.set_num_threads(threads)
    if seed_data is None:
        seed_data = discover_seed_data(Path.cwd())
        if seed_data is None:
            raise typer.BadParameter(
                "no seed data found under ./data; pass a JSONL of preference records or a folder from "
                "`biasgrpo data build --out data/NAME`",
                param_hint="--seed-data",
            )
        typer.echo(f"seed data: {seed_data}", err=True)
    try:
        config = SynthConfig(
            n=n,
            seed=seed,
            batch_size=batch_size,
            max_attempts=max_attempts,
            templates=tuple(template or ("json-v1",)),
            domains=tuple(domain or CORE_DOMAINS),
            contexts=tuple(context or CONTEXTS),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            max_generations=max_generations,
        )
        filter_config = FilterConfig(
            near_dup_threshold=None if no_near_dup else near_dup_threshold, label_margin=label_margin
        )
        seeds = load_seed_data(seed_data, eval_data or ())
        if resume:
            check_resumable(out, config, seeds)  # before loading any model
        scorer = _load_scorer(label_scorer, label_scorer_arg) if label_scorer else None
        specs = list(generator or ["smollm2"])
        gen = build_generator(
            specs,
            batch_size=batch_size,
            device=device,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    embedder = SentenceEmbedder(device=device) if (report or not no_near_dup) else None
    synth_filter = SynthFilter(
        filter_config,
        embed=embedder if not no_near_dup else None,
        label_scorer=scorer,
    )
    synth_filter.add_reference("seed", seeds.seeds)
    if seeds.evaluation:
        synth_filter.add_reference("eval", seeds.evaluation)
    try:
        result = synthesize(config, gen, seeds, out, synth_filter, resume=resume, progress=progress)
    except GenerationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        close = getattr(gen, "close", None)
        if close:
            close()

    full = {"run": result.summary()}
    if report and embedder is not None:
        full["diversity"] = diversity_report(result.records, seeds.seeds, embedder, seed=seed)
    write_report(out / "report.json", full)
    typer.echo(format_report(full))
    typer.echo(
        f"wrote {len(result.records)} records to {out / 'synthetic.jsonl'}; report: {out / 'report.json'}"
    )
    if not result.complete:
        typer.echo(
            f"incomplete: {len(result.records)}/{n} accepted within the generation budget; rerun to continue",
            err=True,
        )
        if max_generations is None:  # the default budget (30 x N) ran out: acceptance is pathologically low
            raise typer.Exit(1)
