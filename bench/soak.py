"""bench/soak: `postroom run` under load while it is killed with SIGKILL, and Dovecot and
Postfix are restarted under it. Counts what was lost, what ran twice and what arrived twice.

Own mail lab (real Dovecot + Postfix, tests/lab) on its own port offset, a fresh store, and
for `--duration` seconds (default 600):

- `--messages` mails in (default 1,000), half to alice's INBOX (IMAP, IDLE) and half to bob's
  maildrop (POP3, polled, `delete_after`), delivered over LMTP in small chunks over the first
  half of the run. Rules: every alice message is flagged, posted to a webhook and moved to
  Archive; every bob message is posted to the webhook; every tenth ("[fwd]") is also
  forwarded to carol, every twentieth ("[reply]", from its own sender s<k>) answered with an
  auto-reply;
- a `--rows`-row mail merge out (default 1,000; the `statement` template, SQLite rows, all
  to dave), scheduled a tenth into the run;
- `--kills` SIGKILLs of the daemon (default 20) at random moments (a fifth of them in the
  merge's first seconds), each followed at once by a new `postroom run` on the same store, and
  one Dovecot and one Postfix restart between them.

Then the chaos stops, the daemon is left to finish (the Postfix queue is flushed now and
then) until everything expected has arrived or `--drain` seconds pass, it is stopped with
SIGTERM and the edges are read:

- lost: an expected effect that never happened (a message not in Archive or not flagged, a
  webhook, forward, reply or merge message that never arrived);
- ran twice: an action done twice, i.e. its effect arrived under two different identities
  (two webhook-ids for one message and rule, two forwards/replies/merge messages with
  different Message-IDs, a message in Archive twice);
- duplicates at the edge: the same delivery arriving again under the same identity (same
  webhook-id, same Message-ID), which a crash between the send and its record allows.

Prints the figures; exit 1 when anything was lost or ran twice. Not part of the test suite.

Run: bench/soak [--duration 600] [--kills 20] [--messages 1000] [--rows 1000] [--seed N]
                [--port-offset 27000] [--keep]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests' helpers are not installed: import them from this checkout (hence the E402s below).
sys.path.insert(0, str(ROOT))

from tests.lab import LabPorts, MailLab  # noqa: E402
from tests.lab.mail_lab import DEFAULT_USERS  # noqa: E402
from tests.support.daemon import Daemon, DataServer, postroom_env  # noqa: E402

FWD_EVERY, REPLY_EVERY = 10, 20
CHUNK = 10  # messages per LMTP delivery
FIRST_KILL = 8.0  # seconds: let the first daemon migrate the fresh store before any kill
CUSTOMER = re.compile(r"Customer \d{5}")

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, start_from: all,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
  bob:
    address: bob@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: bob@example.test, password: "${{BOB_PASSWORD}}"}}
    pop3: {{host: 127.0.0.1, port: {pop3}, security: starttls, start_from: all, delete_after: true,
           poll_interval: 5s, username: bob@example.test, password: "${{BOB_PASSWORD}}"}}
outbox: {{retry_base: 1s}}
jobs:
  merge:
    schedule: {{at: "{merge_at}", timezone: UTC}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///{db}"}}
rules:
  - name: alice-all
    account: alice
    folder: INBOX
    match: {{}}
    actions:
      - {{flag: "\\\\Flagged"}}
      - {{webhook: {{url: "{hook}/hook"}}}}
      - {{move: Archive}}
  - name: alice-fwd
    account: alice
    folder: INBOX
    match: {{subject: {{contains: "[fwd]"}}}}
    actions: [{{forward: {{to: [carol@example.test]}}}}]
  - name: alice-reply
    account: alice
    folder: INBOX
    match: {{subject: {{contains: "[reply]"}}}}
    actions: [{{reply: {{template: out_of_office, days: 1}}}}]
  - name: bob-all
    account: bob
    match: {{}}
    actions: [{{webhook: {{url: "{hook}/hook"}}}}]
  - name: bob-fwd
    account: bob
    match: {{subject: {{contains: "[fwd]"}}}}
    actions: [{{forward: {{to: [carol@example.test]}}}}]
  - name: bob-reply
    account: bob
    match: {{subject: {{contains: "[reply]"}}}}
    actions: [{{reply: {{template: out_of_office, days: 1}}}}]
"""


