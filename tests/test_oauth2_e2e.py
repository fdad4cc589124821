"""OAuth2-only accounts end to end: `postroom run` as a real process against the OAuth2 lab
(Dovecot + Postfix checking every bearer token with the lab's token server).

Access tokens live 6 s here, not an hour: the daemon refreshes 1.5 s before expiry (a quarter
of the lifetime), so a run of 20 s spans more than three lifetimes of every account's token,
and each protocol logs in again with fresh tokens as it would over months — at a twelfth of
the suite time 20 s tokens would cost.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.lab.oauth2 import OAuth2Lab
from tests.support.daemon import (
    ROOT,
    Daemon,
    DataServer,
    free_port,
    iter_json_lines,
    mail,
    postroom_env,
    wait_ready,
    wait_until,
)

TOKEN_LIFETIME = 6  # seconds
CLIENT_SECRET = "maillab-secret"

# alice: sends a job every 2 s (XOAUTH2) and has her INBOX watched over IDLE (OAUTHBEARER);
# bob: a POP3 maildrop polled every second (XOAUTH2); carol: an IMAP inbox of her own, the
# "other account" that must go on when alice stops. Refresh tokens: stored by the test as
# `postroom auth login` would store them.
CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    oauth2: {{provider: generic, token_url: "{token_url}", client_id: maillab,
              client_secret: "${{CLIENT_SECRET}}", scopes: [mail]}}
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           auth: xoauth2}}
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: alice@example.test,
           auth: oauthbearer}}
  bob:
    address: bob@example.test
    oauth2: {{provider: generic, token_url: "{token_url}", client_id: maillab,
              client_secret: "${{CLIENT_SECRET}}", scopes: [mail]}}
    pop3: {{host: 127.0.0.1, port: {pop3s}, security: tls, username: bob@example.test,
           auth: xoauth2, poll_interval: 1s}}
  carol:
    address: carol@example.test
    oauth2: {{provider: generic, token_url: "{token_url}", client_id: maillab,
              client_secret: "${{CLIENT_SECRET}}", scopes: [mail]}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: carol@example.test,
           auth: xoauth2}}

outbox: {{retry_base: 1s, retry_max: 4s}}  # mail deferred in an outage goes soon after it

jobs:
  ping:
    schedule: {{every: 2s}}
    account: alice
    template: ping
    to: [dave@example.test]

rules:
  - name: file-and-forward
    account: alice
    folder: INBOX
    match: {{subject: {{contains: "[file]"}}}}
    actions:
      - {{move: Archive}}
      - {{forward: {{to: [dave@example.test], as: attachment}}}}
  - name: alerts
    account: bob
    match: {{header: {{name: X-Alert, regex: "^critical$"}}}}
    actions: [{{webhook: {{url: "{hook}/hook", secret: "${{HOOK_SECRET}}"}}}}]
  - name: carol-files
    account: carol
    folder: INBOX
    match: {{subject: {{contains: "[file]"}}}}
    actions: [{{move: Archive}}]
"""

PING = """\
{% block subject %}ping{% endblock %}
{% block text %}A scheduled message.{% endblock %}
"""
USERS = ("alice", "bob", "carol")


@dataclass
class Run:
    lab: OAuth2Lab
    workdir: Path
    env: dict[str, str]
    port: int
    hooks: DataServer
    daemon: Daemon | None = None

    @property
    def db(self) -> Path:
        return self.workdir / "state" / "postroom.db"

    def start(self) -> Daemon:
        self.daemon = Daemon(self.env, log=self.workdir / "daemon.log")
        wait_ready(self.port, self.daemon)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            code = self.daemon.terminate()
            self.daemon = None
            assert code == 0, self.log_text()[-3000:]

    def log_text(self) -> str:
        return (self.workdir / "daemon.log").read_text(errors="replace")

    def log_lines(self) -> list[dict[str, object]]:
        return list(iter_json_lines(self.workdir / "daemon.log"))

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.split()[-1])
        return 0.0

    def sign_in(self, user: str) -> str:
        """`postroom auth login USER` as an operator runs it for a generic account: a new
        refresh token from the token server, pasted on standard input."""
        token = self.lab.refresh_token(user)
        done = subprocess.run(
            [sys.executable, "-m", "postroom.cli", "auth", "login", user],
            input=token + "\n",
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return token

    def outbox(self) -> dict[str, int]:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())


