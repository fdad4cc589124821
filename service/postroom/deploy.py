"""`postroom deploy systemd` and `postroom deploy compose`: a unit or a compose file for *this*
config, not the demo's, and the short list of what to do next.

What a deployment must provide is read from the config as written (``read_as_written``: no
secret needs to be set where the file is made): one credential per ${NAME} the config uses;
``POSTROOM_TOKEN_KEY`` when an account keeps an OAuth2 refresh token; and the settings that
are secrets, when this process has them (``POSTROOM_DATABASE_URL``, ``POSTROOM_CONSOLE_TOKEN``):
every one a credential (systemd) or a secret (Compose) of its own name, where postroom
looks for it.

The unit's sandbox is the hand-written deploy/systemd/postroom.service's (rated ≤ 2.0 by
`systemd-analyze security`); the service's state is ``StateDirectory=postroom`` under
``DynamicUser=``, and `postroom auth login` runs there too, through ``systemd-run`` with the
same properties, so the daemon finds the token where the sign-in put it. In a container the
state is the ``state`` volume, which `docker compose run --rm postroom auth login` mounts.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config.loader import read_as_written
from .config.settings import Settings
from .errors import ConfigError

DEFAULT_POSTROOM = "/opt/postroom/.venv/bin/postroom"
TOKEN_KEY = "POSTROOM_TOKEN_KEY"
CREDSTORE = "/etc/credstore"
# In the container (deploy/docker/Dockerfile: uid 10001, ENTRYPOINT ["postroom"]).
CONTAINER_CONFIG = "/etc/postroom/postroom.yaml"
CONTAINER_TEMPLATES = "/etc/postroom/templates"
CONTAINER_STATE = "/var/lib/postroom"
# A path written into a unit file: nothing systemd would read as a specifier (%), a variable
# ($), a quote, whitespace or a line end; a config elsewhere is copied to such a place first.
_UNIT_PATH = re.compile(r"/[A-Za-z0-9._/+@,=-]*")
# What the service cannot see: a dynamic user's home is hidden (ProtectHome=) and /tmp is
# its own (PrivateTmp=).
_HIDDEN_PREFIXES = ("/home/", "/root/", "/run/user/")
_PRIVATE_PREFIXES = ("/tmp/", "/var/tmp/")


@dataclass(frozen=True)
class Deployment:
    """What the service needs of this config and these settings."""

    config: Path
    templates: Path
    secrets: tuple[str, ...]  # the config's ${NAME}s, POSTROOM_TOKEN_KEY
    setting_secrets: tuple[str, ...]  # POSTROOM_* settings that are secrets, this process has
    sign_ins: tuple[str, ...]  # accounts a person signs in with `postroom auth login`
    postroom: str  # the executable the unit runs

    @property
    def credentials(self) -> tuple[str, ...]:
        return (*self.secrets, *self.setting_secrets)


def plan(settings: Settings, *, postroom: str | None = None) -> Deployment:
    """The deployment of ``settings.config`` as it is written now."""
    config = settings.config.resolve()
    raw, names = read_as_written(config)
    keeps_tokens, sign_ins = _oauth2_accounts(raw)
    secrets = [*names, *([TOKEN_KEY] if keeps_tokens and TOKEN_KEY not in names else [])]
    given = {"POSTROOM_DATABASE_URL": settings.database_url, "POSTROOM_CONSOLE_TOKEN": settings.console_token}
    return Deployment(
        config=config,
        templates=settings.templates_dir().resolve(),
        secrets=tuple(secrets),
        setting_secrets=tuple(name for name, value in given.items() if value),
        sign_ins=sign_ins,
        postroom=postroom or this_postroom(),
    )


def this_postroom() -> str:
    """The `postroom` beside this interpreter (the venv it runs from), else the usual place."""
    beside = Path(sys.executable).parent / "postroom"
    return str(beside) if beside.is_file() else DEFAULT_POSTROOM


def _oauth2_accounts(raw: Any) -> tuple[bool, tuple[str, ...]]:
    """(whether an account keeps a refresh token in the store, the accounts that sign in)."""
    accounts = raw.get("accounts") if isinstance(raw, dict) else None
    if not isinstance(accounts, dict):
        return False, ()
    keeping = {
        str(name): account["oauth2"]
        for name, account in accounts.items()
        if isinstance(account, dict)
        and isinstance(account.get("oauth2"), dict)
        and account["oauth2"].get("grant", "refresh_token") == "refresh_token"
    }
    return bool(keeping), tuple(sorted(name for name, oauth2 in keeping.items() if "refresh_token" not in oauth2))


def _unit_path(path: str, what: str) -> str:
    if not _UNIT_PATH.fullmatch(path):
        raise ConfigError(
            f"{what} {path!r} has characters a unit file cannot hold as they are (space, %, $, quotes); "
            "copy it to a plain path such as /etc/postroom and run this again with --config there"
        )
    return path


def _hidden_from_service(path: Path) -> str | None:
    text = f"{path}/"
    if text.startswith(_PRIVATE_PREFIXES):
        return f"{path} is under a /tmp the service does not see (PrivateTmp=yes)"
    return None


# -- systemd ---------------------------------------------------------------------------------
_SANDBOX = """\
# --- who it runs as ----------------------------------------------------------------------
DynamicUser=yes
StateDirectory=postroom
StateDirectoryMode=0700
UMask=0077
PrivateUsers=yes

