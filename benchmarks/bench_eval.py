"""Time the policy evaluation per benchmark on SmolLM2-135M-Instruct; prints markdown tables.

Sizes the demo: seconds per benchmark and per item at the given subsample sizes, plus the metrics with
their 95% intervals. BOLD generation needs a scorer folder (``--reward``); without one it is skipped.

    .venv/bin/python benchmarks/bench_eval.py [--bbq 200 --stereoset 200 --crows 200 --bold 100 --ppl 100]
        [--threads 1] [--reward runs/demo/reward/onnx] [--bold-prompts data/x/prompts_test.jsonl]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("bbq", 200), ("stereoset", 200), ("crows", 200), ("bold", 100), ("ppl", 100)):
        ap.add_argument(f"--{name}", type=int, default=default, help=f"items of {name} (0 = skip)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reward", default=None, help="scorer folder for BOLD generation")
    ap.add_argument("--bold-prompts", default=None)
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from biasgrpo.evaluate import (
        EvalConfig,
        evaluate_model,
        results_table,
        scorer_reward_fn,
        timing_table,
        write_eval,
    )

    sizes = {k: getattr(args, k) for k in ("bbq", "stereoset", "crows", "bold", "ppl")}
    if not args.reward:
        sizes["bold"] = 0
    cfg = EvalConfig(
        benchmarks=[k for k, v in sizes.items() if v > 0],
        **{f"n_{k}": v for k, v in sizes.items() if v > 0},
        torch_threads=args.threads,
        batch_size=args.batch_size,
        bold_prompts=args.bold_prompts,
    )
    reward = scorer_reward_fn(args.reward) if args.reward else None
    t0 = time.perf_counter()
    res = evaluate_model(args.model, cfg, reward)
    print(f"## Evaluation of {args.model} ({time.perf_counter() - t0:.0f} s wall, threads={args.threads})\n")
    print(timing_table(res))
    print(results_table(res, headline_only=True))
    if args.out:
        write_eval(res, args.out)


if __name__ == "__main__":
    main()
