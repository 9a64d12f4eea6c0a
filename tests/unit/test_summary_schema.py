"""summary.json has one schema (tokenclean.summary): written strictly, read with the file and key
named, every declared key read by the report or listed as not shown."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tokenclean.errors import DataError
from tokenclean.summary import (
    NOT_SHOWN,
    SCHEMA_VERSION,
    check_summary,
    declared_keys,
    read_summary,
    write_summary,
)

REPORT = Path(__file__).resolve().parents[2] / "src" / "tokenclean" / "report"


def _report_strings() -> set[str]:
    """Every string constant in the report's modules (the keys it reads are among them)."""
    out: set[str] = set()
    for p in REPORT.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


def test_every_declared_key_is_read_by_the_report_or_listed_as_not_shown() -> None:
    declared = set().union(*declared_keys().values())
    strings = _report_strings()
    unread = sorted(k for k in declared if k not in strings and k not in NOT_SHOWN)
    assert unread == [], (
        f"declared in the summary schema but neither read by the report nor in NOT_SHOWN: {unread}"
    )
    assert sorted(set(NOT_SHOWN) - declared) == []  # no stale entry
    # the report does read what it shows
    for key in (
        "methods",
        "rounds",
        "sweep",
        "eval",
        "recovery",
        "heldout",
        "budget",
        "classes",
        "recovery_ci",
    ):
        assert key in strings and key not in NOT_SHOWN, key


def _minimal() -> dict:
    return {
        "pipeline": "fixed_model",
        "name": "r",
        "model": "m",
        "ratio": 0.6,
        "methods": {
            "fixed_model": {"adapter": "a", "cleaned": None, "scores": None, "round": None, "eval": None}
        },
    }


def test_write_sets_the_version_and_refuses_undeclared_keys_and_wrong_types(tmp_path: Path) -> None:
    s = _minimal()
    write_summary(tmp_path, s)
    assert s["schema_version"] == SCHEMA_VERSION
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    assert read_summary(tmp_path / "summary.json") == s
    with pytest.raises(DataError, match=r"'colour' is not a declared key of MethodEntry"):
        write_summary(tmp_path / "x", dict(_minimal(), methods={"m": {"colour": "red"}}))
    with pytest.raises(
        DataError, match=r"summary\.json \(being written\): methods\.m\.round: expected an integer"
    ):
        write_summary(tmp_path / "x", dict(_minimal(), methods={"m": {"round": "two"}}))
    assert not (tmp_path / "x" / "summary.json").exists()


def test_read_refuses_a_missing_or_newer_version(tmp_path: Path) -> None:
    old = _minimal()  # no schema_version
    (tmp_path / "summary.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match=r"summary\.json.*no schema_version"):
        read_summary(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps(dict(old, schema_version=SCHEMA_VERSION)))
    assert read_summary(tmp_path / "summary.json") == dict(old, schema_version=SCHEMA_VERSION)
    (tmp_path / "summary.json").write_text(json.dumps(dict(old, schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(DataError, match=r"summary\.json.*newer than this tokenclean reads.*upgrade"):
        read_summary(tmp_path / "summary.json")


def test_reading_ignores_unknown_keys_but_checks_declared_ones() -> None:
    s = dict(_minimal(), future_field={"x": 1})
    assert check_summary(s, "f")["future_field"] == {"x": 1}
    with pytest.raises(DataError, match="not a declared key"):
        check_summary(s, "f", strict=True)
    bad = dict(_minimal(), sweep=[{"ratio": 0.5, "heldout": {"loss": "low"}}])
    with pytest.raises(DataError, match=r"f: sweep\[0\]\.heldout\.loss: expected a number"):
        check_summary(bad, "f")
