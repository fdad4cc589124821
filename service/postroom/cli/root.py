"""The `postroom` command group (``app``), the entry point (``main``) and what every command
shares: ``--config``, the settings made on first use, the failures and their exit codes, the
store opened only if it exists, and the time and table formats.

Start-up matters for a command typed by hand or run from cron: this module imports only
click at the top, and each command imports what it uses when it runs (`postroom --version`
loads no config code; `check --offline` no store, no SQLAlchemy).
"""

from __future__ import annotations

import io
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from .. import __version__
from ..errors import ConfigError, PostroomError

if TYPE_CHECKING:
    from ..config import Config, Settings
    from ..store import Store


class Failed(click.ClickException):
    """A problem the user can fix: printed to stderr, exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.secho(self.format_message(), fg="red", err=True)


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_root().meta["postroom.config"] = value


# `--config` is taken before the command name and after it: `postroom -c FILE check` and
# `postroom check -c FILE` mean the same.
config_option = click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path, dir_okay=False),
    expose_value=False,
    callback=_remember_config,
    help="Config file (default: $POSTROOM_CONFIG, else ./postroom.yaml).",
)


def settings(ctx: click.Context, *, logs: bool = True) -> Settings:
    """The process settings, made on first use, so commands that need none (`init`, `schema`,
    `--version`) pay for none. `logs=False`: a command that only reads files and prints
    (`check --offline`) leaves logging (structlog, ~20 ms of imports) unconfigured."""
    root = ctx.find_root()
    made: Settings | None = root.meta.get("postroom.settings")
    if made is None:
        from ..config.settings import Settings

        config: Path | None = root.meta.get("postroom.config")
        try:
            made = Settings(config=config) if config is not None else Settings()
        except ConfigError as exc:  # a POSTROOM_*_FILE that can't be read
            raise broken_config(exc) from None
        root.meta["postroom.settings"] = made
    if logs and not root.meta.get("postroom.logging"):
        from ..logs import setup_logging

        level, fmt = made.log_level, made.log_format
        if root.invoked_subcommand != "run":
            if "POSTROOM_LOG_LEVEL" not in os.environ:
                # One-shot commands speak through their own output; their logs are for trouble only.
                level = "WARNING"
            # A person reads them, beside the output: text lines (unless JSON was asked for), and
            # stdout written line by line, so output and log lines keep their order in one file.
            fmt = fmt or "console"
            if isinstance(sys.stdout, io.TextIOWrapper):
                sys.stdout.reconfigure(line_buffering=True)
        setup_logging(fmt=fmt, level=level)
        root.meta["postroom.logging"] = True
    return made


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(__version__, package_name="postroom", message="%(prog)s %(version)s")
def app() -> None:
    """postroom: scheduled template mail out, inbox rules in."""


# sysexits.h's EX_CONFIG: systemd's unit stops restarting on it (RestartPreventExitStatus=78),
# since the same config would fail the same way every 5 s until a person fixes it.
EX_CONFIG = 78


class BrokenConfig(Failed):
    """The config (or its templates) can't be used: printed to stderr, exit 78."""

    exit_code = EX_CONFIG


# sysexits.h's EX_TEMPFAIL: a clash that passes (the HTTP port not yet free); restarted.
EX_TEMPFAIL = 75


class TryAgainLater(Failed):
    """Something that may pass by itself: printed to stderr, exit 75."""

    exit_code = EX_TEMPFAIL


def broken_config(exc: ConfigError) -> Failed:
    return BrokenConfig(f"config is broken:\n{exc}")


def loaded_config(ctx: click.Context) -> Config:
    """The config (not its templates), or the command fails listing every problem."""
    from ..config import load_config

    try:
        return load_config(settings(ctx)).config
    except ConfigError as exc:
        raise broken_config(exc) from None


def _fmt_time(value: datetime | None, tz: str | None = None) -> str:
    if value is None:
        return "-"
    if tz:
        from zoneinfo import ZoneInfo

        value = value.astimezone(ZoneInfo(tz))
    return value.strftime("%Y-%m-%d %H:%M %Z")


def _fmt_seconds(value: datetime) -> str:
    return value.strftime("%H:%M:%S %Z")  # leases and heartbeats move in seconds


def counted(n: int, noun: str) -> str:
    """ "1 account", "2 accounts" (the nouns postroom counts take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _existing_store(settings: Settings) -> Store | None:
    """The store if there is one: commands that only read it (`jobs`, `outbox`, `rules
    failed`) never create it; none yet reads as empty, and says where it looked (on stderr:
    a run in another state directory than the daemon's is the usual reason)."""
    from ..bootstrap import no_store_here, open_store, store_exists

    if store_exists(settings):
        return open_store(settings)
    click.echo(no_store_here(settings), err=True)
    return None


def main() -> None:
    try:
        app(prog_name="postroom")
    except ConfigError as exc:  # a setting or the store's URL found wrong deep in a command
        broken_config(exc).show()
        sys.exit(EX_CONFIG)
    except PostroomError as exc:  # e.g. the store's database down: said, then exit 1
        Failed(str(exc)).show()
        sys.exit(1)
