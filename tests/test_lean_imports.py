"""What a typed command loads: `postroom --version` and `check --offline` on an `init` project
import no store, HTTP client or server code (issue 22: start-up in multiples of `python -c
pass`). A module set, not a timing: a top-level import that drags one of these back in fails
here, whatever the machine's speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The command runs in a fresh interpreter and writes the names in sys.modules at its exit.
_PROBE = """\
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from postroom.cli import main
sys.argv = ["postroom", *sys.argv[2:]]
main()
"""

# Loaded by the daemon or by commands that reach a server, never by these two.
HEAVY = (
    "httpx",
    "httpcore",
    "sqlalchemy",
    "alembic",
    "anyio",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "structlog",
    "apscheduler",
    "asyncio",
    "aiosmtplib",
    "imapclient",
    "cryptography",
    "css_inline",
)


def loaded_by(args: list[str], cwd: Path, tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_version_loads_no_config_and_no_package_metadata(tmp_path: Path) -> None:
    modules = loaded_by(["--version"], tmp_path, tmp_path)
    assert heavy_among(modules) == []
    # the version is the package's own constant, not read through importlib.metadata
    assert "importlib.metadata" not in modules
    assert "postroom.config" not in modules


@pytest.fixture
def starter(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    done = subprocess.run(
        [sys.executable, "-m", "postroom.cli", "init", str(project)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return project


def test_check_offline_loads_no_store_http_or_daemon_code(starter: Path, tmp_path: Path) -> None:
    modules = loaded_by(["check", "--offline"], starter, tmp_path)
    assert "postroom.config" in modules  # it did check the config
    assert heavy_among(modules) == []


def test_the_daemon_loads_httpx_only_for_webhooks_oauth2_or_http_sources(tmp_path: Path) -> None:
    """What `postroom run` imports at start (the app, its webhook queue, the job runner with
    its data sources, the account logins with their token provider): httpx comes with the
    first webhook due, token request or http source, not before; css_inline with the first
    render."""
    out = tmp_path / "modules.json"
    probe = (
        "import json, sys\n"
        "import postroom.app, postroom.webhooks, postroom.outgoing.sources, postroom.auth.accounts\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(out.read_text()))
    assert "postroom.app" in modules
    assert sorted(m for m in modules if m.split(".")[0] in ("httpx", "httpcore", "trio", "css_inline")) == []


def test_a_current_store_starts_without_the_migration_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child (a whole interpreter with alembic) is for a fresh or an old schema only: a
    daemon restarted on its own store reads alembic_version and goes on."""
    import postroom.bootstrap as bootstrap
    from postroom.config import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}", instance="probe")
    spawned: list[str] = []
    real = bootstrap._migrate_in_child
    monkeypatch.setattr(bootstrap, "_migrate_in_child", lambda url: (spawned.append(url), real(url))[1])
    bootstrap.open_daemon_store(settings).close()  # fresh: migrated by the child
    assert len(spawned) == 1
    bootstrap.open_daemon_store(settings).close()  # current: no child
    assert len(spawned) == 1
