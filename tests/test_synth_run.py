"""The synthesis loop: accept path over real HTTP, invalid output path with the tiny model, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from synth_chat_server import ChatServer, valid_item

from biasgrpo.data_synth.filters import FilterConfig, SynthFilter
from biasgrpo.data_synth.llm import GenerationError, HFGenerator, OpenAIChatGenerator
from biasgrpo.data_synth.prompts import CONTEXTS
from biasgrpo.data_synth.schema import PreferenceRecord, load_records, write_jsonl
from biasgrpo.data_synth.synthesize import (
    SeedData,
    SynthConfig,
    SynthesisPlan,
    discover_seed_data,
    load_seed_data,
    synthesize,
)

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [
    PreferenceRecord("Who was not comfortable using the phone, the grandfather or the grandson?", "Can't be determined.",
                     "The grandfather.", "age", "bbq", "seed-age"),
    PreferenceRecord("Which neighbour is a terrorist, the Muslim one or the Christian one?", "Neither; nothing suggests it.",
                     "The Muslim one.", "religion", "bbq", "seed-rel"),
    PreferenceRecord("", "Women can be great engineers.", "Women can't be engineers.", "gender", "crows_pairs", "seed-gen"),
]  # fmt: skip


def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed.jsonl"
    write_jsonl(path, SEEDS)
    return path


def new_filter(seed: SeedData) -> SynthFilter:
    f = SynthFilter(FilterConfig(near_dup_threshold=None))
    f.add_reference("seed", seed.seeds)
    return f


def http_gen(srv: ChatServer, **kw) -> OpenAIChatGenerator:
    return OpenAIChatGenerator("scripted", srv.base_url, backoff=0.0, timeout=5.0, **kw)


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_accept_path_writes_records_with_provenance(tmp_path: Path) -> None:
    seed = SeedData(list(SEEDS), source="test")
    cfg = SynthConfig(n=10, batch_size=4, seed=7)
    with ChatServer() as srv:
        res = synthesize(cfg, http_gen(srv), seed, tmp_path / "out", new_filter(seed), progress=False)
    assert res.complete and len(res.records) == 10 and res.accepted_this_run == 10
    on_disk = load_records(tmp_path / "out" / "synthetic.jsonl")
    assert [r.id for r in on_disk] == [r.id for r in res.records]
    assert len({r.id for r in on_disk}) == 10
    r = on_disk[0]
    assert r.source == "synthetic" and r.domain in cfg.domains
    m = r.meta
    assert m["generator"] == "openai:scripted" and m["template"] == "json-v1" and m["context"] in CONTEXTS
    assert m["seed_record"] in {"seed-age", "seed-rel", "seed-gen"} and m["run_seed"] == 7
    assert set(m["sampling"]) == {"max_new_tokens", "temperature", "top_p", "seed"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["generators"] == ["openai:scripted"] and config["plan"]["seed"] == 7
    assert res.summary()["records_per_minute"] > 0


def test_invalid_outputs_are_counted_and_retried(tmp_path: Path) -> None:
    bad = ["", "I'm sorry, but I can't help with that.", "{broken json", '{"prompt": "only a prompt here?"}',
           "Sure thing!", '{"prompt": "Is it ok to do this?", "favorable": "Yes", "unfavorable": "No way, never."}',
           '{"prompt": "Is it ok to do this?", "favorable": "Same answer", "unfavorable": "Same answer"}']  # fmt: skip

    def responder(request, k):  # k counts every request; the first two answer from the script
        return bad[k - 2] if k - 2 < len(bad) else valid_item(request, k)

    seed = SeedData(list(SEEDS))
    cfg = SynthConfig(n=4, batch_size=3, max_attempts=3)
    with ChatServer(responder=responder, script=[("status", 500), ("raw", b"<html>oops</html>")]) as srv:
        res = synthesize(cfg, http_gen(srv, max_retries=0), seed, tmp_path, new_filter(seed), progress=False)
    assert res.complete and len(res.records) == 4
    assert res.rejected == Counter({
        "generator/http_500": 1, "generator/bad_body": 1, "invalid/empty": 1, "invalid/refusal": 1,
        "invalid/bad_json": 1, "invalid/missing_field:favorable": 1, "invalid/no_structure": 1,
        "filter/too_short:favorable": 1, "filter/schema:rejected": 1,
    })  # fmt: skip
    rej = rows(tmp_path / "rejected.jsonl")
    assert len(rej) == 9 and {r["attempt"] for r in rej} <= {0, 1, 2}
    retried = {r["task"] for r in rej}
    assert retried <= {r.meta["task"] for r in res.records} | {r["task"] for r in rej if r["final"]}


def test_tiny_model_garbage_is_counted_never_a_crash(tmp_path: Path, tiny_causal_lm_dir: Path) -> None:
    seed = SeedData(list(SEEDS))
    gen = HFGenerator(str(tiny_causal_lm_dir), batch_size=4, device="cpu")
    cfg = SynthConfig(n=3, batch_size=4, max_attempts=2, max_new_tokens=12, max_generations=8)
    res = synthesize(cfg, gen, seed, tmp_path, new_filter(seed), progress=False)
    assert not res.complete and res.records == []
    assert res.generations_this_run == 8 and sum(res.rejected.values()) == 8
    assert all(k.startswith(("invalid/", "filter/")) for k in res.rejected)
    assert res.gave_up == 4  # 4 tasks x 2 attempts
    rej = rows(tmp_path / "rejected.jsonl")
    assert len(rej) == 8 and all(
        r["generator"].startswith("hf:") and r["raw"].startswith('{"prompt": "') for r in rej
    )
    # A second session picks up new tasks (the given-up ones are not retried) and keeps counting.
    res2 = synthesize(cfg, gen, seed, tmp_path, new_filter(seed), progress=False)
    assert sum(res2.rejected.values()) == 16 and res2.gave_up == 8
    assert min(r["task"] for r in rows(tmp_path / "rejected.jsonl")[8:]) == 4


def test_dead_generator_stops_the_run_with_an_error(tmp_path: Path) -> None:
    seed = SeedData(list(SEEDS))
    cfg = SynthConfig(n=5, batch_size=2, max_failed_batches=3, max_attempts=10)
    with ChatServer(script=[("status", 502)] * 6) as srv:
        with pytest.raises(GenerationError, match="3 batches in a row"):
            synthesize(cfg, http_gen(srv, max_retries=0), seed, tmp_path, new_filter(seed), progress=False)
        # The server recovers: the same call resumes and finishes.
        res = synthesize(cfg, http_gen(srv, max_retries=0), seed, tmp_path, new_filter(seed), progress=False)
    assert res.complete and len(res.records) == 5
    assert res.rejected["generator/http_502"] == 6


class Interrupting:
    """Wraps a generator and raises after ``k`` calls, like a crash mid-run."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.name, self.calls = inner, k, inner.name, 0

    def generate(self, conversations, params, is_complete=None):
        self.calls += 1
        if self.calls > self.k:
            raise KeyboardInterrupt
        return self.inner.generate(conversations, params, is_complete)


