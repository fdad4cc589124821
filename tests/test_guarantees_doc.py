"""docs/guarantees.md names, for each risk, the test that shows postroom's guard: every test
named there must exist (read from the test files with ``ast``, not imported), so the page and
the suite stay in step. No row may stand without a test, or with one still to be written."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "guarantees.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows(text: str) -> list[str]:
    """The body rows of the page's Markdown tables (not the header or the rule under it)."""
    rows = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        rows.extend(lines[2:])
    return rows


@cache
def defined_tests(path: str) -> frozenset[str]:
    """Names of the test functions in a file, module level or in a class."""
    file = ROOT / path
    if not file.is_file():
        return frozenset()
    tree = ast.parse(file.read_text(), filename=path)
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    rows = table_rows(DOC.read_text())
    assert len(rows) >= 25  # both tables were read
    missing, without_test = [], []
    for row in rows:
        risk = row.strip("|").split("|")[0].strip()
        found = TEST_ID.findall(row)
        if not found or "(pending)" in row:  # a test still to be written is no test
            without_test.append(risk)
        missing.extend(f"{path}::{name}" for path, name in found if name not in defined_tests(path))
    assert without_test == [], "rows of docs/guarantees.md that name no (existing) test"
    assert missing == [], "tests named in docs/guarantees.md that do not exist"


def test_the_check_sees_a_missing_test() -> None:
    """The parser itself: a made-up name is missing, a real one is found."""
    assert "test_the_check_sees_a_missing_test" in defined_tests("tests/test_guarantees_doc.py")
    assert "test_no_such_thing" not in defined_tests("tests/test_guarantees_doc.py")
    assert defined_tests("tests/test_no_such_file.py") == frozenset()
    row = "| r | w | `tests/a.py::test_b`, `tests/c.py::test_d` |"
    assert TEST_ID.findall(row) == [("tests/a.py", "test_b"), ("tests/c.py", "test_d")]
