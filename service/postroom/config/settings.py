"""Process settings: POSTROOM_* from the environment and `.env`.

These say *where* things are (config file, database, templates) and *how* the process
behaves (logging, HTTP listener). What postroom *does* lives in the YAML config.

A setting that is wrong is a ``ConfigError`` (exit 78) naming the variable and what was
expected, never the value: it may have come from a ``*_FILE`` that is a secret (or the wrong
file altogether: a shadow file must not be printed because someone mistyped a path).

Read by a plain pydantic model with one before-validator, as pydantic-settings would read
them (keyword arguments, then the environment, then `.env`, names case-insensitive): its
import (argparse, asyncio, csv, email, …) cost every command ~30 ms of start-up.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .dburl import sqlite_file


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; honour it so the unit needs no extra env.
    return Path(os.environ.get("STATE_DIRECTORY", "./state"))


def _default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


ENV_PREFIX = "POSTROOM_"
DOTENV = Path(".env")  # in the working directory
# NAME_FILE=/run/secrets/x gives NAME the file's content: the convention of official Docker
# images, so a secret never has to sit in the environment.
FILE_SUFFIX = "_FILE"
MAX_SECRET_FILE = 64 * 1024  # bytes; a secret, not a data file


def read_secret_file(path: str, variable: str) -> str:
    """The content of the file ``variable`` (a NAME_FILE) names, without its final line end."""
    from ..errors import ConfigError

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: can't read it ({exc.strerror})") from None
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{variable}={path}: over {MAX_SECRET_FILE} bytes; is it the right file?")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}={path}: not UTF-8 text") from None


def read_dotenv(path: Path) -> dict[str, str]:
    """NAME=value lines of a .env file; empty where there is no such file."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # only where there is a file to read (~5 ms of imports)

    return {key: value for key, value in dotenv_values(path, encoding="utf-8").items() if value is not None}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")  # and their +driver forms
# host:port, [v6]:port, :port, or empty (checked again, with the meaning, by http.parse_listen)
_LISTEN = re.compile(r"(?:\[[0-9A-Fa-f:.]{1,100}\]|[A-Za-z0-9.\-]{0,253})?:[0-9]{1,5}")


def _environment_names() -> set[str]:
    names = {key.upper() for key in read_dotenv(DOTENV)}
    return names | {key.upper() for key in os.environ}


def settings_problem(exc: ValidationError) -> str:
    """What is wrong, one line a setting, naming where it came from and what was expected;
    never the value (pydantic's own text would quote it)."""
    from_files = _environment_names()
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        variable = f"{ENV_PREFIX}{field.upper()}"
        expected = str(error["msg"]).removeprefix("Value error, ")
        if variable + FILE_SUFFIX in from_files and variable not in from_files:
            file = os.environ.get(variable + FILE_SUFFIX) or read_dotenv(DOTENV).get(variable + FILE_SUFFIX, "")
            lines.append(f"{variable}{FILE_SUFFIX}={file}: the file's content is not a valid setting: {expected}")
        else:
            lines.append(f"{variable}: {expected}")
    return "\n".join(lines)


# Settings that are secrets: besides POSTROOM_NAME and POSTROOM_NAME_FILE, a file named
# POSTROOM_NAME where the config's ${NAME} secrets are looked for (``secret_dirs``).
SECRET_SETTINGS = ("database_url", "console_token")


def _secret_dirs(secrets_dir: Any) -> list[Path]:
    """Folders searched for ${NAME} files, most specific first."""
    dirs = [Path(secrets_dir)] if secrets_dir else []
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        dirs.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
    dirs.append(Path("/run/secrets"))
    return dirs


