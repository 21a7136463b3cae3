"""The OpenRLHF reward server over real sockets on 127.0.0.1: results equal direct scoring under concurrency,
every malformed input kind, auth on and off, failure isolation, and a clean SIGTERM shutdown of `biasgrpo serve`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from biasgrpo.reward.scorer import Scorer
from biasgrpo.reward.server import ServerConfig, bind_socket, make_server, parse_request

PROMPTS = [
    f"<|im_start|>user\nTell me about group {i}.<|im_end|>\n<|im_start|>assistant\n" for i in range(40)
]
RESPONSES = [
    f"People of group {i} are " + " ".join(["kind", "lazy", "smart", "loud"][: i % 4 + 1]) for i in range(40)
]


@pytest.fixture(scope="module")
def tiny_scorer_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biasgrpo.reward.testing import make_tiny_scorer_dir

    return make_tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory.mktemp("server-scorer"), max_length=64)


@pytest.fixture(scope="module")
def scorer(tiny_scorer_dir: Path) -> Scorer:
    return Scorer.load(tiny_scorer_dir, precision="fp32")


def _expected(scorer: Scorer, i: int) -> float:
    return float(scorer.score([RESPONSES[i]], prompts=[f"Tell me about group {i}."])[0])


@contextmanager
def running(config: ServerConfig, scorer=None) -> Iterator[str]:
    """A real uvicorn server in a thread on a free port; yields its base URL, stops it on exit."""
    server = make_server(config, scorer)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def base_config(tiny_scorer_dir: Path) -> ServerConfig:
    return replace(
        ServerConfig.tiny(str(tiny_scorer_dir)), precision="fp32", token_env="BIASGRPO_TEST_TOKEN_UNSET"
    )


@pytest.fixture(scope="module")
def url(base_config: ServerConfig) -> Iterator[str]:
    with running(base_config) as u:
        yield u


async def _concurrent(url: str, indices: list[int], headers=None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        return await asyncio.gather(
            *[
                client.post(
                    url + "/get_reward",
                    json={
                        "query": [PROMPTS[i] + RESPONSES[i] + "<|im_end|>"],
                        "prompts": [PROMPTS[i]],
                        "labels": [None],
                    },
                )
                for i in indices
            ]
        )


def test_concurrent_single_queries_equal_direct_scores_and_are_batched(url: str, scorer: Scorer):
    before = httpx.get(url + "/health").json()
    responses = asyncio.run(_concurrent(url, list(range(40))))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"rewards", "scores", "extra_logs"}
        assert body["rewards"][0] == pytest.approx(_expected(scorer, i), abs=1e-5)
        assert body["scores"] == body["rewards"]
        assert body["extra_logs"]["unsplit"] == [0.0]
    health = httpx.get(url + "/health").json()
    n_batches = health["batches"] - before["batches"]
    assert health["requests"] - before["requests"] == 40
    assert n_batches < 40, "40 concurrent requests should share model calls"
    assert health["status"] == "ok" and health["auth"] is False and health["pending_rows"] == 0


def test_multi_query_request_and_empty(url: str, scorer: Scorer):
    body = {"query": [PROMPTS[i] + RESPONSES[i] for i in range(5)], "prompts": PROMPTS[:5]}
    r = httpx.post(url + "/get_reward", json=body)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["rewards"], [_expected(scorer, i) for i in range(5)], atol=1e-5)
    assert httpx.post(url + "/get_reward", json={"query": []}).json()["rewards"] == []


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"query": ["a"', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"prompts": ["a"]}', 422, "'query' is required"),
        (b'{"query": "text"}', 422, "'query' must be a list"),
        (b'{"query": null}', 422, "'query' must be a list"),
        (b'{"query": ["a", 3]}', 422, "'query[1]' must be a string"),
        (b'{"query": ["a"], "prompts": ["p", "q"]}', 422, "'prompts' has 2 entries"),
        (b'{"query": ["a"], "prompts": [1]}', 422, "'prompts[0]' must be a string"),
        (b'{"query": ["a"], "labels": "x"}', 422, "'labels' must be a list"),
        (b'{"query": ["a"], "labels": [1, 2]}', 422, "'labels' has 2 entries"),
        (json.dumps({"query": ["a"] * 300}).encode(), 413, "max_items"),
        (json.dumps({"query": ["x" * 1_100_000]}).encode(), 413, "exceeds the limit"),
    ],
)
def test_malformed_requests_get_json_4xx_and_server_survives(
    url: str, content: bytes, status: int, message: str
):
    r = httpx.post(url + "/get_reward", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    ok = httpx.post(url + "/get_reward", json={"query": ["fine"]})
    assert ok.status_code == 200


def test_chunked_body_over_limit_is_413(url: str):
    def gen():
        for _ in range(20):
            yield b"x" * 100_000

    r = httpx.post(url + "/get_reward", content=gen())
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    assert httpx.get(url + "/health").status_code == 200


def test_unknown_route_and_method(url: str):
    assert httpx.get(url + "/get_reward").status_code == 405
    assert httpx.post(url + "/nope", json={}).status_code == 404


def test_bearer_token_when_env_var_set(base_config: ServerConfig, scorer: Scorer, monkeypatch):
    monkeypatch.setenv("BIASGRPO_TEST_TOKEN", "s3cret")
    config = replace(base_config, token_env="BIASGRPO_TEST_TOKEN")
    body = {"query": [PROMPTS[0] + RESPONSES[0]], "prompts": [PROMPTS[0]]}
    with running(config) as url:
        assert httpx.post(url + "/get_reward", json=body).status_code == 401
        wrong = httpx.post(url + "/get_reward", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
        assert wrong.headers["www-authenticate"] == "Bearer"
        good = httpx.post(url + "/get_reward", json=body, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["rewards"][0] == pytest.approx(
            _expected(scorer, 0), abs=1e-5
        )
        health = httpx.get(url + "/health")
        assert health.status_code == 200 and health.json()["auth"] is True


def test_without_micro_batching_gives_same_results(base_config: ServerConfig, scorer: Scorer):
    with running(replace(base_config, micro_batching=False)) as url:
        responses = asyncio.run(_concurrent(url, list(range(12))))
        health = httpx.get(url + "/health").json()
    assert [r.status_code for r in responses] == [200] * 12
    np.testing.assert_allclose(
        [r.json()["rewards"][0] for r in responses], [_expected(scorer, i) for i in range(12)], atol=1e-5
    )
    assert health["batches"] == health["requests"] == 12


class _PoisonScorer:
    """A real scorer that raises for texts containing POISON (to test that the batcher isolates failures)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.precision = scorer.precision

    def score_with_info(self, texts, prompts=None):
        if any("POISON" in t for t in texts):
            raise RuntimeError("poisoned input")
        return self.scorer.score_with_info(texts, prompts=prompts)


