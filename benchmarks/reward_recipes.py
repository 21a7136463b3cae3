"""Compare reward-model recipes (teacher data mixes, student kinds) on the data build; prints one JSON line.

The default recipe in ``biasgrpo/reward/default.py`` was chosen with these runs. Each run trains one model
into ``runs/recipes/NAME`` and scores a fixed test subset, with accuracy per source and BBQ split into
ambiguous and disambiguated pairs, so the numbers say *which* part a recipe fails. Teachers: all
CrowS-Pairs and StereoSet test pairs plus 1,200 BBQ pairs. Students: 1,000 random test pairs (2,000 texts),
also giving the student's Spearman with its teacher.

    # a teacher: TrainConfig fields as JSON; "mix" picks exact pair counts per source (bbq:ambig/disambig)
    python benchmarks/reward_recipes.py teacher e3 '{"mix": {"bbq:disambig": 300, "bbq:ambig": 600,
        "crows_pairs": 1241, "stereoset": 1241}, "epochs": 2}'
    # a student of that teacher: DistillConfig fields as JSON
    python benchmarks/reward_recipes.py student d2 '{"student": "truncated", "num_layers": 3, "epochs": 3,
        "lr": 2e-4, "max_records": 1500, "max_unlabeled": 1000}' --teacher runs/recipes/e3

``--threads 1`` (default) keeps a second core free for other work; ``--data`` is a `biasgrpo data build`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_mix(records, mix: dict[str, int], seed: int = 0) -> list:
    """Exactly ``mix[key]`` records of each subset key (shuffled with ``seed``)."""
    from biasgrpo.reward.metrics import subset_key

    rng = random.Random(seed)
    by: dict[str, list] = collections.defaultdict(list)
    for r in records:
        by[subset_key(r)].append(r)
    chosen = []
    for key, n in mix.items():
        if len(by[key]) < n:
            raise SystemExit(f"mix asks for {n} {key!r} pairs, the training split has {len(by[key])}")
        items = by[key][:]
        rng.shuffle(items)
        chosen += items[:n]
    rng.shuffle(chosen)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["teacher", "student"])
    ap.add_argument("name")
    ap.add_argument("config", help="TrainConfig (teacher) or DistillConfig (student) fields as JSON")
    ap.add_argument("--teacher", help="teacher folder (student runs)")
    ap.add_argument("--data", default="runs/demo/data")
    ap.add_argument("--out-root", default="runs/recipes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    from biasgrpo.data_synth.schema import load_records
    from biasgrpo.reward.metrics import spearman, subset_key
    from biasgrpo.reward.model import TorchScorer

    torch.set_num_threads(args.threads)
    cfg = json.loads(args.config)
    out = os.path.join(args.out_root, args.name)
    data = args.data
    t0 = time.time()
    if args.kind == "teacher":
        from biasgrpo.reward.train import TrainConfig, train_teacher

        train = load_records(f"{data}/train.jsonl")
        if "mix" in cfg:
            train = pick_mix(train, cfg.pop("mix"))
            cfg["max_train"] = None
        train_teacher(TrainConfig(**cfg), train, f"{data}/val.jsonl", out, progress=False)
    else:
        if not args.teacher:
            raise SystemExit("a student run needs --teacher FOLDER")
        from biasgrpo.reward.distill import DistillConfig, distill_teacher

        distill_teacher(
            args.teacher, f"{data}/train.jsonl", out, DistillConfig(**cfg), val_data=f"{data}/val.jsonl",
            unlabeled_data=f"{data}/prompts_train.jsonl", progress=False,
        )  # fmt: skip
    seconds = time.time() - t0

    test = load_records(f"{data}/test.jsonl")
    if args.kind == "teacher":
        bbq = [r for r in test if r.source == "bbq"]
        random.Random(1).shuffle(bbq)
        sub = bbq[:1200] + [r for r in test if r.source != "bbq"]
    else:
        sub = random.Random(0).sample(test, min(1000, len(test)))
    model = TorchScorer.from_dir(out, batch_size=64)
    texts, prompts = [r.chosen for r in sub] + [r.rejected for r in sub], [r.prompt for r in sub] * 2
    s = model(texts, prompts)
    n = len(sub)
    row = {"run": args.name, "kind": args.kind, "seconds": round(seconds, 1), "test_pairs": n}
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for i, r in enumerate(sub):
        groups[subset_key(r)].append(float(s[i] > s[n + i]))
    row.update({f"acc {k}": round(float(np.mean(v)), 4) for k, v in sorted(groups.items())})
    if args.kind == "student":
        t = TorchScorer.from_dir(args.teacher, batch_size=64)(texts, prompts)
        row["spearman_vs_teacher"] = round(spearman(s, t), 4)
        row["teacher acc"] = round(float(np.mean(t[:n] > t[n:])), 4)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