def _secret_file(variable: str, secrets_dir: Any) -> Path | None:
    return next((folder / variable for folder in _secret_dirs(secrets_dir) if (folder / variable).is_file()), None)


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def __init__(self, **given: Any) -> None:
        try:
            super().__init__(**given)
        except ValidationError as exc:
            from ..errors import ConfigError

            raise ConfigError(settings_problem(exc)) from None

    config: Path = Path("postroom.yaml")
    # Default: a SQLite file in the state dir (see database_url_or_default).
    database_url: str | None = None
    state_dir: Path = Field(default_factory=_default_state_dir)
    # Default: the `templates` folder beside the config file.
    templates: Path | None = None
    log_format: Literal["json", "console"] | None = None
    log_level: str = "INFO"
    # host:port for /healthz, /readyz and /metrics; empty disables the listener.
    http: str = "127.0.0.1:9325"
    # The console's token (pages beyond the probes on POSTROOM_HTTP); no token, no console.
    console_token: SecretStr | None = None
    # Host names (commas or spaces between) the HTTP listener answers to besides IP addresses,
    # localhost and the listen host: a request for any other name gets 421 (DNS rebinding).
    console_hosts: str = ""
    # Where ${NAME} secrets may live as files (systemd credentials, Docker secrets).
    secrets_dir: Path | None = None
    # Names this process in fire claims and leases; unique per replica.
    instance: str = Field(default_factory=_default_instance)
    # Replicas: how long a lease (a folder, outbox rows, webhook deliveries, the replica's own
    # heartbeat row) lasts unless its holder renews it, which it does every third of this.
    # Work of a replica that died resumes on another within about this (plus a few seconds).
    lease_seconds: float = Field(default=20.0, gt=0.5, le=600)
    # The key VERP return paths are signed with (postroom.mail.verp); default: one the store
    # makes once. Give it to keep tokens valid across a new store, or to share it explicitly.
    verp_key: SecretStr | None = None

    @field_validator("http")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value.strip() and not (_LISTEN.fullmatch(value.strip()) and int(value.rpartition(":")[2]) <= 65535):
            raise ValueError("expected host:port, [IPv6]:port or :port (or empty to disable)")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme, sep, _rest = value.strip().partition("://")
        if not sep or scheme.split("+", 1)[0].lower() not in DATABASE_SCHEMES:
            raise ValueError("expected a database URL: sqlite:///PATH or postgresql://USER@HOST/DB")
        return value.strip()

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, given: Any) -> Any:
        """Each setting not passed as an argument: POSTROOM_NAME from the environment, else
        from `.env`."""
        if not isinstance(given, dict):
            return given
        found: dict[str, Any] = {}
        for source in (read_dotenv(DOTENV), os.environ):  # the environment wins over .env
            upper = {key.upper(): value for key, value in source.items()}
            for name in cls.model_fields:
                variable = f"{ENV_PREFIX}{name.upper()}"
                if variable in upper and variable + FILE_SUFFIX in upper:
                    from ..errors import ConfigError

                    raise ConfigError(f"both {variable} and {variable}{FILE_SUFFIX} are set; keep one")
                if variable in upper:
                    found[name] = upper[variable]
                elif variable + FILE_SUFFIX in upper:  # e.g. POSTROOM_DATABASE_URL_FILE
                    found[name] = read_secret_file(upper[variable + FILE_SUFFIX], variable + FILE_SUFFIX)
        for name in SECRET_SETTINGS:  # found like any ${NAME}: a systemd credential, a Docker secret
            if name not in found and name not in given:
                file = _secret_file(f"{ENV_PREFIX}{name.upper()}", found.get("secrets_dir") or given.get("secrets_dir"))
                if file is not None:
                    found[name] = read_secret_file(str(file), str(file))
        return {**found, **given}

    def database_url_or_default(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'postroom.db').resolve()}"

    def sqlite_path(self) -> Path | None:
        """The store's file when the store is SQLite; None for a server database."""
        return sqlite_file(self.database_url_or_default())

    def templates_dir(self) -> Path:
        if self.templates is not None:
            return self.templates
        return self.config.resolve().parent / "templates"

    def secret_dirs(self) -> list[Path]:
        """Folders searched for ${NAME} files, most specific first."""
        return _secret_dirs(self.secrets_dir)
