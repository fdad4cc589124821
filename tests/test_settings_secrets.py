"""Settings that are secrets are found like every ${NAME} secret: POSTROOM_CONSOLE_TOKEN (and
POSTROOM_DATABASE_URL) from $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) or a file
named by POSTROOM_NAME_FILE; and the daemon's start-up log says where its console is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from postroom.config.settings import MAX_SECRET_FILE, Settings
from postroom.console.daemon import console_token
from postroom.errors import ConfigError

from tests.support.daemon import ROOT, Daemon, free_port, iter_json_lines, wait_ready, wait_until

TOKEN = "a-console-token-long-enough-for-the-rule-0123456789"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("POSTROOM_") and n != "POSTROOM_LAB_PORT_OFFSET"]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's


def test_the_console_token_comes_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "POSTROOM_CONSOLE_TOKEN").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    settings = Settings()

    assert console_token(settings) == TOKEN
    assert settings.database_url is None  # no such file: not set


def test_the_environment_wins_and_a_huge_or_unreadable_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    (credentials / "POSTROOM_CONSOLE_TOKEN").write_bytes(b"x" * (MAX_SECRET_FILE + 1))
    with pytest.raises(ConfigError, match="over 65536 bytes"):
        Settings()
    monkeypatch.setenv("POSTROOM_CONSOLE_TOKEN", TOKEN)
    assert console_token(Settings()) == TOKEN  # the environment is asked first
    monkeypatch.delenv("POSTROOM_CONSOLE_TOKEN")
    (credentials / "POSTROOM_CONSOLE_TOKEN").unlink()
    (credentials / "POSTROOM_CONSOLE_TOKEN").mkdir()  # not a file: not a secret
    assert Settings().console_token is None


def test_the_start_up_log_names_the_console_url(tmp_path: Path) -> None:
    (tmp_path / "postroom.yaml").write_text(
        "accounts:\n  me: {address: me@example.org, smtp: {host: 127.0.0.1, port: 1, security: none}}\n"
    )
    (tmp_path / "templates").mkdir()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "POSTROOM_CONSOLE_TOKEN").write_text(TOKEN)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")} | {
        "POSTROOM_CONFIG": str(tmp_path / "postroom.yaml"),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "POSTROOM_HTTP": f"127.0.0.1:{port}",
        "POSTROOM_LOG_FORMAT": "json",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log=log)
    try:
        wait_ready(port, daemon)
        [line] = wait_until(lambda: [e for e in iter_json_lines(log) if e.get("event") == "console listening"])
    finally:
        assert daemon.terminate() == 0
    assert line["url"] == f"http://127.0.0.1:{port}/"
    assert TOKEN not in log.read_text()