@dataclass(frozen=True)
class Mail:
    user: str  # alice (IMAP) or bob (POP3)
    n: int
    sender: str | None  # a lab user of its own when the message asks for a reply

    @property
    def message_id(self) -> str:
        return f"<soak-{self.user}-{self.n}@example.test>"

    @property
    def forwarded(self) -> bool:
        return self.n % FWD_EVERY == 0

    def raw(self) -> bytes:
        tags = (" [fwd]" if self.forwarded else "") + (" [reply]" if self.sender else "")
        sender = f"{self.sender}@example.test" if self.sender else f"sender{self.n}@elsewhere.test"
        return (
            f"From: Sender {self.n} <{sender}>\r\nTo: {self.user}@example.test\r\n"
            f"Subject: soak {self.user} {self.n}{tags}\r\nDate: {formatdate()}\r\n"
            f"Message-ID: {self.message_id}\r\n\r\nbody of {self.n}\r\n"
        ).encode()


def plan_mail(total: int) -> list[Mail]:
    mails, k = [], 0
    for i in range(total):
        user, n = ("alice", i // 2) if i % 2 == 0 else ("bob", i // 2)
        sender = None
        if n % REPLY_EVERY == REPLY_EVERY // 2:
            sender, k = f"s{k}", k + 1
        mails.append(Mail(user, n, sender))
    return mails


@dataclass
class Figures:
    expected: int = 0
    lost: int = 0
    ran_twice: int = 0
    edge_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name:<22} expected {self.expected:>5}   lost {self.lost:>3}   ran twice {self.ran_twice:>3}   "
            f"duplicates at the edge {self.edge_duplicates:>3}"
            + (f"   ({'; '.join(self.notes)})" if self.notes else "")
        )


def by_identity(pairs: list[tuple[str, str]], expected: set[str]) -> Figures:
    """pairs of (what it is for, its identity as delivered): lost = expected keys never seen;
    ran twice = keys seen under more than one identity; edge duplicates = identities seen more
    than once."""
    identities: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for key, ident in pairs:
        identities[key].add(ident)
        seen[ident] += 1
    fig = Figures(expected=len(expected))
    fig.lost = len(expected - set(identities))
    fig.ran_twice = sum(len(ids) - 1 for ids in identities.values())
    fig.edge_duplicates = sum(n - 1 for n in seen.values())
    unexpected = set(identities) - expected
    if unexpected:
        fig.notes.append(f"{len(unexpected)} not expected at all")
    return fig


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def inner_message_id(msg: email.message.EmailMessage) -> str | None:
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            return str(part.get_payload()[0]["Message-ID"])
    return None


