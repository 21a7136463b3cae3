"""``biasgrpo reward ...``: train, distill, export, score, eval, build-default.

Thin typer wrappers over the library functions; torch and transformers are imported inside the command
bodies so ``biasgrpo --help`` stays instant (``score`` and ``eval`` never import torch at all).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="Bias reward models: train a teacher, distill a student, export to ONNX, score.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Training records (JSONL), e.g. data/build/train.jsonl."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (HF layout + metrics.json + train_config.json)."
    ),
    val: Path | None = typer.Option(None, "--val", help="Validation records (JSONL), checked each epoch."),
    base_model: str = typer.Option(
        "minilm", "--base-model", help="Encoder: alias (minilm), local folder or Hub id (roberta-base)."
    ),
    objective: str = typer.Option("pairwise", "--objective", help="regression | pairwise | mixed."),
    epochs: int = typer.Option(1, "--epochs"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(5e-5, "--lr"),
    max_length: int = typer.Option(128, "--max-length"),
    margin: float = typer.Option(0.0, "--margin", help="Bradley-Terry margin added to every pair."),
    center_coef: float = typer.Option(
        0.0, "--center-coef", help="Reward-centering coefficient (TRL suggests 0.01)."
    ),
    regression_weight: float = typer.Option(
        1.0, "--regression-weight", help="Weight of the MSE term (mixed)."
    ),
    max_train: int | None = typer.Option(
        None, "--max-train", help="Balanced subsample of the training records."
    ),
    max_val: int | None = typer.Option(2000, "--max-val"),
    seed: int = typer.Option(0, "--seed"),
    tiny: bool = typer.Option(False, "--tiny", help="Start from the tiny preset (CPU, seconds)."),
) -> None:
    """Fine-tune an encoder as a bias reward model (higher score = less biased)."""
    from biasgrpo.reward.train import TrainConfig, train_teacher

    fields = dict(
        base_model=base_model, objective=objective, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
        margin=margin, center_coef=center_coef, regression_weight=regression_weight, max_train=max_train,
        max_val=max_val, seed=seed,
    )  # fmt: skip
    try:
        config = (
            TrainConfig.tiny(base_model=base_model, objective=objective, seed=seed)
            if tiny
            else TrainConfig(**fields)
        )
        metrics = train_teacher(config, data, val, out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    best = metrics["best"] or {}
    typer.echo(f"teacher saved to {out}; best {best.get('select')} at epoch {best.get('epoch')}")


@app.command()
def distill(
    teacher: Path = typer.Option(..., "--teacher", help="Trained teacher folder."),
    data: Path = typer.Option(..., "--data", help="Labelled records (JSONL) whose texts are distilled."),
    out: Path = typer.Option(..., "--out", help="Student output folder."),
    val: Path | None = typer.Option(None, "--val", help="Validation records (JSONL)."),
    unlabeled: Path | None = typer.Option(
        None, "--unlabeled", help="Extra unlabelled texts: prompt records (JSONL)."
    ),
    student: str = typer.Option("truncated", "--student", help="truncated | embedding_head."),
    num_layers: int = typer.Option(3, "--num-layers", help="Layers kept by a truncated student."),
    encoder: str = typer.Option("minilm", "--encoder", help="Frozen encoder of an embedding_head student."),
    head: str = typer.Option("mlp", "--head", help="linear | mlp (embedding_head)."),
    objective: str = typer.Option("both", "--objective", help="mse | margin_mse | both."),
    epochs: int = typer.Option(2, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    max_length: int = typer.Option(128, "--max-length"),
    max_records: int | None = typer.Option(None, "--max-records"),
    max_unlabeled: int | None = typer.Option(2000, "--max-unlabeled"),
    max_val: int | None = typer.Option(1000, "--max-val"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a compact student to reproduce a teacher's scores."""
    from biasgrpo.reward.distill import DistillConfig
    from biasgrpo.reward.distill import distill_teacher as run_distill

    try:
        config = DistillConfig(
            student=student, num_layers=num_layers, encoder=encoder, head=head, objective=objective, epochs=epochs,
            batch_size=batch_size, lr=lr, max_length=max_length, max_records=max_records,
            max_unlabeled=max_unlabeled, max_val=max_val, seed=seed,
        )  # fmt: skip
        metrics = run_distill(teacher, data, out, config, val_data=val, unlabeled_data=unlabeled)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"student saved to {out}; vs teacher: {json.dumps(metrics.get('val_vs_teacher'))}")


