"""`postroom auth login` and `postroom auth status` as a person meets them: the real command in
its own process, against the lab token server (Microsoft- and Google-shaped endpoints through
the config's `authority:`). The test plays the person: it approves the device code at the
verification URL, follows the Google sign-in URL like a browser, pastes a generic refresh token.

What must hold each time: the refresh token lands in the store encrypted (no lab token in any
byte of the SQLite files), the daemon's own keeper opens it and the token server takes it, and
no token is ever printed."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from postroom.auth.keeper import StoredRefreshToken
from postroom.auth.vault import TokenVault
from postroom.cli import app
from postroom.store import Store

from tests.lab.token_server import TokenServer

KEY = Fernet.generate_key().decode()
LAB_TOKEN_MARKS = ("lab-rt.", "lab-at.")  # every lab refresh and access token starts so
NOW = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)

MICROSOFT = """\
      provider: microsoft
      tenant: organizations
      authority: {url}
      client_id: maillab-public"""
GOOGLE = """\
      provider: google
      authority: {url}
      client_id: maillab
      client_secret: maillab-secret"""
GENERIC = """\
      token_url: {url}/token
      client_id: maillab
      client_secret: maillab-secret"""
APP_ONLY = """\
      token_url: {url}/token
      client_id: maillab-app
      client_secret: maillab-app-secret
      grant: client_credentials"""

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    oauth2:
{oauth2}
    smtp: {{host: 127.0.0.1, port: 1, security: none, username: alice@example.test, auth: xoauth2}}
    imap: {{host: 127.0.0.1, port: 1, security: none, username: alice@example.test, auth: oauthbearer}}
  carol:
    address: carol@example.test
    oauth2:
{app_only}
    smtp: {{host: 127.0.0.1, port: 1, security: none, username: carol@example.test, auth: xoauth2}}
  dave:
    address: dave@example.test
    smtp: {{host: 127.0.0.1, port: 1, security: none, username: dave, password: not-oauth2}}
"""


def project(tmp_path: Path, server: TokenServer, oauth2: str) -> Path:
    config = CONFIG.format(oauth2=oauth2.format(url=server.url), app_only=APP_ONLY.format(url=server.url))
    (tmp_path / "postroom.yaml").write_text(config)
    return tmp_path


