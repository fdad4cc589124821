"""What can refuse a start refuses before anything answers: `run --no-migrate` on an old
schema never opens its HTTP port (no probe ever saw it up), and a second daemon that reaches
the first one's SQLite file through a symlink is refused like one on the same path."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

from tests.support.daemon import (
    ACCOUNT_CONFIG,
    POSTROOM,
    ROOT,
    Daemon,
    free_port,
    postroom_env,
    wait_ready,
)


def opened(port: int, until: threading.Event) -> list[float]:
    """Times the port accepted a connection, tried every 5 ms until ``until`` is set."""
    seen: list[float] = []

    def probe() -> None:
        while not until.is_set():
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    seen.append(time.monotonic())
            time.sleep(0.005)

    threading.Thread(target=probe, daemon=True).start()
    return seen


def test_run_no_migrate_on_an_old_schema_never_opens_its_port(tmp_path, lab, pg_url):
    (tmp_path / "postroom.yaml").write_text(ACCOUNT_CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap))
    port = free_port()
    env = postroom_env(lab, tmp_path, POSTROOM_DATABASE_URL=pg_url, POSTROOM_HTTP=f"127.0.0.1:{port}")
    done = threading.Event()
    seen = opened(port, done)
    try:
        refused = subprocess.run(
            [*POSTROOM, "run", "--no-migrate"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
        )
    finally:
        done.set()
    assert refused.returncode == 1 and "postroom migrate" in refused.stderr, refused.stderr[-2000:]
    assert seen == [], "the port opened before the start was refused"


def test_a_second_daemon_through_a_symlink_to_the_sqlite_file_is_refused(tmp_path, clean_lab):
    (tmp_path / "postroom.yaml").write_text(ACCOUNT_CONFIG.format(smtp=clean_lab.ports.smtp, imap=clean_lab.ports.imap))
    real = tmp_path / "state" / "postroom.db"
    real.parent.mkdir()
    link = tmp_path / "elsewhere" / "other-name.db"
    link.parent.mkdir()
    link.symlink_to(real)
    port = free_port()
    first_env = postroom_env(
        clean_lab, tmp_path, POSTROOM_DATABASE_URL=f"sqlite:///{real}", POSTROOM_HTTP=f"127.0.0.1:{port}"
    )
    first = Daemon(first_env, log=tmp_path / "first.log")
    try:
        wait_ready(port, first)
        second = subprocess.run(
            [*POSTROOM, "run"],
            env=postroom_env(
                clean_lab,
                tmp_path,
                POSTROOM_DATABASE_URL=f"sqlite:///{link}",
                POSTROOM_STATE_DIR=str(tmp_path / "state2"),
                POSTROOM_HTTP=f"127.0.0.1:{free_port()}",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert second.returncode != 0, second.stderr[-2000:]
        assert "in use by another `postroom run`" in second.stderr, second.stderr[-2000:]
        assert first.proc.poll() is None
    finally:
        assert first.terminate() == 0, (tmp_path / "first.log").read_text()[-3000:]
