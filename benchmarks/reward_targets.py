"""Measure the reward-model targets of issue 3 on the data build's test split; print a markdown table.

For the teacher (PyTorch) and each exported student (ONNX int8 and fp32): pairwise accuracy overall and
per source, plus the student's Spearman with the teacher on the test texts, and how much int8 scores move
between batch 1 and batch 32.

    python benchmarks/reward_targets.py --data data/build --teacher runs/real/teacher \
        --onnx runs/real/onnx --onnx runs/real/onnx_head --out runs/real/targets.json
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/build")
    parser.add_argument("--teacher", default="runs/real/teacher")
    parser.add_argument("--onnx", action="append", default=None, help="Exported student folder (repeatable).")
    parser.add_argument(
        "--max-teacher", type=int, default=None, help="Subsample of test pairs for the torch teacher."
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.getLogger("biasgrpo.reward.scorer").setLevel(logging.ERROR)

    import numpy as np

    from biasgrpo.data_synth.schema import load_records
    from biasgrpo.reward.metrics import pairwise_accuracy, spearman, subset_key
    from biasgrpo.reward.model import TorchScorer
    from biasgrpo.reward.scorer import Scorer

    test = load_records(os.path.join(args.data, "test.jsonl"))
    sub = test
    if args.max_teacher and len(test) > args.max_teacher:
        sub = random.Random(0).sample(test, args.max_teacher)
    results: dict[str, dict] = {}

    def accuracies(records, chosen, rejected) -> dict:
        """Overall, per source, and BBQ split by context (ambiguous: the unknown answer vs the biased one;
        disambiguated: the answer the context supports vs the other person, i.e. reading comprehension)."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(r.source, []).append(i)
            if subset_key(r) != r.source:
                groups.setdefault(subset_key(r), []).append(i)
        return {
            "accuracy": pairwise_accuracy(chosen, rejected),
            "by_source": {g: pairwise_accuracy(chosen[i], rejected[i]) for g, i in sorted(groups.items())},
        }

    t = time.time()
    teacher = TorchScorer.from_dir(args.teacher, batch_size=64)
    tc = teacher([r.chosen for r in sub], [r.prompt for r in sub])
    tr = teacher([r.rejected for r in sub], [r.prompt for r in sub])
    results["teacher (PyTorch)"] = {
        "n_pairs": len(sub),
        **accuracies(sub, tc, tr),
        "seconds": round(time.time() - t, 1),
    }
    teacher_scores = np.concatenate([tc, tr])
    pos = {id(r): i for i, r in enumerate(test)}
    rows_of_sub = np.array([pos[id(r)] for r in sub])  # where the teacher's pairs sit in the test split

    for n_folder, folder in enumerate(args.onnx or ["runs/real/onnx"]):
        for precision in ("int8", "fp32") if n_folder == 0 else ("int8",):  # fp32 for the first folder only
            t = time.time()
            scorer = Scorer.load(folder, precision=precision, provider="cpu")
            prompts = [r.prompt for r in test]
            sc_c = scorer.score([r.chosen for r in test], prompts)
            sc_r = scorer.score([r.rejected for r in test], prompts)
            student_sub = np.concatenate([sc_c[rows_of_sub], sc_r[rows_of_sub]])
            row = {
                "n_pairs": len(test),
                **accuracies(test, sc_c, sc_r),
                "spearman_vs_teacher": spearman(student_sub, teacher_scores),
                "n_spearman_texts": len(student_sub),
                "seconds": round(time.time() - t, 1),
            }
            if precision == "int8":
                texts = [r.chosen for r in sub[:256]]
                prompts = [r.prompt for r in sub[:256]]
                b1 = scorer.score(texts, prompts, batch_size=1)
                b32 = scorer.score(texts, prompts, batch_size=32)
                row["int8_batch1_vs_batch32_max_abs_diff"] = float(np.max(np.abs(b1 - b32)))
                row["int8_batch1_vs_batch32_spearman"] = spearman(b1, b32)
                row["score_std"] = float(np.std(b32))
            results[f"{os.path.basename(os.path.normpath(folder))} ONNX {precision}"] = row

    sources = sorted({g for row in results.values() for g in row["by_source"]})
    print(
        "\n| model | test pairs | pairwise acc | "
        + " | ".join(f"acc {s}" for s in sources)
        + " | Spearman vs teacher |"
    )
    print("|---|---|---|" + "---|" * len(sources) + "---|")
    for name, row in results.items():
        cells = " | ".join(f"{row['by_source'].get(s, float('nan')):.4f}" for s in sources)
        sp = f"{row['spearman_vs_teacher']:.4f}" if "spearman_vs_teacher" in row else "-"
        print(f"| {name} | {row['n_pairs']} | {row['accuracy']:.4f} | {cells} | {sp} |")
    print()
    for name, row in results.items():
        if "int8_batch1_vs_batch32_max_abs_diff" in row:
            print(
                f"{name}: batch 1 vs 32 max abs diff {row['int8_batch1_vs_batch32_max_abs_diff']:.4f} "
                f"(score std {row['score_std']:.4f}), Spearman {row['int8_batch1_vs_batch32_spearman']:.4f}"
            )
    if args.out:
        from biasgrpo.data_synth.schema import write_json

        write_json(args.out, results)


if __name__ == "__main__":
    main()
