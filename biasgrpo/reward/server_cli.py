"""``biasgrpo serve``: the OpenRLHF-compatible reward server (a thin wrapper over :mod:`biasgrpo.reward.server`)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def serve_command(
    model: Path = typer.Option(..., "--model", help="Exported scorer folder (model.onnx, scorer.json, ...)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes it to the network."
    ),
    port: int = typer.Option(5000, "--port", help="TCP port (0 = any free port)."),
    micro_batching: bool = typer.Option(
        True, "--micro-batching/--no-micro-batching", help="Gather concurrent requests into one model call."
    ),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Most rows scored in one model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for more requests."),
    max_queue: int = typer.Option(4096, "--max-queue", help="Rows queued before requests get 503."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Larger request bodies get 413."),
    max_items: int = typer.Option(256, "--max-items", help="Most queries in one request (413 beyond)."),
    token_env: str = typer.Option(
        "BIASGRPO_SERVE_TOKEN",
        "--token-env",
        help="Env var holding the bearer token; auth is off when unset.",
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto | int8 | fp32 (fp32: batch-invariant scores)."
    ),
    threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0 = all cores)."),
    strip_token: list[str] = typer.Option(
        None, "--strip-token", help="Chat-template token to strip (repeatable; replaces the default list)."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (uvicorn access log)."),
) -> None:
    """Serve the bias reward over HTTP for OpenRLHF (--remote_rm_url http://HOST:PORT/get_reward)."""
    from biasgrpo.reward.query import DEFAULT_STRIP_TOKENS
    from biasgrpo.reward.server import ServerConfig, serve

    try:
        config = ServerConfig(
            model_dir=str(model),
            host=host,
            port=port,
            micro_batching=micro_batching,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_body_bytes=max_body_bytes,
            max_items=max_items,
            token_env=token_env,
            precision=precision,
            num_threads=threads or None,
            strip_tokens=tuple(strip_token) if strip_token else DEFAULT_STRIP_TOKENS,
            access_log=access_log,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not (model / "scorer.json").is_file():
        raise typer.BadParameter(
            f"{model / 'scorer.json'} is missing: --model must be an exported scorer folder"
        )
    serve(config)