@pytest.fixture
def run(oauth2_lab: OAuth2Lab, tmp_path: Path) -> Iterator[Run]:
    lab = oauth2_lab
    lab.drop_queue()
    lab.clear_all()
    lab.authority.access_lifetime = TOKEN_LIFETIME
    hooks = DataServer()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ping.j2").write_text(PING)
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(
            token_url=lab.token_server.token_url,
            smtp=lab.ports.smtp,
            imap=lab.ports.imap,
            imaps=lab.ports.imaps,
            pop3s=lab.ports.pop3s,
            hook=hooks.url,
        )
    )
    port = free_port()
    env = postroom_env(
        lab,
        tmp_path,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_TEMPLATES=str(templates),
        POSTROOM_LOG_LEVEL="DEBUG",
        CLIENT_SECRET=CLIENT_SECRET,
        POSTROOM_TOKEN_KEY=Fernet.generate_key().decode(),
    )
    env["PYTHONPATH"] = str(ROOT)
    result = Run(lab, tmp_path, env, port, hooks)
    (tmp_path / "state").mkdir()
    for user in USERS:
        result.sign_in(user)
    try:
        yield result
    finally:
        if result.daemon is not None:
            result.daemon.terminate()
        hooks.close()


def _subjects(raws: list[bytes]) -> list[str]:
    return [str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]) for raw in raws]


def _deliver_traffic(run: Run, rounds: int, every: float, tag: str) -> None:
    """One filed mail for alice, one alert (and one non-alert) for bob, one for carol, per round."""
    for n in range(rounds):
        run.lab.deliver("alice", mail("ops@example.test", "alice@example.test", f"[file] {tag}{n}").as_bytes())
        run.lab.deliver_many(
            "bob",
            [
                mail("monitor@example.test", "bob@example.test", f"{tag}{n}", X_Alert="critical").as_bytes(),
                mail("monitor@example.test", "bob@example.test", f"quiet {tag}{n}", X_Alert="low").as_bytes(),
            ],
        )
        run.lab.deliver("carol", mail("ops@example.test", "carol@example.test", f"[file] {tag}{n}").as_bytes())
        time.sleep(every)


def _tagged(run: Run, user: str, folder: str, tag: str) -> list[str]:
    return sorted(s for s in _subjects(run.lab.fetch_all(user, folder)) if f" {tag}" in s)


def _assert_traffic_done(run: Run, rounds: int, tag: str, timeout: float = 30) -> None:
    """Every round's mail handled exactly once: filed in alice's and carol's Archive, alice's
    forwarded to dave, bob's alert posted to the webhook (and nothing more, a while later)."""
    names = sorted(f"[file] {tag}{n}" for n in range(rounds))
    wanted = {
        ("alice", "Archive"): names,
        ("carol", "Archive"): names,
        ("dave", "INBOX"): sorted(f"Fwd: {name}" for name in names),
    }

    def posts() -> list[bytes]:
        return sorted(body for _headers, body in run.hooks.posts if json.loads(body)["subject"].startswith(tag))

    def done() -> bool:
        return (
            all(len(_tagged(run, user, folder, tag)) >= len(names) for (user, folder), names in wanted.items())
            and len(posts()) >= rounds
        )

    wait_until(done, timeout, f"round {tag} handled")
    time.sleep(1.5)  # another POP3 poll and sender pass: nothing may come twice
    for (user, folder), names in wanted.items():
        assert _tagged(run, user, folder, tag) == names, (user, folder)
    assert len(posts()) == rounds and len(set(posts())) == rounds


def _issued_tokens(lab: OAuth2Lab) -> set[str]:
    """Every access token Dovecot was shown and every refresh token a client presented."""
    found = {r.form.get("token", "") for r in lab.authority.requests_to("/introspect")}
    found |= {r.form.get("refresh_token", "") for r in lab.authority.requests_to("/token")}
    return {t for t in found if t}