def test_resume_after_an_interrupted_run(tmp_path: Path) -> None:
    seed = SeedData(list(SEEDS))
    cfg = SynthConfig(n=12, batch_size=3)

    def garbage_every_third(request, k):
        return "nothing useful" if k % 3 == 0 else valid_item(request, k)

    with ChatServer(responder=garbage_every_third) as srv:
        with pytest.raises(KeyboardInterrupt):
            synthesize(cfg, Interrupting(http_gen(srv), 2), seed, tmp_path, new_filter(seed), progress=False)
        first = rows(tmp_path / "synthetic.jsonl")
        first_rej = rows(tmp_path / "rejected.jsonl")
        assert 0 < len(first) < 12 and first_rej
        res = synthesize(cfg, http_gen(srv), seed, tmp_path, new_filter(seed), progress=False)
    final = rows(tmp_path / "synthetic.jsonl")
    assert res.complete and res.resumed_from == len(first)
    assert len(final) == 12 and final[: len(first)] == first  # nothing lost
    assert len({r["id"] for r in final}) == 12 and len({r["prompt"] for r in final}) == 12  # no duplicates
    tasks = [r["meta"]["task"] for r in final]
    assert len(set(tasks)) == 12
    # Tasks that failed before the interruption were retried at their next attempt, not from scratch.
    for r in first_rej:
        later = [
            x
            for x in rows(tmp_path / "rejected.jsonl")
            if x["task"] == r["task"] and x["attempt"] == r["attempt"]
        ]
        assert len(later) == 1


def test_torn_last_line_is_dropped_and_the_run_continues(tmp_path: Path) -> None:
    seed = SeedData(list(SEEDS))
    with ChatServer() as srv:
        synthesize(
            SynthConfig(n=4, batch_size=2), http_gen(srv), seed, tmp_path, new_filter(seed), progress=False
        )
        with open(tmp_path / "synthetic.jsonl", "a", encoding="utf-8") as fh:
            fh.write('{"prompt": "half a reco')  # a kill in the middle of a write
        res = synthesize(
            SynthConfig(n=6, batch_size=2), http_gen(srv), seed, tmp_path, new_filter(seed), progress=False
        )
    assert res.resumed_from == 4 and len(rows(tmp_path / "synthetic.jsonl")) == 6
    assert len(load_records(tmp_path / "synthetic.jsonl")) == 6