def environment(root: Path, *, key: str | None = KEY) -> dict[str, str]:
    """What a person's shell would have: no POSTROOM_* inherited, this project's files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env |= {"POSTROOM_CONFIG": str(root / "postroom.yaml"), "POSTROOM_STATE_DIR": str(root / "state")}
    if key is not None:
        env["POSTROOM_TOKEN_KEY"] = key
    return env


def postroom(
    root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        cwd=root,
        env=env or environment(root),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Running:
    """`postroom …` in its own process, read line by line while it waits for the person."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "postroom.cli", *args],
            cwd=root,
            env=env or environment(root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line_with(self, text: str, timeout: float = 30) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(
                    f"the command ended without printing {text!r}:\n{''.join(self.seen)}{self.stderr()}"
                )
            self.seen.append(line)
            if text in line:
                return line.strip()

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr and self.process.poll() is not None else ""

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(5)
        while (line := self.lines.get_nowait()) is not None:
            self.seen.append(line)
        return code, "".join(self.seen), self.stderr()


def open_store(root: Path) -> Store:
    return Store.open(f"sqlite:///{root / 'state' / 'postroom.db'}", owner="test")


def stored_refresh_token(root: Path) -> str | None:
    """The refresh token as the daemon reads it: through the keeper and the vault."""
    store = open_store(root)
    try:
        return asyncio.run(StoredRefreshToken(store.tokens, TokenVault([KEY]), "alice").load())
    finally:
        store.close()


def assert_no_token_in(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.encode() if isinstance(text, str) else text
        for mark in LAB_TOKEN_MARKS:
            assert mark.encode() not in blob, f"a token ({mark}…) in {blob[:200]!r}"


def state_files(root: Path) -> bytes:
    """Every byte of the store: the SQLite file and any journal or WAL beside it."""
    files = sorted((root / "state").glob("postroom.db*"))
    assert files, "no store was written"
    return b"".join(path.read_bytes() for path in files)


def test_microsoft_device_code_login_stores_the_rotated_token_encrypted(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, MICROSOFT)
    login = Running(root, "auth", "login", "alice")
    verification_uri = login.line_with("open ").split()[-1]
    user_code = login.line_with("enter ").split()[-1]
    login.line_with("waiting")
    # The person, in a browser on another device, enters the code and signs in.
    httpx.post(verification_uri, data={"user_code": user_code, "user": "alice"}).raise_for_status()
    code, out, err = login.finish()

    assert code == 0, out + err
    assert "alice: signed in" in out and "systemctl reload postroom" in out
    assert_no_token_in(out, err, state_files(root))
    authority = token_server.authority
    assert authority.counters["devicecode"] == 1 and authority.counters["token.refresh_token"] == 1
    # The proving refresh rotated the signed-in token (Microsoft's do): the new one is stored,
    # the one it replaced is dead at the server.
    [proof] = [
        r for r in authority.requests_to("/organizations/oauth2/v2.0/token") if r.form["grant_type"] == "refresh_token"
    ]
    stored = stored_refresh_token(root)
    assert stored is not None and stored != proof.form["refresh_token"]
    assert authority.refresh_token_is_valid(stored)
    assert not authority.refresh_token_is_valid(proof.form["refresh_token"])
    assert "offline_access" in proof.form["scope"].split()
    store = open_store(root)
    grant = store.tokens.get("alice")
    store.close()
    assert grant is not None and grant.expires_at and grant.refreshed_at and grant.last_error is None

    status = postroom(root, "auth", "status")
    assert status.returncode == 0, status.stderr
    [alice] = [line for line in status.stdout.splitlines() if line.startswith("alice")]
    assert alice.split()[:4] == ["alice", "microsoft", "refresh_token", "stored"]
    assert f"{grant.expires_at:%Y-%m-%d %H:%M}" in alice and "sign alice in" not in status.stdout
    assert_no_token_in(status.stdout, status.stderr)


def fake_browser(root: Path) -> Path:
    """A BROWSER command that does what a person's browser would: load the sign-in page (the
    lab consents at once) and follow the redirect back to 127.0.0.1. It notes what it opened."""
    script = root / "browser.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys, httpx\n"
        f"pathlib.Path({str(root / 'opened')!r}).write_text(sys.argv[1])\n"
        "page = httpx.get(sys.argv[1], follow_redirects=False)\n"
        "httpx.get(page.headers['location']).raise_for_status()\n"
    )
    script.chmod(0o755)
    return script


def test_google_loopback_login_prints_the_url_and_opens_no_browser_unasked(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, GOOGLE)
    env = environment(root) | {"BROWSER": str(fake_browser(root))}
    login = Running(root, "auth", "login", "alice", env=env)
    url = login.line_with(f"{token_server.url}/o/oauth2/v2/auth?")
    login.line_with("waiting")
    # The person opens the URL by hand (a headless server: nothing opened it for them).
    page = httpx.get(url, follow_redirects=False)
    assert page.status_code == 302 and page.headers["location"].startswith("http://127.0.0.1:")
    assert "Signed in" in httpx.get(page.headers["location"]).text
    code, out, err = login.finish()

    assert code == 0, out + err
    assert not (root / "opened").exists()
    assert "access_type=offline" in url and "code_challenge_method=S256" in url
    assert "login_hint=alice%40example.test" in url  # Google proposes the account's mailbox
    assert_no_token_in(out, err, state_files(root))
    stored = stored_refresh_token(root)
    assert stored is not None and token_server.authority.refresh_token_is_valid(stored)
    [refresh] = [r for r in token_server.authority.requests_to("/token") if r.form["grant_type"] == "refresh_token"]
    assert "scope" not in refresh.form  # Google's refresh carries none


def test_google_login_with_browser_flag_opens_one_and_finds_the_key_as_a_secret_file(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, GOOGLE)
    (root / "secrets").mkdir()
    (root / "secrets" / "POSTROOM_TOKEN_KEY").write_text(KEY + "\n")  # as systemd's LoadCredential= gives it
    env = environment(root, key=None) | {
        "BROWSER": str(fake_browser(root)),
        "POSTROOM_SECRETS_DIR": str(root / "secrets"),
    }

    done = postroom(root, "auth", "login", "alice", "--browser", env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "opened").read_text().startswith(f"{token_server.url}/o/oauth2/v2/auth?")
    assert "alice: signed in" in done.stdout
    stored = stored_refresh_token(root)
    assert stored is not None and token_server.authority.refresh_token_is_valid(stored)


def test_generic_login_reads_the_token_from_stdin_and_the_key_from_dotenv(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, GENERIC)
    (root / ".env").write_text(f"POSTROOM_TOKEN_KEY={KEY}\n")
    pasted = token_server.authority.issue_refresh_token("alice")

    done = postroom(root, "auth", "login", "alice", env=environment(root, key=None), stdin=pasted + "\n")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "paste the refresh token" in done.stdout and "alice: signed in" in done.stdout
    assert_no_token_in(done.stdout, done.stderr, state_files(root))
    assert stored_refresh_token(root) == pasted  # the lab's generic endpoint does not rotate
    [refresh] = token_server.authority.requests_to("/token")
    assert refresh.form["refresh_token"] == pasted


def test_a_token_the_server_refuses_is_reported_at_once_and_recorded(tmp_path: Path, token_server: TokenServer) -> None:
    root = project(tmp_path, token_server, GENERIC)

    done = postroom(root, "auth", "login", "alice", stdin="not-a-token-the-server-knows\n")

    assert done.returncode == 1
    assert "invalid_grant" in done.stderr and "postroom auth login alice" in done.stderr
    status = postroom(root, "auth", "status")
    [alice] = [line for line in status.stdout.splitlines() if line.startswith("alice")]
    assert "invalid_grant" in alice and "not-a-token" not in status.stdout


def test_login_without_a_key_says_how_to_make_one_before_anyone_signs_in(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, MICROSOFT)

    done = postroom(root, "auth", "login", "alice", env=environment(root, key=None))

    assert done.returncode == 1
    assert "POSTROOM_TOKEN_KEY" in done.stderr and "Fernet.generate_key()" in done.stderr
    assert token_server.authority.requests == []  # no device code asked for
    assert not (root / "state").exists()  # and no store made


def test_status_lists_oauth2_accounts_only_and_what_each_needs(tmp_path: Path, token_server: TokenServer) -> None:
    root = project(tmp_path, token_server, GENERIC)
    env = {"POSTROOM_CONFIG": str(root / "postroom.yaml"), "POSTROOM_STATE_DIR": str(root / "state")}
    runner = CliRunner()

    before = runner.invoke(app, ["auth", "status"], env=env, catch_exceptions=False)
    assert before.exit_code == 0
    assert not (root / "state").exists()  # status reads the store, never makes one
    rows = {line.split()[0]: line for line in before.stdout.splitlines()[2:] if line and not line.startswith("sign")}
    assert set(rows) == {"alice", "carol"}  # dave logs in with a password
    assert rows["alice"].split()[1:4] == ["generic", "refresh_token", "none"]
    assert "client_credentials" in rows["carol"] and "not used (app-only)" in rows["carol"]
    assert "sign alice in with: postroom auth login alice" in before.output

    app_only = runner.invoke(app, ["auth", "login", "carol"], env=env, catch_exceptions=False)
    assert app_only.exit_code == 0 and "nothing to sign in" in app_only.output
    no_oauth2 = runner.invoke(app, ["auth", "login", "dave"], env=env)
    assert no_oauth2.exit_code == 1 and "no `oauth2:` block" in no_oauth2.output
    unknown = runner.invoke(app, ["auth", "login", "erin"], env=env)
    assert unknown.exit_code == 1 and "OAuth2 accounts: alice, carol" in unknown.output
    assert token_server.authority.requests == []


def test_login_refuses_an_account_whose_config_gives_the_refresh_token(
    tmp_path: Path, token_server: TokenServer
) -> None:
    root = project(tmp_path, token_server, GENERIC + "\n      refresh_token: ${{ALICE_REFRESH_TOKEN}}")
    env = {
        "POSTROOM_CONFIG": str(root / "postroom.yaml"),
        "POSTROOM_STATE_DIR": str(root / "state"),
        "ALICE_REFRESH_TOKEN": "from-the-config",
        "POSTROOM_TOKEN_KEY": KEY,
    }

    refused = CliRunner().invoke(app, ["auth", "login", "alice"], env=env)

    assert refused.exit_code == 1 and "drop that key" in refused.output
    status = CliRunner().invoke(app, ["auth", "status"], env=env, catch_exceptions=False)
    assert "from config" in status.output and "from-the-config" not in status.output


@pytest.fixture(autouse=True)
def _no_inherited_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner's env adds to this process's: a key or config set here must not leak in."""
    for name in [n for n in os.environ if n.startswith("POSTROOM_") and n != "POSTROOM_LAB_PORT_OFFSET"]:
        monkeypatch.delenv(name)