# --- what it can see and change ----------------------------------------------------------
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectProc=invisible
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
KeyringMode=private
PrivateMounts=yes
RemoveIPC=yes

# --- what it can do ----------------------------------------------------------------------
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


def _environment(d: Deployment) -> dict[str, str]:
    """The unit's Environment= (the daemon's, and `auth login`'s under systemd-run)."""
    return {"POSTROOM_CONFIG": str(d.config), "POSTROOM_TEMPLATES": str(d.templates)}


def systemd_unit(d: Deployment) -> str:
    """The unit file's text for ``d``."""
    for path, what in ((str(d.config), "the config"), (str(d.templates), "the templates"), (d.postroom, "postroom")):
        _unit_path(path, what)
    in_home = any(f"{p}/".startswith(_HIDDEN_PREFIXES) for p in (str(d.config), str(d.templates), d.postroom))
    credentials = "\n".join(f"LoadCredential={name}" for name in d.credentials)
    environment = "\n".join(f"Environment={k}={v}" for k, v in _environment(d).items())
    return f"""\
# postroom for {d.config}, written by `postroom deploy systemd`.
# Write it again when the config names other ${{NAME}} secrets.
#
# Each LoadCredential=NAME is read from {CREDSTORE}/NAME (or /run/credstore/NAME) and shows
# up as $CREDENTIALS_DIRECTORY/NAME, where the config's ${{NAME}} lookup reads it. State (the
# SQLite store, OAuth2 refresh tokens): /var/lib/postroom, made by StateDirectory=.

[Unit]
Description=postroom mail automation daemon ({d.config.name})
Documentation=https://github.com/postroom/postroom#readme
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={d.postroom} run
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# 78 (EX_CONFIG): the config is broken; restarting would fail the same way until it is fixed.
# 75 (EX_TEMPFAIL, the HTTP port taken) is not in it: that is retried.
RestartPreventExitStatus=78
WatchdogSec=60s
TimeoutStopSec=45s
KillMode=mixed

{environment}
Environment=POSTROOM_LOG_FORMAT=json
Environment=PYTHONUNBUFFERED=1

{credentials or "# The config uses no ${NAME} secrets: no LoadCredential= lines."}

{_SANDBOX.format(protect_home="read-only" if in_home else "yes")}
[Install]
WantedBy=multi-user.target
"""


def sign_in_command(d: Deployment, account: str) -> str:
    """`postroom auth login ACCOUNT` as the service would run it: the same dynamic user's state
    directory, credentials and settings (systemd-run, a transient unit with these properties)."""
    properties = ["DynamicUser=yes", "StateDirectory=postroom", "StateDirectoryMode=0700", "UMask=0077"]
    properties += [f"LoadCredential={name}" for name in d.credentials]
    properties += [f"Environment={k}={v}" for k, v in _environment(d).items()]
    words = ["systemd-run", "--pty", "--wait", "--collect", "--service-type=exec"]
    words += [f"--property={p}" for p in properties]
    words += [d.postroom, "auth", "login", account]
    return " ".join(shlex.quote(word) for word in words)


