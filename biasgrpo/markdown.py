"""Markdown table rendering shared by the run report, the evaluation report and the CLIs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cell: Callable[[Any], str] = str) -> str:
    """A GitHub-flavoured markdown table (no trailing newline); ``cell`` turns each value into text.

    Raises ``ValueError`` when a row's width differs from the header's, since a ragged row renders as a
    silently shifted table.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"table row {i} has {len(row)} cells, the header has {len(header)}")
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)