def test_failing_request_does_not_fail_its_batch_or_the_server(base_config: ServerConfig, scorer: Scorer):
    with running(replace(base_config, max_wait_ms=20.0), scorer=_PoisonScorer(scorer)) as url:

        async def go():
            async with httpx.AsyncClient(timeout=30) as client:
                bad = client.post(url + "/get_reward", json={"query": ["POISON"]})
                good = [client.post(url + "/get_reward", json={"query": [RESPONSES[i]]}) for i in range(8)]
                return await asyncio.gather(bad, *good)

        results = asyncio.run(go())
        assert results[0].status_code == 500 and "poisoned input" in results[0].json()["error"]
        expected = scorer.score(RESPONSES[:8])
        for r, e in zip(results[1:], expected, strict=True):
            assert r.status_code == 200 and r.json()["rewards"][0] == pytest.approx(float(e), abs=1e-5)
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_config_validation(tiny_scorer_dir: Path):
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerConfig(model_dir=str(tiny_scorer_dir), max_batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        ServerConfig(model_dir=str(tiny_scorer_dir), precision="fp8")
    with pytest.raises(ValueError, match="non-empty"):
        ServerConfig(model_dir=str(tiny_scorer_dir), strip_tokens=("",))
    assert ServerConfig(model_dir="m").host == "127.0.0.1"
    queries, prompts = parse_request(b'{"query": ["a"], "prompts": [null]}', ServerConfig(model_dir="m"))
    assert queries == ["a"] and prompts == [None]


def test_cli_serve_answers_then_exits_cleanly_on_sigterm(tiny_scorer_dir: Path, scorer: Scorer):
    env = dict(os.environ, BIASGRPO_SERVE_TOKEN="")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "biasgrpo.cli",
            "serve",
            "--model",
            str(tiny_scorer_dir),
            "--port",
            "0",
            "--precision",
            "fp32",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        lines = []
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            match = re.search(r"http://127\.0\.0\.1:(\d+)/get_reward", line)
            port = int(match.group(1)) if match else None
            assert line or proc.poll() is None, "".join(lines)
        assert port, "".join(lines)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        r = httpx.post(
            url + "/get_reward", json={"query": [PROMPTS[1] + RESPONSES[1]], "prompts": [PROMPTS[1]]}
        )
        assert r.json()["rewards"][0] == pytest.approx(_expected(scorer, 1), abs=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _SlowScorer:
    """A real scorer that takes 0.3 s per model call (to have requests in flight at shutdown)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.precision = scorer.precision

    def score_with_info(self, texts, prompts=None):
        time.sleep(0.3)
        return self.scorer.score_with_info(texts, prompts=prompts)


def test_shutdown_drains_in_flight_requests(base_config: ServerConfig, scorer: Scorer):
    server = make_server(base_config, _SlowScorer(scorer))
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [
                asyncio.create_task(client.post(url + "/get_reward", json={"query": [RESPONSES[i]]}))
                for i in range(6)
            ]
            await asyncio.sleep(0.15)  # requests are queued or being scored
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    thread.join(15)
    sock.close()
    assert not thread.is_alive()
    expected = scorer.score(RESPONSES[:6])
    for r, e in zip(results, expected, strict=True):
        assert r.status_code == 200 and r.json()["rewards"][0] == pytest.approx(float(e), abs=1e-5)
