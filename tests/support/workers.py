"""Which pytest-xdist worker this process is, and the lab ports that are its own.

`python -m pytest` runs the suite on several worker processes (``-n`` in pyproject's addopts).
Each worker has its own session, so its own session-scoped labs, on ports no other worker
uses: worker N (``PYTEST_XDIST_WORKER=gwN``) adds N × 1000 to ``POSTROOM_LAB_PORT_OFFSET``.
A mail lab spans 971 ports (10024…10995 before the offset) and the OAuth2 lab sits 100 above
it, so the labs of neighbouring workers never meet. A serial run (``-n0``) is worker 0.
"""

from __future__ import annotations

import os

WORKER_SPACING = 1000
DEFAULT_OFFSET = 10000
# The highest port a lab takes before its offset (the OAuth2 lab's POP3S, 100 above 10995).
HIGHEST_LAB_PORT = 11095


def worker_index() -> int:
    """0 for a serial run, N for xdist's worker gwN."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name.removeprefix("gw")) if name.startswith("gw") and name[2:].isdigit() else 0


def lab_port_offset() -> int:
    """The port offset of this worker's labs."""
    offset = int(os.environ.get("POSTROOM_LAB_PORT_OFFSET", str(DEFAULT_OFFSET))) + WORKER_SPACING * worker_index()
    if offset + HIGHEST_LAB_PORT > 65535:
        raise ValueError(f"lab port offset {offset} puts the lab past port 65535: fewer workers or a lower offset")
    return offset
