"""The differential test: every script in tests/data/sieve/scripts over every message in
tests/data/, decided by postroom's interpreter and by Pigeonhole's ``sieve-test`` (the Sieve
implementation Dovecot ships), compared action by action: the folders stored into with their
flags, the redirect addresses, keep or not, vacation planned, and (for scripts with a
vacation, run again with ``-e``) vacation sent or declined by its guards.

How ``sieve-test`` is run (the project notes' sieve.md): as the unprivileged ``mail`` user,
with a minimal config (a throwaway maildir; ``sendmail_path = /bin/true``, so nothing is
sent), ``TZ=UTC`` (postroom's ``now`` is passed in UTC), and the envelope postroom reads from
the delivered message (``incoming.envelope.envelope_of``): ``-f`` the Return-Path (else From), ``-a``
and ``-r`` the Delivered-To (else X-Original-To, else the account's address).

Where the two may differ, legitimately, and how the test treats it (``DIFFERENCES``):

- the null sender: ``sieve-test -f`` refuses an empty sender (and one that is no address), so
  for such messages both sides are given ``MAILER-DAEMON@localhost`` - a limit of the tool,
  not of the language;
- ``reject``/``ereject`` are refused by postroom's ``check`` (not possible after delivery):
  no script here uses them; tests/test_sieve.py covers the refusal;
- the execution after delivery (copies carry the flags the message has, keep means "stay")
  is ``plan``'s business, tested in tests/test_sieve.py; this test compares the decisions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.incoming.envelope import Envelope, envelope_of
from postroom.incoming.message import ParsedMessage
from postroom.incoming.replies import vacation_refusal
from postroom.sieve.interpret import INBOX, Redirect, Store, Vacation, run
from postroom.sieve.syntax import read_script

DATA = Path(__file__).parent / "data"
SCRIPTS = sorted((DATA / "sieve" / "scripts").glob("*.sieve"))
MESSAGES = sorted(
    p for p in DATA.rglob("*") if p.is_file() and p.suffix in (".eml", ".txt") and "scripts" not in p.parts
)
ACCOUNT = "carol@example.test"
NULL_STAND_IN = "MAILER-DAEMON@localhost"
FOLDERS = ("Lists", "Invoices", "Archive", "Spam", "Work", "Misc", "Personal", "Inv2026")
SIEVE_TEST = "/usr/bin/sieve-test"
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")

DIFFERENCES = {
    "null sender": "sieve-test -f takes no empty or malformed sender: both sides get " + NULL_STAND_IN,
}


@dataclass(frozen=True)
class Decision:
    stores: frozenset[tuple[str, frozenset[str]]]  # (folder, flags lower-cased)
    redirects: frozenset[str]
    vacation: bool
    vacation_sent: bool | None = None  # known with -e only


def test_the_corpus_is_all_there() -> None:
    assert len(SCRIPTS) >= 40
    assert len(MESSAGES) >= 55  # 48 CPython + 2 SpamAssassin + 1 DSN + the sieve messages


def _envelope(msg: ParsedMessage) -> Envelope:
    envelope = envelope_of(msg, ACCOUNT)
    sender = envelope.sender if _ADDRESS.match(envelope.sender) else NULL_STAND_IN
    recipient = envelope.recipient if _ADDRESS.match(envelope.recipient) else ACCOUNT
    return Envelope(sender, recipient)


def _ours(script_path: Path, message: Path, now: datetime, *, with_vacation: bool) -> Decision:
    script = read_script(script_path)
    msg = ParsedMessage.from_bytes(message.read_bytes(), key=message.name)
    envelope = _envelope(msg)
    outcome = run(script, msg, envelope, now=now)
    stores = frozenset(
        (INBOX if s.folder.upper() == INBOX else s.folder, frozenset(f.lower() for f in s.flags))
        for s in outcome.actions
        if isinstance(s, Store)
    )
    redirects = frozenset(a.address.lower() for a in outcome.actions if isinstance(a, Redirect))
    vacations = [a for a in outcome.actions if isinstance(a, Vacation)]
    sent = None
    if with_vacation:
        sent = bool(vacations) and (
            vacation_refusal(msg, envelope.sender, [envelope.recipient, *vacations[0].addresses]) is None
        )
    return Decision(stores, redirects, bool(vacations), sent)


class Pigeonhole:
    """sieve-test in a throwaway directory the ``mail`` user owns."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="postroom-sieve-"))
        self.root.chmod(0o755)
        (self.root / "min.conf").write_text(
            f"mail_location = maildir:{self.root}/md\n"
            "sendmail_path = /bin/true\n"
            "plugin {\n  sieve_extensions = +vacation-seconds\n}\n"
        )
        for folder in FOLDERS:
            for sub in ("cur", "new", "tmp"):
                (self.root / "md" / f".{folder}" / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "in").mkdir()
        subprocess.run(["chown", "-R", "mail", str(self.root / "md")], check=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def place(self, path: Path, name: str) -> Path:
        target = self.root / "in" / name
        shutil.copyfile(path, target)
        target.chmod(0o644)
        return target

    def decide(self, script: Path, message: Path, envelope: Envelope, *, execute: bool) -> str:
        home = Path(tempfile.mkdtemp(dir=self.root, prefix="home-"))
        home.chmod(0o777)
        argv = ["runuser", "-u", "mail", "--", "env", f"HOME={home}", "TZ=UTC", SIEVE_TEST]
        argv += ["-c", str(self.root / "min.conf"), "-a", envelope.recipient, "-r", envelope.recipient]
        argv += ["-f", envelope.sender, *(["-e"] if execute else []), str(script), str(message)]
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=60)
        shutil.rmtree(home, ignore_errors=True)
        if "Fatal:" in done.stderr:
            raise AssertionError(f"sieve-test failed on {message.name}: {done.stderr}")
        return done.stdout + "\n" + done.stderr


