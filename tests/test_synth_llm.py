"""Generator backends: the HTTP client against a real server on 127.0.0.1, the local model, the rotation."""

from __future__ import annotations

import threading
import time

import pytest
from synth_chat_server import ChatServer

from biasgrpo.data_synth.llm import (
    Completion,
    GenerationError,
    HFGenerator,
    OpenAIChatGenerator,
    RotatingGenerator,
    SamplingParams,
    build_generator,
    parse_generator_spec,
)
from biasgrpo.data_synth.prompts import TEMPLATE_JSON, answer_is_complete, parse_generation

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Bias domain: age\nSetting: hiring\nGo."},
]
PARAMS = SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=3)


def client(server: ChatServer, **kw) -> OpenAIChatGenerator:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return OpenAIChatGenerator("test-model", server.base_url, **kw)


def test_http_valid_answer_and_request_body() -> None:
    with ChatServer() as srv:
        gen = client(srv)
        out = gen.generate([CONV, CONV], PARAMS)
    assert [c.ok for c in out] == [True, True]
    assert all(parse_generation(c.text).ok for c in out)
    assert out[0].generator == "openai:test-model"
    body = srv.requests[0]
    assert body["model"] == "test-model" and body["messages"] == CONV
    assert (
        body["max_tokens"] == 32 and body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["seed"] == 3
    )


def test_http_retries_500_429_malformed_body_and_dropped_connection() -> None:
    script = [("status", 500), ("status", 503), ("status", 429, {"Retry-After": "0"}), ("raw", b"{not json"),
              ("raw", b'{"choices": []}'), ("drop",)]  # fmt: skip
    with ChatServer(script=script) as srv:
        gen = client(srv, max_retries=6)
        out = gen.generate([CONV], PARAMS)
    assert out[0].ok, out[0]
    assert len(srv.requests) == 7  # six failures, then the answer
    s = gen.stats
    assert s["retry:http_500"] == 1 and s["retry:http_503"] == 1 and s["retry:http_429"] == 1
    assert s["retry:bad_body"] == 2 and s["retry:connection"] == 1 and s["ok"] == 1


def test_http_garbage_status_line_is_retried() -> None:
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    hits = []

    def serve():  # first connection: not HTTP at all; second: a valid answer
        for i in range(2):
            conn, _ = srv.accept()
            conn.recv(65536)
            hits.append(i)
            if i == 0:
                conn.sendall(b"garbage that is not HTTP\r\n\r\n")
            else:
                body = b'{"choices": [{"message": {"role": "assistant", "content": "fine"}}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    gen = OpenAIChatGenerator("m", f"http://127.0.0.1:{srv.getsockname()[1]}/v1", backoff=0.0, max_retries=2)
    out = gen.generate([CONV], PARAMS)
    t.join(5)
    srv.close()
    assert out[0].text == "fine" and gen.stats["retry:connection"] == 1 and hits == [0, 1]


def test_http_gives_up_after_max_retries_without_raising() -> None:
    with ChatServer(script=[("status", 500)] * 10) as srv:
        gen = client(srv, max_retries=2)
        out = gen.generate([CONV], PARAMS)
    assert out == [Completion("", "openai:test-model", error="http_500")]
    assert len(srv.requests) == 3 and gen.stats["failed:http_500"] == 1


def test_http_timeout_is_retried() -> None:
    with ChatServer(script=[("delay", 1.5)]) as srv:
        gen = client(srv, timeout=0.3, max_retries=2)
        t0 = time.perf_counter()
        out = gen.generate([CONV], PARAMS)
        elapsed = time.perf_counter() - t0
    assert out[0].ok and gen.stats["retry:timeout"] == 1
    assert elapsed < 1.4  # did not wait for the slow answer


def test_http_client_error_is_not_retried() -> None:
    with ChatServer(script=[("status", 400)]) as srv:
        gen = client(srv, max_retries=5)
        out = gen.generate([CONV], PARAMS)
    assert out[0].error == "http_400" and len(srv.requests) == 1


def test_http_connection_refused_is_an_error_not_a_crash() -> None:
    with ChatServer() as srv:
        url = srv.base_url
    gen = OpenAIChatGenerator("m", url, max_retries=1, backoff=0.0, timeout=1.0)
    assert gen.generate([CONV], PARAMS)[0].error == "connection"


