"""The `postroom` command, one module per command group; each command is a thin shell over the
same parts the daemon uses. ``root`` holds the group (``app``), the entry point (``main``)
and what every command shares; the command modules below register on ``app`` when imported,
and import only click and ``root`` at the top (start-up stays short).

- ``init``: init, schema          - ``check``: check
- ``daemon``: run, migrate, jobs, status
- ``send``: send, preview         - ``rules``: rules test|try|failed
- ``outbox``: outbox, suppressions - ``deploy``: deploy systemd|compose
- ``auth``: auth login|status
"""

from . import auth, check, daemon, deploy, init, outbox, rules, send  # noqa: F401  (each registers its commands)
from .root import app, main

__all__ = ["app", "main"]
