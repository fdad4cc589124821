"""postroom: scheduled template mail out, inbox rules in.

structlog imports rich (which imports pygments) as soon as it is installed, only to draw
tracebacks on a terminal: about 8 MiB resident for the whole life of a daemon that logs JSON
(bench/footprint). rich is hidden while structlog loads, so structlog falls back to plain
tracebacks; typer still finds rich later for `--help`.
"""

import sys

if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
