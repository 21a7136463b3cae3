"""Reward-model throughput, side by side in one run: texts/s and p50 latency at batch 1 and batch 32.

Rows (same texts, every input exactly 128 tokens):
  (a) a RoBERTa-base-sized sequence classifier in PyTorch fp32 (the paper's reward-model architecture;
      random weights, timing only), (b) the teacher in PyTorch, (c) the student in PyTorch,
  (d) the student in ONNX Runtime fp32, (e) the student in ONNX Runtime int8 (the default scorer).
Measurements are interleaved round-robin so machine noise hits every row alike; ratios are against (a).
(a) runs on pre-tokenized ids (random weights, no tokenizer to match), while (b)-(e) score raw text
through the real scorers, tokenization and template included, so the ratios are conservative.
FLOPs per text (matmul FLOPs of the encoder) and the measured fp32 matmul peak of this CPU show how far
each row is from the hardware.

    python benchmarks/bench_scorer.py --teacher runs/real/teacher --student runs/real/student --onnx runs/real/onnx
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEQ = 128


def encoder_flops(layers: int, hidden: int, ffn: int, seq: int = SEQ) -> float:
    """Matmul FLOPs of one text through a transformer encoder: projections, FFN and attention products."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * seq * hidden
    return float(layers * seq * per_token)


def cfg_flops(config) -> float:
    return encoder_flops(config.num_hidden_layers, config.hidden_size, config.intermediate_size)


def matmul_peak(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1024**3 / min(times) / 1e9


def make_texts(n: int) -> list[str]:
    words = (
        "people from every background deserve fair treatment and the claim that one group is lazier or less "
        "capable than another is a stereotype not a fact while many said the new neighbours were loud and "
        "rude others pointed out that they helped everyone on the street"
    ).split()
    return [" ".join(words[(i + j) % len(words)] for j in range(220)) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="runs/real/teacher")
    parser.add_argument("--student", default="runs/real/student")
    parser.add_argument("--onnx", default="runs/real/onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="Timed batch-32 calls per row.")
    parser.add_argument("--single", type=int, default=12, help="Timed batch-1 calls per row.")
    args = parser.parse_args()
    logging.getLogger("biasgrpo.reward.scorer").setLevel(logging.ERROR)  # every input is truncated on purpose

    import torch
    from transformers import AutoConfig, RobertaConfig, RobertaForSequenceClassification

    from biasgrpo.reward.model import TorchScorer
    from biasgrpo.reward.scorer import Scorer

    torch.set_num_threads(args.threads)
    texts = make_texts(32)

    roberta_cfg = RobertaConfig(num_labels=1)  # roberta-base sizes: 12 x 768, FFN 3072
    torch.manual_seed(0)
    roberta = RobertaForSequenceClassification(roberta_cfg).eval()
    ids = torch.randint(5, roberta_cfg.vocab_size, (32, SEQ))

    @torch.no_grad()
    def roberta_fn(n: int):
        return roberta(input_ids=ids[:n], attention_mask=torch.ones_like(ids[:n])).logits

    teacher = TorchScorer.from_dir(args.teacher, batch_size=32)
    student = TorchScorer.from_dir(args.student, batch_size=32)
    onnx32 = Scorer.load(args.onnx, precision="fp32", provider="cpu", num_threads=args.threads)
    onnx8 = Scorer.load(args.onnx, precision="int8", provider="cpu", num_threads=args.threads)
    assert onnx8.max_length == SEQ and student.max_length == SEQ, "the benchmark assumes max_length 128"
    t_cfg = AutoConfig.from_pretrained(args.teacher)
    student_cfg_dir = os.path.join(args.student, "encoder")  # embedding-head students keep the encoder there
    s_cfg = AutoConfig.from_pretrained(student_cfg_dir if os.path.isdir(student_cfg_dir) else args.student)
    rows = [
        ("(a) RoBERTa-base-sized, PyTorch fp32", roberta_fn, cfg_flops(roberta_cfg)),
        ("(b) teacher, PyTorch fp32", lambda n: teacher(texts[:n]), cfg_flops(t_cfg)),
        ("(c) student, PyTorch fp32", lambda n: student(texts[:n]), cfg_flops(s_cfg)),
        ("(d) student, ONNX fp32", lambda n: onnx32.score(texts[:n]), cfg_flops(s_cfg)),
        ("(e) student, ONNX int8", lambda n: onnx8.score(texts[:n]), cfg_flops(s_cfg)),
    ]
    for _, fn, _ in rows:  # warm-up
        fn(1)
        fn(32)
    lat: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name, _, _ in rows}
    for batch, reps in ((32, args.rounds), (1, args.single)):
        for _ in range(reps):
            for name, fn, _ in rows:
                t = time.perf_counter()
                fn(batch)
                lat[name][batch].append(time.perf_counter() - t)
    peak = matmul_peak(args.threads)

    base = {b: batch / statistics.median(lat[rows[0][0]][b]) for b, batch in ((1, 1), (32, 32))}
    print(
        f"\nScorer throughput, {SEQ} tokens per text, {args.threads} threads, fp32 matmul peak {peak:.0f} GFLOP/s\n"
    )
    print(
        "| model | GFLOPs/text | b=1 texts/s | b=1 p50 ms | b=32 texts/s | b=32 p50 ms | x vs (a) b=1 | x vs (a) b=32 | GFLOP/s at b=32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _, flops in rows:
        p1, p32 = statistics.median(lat[name][1]), statistics.median(lat[name][32])
        tps1, tps32 = 1 / p1, 32 / p32
        print(
            f"| {name} | {flops / 1e9:.2f} | {tps1:.1f} | {p1 * 1e3:.1f} | {tps32:.1f} | {p32 * 1e3:.0f} | "
            f"{tps1 / base[1]:.1f} | {tps32 / base[32]:.1f} | {flops * tps32 / 1e9:.0f} |"
        )
    print(
        "\nGFLOP/s for int8 counts the same matmuls as fp32 (an 'effective' rate); peak is the fp32 1024^3 matmul."
    )


if __name__ == "__main__":
    main()
