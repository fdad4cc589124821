"""`postroom deploy systemd` and `postroom deploy compose` from an `init` project the operator
changed: the files load exactly the secrets this config uses, point at its paths and at the
service's state, pass systemd-analyze (verify, and security ≤ 2.0 like CI's check of the
hand-written unit) and the Compose specification's JSON schema (tests/data/compose-spec.json);
and `auth login` as the checklists give it lands in the store the service reads."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from tests.lab.token_server import TokenServer
from tests.test_deploy import assert_exposure_at_most_2, tool, unit_settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
HAND_WRITTEN_COMPOSE = ROOT / "deploy" / "docker" / "compose.yaml"
POSTROOM = str(Path(sys.executable).parent / "postroom")

# What an operator adds to the starter: an OAuth2 account (its client secret a ${NAME} too).
OAUTH2_ACCOUNT = """\
  alice:
    address: alice@example.test
    oauth2: {{token_url: "{token_url}", client_id: maillab, client_secret: "${{CLIENT_SECRET}}"}}
    imap: {{host: 127.0.0.1, port: 1, security: none, username: alice@example.test, auth: xoauth2}}
"""


def postroom(root: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("POSTROOM_", "CREDENTIALS_DIRECTORY"))}
    return subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        cwd=root,
        env=base | {"PYTHONPATH": str(ROOT / "service")} | (env or {}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def init_project(tmp_path: Path, token_url: str = "http://127.0.0.1:1/token") -> Path:
    root = tmp_path / "mail"
    done = postroom(tmp_path, "init", str(root))
    assert done.returncode == 0, done.stderr
    config = root / "postroom.yaml"
    text = config.read_text()
    config.write_text(text.replace("accounts:\n", "accounts:\n" + OAUTH2_ACCOUNT.format(token_url=token_url), 1))
    return root


def checklist(output: str) -> list[str]:
    return [line.strip() for line in output.split("next:\n", 1)[1].splitlines() if line.strip()]


def test_the_unit_loads_this_configs_secrets_and_passes_systemd_analyze(tmp_path: Path) -> None:
    root = init_project(tmp_path)

    done = postroom(root, "deploy", "systemd", "--exec", POSTROOM)

    assert done.returncode == 0, done.stdout + done.stderr
    unit_file = root / "postroom.service"
    unit = unit_settings(unit_file)
    assert unit["LoadCredential"] == ["CLIENT_SECRET", "MAIL_PASSWORD", "POSTROOM_TOKEN_KEY"]
    assert f"POSTROOM_CONFIG={root / 'postroom.yaml'}" in unit["Environment"]
    assert f"POSTROOM_TEMPLATES={root / 'templates'}" in unit["Environment"]
    assert unit["ExecStart"] == [f"{POSTROOM} run"]
    assert unit["StateDirectory"] == ["postroom"] and unit["DynamicUser"] == ["yes"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert "secrets it loads (3): CLIENT_SECRET, MAIL_PASSWORD, POSTROOM_TOKEN_KEY" in done.stdout

    verify = subprocess.run(
        [tool("systemd-analyze"), "verify", str(unit_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr
    assert_exposure_at_most_2(unit_file)

    steps = checklist(done.stdout)
    assert "install -m 0600 /dev/null /etc/credstore/MAIL_PASSWORD  # then put its value in it" in steps
    assert steps[-2:] == ["systemctl enable --now postroom", "journalctl -u postroom -f"]
    # auth login under the service's own state directory, dynamic user, credentials, settings
    [login] = [shlex.split(step) for step in steps if step.startswith("systemd-run")]
    assert login[-3:] == ["auth", "login", "alice"] and login[-4] == POSTROOM
    given = {word.removeprefix("--property=") for word in login if word.startswith("--property=")}
    assert {"DynamicUser=yes", f"StateDirectory={unit['StateDirectory'][0]}"} <= given
    assert {f"LoadCredential={name}" for name in unit["LoadCredential"]} <= given
    assert {f"Environment={e}" for e in unit["Environment"] if e.startswith("POSTROOM_CONFIG")} <= given
    assert steps.index(" ".join(shlex.quote(w) for w in login)) < steps.index("systemctl enable --now postroom")


def test_auth_login_with_the_services_state_and_credentials_lands_where_the_daemon_reads(tmp_path: Path) -> None:
    """What systemd gives `auth login` under systemd-run and the daemon under the unit:
    $STATE_DIRECTORY and $CREDENTIALS_DIRECTORY, nothing else (no POSTROOM_STATE_DIR, no key
    in the environment)."""
    with TokenServer(_free_port()) as server:
        root = init_project(tmp_path, server.token_url)
        credentials, state = tmp_path / "credentials", tmp_path / "var-lib-postroom"
        credentials.mkdir()
        key = Fernet.generate_key().decode()
        for name, value in {"MAIL_PASSWORD": "x", "CLIENT_SECRET": "maillab-secret", "POSTROOM_TOKEN_KEY": key}.items():
            (credentials / name).write_text(value)
        assert postroom(root, "deploy", "systemd", "--exec", POSTROOM).returncode == 0
        environment = dict(e.split("=", 1) for e in unit_settings(root / "postroom.service")["Environment"])
        service = environment | {"STATE_DIRECTORY": str(state), "CREDENTIALS_DIRECTORY": str(credentials)}

        pasted = server.authority.issue_refresh_token("alice") + "\n"
        login = postroom(tmp_path, "auth", "login", "alice", env=service, stdin=pasted)
        assert login.returncode == 0, login.stdout + login.stderr
        assert f"the store {state.resolve() / 'postroom.db'}" in login.stdout

        status = postroom(tmp_path, "auth", "status", env=service)
        [alice] = [line for line in status.stdout.splitlines() if line.split()[:1] == ["alice"]]
        assert "stored (signed in)" in alice, status.stdout + status.stderr


def test_the_compose_file_validates_against_the_compose_schema_and_shares_the_state_with_auth_login(
    tmp_path: Path,
) -> None:
    root = init_project(tmp_path)

    done = postroom(root, "deploy", "compose")

    assert done.returncode == 0, done.stdout + done.stderr
    compose = root / "compose.yaml"
    _valid_compose(compose)
    document = yaml.safe_load(compose.read_text())
    service = document["services"]["postroom"]
    assert service["secrets"] == ["CLIENT_SECRET", "MAIL_PASSWORD", "POSTROOM_TOKEN_KEY"]
    assert document["secrets"] == {n: {"file": f"./secrets/{n}"} for n in service["secrets"]}
    mounts = {v["target"]: v for v in service["volumes"]}
    env = service["environment"]
    assert mounts[env["POSTROOM_CONFIG"]]["source"] == str(root / "postroom.yaml")
    assert mounts[env["POSTROOM_TEMPLATES"]]["source"] == str(root / "templates")
    # `docker compose run --rm postroom auth login` runs this service: same state volume
    assert mounts[env["POSTROOM_STATE_DIR"]] == {"type": "volume", "source": "state", "target": "/var/lib/postroom"}
    assert not any(re.search(r"PASSWORD|SECRET|TOKEN", key) for key in env)
    steps = checklist(done.stdout)
    assert "docker compose run --rm postroom auth login alice" in steps
    assert steps.index("docker compose run --rm postroom auth login alice") < steps.index("docker compose up -d")
    assert "printf '%s' 'its value' > secrets/POSTROOM_TOKEN_KEY" in steps


def test_the_hand_written_compose_file_validates_too() -> None:
    _valid_compose(HAND_WRITTEN_COMPOSE)


def test_a_path_the_files_cannot_hold_as_it_is_is_refused_or_kept_whole(tmp_path: Path) -> None:
    root = init_project(tmp_path)
    odd = root / "my config: 'x' %i $HOME.yaml"
    (root / "postroom.yaml").rename(odd)

    unit = postroom(root, "-c", str(odd), "deploy", "systemd")
    assert unit.returncode == 78 and "a unit file cannot hold" in unit.stderr
    assert not (root / "postroom.service").exists()

    compose = postroom(root, "-c", str(odd), "deploy", "compose")
    assert compose.returncode == 0, compose.stderr
    _valid_compose(root / "compose.yaml")
    service = yaml.safe_load((root / "compose.yaml").read_text())["services"]["postroom"]
    assert service["volumes"][1]["source"] == str(odd)

    again = postroom(root, "-c", str(odd), "deploy", "compose")
    assert again.returncode == 1 and "--force" in again.stderr


def _valid_compose(path: Path) -> None:
    checked = subprocess.run(
        [tool("check-jsonschema"), "--schemafile", str(SCHEMA), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _free_port() -> int:
    from tests.support.daemon import free_port

    return free_port()
