import pytest

from biasgrpo.markdown import table


def test_table_renders_header_separator_and_cells():
    out = table(["a", "b"], [[1, 2.5], ["x", None]], cell=lambda v: "-" if v is None else str(v))
    assert out.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | - |"]


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells, the header has 2"):
        table(["a", "b"], [[1, 2], [3]])
