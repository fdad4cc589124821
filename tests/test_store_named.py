"""One store, named: `check` and `auth status` say which store they read and never make one
where there is none; a wrong POSTROOM_TOKEN_KEY is told, never kept as the account's error.

Real commands in their own processes against the OAuth2 lab (Dovecot, Postfix, the token
server): alice signs in once into the daemon's state directory; the other commands are then
run as an operator might by mistake, from another directory or with another key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.lab.oauth2 import OAuth2Lab
from tests.support.daemon import ROOT, postroom_env

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    oauth2: {{token_url: "{token_url}", client_id: maillab, client_secret: maillab-secret, scopes: [mail]}}
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: alice@example.test, auth: xoauth2}}
  bob:
    address: bob@example.test
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: bob@example.test, password: "${{BOB_PASSWORD}}"}}
"""
KEY = Fernet.generate_key().decode()


def postroom(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture
def signed_in(oauth2_lab: OAuth2Lab, tmp_path: Path) -> dict[str, str]:
    """The daemon's environment, alice signed in to its store."""
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(token_url=oauth2_lab.token_server.token_url, imaps=oauth2_lab.ports.imaps)
    )
    env = postroom_env(oauth2_lab, tmp_path, POSTROOM_TOKEN_KEY=KEY, POSTROOM_STATE_DIR=str(tmp_path / "daemon"))
    env["PYTHONPATH"] = str(ROOT)
    login = postroom(env, "auth", "login", "alice", stdin=oauth2_lab.refresh_token("alice") + "\n")
    assert login.returncode == 0, login.stdout + login.stderr
    assert f"the store {tmp_path / 'daemon' / 'postroom.db'}" in login.stdout  # it says where it writes
    return env


def test_check_in_another_state_directory_makes_no_store_and_says_where_it_looked(
    signed_in: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    done = postroom(signed_in | {"POSTROOM_STATE_DIR": str(elsewhere)}, "check")

    assert done.returncode == 1, done.stdout + done.stderr
    assert not elsewhere.exists()  # nothing created
    looked = elsewhere.resolve() / "postroom.db"
    assert f"OAuth2 refresh tokens: store {looked}" in done.stdout
    assert f"FAIL accounts.alice: no store at {looked}" in done.stdout
    assert "postroom auth login alice" in done.stdout
    assert "ok   accounts.bob.imap: connected and logged in as bob@example.test" in done.stdout  # the rest checked

    status = postroom(signed_in | {"POSTROOM_STATE_DIR": str(elsewhere)}, "auth", "status")
    assert status.returncode == 0 and f"no store at {looked}" in status.stderr
    assert not elsewhere.exists()

    here = postroom(signed_in, "check")
    assert here.returncode == 0, here.stdout + here.stderr
    assert "ok   accounts.alice.imap: connected and logged in as alice@example.test" in here.stdout


def test_a_wrong_key_is_told_and_never_kept_as_the_accounts_error(signed_in: dict[str, str]) -> None:
    wrong = signed_in | {"POSTROOM_TOKEN_KEY": Fernet.generate_key().decode()}

    check = postroom({k: v for k, v in wrong.items() if k != "POSTROOM_LOG_FORMAT"}, "check")
    assert check.returncode == 1
    assert "does not decrypt with POSTROOM_TOKEN_KEY" in check.stdout
    # Its log line goes to stderr as a line of text, never JSON, and never into the output.
    assert "oauth2 account stopped" in check.stderr and "oauth2 account stopped" not in check.stdout
    assert not any(line.lstrip().startswith("{") for line in check.stderr.splitlines()), check.stderr

    status = postroom(wrong, "auth", "status")
    [alice] = [line for line in status.stdout.splitlines() if line.split()[:1] == ["alice"]]
    assert status.returncode == 1 and "stored, but this key does not open it" in alice
    assert "stored (signed in)" not in status.stdout
    assert "does not decrypt with POSTROOM_TOKEN_KEY" in status.stdout

    right = postroom(signed_in, "auth", "status")
    [alice] = [line for line in right.stdout.splitlines() if line.split()[:1] == ["alice"]]
    assert right.returncode == 0, right.stdout + right.stderr
    assert "stored (signed in)" in alice and "decrypt" not in alice  # the wrong key's failure was not kept
