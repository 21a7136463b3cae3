"""HTTP reward server for OpenRLHF's remote reward model: ``POST /get_reward``, ``GET /health``.

Request ``{"query": [str, ...], "prompts": [str, ...], "labels": [...]}`` (``prompts``/``labels`` optional,
same length as ``query``); response ``{"rewards": [...], "scores": [...], "extra_logs": {...}}`` with one
value per query. Each query is split into prompt and response and cleaned of chat-template tokens by
:class:`biasgrpo.reward.query.QueryCleaner` before scoring.

**Dynamic micro-batching.** OpenRLHF sends one query per request. Requests go into a bounded queue; one
worker takes everything queued, then waits up to ``max_wait_ms`` for more, but only while other requests
are still being read and validated (so a lone client pays no delay), until ``max_batch_size`` rows, scores them in one model
call on a worker thread (the event loop keeps accepting requests), and answers each request with its
slice. If a batch fails, its requests are rescored one by one, so one bad request cannot fail the others.

**Errors** are JSON ``{"error": message}``: 401 missing/wrong bearer token (only when the environment
variable named by ``token_env`` is set), 400 malformed JSON, 413 body over ``max_body_bytes`` or more than
``max_items`` queries, 422 wrong types or mismatched lengths, 503 queue full or shutting down. A failing
request never stops the server; SIGTERM/SIGINT drain in-flight requests and exit cleanly.

Needs the ``serve`` extra (FastAPI + uvicorn): ``pip install 'biasgrpo[serve]'``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from biasgrpo.reward.query import DEFAULT_STRIP_TOKENS, QueryCleaner
from biasgrpo.reward.scorer import PRECISIONS, Scorer

logger = logging.getLogger(__name__)

TOKEN_ENV = "BIASGRPO_SERVE_TOKEN"


def _missing_extra(exc: ImportError) -> ImportError:
    return ImportError(f"{exc}. The reward server needs FastAPI and uvicorn: pip install 'biasgrpo[serve]'")


@dataclass
class ServerConfig:
    """Settings of ``biasgrpo serve`` (validated on construction)."""

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 5000
    micro_batching: bool = True
    max_batch_size: int = 64  # rows per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_queue: int = 4096  # rows waiting or being scored; beyond that requests get 503
    max_body_bytes: int = 1_000_000
    max_items: int = 256  # queries per request
    token_env: str = TOKEN_ENV  # bearer token is required when this env var is set and non-empty
    precision: str = "auto"
    num_threads: int | None = None
    strip_tokens: tuple[str, ...] = field(default=DEFAULT_STRIP_TOKENS)
    access_log: bool = False

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise ValueError("model_dir (--model) is required: an exported scorer folder")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if not self.token_env:
            raise ValueError("token_env must name an environment variable")
        self.strip_tokens = tuple(self.strip_tokens)
        QueryCleaner(strip_tokens=self.strip_tokens)  # validates the tokens

    @classmethod
    def tiny(cls, model_dir: str) -> ServerConfig:
        """Small limits for tests: port 0 (any free port), 2 ms wait, batches of 16."""
        return cls(model_dir=str(model_dir), port=0, max_batch_size=16, max_wait_ms=2.0, max_queue=256)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Job:
    prompts: list[str]
    texts: list[str]
    future: asyncio.Future[Any]


class MicroBatcher:
    """Gathers concurrent requests into one scorer call; see the module docstring."""

    def __init__(self, scorer: Scorer, config: ServerConfig) -> None:
        self.scorer = scorer
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="biasgrpo-score")
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.pending_rows = 0
        self.closing = False
        self.n_requests = 0
        self.n_batches = 0
        self.n_rows = 0
        self.arriving = 0  # requests being read/validated, not yet queued
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.config.micro_batching:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="biasgrpo-batcher")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, let queued work finish (up to ``timeout_s``), then stop the worker."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while self.pending_rows > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _score(self, prompts: list[str], texts: list[str]) -> Any:
        return self.scorer.score_with_info(texts, prompts=prompts)

    async def submit(self, prompts: list[str], texts: list[str]) -> Any:
        """Score one request's rows; returns a ScoreResult for exactly these rows."""
        if self.closing:
            raise ApiError(503, "server is shutting down")
        n = len(texts)
        if self.pending_rows + n > self.config.max_queue:
            raise ApiError(
                503, f"server busy: {self.pending_rows} rows queued (max_queue={self.config.max_queue})"
            )
        self.pending_rows += n
        self.n_requests += 1
        try:
            if self._worker is None:  # micro-batching off: one model call per request, in arrival order
                loop = asyncio.get_running_loop()
                self.n_batches += 1
                self.n_rows += n
                return await loop.run_in_executor(self.executor, self._score, prompts, texts)
            job = _Job(prompts, texts, asyncio.get_running_loop().create_future())
            self.queue.put_nowait(job)
            self._arrived.set()
            return await job.future
        finally:
            self.pending_rows -= n

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        rows = len(jobs[0].texts)
        while rows < self.config.max_batch_size and not self.queue.empty():
            jobs.append(self.queue.get_nowait())
            rows += len(jobs[-1].texts)
        deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
        while rows < self.config.max_batch_size:
            if not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                rows += len(jobs[-1].texts)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.arriving == 0:  # wait only while more requests are being read
                break
            self._arrived.clear()
            try:  # waiting on an Event (not on queue.get) cannot lose a job when the timeout fires
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            prompts = [p for j in jobs for p in j.prompts]
            texts = [t for j in jobs for t in j.texts]
            self.n_batches += 1
            self.n_rows += len(texts)
            try:
                result = await loop.run_in_executor(self.executor, self._score, prompts, texts)
            except Exception:  # isolate the failing request(s): rescore one by one
                logger.exception("batch of %d requests failed; rescoring them one by one", len(jobs))
                for job in jobs:
                    try:
                        res = await loop.run_in_executor(self.executor, self._score, job.prompts, job.texts)
                    except Exception as exc:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    else:
                        if not job.future.done():
                            job.future.set_result(res)
                continue
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():  # a client that went away leaves a cancelled future
                    job.future.set_result(_slice(result, start, end))
                start = end


