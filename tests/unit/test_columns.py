"""``tokenclean.columns.StringColumn``: a memory-mapped string column read on demand equals its Python list."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tokenclean.columns import StringColumn


def test_string_column_reads_like_its_list() -> None:
    values = [f"s{i:05d}" for i in range(70_000)]
    col = pa.chunked_array([values[:3], values[3:3], values[3:65_540], values[65_540:]])  # an empty chunk too
    c = StringColumn(col)
    assert len(c) == len(values)
    assert list(c) == values  # iteration crosses chunk and 65,536-row boundaries
    assert c[0] == "s00000" and c[-1] == values[-1] and c[65_537] == values[65_537]
    assert c[2:5] == values[2:5] and c[69_990:80_000] == values[69_990:] and c[5:2] == []
    assert c[1:10:3] == values[1:10:3]
    assert "s00042" in c and c.index("s00042") == 42
    with pytest.raises(IndexError):
        c[70_000]
    with pytest.raises(IndexError):
        c[-70_001]
    assert list(StringColumn(pa.array(["a", "b"]))) == ["a", "b"]
