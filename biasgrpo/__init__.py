"""biasgrpo: bias reward models and group-relative policy optimisation against social bias.

Public API (importing this package imports neither torch nor transformers):

    from biasgrpo import load_records, write_jsonl, PreferenceRecord, ScalarRecord
"""

from __future__ import annotations

from biasgrpo.data_synth.schema import (
    PreferenceRecord,
    PromptRecord,
    RecordError,
    ScalarRecord,
    load_records,
    read_jsonl,
    write_jsonl,
)

__version__ = "0.1.0"

__all__ = [
    "PreferenceRecord",
    "PromptRecord",
    "RecordError",
    "ScalarRecord",
    "__version__",
    "load_records",
    "read_jsonl",
    "write_jsonl",
]