def deliver_chunk(lab: MailLab, chunk: list[Mail]) -> bool:
    try:
        for user in ("alice", "bob"):
            raws = [m.raw() for m in chunk if m.user == user]
            if raws:
                lab.deliver_many(user, raws)
        return True
    except OSError:
        return False  # Dovecot is restarting: the same chunk again later (Message-IDs are fixed)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, lab: MailLab) -> None:
        self.args, self.work, self.lab = args, work, lab
        self.rng = random.Random(args.seed)
        self.hooks = DataServer()
        self.mails = plan_mail(args.messages)
        self.log = work / "daemon.log"
        self.env = postroom_env(lab, work)
        self.daemon: Daemon | None = None
        self.kills = 0
        self.restarts: list[str] = []
        self.redelivered = 0  # chunks delivered again after a failed LMTP session
        self.merge_offset = 10.0  # seconds from the start to the merge's fire time

    def write_config(self, merge_at: datetime) -> None:
        db = self.work / "shop.db"
        con = sqlite3.connect(db)
        with con:
            con.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
            con.executemany(
                "INSERT INTO customers VALUES (?, ?, ?)",
                [(f"Customer {i:05d}", "dave@example.test", (i % 7 - 3) * 12.5 + i) for i in range(self.args.rows)],
            )
        con.close()
        ports = self.lab.ports
        (self.work / "postroom.yaml").write_text(
            CONFIG.format(
                smtp=ports.smtp,
                imap=ports.imap,
                pop3=ports.pop3,
                hook=self.hooks.url,
                db=db,
                merge_at=merge_at.strftime("%Y-%m-%dT%H:%M:%S"),
            )
        )

    def start_daemon(self) -> None:
        self.daemon = Daemon(self.env, log=self.log)

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.kill9()
        self.kills += 1
        self.start_daemon()

    def chaos(self) -> None:
        """Deliveries, kills and server restarts on one timeline over --duration seconds."""
        duration = self.args.duration
        events: list[tuple[float, str, object]] = []
        chunks = [self.mails[i : i + CHUNK] for i in range(0, len(self.mails), CHUNK)]
        for i, chunk in enumerate(chunks):
            events.append((2.0 + (duration / 2) * i / max(1, len(chunks)), "deliver", chunk))
        # a fifth of the kills while the merge runs (its first seconds), the rest anywhere
        in_merge = self.args.kills // 5
        for _ in range(in_merge):
            events.append((self.merge_offset + self.rng.uniform(0.5, 4.0), "kill", None))
        for _ in range(self.args.kills - in_merge):
            events.append((self.rng.uniform(FIRST_KILL, duration * 0.9), "kill", None))
        events.append((self.rng.uniform(duration * 0.2, duration * 0.5), "dovecot", None))
        events.append((self.rng.uniform(duration * 0.5, duration * 0.8), "postfix", None))
        events.sort(key=lambda e: e[0])
        pending: list[list[Mail]] = []
        start = time.monotonic()
        for at, kind, what in events:
            time.sleep(max(0.0, start + at - time.monotonic()))
            pending = [c for c in pending if not deliver_chunk(self.lab, c)]
            if kind == "deliver":
                assert isinstance(what, list)
                if not deliver_chunk(self.lab, what):
                    pending.append(what)
                    self.redelivered += 1
            elif kind == "kill":
                self.kill9()
            elif kind == "dovecot":
                self.lab.stop_dovecot()
                time.sleep(1.0)
                self.lab.start_dovecot()
                self.restarts.append(f"dovecot at {at:.0f}s")
            elif kind == "postfix":
                self.lab.stop_postfix()
                time.sleep(1.0)
                self.lab.start_postfix()
                self.restarts.append(f"postfix at {at:.0f}s")
        while pending:
            pending = [c for c in pending if not deliver_chunk(self.lab, c)]
            time.sleep(0.5)
        time.sleep(max(0.0, start + duration - time.monotonic()))

    # -- what arrived ----------------------------------------------------------------------

    def measure(self) -> dict[str, Figures]:
        lab, mails = self.lab, self.mails
        alice = {m.message_id for m in mails if m.user == "alice"}
        figures: dict[str, Figures] = {}

        with lab.imap_client("alice") as client:
            client.select_folder("Archive", readonly=True)
            uids = client.search(["ALL"])
            fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]", "FLAGS"]) if uids else {}
            inbox_left = int(client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"])
        archived: Counter[str] = Counter()
        unflagged = 0
        for row in fetched.values():
            mid = b" ".join(row[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split()[1:]).decode()
            archived[mid] += 1
            unflagged += b"\\Flagged" not in row[b"FLAGS"]
        move = Figures(
            expected=len(alice), lost=len(alice - set(archived)), ran_twice=sum(n - 1 for n in archived.values())
        )
        move.notes.append(f"{inbox_left} left in INBOX, {unflagged} in Archive not flagged")
        figures["IMAP move + flag"] = move
        figures["IMAP move + flag"].lost += unflagged

        posts = []
        for headers, body in self.hooks.posts:
            posts.append((json.loads(body)["message_id"], headers["webhook-id"]))
        figures["webhooks"] = by_identity(posts, {m.message_id for m in mails})

        forwards = []
        for raw in lab.fetch_all("carol"):
            msg = parse(raw)
            forwards.append((inner_message_id(msg) or "?", str(msg["Message-ID"])))
        figures["forwards"] = by_identity(forwards, {m.message_id for m in mails if m.forwarded})

        replies = []
        for user in sorted({m.sender for m in mails if m.sender}):
            for raw in lab.fetch_all(user):
                msg = parse(raw)
                replies.append((str(msg["In-Reply-To"]), str(msg["Message-ID"])))
        figures["auto-replies"] = by_identity(replies, {m.message_id for m in mails if m.sender})

        merged = []
        for raw in lab.fetch_all("dave"):
            msg = parse(raw)
            body = msg.get_body(("plain", "html"))
            found = CUSTOMER.search(body.get_content() if body is not None else "")
            merged.append((found.group(0) if found else "?", str(msg["Message-ID"])))
        figures["merge"] = by_identity(merged, {f"Customer {i:05d}" for i in range(self.args.rows)})

        left = self.pop3_left()
        figures["webhooks"].notes.append(f"{left} left in bob's maildrop (delete_after)")
        return figures

    def pop3_left(self) -> int:
        import poplib

        pop = poplib.POP3("127.0.0.1", self.lab.ports.pop3, timeout=30)
        try:
            pop.stls(self.lab.ssl_context())
            pop.user("bob@example.test")
            pop.pass_(self.lab.password("bob"))
            return int(pop.stat()[0])
        finally:
            pop.quit()

    def done(self) -> bool:
        try:
            figures = self.measure()
        except Exception:
            return False  # a server still coming up
        return all(f.lost == 0 for f in figures.values())

    def store_counts(self) -> str:
        con = sqlite3.connect(self.work / "state" / "postroom.db")
        try:
            parts = []
            for table in ("inbound", "actions", "outbox", "webhooks"):
                rows = con.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall()
                parts.append(f"{table}: " + ", ".join(f"{s} {n}" for s, n in sorted(rows)))
            return "\n".join(parts)
        finally:
            con.close()

    def run(self) -> int:
        self.merge_offset = max(10.0, self.args.duration / 10)
        merge_at = datetime.now(UTC) + timedelta(seconds=self.merge_offset)
        self.write_config(merge_at)
        print(
            f"bench/soak: {self.args.duration:.0f} s, {len(self.mails)} mails in (IMAP alice + POP3 bob), "
            f"{self.args.rows}-row merge at {merge_at:%H:%M:%S} UTC, {self.args.kills} kill -9, seed "
            f"{self.args.seed}; work dir {self.work}"
        )
        started = time.monotonic()
        self.start_daemon()
        try:
            self.chaos()
            print(
                f"chaos over after {time.monotonic() - started:.0f} s: {self.kills} kills, "
                f"{', '.join(self.restarts)}; {self.redelivered} LMTP chunks delivered again "
                f"(a repeat there would be the lab's, not postroom's); draining"
            )
            drain_until = time.monotonic() + self.args.drain
            while time.monotonic() < drain_until and not self.done():
                self.lab.flush_queue()
                time.sleep(5)
            time.sleep(3)  # a repeat still on its way would arrive now
            assert self.daemon is not None
            code = self.daemon.terminate()
            self.daemon = None
        finally:
            if self.daemon is not None:
                self.daemon.kill9()
            self.hooks.close()
        print(f"drained after {time.monotonic() - started:.0f} s; the last daemon exited {code} on SIGTERM")
        figures = self.measure()
        for name, fig in figures.items():
            print(fig.line(name))
        total = Figures(
            lost=sum(f.lost for f in figures.values()),
            ran_twice=sum(f.ran_twice for f in figures.values()),
            edge_duplicates=sum(f.edge_duplicates for f in figures.values()),
        )
        print(
            f"TOTAL: lost {total.lost}, ran twice {total.ran_twice}, duplicates at the edge (same id) "
            f"{total.edge_duplicates}"
        )
        print(self.store_counts())
        return 1 if total.lost or total.ran_twice or code != 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of chaos (default 600)")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 of the daemon at random moments")
    parser.add_argument("--messages", type=int, default=1000, help="mails in, half IMAP, half POP3")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the merge out")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds to wait for everything after")
    parser.add_argument("--seed", type=int, default=None, help="for the random moments (default: random)")
    parser.add_argument("--port-offset", type=int, default=27000, help="the soak lab's port offset")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, store, lab)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    work = Path(tempfile.mkdtemp(prefix="postroom-soak-"))
    work.chmod(0o755)  # Dovecot's mail uid must reach the lab inside it
    senders = {m.sender for m in plan_mail(args.messages) if m.sender}
    users = {**DEFAULT_USERS, **{s: f"{s}-pw" for s in sorted(senders)}}
    try:
        with MailLab(work / "lab", ports=LabPorts().offset(args.port_offset), users=users) as lab:
            return Soak(args, work, lab).run()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
