"""Generator backends for the synthesizer: chat messages in, text out, batched.

One small protocol, :class:`Generator`, with three implementations:

* :class:`HFGenerator`: a local Hugging Face causal LM (any Hub id or folder; default the offline
  SmolLM2-135M-Instruct), batched ``generate`` with left padding and length-sorted micro-batches;
* :class:`OpenAIChatGenerator`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, Ollama,
  llama.cpp server, hosted APIs) over the standard library's HTTP client: the API key comes only from an
  environment variable, every request has a timeout, 429/5xx/connection errors/timeouts/unreadable bodies
  are retried with exponential backoff (``Retry-After`` honoured), and a thread pool bounds concurrency;
* :class:`RotatingGenerator`: several generators in (weighted) round-robin, so no single model's bias
  dominates; each :class:`Completion` names the generator that wrote it.

A backend never raises for one bad item: it returns a :class:`Completion` whose ``error`` says why there is
no text (the synthesizer counts and retries those). A conversation may end with an assistant message: a
*prefill* that backends able to continue it (the local one) extend, and others drop; either way
``Completion.text`` is the whole assistant turn, prefill included when it was used.

:func:`build_generator` turns CLI specs into generators::

    smollm2                                   local SmolLM2 (the default)
    hf:HuggingFaceTB/SmolLM2-360M-Instruct    local model by Hub id or folder
    openai:MODEL@http://127.0.0.1:8000/v1     OpenAI-compatible server
    openai:gpt-4o-mini@https://api.openai.com/v1,key_env=OPENAI_API_KEY,weight=2,concurrency=8
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Message = dict[str, str]
Conversation = list[Message]


class GenerationError(RuntimeError):
    """A generator cannot work at all (model failed to load, endpoint refuses every request)."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one ``generate`` call; recorded in each synthetic record's provenance."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    """One generated assistant turn. ``error`` is set (and ``text`` empty) when the backend gave up."""

    text: str
    generator: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Generator(Protocol):
    """Chat conversations in, one :class:`Completion` per conversation out, in order."""

    name: str

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        is_complete: Callable[[str], bool] | None = None,
    ) -> list[Completion]:
        """``is_complete`` is a hint: a backend may stop a sequence early once it returns True for its text."""
        ...


def split_prefill(conversation: Conversation) -> tuple[Conversation, str]:
    """Split a trailing assistant message (the prefill) off a conversation."""
    if conversation and conversation[-1].get("role") == "assistant":
        return list(conversation[:-1]), conversation[-1].get("content", "")
    return list(conversation), ""


