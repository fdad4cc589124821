"""One daemon per SQLite store: a second `postroom run` on the same state dir refuses to
start, naming the first one's PID, and leaves the first one working."""

from __future__ import annotations

import subprocess

import httpx

from tests.support.daemon import (
    POSTROOM,
    REFERENCE,
    ROOT,
    Daemon,
    DataServer,
    free_port,
    lab_config_text,
    postroom_env,
    wait_ready,
)


def test_a_second_daemon_on_one_sqlite_store_refuses_and_names_the_first(tmp_path, clean_lab):
    hooks = DataServer()
    (tmp_path / "postroom.yaml").write_text(lab_config_text(clean_lab, REFERENCE.read_text(), hooks))
    port = free_port()
    first = Daemon(postroom_env(clean_lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{port}"), log=tmp_path / "first.log")
    try:
        wait_ready(port, first)
        second = subprocess.run([*POSTROOM, "run"], env=postroom_env(clean_lab, tmp_path,
                                POSTROOM_HTTP=f"127.0.0.1:{free_port()}"),
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert second.returncode != 0
        assert f"PID {first.proc.pid}" in second.stderr, second.stderr[-2000:]
        assert "took back work in flight" not in second.stderr
        # the first is untouched: still running and ready
        assert first.proc.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        code = first.terminate()
        hooks.close()
    assert code == 0, (tmp_path / "first.log").read_text()[-3000:]
    # the lock died with its holder: a new daemon starts on the same store
    again = Daemon(postroom_env(clean_lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{port}"), log=tmp_path / "again.log")
    try:
        wait_ready(port, again)
    finally:
        assert again.terminate() == 0
