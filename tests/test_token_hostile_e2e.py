"""`postroom run` and `postroom check` against a hostile token endpoint in front of the OAuth2
lab's real one (tests/support/hostile_token_server.py): a 64 MiB answer, a 503 and then a 400
that echo the request (client secret and refresh token) in ``error_description``, and an
``expires_in`` of 1e30. The account's mail waits (queued, never dead), ``/readyz`` tells why,
nothing keeps a secret, and once the endpoint behaves the mail goes out."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.lab.oauth2 import OAuth2Lab
from tests.support.daemon import ROOT, Daemon, free_port, postroom_env, run_cli, wait_ready, wait_until
from tests.support.hostile_token_server import ECHO, ECHO_BUSY, HUGE, HostileTokenServer

CLIENT_SECRET = "maillab-secret"
CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    oauth2: {{provider: generic, token_url: "{token_url}", client_id: maillab,
              client_secret: "${{CLIENT_SECRET}}", refresh_token: "${{ALICE_REFRESH}}", scopes: [mail]}}
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           auth: xoauth2}}
outbox: {{retry_base: 1s, retry_max: 2s}}
jobs:
  ping:
    schedule: {{every: 1s}}
    account: alice
    template: ping
    to: [dave@example.test]
"""
PING = "{% block subject %}ping{% endblock %}{% block text %}A scheduled message.{% endblock %}\n"


class Site:
    def __init__(self, lab: OAuth2Lab, hostile: HostileTokenServer, workdir: Path) -> None:
        self.lab, self.hostile, self.workdir = lab, hostile, workdir
        self.refresh = lab.refresh_token("alice")
        templates = workdir / "templates"
        templates.mkdir()
        (templates / "ping.j2").write_text(PING)
        (workdir / "postroom.yaml").write_text(CONFIG.format(token_url=hostile.token_url, smtp=lab.ports.smtp))
        (workdir / "state").mkdir()
        self.port = free_port()
        self.env = postroom_env(
            lab,
            workdir,
            POSTROOM_HTTP=f"127.0.0.1:{self.port}",
            POSTROOM_TEMPLATES=str(templates),
            POSTROOM_LOG_LEVEL="DEBUG",
            CLIENT_SECRET=CLIENT_SECRET,
            ALICE_REFRESH=self.refresh,
            POSTROOM_TOKEN_KEY=Fernet.generate_key().decode(),
        )
        self.env["PYTHONPATH"] = str(ROOT)

    def outbox(self) -> dict[str, int]:
        with sqlite3.connect(self.workdir / "state" / "postroom.db") as conn:
            return dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())

    def stored(self) -> str:
        with sqlite3.connect(self.workdir / "state" / "postroom.db") as conn:
            return "\n".join(
                repr(row) for table in ("oauth2_tokens", "outbox") for row in conn.execute(f"SELECT * FROM {table}")
            )

    def readyz(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)

    def secrets_in(self, text: str) -> list[str]:
        return [s for s in (CLIENT_SECRET, self.refresh, self.refresh.split(".", 1)[1]) if s in text]


@pytest.fixture
def site(oauth2_lab: OAuth2Lab, tmp_path: Path) -> Iterator[Site]:
    oauth2_lab.drop_queue()
    oauth2_lab.clear_all()
    with HostileTokenServer(upstream=oauth2_lab.token_server.token_url) as hostile:
        yield Site(oauth2_lab, hostile, tmp_path)


def test_run_keeps_mail_queued_through_a_hostile_token_endpoint(site: Site) -> None:
    site.hostile.shape = HUGE
    daemon = Daemon(site.env, log=site.workdir / "daemon.log")
    try:
        wait_ready(site.port, daemon)
        wait_until(lambda: site.outbox().get("queued", 0) >= 2, 30, "pings queued behind the huge answer")
        failing = wait_until(lambda: site.readyz().json().get("oauth2_failing", {}).get("alice"), 20, "told")
        assert "larger than" in failing and site.readyz().status_code == 200

        site.hostile.shape = ECHO_BUSY
        time.sleep(3)
        site.hostile.shape = ECHO  # a permanent refusal: the account stops, its mail is held
        stopped = wait_until(lambda: site.readyz().status_code == 503, 20, "alice stopped")
        assert stopped and site.readyz().json()["oauth2_accounts"] == {"alice": False}
        status = run_cli(["auth", "status"], site.env)
        assert "bad request" in status.stdout + status.stderr
        assert site.outbox().get("dead", 0) == 0

        shown = (site.workdir / "daemon.log").read_text() + site.stored() + status.stdout + status.stderr
        assert site.secrets_in(shown) == []
        assert "Traceback" not in shown and "OverflowError" not in shown

        site.hostile.shape = "1e30"  # behaves (but for a silly lifetime): after a reload, all goes out
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: site.readyz().status_code == 200, 20, "alice ready again")
        wait_until(lambda: site.outbox().get("sent", 0) >= 3 and not site.outbox().get("queued"), 40, "sent")
        assert site.outbox().get("dead", 0) == 0
        assert "oauth2_failing" not in site.readyz().json()
    finally:
        assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("shape", "exit_code", "said"),
    [(HUGE, 1, "larger than"), (ECHO, 1, "bad request"), ("1e30", 0, "logged in as alice")],
)
def test_check_tells_a_hostile_token_endpoint_without_traceback_or_secret(
    site: Site, shape: str, exit_code: int, said: str
) -> None:
    site.hostile.shape = shape
    done = run_cli(["check"], site.env, timeout=120)
    output = done.stdout + done.stderr

    assert done.returncode == exit_code, output
    assert said in output
    assert "Traceback" not in output and site.secrets_in(output) == []