@app.command()
def export(
    model: Path = typer.Option(..., "--model", help="Trained teacher or student folder."),
    out: Path = typer.Option(..., "--out", help="Scorer folder to write (model.onnx, model.int8.onnx, ...)."),
    val: Path | None = typer.Option(None, "--val", help="Records whose texts drive the parity check."),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Default: the model's training max length."
    ),
    quantize: bool = typer.Option(True, "--quantize/--no-quantize", help="Also write the int8 graph."),
    normalize: str = typer.Option("none", "--normalize", help="none | sigmoid | standardize."),
    check_parity: bool = typer.Option(True, "--check-parity/--no-check-parity"),
    max_val: int = typer.Option(256, "--max-val", help="Validation texts used for parity."),
) -> None:
    """Export to ONNX (fp32 + int8) with tokenizer.json, scorer.json and a model card; checks parity."""
    from biasgrpo.reward.data import balanced_subsample, read_records
    from biasgrpo.reward.distill import distillation_rows
    from biasgrpo.reward.export import ExportConfig, ParityError, export_onnx

    try:
        texts = prompts = None
        if val is not None:
            texts, prompts, _ = distillation_rows(balanced_subsample(read_records(val), max_val // 2, 0))
        config = ExportConfig(
            max_length=max_length, quantize=quantize, normalize=normalize, check_parity=check_parity
        )
        cfg = export_onnx(model, out, config, validation_texts=texts, validation_prompts=prompts)
    except (ValueError, FileNotFoundError, ParityError) as exc:
        _fail(str(exc))
    typer.echo(f"exported to {out}; parity {json.dumps(cfg['parity'])}")


@app.command()
def score(
    text: list[str] | None = typer.Argument(None, help="Text(s) to score, for a quick look."),
    model: Path | None = typer.Option(
        None, "--model", help="Scorer folder (default: the built default model)."
    ),
    input: Path | None = typer.Option(
        None, "--input", help="JSONL with 'text' and optional 'prompt' per row."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Where to write the rows with a 'score' field."
    ),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt for the quick-look texts."),
    precision: str = typer.Option("auto", "--precision", help="auto | int8 | fp32."),
    provider: str = typer.Option("auto", "--provider", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(32, "--batch-size"),
) -> None:
    """Score texts with an exported model: JSONL in -> JSONL out, or texts on the command line."""
    from biasgrpo.data_synth.schema import atomic_write_text
    from biasgrpo.reward.scorer import ScorerLoadError, load_scorer

    if (input is None) == (not text):
        _fail("give either texts as arguments or --input FILE.jsonl (with --output FILE.jsonl)")
    if input is not None and output is None:
        _fail("--input needs --output")
    try:
        scorer = load_scorer(model, precision=precision, provider=provider, batch_size=batch_size)
    except (FileNotFoundError, ScorerLoadError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    if input is None:
        scores = scorer.score(list(text), [prompt] * len(text) if prompt else None)
        for t, s in zip(text, scores, strict=True):
            typer.echo(f"{s:.4f}\t{t}")
        return
    if not input.is_file():
        _fail(f"{input}: no such file")
    rows, texts, prompts = [], [], []
    with open(input, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(f"{input}:{lineno}: invalid JSON ({exc.msg})")
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                _fail(f"{input}:{lineno}: each row needs a string field 'text'")
            if row.get("prompt") is not None and not isinstance(row["prompt"], str):
                _fail(f"{input}:{lineno}: field 'prompt' must be a string")
            rows.append(row)
            texts.append(row["text"])
            prompts.append(row.get("prompt"))
    if not rows:
        _fail(f"{input} holds no rows")
    info = scorer.score_with_info(texts, prompts)
    for row, s in zip(rows, info.scores, strict=True):
        row["score"] = float(s)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    typer.echo(
        f"scored {len(rows)} rows with {scorer.precision} on {scorer.provider} -> {output}"
        f" ({int(info.truncated.sum())} truncated to {scorer.max_length} tokens)"
    )


@app.command("eval")
def eval_command(
    model: Path = typer.Option(..., "--model", help="Scorer folder (ONNX) or a trained torch model folder."),
    data: Path = typer.Option(..., "--data", help="Preference and/or scalar records (JSONL)."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON report here."),
    precision: str = typer.Option("auto", "--precision", help="auto | int8 | fp32 (ONNX folders)."),
) -> None:
    """Pairwise accuracy (overall, per domain/source), Spearman/MSE on scalar labels, calibration."""
    from biasgrpo.data_synth.schema import load_records, write_json
    from biasgrpo.reward.metrics import evaluate_records, format_report
    from biasgrpo.reward.scorer import SCORER_CONFIG, Scorer

    if not data.is_file():
        _fail(f"{data}: no such file")
    if (model / SCORER_CONFIG).is_file():
        fn = Scorer.load(model, precision=precision).score
    elif (model / "config.json").is_file() or (model / "reward_config.json").is_file():
        from biasgrpo.reward.model import TorchScorer

        fn = TorchScorer.from_dir(model)
    else:
        _fail(f"{model} is neither a scorer folder (scorer.json) nor a trained model folder (config.json)")
    report = evaluate_records(fn, load_records(data))
    if out is not None:
        write_json(out, report)
    typer.echo(format_report(report))


@app.command("build-default")
def build_default_command(
    out: Path | None = typer.Option(
        None, "--out", help="Run folder (default: the cache; load_scorer() finds it there)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="An existing `biasgrpo data build` folder to reuse."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Redo stages whose output exists."),
) -> None:
    """data build -> teacher -> distill -> export, into the cache (about 20 minutes on 2 CPU cores)."""
    from biasgrpo.reward.default import build_default

    try:
        result = build_default(out, data_dir=data, rebuild=rebuild)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result["timings"], indent=2))
    typer.echo(f"default reward model ready at {result['onnx']}")


if __name__ == "__main__":  # pragma: no cover
    app()
    sys.exit(0)
