"""bench/send: postroom's outgoing throughput beside a plain smtplib loop, same run, same servers.

Both sides send N messages (default 1,000) through the lab's Postfix with STARTTLS + AUTH:

- smtplib: N messages composed beforehand (postroom's own renderer, so the same bytes and
  sizes), one smtplib.SMTP connection, starttls (lab CA, verified), login, sendmail loop, quit.
  Timed from connect to quit.
- postroom: `postroom send merge` as a subprocess, a for_each job over an N-row SQLite table
  rendered with templates/statement.j2. Timed from spawn to exit: process start, config load,
  data load, rendering, outbox writes, SMTP and bookkeeping. Peak RSS from wait4().

- postroom daemon: `postroom run` with the same job scheduled `at:` a few seconds ahead,
  started and ready (/readyz 200) before that time. Timed from the fire time to the moment
  Postfix accepted the merge's last message (max(sent_at) of the fire's outbox rows, which
  must all be `sent`): loading data, rendering, the outbox, SMTP and recording results, in
  the process where a scheduled merge runs. Peak RSS is the daemon's VmHWM before SIGTERM.

The clocks stop when Postfix has accepted every message. Delivery into the mailboxes
(Postfix -> LMTP -> Dovecot) is checked after each side, untimed for all, and the mailboxes
are cleared before the next side runs. Rounds rotate which side goes first. `--check` uses
the daemon's ratio (see bench/README.md for why).

Run: bench/send [--rows 1000] [--rounds 3] [--connections 16] [--port-offset 20000] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from postroom.bootstrap import load_checked
from postroom.clock import utcnow
from postroom.config import Settings
from postroom.outgoing.jobs import JobRunner
from postroom.store import NewMessage

ROOT = Path(__file__).resolve().parent.parent
# The tests' helpers are not installed: import them from this checkout (hence the E402s below).
sys.path.insert(0, str(ROOT))

from tests.lab import LabPorts, MailLab  # noqa: E402
from tests.support.daemon import postroom_env  # noqa: E402

POSTROOM = ROOT / ".venv" / "bin" / "postroom"
RECIPIENTS = ("bob", "carol", "dave")
DELIVERY_TIMEOUT = 180.0
READY_TIMEOUT = 30.0
CLI_SCHEDULE = '{cron: "0 6 1 * *"}'

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}", connections: {connections}}}
jobs:
  merge:
    schedule: {schedule}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///{db}"}}
"""


@dataclass
class Side:
    seconds: list[float]
    rss_kib: list[int]

    def rate(self, rows: int) -> list[float]:
        return [rows / s for s in self.seconds]


def seed_customers(db: Path, rows: int) -> dict[str, int]:
    """An N-row customers table spread over bob/carol/dave; returns messages owed per user."""
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(f"Customer {i:05d}", f"{RECIPIENTS[i % 3]}@example.test", (i % 7 - 3) * 12.5 + i) for i in range(rows)],
        )
    con.close()
    return {user: len(range(k, rows, len(RECIPIENTS))) for k, user in enumerate(RECIPIENTS)}


def prepare_messages(work: Path, env: dict[str, str]) -> list[NewMessage]:
    """The smtplib side's messages: rendered by postroom beforehand (untimed), same bytes."""
    settings = Settings(config=work / "postroom.yaml", templates=ROOT / "templates", state_dir=work / "state")
    loaded, renderer = load_checked_with(settings, env)
    runner = JobRunner(loaded.config, renderer, store=None)  # type: ignore[arg-type]  # build needs no store
    built = asyncio.run(runner.build("merge", key_prefix="plain", now=utcnow()))
    return built.messages


def load_checked_with(settings: Settings, env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)  # ${ALICE_PASSWORD} and SSL_CERT_FILE, as the CLI would see them
    try:
        return load_checked(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def send_plain(lab: MailLab, messages: list[NewMessage]) -> float:
    """One connection, STARTTLS (verified), AUTH, a sendmail loop, QUIT. Returns seconds."""
    context = lab.ssl_context()
    start = time.perf_counter()
    smtp = smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=30)
    try:
        smtp.starttls(context=context)
        smtp.login(lab.address("alice"), lab.password("alice"))
        for m in messages:
            refused = smtp.sendmail(m.envelope_from, list(m.recipients), m.raw)
            if refused:
                raise RuntimeError(f"smtplib: refused {refused}")
        smtp.quit()
    finally:
        smtp.close()
    return time.perf_counter() - start


