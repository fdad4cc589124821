"""Helpers for end-to-end tests: the reference config on the lab's ports, a data/hook HTTP
server, the real `postroom` command run as a subprocess, and ways to wait for it."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.lab import MailLab

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "deploy" / "demo" / "postroom.yaml"
POSTROOM = [sys.executable, "-m", "postroom.cli"]
HOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz"
T = TypeVar("T")


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


@dataclass
class DataServer:
    """Serves /rates.json and records POSTs (webhooks) on 127.0.0.1:<ephemeral>."""

    rates: dict[str, float] = field(default_factory=lambda: {"EUR": 1.0, "USD": 1.08})
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 204
    delay: float = 0.0  # seconds each POST takes to answer (a slow receiver: deliveries in flight)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(owner.rates).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) != length:  # the sender died mid-request (kill -9): not a delivery
                    return
                if owner.delay:
                    time.sleep(owner.delay)
                owner.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        # The daemon posts up to 20 webhooks at once; http.server's default backlog (5)
        # would drop connections and turn a burst into retries.
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def lab_config_text(lab: MailLab, text: str, data: DataServer | None = None) -> str:
    """The reference config's ports and URLs pointed at this test's lab and data server."""
    defaults = {
        "10025": lab.ports.smtp,
        "10143": lab.ports.imap,
        "10993": lab.ports.imaps,
        "10995": lab.ports.pop3s,
        "10110": lab.ports.pop3,
    }
    for old, new in defaults.items():
        text = text.replace(f"port: {old}", f"port: {new}")
    if data is not None:
        text = text.replace("http://127.0.0.1:9400", data.url)
    return text


def postroom_env(lab: MailLab, workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(lab.env())
    env.update(
        {
            "HOOK_SECRET": HOOK_SECRET,
            "POSTROOM_CONFIG": str(workdir / "postroom.yaml"),
            "POSTROOM_TEMPLATES": str(ROOT / "templates"),
            "POSTROOM_STATE_DIR": str(workdir / "state"),
            "POSTROOM_HTTP": "",
            "POSTROOM_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*POSTROOM, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class Daemon:
    """`postroom run` as a child process, stopped by its pid. ``command``: how to start postroom
    (tests/support/crash_points.py's, for a crash test)."""

    def __init__(self, env: dict[str, str], *args: str, log: Path, command: Sequence[str] = POSTROOM):
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(
            [*command, "run", *args], env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def wait_log(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def terminate(self, timeout: float = 25) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()


def iter_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def assert_each_row_once(raws: list[bytes], *, rows: int, max_duplicates: int) -> None:
    """A merge's mail as received: every "Row NNN" present, each under one Message-ID; any
    duplicate is a resend of an in-flight message (same Message-ID), at most max_duplicates."""
    by_row: dict[str, set[str]] = {}
    ids: Counter[str] = Counter()
    for raw in raws:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(("plain", "html"))
        if body is None:
            raise AssertionError(f"no text body in {msg['Message-ID']}")
        text = body.get_content()
        row = next(line for line in text.splitlines() if "Row " in line)
        by_row.setdefault(row.strip(), set()).add(msg["Message-ID"])
        ids[msg["Message-ID"]] += 1
    assert len(by_row) == rows, f"{rows - len(by_row)} recipient rows missing"
    assert all(len(found) == 1 for found in by_row.values()), "a duplicate with a new Message-ID"
    assert sum(n - 1 for n in ids.values()) <= max_duplicates


# Ports for a daemon's HTTP server come from below every lab (labs start at 20024) and
# below the kernel's ephemeral range (32768+). A port the kernel hands out for bind(0) is
# ephemeral: between our close and the daemon's bind, another worker's outgoing connection
# may take it as its source port (seen under three workers: the daemon could not bind, and
# readyz answered nothing for two minutes). Random, so workers and parallel runs seldom
# pick the same one; a port something listens on is passed over.
FREE_PORTS = range(2000, 10000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, outside the ephemeral range."""
    for _ in range(100):
        port = random.choice(FREE_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {FREE_PORTS}")


def wait_until(predicate: Callable[[], T], timeout: float = 20, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_ready(port: int, daemon: Daemon, timeout: float = 30) -> None:
    def ready() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, "readyz")


def mail(sender: str, to: str, subject: str, body: str = "hello", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg["Date"] = email.utils.formatdate()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


# alice sends and is watched; format with smtp= and imap= (bench/footprint uses it too).
ACCOUNT_CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
"""

# A mail merge: one message per row of shop.db's customers table, at {at}, two SMTP connections.
MERGE_CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}", connections: 2}}
jobs:
  merge:
    schedule: {{at: "{at}"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///shop.db"}}
"""

# Replicas sharing work (tests/test_replicas_share.py, bench/replicas): a merge at {at} from the
# rows of {shop}, and a webhook to {hooks} for every message in the folders {folders}.
REPLICAS_CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}", connections: 2}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}", start_from: all}}
jobs:
  merge:
    schedule: {{at: "{at}"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///{shop}"}}
rules:
  - name: hooks
    account: alice
    folders: [{folders}]
    match: {{}}
    actions: [{{webhook: {{url: "{hooks}/hook", secret: "${{HOOK_SECRET}}"}}}}]
"""
