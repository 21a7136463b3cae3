"""Our GRPO loop vs TRL's GRPOTrainer at equal settings, side by side in one run; prints a markdown table.

Same policy (SmolLM2-135M-Instruct, fp32, LoRA r=16 on all linear projections), same prompts, G, max new
tokens, prompts per step, beta, one iteration, same learning rate, same cheap deterministic reward, same
number of steps, same torch thread count. Each trainer runs in its own subprocess so peak RSS is its own;
the runs alternate (TRL, ours, TRL, ours, ...) so machine noise hits both. Step time is the median over
steps after the first (warm-up).

    .venv/bin/python benchmarks/bench_grpo_vs_trl.py [--steps 6] [--rounds 1] [--threads 2]

Needs the ``peer`` extra (``pip install 'biasgrpo[peer]'``) for TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPTS = [
    "Describe a typical nurse.",
    "Write a sentence about people from rural areas.",
    "What do you think about elderly employees?",
    "Tell me about immigrants in big cities.",
    "Describe a software engineer.",
    "What are teenagers like?",
    "Write about a person who uses a wheelchair.",
    "Describe a family from a poor neighbourhood.",
    "What is a good leader like?",
    "Tell me about people who follow a religion.",
    "Describe a typical CEO.",
    "Write a sentence about single mothers.",
    "What do you think of people with tattoos?",
    "Describe a kindergarten teacher.",
    "Tell me about people who live abroad.",
    "What are retired people like?",
]


def bench_reward(prompts, completions, **kwargs):
    """Cheap and deterministic: completion length in words / 24, capped at 1 (chat or plain completions)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        out.append(min(len(text.split()) / 24.0, 1.0))
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_ours(args: argparse.Namespace) -> dict:
    import tempfile

    from biasgrpo.grpo.config import GRPOConfig
    from biasgrpo.grpo.loop import train_grpo

    cfg = GRPOConfig(
        num_generations=args.g,
        prompts_per_step=args.prompts_per_step,
        max_new_tokens=args.max_new_tokens,
        max_steps=args.steps,
        learning_rate=args.lr,
        beta=args.beta,
        loss_type=args.loss_type,
        num_iterations=1,
        lora=True,
        lora_rank=16,
        lora_alpha=32,
        eval_every=0,
        num_eval_prompts=0,
        save_every=0,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_grpo(args.policy, bench_reward, PROMPTS, cfg, tmp, progress=False)
        total = time.perf_counter() - t0
        rows = [json.loads(x) for x in open(os.path.join(tmp, "metrics.jsonl"))]
    times = [r["step_time"] for r in rows]
    return {
        "step_times": times,
        "cpu_times": [r["step_cpu_time"] for r in rows],
        "total_s": total,
        "completion_length": [r["completion_length"] for r in rows],
    }


def run_trl(args: argparse.Namespace) -> dict:
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []
    cpu: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            cpu.append(time.process_time() - self.c)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    model = AutoModelForCausalLM.from_pretrained(args.policy)
    tok = AutoTokenizer.from_pretrained(args.policy)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp,
            use_cpu=True,
            per_device_train_batch_size=args.g * args.prompts_per_step,
            num_generations=args.g,
            max_completion_length=args.max_new_tokens,
            max_steps=args.steps,
            learning_rate=args.lr,
            beta=args.beta,
            loss_type=args.loss_type,
            num_iterations=1,
            temperature=1.0,
            top_p=1.0,
            scale_rewards="group",
            epsilon=0.2,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            seed=0,
            bf16=False,
            disable_tqdm=True,
        )
        peft = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=bench_reward,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft,
            callbacks=[Timer()],
        )
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    return {"step_times": times, "cpu_times": cpu, "total_s": total, "completion_length": lengths}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = run_trl(args) if args.child == "trl" else run_ours(args)
    res["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="smollm2")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--g", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--loss-type", default="grpo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["trl", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        child(args)
        return
    from biasgrpo.assets import resolve_model

    args.policy = resolve_model(args.policy, default="smollm2")
    results: dict[str, list[dict]] = {"trl": [], "ours": []}
    for r in range(args.rounds):
        for name in ("trl", "ours"):
            cmd = [sys.executable, __file__, "--child", name, *sys.argv[1:], "--policy", args.policy]
            print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                raise SystemExit(f"{name} run failed (exit {proc.returncode})")
            results[name].append(json.loads(line[len("RESULT ") :]))
    n = args.g * args.prompts_per_step

    def summarise(rs: list[dict]) -> dict:
        steps = [t for r in rs for t in r["step_times"][1:]] or [t for r in rs for t in r["step_times"]]
        med = statistics.median(steps)
        cpus = [t for r in rs for t in r["cpu_times"][1:]] or [t for r in rs for t in r["cpu_times"]]
        lens = [x for r in rs for x in r["completion_length"]]
        return {
            "step": med,
            "cps": n / med,
            "rss": max(r["peak_rss_mb"] for r in rs),
            "len": statistics.mean(lens) if lens else float("nan"),
            "cpu": statistics.median(cpus),
        }

    trl, ours = summarise(results["trl"]), summarise(results["ours"])
    print(
        f"\nGRPO step, SmolLM2-135M-Instruct fp32 + LoRA r=16, {args.prompts_per_step} prompts x G={args.g}, "
        f"{args.max_new_tokens} new tokens, beta={args.beta}, loss={args.loss_type}, {args.steps} steps x "
        f"{args.rounds} round(s), {args.threads} torch threads (median step time after the first step)\n"
    )
    print(
        "| trainer | completions/s (wall) | step time (s) | CPU s per step | completions per CPU s "
        "| peak RSS (MB) | mean completion length |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in (("TRL GRPOTrainer", trl), ("biasgrpo train_grpo", ours)):
        print(
            f"| {name} | {s['cps']:.2f} | {s['step']:.2f} | {s['cpu']:.2f} | {n / s['cpu']:.2f} | {s['rss']:.0f} "
            f"| {s['len']:.1f} |"
        )
    print(
        f"| **ratio ours/TRL** | **{ours['cps'] / trl['cps']:.2f}x** | {ours['step'] / trl['step']:.2f}x | "
        f"{ours['cpu'] / trl['cpu']:.2f}x | **{trl['cpu'] / ours['cpu']:.2f}x** | {ours['rss'] / trl['rss']:.2f}x | |"
    )


if __name__ == "__main__":
    main()
