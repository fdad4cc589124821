"""A skipped test is a failed test here, unless it is marked ``may_skip``.

A skip for a missing file, tool or server looks like a pass in a summary that nobody reads,
and a suite can shrink that way on another machine without anyone noticing. So every skip
(a ``skip``/``skipif`` mark, ``pytest.skip()``, a module skipped at import) is reported as a
failure naming its reason. The one kind of skip allowed is a test that says, with
``@pytest.mark.may_skip("why")``, that the machine may lack what it checks and that this is
no gap in the project (a kernel feature, say); ``pytest -rs`` still lists those.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

MARKER = "may_skip"
HINT = "a skip fails this suite: provide what the test needs; see tests/support/no_skips.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(why): this test may skip on a machine without what it needs")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    # a skip's longrepr is (path, line, "Skipped: reason")
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker(MARKER) is None:
        report.outcome = "failed"
        report.longrepr = f"{_reason(report)}\n({HINT})"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{_reason(report)}\n({HINT})"
    return report