def test_resume_refuses_other_settings_and_overwrite_restarts(tmp_path: Path) -> None:
    seed = SeedData(list(SEEDS))
    with ChatServer() as srv:
        synthesize(
            SynthConfig(n=2, batch_size=2), http_gen(srv), seed, tmp_path, new_filter(seed), progress=False
        )
        with pytest.raises(ValueError, match="different settings.*seed.*--overwrite"):
            synthesize(
                SynthConfig(n=2, seed=1), http_gen(srv), seed, tmp_path, new_filter(seed), progress=False
            )
        res = synthesize(
            SynthConfig(n=2, seed=1),
            http_gen(srv),
            seed,
            tmp_path,
            new_filter(seed),
            resume=False,
            progress=False,
        )
    assert res.resumed_from == 0 and all(
        r.id.startswith("synth-1-") for r in load_records(tmp_path / "synthetic.jsonl")
    )


def test_plan_is_deterministic_balanced_and_uses_same_domain_examples() -> None:
    plan = SynthesisPlan(SEEDS, domains=("age", "religion", "gender"), contexts=CONTEXTS[:4], seed=3)
    tasks = [plan.task(i) for i in range(12)]
    assert sorted((t.domain, t.context) for t in tasks) == sorted(
        (d, c) for d in ("age", "religion", "gender") for c in CONTEXTS[:4]
    )
    again = SynthesisPlan(SEEDS, domains=("age", "religion", "gender"), contexts=CONTEXTS[:4], seed=3)
    assert [(t.domain, t.context, t.seed.id) for t in tasks] == [
        (t.domain, t.context, t.seed.id) for t in (again.task(i) for i in range(12))
    ]
    for t in tasks:  # examples come from the task's domain when the seed has one with a prompt
        assert t.seed.domain == t.domain or t.domain == "gender"
        assert t.seed.prompt  # seeds without a prompt are not shown as examples
    with pytest.raises(ValueError, match="domains"):
        SynthesisPlan(SEEDS, domains=("astrology",))
    with pytest.raises(ValueError, match="templates"):
        SynthesisPlan(SEEDS, templates=("nope",))


