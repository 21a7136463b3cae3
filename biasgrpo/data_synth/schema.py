"""The one record format every stage reads and writes, with JSONL input/output.

Record kinds (a JSONL file holds one kind, one JSON object per line):

* ``preference``: ``prompt`` (may be empty), ``chosen`` (the favorable, less biased completion),
  ``rejected`` (the unfavorable one), ``domain``, ``source``, ``id``, ``meta``.
* ``scalar``: ``prompt`` (may be empty), ``text``, ``label`` in [0, 1] with 1 = unbiased/favorable,
  ``domain``, ``source``, ``id``, ``meta``.
* ``prompt``: ``prompt``, ``domain``, ``source``, ``id``, ``meta``: prompts without completions, used as
  GRPO and evaluation prompts (BOLD, HolisticBias).

Reading validates every row. A malformed row (bad JSON, missing field, wrong type, label out of range,
unknown domain) stops the read with :class:`RecordError` naming file, line and field, unless
``skip_invalid=True``, in which case bad rows are skipped and *counted* in the returned report, never
dropped silently. Writing goes to a temporary file that is renamed into place, so a crash never
leaves a half-written file that looks whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from biasgrpo.data_synth.domains import DOMAINS

RecordKind = Literal["preference", "scalar", "prompt"]


class RecordError(ValueError):
    """A record failed validation. ``where`` is ``file:line`` when it came from a file."""

    def __init__(self, message: str, *, field: str | None = None, where: str | None = None):
        self.message = message
        self.field = field
        self.where = where
        prefix = f"{where}: " if where else ""
        suffix = f" (field '{field}')" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")


def _check_str(data: dict[str, Any], name: str, *, allow_empty: bool) -> str:
    if name not in data:
        raise RecordError("missing required field", field=name)
    value = data[name]
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", field=name)
    if not allow_empty and not value.strip():
        raise RecordError("must not be empty", field=name)
    return value


def _check_common(data: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    domain = _check_str(data, "domain", allow_empty=False)
    if domain not in DOMAINS:
        raise RecordError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}", field="domain")
    source = _check_str(data, "source", allow_empty=False)
    rid = _check_str(data, "id", allow_empty=False)
    meta = data.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RecordError(f"expected an object, got {type(meta).__name__}", field="meta")
    return domain, source, rid, meta


@dataclass
class PreferenceRecord:
    """A prompt with a favorable (``chosen``) and an unfavorable (``rejected``) completion."""

    prompt: str
    chosen: str
    rejected: str
    domain: str
    source: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "preference"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreferenceRecord:
        """Validate a mapping and build the record; raises :class:`RecordError` naming the field."""
        prompt = _check_str(data, "prompt", allow_empty=True)
        chosen = _check_str(data, "chosen", allow_empty=False)
        rejected = _check_str(data, "rejected", allow_empty=False)
        if chosen == rejected:
            raise RecordError("chosen and rejected are identical", field="rejected")
        domain, source, rid, meta = _check_common(data)
        return cls(prompt, chosen, rejected, domain, source, rid, meta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScalarRecord:
    """A (prompt, text) pair with a label in [0, 1]; 1 means unbiased/favorable."""

    prompt: str
    text: str
    label: float
    domain: str
    source: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "scalar"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalarRecord:
        """Validate a mapping and build the record; raises :class:`RecordError` naming the field."""
        prompt = _check_str(data, "prompt", allow_empty=True)
        text = _check_str(data, "text", allow_empty=False)
        if "label" not in data:
            raise RecordError("missing required field", field="label")
        label = data["label"]
        # bool is an int subclass; a JSON true/false label is almost certainly a mistake.
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise RecordError(f"expected a number, got {type(label).__name__}", field="label")
        if not math.isfinite(label) or not 0.0 <= label <= 1.0:
            raise RecordError(f"label {label!r} is outside [0, 1]", field="label")
        domain, source, rid, meta = _check_common(data)
        return cls(prompt, text, float(label), domain, source, rid, meta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromptRecord:
    """A prompt without completions (GRPO training and evaluation prompts)."""

    prompt: str
    domain: str
    source: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "prompt"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptRecord:
        """Validate a mapping and build the record; raises :class:`RecordError` naming the field."""
        prompt = _check_str(data, "prompt", allow_empty=False)
        domain, source, rid, meta = _check_common(data)
        return cls(prompt, domain, source, rid, meta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Record = PreferenceRecord | ScalarRecord | PromptRecord
RECORD_TYPES: dict[str, type] = {
    "preference": PreferenceRecord,
    "scalar": ScalarRecord,
    "prompt": PromptRecord,
}


def detect_kind(data: dict[str, Any]) -> RecordKind:
    """Guess a row's kind from its fields: chosen/rejected -> preference, text/label -> scalar, else prompt."""
    if "chosen" in data or "rejected" in data:
        return "preference"
    if "text" in data or "label" in data:
        return "scalar"
    return "prompt"