def test_backoff_grows_and_honours_retry_after() -> None:
    sleeps: list[float] = []
    with ChatServer(script=[("status", 500), ("status", 500), ("status", 429, {"Retry-After": "2"})]) as srv:
        gen = OpenAIChatGenerator(
            "m", srv.base_url, backoff=0.1, max_backoff=5.0, max_retries=3, sleep=sleeps.append
        )
        assert gen.generate([CONV], PARAMS)[0].ok
    assert len(sleeps) == 3
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2  # jittered 0.1 * 2**k
    assert sleeps[2] == 2.0  # Retry-After wins when longer


def test_api_key_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIASGRPO_TEST_KEY", "sk-secret")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatServer() as srv:
        client(srv, api_key_env="BIASGRPO_TEST_KEY").generate([CONV], PARAMS)
        client(srv).generate([CONV], PARAMS)
    assert srv.headers[0]["Authorization"] == "Bearer sk-secret"
    assert "Authorization" not in srv.headers[1]
    with pytest.raises(ValueError, match="NOT_SET_VAR"):
        OpenAIChatGenerator("m", "http://127.0.0.1:1/v1", api_key_env="NOT_SET_VAR", require_key=True)
    spec = parse_generator_spec("openai:m@http://127.0.0.1:1/v1,key_env=NOT_SET_VAR")
    with pytest.raises(ValueError, match="NOT_SET_VAR"):
        build_generator([spec_to_str(spec)])


def spec_to_str(spec) -> str:
    return f"openai:{spec.model}@{spec.base_url}," + ",".join(f"{k}={v}" for k, v in spec.options.items())


def test_concurrency_limit() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(request, k):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return "ok"

    with ChatServer(responder=slow) as srv:
        gen = client(srv, concurrency=2)
        t0 = time.perf_counter()
        out = gen.generate([CONV] * 6, PARAMS)
        elapsed = time.perf_counter() - t0
    assert all(c.ok for c in out)
    assert state["max"] == 2
    assert elapsed >= 0.4  # 6 requests, 2 at a time, 0.15 s each


def test_prefill_is_dropped_unless_the_server_can_continue_it() -> None:
    conv = TEMPLATE_JSON.render(domain="age", context="hiring", seed=None)
    with ChatServer(
        responder=lambda r, k: 'Q?", "favorable": "fair answer", "unfavorable": "biased answer"}'
    ) as srv:
        plain = client(srv).generate([conv], PARAMS)[0]
        cont = client(srv, prefill=True).generate([conv], PARAMS)[0]
    assert srv.requests[0]["messages"][-1]["role"] == "user"
    assert srv.requests[1]["messages"][-1] == {"role": "assistant", "content": '{"prompt": "'}
    assert srv.requests[1]["continue_final_message"] is True
    assert not parse_generation(plain.text).ok  # the continuation alone is not an object
    assert parse_generation(cont.text).fields["prompt"] == "Q?"  # prefill + continuation is


class FakeGen:
    def __init__(self, name: str, fail: bool = False):
        self.name, self.fail, self.calls = name, fail, []

    def generate(self, conversations, params, is_complete=None):
        if self.fail:
            raise RuntimeError("boom")
        self.calls.append(len(conversations))
        return [Completion(f"{self.name}:{c[-1]['content']}", self.name) for c in conversations]


def test_rotation_round_robin_and_weights() -> None:
    a, b, c = FakeGen("a"), FakeGen("b"), FakeGen("c")
    rot = RotatingGenerator([a, b, c])
    convs = [[{"role": "user", "content": str(i)}] for i in range(6)]
    out = rot.generate(convs, PARAMS)
    assert [o.generator for o in out] == ["a", "b", "c", "a", "b", "c"]
    assert [o.text.split(":")[1] for o in out] == [str(i) for i in range(6)]  # order kept
    weighted = RotatingGenerator([FakeGen("x"), FakeGen("y")], [3, 1])
    owners = weighted.assign(8)
    assert owners == [0, 0, 1, 0, 0, 0, 1, 0]  # smooth weighted round-robin: 3:1, interleaved, periodic
    with pytest.raises(ValueError):
        RotatingGenerator([FakeGen("x"), FakeGen("x")])