def _assert_no_token_leaks(run: Run) -> None:
    tokens = _issued_tokens(run.lab)
    assert tokens
    metrics = run.get("/metrics").text
    with sqlite3.connect(run.db) as conn:
        stored = "\n".join(
            repr(row)
            for table in ("oauth2_tokens", "outbox", "inbound")
            for row in conn.execute(f"SELECT * FROM {table}")
        )
    log = run.log_text()
    assert '"level": "debug"' in log  # the log really is at DEBUG
    for token in tokens:
        secret = token.split(".", 1)[-1]  # the part after the lab's "kind." prefix (the whole, if none)
        assert secret not in log, "a token in the log"
        assert secret not in metrics, "a token in /metrics"
        assert secret not in stored, "a token in the store, unencrypted"


def test_oauth2_accounts_send_watch_and_poll_over_many_token_lifetimes(run: Run) -> None:
    """Rotating refresh tokens (as Microsoft's do), 6 s access tokens, 20 s of traffic: the
    job sends, the IDLE-watched folder's rule moves and forwards, the POP3 rule calls the
    webhook; nothing fails, nothing is lost or repeated; refreshes are counted; the rotated
    refresh token is the one a restart uses (the old one no longer works)."""
    lab = run.lab
    lab.authority.rotate = True
    first_refresh = {user: run.sign_in(user) for user in USERS}
    started = time.monotonic()
    run.start()
    _deliver_traffic(run, rounds=10, every=2.0, tag="A")
    assert time.monotonic() - started > 3 * TOKEN_LIFETIME
    _assert_traffic_done(run, 10, "A")

    # alice (SMTP every 2 s) and bob (POP3 every second) log in all the time: more than three
    # lifetimes each is at least four tokens. carol's IDLE session needed one token, at login;
    # when the server drops it (kicked, long after that token expired), the watcher reconnects
    # and logs in with a fresh one.
    for user in ("alice", "bob"):
        assert run.metric("postroom_oauth2_refreshes_total", account=user, result="ok") >= 4, user
    assert run.metric("postroom_oauth2_refreshes_total", account="carol", result="ok") >= 1
    carol_tokens = run.metric("postroom_oauth2_refreshes_total", account="carol", result="ok")
    lab.doveadm("kick", "carol")
    _deliver_traffic(run, rounds=1, every=0, tag="K")
    _assert_traffic_done(run, 1, "K")
    assert run.metric("postroom_oauth2_refreshes_total", account="carol", result="ok") == carol_tokens + 1
    for user in USERS:
        assert run.metric("postroom_oauth2_token_expiry_timestamp_seconds", account=user) > time.time() - 10
        assert not lab.authority.refresh_token_is_valid(first_refresh[user])  # rotated away
    for result in ("transient", "revoked", "refused"):
        assert run.metric("postroom_oauth2_refreshes_total", account="alice", result=result) == 0
    assert run.get("/readyz").status_code == 200
    pings = _subjects(lab.fetch_all("dave")).count("ping")
    assert pings >= 8
    _assert_no_token_leaks(run)
    run.stop()

    # No failure: nothing at error level, and no warning about tokens or mail (an IMAP session
    # that had to be reconnected is not one: a reconnect logs in with a fresh token, and the
    # counts above show nothing was lost or repeated).
    problems = [
        line
        for line in run.log_lines()
        if line.get("level") in ("error", "critical")
        or (line.get("level") == "warning" and line.get("event") != "watcher connection trouble; reconnecting")
    ]
    assert problems == [], problems[:5]
    outbox = run.outbox()
    assert set(outbox) == {"sent"}, outbox  # nothing deferred, held or dead
    assert outbox["sent"] == len(_subjects(lab.fetch_all("dave")))  # every ping and forward arrived once

    # The restart reads the rotated refresh token from the store: the old ones are dead.
    rotations = lab.authority.counters["token.refresh_token"]
    run.start()
    _deliver_traffic(run, rounds=1, every=0, tag="B")
    _assert_traffic_done(run, 1, "B")
    assert lab.authority.counters["token.refresh_token"] > rotations
    assert lab.authority.counters["error.invalid_grant"] == 0
    run.stop()