def record_from_dict(data: Any, kind: RecordKind | None = None) -> Record:
    """Validate one row (a decoded JSON object) into a record of ``kind`` (auto-detected when None)."""
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, got {type(data).__name__}")
    kind = kind or detect_kind(data)
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(RECORD_TYPES)}")
    return RECORD_TYPES[kind].from_dict(data)


@dataclass
class ReadReport:
    """What a read saw: rows read, rows skipped (only with ``skip_invalid``) and why."""

    path: str
    n_read: int = 0
    n_skipped: int = 0
    errors: list[str] = field(default_factory=list)  # first few skip reasons, for the log


def iter_jsonl(
    path: str | os.PathLike[str],
    kind: RecordKind | None = None,
    *,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> Iterator[Record]:
    """Yield validated records from a JSONL file; see :func:`read_jsonl`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    report = report if report is not None else ReadReport(str(path))
    file_kind = kind
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            where = f"{path}:{lineno}"
            try:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
                # The first valid row fixes the file's kind, so a stray row of another kind is an error.
                rec = record_from_dict(data, file_kind)
                file_kind = file_kind or rec.kind
            except RecordError as exc:
                exc = RecordError(exc.message, field=exc.field, where=where) if exc.where is None else exc
                if not skip_invalid:
                    raise exc from None
                report.n_skipped += 1
                if len(report.errors) < 20:
                    report.errors.append(str(exc))
                continue
            report.n_read += 1
            yield rec


def read_jsonl(
    path: str | os.PathLike[str],
    kind: RecordKind | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[Record], ReadReport]:
    """Read and validate a JSONL file of records.

    ``kind`` forces the record kind; by default the first row decides and later rows must match.
    Returns ``(records, report)``; ``report.n_skipped`` counts rows skipped with ``skip_invalid=True``.
    Raises :class:`RecordError` (``path:line: message (field 'x')``) on the first bad row otherwise.
    """
    report = ReadReport(str(path))
    records = list(iter_jsonl(path, kind, skip_invalid=skip_invalid, report=report))
    return records, report


def load_records(path: str | os.PathLike[str], kind: RecordKind | None = None) -> list[Record]:
    """Strict read: all rows must be valid. Convenience wrapper over :func:`read_jsonl`."""
    return read_jsonl(path, kind)[0]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary name next to ``target`` and swap it in only when the block succeeds.

    A crash or exception leaves ``target`` as it was (old contents or absent) and removes the partial folder,
    so a half-written model, checkpoint or cache entry never looks finished.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes owner-only folders; models and caches are meant to be shared
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Record | dict[str, Any]]) -> int:
    """Atomically write records (or already-valid dicts) as JSONL; returns the number of rows written.

    Dicts are validated first, so this never writes a row that :func:`read_jsonl` would reject.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                if isinstance(rec, dict):
                    rec = record_from_dict(rec)
                fh.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return n


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write an object as pretty JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def preference_to_scalar(records: Iterable[PreferenceRecord]) -> Iterator[ScalarRecord]:
    """Expand each preference pair into two scalar records: chosen -> 1.0, rejected -> 0.0.

    This is how preference data feeds the regression objective (the paper's reward model is a
    regressor). Both halves keep the pair id in ``meta['pair_id']`` so splits stay grouped.
    """
    for rec in records:
        meta = {**rec.meta, "pair_id": rec.id}
        yield ScalarRecord(rec.prompt, rec.chosen, 1.0, rec.domain, rec.source, f"{rec.id}:chosen", meta)
        yield ScalarRecord(rec.prompt, rec.rejected, 0.0, rec.domain, rec.source, f"{rec.id}:rejected", meta)