def test_rotation_survives_a_broken_member() -> None:
    rot = RotatingGenerator([FakeGen("ok"), FakeGen("bad", fail=True)])
    out = rot.generate([[{"role": "user", "content": "hi"}]] * 4, PARAMS)
    assert [o.ok for o in out] == [True, False, True, False]
    assert out[1].error == "backend_error:RuntimeError" and out[1].generator == "bad"


def test_rotation_over_two_real_http_servers() -> None:
    with ChatServer() as s1, ChatServer() as s2:
        gen = build_generator([f"openai:m1@{s1.base_url}", f"openai:m2@{s2.base_url},weight=2"])
        out = gen.generate([CONV] * 6, PARAMS)
        gen.close()
    assert [o.generator for o in out].count("openai:m2") == 4
    assert len(s1.requests) == 2 and len(s2.requests) == 4


@pytest.mark.parametrize(
    ("spec", "kind", "model", "url"),
    [
        ("smollm2", "hf", "smollm2", None),
        ("hf:org/model,batch_size=4", "hf", "org/model", None),
        (
            "openai:qwen2.5:7b@http://127.0.0.1:11434/v1,weight=2",
            "openai",
            "qwen2.5:7b",
            "http://127.0.0.1:11434/v1",
        ),
    ],
)
def test_generator_specs(spec: str, kind: str, model: str, url: str | None) -> None:
    p = parse_generator_spec(spec)
    assert (p.kind, p.model, p.base_url) == (kind, model, url)


@pytest.mark.parametrize(
    "bad", ["openai:nourl", "hf:m,weight", "hf:m,bogus=1", "openai:m@http://x/v1,weight=0", "hf:"]
)
def test_bad_generator_specs(bad: str) -> None:
    with pytest.raises(ValueError, match="--generator"):
        parse_generator_spec(bad)


def test_sampling_params_validation() -> None:
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)


# ------------------------------------------------------------------------------------ local model
@pytest.fixture(scope="module")
def tiny_gen(tiny_causal_lm_dir) -> HFGenerator:
    return HFGenerator(str(tiny_causal_lm_dir), batch_size=3, device="cpu")


def test_local_generator_batches_and_returns_one_completion_each(tiny_gen: HFGenerator) -> None:
    convs = [[{"role": "user", "content": "hi " * (i + 1)}] for i in range(5)]
    out = tiny_gen.generate(convs, SamplingParams(max_new_tokens=8, seed=1))
    assert len(out) == 5 and all(c.ok and c.generator.startswith("hf:") for c in out)
    again = tiny_gen.generate(convs, SamplingParams(max_new_tokens=8, seed=1))
    assert [c.text for c in again] == [c.text for c in out]  # seeded


def test_local_generator_keeps_prefill_and_garbage_is_invalid(tiny_gen: HFGenerator) -> None:
    conv = TEMPLATE_JSON.render(domain="age", context="hiring", seed=None)
    out = tiny_gen.generate([conv, conv], SamplingParams(max_new_tokens=12, seed=0))
    assert all(c.text.startswith(TEMPLATE_JSON.prefill) for c in out)
    assert not any(parse_generation(c.text).ok for c in out)  # a random model writes garbage


def test_local_generator_stops_early_when_complete(tiny_gen: HFGenerator) -> None:
    calls = []

    def done(text: str) -> bool:
        calls.append(text)
        return True

    t0 = time.perf_counter()
    out = tiny_gen.generate([CONV], SamplingParams(max_new_tokens=200, seed=0), is_complete=done)
    assert calls and time.perf_counter() - t0 < 10
    n_new = len(tiny_gen.tokenizer(out[0].text, add_special_tokens=False).input_ids)
    assert n_new <= tiny_gen.check_every + 1


def test_http_server_answering_from_the_tiny_model(tiny_gen: HFGenerator) -> None:
    """The realistic garbage path: an OpenAI-compatible server backed by a (random) local model."""

    def from_model(request, k):
        return tiny_gen.generate([request["messages"]], SamplingParams(max_new_tokens=16, seed=k))[0].text

    with ChatServer(responder=from_model) as srv:
        out = client(srv).generate([CONV] * 2, PARAMS)
    assert all(c.ok and c.text for c in out)
    assert not any(answer_is_complete(c.text) for c in out)


def test_local_generator_needs_a_chat_template(tmp_path, tiny_causal_lm_dir) -> None:
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path / "nochat"
    shutil.copytree(tiny_causal_lm_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = None
    tok.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(GenerationError, match="chat template"):
        HFGenerator(str(d))
