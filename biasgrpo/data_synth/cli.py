"""``biasgrpo data ...``: build the dataset and validate record files (thin wrappers over the library)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(
    help="Build bias datasets from benchmarks and Hub data; validate record files.", no_args_is_help=True
)


@data_app.command("build")
def build_command(
    out: Path = typer.Option(
        ..., "--out", help="Output folder (train/val/test.jsonl, prompts_*.jsonl, manifest.json)."
    ),
    source: list[str] | None = typer.Option(
        None,
        "--source",
        help="Offline source to include (repeatable). Default: all of crows_pairs, stereoset, "
        "bbq, bold, holisticbias.",
    ),
    extra: list[str] | None = typer.Option(
        None,
        "--extra",
        help="Extra preference data (repeatable): a Hub id such as ahmedallam/BiasDPO or "
        "SaketR1/bias-grpo-data, or a local JSONL/CSV/parquet file or folder.",
    ),
    seed: int = typer.Option(13, help="Seed of the split."),
    val_frac: float = typer.Option(0.1, help="Share of preference records in val."),
    test_frac: float = typer.Option(0.1, help="Share of preference records in test."),
    prompt_test_frac: float = typer.Option(0.1, help="Share of prompts held out for evaluation."),
    stereoset_split: str = typer.Option("dev", help="StereoSet split to load: dev, test or all."),
    max_per_source: int | None = typer.Option(None, help="Seeded subsample of each source (quick runs)."),
    skip_invalid: bool = typer.Option(False, help="Skip (and count) invalid rows in --extra tables."),
) -> None:
    """Load sources, deduplicate, split by benchmark item (stratified by domain), write files + manifest."""
    from biasgrpo.data_synth.build import BuildConfig, build_dataset, format_manifest_table
    from biasgrpo.data_synth.schema import RecordError

    try:
        config = BuildConfig(
            out=str(out),
            sources=list(source) if source else BuildConfig().sources,
            extra=list(extra or []),
            seed=seed,
            val_frac=val_frac,
            test_frac=test_frac,
            prompt_test_frac=prompt_test_frac,
            stereoset_split=stereoset_split,
            max_per_source=max_per_source,
            skip_invalid=skip_invalid,
        )
        manifest = build_dataset(config)
    except (ValueError, FileNotFoundError, RecordError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_manifest_table(manifest))
    typer.echo(f"\nwrote {out} in {manifest['seconds']}s")


@data_app.command("validate")
def validate_command(
    file: Path = typer.Argument(..., help="A JSONL file of records."),
    kind: str | None = typer.Option(
        None, help="Expected kind: preference, scalar or prompt (default: detect)."
    ),
    skip_invalid: bool = typer.Option(False, help="Report every bad row instead of stopping at the first."),
) -> None:
    """Validate a JSONL record file: exit 0 when valid, 2 with ``file:line: message (field)`` otherwise."""
    from biasgrpo.data_synth.schema import RECORD_TYPES, RecordError, read_jsonl

    if kind is not None and kind not in RECORD_TYPES:
        typer.echo(f"error: --kind must be one of {sorted(RECORD_TYPES)}, got {kind!r}", err=True)
        raise typer.Exit(2)
    try:
        records, report = read_jsonl(file, kind, skip_invalid=skip_invalid)  # type: ignore[arg-type]
    except (RecordError, FileNotFoundError) as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    if report.n_skipped:
        for err in report.errors:
            typer.echo(f"invalid: {err}", err=True)
        typer.echo(f"{file}: {report.n_read} valid rows, {report.n_skipped} invalid rows", err=True)
        raise typer.Exit(2)
    kinds = sorted({r.kind for r in records}) or ["(empty)"]
    typer.echo(f"{file}: {report.n_read} valid {'/'.join(kinds)} records")
