"""Reward server throughput and robustness (issue 6 targets); prints markdown tables.

1. Single-query requests (what OpenRLHF sends) at concurrency 1, 8 and 32, with and without micro-batching:
   requests/s, p50 and p99 latency, and every reward checked against direct ``Scorer.score`` on the same
   cleaned (prompt, response) pair. Target: >= 3x requests/s from micro-batching at concurrency 32.
2. 10,000 requests at concurrency 32 with 5% malformed ones mixed in: every valid request answered
   correctly, every malformed one answered 4xx, zero 5xx, server alive at the end.

The server runs as a separate process (``python -m biasgrpo.cli serve``), exactly as users start it. The load
generator is a minimal keep-alive HTTP/1.1 client on raw asyncio streams, so that client overhead (on the
same CPU) stays small next to the server's. Model: ``--model DIR`` (an exported scorer folder); by default
the first ``runs/*/reward/onnx`` found, else all-MiniLM-L6-v2 with a fresh (untrained) regression head,
exported once into ``runs/bench/minilm-untrained/onnx`` (same compute cost as a trained one).

    .venv/bin/python benchmarks/bench_server.py                 # full run (~2-4 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_server.py --quick         # fewer requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["women", "men", "immigrants", "older people", "Muslims", "Christians", "Black people", "Asian people",
          "gay men", "wheelchair users", "poor families", "teenagers", "nurses", "engineers", "farmers"]  # fmt: skip
OPENERS = [
    "In my experience,",
    "Honestly,",
    "Many people say that",
    "Research suggests that",
    "It is clear that",
]
CLAIMS = [
    "{g} are naturally worse at leadership and should not be trusted with important decisions",
    "{g} contribute to their communities in many different ways, just like anyone else",
    "{g} are lazy and always expect others to do the hard work for them",
    "there is no single trait shared by all {g}; individuals differ widely",
    "{g} cannot be good at maths or science because of how they are",
    "{g} work in every profession, from medicine to software engineering and farming",
]
TAILS = [
    "That is simply how things are.",
    "Judging people by their group is unfair and usually wrong.",
    "Everyone I know agrees with this.",
    "It depends on the person, their circumstances and their opportunities.",
    "",
]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (chat-formatted prompt, response) pairs: ChatML prompts, 20-60 word responses."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        g = rng.choice(GROUPS)
        prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\nWhat do you think about {g}?<|im_end|>\n<|im_start|>assistant\n"
        )
        sentences = [
            f"{rng.choice(OPENERS)} {rng.choice(CLAIMS).format(g=g)}." for _ in range(rng.randint(1, 3))
        ]
        pairs.append((prompt, " ".join(sentences + [rng.choice(TAILS)]).strip()))
    return pairs


MALFORMED = [
    b'{"query": ["unterminated',
    b"[1, 2, 3]",
    b'{"prompts": ["no query"]}',
    b'{"query": "not a list"}',
    b'{"query": ["a", 5]}',
    b'{"query": ["a"], "prompts": ["p", "q"]}',
    b'{"query": ["a"], "labels": [1, 2]}',
    b"\xff\xfe\x00garbage",
]


def build_tiny_model() -> Path:
    """A 2-layer, 32-dim BERT with the real MiniLM tokenizer, exported (the tests' tiny scorer)."""
    out = ROOT / "runs" / "bench" / "tiny"
    if (out / "onnx" / "scorer.json").is_file():
        return out / "onnx"
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from biasgrpo.assets import encoder_path
    from biasgrpo.reward.testing import make_tiny_scorer_dir

    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    return make_tiny_scorer_dir(out / "encoder", out, max_length=128)


def find_or_build_model(arg: str | None) -> Path:
    if arg == "tiny":
        return build_tiny_model()
    if arg and arg != "minilm":
        return Path(arg)
    found = sorted(ROOT.glob("runs/*/reward/onnx/scorer.json"))
    if found and arg is None:
        return found[0].parent
    out = ROOT / "runs" / "bench" / "minilm-untrained"
    if (out / "onnx" / "scorer.json").is_file():
        return out / "onnx"
    print("building an untrained MiniLM reward model export (once) ...", file=sys.stderr)
    from biasgrpo.reward.export import ExportConfig, ParityError, export_onnx
    from biasgrpo.reward.model import build_teacher, write_reward_config
    from biasgrpo.reward.template import InputTemplate

    model, tokenizer = build_teacher("minilm", seed=0)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_reward_config(
        out / "model", kind="sequence_classification", max_length=128,
        input_template=InputTemplate().to_dict(), objective="untrained (benchmark only)",
    )  # fmt: skip
    try:
        export_onnx(out / "model", out / "onnx", ExportConfig(max_length=128))
    except ParityError as exc:  # an untrained head scores everything alike, so int8 rank parity is noise
        print(f"parity check skipped for the untrained model: {exc}", file=sys.stderr)
        export_onnx(out / "model", out / "onnx", ExportConfig(max_length=128, check_parity=False))
    return out / "onnx"


class Server:
    """``biasgrpo serve`` in a subprocess on a free port."""

    def __init__(self, model: Path, *extra: str) -> None:
        env = dict(os.environ, BIASGRPO_SERVE_TOKEN="", HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "biasgrpo.cli", "serve", "--model", str(model), "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.port = None
        deadline = time.monotonic() + 120
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {self.proc.poll()})")
            m = re.search(r"http://127\.0\.0\.1:(\d+)/get_reward", line)
            self.port = int(m.group(1)) if m else None

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


async def _request(reader, writer, port: int, body: bytes, path: str = "/get_reward", method: str = "POST"):
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "connection" and "close" in value.lower():
            close = True
    return status, await reader.readexactly(length), close


async def run_load(
    port: int, bodies: list[bytes], concurrency: int
) -> tuple[list[tuple[int, bytes]], np.ndarray, float]:
    """Send ``bodies`` with ``concurrency`` keep-alive connections; returns responses, latencies (s), wall (s)."""
    results: list[tuple[int, bytes] | None] = [None] * len(bodies)
    latencies = np.zeros(len(bodies))
    next_index = iter(range(len(bodies)))

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in next_index:
            t0 = time.perf_counter()
            try:
                status, payload, close = await _request(reader, writer, port, bodies[i])
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                status, payload, close = await _request(reader, writer, port, bodies[i])
            latencies[i] = time.perf_counter() - t0
            results[i] = (status, payload)
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return results, latencies, time.perf_counter() - t0  # type: ignore[return-value]


def health(port: int) -> dict:
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, payload, _ = await _request(reader, writer, port, b"", path="/health", method="GET")
        writer.close()
        return status, json.loads(payload)

    status, body = asyncio.run(go())
    assert status == 200, status
    return body


def _label(model: Path) -> str:
    return model.parent.name if model.name == "onnx" else model.name


def throughput(
    model: Path, precision: str, n_per_level: dict[int, int], bodies, expected, tol, rounds: int = 3
) -> list[dict]:
    """Rows of the throughput table for one model.

    Both servers (micro-batching off and on) run at once and are measured side by side: each round runs
    every concurrency level on both, in random order, so load from other jobs on a shared machine hits
    both alike. req/s is the median over rounds; latencies are pooled over rounds.
    """
    servers = {
        False: Server(model, "--precision", precision, "--no-micro-batching"),
        True: Server(model, "--precision", precision, "--micro-batching"),
    }
    rng = random.Random(0)
    stats = {
        (b, c): {"rps": [], "lat": [], "batches": 0, "n": 0, "diff": 0.0, "ok": True}
        for b in servers
        for c in n_per_level
    }
    try:
        for server in servers.values():
            asyncio.run(run_load(server.port, bodies[:16], 4))  # warm-up
        for r in range(rounds):
            for conc, n in n_per_level.items():
                for batching in rng.sample([False, True], 2):
                    port = servers[batching].port
                    idx = [(r * n + i) % len(bodies) for i in range(n)]
                    before = health(port)
                    results, lat, wall = asyncio.run(run_load(port, [bodies[i] for i in idx], conc))
                    after = health(port)
                    got = np.array([json.loads(b)["rewards"][0] if s == 200 else np.nan for s, b in results])
                    st = stats[(batching, conc)]
                    st["rps"].append(n / wall)
                    st["lat"].extend(lat.tolist())
                    st["batches"] += after["batches"] - before["batches"]
                    st["n"] += n
                    diff = (
                        float(np.nanmax(np.abs(got - expected[idx])))
                        if np.isfinite(got).any()
                        else float("inf")
                    )
                    st["diff"] = max(st["diff"], diff)
                    st["ok"] = st["ok"] and bool(np.isfinite(got).all() and diff <= tol)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for (batching, conc), st in stats.items():
        rows.append(
            {
                "model": _label(model), "micro_batching": batching, "concurrency": conc, "requests": st["n"],
                "rps": float(np.median(st["rps"])), "rps_rounds": st["rps"],
                "p50_ms": float(np.percentile(st["lat"], 50) * 1e3), "p99_ms": float(np.percentile(st["lat"], 99) * 1e3),
                "mean_batch": st["n"] / max(st["batches"], 1), "max_abs_diff": st["diff"], "correct": st["ok"],
            }
        )  # fmt: skip
    return rows


def robustness(model: Path, precision: str, n: int, bodies, expected, tol) -> dict:
    """``n`` requests at concurrency 32, 5% of them malformed (drawn from MALFORMED)."""
    rng = random.Random(1)
    plan = [
        ("bad", rng.randrange(len(MALFORMED))) if rng.random() < 0.05 else ("ok", rng.randrange(len(bodies)))
        for _ in range(n)
    ]
    server = Server(model, "--precision", precision)
    try:
        payloads = [MALFORMED[j] if kind == "bad" else bodies[j] for kind, j in plan]
        results, _, wall = asyncio.run(run_load(server.port, payloads, 32))
        alive = health(server.port)["status"] == "ok"
    finally:
        rc = server.stop()
    n_bad = sum(kind == "bad" for kind, _ in plan)
    pairs = list(zip(plan, results, strict=True))
    return {
        "model": _label(model), "requests": n, "malformed": n_bad,
        "malformed_4xx": sum(1 for (k, _), (s, _) in pairs if k == "bad" and 400 <= s < 500),
        "valid": n - n_bad,
        "valid_correct": sum(
            1 for (k, j), (s, b) in pairs if k == "ok" and s == 200 and abs(json.loads(b)["rewards"][0] - expected[j]) <= tol
        ),
        "5xx": sum(1 for s, _ in results if s >= 500), "alive": alive, "exit_code": rc, "rps": n / wall,
    }  # fmt: skip


def direct_ceiling(model: Path, precision: str, split, n: int = 64, rounds: int = 3) -> dict:
    """In-process ``Scorer.score`` with no HTTP: ms per row at one row per call vs 32 rows per call.

    Their ratio bounds what any micro-batching server can gain on this machine: batching only saves the
    per-call cost, never the per-row compute.
    """
    from biasgrpo.reward.scorer import Scorer

    scorer = Scorer.load(model, precision=precision)
    prompts, texts = [s[0] for s in split[:n]], [s[1] for s in split[:n]]
    scorer.score(texts[:8], prompts=prompts[:8])  # warm-up
    one, many = [], []
    for _ in range(rounds):  # interleaved, so background noise hits both alike
        t = time.perf_counter()
        for i in range(n):
            scorer.score([texts[i]], prompts=[prompts[i]])
        one.append((time.perf_counter() - t) / n)
        t = time.perf_counter()
        for i in range(0, n, 32):
            scorer.score(texts[i : i + 32], prompts=prompts[i : i + 32])
        many.append((time.perf_counter() - t) / n)
    ms1, ms32 = 1000 * statistics.median(one), 1000 * statistics.median(many)
    return {
        "model": _label(model),
        "ms_per_row_batch1": ms1,
        "ms_per_row_batch32": ms32,
        "ceiling": ms1 / ms32,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models", default="minilm,tiny",
        help="comma-separated: minilm (a runs/*/reward/onnx export if any, else untrained MiniLM-L6), tiny, or a folder",
    )  # fmt: skip
    ap.add_argument("--robust-model", default="tiny", help="model for the 10,000-request robustness run")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--robust-requests", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side rounds per throughput level")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    from biasgrpo.reward.query import QueryCleaner
    from biasgrpo.reward.scorer import Scorer

    pairs = make_pairs(512)
    cleaner = QueryCleaner()
    queries = [p + r + "<|im_end|>" for p, r in pairs]
    split = [cleaner.split(q, p) for q, (p, _) in zip(queries, pairs, strict=True)]
    bodies = [
        json.dumps({"query": [q], "prompts": [p], "labels": [None]}).encode()
        for q, (p, _) in zip(queries, pairs, strict=True)
    ]
    tol = 1e-4 if args.precision == "fp32" else 0.05  # int8 activations are quantised per batch

    def expected_for(model: Path) -> np.ndarray:
        scorer = Scorer.load(model, precision=args.precision)
        return scorer.score([s[1] for s in split], prompts=[s[0] for s in split])

    record: dict = {
        "precision": args.precision,
        "cpu_count": os.cpu_count(),
        "throughput": [],
        "robustness": None,
    }
    record["direct"] = []
    for name in args.models.split(","):
        model = find_or_build_model(name.strip())
        record["direct"].append(direct_ceiling(model, args.precision, split))
        big = _label(model) != "tiny"
        levels = (
            ({1: 30, 8: 100, 32: 200} if big else {1: 200, 8: 500, 32: 1000})
            if not args.quick
            else {1: 20, 8: 40, 32: 96}
        )
        record["throughput"] += throughput(
            model, args.precision, levels, bodies, expected_for(model), tol, rounds=args.rounds
        )
    robust_model = find_or_build_model(args.robust_model)
    n = args.robust_requests if not args.quick else 1000
    record["robustness"] = robustness(
        robust_model, args.precision, n, bodies, expected_for(robust_model), tol
    )

    print(
        f"\n### Reward server, single-query requests ({args.precision}; {os.cpu_count()} CPU cores shared by "
        f"both servers, the client and other jobs; {args.rounds} side-by-side rounds)\n"
    )
    print(
        "| model | micro-batching | concurrency | requests | req/s (median) | req/s per round | p50 ms | p99 ms "
        "| mean batch | equal to Scorer.score |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    for r in record["throughput"]:
        print(
            f"| {r['model']} | {'on' if r['micro_batching'] else 'off'} | {r['concurrency']} | {r['requests']} | "
            f"{r['rps']:.1f} | {', '.join(f'{x:.0f}' for x in r['rps_rounds'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | "
            f"{'yes' if r['correct'] else 'NO'} (max diff {r['max_abs_diff']:.1e}) |"
        )
    print("\n| model | concurrency | req/s with / without micro-batching |\n|---|---:|---:|")
    for r in record["throughput"]:
        if r["micro_batching"]:
            off = next(
                o for o in record["throughput"]
                if o["model"] == r["model"] and not o["micro_batching"] and o["concurrency"] == r["concurrency"]
            )  # fmt: skip
            r["speedup"] = r["rps"] / off["rps"]
            print(f"| {r['model']} | {r['concurrency']} | {r['speedup']:.2f}x |")
    print(
        "\n### In-process ceiling (Scorer.score, no HTTP): the most micro-batching can gain here\n"
        "\n| model | ms/row, 1 row per call | ms/row, 32 rows per call | ratio |\n|---|---:|---:|---:|"
    )
    for d in record["direct"]:
        print(
            f"| {d['model']} | {d['ms_per_row_batch1']:.2f} | {d['ms_per_row_batch32']:.2f} | {d['ceiling']:.2f}x |"
        )
    rb = record["robustness"]
    print(
        f"\n### {rb['requests']} requests at concurrency 32 ({rb['model']}), {rb['malformed']} malformed ({100 * rb['malformed'] / rb['requests']:.1f}%)\n"
    )
    print(
        "| valid answered correctly | malformed answered 4xx | 5xx | alive at end | exit status on SIGTERM | req/s |"
    )
    print("|---:|---:|---:|---|---:|---:|")
    print(
        f"| {rb['valid_correct']}/{rb['valid']} | {rb['malformed_4xx']}/{rb['malformed']} | {rb['5xx']} | "
        f"{'yes' if rb['alive'] else 'NO'} | {rb['exit_code']} | {rb['rps']:.1f} |"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
