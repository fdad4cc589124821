"""`python -m tests.lab up|down|clear|show [--dir .lab] [--port-offset N]`: a lab left running for the demo.

`show USER… [--folder F] [--flags]` prints each message's From, To, Subject and parts, read
back over IMAP — what a person would see in the mailbox.
"""

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


def _running_lab(root: Path) -> MailLab:
    lab = MailLab(root, _stored_ports(root))
    if not lab.running():
        raise LabError(f"no lab running in {root}; start it with: python -m tests.lab up --dir {root}")
    return lab


def clear(root: Path) -> int:
    _running_lab(root).clear_all()
    return 0


def show(root: Path, users: list[str], folder: str, flags: bool) -> int:
    import email
    import email.policy

    lab = _running_lab(root)
    for user in users:
        client = lab.imap_client(user)
        try:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        finally:
            client.logout()
        print(f"{user}@{folder}: {len(uids)} message(s)")
        for uid in uids:
            msg = email.message_from_bytes(fetched[uid][b"BODY[]"], policy=email.policy.default)
            parts = [
                p.get_content_type() + (f" ({p.get_filename()})" if p.get_filename() else "")
                for p in msg.walk()
                if not p.is_multipart()
            ]
            mark = " ".join(f.decode() for f in fetched[uid][b"FLAGS"]) if flags else ""
            print(f"  - {msg['Subject']!s}")
            print(f"      from {msg['From']!s} to {msg['To']!s}" + (f"  flags: {mark}" if mark else ""))
            print(f"      {msg.get_content_type()}: {', '.join(parts)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "clear", "show"])
    parser.add_argument("users", nargs="*", help="show: whose mailboxes")
    parser.add_argument("--folder", default="INBOX", help="show: which folder (default INBOX)")
    parser.add_argument("--flags", action="store_true", help="show: print each message's flags")
    parser.add_argument("--dir", type=Path, default=Path(".lab"), help="lab root (default .lab)")
    parser.add_argument("--port-offset", type=int, default=0, help="added to every default port")
    args = parser.parse_intermixed_args(argv)
    root = args.dir.absolute()
    try:
        if args.command == "up":
            return up(root, args.port_offset)
        if args.command == "clear":
            return clear(root)
        if args.command == "show":
            return show(root, args.users, args.folder, args.flags)
        return down(root)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
