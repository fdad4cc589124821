"""One daemon per SQLite store: a second `postroom run` on the same state dir refuses to
start, naming the first one's PID, and leaves the first one working; a daemon starting while a
`postroom send` is sending leaves that command's leased rows to it."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

import httpx
from postroom.clock import utcnow
from postroom.store import NewMessage, Store
from postroom.store.owner import writing

from tests.support.daemon import (
    POSTROOM,
    REFERENCE,
    ROOT,
    Daemon,
    DataServer,
    free_port,
    iter_json_lines,
    lab_config_text,
    mail,
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
        second = subprocess.run(
            [*POSTROOM, "run"],
            env=postroom_env(clean_lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{free_port()}"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
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


def test_a_daemon_starting_while_send_runs_leaves_its_rows_to_it(tmp_path, clean_lab):
    """What `postroom send` does: rows stored leased to itself, the writers lock held while
    it sends them. A daemon starting meanwhile must not take them back and send them too."""
    hooks = DataServer()
    (tmp_path / "postroom.yaml").write_text(lab_config_text(clean_lab, REFERENCE.read_text(), hooks))
    db = tmp_path / "state" / "postroom.db"
    db.parent.mkdir()
    store = Store.open(f"sqlite:///{db}", owner="send")
    raw = mail("alice@example.test", "dave@example.test", "in flight").as_bytes()
    [row] = store.outbox.enqueue_leased(
        [
            NewMessage(
                dedup_key="manual:1",
                message_id="<inflight@example.test>",
                account="alice",
                envelope_from="alice@example.test",
                recipients=["dave@example.test"],
                raw=raw,
            )
        ],
        now=utcnow(),
        lease=timedelta(minutes=5),
    )
    port = free_port()
    try:
        with writing(db):
            daemon = Daemon(
                postroom_env(clean_lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{port}"), log=tmp_path / "daemon.log"
            )
            try:
                wait_ready(port, daemon)
                time.sleep(2)  # a sender that had taken the row back would have sent it by now
                assert store.outbox.get(row.id).status == "sending"
                assert not [e for e in iter_json_lines(daemon.log) if e.get("event", "").startswith("took back")]
            finally:
                assert daemon.terminate() == 0, daemon.log.read_text()[-3000:]
    finally:
        store.close()
        hooks.close()
    assert clean_lab.fetch_all("dave") == []