def _theirs(planned: str, executed: str | None) -> Decision:
    stores: dict[str, frozenset[str]] = {}
    redirects: set[str] = set()
    vacation = False
    current: str | None = None
    in_message = False
    for line in planned.splitlines():
        if line.startswith("START MESSAGE"):
            in_message = True
        elif line.startswith("END MESSAGE"):
            in_message = False
        if in_message:
            continue
        if found := re.match(r"^ \* store message in folder: (.*)$", line):
            current = found.group(1)
            stores.setdefault(current, frozenset())
        elif (found := re.match(r"^\s+\+ add IMAP flags: (.*)$", line)) and current is not None:
            stores[current] = frozenset(f.lower() for f in found.group(1).split())
        elif found := re.match(r"^ \* redirect message to: <(.*)>$", line):
            redirects.add(found.group(1).lower())
            current = None
        elif line.startswith(" * send vacation message"):
            vacation = True
            current = None
        elif line.startswith(" * "):
            current = None
    sent = None
    if executed is not None:
        sent = "sent vacation response" in executed
    folders = frozenset((INBOX if f.upper() == INBOX else f, flags) for f, flags in stores.items())
    return Decision(folders, frozenset(redirects), vacation, sent)


@pytest.fixture(scope="module")
def pigeonhole() -> Iterator[Pigeonhole]:
    if not Path(SIEVE_TEST).exists():
        raise AssertionError("sieve-test is missing: apt-get install dovecot-sieve (deploy/setup.sh does)")
    box = Pigeonhole()
    yield box
    box.close()


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_postroom_decides_as_pigeonhole(script: Path, pigeonhole: Pigeonhole) -> None:
    now = datetime.now(UTC)
    with_vacation = "vacation" in script.read_text()
    placed_script = pigeonhole.place(script, script.name)
    placed = [pigeonhole.place(m, f"{i:03d}-{m.name}") for i, m in enumerate(MESSAGES)]

    def one(pair: tuple[Path, Path]) -> tuple[Path, Decision, Decision]:
        original, copy = pair
        envelope = _envelope(ParsedMessage.from_bytes(original.read_bytes(), key=original.name))
        planned = pigeonhole.decide(placed_script, copy, envelope, execute=False)
        executed = pigeonhole.decide(placed_script, copy, envelope, execute=True) if with_vacation else None
        return original, _ours(script, original, now, with_vacation=with_vacation), _theirs(planned, executed)

    workers = max(2, min(8, (os.cpu_count() or 2) * 2))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, zip(MESSAGES, placed, strict=True)))
    differing = [
        f"{message.relative_to(DATA)}:\n  postroom:   {ours}\n  Pigeonhole: {theirs}"
        for message, ours, theirs in results
        if ours != theirs
    ]
    assert not differing, f"{script.name}: {len(differing)} of {len(results)} messages differ:\n" + "\n".join(differing)
