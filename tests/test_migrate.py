"""The store schema under replicas (issue 11): migrations under a PostgreSQL advisory lock,
`postroom migrate`, `postroom run --no-migrate`, and a schema from a newer postroom refused.
Real `postroom` processes on a fresh database of the machine's PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from postroom.store.engine import _alembic_config, head_revisions, open_engine, schema_is_current
from sqlalchemy import create_engine, text

from tests.support.daemon import POSTROOM, ROOT, Daemon, free_port, postroom_env, run_cli, wait_ready

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
"""
HEAD = ", ".join(sorted(head_revisions()))


def env_for(tmp_path, lab, url: str, name: str = "cli", **extra: str) -> dict[str, str]:
    (tmp_path / "postroom.yaml").write_text(CONFIG.format(smtp=lab.ports.smtp))
    return postroom_env(
        lab,
        tmp_path,
        POSTROOM_DATABASE_URL=url,
        POSTROOM_INSTANCE=name,
        POSTROOM_STATE_DIR=str(tmp_path / name),
        **extra,
    )


def set_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


# What the daemon's migration child runs, held back until the test says go: the race as close
# as processes can make it.
RACE = """
import sys, time
from pathlib import Path
from postroom.store import migrate, open_engine
engine = open_engine(sys.argv[1])
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
migrate(engine)
"""


def test_migrations_started_together_take_turns_under_the_lock(tmp_path, pg_url):
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", RACE, pg_url, str(go)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(3)  # every child has imported and connected
    go.touch()
    failures = [err for child in children if (err := child.communicate(timeout=90)[1]) and child.returncode != 0]
    assert not failures, failures[0][-2000:]
    engine = open_engine(pg_url)
    assert schema_is_current(engine)
    engine.dispose()


@pytest.mark.timeout(300)
def test_three_replicas_started_at_once_on_an_empty_database_all_start(tmp_path, lab, pg_url):
    daemons: list[tuple[Daemon, int]] = []
    try:
        for name in ("replica-a", "replica-b", "replica-c"):  # no wait between them: they race
            port = free_port()
            env = env_for(tmp_path, lab, pg_url, name, POSTROOM_HTTP=f"127.0.0.1:{port}")
            daemons.append((Daemon(env, log=tmp_path / f"{name}.log"), port))
        for daemon, port in daemons:
            wait_ready(port, daemon, timeout=90)
    finally:
        codes = [daemon.terminate() for daemon, _ in daemons]
    assert codes == [0, 0, 0], [d.log.read_text()[-2000:] for d, _ in daemons]
    migrated = sum("migrating the store schema" in d.log.read_text() for d, _ in daemons)
    assert migrated >= 1


def test_postroom_migrate_says_from_and_to_and_run_no_migrate_needs_it(tmp_path, lab, pg_url):
    env = env_for(tmp_path, lab, pg_url)
    refused = run_cli(["run", "--no-migrate"], env)
    assert refused.returncode == 1
    assert "none (empty database) is older than this postroom" in refused.stderr
    assert "postroom migrate" in refused.stderr

    engine = open_engine(pg_url)  # an older schema: one migration behind
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    engine.dispose()
    refused = run_cli(["run", "--no-migrate"], env)
    assert refused.returncode == 1 and f"store schema 0002 is older than this postroom ({HEAD})" in refused.stderr

    done = run_cli(["migrate"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"store schema migrated from 0002 to {HEAD}"
    again = run_cli(["migrate"], env)
    assert again.stdout.strip() == f"store schema {HEAD} is current; nothing to do"

    port = free_port()
    daemon = Daemon({**env, "POSTROOM_HTTP": f"127.0.0.1:{port}"}, "--no-migrate", log=tmp_path / "run.log")
    try:
        wait_ready(port, daemon, timeout=90)
    finally:
        assert daemon.terminate() == 0
    assert "migrating the store schema" not in (tmp_path / "run.log").read_text()


def test_a_schema_newer_than_this_postroom_is_refused_naming_both(tmp_path, lab, pg_url):
    env = env_for(tmp_path, lab, pg_url)
    assert run_cli(["migrate"], env).returncode == 0
    set_revision(pg_url, "0012")
    expected = f"store schema 0012 is newer than this postroom ({HEAD}); upgrade postroom"
    for args in (["run"], ["migrate"]):
        refused = subprocess.run([*POSTROOM, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert refused.returncode == 1, refused.stderr
        assert expected in refused.stderr
        assert "Traceback" not in refused.stderr