def send_postroom(env: dict[str, str], work: Path, round_no: int) -> tuple[float, int]:
    """`postroom send merge` end to end. Returns (seconds, peak RSS in KiB)."""
    out_path = work / f"postroom-round{round_no}.log"
    with open(out_path, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(POSTROOM), "send", "merge"], env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"postroom send exited {proc.returncode}:\n{tail}")
    return elapsed, usage.ru_maxrss  # KiB on Linux


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"/readyz not 200 within {READY_TIMEOUT:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def fire_results(store: Path, key_prefix: str) -> tuple[int, int, datetime | None]:
    """(rows of this fire, how many are sent, the last sent_at) from the daemon's store."""
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        total, sent, last = con.execute(
            "SELECT count(*), sum(status = 'sent'), max(sent_at) FROM outbox WHERE dedup_key LIKE ?",
            (key_prefix + "%",),
        ).fetchone()
    finally:
        con.close()
    when = datetime.fromisoformat(last) if last else None
    return total, sent or 0, (when.replace(tzinfo=UTC) if when and when.tzinfo is None else when)


def send_daemon(
    env: dict[str, str], work: Path, round_no: int, rows: int, connections: int, db: Path, smtp_port: int, lead: float
) -> tuple[float, int]:
    """`postroom run` with the merge scheduled `lead` seconds ahead. Returns (seconds from the
    fire time to Postfix accepting the last message, the daemon's peak RSS in KiB)."""
    fire = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0) + timedelta(seconds=1)
    config = work / f"daemon-round{round_no}.yaml"
    at = fire.strftime("%Y-%m-%dT%H:%M:%S")
    config.write_text(
        CONFIG.format(smtp=smtp_port, connections=connections, db=db, schedule=f'{{at: "{at}", timezone: UTC}}')
    )
    port = free_port()
    daemon_env = {**env, "POSTROOM_CONFIG": str(config), "POSTROOM_HTTP": f"127.0.0.1:{port}"}
    log = work / f"daemon-round{round_no}.log"
    key_prefix = f"job:merge:{fire.strftime('%Y%m%dT%H%M%SZ')}:"
    store = work / "state" / "postroom.db"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(POSTROOM), "run"], env=daemon_env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, log)
        if datetime.now(UTC) >= fire:
            raise RuntimeError(f"daemon ready only after the fire time; raise --daemon-lead (now {lead} s)")
        deadline = time.monotonic() + lead + DELIVERY_TIMEOUT
        while True:  # a read-only look at the store 4 times a second: cheap beside the merge
            time.sleep(0.25)
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            total, sent, last = fire_results(store, key_prefix)
            if total == rows and sent == rows:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon: {sent} of {rows} sent ({total} queued) after the deadline")
        rss = peak_rss_kib(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    if code != 0:
        raise RuntimeError(f"daemon exited {code} on SIGTERM:\n{log.read_text(errors='replace')[-3000:]}")
    return (last - fire).total_seconds(), rss


def wait_delivered(lab: MailLab, owed: dict[str, int]) -> None:
    """Untimed: every message reached its mailbox (Postfix accepted it; now check Dovecot)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    for user, count in owed.items():
        with lab.imap_client(user) as client:
            while True:
                found = client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]
                if found == count:
                    break
                if found > count:
                    raise RuntimeError(f"{user}: {found} messages, expected {count} (duplicates?)")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{user}: {found} of {count} messages after {DELIVERY_TIMEOUT:.0f}s")
                time.sleep(0.1)


def fmt(values: list[float]) -> str:
    return "  ".join(f"{v:7.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/send", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="messages per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections", type=int, default=16, help="postroom's SMTP connections (the config allows up to 16)"
    )
    parser.add_argument("--port-offset", type=int, default=20000, help="the bench lab's port offset")
    parser.add_argument(
        "--daemon-lead", type=float, default=5.0, help="seconds between starting the daemon and its merge's fire time"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the daemon's median msg/s is below the loop's")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, store)")
    args = parser.parse_args(argv)

    # mkdtemp under /tmp: the mail uid must be able to reach the lab root.
    work = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
    work.chmod(0o755)
    lab = MailLab(work / "lab", LabPorts().offset(args.port_offset))
    try:
        lab.start()
        db = work / "shop.db"
        owed = seed_customers(db, args.rows)
        (work / "postroom.yaml").write_text(
            CONFIG.format(smtp=lab.ports.smtp, connections=args.connections, db=db, schedule=CLI_SCHEDULE)
        )
        env = postroom_env(lab, work)
        messages = prepare_messages(work, env)
        size = statistics.mean(len(m.raw) for m in messages)
        print(
            f"bench/send: {args.rows} messages per side, {args.rounds} rounds, "
            f"~{size:.0f} bytes each; Postfix on 127.0.0.1:{lab.ports.smtp}, STARTTLS + AUTH; "
            f"postroom connections: {args.connections}"
        )
        # Create the store once (untimed), as a user's daemon or earlier run would have.
        subprocess.run([str(POSTROOM), "outbox"], env=env, cwd=work, check=True, capture_output=True)

        sides = {"smtplib": Side([], []), "send": Side([], []), "daemon": Side([], [])}
        names = list(sides)
        for r in range(1, args.rounds + 1):
            shift = (r - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                lab.clear_all()
                if name == "smtplib":
                    seconds, rss = send_plain(lab, messages), 0
                elif name == "send":
                    seconds, rss = send_postroom(env, work, r)
                else:
                    seconds, rss = send_daemon(
                        env, work, r, args.rows, args.connections, db, lab.ports.smtp, args.daemon_lead
                    )
                sides[name].seconds.append(seconds)
                sides[name].rss_kib.append(rss)
                wait_delivered(lab, owed)
            plain, cli, daemon = sides["smtplib"], sides["send"], sides["daemon"]
            print(
                f"round {r}: smtplib {args.rows / plain.seconds[-1]:7.1f} msg/s ({plain.seconds[-1]:.2f} s)   "
                f"postroom send {args.rows / cli.seconds[-1]:7.1f} msg/s ({cli.seconds[-1]:.2f} s, "
                f"peak RSS {cli.rss_kib[-1] / 1024:.1f} MiB)   "
                f"daemon {args.rows / daemon.seconds[-1]:7.1f} msg/s ({daemon.seconds[-1]:.2f} s, "
                f"peak RSS {daemon.rss_kib[-1] / 1024:.1f} MiB)"
            )

        plain, cli, daemon = sides["smtplib"], sides["send"], sides["daemon"]
        plain_median = statistics.median(plain.rate(args.rows))
        cli_median = statistics.median(cli.rate(args.rows))
        daemon_median = statistics.median(daemon.rate(args.rows))
        print()
        print(
            f"smtplib loop, 1 connection              msg/s: {fmt(plain.rate(args.rows))}   median {plain_median:7.1f}"
        )
        print(
            f"postroom send (CLI, spawn to exit), {args.connections:2d} conn. msg/s: "
            f"{fmt(cli.rate(args.rows))}   median {cli_median:7.1f}"
        )
        print(
            f"postroom run (daemon, fire to last accepted) msg/s: {fmt(daemon.rate(args.rows))}   "
            f"median {daemon_median:7.1f}"
        )
        print(
            f"ratio postroom/smtplib (medians): daemon {daemon_median / plain_median:.2f}   "
            f"CLI {cli_median / plain_median:.2f}"
        )
        print(
            f"peak RSS: daemon max {max(daemon.rss_kib) / 1024:.1f} MiB (VmHWM)   "
            f"CLI max {max(cli.rss_kib) / 1024:.1f} MiB (ru_maxrss)"
        )
        if args.check and daemon_median < plain_median:
            print("CHECK FAILED: the daemon's merge is slower than the smtplib loop", file=sys.stderr)
            return 1
        return 0
    finally:
        lab.stop()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
