"""How `python -m pytest` hands the suite's files to its xdist workers: the longest first.

The suite's wall time is its critical path: the worker that gets the last long file runs on
alone while the others are done. xdist's ``--dist loadfile`` sends a file whole to one worker
(a module's tests may share module-scoped servers, or a browser the first test signed in), in
the order of most tests first, so the single slow end-to-end tests (a rolling restart, one
test of a minute or more) used to start last. It also queues a worker's next file before that
worker starts the last test of its current one (a worker needs the test after the one it runs,
to know which fixtures to tear down), so a long test could wait behind another long test on one
worker while the others idled.

This scheduler keeps loadfile's unit, the file, with three changes:

- the units go out longest first, by the estimates in tests/data/test_durations.json (seconds
  per test, measured; a test not listed counts ``UNLISTED_SECONDS``);
- a worker about to run a long test (``LONG_SECONDS`` or more still to run) is given the
  shortest unit left as its next one, so the long units wait for a worker that is nearly free;
- the files in ``SPLIT_BY_TEST`` are split into one unit per test: their tests share nothing
  but session fixtures and cheap module ones (the Sieve differential test, one test a script).

Refresh the estimates after runs with ``--junitxml=run1.xml`` …:
``python -m tests.support.scheduling run1.xml run2.xml > tests/data/test_durations.json``.
A test missing from the table or one renamed only loses its place in the order.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

DURATIONS = Path(__file__).resolve().parent.parent / "data" / "test_durations.json"
# Tests at least this long are listed in the table; shorter ones count as UNLISTED_SECONDS.
LISTED_FROM_SECONDS = 1.0
UNLISTED_SECONDS = 0.2
# A worker with this much still to run gets the shortest unit next, not the longest.
LONG_SECONDS = 15.0
SPLIT_BY_TEST = frozenset({"tests/test_sieve_pigeonhole.py"})


def estimates() -> dict[str, float]:
    """Seconds per test node id, as last measured."""
    try:
        table: dict[str, float] = json.loads(DURATIONS.read_text())
    except FileNotFoundError:
        return {}
    return table


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Replaces loadfile's scheduler with the one below; other ``--dist`` modes stay xdist's."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """loadfile's units, longest first; no long unit queued behind a long test."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self.seconds = estimates()
            self._ordered = False
            if log is not None:
                self.log = log.longestfirstsched

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path in SPLIT_BY_TEST else path

        def _unit_seconds(self, unit: dict[str, bool]) -> float:
            return sum(self.seconds.get(nodeid, UNLISTED_SECONDS) for nodeid, done in unit.items() if not done)

        def _assign_work_unit(self, node: Any) -> None:
            # The first call comes after loadscope's schedule() built the queue.
            if not self._ordered:
                self._order_queue()
            still_to_run = sum(self._unit_seconds(unit) for unit in self.assigned_work.get(node, {}).values())
            last = next(reversed(self.workqueue))
            scope = last if still_to_run >= LONG_SECONDS else next(iter(self.workqueue))
            work_unit = self.workqueue.pop(scope)
            self.assigned_work.setdefault(node, {})[scope] = work_unit
            collection = self.registered_collections[node]
            node.send_runtest_some([collection.index(nodeid) for nodeid, done in work_unit.items() if not done])

        def _order_queue(self) -> None:
            units = list(self.workqueue.items())
            units.sort(key=lambda item: -self._unit_seconds(item[1]))  # stable: ties keep their order
            self.workqueue = OrderedDict(units)
            self._ordered = True

    return LongestFirstScheduling(config, log)


def durations_from_junit(reports: list[Path]) -> dict[str, float]:
    """Seconds per node id, the mean over the junit XML reports of the runs where the test
    passed (a failed one's time says little), for the tests of LISTED_FROM_SECONDS or more."""
    times: dict[str, list[float]] = {}
    for report in reports:
        for case in ET.parse(report).iter("testcase"):
            if any(child.tag in ("failure", "error", "skipped") for child in case):
                continue
            parts = case.get("classname", "").split(".")
            # classname "tests.test_x" or "tests.test_x.TestClass"; the file is the first test_ part.
            cut = next(i for i, part in enumerate(parts) if part.startswith("test_")) + 1
            nodeid = "/".join(parts[:cut]) + ".py::" + "::".join([*parts[cut:], case.get("name", "")])
            times.setdefault(nodeid, []).append(float(case.get("time", "0")))
    means = {nodeid: sum(seconds) / len(seconds) for nodeid, seconds in times.items()}
    return {nodeid: round(mean, 1) for nodeid, mean in sorted(means.items()) if mean >= LISTED_FROM_SECONDS}


if __name__ == "__main__":
    print(json.dumps(durations_from_junit([Path(arg) for arg in sys.argv[1:]]), indent=1))
