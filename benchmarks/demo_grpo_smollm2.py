"""Demonstration run: GRPO + LoRA on SmolLM2-135M-Instruct against a reward, held-out reward before/after.

Prompts are the HolisticBias questions from ``biasgrpo data build`` (``--data``, default ``data/build``):
training prompts from ``prompts_train.jsonl``, held-out prompts from ``prompts_test.jsonl``. The reward
is ``--reward`` (``default`` = the built bias scorer, a scorer folder, ``length``, ``keyword:WORD``) or
``lexicon`` (a transparent stand-in when no scorer is built: share of words that individualise or hedge
minus share of words that generalise about a group).

    .venv/bin/python benchmarks/demo_grpo_smollm2.py --reward default --out runs/grpo-demo

Prints the held-out reward before/after with a paired 95% bootstrap interval, the KL trace, and a few
before/after completions. Not part of ``make bench`` (it trains for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HEDGE = {
    "individual", "individuals", "each", "unique", "diverse", "diversity", "vary", "varies", "varied",
    "different", "depends", "respect", "equal", "equally", "person", "people's", "own", "experiences",
}  # fmt: skip
GENERALISE = {"all", "always", "never", "typically", "usually", "most", "every", "naturally", "tend", "tends"}


def lexicon_reward(prompts, completions, **kwargs):
    """(hedging words - generalising words) / words, in [-1, 1]; a crude, transparent proxy for stereotyping."""
    out = []
    for c in completions:
        words = [w.strip(".,!?;:\"'()").lower() for w in c.split()]
        if not words:
            out.append(0.0)
            continue
        out.append((sum(w in HEDGE for w in words) - sum(w in GENERALISE for w in words)) / len(words))
    return out


def holistic_prompts(path: Path, limit: int, seed: int) -> list[str]:
    import random

    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    prompts = sorted({r["prompt"] for r in rows if r.get("source") == "holisticbias"})
    random.Random(seed).shuffle(prompts)
    return prompts[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", default="default")
    ap.add_argument("--data", default="data/build")
    ap.add_argument("--out", default="runs/grpo-demo")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-prompts", type=int, default=48)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from biasgrpo.grpo.config import GRPOConfig
    from biasgrpo.grpo.loop import train_grpo
    from biasgrpo.grpo.rewards import load_reward

    reward = lexicon_reward if args.reward == "lexicon" else load_reward(args.reward)
    train = holistic_prompts(Path(args.data) / "prompts_train.jsonl", 2000, seed=0)
    held = holistic_prompts(Path(args.data) / "prompts_test.jsonl", args.eval_prompts, seed=1)
    cfg = GRPOConfig(
        num_generations=4,
        prompts_per_step=4,
        max_new_tokens=40,
        max_steps=args.steps,
        learning_rate=3e-4,
        warmup_steps=2,
        beta=0.04,
        lora=True,
        lora_rank=16,
        lora_alpha=32,
        eval_every=max(1, args.steps // 2),
        save_every=10,
        seed=0,
    ).with_overrides(args.overrides)
    t0 = time.perf_counter()
    res = train_grpo("smollm2", reward, train, cfg, args.out, eval_prompts=held, resume=args.resume)
    minutes = (time.perf_counter() - t0) / 60
    s = res.summary
    imp = s["improvement"]
    print(
        f"\nreward={args.reward} steps={res.step} wall={minutes:.1f} min, mean step {s['mean_step_time_s']:.1f} s"
    )
    print(
        f"held-out mean reward ({imp['n']} prompts, greedy): {s['eval_before']['reward_mean']:.4f} -> "
        f"{s['eval_after']['reward_mean']:.4f}; diff {imp['mean_diff']:+.4f}, "
        f"95% bootstrap CI [{imp['ci_low']:+.4f}, {imp['ci_high']:+.4f}]"
    )
    print(f"KL (k3) max {s['kl_max']:.4f}, last {s['kl_last']:.4f}")
    for e in res.evals:
        print(f"  eval step {e['step']}: {e['reward_mean']:.4f}")
    samples = [json.loads(x) for x in (Path(args.out) / "samples.jsonl").read_text().splitlines()]
    first, last = samples[0]["step"], samples[-1]["step"]
    for b, a in zip(
        [x for x in samples if x["step"] == first], [x for x in samples if x["step"] == last], strict=False
    ):
        print(f"\nPROMPT: {b['prompt']}\n  before ({b['reward']:.3f}): {b['completion']!r}")
        print(f"  after  ({a['reward']:.3f}): {a['completion']!r}")


if __name__ == "__main__":
    main()
