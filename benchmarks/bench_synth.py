"""Measure `biasgrpo synth` with the offline SmolLM2 on this machine, and run the SIGKILL resume test.

Runs the real CLI in a subprocess and prints a markdown table: accepted / generations, acceptance rate,
rejections by reason, records and generations per minute, the Vendi ratio against the seed, and a few
accepted samples to judge by eye. With ``--kill-after K`` it SIGKILLs the run once K records are on disk,
reruns the same command and checks that the final file holds exactly N distinct records, the K included.

Seeds: ``--seed-data`` if given, else the newest ``data/*/train.jsonl`` (``biasgrpo data build``), else a
stand-in built here from the offline BBQ files (ambiguous negative-polarity items: the "unknown" answer is
favorable, the stereotyped group's answer unfavorable; ~100 per category, about the paper's 1,145 seeds).

    python benchmarks/bench_synth.py                        # quick: N=24
    python benchmarks/bench_synth.py --n 200                # the issue's target run
    python benchmarks/bench_synth.py --n 40 --kill-after 15 # kill test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "biasgrpo"


def standin_seed(path: Path, per_category: int = 100, seed: int = 0) -> Path:
    """A seed JSONL from BBQ's ambiguous items (see the module docstring)."""
    from biasgrpo.assets import benchmark_root
    from biasgrpo.data_synth.domains import BBQ_DOMAINS
    from biasgrpo.data_synth.schema import PreferenceRecord, write_jsonl

    rng = random.Random(seed)
    records = []
    for category, domain in sorted(BBQ_DOMAINS.items()):
        items = []
        with open(benchmark_root() / "BBQ" / "data" / f"{category}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row["context_condition"] != "ambig" or row["question_polarity"] != "neg":
                    continue
                groups = {g.lower() for g in row["additional_metadata"]["stereotyped_groups"]}
                info = row["answer_info"]
                unknown = [k for k, v in info.items() if v[1] == "unknown"]
                biased = [k for k, v in info.items() if v[1] != "unknown" and v[1].lower() in groups]
                if unknown and biased:
                    items.append((row, unknown[0], biased[0]))
        for row, u, b in rng.sample(items, min(per_category, len(items))):
            records.append(
                PreferenceRecord(
                    prompt=f"{row['context']} {row['question']}",
                    chosen=f"{row[u]}. Nothing in the situation says, and guessing would rely on a stereotype.",
                    rejected=f"{row[b]}.",
                    domain=domain,
                    source="bbq",
                    id=f"bbq-{category}-{row['example_id']}",
                )
            )
    write_jsonl(path, records)
    return path


def find_seed(out: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    sys.path.insert(0, str(ROOT))
    from biasgrpo.data_synth.synthesize import discover_seed_data

    found = discover_seed_data(ROOT)
    if found is not None:
        return found
    return standin_seed(out / "seed_bbq.jsonl")


def count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_synth"))
    ap.add_argument("--seed-data", default=None)
    ap.add_argument("--generator", action="append", default=None)
    ap.add_argument("--template", action="append", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is far faster on a busy shared CPU)"
    )
    ap.add_argument("--kill-after", type=int, default=None, help="SIGKILL once this many records are written")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `biasgrpo synth` flags")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = find_seed(out, args.seed_data)
    synth_out = out / "synth"
    cmd = [str(BIN), "synth", "--n", str(args.n), "--out", str(synth_out), "--seed-data", str(seed)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--no-progress"]
    for g in args.generator or []:
        cmd += ["--generator", g]
    for t in args.template or []:
        cmd += ["--template", t]
    cmd += args.extra
    print("seed:", seed, file=sys.stderr)
    print("command:", " ".join(cmd), file=sys.stderr)

    acc = synth_out / "synthetic.jsonl"
    t0 = time.perf_counter()
    kill_note = ""
    if args.kill_after:
        subprocess.run(
            [*cmd, "--overwrite", "--max-generations", "1"], check=False, capture_output=True
        )  # warm caches
        for p in synth_out.glob("*.json*"):
            p.unlink()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and count_lines(acc) < args.kill_after:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = [json.loads(x) for x in acc.read_text(encoding="utf-8").splitlines() if x.strip()]
        kill_note = f"killed with SIGKILL at {len(before)} records on disk"
        print(kill_note, file=sys.stderr)
    else:
        subprocess.run(
            [*cmd, "--overwrite", "--max-generations", "1"], check=False, capture_output=True
        )  # warm caches
        before = []
        cmd_run = [*cmd, "--overwrite"]
        r = subprocess.run(cmd_run, text=True, capture_output=True)
        print(r.stdout[-4000:], r.stderr[-2000:], sep="\n", file=sys.stderr)
    if args.kill_after:
        r = subprocess.run(cmd, text=True, capture_output=True)
        print(r.stdout[-4000:], r.stderr[-2000:], sep="\n", file=sys.stderr)
    wall = time.perf_counter() - t0

    report = json.loads((synth_out / "report.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in acc.read_text(encoding="utf-8").splitlines() if x.strip()]
    run, div = report["run"], report.get("diversity", {})
    print(f"\n### biasgrpo synth, N={args.n}, generator={args.generator or ['smollm2']}\n")
    print("| metric | value |\n|---|---|")
    print(f"| seed | {seed} ({div.get('n_seed')} records) |")
    print(f"| accepted (final file) | {len(rows)} |")
    print(f"| generations (last run) | {run['generations_this_run']} |")
    rate = run["acceptance_rate_this_run"]
    print(f"| acceptance rate (last run) | {rate:.1%} |" if rate is not None else "| acceptance rate | - |")
    print(f"| records / minute (last run, generation loop) | {run['records_per_minute']} |")
    print(f"| generations / minute (last run) | {run['generations_per_minute']} |")
    print(f"| wall time, all runs incl. model loads (s) | {wall:.0f} |")
    print(
        f"| Vendi synthetic / seed same size / seed all | {div.get('vendi_synthetic')} / {div.get('vendi_seed_matched')} / {div.get('vendi_seed')} |"
    )
    print(f"| Vendi ratio same size (paper 72.79%) | {div.get('vendi_ratio_matched')} |")
    for reason, k in run["rejected_by_reason"].items():
        print(f"| rejected: {reason} | {k} |")
    if args.kill_after:
        ids = [r["id"] for r in rows]
        kept = {r["id"] for r in before} <= set(ids) and all(r in rows for r in before)
        ok = (
            len(rows) == args.n
            and len(set(ids)) == args.n
            and len({r["prompt"] for r in rows}) == args.n
            and kept
        )
        print(f"| kill test | {kill_note}; final {len(rows)} rows, {len(set(ids))} distinct ids, "
              f"pre-kill rows kept: {kept} -> {'PASS' if ok else 'FAIL'} |")  # fmt: skip
    print("\nSamples:\n")
    for s in div.get("samples", []):
        print(f"- **{s['domain']} / {s['context']}**  \n  prompt: {s['prompt']}  \n  favorable: {s['favorable']}  \n"
              f"  unfavorable: {s['unfavorable']}")  # fmt: skip
    if args.kill_after and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
