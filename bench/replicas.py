"""bench/replicas: 1, 2 and 3 replicas (`postroom run`, one config, one PostgreSQL, the lab's
Dovecot and Postfix); what sharing the work buys, and how fast a dead replica's work resumes.

1. Incoming. 6 watched folders, each replica's share settled first (6, 3 or 2 folders each).
   Then 1,000 messages are seeded across the 6 folders at once (Maildir files + doveadm index:
   the watchers hear of them by IDLE); a rule posts a webhook for each to a local receiver.
   Timed from the seeding to every message taken in (its webhook action recorded in the
   ledger: fetched, matched, delivery stored), and to the 1,000th distinct webhook-id received.
2. Backlog at start. The 1,000 messages are seeded first, then the N replicas are started
   together: timed from the first replica's heartbeat row (written as it starts its watchers)
   to the last message's action recorded (replicas started together share the folders from
   the first second instead of the first one up taking all).
3. Merge. A 3,000-row mail merge to bob fires at a set time on the same replicas; timed from
   the fire's run starting (a replica up late runs it as a catch-up) to the 3,000th row
   `sent` in the outbox (every replica's sender claims batches of the rows the firing replica
   did not keep); how long until the rows were stored, how many replicas held rows at some
   point and the replicas' CPU seconds are printed beside it.
4. Healing (3 replicas, default leases: POSTROOM_LEASE_SECONDS=20). Mid-merge, with busy
   folders, the replica holding the most merge rows is killed with SIGKILL. Timed from the kill
   to the first of its leased rows being sent by another replica, and to its folders being
   held by the others.
Each run on a fresh PostgreSQL database and empty mailboxes. Medians over --rounds.
Targets: 3 replicas >= 1.5x one replica on the incoming run, >= 2.5x on the backlog at start,
>= 2x on the merge.

Run: bench/replicas [--rounds 3] [--messages 1000] [--rows 3000] [--port-offset 14500]
                    [--replicas 1,2,3] [--parts incoming,merge,backlog,healing]
BENCH_REPLICAS_LOGS=DIR keeps every replica's log (BENCH_REPLICAS_LOG_LEVEL=INFO for more).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
# The tests' helpers are not installed: import them from this checkout (hence the E402s below).
sys.path.insert(0, str(ROOT))

from tests.lab import LabPorts, MailLab  # noqa: E402
from tests.support.daemon import REPLICAS_CONFIG, DataServer, free_port, postroom_env  # noqa: E402

POSTROOM = ROOT / ".venv" / "bin" / "postroom"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FOLDERS = [f"f{i}" for i in range(1, 7)]


def wait(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll until predicate() is true; returns the monotonic time it became so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise SystemExit(f"bench/replicas: timed out waiting for {what}")


class Run:
    """N replicas on a fresh database, the merge firing at ``at``."""

    def __init__(
        self, lab: MailLab, work: Path, hooks: DataServer, *, rows: int, merge_at: datetime, lease: str | None
    ):
        self.lab, self.work = lab, work
        self.db = f"bench_replicas_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db}"'))
        admin.dispose()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db}"
        self.engine = create_engine(self.url)
        shop = work / "shop.db"
        shop.unlink(missing_ok=True)
        with sqlite3.connect(shop) as db:
            db.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
            db.executemany(
                "INSERT INTO customers VALUES (?, ?, ?)",
                [(f"Row {i:05d}", "bob@example.test", float(i)) for i in range(rows)],
            )
        (work / "postroom.yaml").write_text(
            REPLICAS_CONFIG.format(
                smtp=lab.ports.smtp,
                imap=lab.ports.imap,
                at=merge_at.strftime("%Y-%m-%dT%H:%M:%S"),
                shop=shop,
                folders=", ".join(FOLDERS),
                hooks=hooks.url,
            )
        )
        self.lease = lease
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *, wait_ready: bool = True) -> Callable[[], bool]:
        """Launch replica ``name``; wait until it is ready unless told not to. Returns its
        readiness probe."""
        port = free_port()
        extra = {"POSTROOM_LEASE_SECONDS": self.lease} if self.lease else {}
        env = postroom_env(
            self.lab,
            self.work,
            POSTROOM_HTTP=f"127.0.0.1:{port}",
            POSTROOM_DATABASE_URL=self.url,
            POSTROOM_INSTANCE=name,
            POSTROOM_STATE_DIR=str(self.work / name),
            POSTROOM_TEMPLATES=str(ROOT / "templates"),
            POSTROOM_LOG_LEVEL=os.environ.get("BENCH_REPLICAS_LOG_LEVEL", "WARNING"),
            **extra,
        )
        log = open(self.work / f"{name}.log", "ab")  # the process writes it until it ends
        self.procs[name] = subprocess.Popen(
            [str(POSTROOM), "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.work
        )

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if wait_ready:
            wait(ready, 300, f"{name} ready", step=0.2)  # a loaded host starts slowly
        return ready

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def holders(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT owner, count(*) FROM watch_leases WHERE expires_at > now() GROUP BY owner")
            ).all()
        return {owner: n for owner, n in rows}

    def settle(self, n: int) -> None:
        share = -(-len(FOLDERS) // n)
        wait(
            lambda: (
                (h := self.holders()) and len(h) == n and max(h.values()) <= share and sum(h.values()) == len(FOLDERS)
            ),
            120,
            "the folders shared out",
            step=0.2,
        )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        keep = os.environ.get("BENCH_REPLICAS_LOGS")  # a folder to keep every run's replica logs in
        if keep:
            for name in self.procs:
                log = self.work / f"{name}.log"
                shutil.copy(log, Path(keep) / f"{self.db}-{name}.log")
                log.unlink()
        self.engine.dispose()
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": self.db}
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db}"'))
        admin.dispose()


def messages(n: int) -> dict[str, list[bytes]]:
    date, by_folder = formatdate(), {f: [] for f in FOLDERS}
    for i in range(n):
        by_folder[FOLDERS[i % len(FOLDERS)]].append(
            (
                f"From: Person {i} <p{i}@example.test>\r\nTo: alice@example.test\r\nSubject: hello {i}\r\n"
                f"Date: {date}\r\nMessage-ID: <bench-{uuid.uuid4().hex}@example.test>\r\n\r\nbody {i}\r\n"
            ).encode()
        )
    return by_folder


def fresh_mailboxes(lab: MailLab) -> None:
    lab.clear_all()
    for folder in FOLDERS:
        lab.doveadm("mailbox", "create", "-u", "alice", folder)


def backlog_at_start(lab: MailLab, work: Path, n: int, *, count: int) -> tuple[float, str]:
    """(seconds from the first of n replicas started together counting itself in to every
    message of a backlog seeded before they started taken in, how the folders were held from
    the first replica ready: each change as "+seconds holder:count...")."""
    fresh_mailboxes(lab)
    for folder, raws in messages(count).items():
        lab.seed_maildir("alice", folder, raws)
    hooks = DataServer()
    run = Run(lab, work, hooks, rows=0, merge_at=datetime.now(UTC) + timedelta(days=1), lease=None)
    try:
        probes = [run.start(f"r{i + 1}", wait_ready=False) for i in range(n)]
        started = wait(lambda: any(probe() for probe in probes), 300, "a replica ready", step=0.1)
        changes: list[str] = []
        last: dict[str, int] = {}

        def all_taken() -> bool:
            nonlocal last
            held = run.holders()
            if held != last:
                shown = " ".join(f"{k}:{v}" for k, v in sorted(held.items()))
                changes.append(f"+{time.monotonic() - started:.1f}s {shown}")
                last = held
            return run.scalar("SELECT count(*) FROM actions WHERE status = 'done'") == count

        wait(all_taken, 600, "the backlog taken in")
        # From the first replica's heartbeat row (written as it starts its watchers) to the last
        # action recorded: /readyz may answer only after a small backlog is already taken in.
        first = run.scalar("SELECT min(started_at) FROM replicas")
        last = run.scalar("SELECT max(updated_at) FROM actions")
        return (last - first).total_seconds(), ", ".join(changes)  # type: ignore[operator]
    finally:
        run.close()
        hooks.close()


def incoming_run(lab: MailLab, work: Path, n: int, *, count: int) -> tuple[float, float]:
    """(incoming seconds, webhooks seconds) with n replicas, each holding its share first."""
    fresh_mailboxes(lab)
    hooks = DataServer()
    run = Run(lab, work, hooks, rows=0, merge_at=datetime.now(UTC) + timedelta(days=1), lease=None)
    try:
        for i in range(n):
            run.start(f"r{i + 1}")
        run.settle(n)
        started = time.monotonic()
        for folder, raws in messages(count).items():
            lab.seed_maildir("alice", folder, raws)
        taken = wait(
            lambda: run.scalar("SELECT count(*) FROM actions WHERE status = 'done'") == count,
            600,
            "every message taken in",
        )
        done = wait(lambda: len({h["webhook-id"] for h, _ in hooks.posts}) >= count, 900, "every webhook")
        return taken - started, done - started
    finally:
        run.close()
        hooks.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def merge_run(lab: MailLab, work: Path, n: int, *, rows: int) -> tuple[float, float, int, float]:
    """(seconds from the fire's run starting to the last row sent, of which until the rows were
    stored, how many replicas were seen holding rows, the replicas' CPU seconds from the fire
    time to the end) with n replicas."""
    fresh_mailboxes(lab)
    hooks = DataServer()
    fire = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8 + 4 * n)
    run = Run(lab, work, hooks, rows=rows, merge_at=fire, lease=None)
    senders: set[str] = set()

    def all_sent() -> bool:
        with run.engine.connect() as conn:
            held = conn.execute(
                text("SELECT DISTINCT split_part(lease_owner, '/', 1) FROM outbox WHERE status = 'sending'")
            ).scalars()
            senders.update(h for h in held if h)
        return run.scalar("SELECT count(*) FROM outbox WHERE status = 'sent'") == rows

    try:
        for i in range(n):
            run.start(f"r{i + 1}")
        pids = [proc.pid for proc in run.procs.values()]
        time.sleep(max((fire - datetime.now(UTC)).total_seconds(), 0))
        cpu = cpu_seconds(pids)
        wait(all_sent, 900, "the merge", step=0.2)
        cpu = cpu_seconds(pids) - cpu
        # From the run's start, not the fire time: a replica that came up late on a loaded host
        # runs it as a catch-up, and its start-up is not the merge's work.
        began = run.scalar("SELECT min(started_at) FROM job_runs WHERE job_id = 'merge'")
        last = run.scalar("SELECT max(sent_at) FROM outbox")
        stored = run.scalar("SELECT max(created_at) FROM outbox")
        return (last - began).total_seconds(), (stored - began).total_seconds(), len(senders), cpu  # type: ignore[operator]
    finally:
        run.close()
        hooks.close()


def healing(lab: MailLab, work: Path, *, rows: int, count: int) -> tuple[float, float]:
    """(seconds from kill -9 to the first of its rows sent by another, to its folders held by others)."""
    fresh_mailboxes(lab)
    hooks = DataServer()
    hooks.delay = 0.2
    fire = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=25)
    run = Run(lab, work, hooks, rows=rows, merge_at=fire, lease=None)
    try:
        for name in ("r1", "r2", "r3"):
            run.start(name)
        run.settle(3)
        for folder, raws in messages(count).items():
            lab.seed_maildir("alice", folder, raws)

        def busiest() -> str | None:
            sent = run.scalar("SELECT count(*) FROM outbox WHERE status = 'sent'") or 0
            with run.engine.connect() as conn:
                held = conn.execute(
                    text(
                        "SELECT split_part(lease_owner, '/', 1), count(*) FROM outbox "
                        "WHERE status = 'sending' GROUP BY 1 ORDER BY 2 DESC"
                    )
                ).first()
            return held[0] if held and 100 <= sent <= rows // 2 else None  # type: ignore[operator]

        wait(lambda: busiest(), 300, "the merge under way")
        victim = busiest() or "r1"
        with run.engine.connect() as conn:
            ids = list(
                conn.execute(
                    text("SELECT id FROM outbox WHERE status = 'sending' AND lease_owner LIKE :o"), {"o": f"{victim}/%"}
                ).scalars()
            )
        run.procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        run.procs[victim].wait(10)
        others = [n for n in run.procs if n != victim]
        rows_back = wait(
            lambda: run.scalar(
                "SELECT count(*) FROM outbox WHERE id = ANY(:ids) AND (status = 'sent' OR lease_owner NOT LIKE :o)",
                ids=ids,
                o=f"{victim}/%",
            ),
            120,
            "its rows resumed",
        )
        folders_back = wait(
            lambda: set(run.holders()) <= set(others) and sum(run.holders().values()) == 6,
            120,
            "its folders taken over",
        )
        return rows_back - killed, folders_back - killed
    finally:
        run.close()
        hooks.close()


PARTS = ("incoming", "merge", "backlog")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--port-offset", type=int, default=14500, help="the bench lab's port offset")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to run, e.g. 1,3 (1 is the base)")
    parser.add_argument(
        "--parts", default="incoming,merge,backlog,healing", help="which runs: incoming, merge, backlog, healing"
    )
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.replicas.split(",")} | {1})
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {*PARTS, "healing"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    # part -> replicas -> one value per round: incoming, webhooks, merge, stored, senders, backlog
    results: dict[str, dict[int, list[float]]] = {}

    def note(what: str, n: int, value: float) -> None:
        results.setdefault(what, {}).setdefault(n, []).append(value)

    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the mail uid must reach the lab root
        lab = MailLab(work / "lab", LabPorts().offset(args.port_offset))
        lab.prepare()
        lab.start()
        heals: list[tuple[float, float]] = []
        try:
            for r in range(args.rounds):
                for n in counts:  # both sides interleaved, round after round
                    said = []
                    if "incoming" in parts:
                        inc, hooked = incoming_run(lab, work, n, count=args.messages)
                        note("incoming", n, inc)
                        note("webhooks", n, hooked)
                        said.append(f"incoming {inc:.2f} s, webhooks {hooked:.2f} s")
                    if "merge" in parts:
                        merge, stored, senders, cpu = merge_run(lab, work, n, rows=args.rows)
                        note("merge", n, merge)
                        note("stored", n, stored)
                        note("senders", n, senders)
                        note("cpu", n, cpu)
                        said.append(
                            f"merge {merge:.2f} s (rows stored after {stored:.2f} s, {senders} sending, "
                            f"replicas' CPU {cpu:.1f} s)"
                        )
                    if "backlog" in parts:
                        backlog, held = backlog_at_start(lab, work, n, count=args.messages)
                        note("backlog", n, backlog)
                        said.append(f"backlog at start {backlog:.2f} s (folders held: {held})")
                    print(f"round {r + 1}, {n} replica(s): " + ", ".join(said), flush=True)
                if "healing" in parts:
                    heals.append(healing(lab, work, rows=args.rows, count=args.messages))
                    print(
                        f"round {r + 1}, kill -9: rows resumed after {heals[-1][0]:.1f} s, "
                        f"folders after {heals[-1][1]:.1f} s",
                        flush=True,
                    )
        finally:
            lab.stop()
    print(
        f"\nbench/replicas: {args.messages} messages over {len(FOLDERS)} folders, a {args.rows}-row merge; "
        f"medians of {args.rounds} round(s), speed-ups against 1 replica in the same run"
    )
    for what, unit in (("incoming", args.messages), ("webhooks", args.messages), ("merge", args.rows), ("backlog", 0)):
        if what not in results:
            continue
        base = statistics.median(results[what][1])
        for n in counts:
            value = statistics.median(results[what][n])
            rate = f"  {unit / value:>6.0f}/s" if unit else ""
            extra = ""
            if what == "merge":
                stored = statistics.median(results["stored"][n])
                extra = (
                    f"  (stored after {stored:.2f} s, {statistics.median(results['senders'][n]):.0f} sending, "
                    f"replicas' CPU {statistics.median(results['cpu'][n]):.1f} s)"
                )
            print(f"{what:>9}  {n} replica(s)  {value:>8.2f} s{rate}  {base / value:>5.2f}x{extra}")
    if heals:
        rows_back, folders_back = (statistics.median(h[i] for h in heals) for i in (0, 1))
        print(
            f"kill -9 of the busiest of 3 (POSTROOM_LEASE_SECONDS=20): its rows resume after {rows_back:.1f} s, "
            f"its folders after {folders_back:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