def _slice(result: Any, start: int, end: int) -> Any:
    from biasgrpo.reward.scorer import ScoreResult

    return ScoreResult(
        result.scores[start:end],
        result.raw[start:end],
        result.truncated[start:end],
        result.n_tokens[start:end],
    )


# ------------------------------------------------------------------------------------------ validation
def _str_list(body: dict[str, Any], key: str, *, allow_none_items: bool = False) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(422, f"field '{key}' must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if isinstance(item, str) or (allow_none_items and item is None):
            continue
        raise ApiError(422, f"field '{key}[{i}]' must be a string, got {type(item).__name__}")
    return value


def parse_request(raw: bytes, config: ServerConfig) -> tuple[list[str], list[str | None] | None]:
    """Validate a ``/get_reward`` body; returns ``(queries, prompts)`` or raises :class:`ApiError`."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"body must be a JSON object with a 'query' list, got {type(body).__name__}")
    if "query" not in body:
        raise ApiError(422, "field 'query' is required: a list of strings (prompt + response)")
    queries = _str_list(body, "query")
    if queries is None:
        raise ApiError(422, "field 'query' must be a list of strings, got null")
    if len(queries) > config.max_items:
        raise ApiError(
            413, f"{len(queries)} queries in one request; the limit is max_items={config.max_items}"
        )
    prompts = _str_list(body, "prompts", allow_none_items=True)
    if prompts is not None and len(prompts) != len(queries):
        raise ApiError(422, f"field 'prompts' has {len(prompts)} entries but 'query' has {len(queries)}")
    labels = body.get("labels")
    if labels is not None:
        if not isinstance(labels, list):
            raise ApiError(422, f"field 'labels' must be a list, got {type(labels).__name__}")
        if len(labels) != len(queries):
            raise ApiError(422, f"field 'labels' has {len(labels)} entries but 'query' has {len(queries)}")
    return queries, prompts


async def _read_body(request: Any, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {length!r}") from None
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------------------------- the app
def create_app(config: ServerConfig, scorer: Scorer | None = None) -> Any:
    """The FastAPI app. ``scorer`` (optional) is used instead of loading ``config.model_dir``."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise _missing_extra(exc) from None

    cleaner = QueryCleaner(strip_tokens=config.strip_tokens)
    token = os.environ.get(config.token_env) or None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any):
        loaded = scorer or Scorer.load(
            config.model_dir, precision=config.precision, num_threads=config.num_threads
        )
        batcher = MicroBatcher(loaded, config)
        batcher.start()
        state["batcher"] = batcher
        logger.info(
            "serving %s (%s) micro_batching=%s auth=%s",
            config.model_dir,
            loaded.precision,
            config.micro_batching,
            "on" if token else "off",
        )
        try:
            yield
        finally:
            await batcher.stop()
            logger.info("reward server stopped after %d requests", batcher.n_requests)

    app = FastAPI(title="biasgrpo reward server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    # Plain Starlette routes: the handlers read the raw body themselves (exact 400/413/422 semantics).
    async def health(request: Request) -> JSONResponse:
        b = state.get("batcher")
        return JSONResponse(
            {
                "status": "ok"
                if b is not None and not b.closing
                else "starting"
                if b is None
                else "stopping",
                "model_dir": str(config.model_dir),
                "precision": b.scorer.precision if b else None,
                "micro_batching": config.micro_batching,
                "max_batch_size": config.max_batch_size,
                "max_wait_ms": config.max_wait_ms,
                "auth": token is not None,
                "requests": b.n_requests if b else 0,
                "batches": b.n_batches if b else 0,
                "mean_batch_rows": (b.n_rows / b.n_batches) if b and b.n_batches else 0.0,
                "pending_rows": b.pending_rows if b else 0,
            }
        )

    async def get_reward(request: Request) -> JSONResponse:
        if token is not None:
            got = request.headers.get("authorization", "")
            scheme, _, value = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                raise ApiError(401, "missing or wrong bearer token (header 'Authorization: Bearer <token>')")
        batcher: MicroBatcher = state["batcher"]
        batcher.arriving += 1
        try:
            queries, prompts = parse_request(await _read_body(request, config.max_body_bytes), config)
            clean_prompts, responses, unsplit = [], [], []
            for i, q in enumerate(queries):
                p, r, found = cleaner.split(q, prompts[i] if prompts is not None else None)
                clean_prompts.append(p)
                responses.append(r)
                unsplit.append(0.0 if found else 1.0)
        finally:
            batcher.arriving -= 1
            batcher._arrived.set()  # a waiting batch re-checks whether anyone is still arriving
        if not queries:
            return JSONResponse({"rewards": [], "scores": [], "extra_logs": {}})
        result = await batcher.submit(clean_prompts, responses)
        scores = [float(s) for s in result.scores]
        return JSONResponse(
            {
                "rewards": scores,
                "scores": scores,
                "extra_logs": {
                    "bias_raw": [float(x) for x in result.raw],
                    "truncated": [float(x) for x in result.truncated],
                    "unsplit": unsplit,
                },
            }
        )

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/get_reward", get_reward, methods=["POST"])
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 = any free port); read the port from ``sock.getsockname()[1]``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on TCP-proto sockets, and without it small
    # responses wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(config: ServerConfig, scorer: Scorer | None = None) -> Any:
    """A ``uvicorn.Server`` for the app (call ``.run(sockets=[bind_socket(...)])``, stop with ``should_exit``)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing_extra(exc) from None
    uv_config = uvicorn.Config(
        create_app(config, scorer),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=config.access_log,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    return uvicorn.Server(uv_config)


def serve(config: ServerConfig, scorer: Scorer | None = None) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT (uvicorn's handlers drain in-flight requests)."""
    server = make_server(config, scorer)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    logger.warning("biasgrpo reward server on http://%s:%d/get_reward (health: /health)", host, port)
    # uvicorn drains requests on SIGTERM/SIGINT, then re-raises the signal to the handler installed before
    # it started; a recording no-op there makes a signalled shutdown a clean exit (status 0).
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        logger.warning("reward server stopped cleanly on %s", signal.Signals(received[0]).name)
