"""A test-only knob for crash tests: hold postroom at one exact point until it is killed.

``POSTROOM_TEST_STALL=KIND:N:PATH``: the Nth time this process reaches a point of that KIND
(``maildir``/``mbox``: halfway through writing a saved message; ``append``: right after an
APPEND to another account succeeded, before anything records it), it creates PATH and waits
there. A test waits for PATH, then SIGKILLs the process: the crash lands exactly where a real
one would do the most harm. Unset (always, outside tests), ``stall_point`` is None.
"""

from __future__ import annotations

import os
from pathlib import Path

STALL_ENV = "POSTROOM_TEST_STALL"
_seen: dict[str, int] = {}


def stall_point(kind: str) -> Path | None:
    """The path to create and stop at, when this is the asked-for point; else None."""
    wanted, _, rest = os.environ.get(STALL_ENV, "").partition(":")
    count, _, marker = rest.partition(":")
    if wanted != kind or not marker:
        return None
    _seen[kind] = _seen.get(kind, 0) + 1
    return Path(marker) if str(_seen[kind]) == count else None