def systemd_steps(d: Deployment, unit_file: Path) -> list[str]:
    """The checklist printed after the unit is written (commands for root; the unit reads the
    config and templates where they are)."""
    steps = []
    for path in (d.config, d.templates):
        problem = _hidden_from_service(path)
        if problem:
            steps.append(f"# WARNING: {problem}: copy the config to /etc/postroom and write the unit again")
    steps.append("chmod -R a+rX " + " ".join(shlex.quote(str(p)) for p in (d.config, d.templates)))
    if d.credentials:
        steps.append(f"install -d -m 0700 {CREDSTORE}")
        steps += [f"install -m 0600 /dev/null {CREDSTORE}/{name}  # then put its value in it" for name in d.credentials]
    steps.append(f"install -m 0644 {shlex.quote(str(unit_file.resolve()))} /etc/systemd/system/postroom.service")
    steps.append("systemctl daemon-reload")
    steps.append("systemd-analyze verify /etc/systemd/system/postroom.service")
    steps += [sign_in_command(d, account) for account in d.sign_ins]
    steps.append("systemctl enable --now postroom")
    steps.append("journalctl -u postroom -f")
    return steps


# -- Docker Compose -----------------------------------------------------------------------------
def compose_file(d: Deployment) -> str:
    """The compose file's text for ``d`` (every value written by the YAML dumper: a path
    with a colon or a quote stays one value)."""
    environment: dict[str, str] = {
        "POSTROOM_CONFIG": CONTAINER_CONFIG,
        "POSTROOM_TEMPLATES": CONTAINER_TEMPLATES,
        "POSTROOM_STATE_DIR": CONTAINER_STATE,
        "POSTROOM_LOG_FORMAT": "json",
        "POSTROOM_HTTP": "0.0.0.0:9325",
    }
    service: dict[str, Any] = {
        "image": "postroom:latest",
        "restart": "unless-stopped",
        "init": True,
        "stop_grace_period": "30s",
        "read_only": True,
        "tmpfs": ["/tmp:size=64m,mode=1777"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "environment": environment,
        "volumes": [
            {"type": "volume", "source": "state", "target": CONTAINER_STATE},
            {"type": "bind", "source": str(d.config), "target": CONTAINER_CONFIG, "read_only": True},
            {"type": "bind", "source": str(d.templates), "target": CONTAINER_TEMPLATES, "read_only": True},
        ],
        "ports": ["127.0.0.1:9325:9325"],
    }
    if d.credentials:
        service["secrets"] = list(d.credentials)
    document: dict[str, Any] = {"name": "postroom", "services": {"postroom": service}, "volumes": {"state": {}}}
    if d.credentials:
        document["secrets"] = {name: {"file": f"./secrets/{name}"} for name in d.credentials}
    header = (
        f"# postroom for {_comment(str(d.config))}, written by `postroom deploy compose`.\n"
        "# Write it again when the config names other ${NAME} secrets. Each secret is a file in\n"
        "# ./secrets/ beside this file, mounted at /run/secrets/NAME, where the config's ${NAME}\n"
        "# lookup reads it: never in `environment:`, where `docker inspect` shows it.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _comment(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def compose_steps(d: Deployment, compose: Path) -> list[str]:
    """The checklist printed after the compose file is written."""
    steps = [f"cd {shlex.quote(str(compose.resolve().parent))}"]
    if d.credentials:
        steps.append("install -d -m 0700 secrets")
        steps += [f"printf '%s' 'its value' > secrets/{name}" for name in d.credentials]
        steps.append("chmod 0444 secrets/*  # the container runs as uid 10001")
    steps.append("docker build -t postroom:latest -f deploy/docker/Dockerfile /path/to/postroom-checkout")
    steps.append("docker compose run --rm postroom check")
    steps += [compose_sign_in_command(account) for account in d.sign_ins]
    steps.append("docker compose up -d")
    steps.append("docker compose logs -f postroom")
    return steps


def compose_sign_in_command(account: str) -> str:
    """`postroom auth login` in a one-off container of the service: the same image, secrets,
    settings and state volume as the daemon's (the image's entrypoint is `postroom`)."""
    return f"docker compose run --rm postroom auth login {shlex.quote(account)}"
