"""The mail lab: real Dovecot + Postfix on loopback for tests, benchmarks and the demo.

    from tests.lab import MailLab, LabPorts
    with MailLab(root, LabPorts().offset(10000)) as lab:
        lab.deliver("alice", raw)

CLI: ``python -m tests.lab up|down [--dir .lab] [--port-offset N]``.
"""

from tests.lab.config import DOMAIN, LabPorts
from tests.lab.mail_lab import DEFAULT_USERS, MailLab
from tests.lab.procs import LabError

__all__ = ["DEFAULT_USERS", "DOMAIN", "LabError", "LabPorts", "MailLab"]
