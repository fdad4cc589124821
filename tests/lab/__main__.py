"""`python -m tests.lab up|down [--dir .lab] [--port-offset N]`: a lab left running for the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.lab.config import LabPorts
from tests.lab.mail_lab import MailLab
from tests.lab.procs import LabError


def _stored_ports(root: Path) -> LabPorts | None:
    try:
        return LabPorts(**json.loads((root / "lab.json").read_text())["ports"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def up(root: Path, offset: int) -> int:
    stored = _stored_ports(root)
    if stored is not None and MailLab(root, stored).running():
        print(f"lab already running in {root}: {stored.as_dict()}")
        return 0
    lab = MailLab(root, LabPorts().offset(offset))
    lab.stop()  # a half-running lab (one server died) is restarted whole
    lab.start()
    (root / "lab.env").write_text("".join(f"{key}={value}\n" for key, value in lab.env().items()))
    print(f"lab up in {root}: {lab.ports.as_dict()}")
    print(f"env: {root / 'lab.env'}  logs: {lab.layout.log_dir}  users: {', '.join(lab.users)}")
    return 0


def down(root: Path) -> int:
    lab = MailLab(root, _stored_ports(root))
    if not (lab.dovecot_running() or lab.postfix_running()):
        print(f"no lab running in {root}")
        return 0
    lab.stop()
    print(f"lab in {root} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".lab"), help="lab root (default .lab)")
    parser.add_argument("--port-offset", type=int, default=0, help="added to every default port")
    args = parser.parse_args(argv)
    root = args.dir.absolute()
    try:
        return up(root, args.port_offset) if args.command == "up" else down(root)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