# --------------------------------------------------------------------------------------------- local model
class HFGenerator:
    """A local causal LM through transformers; batched, length-sorted, left-padded sampling.

    ``model`` is an alias (``smollm2``), a folder or a Hub id (see :func:`biasgrpo.assets.resolve_model`).
    Needs the ``train`` extra (torch, transformers).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        name: str | None = None,
        check_every: int = 4,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the local generator needs torch and transformers: pip install 'biasgrpo[train]'"
            ) from exc
        from biasgrpo.assets import resolve_model

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = resolve_model(model, default="smollm2")
        self.name = name or f"hf:{model or 'smollm2'}"
        self.batch_size = batch_size
        self.check_every = max(1, check_every)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = (
            getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(f"{path}: the tokenizer has no chat template; use an instruct/chat model")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()

    def _render(self, conversation: Conversation) -> tuple[str, str]:
        messages, prefill = split_prefill(conversation)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + prefill, prefill

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        is_complete: Callable[[str], bool] | None = None,
    ) -> list[Completion]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        rendered = [self._render(c) for c in conversations]
        lengths = [len(self.tokenizer(text, add_special_tokens=False).input_ids) for text, _ in rendered]
        order = sorted(range(len(rendered)), key=lambda i: lengths[i])  # less padding per micro-batch
        results: list[Completion | None] = [None] * len(rendered)
        tokenizer = self.tokenizer
        check_every = self.check_every

        class _Complete(StoppingCriteria):
            """Per-sequence early stop once ``is_complete(prefill + new text)`` holds (checked every few steps)."""

            def __init__(self, start: int, prefills: list[str]):
                self.start, self.prefills, self.calls = start, prefills, 0

            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[override]
                self.calls += 1
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                if self.calls % check_every:
                    return done
                texts = tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
                for j, text in enumerate(texts):
                    done[j] = bool(is_complete(self.prefills[j] + text))
                return done

        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            texts = [rendered[i][0] for i in idx]
            prefills = [rendered[i][1] for i in idx]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self.device
            )
            start = enc.input_ids.shape[1]
            stopping = StoppingCriteriaList([_Complete(start, prefills)]) if is_complete else None
            sample = params.temperature > 0
            kwargs: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, do_sample=sample)
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            try:
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed + b)
                    out = self.model.generate(
                        **enc, **kwargs, stopping_criteria=stopping, pad_token_id=tokenizer.pad_token_id
                    )
            except RuntimeError as exc:  # e.g. out of memory: report per item, never crash the run
                logger.warning("%s: generate failed: %s", self.name, exc)
                for i in idx:
                    results[i] = Completion("", self.name, error=f"backend_error:{type(exc).__name__}")
                continue
            decoded = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
            for i, prefill, text in zip(idx, prefills, decoded, strict=True):
                results[i] = Completion(prefill + text, self.name)
        return [r for r in results if r is not None]


# ----------------------------------------------------------------------------------------------- HTTP API
class _RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _FatalError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


class OpenAIChatGenerator:
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` client (stdlib only, thread-pooled).

    The API key is read from the environment variable ``api_key_env`` and never accepted as an argument
    (so it cannot leak into configs, logs or shell history). When that variable is unset, requests go
    without an ``Authorization`` header (fine for local servers); naming a variable explicitly with
    ``require_key=True`` makes its absence an error.

    Each request is retried up to ``max_retries`` times on HTTP 429 and 5xx, connection errors, timeouts
    and unreadable bodies, sleeping ``min(max_backoff, backoff * 2**k)`` with jitter (or the server's
    ``Retry-After`` when longer). Other 4xx answers are not retried. ``concurrency`` bounds the requests
    in flight for this generator. ``stats`` counts retries and failures by reason.

    ``prefill=True`` sends a trailing assistant message with ``continue_final_message`` (vLLM's extension);
    otherwise a trailing assistant message is dropped.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        require_key: bool = False,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 8,
        prefill: bool = False,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ValueError("model must name the served model")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or concurrency < 1:
            raise ValueError("timeout must be > 0, max_retries >= 0, backoff >= 0 and concurrency >= 1")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name = name or f"openai:{model}"
        self.api_key_env = api_key_env
        if require_key and not os.environ.get(api_key_env):
            raise ValueError(f"environment variable {api_key_env} is not set; export it with the API key")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.prefill = prefill
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="biasgrpo-http")
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, conversation: Conversation, params: SamplingParams) -> tuple[dict[str, Any], str]:
        messages, prefill = split_prefill(conversation)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if prefill and self.prefill:
            body["messages"] = [*messages, {"role": "assistant", "content": prefill}]
            body.update(continue_final_message=True, add_generation_prompt=False)
        else:
            prefill = ""
        body.update(self.extra_body)
        return body, prefill

    def _post_once(self, data: bytes) -> str:
        request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace") if exc.fp else ""
            if exc.code == 429 or exc.code >= 500:
                raise _RetryableError(
                    f"http_{exc.code}", _retry_after_seconds(exc.headers.get("Retry-After"))
                ) from None
            raise _FatalError(f"http_{exc.code}: {detail}") from None
        except TimeoutError:
            raise _RetryableError("timeout") from None
        except urllib.error.URLError as exc:
            reason = "timeout" if isinstance(exc.reason, (TimeoutError, socket.timeout)) else "connection"
            raise _RetryableError(reason) from None
        except (ConnectionError, OSError, http.client.HTTPException):  # reset, refused, bad status line
            raise _RetryableError("connection") from None
        try:
            payload = json.loads(raw)
            message = payload["choices"][0]["message"]
            content = message.get("content")
            if content is None:
                content = message.get("refusal") or ""
            if not isinstance(content, str):
                raise TypeError(type(content).__name__)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _RetryableError("bad_body") from None
        return content

    def _complete_one(self, conversation: Conversation, params: SamplingParams) -> Completion:
        body, prefill = self._body(conversation, params)
        data = json.dumps(body).encode("utf-8")
        reason = "unknown"
        for attempt in range(self.max_retries + 1):
            try:
                text = self._post_once(data)
                self._count("ok")
                return Completion(prefill + text, self.name)
            except _FatalError as exc:
                self._count(exc.reason.split(":")[0])
                logger.warning("%s: request rejected (%s); not retrying", self.name, exc.reason)
                return Completion("", self.name, error=exc.reason.split(":")[0])
            except _RetryableError as exc:
                reason = exc.reason
                self._count(f"retry:{reason}")
                if attempt == self.max_retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.max_backoff))
                logger.debug("%s: %s, retry %d in %.2fs", self.name, reason, attempt + 1, delay)
                self._sleep(delay)
        self._count(f"failed:{reason}")
        return Completion("", self.name, error=reason)

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        is_complete: Callable[[str], bool] | None = None,
    ) -> list[Completion]:
        futures = [self._pool.submit(self._complete_one, c, params) for c in conversations]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------- rotation
class RotatingGenerator:
    """Several generators in smooth weighted round-robin; each item goes to one generator.

    With equal weights this is plain round-robin (a, b, c, a, b, c, ...); with weights 2:1 it is a, b, a,
    a, b, a, ... The schedule continues across calls, so a retried item usually lands on another model.
    Sub-batches for different generators run in parallel threads.
    """

    def __init__(self, generators: Sequence[Generator], weights: Sequence[float] | None = None) -> None:
        if not generators:
            raise ValueError("a rotation needs at least one generator")
        weights = list(weights) if weights is not None else [1.0] * len(generators)
        if len(weights) != len(generators) or any(w <= 0 for w in weights):
            raise ValueError("weights must be positive, one per generator")
        names = [g.name for g in generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique in a rotation, got {names}")
        self.generators = list(generators)
        self.weights = weights
        self.name = "rotation(" + ",".join(names) + ")"
        self._current = [0.0] * len(generators)

    def assign(self, k: int) -> list[int]:
        """Indices of the generators that get the next ``k`` items (smooth weighted round-robin)."""
        total = sum(self.weights)
        out = []
        for _ in range(k):
            for j, w in enumerate(self.weights):
                self._current[j] += w
            best = max(range(len(self.weights)), key=lambda j: self._current[j])
            self._current[best] -= total
            out.append(best)
        return out

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        is_complete: Callable[[str], bool] | None = None,
    ) -> list[Completion]:
        owners = self.assign(len(conversations))
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(owners):
            groups.setdefault(g, []).append(i)
        results: list[Completion | None] = [None] * len(conversations)

        def run(g: int, idx: list[int]) -> None:
            gen = self.generators[g]
            try:
                outs = gen.generate([conversations[i] for i in idx], params, is_complete)
            except Exception as exc:  # one broken backend must not sink the others
                logger.warning("%s failed: %s", gen.name, exc)
                outs = [Completion("", gen.name, error=f"backend_error:{type(exc).__name__}") for _ in idx]
            for i, c in zip(idx, outs, strict=True):
                results[i] = c

        if len(groups) == 1:
            run(*next(iter(groups.items())))
        else:
            threads = [threading.Thread(target=run, args=item) for item in groups.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return [r for r in results if r is not None]

    def close(self) -> None:
        for g in self.generators:
            close = getattr(g, "close", None)
            if close:
                close()


# ------------------------------------------------------------------------------------------ CLI specs
@dataclass
class GeneratorSpec:
    """A parsed ``--generator`` value: backend kind, model, base URL and options (weight, key_env, ...)."""

    kind: str  # "hf" | "openai"
    model: str
    base_url: str | None = None
    options: dict[str, str] | None = None

    @property
    def weight(self) -> float:
        return float((self.options or {}).get("weight", 1.0))


_HF_OPTIONS = {"weight", "batch_size", "device", "dtype", "name"}
_HTTP_OPTIONS = {
    "weight", "key_env", "require_key", "timeout", "max_retries", "backoff", "max_backoff", "concurrency",
    "prefill", "name",
}  # fmt: skip


def parse_generator_spec(spec: str) -> GeneratorSpec:
    """Parse ``[hf:]MODEL[,k=v...]`` or ``openai:MODEL@BASE_URL[,k=v...]``; errors name the bad part."""
    head, *opts = [p.strip() for p in spec.split(",")]
    options: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--generator {spec!r}: option {opt!r} is not key=value")
        options[key] = value
    if head.startswith("openai:"):
        model, at, url = head[len("openai:") :].rpartition("@")
        if not at or not model or not url:
            raise ValueError(
                f"--generator {spec!r}: expected openai:MODEL@BASE_URL (e.g. openai:qwen@http://127.0.0.1:8000/v1)"
            )
        kind, allowed = "openai", _HTTP_OPTIONS
        parsed = GeneratorSpec(kind, model, url, options)
    else:
        model = head[len("hf:") :] if head.startswith("hf:") else head
        if not model:
            raise ValueError(f"--generator {spec!r}: missing model")
        kind, allowed = "hf", _HF_OPTIONS
        parsed = GeneratorSpec(kind, model, None, options)
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"--generator {spec!r}: unknown option(s) {sorted(unknown)} for {kind}; allowed: {sorted(allowed)}"
        )
    if parsed.weight <= 0:
        raise ValueError(f"--generator {spec!r}: weight must be > 0")
    return parsed


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def generator_from_spec(spec: GeneratorSpec, **defaults: Any) -> Generator:
    """Build one backend; ``defaults`` (batch_size, device, timeout, concurrency, ...) fill unset options."""
    opts = dict(spec.options or {})
    opts.pop("weight", None)
    if spec.kind == "hf":
        return HFGenerator(
            spec.model,
            batch_size=int(opts.get("batch_size", defaults.get("batch_size", 8))),
            device=opts.get("device", defaults.get("device")),
            dtype=opts.get("dtype"),
            name=opts.get("name"),
        )
    assert spec.base_url is not None
    return OpenAIChatGenerator(
        spec.model,
        spec.base_url,
        api_key_env=opts.get("key_env", defaults.get("api_key_env", "OPENAI_API_KEY")),
        require_key="key_env" in opts or _truthy(opts.get("require_key", "0")),
        timeout=float(opts.get("timeout", defaults.get("timeout", 60.0))),
        max_retries=int(opts.get("max_retries", defaults.get("max_retries", 4))),
        backoff=float(opts.get("backoff", defaults.get("backoff", 1.0))),
        max_backoff=float(opts.get("max_backoff", defaults.get("max_backoff", 30.0))),
        concurrency=int(opts.get("concurrency", defaults.get("concurrency", 8))),
        prefill=_truthy(opts.get("prefill", "0")),
        name=opts.get("name"),
    )


def build_generator(specs: Sequence[str], **defaults: Any) -> Generator:
    """One generator for one spec, a :class:`RotatingGenerator` (weighted by ``weight=``) for several."""
    parsed = [parse_generator_spec(s) for s in specs] or [parse_generator_spec("smollm2")]
    gens = [generator_from_spec(p, **defaults) for p in parsed]
    if len(gens) == 1:
        return gens[0]
    return RotatingGenerator(gens, [p.weight for p in parsed])


def generator_names(generator: Generator) -> list[str]:
    """The names of the backends behind a generator (one, or each member of a rotation)."""
    if isinstance(generator, RotatingGenerator):
        return [g.name for g in generator.generators]
    return [generator.name]