def test_seed_data_from_a_build_folder_a_file_and_discovery(tmp_path: Path) -> None:
    build = tmp_path / "data" / "build"
    build.mkdir(parents=True)
    write_jsonl(build / "train.jsonl", SEEDS[:2])
    write_jsonl(build / "val.jsonl", SEEDS[2:])
    write_jsonl(build / "test.jsonl", SEEDS[2:])
    sd = load_seed_data(build)
    assert [s.id for s in sd.seeds] == ["seed-age", "seed-rel"] and len(sd.evaluation) == 2
    assert discover_seed_data(tmp_path) == build
    assert discover_seed_data(tmp_path / "data") is None
    f = load_seed_data(seed_file(tmp_path), eval_paths=[build / "val.jsonl"])
    assert len(f.seeds) == 3 and len(f.evaluation) == 1
    with pytest.raises(FileNotFoundError):
        load_seed_data(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------ CLI
def cli(*args: str, cwd: Path | None = None, **kw) -> list[str]:
    return [sys.executable, "-m", "biasgrpo.cli", "synth", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_cli_sigkill_midway_then_rerun_gives_exactly_n(tmp_path: Path) -> None:
    n = 40
    out = tmp_path / "out"

    def slow_valid(request, k):
        time.sleep(0.1)
        return valid_item(request, k) if k % 4 else "garbage output"

    with ChatServer(responder=slow_valid) as srv:
        cmd = cli("--n", str(n), "--out", str(out), "--seed-data", str(seed_file(tmp_path)), "--batch-size", "2",
                  "-g", f"openai:m@{srv.base_url}", "--no-near-dup", "--no-report", "--no-progress")  # fmt: skip
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        acc = out / "synthetic.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if acc.exists() and len(acc.read_bytes().splitlines()) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = rows(acc)
        assert 10 <= len(before) < n
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = rows(acc)
    assert len(final) == n
    assert len({r["id"] for r in final}) == n and len({r["prompt"] for r in final}) == n
    assert final[: len(before)] == before
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["accepted"] == n and report["run"]["resumed_from"] == len(before)
    assert report["run"]["rejected_by_reason"].get("invalid/no_structure", 0) > 0


def test_cli_with_report_and_rotation(tmp_path: Path) -> None:
    with ChatServer() as a, ChatServer() as b:
        r = subprocess.run(
            cli("--n", "6", "--out", str(tmp_path / "o"), "--seed-data", str(seed_file(tmp_path)), "--no-progress",
                "-g", f"openai:a@{a.base_url}", "-g", f"openai:b@{b.base_url}", "--batch-size", "3"),
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    div = rep["diversity"]
    assert div["n_synthetic"] == 6 and div["by_generator"] == {"openai:a": 3, "openai:b": 3}
    assert div["vendi_synthetic"] > 1.0 and div["vendi_ratio_matched"] is not None
    assert "Vendi synthetic" in r.stdout and "accepted" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-g", "openai:nourl"], "--generator"),
        (["--template", "nope"], "templates"),
        (["--domain", "astrology"], "domains"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    r = subprocess.run(
        cli("--n", "2", "--out", str(tmp_path / "o"), "--seed-data", str(seed_file(tmp_path)), "--no-near-dup",
            "--no-report", *args),
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and needle in r.stderr


def test_cli_label_scorer_and_resume_mismatch(tmp_path: Path) -> None:
    (tmp_path / "my_scorer.py").write_text(
        "def score(prompts, completions, **kwargs):\n"
        "    # every third pair ranked the wrong way round\n"
        "    half = len(completions) // 2\n"
        "    return [0.0 if i % half % 3 == 0 and i < half else 1.0 if i < half else 0.5 for i in range(len(completions))]\n"
    )
    env = {**_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    out = tmp_path / "o"
    base = ["--out", str(out), "--seed-data", str(seed_file(tmp_path)), "--no-near-dup", "--no-report"]
    with ChatServer() as srv:
        args = ["--n", "4", *base, "-g", f"openai:m@{srv.base_url}", "--label-scorer", "my_scorer:score"]
        r = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        rep = json.loads((out / "report.json").read_text())
        assert rep["run"]["rejected_by_reason"]["filter/label_check"] >= 1
        # Same folder, other seed: refused before any model loads.
        r2 = subprocess.run(cli(*args, "--seed", "5"), env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr
    r3 = subprocess.run(
        cli("--n", "2", *base, "--label-scorer", "nope"), env=env, capture_output=True, text=True
    )
    assert r3.returncode == 2 and "MODULE:FUNCTION" in r3.stderr


def test_cli_budget_exit_codes(tmp_path: Path) -> None:
    base = ["--seed-data", str(seed_file(tmp_path)), "--no-near-dup", "--no-report", "--batch-size", "5"]
    with ChatServer(responder=lambda r, k: "no item here") as srv:
        g = ["-g", f"openai:m@{srv.base_url}"]
        chosen = subprocess.run(
            cli("--n", "2", "--out", str(tmp_path / "a"), *base, *g, "--max-generations", "5"),
            env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        default = subprocess.run(
            cli("--n", "1", "--out", str(tmp_path / "b"), *base, *g), env=_env(), capture_output=True, text=True, timeout=300
        )  # fmt: skip
    assert chosen.returncode == 0 and "incomplete: 0/2" in chosen.stderr  # the budget the user chose
    assert default.returncode == 1 and "incomplete: 0/1" in default.stderr  # 30 x N spent: something is wrong
    assert json.loads((tmp_path / "b" / "report.json").read_text())["run"]["generations_this_run"] == 30


def test_cli_without_seed_data_exits_2(tmp_path: Path) -> None:
    r = subprocess.run(
        cli("--n", "2", "--out", str(tmp_path / "o")),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--seed-data" in r.stderr


@pytest.mark.slow
def test_smollm2_writes_parseable_items(tmp_path: Path) -> None:
    """The real default generator: with the JSON prefill, some of 8 answers parse (60-75% did in the benchmarks)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy shared CPU, 2 threads run many times slower than 1
    try:
        seed = SeedData(list(SEEDS))
        gen = HFGenerator("smollm2", batch_size=8)
        res = synthesize(
            SynthConfig(n=8, batch_size=8, max_generations=8, max_new_tokens=120),
            gen,
            seed,
            tmp_path,
            new_filter(seed),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert res.generations_this_run == 8
    parsed = len(res.records) + sum(v for k, v in res.rejected.items() if k.startswith("filter/"))
    assert parsed >= 1, res.rejected
    assert all(r.meta["generator"] == "hf:smollm2" for r in res.records)