def test_a_revoked_refresh_token_stops_only_that_account_until_a_new_sign_in(run: Run) -> None:
    lab = run.lab
    alice_token = run.sign_in("alice")
    run.start()
    _deliver_traffic(run, rounds=1, every=0, tag="C")
    _assert_traffic_done(run, 1, "C")

    lab.authority.revoke(alice_token)  # and every access token it gave
    # alice's next SMTP login (the job, every 2 s) is refused, renewed → invalid_grant.
    wait_until(lambda: run.get("/readyz").status_code == 503, 20, "alice not ready")
    ready = run.get("/readyz").json()
    assert ready["oauth2_accounts"] == {"alice": False, "bob": True, "carol": True}, ready
    stopped = [line for line in run.log_lines() if line.get("event") == "oauth2 account stopped: a person must act"]
    assert len(stopped) == 1 and stopped[0]["account"] == "alice"
    assert "postroom auth login alice" in str(stopped[0]["error"]) and stopped[0]["reason"] == "invalid_grant"
    assert run.metric("postroom_oauth2_refreshes_total", account="alice", result="revoked") == 1

    # The others go on; alice's mail waits (held, not dead).
    _deliver_traffic(run, rounds=1, every=0, tag="D")
    wait_until(lambda: [p for p in run.hooks.posts if json.loads(p[1])["subject"] == "D0"], 20, "bob's webhook")
    lab.wait_for_messages("carol", 2, folder="Archive", timeout=20)
    time.sleep(3)  # a few more job fires for the stopped account
    assert run.outbox().get("dead", 0) == 0
    held_before = run.metric("postroom_messages_held_total", account="alice")
    assert held_before >= 1
    # Held is a state of its own everywhere: the outbox row, the gauge, /readyz (not `queued`).
    assert run.outbox().get("held", 0) >= 1
    gauge = re.search(r"^postroom_outbox_held (\S+)$", run.get("/metrics").text, re.MULTILINE)
    assert gauge is not None and float(gauge.group(1)) >= 1
    assert "postroom auth login alice" in run.get("/readyz").json()["held"]["alice"]
    invalid_grants = lab.authority.counters["error.invalid_grant"]
    time.sleep(2)
    assert lab.authority.counters["error.invalid_grant"] == invalid_grants  # stopped: no more asking
    assert len([line for line in run.log_lines() if line.get("level") == "error"]) == 1  # the one line

    # A person signs in again; SIGHUP: alice resumes, her held mail goes out, nothing lost.
    run.sign_in("alice")
    assert run.daemon is not None
    run.daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: run.get("/readyz").status_code == 200, 20, "alice ready again")
    # The IDLE session outlived the revocation (Dovecot checks a token at login only); the
    # filed mail was moved, its forward was held and now goes out.
    forwards = wait_until(
        lambda: [s for s in _subjects(lab.fetch_all("dave")) if s == "Fwd: [file] D0"], 20, "the held forward"
    )
    assert forwards == ["Fwd: [file] D0"]
    wait_until(lambda: set(run.outbox()) == {"sent"}, 20, "every held message sent")
    run.stop()


def test_token_endpoint_outage_is_transient(run: Run) -> None:
    """The token server down for 10 s (longer than a token's life, so every account needs a
    refresh while it is down; Dovecot cannot check tokens either): retried with backoff, no
    account marked broken, everything delivered once it is back."""
    lab = run.lab
    run.start()
    _deliver_traffic(run, rounds=1, every=0, tag="E")
    _assert_traffic_done(run, 1, "E")
    lab.token_server.stop()
    try:
        _deliver_traffic(run, rounds=2, every=2.0, tag="F")
        time.sleep(TOKEN_LIFETIME)
        assert all(run.get("/readyz").json()["oauth2_accounts"].values())
    finally:
        lab.token_server.start()
    _assert_traffic_done(run, 2, "F", timeout=60)
    assert run.get("/readyz").status_code == 200
    assert sum(run.metric("postroom_oauth2_refreshes_total", account=user, result="transient") for user in USERS) >= 1
    assert not [line for line in run.log_lines() if line.get("event") == "oauth2 account stopped: a person must act"]
    assert run.outbox().get("dead", 0) == 0
    assert re.search(r'"level": "error"', run.log_text()) is None
    run.stop()
