"""Synthesis plan and run loop: extend a seed set of bias preference records with an LLM.

The plan crosses the bias domains with contexts (workplace, hiring, healthcare, ...) and the prompt
templates, visiting the grid in a seeded shuffled order so counts stay balanced; each task also draws a seed
record (same domain when the seed set has one) that the template shows as an example. Everything about
task ``i`` derives from ``(run seed, i)``, which is what makes runs resumable.

For each task the generator is asked for a new bias-probing prompt with a favorable and an unfavorable
completion (JSON, or labelled text for the ``text-v1`` template; see :mod:`biasgrpo.data_synth.prompts`).
:func:`~biasgrpo.data_synth.prompts.parse_generation` reads the answer robustly; the record then goes through :class:`~biasgrpo.data_synth.filters.SynthFilter`. Accepted records are appended to
``synthetic.jsonl`` (flushed and fsynced per batch) with their provenance in ``meta``; every failed attempt
goes to ``rejected.jsonl`` with its reason and the raw text, and the task is retried up to
``max_attempts`` times. A restarted run reads both files back, truncates a torn last line, skips finished
tasks and resumes unfinished ones: no duplicates, nothing lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biasgrpo.data_synth.domains import CORE_DOMAINS, DOMAINS
from biasgrpo.data_synth.filters import SynthFilter
from biasgrpo.data_synth.llm import GenerationError, Generator, SamplingParams, generator_names
from biasgrpo.data_synth.prompts import (
    CONTEXTS,
    TEMPLATES,
    PromptTemplate,
    answer_is_complete,
    parse_generation,
)
from biasgrpo.data_synth.schema import PreferenceRecord, Record, read_jsonl, write_json

logger = logging.getLogger(__name__)

SYNTH_SOURCE = "synthetic"
ACCEPTED_FILE = "synthetic.jsonl"
REJECTED_FILE = "rejected.jsonl"
CONFIG_FILE = "config.json"


# -------------------------------------------------------------------------------------------- seed data
@dataclass
class SeedData:
    """Seed preference records (examples and the diversity baseline) and evaluation records (leakage)."""

    seeds: list[PreferenceRecord]
    evaluation: list[Record] = field(default_factory=list)
    source: str = "<memory>"

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for rec in self.seeds:
            h.update(rec.id.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


def _read_records(path: Path) -> list[Record]:
    return read_jsonl(path)[0]


def load_seed_data(
    path: str | os.PathLike[str], eval_paths: Sequence[str | os.PathLike[str]] = ()
) -> SeedData:
    """Seeds from a ``biasgrpo data build`` folder (train.jsonl; val/test files are evaluation) or a JSONL file.

    Only preference records are seeds; other kinds found in seed files count as references for leakage.
    ``eval_paths`` (files or folders of JSONL) add evaluation records that synthetic data must not leak into.
    """
    path = Path(path)
    evaluation: list[Record] = []
    if path.is_dir():
        train = path / "train.jsonl"
        seed_files = [train] if train.is_file() else sorted(path.glob("*.jsonl"))
        eval_files = [
            p
            for p in sorted(path.glob("*.jsonl"))
            if p.name in {"val.jsonl", "test.jsonl", "prompts_test.jsonl"}
        ]
        if not train.is_file():
            eval_files = []
    elif path.is_file():
        seed_files, eval_files = [path], []
    else:
        raise FileNotFoundError(f"--seed-data {path}: no such file or folder")
    seeds: list[PreferenceRecord] = []
    for f in seed_files:
        for rec in _read_records(f):
            (seeds if isinstance(rec, PreferenceRecord) else evaluation).append(rec)  # type: ignore[arg-type]
    for extra in eval_paths:
        extra = Path(extra)
        eval_files += sorted(extra.glob("*.jsonl")) if extra.is_dir() else [extra]
    for f in eval_files:
        evaluation.extend(_read_records(f))
    if not seeds:
        raise ValueError(
            f"{path}: no preference records to use as seeds (files read: {[str(f) for f in seed_files]})"
        )
    return SeedData(seeds, evaluation, str(path))


def discover_seed_data(root: str | os.PathLike[str] = ".") -> Path | None:
    """The newest ``data/<name>/train.jsonl`` folder under ``root`` (what ``biasgrpo data build`` writes), if any."""
    root = Path(root)
    candidates = [p.parent for p in root.glob("data/*/train.jsonl")] + [
        p.parent for p in root.glob("data/train.jsonl")
    ]
    candidates += [p.parent for p in root.glob("runs/*/data/train.jsonl")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / "train.jsonl").stat().st_mtime)


# ------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Task:
    index: int
    domain: str
    context: str
    template: PromptTemplate
    seed: PreferenceRecord | None


class SynthesisPlan:
    """Task ``i`` -> (domain, context, template, seed example), a pure function of the run seed and ``i``."""

    def __init__(
        self,
        seeds: Sequence[PreferenceRecord],
        *,
        domains: Sequence[str] = CORE_DOMAINS,
        contexts: Sequence[str] = CONTEXTS,
        templates: Sequence[str] = ("json-v1",),
        seed: int = 0,
    ) -> None:
        bad = [d for d in domains if d not in DOMAINS]
        if bad or not domains:
            raise ValueError(f"unknown or no domains {bad}; expected some of {sorted(DOMAINS)}")
        missing = [t for t in templates if t not in TEMPLATES]
        if missing or not templates:
            raise ValueError(f"unknown or no templates {missing}; expected some of {sorted(TEMPLATES)}")
        if not contexts:
            raise ValueError("at least one context is needed")
        self.grid = [(d, c, t) for d in domains for c in contexts for t in templates]
        self.seed = seed
        with_prompt = [s for s in seeds if s.prompt.strip()]
        pool = with_prompt or list(seeds)  # examples with a prompt show the model what a prompt looks like
        self.pool = pool
        self.by_domain: dict[str, list[PreferenceRecord]] = {}
        for rec in pool:
            self.by_domain.setdefault(rec.domain, []).append(rec)
        self._perms: dict[int, list[int]] = {}

    def task(self, index: int) -> Task:
        epoch, pos = divmod(index, len(self.grid))
        if epoch not in self._perms:
            perm = list(range(len(self.grid)))
            random.Random(f"{self.seed}:grid:{epoch}").shuffle(perm)
            self._perms[epoch] = perm
        domain, context, template_id = self.grid[self._perms[epoch][pos]]
        candidates = self.by_domain.get(domain) or self.pool
        rng = random.Random(f"{self.seed}:example:{index}")
        example = rng.choice(candidates) if candidates else None
        return Task(index, domain, context, TEMPLATES[template_id], example)


# ------------------------------------------------------------------------------------------------- run
@dataclass
class SynthConfig:
    """One synthesis run. ``fingerprint`` covers what fixes the plan; it must match when resuming."""

    n: int
    seed: int = 0
    batch_size: int = 8
    max_attempts: int = 3
    templates: tuple[str, ...] = ("json-v1",)
    domains: tuple[str, ...] = CORE_DOMAINS
    contexts: tuple[str, ...] = CONTEXTS
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_p: float = 0.95
    max_generations: int | None = None  # per session; default 30 * n
    max_failed_batches: int = 5  # consecutive batches with only generator errors -> stop

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if self.batch_size < 1 or self.max_attempts < 1 or self.max_failed_batches < 1:
            raise ValueError("batch_size, max_attempts and max_failed_batches must be >= 1")
        self.templates, self.domains, self.contexts = (
            tuple(self.templates),
            tuple(self.domains),
            tuple(self.contexts),
        )
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains:
            raise ValueError(f"unknown or no domains {bad}; expected some of {sorted(DOMAINS)}")
        missing = [t for t in self.templates if t not in TEMPLATES]
        if missing or not self.templates:
            raise ValueError(f"unknown or no templates {missing}; expected some of {sorted(TEMPLATES)}")
        if not self.contexts or not all(c.strip() for c in self.contexts):
            raise ValueError("contexts must be non-empty strings")
        SamplingParams(self.max_new_tokens, self.temperature, self.top_p)  # validates

    def plan_fingerprint(self, seed_fp: str) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "templates": list(self.templates),
            "domains": list(self.domains),
            "contexts": list(self.contexts),
            "seed_data": seed_fp,
        }


@dataclass
class SynthResult:
    out_dir: Path
    records: list[PreferenceRecord]
    rejected: Counter[str]
    accepted_this_run: int
    generations_this_run: int
    elapsed_s: float
    complete: bool
    resumed_from: int = 0
    gave_up: int = 0

    @property
    def records_per_minute(self) -> float:
        return 60.0 * self.accepted_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def generations_per_minute(self) -> float:
        return 60.0 * self.generations_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        gens = self.generations_this_run
        return {
            "accepted": len(self.records),
            "accepted_this_run": self.accepted_this_run,
            "resumed_from": self.resumed_from,
            "complete": self.complete,
            "generations_this_run": gens,
            "acceptance_rate_this_run": self.accepted_this_run / gens if gens else None,
            "rejected_total": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected.most_common()),
            "tasks_given_up": self.gave_up,
            "elapsed_s": round(self.elapsed_s, 2),
            "records_per_minute": round(self.records_per_minute, 2),
            "generations_per_minute": round(self.generations_per_minute, 2),
        }


def _read_tail_safe(path: Path) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL; a torn last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:good_end].splitlines():
        if line.strip():
            rows.append(json.loads(line))
    if good_end < len(data):
        logger.warning(
            "%s: dropping a torn last line (%d bytes) from an interrupted run", path, len(data) - good_end
        )
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return rows


def _append(fh: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    fh.flush()
    os.fsync(fh.fileno())


def _sampling_seed(run_seed: int, task: int, attempt: int) -> int:
    digest = hashlib.sha1(f"{run_seed}:{task}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def check_resumable(
    out_dir: str | os.PathLike[str], config: SynthConfig, seed_data: SeedData
) -> dict[str, Any]:
    """Raise ``ValueError`` when ``out_dir`` holds a run whose plan differs from ``config``; return the plan."""
    out = Path(out_dir)
    plan_fp = config.plan_fingerprint(seed_data.fingerprint())
    cfg_path = out / CONFIG_FILE
    if cfg_path.is_file() and (out / ACCEPTED_FILE).exists():
        saved = json.loads(cfg_path.read_text(encoding="utf-8")).get("plan", {})
        diff = sorted(k for k in set(saved) | set(plan_fp) if saved.get(k) != plan_fp.get(k))
        if diff:
            raise ValueError(
                f"{out} holds a run made with different settings ({', '.join(diff)}); rerun with the same "
                "arguments to resume it, or pass --overwrite to start again"
            )
    return plan_fp


def synthesize(
    config: SynthConfig,
    generator: Generator,
    seed_data: SeedData,
    out_dir: str | os.PathLike[str],
    synth_filter: SynthFilter,
    *,
    resume: bool = True,
    progress: bool = True,
    on_batch: Callable[[SynthResult], None] | None = None,
) -> SynthResult:
    """Run (or resume) synthesis until ``config.n`` records are accepted or the generation budget is spent.

    ``synth_filter`` is a :class:`~biasgrpo.data_synth.filters.SynthFilter` (already holding the seed and
    evaluation references). Raises :class:`GenerationError` when the generator fails
    ``max_failed_batches`` batches in a row; whatever was accepted is on disk and a rerun continues.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc_path, rej_path, cfg_path = out / ACCEPTED_FILE, out / REJECTED_FILE, out / CONFIG_FILE
    if not resume:
        for p in (acc_path, rej_path, cfg_path, out / "report.json"):
            p.unlink(missing_ok=True)

    plan_fp = check_resumable(out, config, seed_data)
    write_json(
        cfg_path,
        {
            "plan": plan_fp,
            "config": asdict(config),
            "generators": generator_names(generator),
            "seed_source": seed_data.source,
            "n_seeds": len(seed_data.seeds),
            "filters": synth_filter.describe(),
        },
    )

    # ---- state from disk
    records = [PreferenceRecord.from_dict(r) for r in _read_tail_safe(acc_path)]
    rejected_rows = _read_tail_safe(rej_path)
    done = {int(r.meta["task"]) for r in records}
    attempts: Counter[int] = Counter()
    given_up: set[int] = set()
    rejected: Counter[str] = Counter()
    for row in rejected_rows:
        attempts[int(row["task"])] += 1
        rejected[row["reason"]] += 1
        if row.get("final"):
            given_up.add(int(row["task"]))
    synth_filter.add_accepted(records)
    seen_tasks = done | set(attempts)
    queue: deque[tuple[int, int]] = deque(
        sorted((t, attempts[t]) for t in attempts if t not in done and t not in given_up)
    )
    next_task = max(seen_tasks) + 1 if seen_tasks else 0
    resumed_from = len(records)
    if resumed_from:
        logger.info("resuming %s: %d records accepted, %d tasks in progress", out, resumed_from, len(queue))

    plan = SynthesisPlan(
        seed_data.seeds,
        domains=config.domains,
        contexts=config.contexts,
        templates=config.templates,
        seed=config.seed,
    )
    budget = config.max_generations if config.max_generations is not None else 30 * config.n
    gens_run = accepted_run = failed_batches = 0
    start = time.perf_counter()

    def result() -> SynthResult:
        return SynthResult(
            out, records, rejected, accepted_run, gens_run, time.perf_counter() - start,
            len(records) >= config.n, resumed_from, len(given_up),
        )  # fmt: skip

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.n, initial=min(len(records), config.n), desc="synth", unit="rec", dynamic_ncols=True
        )
    try:
        with open(acc_path, "a", encoding="utf-8") as acc_fh, open(rej_path, "a", encoding="utf-8") as rej_fh:
            while len(records) < config.n and gens_run < budget:
                size = min(config.batch_size, budget - gens_run)
                batch: list[tuple[int, int]] = []
                while len(batch) < size:
                    if queue:
                        batch.append(queue.popleft())
                    else:
                        batch.append((next_task, 0))
                        next_task += 1
                tasks = [plan.task(t) for t, _ in batch]
                convs = [
                    task.template.render(domain=task.domain, context=task.context, seed=task.seed)
                    for task in tasks
                ]
                params = SamplingParams(
                    config.max_new_tokens,
                    config.temperature,
                    config.top_p,
                    _sampling_seed(config.seed, *batch[0]),
                )
                completions = generator.generate(convs, params, answer_is_complete)
                gens_run += len(batch)

                reasons: list[str | None] = [None] * len(batch)
                candidates: dict[int, PreferenceRecord] = {}
                for i, ((_t, attempt), task, comp) in enumerate(zip(batch, tasks, completions, strict=True)):
                    if not comp.ok:
                        reasons[i] = f"generator/{comp.error}"
                        continue
                    parsed = parse_generation(comp.text)
                    if not parsed.ok:
                        reasons[i] = f"invalid/{parsed.reason}"
                        continue
                    assert parsed.fields is not None
                    candidates[i] = _make_record(
                        parsed.fields, task, attempt, comp.generator, params, config, parsed.format
                    )
                if candidates:
                    idx = list(candidates)
                    for i, why in zip(idx, synth_filter.filter([candidates[i] for i in idx]), strict=True):
                        if why is not None:
                            reasons[i] = f"filter/{why}"
                new_acc, new_rej = [], []
                for i, ((t, attempt), comp) in enumerate(zip(batch, completions, strict=True)):
                    if reasons[i] is None:
                        if len(records) + len(new_acc) < config.n:  # surplus at the very end is not written
                            new_acc.append(candidates[i])
                        continue
                    final = attempt + 1 >= config.max_attempts
                    new_rej.append(
                        {"task": t, "attempt": attempt, "generator": comp.generator, "reason": reasons[i],
                         "final": final, "raw": comp.text[:2000]}
                    )  # fmt: skip
                    rejected[reasons[i]] += 1  # type: ignore[index]
                    if final:
                        given_up.add(t)
                    else:
                        queue.append((t, attempt + 1))
                _append(acc_fh, [r.to_dict() for r in new_acc])
                _append(rej_fh, new_rej)
                records.extend(new_acc)
                accepted_run += len(new_acc)
                if bar is not None:
                    bar.update(len(new_acc))
                    top = ", ".join(f"{k.split('/', 1)[1]}={v}" for k, v in rejected.most_common(3))
                    bar.set_postfix_str(
                        f"acc={len(records)} rej={sum(rejected.values())} [{top}]", refresh=False
                    )
                if on_batch is not None:
                    on_batch(result())
                if all(r is not None and r.startswith("generator/") for r in reasons):
                    failed_batches += 1
                    if failed_batches >= config.max_failed_batches:  # raised after the batch is on disk
                        raise GenerationError(
                            f"the generator failed {failed_batches} batches in a row "
                            f"({Counter(reasons).most_common(3)}); check it and rerun to resume"
                        )
                else:
                    failed_batches = 0
    finally:
        if bar is not None:
            bar.close()
    res = result()
    if not res.complete:
        logger.warning(
            "generation budget (%d) spent with %d/%d records accepted; rerun to continue",
            budget,
            len(records),
            config.n,
        )
    return res


def _make_record(
    fields: dict[str, str],
    task: Task,
    attempt: int,
    generator: str,
    params: SamplingParams,
    config: SynthConfig,
    fmt: str | None,
) -> PreferenceRecord:
    return PreferenceRecord(
        prompt=fields["prompt"],
        chosen=fields["favorable"],
        rejected=fields["unfavorable"],
        domain=task.domain,
        source=SYNTH_SOURCE,
        id=f"synth-{config.seed}-{task.index:07d}",
        meta={
            "generator": generator,
            "template": task.template.id,
            "format": fmt,
            "domain": task.domain,
            "context": task.context,
            "seed_record": task.seed.id if task.seed else None,
            "seed_source": task.seed.source if task.seed else None,
            "sampling": params.to_dict(),
            "run_seed": config.seed,
            "task": task.index,
            "attempt": attempt,
        },
    )
