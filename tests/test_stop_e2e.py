"""SIGTERM ends `postroom run` within the stop time even when every server it talks to drips:
an IMAP and a POP3 server whose greetings never end, an SMTP server a job is sending through,
a webhook receiver and a job's `http:` data source that answer a byte at a time. Every
deadline is left at its default (minutes), so only the stop's own cut of blocked reads can
end the worker threads in time; without it the process never exits at all."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, postroom_env, wait_until
from tests.support.scripted_imap import Drip, scripted_imap
from tests.support.scripted_pop3 import scripted_pop3
from tests.support.webhook_receiver import DrippingReceiver

STOP_WITHIN = 20.0  # seconds: the 15 s grace period (docs/pages/deploy.md) and a margin

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}", start_from: all}}
  slowimap:
    address: slowimap@example.test
    imap: {{host: 127.0.0.1, port: {slow_imap}, security: none, username: u, password: p, start_from: all}}
  slowpop:
    address: slowpop@example.test
    pop3: {{host: 127.0.0.1, port: {slow_pop3}, security: none, username: u, password: p, start_from: all}}
  slowsmtp:
    address: slowsmtp@example.test
    smtp: {{host: 127.0.0.1, port: {slow_smtp}, security: none}}
jobs:
  send-slowly:
    schedule: {{at: "{at}"}}
    account: slowsmtp
    template: slow
    to: [bob@example.test]
  load-slowly:
    schedule: {{at: "{at}"}}
    account: slowsmtp
    template: slow
    to: [bob@example.test]
    data:
      rates: {{http: "{data_url}/rates.json", timeout: 300}}
rules:
  - name: hook
    account: alice
    folder: INBOX
    match: {{}}
    actions: [{{webhook: {{url: "{hook_url}/hook", timeout: 300}}}}]
  - name: slow-imap
    account: slowimap
    folder: INBOX
    match: {{}}
    actions: [{{flag: "\\\\Flagged"}}]
  - name: slow-pop
    account: slowpop
    match: {{}}
    actions: [{{webhook: {{url: "{hook_url}/pop"}}}}]
"""

TEMPLATE = "{% block subject %}Slowly{% endblock %}\n{% block text %}Sent slowly.{% endblock %}\n"
FOREVER = b"x" * 100_000  # at a byte every 0.5 s: longer than any test


def test_sigterm_ends_the_daemon_in_time_while_every_server_drips(tmp_path: Path, clean_lab) -> None:
    clean_lab.deliver("alice", b"From: r@example.test\r\nTo: alice@example.test\r\nSubject: hook me\r\n\r\nbody\r\n")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "slow.j2").write_text(TEMPLATE)
    no_answer = lambda *_: b""  # noqa: E731 - the greetings never end: no command comes
    with (
        scripted_imap(no_answer, Drip(b"* OK " + FOREVER, 0.5)) as slow_imap,
        scripted_pop3(no_answer, Drip(b"+OK " + FOREVER, 0.5)) as slow_pop3,
        scripted_imap(no_answer, Drip(b"220 " + FOREVER, 0.5)) as slow_smtp,
        DrippingReceiver(0.5) as hooks,
        DrippingReceiver(0.5) as data,
    ):
        at = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S")
        (tmp_path / "postroom.yaml").write_text(
            CONFIG.format(
                imap=clean_lab.ports.imap,
                slow_imap=slow_imap.port,
                slow_pop3=slow_pop3.port,
                slow_smtp=slow_smtp.port,
                at=at,
                data_url=data.url,
                hook_url=hooks.url,
            )
        )
        env = postroom_env(clean_lab, tmp_path, POSTROOM_TEMPLATES=str(templates))
        daemon = Daemon(env, log=tmp_path / "daemon.log")
        try:
            daemon.wait_log("postroom running", timeout=60)
            for name, started in [
                ("imap", slow_imap.connected.is_set),
                ("pop3", slow_pop3.connected.is_set),
                ("smtp", slow_smtp.connected.is_set),
                ("webhook", lambda: hooks.requests > 0),
                ("http source", lambda: data.requests > 0),
            ]:
                wait_until(started, 30, f"the daemon talking to the dripping {name} server")
            daemon.proc.terminate()  # SIGTERM
            stopped_at = time.monotonic()
            try:
                code = daemon.proc.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit within {STOP_WITHIN:g} s of SIGTERM:\n{daemon.log.read_text()[-3000:]}")
            took = time.monotonic() - stopped_at
        finally:
            if daemon.proc.poll() is None:
                daemon.kill9()
            else:
                daemon.terminate()
    assert code == 0, daemon.log.read_text()[-3000:]
    assert '"stopped"' in daemon.log.read_text()
    print(f"exit {code} {took:.1f} s after SIGTERM")
