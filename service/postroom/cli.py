"""The `postroom` command. Each command is a thin shell over the same parts the daemon uses.

Start-up matters for a command typed by hand or run from cron: this module imports only
click at the top, and each command imports what it uses when it runs (`postroom --version`
loads no config code; `check --offline` no store, no SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from .errors import ConfigError, PortInUse, PostroomError, map_errors

if TYPE_CHECKING:
    from .auth.vault import TokenVault
    from .checks import Finding
    from .config import Config, Settings
    from .store import Store


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
        from .config.settings import Settings

        config: Path | None = root.meta.get("postroom.config")
        try:
            made = Settings(config=config) if config is not None else Settings()
        except ConfigError as exc:  # a POSTROOM_*_FILE that can't be read
            raise broken_config(exc) from None
        root.meta["postroom.settings"] = made
    if logs and not root.meta.get("postroom.logging"):
        from .logs import setup_logging

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
@click.version_option(package_name="postroom", message="%(prog)s %(version)s")
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
    from .config import load_config

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


# -- init, schema --------------------------------------------------------------------------
@app.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite starter files already there (never .env).")
def init(directory: Path, force: bool) -> None:
    """Write a starter project into DIRECTORY (default: here).

    A commented postroom.yaml with postroom.schema.json, .env.example (copied to .env if
    there is none), templates/layout.j2 and templates/hello.j2."""
    from .config.schema import config_schema
    from .starter import write_starter

    try:
        written = write_starter(directory, force=force, schema=_json(config_schema()))
    except PostroomError as exc:
        raise Failed(str(exc)) from None
    except OSError as exc:
        raise Failed(f"cannot write into {directory}: {exc.strerror}") from None
    click.echo(f"wrote into {directory.resolve()}:")
    for w in written:
        click.echo(f"  {w.path.relative_to(directory)}" + (f"  ({w.note})" if w.note else ""))
    steps = [] if directory.resolve() == Path.cwd() else [(f"cd {directory}", "")]
    steps += [
        ("postroom check --offline", "the starter is valid as written"),
        ("$EDITOR postroom.yaml .env", "your servers, addresses and password"),
        ("postroom check", "logs in to every server"),
        ("postroom send hello --dry-run", "the example job's message, sent nowhere"),
        ("postroom run", "the daemon"),
    ]
    click.echo("next:")
    for command, why in steps:
        click.echo(f"  {command:<32}# {why}" if why else f"  {command}")


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor completion).

    postroom schema > postroom.schema.json"""
    from .config.schema import config_schema

    click.echo(_json(config_schema()))


def _json(value: object) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False)


# -- check ---------------------------------------------------------------------------------
@app.command()
@click.option("--offline", is_flag=True, help="Only validate; don't connect to servers or read job data.")
@click.option("--render", "render_only", is_flag=True, help="Validate, then render every job from its data; no logins.")
@config_option
@click.pass_context
def check(ctx: click.Context, offline: bool, render_only: bool) -> None:
    """Validate config, templates and rules; then log in to every server and render every job
    once from its data (unless --offline; --render: render, no logins). Sends nothing.

    Reads files only: it opens no store and writes nothing (except for OAuth2 accounts: their
    refresh tokens live in the store, and one the server rotated must be kept)."""
    from .bootstrap import load_checked

    if offline and render_only:
        raise click.UsageError("--offline reads no job data; --render does: give one of them")
    checking = settings(ctx, logs=not offline)
    try:
        loaded, renderer = load_checked(checking)
    except ConfigError as exc:
        raise broken_config(exc) from None
    cfg = loaded.config
    click.echo(
        f"{loaded.path}: OK — {counted(len(cfg.accounts), 'account')}, {counted(len(cfg.jobs), 'job')}, "
        f"{counted(len(cfg.rules), 'rule')}; "
        f"templates in {loaded.templates_dir}"
    )
    if offline:
        return
    import asyncio

    from .clock import utcnow
    from .outgoing.render_check import render_findings

    try:
        findings = [] if render_only else asyncio.run(_server_findings(checking, cfg))
    except ConfigError as exc:  # an OAuth2 account without POSTROOM_TOKEN_KEY
        raise broken_config(exc) from None
    findings += asyncio.run(render_findings(cfg, renderer, now=utcnow()))
    for f in findings:
        mark = click.style("ok  ", fg="green") if f.ok else click.style("FAIL", fg="red")
        click.echo(f"  {mark} {f.where}: {f.message}")
    if not all(f.ok for f in findings):
        ctx.exit(1)


async def _server_findings(settings: Settings, cfg: Config) -> list[Finding]:
    """Log in everywhere; OAuth2 accounts with their token providers and the store they keep
    refresh tokens in, named, and opened only if it is there: `check` never makes a store."""
    import asyncio

    from .bootstrap import (
        build_logins,
        needs_token_store,
        no_store_here,
        open_store,
        signed_in_accounts,
        store_exists,
        store_name,
    )
    from .checks import Finding, server_findings
    from .store.calls import close_store

    if not needs_token_store(cfg):
        return await server_findings(cfg, logins=build_logins(settings, cfg, None))
    click.echo(f"OAuth2 refresh tokens: store {store_name(settings)}")
    if not store_exists(settings):
        signed_in = signed_in_accounts(cfg)  # the others' refresh tokens are in the config
        others = cfg.model_copy(update={"accounts": {n: a for n, a in cfg.accounts.items() if n not in signed_in}})
        found = await server_findings(others, logins=build_logins(settings, others, None))
        return found + [
            Finding(f"accounts.{n}", False, f"{no_store_here(settings)}; or sign in: postroom auth login {n}")
            for n in signed_in
        ]
    store = await asyncio.to_thread(open_store, settings)
    try:
        return await server_findings(cfg, logins=build_logins(settings, cfg, store))
    finally:
        await close_store(store)


# -- run -----------------------------------------------------------------------------------
@app.command()
@click.option("--dry-run", is_flag=True, help="Log every action it would take; perform none.")
@click.option(
    "--no-migrate",
    is_flag=True,
    help="Never change the store schema; refuse to start on an old one (run `postroom migrate`).",
)
@config_option
@click.pass_context
def run(ctx: click.Context, dry_run: bool, no_migrate: bool) -> None:
    """Run the daemon in the foreground (for systemd, Docker, or a terminal)."""
    from .app import run_daemon

    try:
        code = run_daemon(settings(ctx), dry_run=dry_run, migrate=not no_migrate)
    except ConfigError as exc:
        raise broken_config(exc) from None
    except PortInUse as exc:
        raise TryAgainLater(f"postroom: {exc}") from None
    except PostroomError as exc:
        raise Failed(f"postroom: {exc}") from None
    ctx.exit(code)


# -- migrate -------------------------------------------------------------------------------
@app.command()
@config_option
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the store schema up to this postroom's (creating the store if there is none)."""
    from .store import migrate as migrate_store
    from .store import open_engine
    from .store.calls import STORE_ERRORS

    url = settings(ctx).database_url_or_default()
    engine = open_engine(url)
    try:
        with map_errors(STORE_ERRORS, "store: "):
            before, after = migrate_store(engine)
    except PostroomError as exc:
        raise Failed(f"postroom migrate: {exc}") from None
    finally:
        engine.dispose()
    shown_before, shown_after = ", ".join(sorted(before)) or "none", ", ".join(sorted(after))
    if before == after:
        click.echo(f"store schema {shown_after} is current; nothing to do")
    else:
        click.echo(f"store schema migrated from {shown_before} to {shown_after}")


# -- jobs ----------------------------------------------------------------------------------
@app.command()
@config_option
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """Each job with its schedule and next fire time."""
    from .clock import utcnow
    from .scheduler import jobs_overview

    cfg = loaded_config(ctx)
    overview = jobs_overview(cfg, now=utcnow())
    last = {}
    try:
        store = _existing_store(settings(ctx))
        if store is not None:
            last = store.runs.last_runs()
            store.close()
    except Exception as exc:  # the overview is still useful without run history (said, not hidden)
        click.echo(f"no run history: {exc}", err=True)
    from .outgoing.shown import run_outcome

    rows = []
    for j in overview:
        run_ = last.get(j.name)
        last_text = f"{_fmt_time(run_.started_at, j.timezone)}" if run_ else "never"
        outcome = run_outcome(run_) if run_ else "-"
        rows.append([j.name, j.schedule, j.timezone, _fmt_time(j.next_fire, j.timezone), last_text, outcome])
    if not rows:
        click.echo("no jobs configured")
        return
    click.echo(_table(rows, ["JOB", "SCHEDULE", "ZONE", "NEXT FIRE", "LAST RUN", "OUTCOME"]))
    for name, run_ in sorted(last.items()):
        if run_.state == "failed" and name in cfg.jobs:
            click.echo(f"{name}: last run failed: {run_.why}")


def _existing_store(settings: Settings) -> Store | None:
    """The store if there is one: commands that only read it (`jobs`, `outbox`, `rules
    failed`) never create it; none yet reads as empty, and says where it looked (on stderr:
    a run in another state directory than the daemon's is the usual reason)."""
    from .bootstrap import no_store_here, open_store, store_exists

    if store_exists(settings):
        return open_store(settings)
    click.echo(no_store_here(settings), err=True)
    return None


# -- status --------------------------------------------------------------------------------
@app.command()
@config_option
@click.pass_context
def status(ctx: click.Context) -> None:
    """Replicas sharing the store: which are alive, what each holds (folders, work in flight)."""
    from .clock import utcnow
    from .clock_check import clock_note

    store = _existing_store(settings(ctx))
    if store is None:
        click.echo("no store yet: nothing has run here")
        return
    try:
        now = utcnow()
        members, watches, flight = store.replicas.rows(now=now), store.replicas.watches(), store.replicas.in_flight()
    finally:
        store.close()
    if not members and not watches:
        click.echo("no replicas: a single daemon (SQLite) keeps no replica rows")
        return
    held: dict[str, list[str]] = {}
    for watch, holder, _expires in watches:
        held.setdefault(holder, []).append(watch)
    rows = [
        [
            m.instance,
            "alive" if m.alive else "gone",
            _fmt_seconds(m.seen_at),
            str(len(held.get(m.instance, []))),
            str(flight.get(m.instance, (0, 0))[0]),
            str(flight.get(m.instance, (0, 0))[1]),
            clock_note(m.clock_offset),
        ]
        for m in members
    ]
    click.echo(_table(rows, ["REPLICA", "STATE", "LAST HEARTBEAT", "FOLDERS", "SENDING", "WEBHOOKS", "CLOCK"]))
    if watches:
        click.echo("")
        click.echo(
            _table(
                [[watch, holder, _fmt_seconds(expires)] for watch, holder, expires in watches],
                ["FOLDER", "HELD BY", "LEASE UNTIL"],
            )
        )


# -- send ----------------------------------------------------------------------------------
@app.command()
@click.argument("job")
@click.option("--dry-run", is_flag=True, help="Print the MIME message(s); send nothing, store nothing.")
@click.option("--to", "to", multiple=True, metavar="ADDR", help="Send to this address instead (repeatable).")
@config_option
@click.pass_context
def send(ctx: click.Context, job: str, dry_run: bool, to: tuple[str, ...]) -> None:
    """Run JOB now and send what it makes."""
    import asyncio

    make = _dry_run if dry_run else _send
    try:
        with contextlib.nullcontext() if dry_run else _writing(settings(ctx)):
            code = asyncio.run(make(settings(ctx), job, to=list(to) or None))
    except ConfigError as exc:
        raise broken_config(exc) from None
    except PostroomError as exc:
        raise Failed(f"{job}: {exc}") from None
    ctx.exit(code)


def _writing(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """While `send` has rows in flight, a daemon starting on the same SQLite store must not
    take them back as left over (``store.owner``); a server database needs nothing."""
    from .store.owner import writing

    sqlite = settings.sqlite_path()
    return writing(sqlite) if sqlite is not None else contextlib.nullcontext()


async def _dry_run(settings: Settings, job: str, *, to: list[str] | None) -> int:
    """Build JOB's messages and print them. Needs no store, so it opens none (writes nothing)."""
    from .bootstrap import load_checked
    from .clock import utcnow
    from .outgoing.jobs import JobRunner

    loaded, renderer = load_checked(settings)
    runner = JobRunner(loaded.config, renderer, store=None)
    # Printed a chunk of rows at a time as they are rendered: a 100k-row merge is never held whole.
    skipped, chunks = await runner.build_chunks(job, key_prefix="dry-run", now=utcnow(), to_override=to)
    if skipped:
        click.echo(f"{job}: nothing to send ({skipped})", err=True)
        return 0
    async for chunk in chunks:
        for i, m in enumerate(chunk.messages, start=chunk.first):
            click.echo(
                f"--- message {i + 1} of {chunk.total}; envelope from <{m.envelope_from}> to {', '.join(m.recipients)}",
                err=True,
            )
            sys.stdout.write(m.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
            sys.stdout.write("\n")
    return 0


async def _send(settings: Settings, job: str, *, to: list[str] | None) -> int:
    import asyncio
    import uuid
    from collections import Counter

    from .bootstrap import build_logins, load_checked, open_store
    from .clock import utcnow
    from .outgoing.envelopes import given_verp_key, signed_return_paths
    from .outgoing.jobs import JobRunner
    from .outgoing.refusals import suppressing
    from .outgoing.sender import OutboxSender
    from .outgoing.shown import message_state, refused_line
    from .store.calls import close_store, store_call
    from .store.outbox import OutboxItem

    loaded, renderer = load_checked(settings)
    cfg = loaded.config
    if job not in cfg.jobs:
        raise PostroomError(f"no job named {job!r}; jobs: {', '.join(sorted(cfg.jobs)) or 'none'}")
    store = await asyncio.to_thread(open_store, settings)
    sender: OutboxSender | None = None
    warming: asyncio.Task[None] | None = None
    try:
        runner = JobRunner(cfg, renderer, store)
        wanted: set[str] = set()
        outcomes: dict[str, str] = {}  # message_id -> its latest result in this process

        def seen(kind: str, item: OutboxItem) -> None:
            if item.message_id in wanted:
                outcomes[item.message_id] = kind

        refused = Counter[str]()
        verp_key = await store_call(store.bounces.verp_key, given_verp_key(settings), now=utcnow())
        sender = OutboxSender(
            store.outbox,
            cfg.accounts,
            cfg.outbox,
            on_result=seen,
            logins=build_logins(settings, cfg, store),
            on_refused=lambda account, origin, n: refused.update({"recipients": n}),
            suppress=suppressing(store.bounces),
            return_paths=signed_return_paths(verp_key),
        )
        # The SMTP handshakes (TCP, STARTTLS, AUTH per connection) overlap the rendering.
        warming = asyncio.create_task(sender.prewarm(cfg.jobs[job].account))
        built = await runner.run_now(job, key_prefix=f"manual:{job}:{uuid.uuid4().hex}", to_override=to)
        await warming
        if built.skipped:
            click.echo(f"{job}: nothing to send ({built.skipped})")
            return 0
        if built.suppressed:
            click.echo(
                f"{job}: {built.suppressed} suppressed recipient(s) left out (hard bounces; "
                "see `postroom suppressions`)"
            )
        total = len(built.messages)
        click.echo(f"{job}: {total} message(s) queued; sending…")
        # The whole merge in one claim (up to 5,000 rows; the messages are in memory already):
        # each claim is a transaction scanning for due rows, ten cost a 1,000-row merge ~0.5 s.
        sender.policy = cfg.outbox.model_copy(update={"batch_size": max(cfg.outbox.batch_size, min(total, 5000))})
        wanted.update(m.message_id for m in built.messages)
        del built  # its raw bytes are in the store now
        while True:
            stats = await sender.drain_once()
            if len(outcomes) >= total or stats.total == 0:
                break
        counts = Counter(outcomes.values())
        if len(outcomes) < total:  # some rows went out elsewhere (a running daemon): ask the store
            items = await store_call(store.outbox.by_message_ids, wanted)
            counts = Counter(message_state(i) for i in items)
        sent, deferred, dead = counts["sent"], counts["deferred"], counts["dead"]
        click.echo(f"{job}: sent {sent}, deferred {deferred}, dead {dead} (of {total}); at {_fmt_time(utcnow())}")
        if deferred:
            click.echo("  deferred messages stay in the outbox; `postroom run` retries them with backoff")
        if refused["recipients"]:
            click.echo(f"  {refused_line(refused['recipients'])}; see `postroom outbox` for the server's replies")
        if counts["held"]:
            account = cfg.jobs[job].account
            click.echo(
                f"  {counts['held']} held: account {account} must sign in again "
                f"(`postroom auth login {account}`); they go out after that"
            )
        if dead:
            click.echo("  see `postroom outbox --dead` for why")
            return 1
        return 0
    finally:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        if sender is not None:
            await sender.close_idle()  # prewarmed connections no drain used (failed/skipped run)
        await close_store(store)


# -- preview -------------------------------------------------------------------------------
@app.command()
@click.argument("job", required=False)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default="any free port",
    help="The port on 127.0.0.1 to serve the page on.",
)
@config_option
@click.pass_context
def preview(ctx: click.Context, job: str | None, port: int) -> None:
    """Show JOB's email (default: the first job) in a browser, re-rendered when a template or
    the config is saved.

    Serves a page on 127.0.0.1 and prints its URL, with a token only that URL carries. Pick a
    job and, for a mail merge, a row. Sends nothing and writes nothing (no store is opened).
    Stop it with Ctrl-C."""
    from .config import load_config
    from .console.preview import serve_preview

    preview_settings = settings(ctx)
    try:
        jobs = load_config(preview_settings).config.jobs
    except ConfigError as exc:  # the page shows it, and the fix, live
        click.secho(f"config is broken (the page shows where):\n{exc}", fg="yellow", err=True)
    else:
        if job is not None and job not in jobs:
            raise Failed(f"no job named {job!r}; jobs: {', '.join(sorted(jobs)) or 'none'}")

    def announce(url: str) -> None:
        click.echo(f"postroom preview: open {url}")
        click.echo("(Ctrl-C stops it; nothing is sent and nothing is stored)")

    try:
        serve_preview(preview_settings, port=port, job=job, announce=announce)
    except OSError as exc:
        raise Failed(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


# -- rules test ----------------------------------------------------------------------------
@app.group()
def rules() -> None:
    """Inspect inbox rules."""


@rules.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--account", help="Only this account's rules.")
@config_option
@click.pass_context
def rules_test(ctx: click.Context, file: Path, account: str | None) -> None:
    """Which rules (YAML, then Sieve) match the message in FILE (.eml), the actions they would
    take and what the guards will decide for each (the reply ledger is read, not written)."""
    from .rules_commands import rules_test_command

    rules_test_command(loaded_config(ctx), settings(ctx), file, account)


@rules.command("try")
@click.option("--account", required=True, help="The account whose folder to read.")
@click.option("--folder", default="INBOX", show_default=True, help="The folder to read.")
@click.option("--last", default=20, show_default=True, help="How many of its newest messages.")
@config_option
@click.pass_context
def rules_try(ctx: click.Context, account: str, folder: str, last: int) -> None:
    """Run the rules (YAML and Sieve) against a live folder's newest messages without acting:
    message -> rule -> action -> what the guards decide. Reads only (EXAMINE, BODY.PEEK)."""
    from .rules_commands import rules_try_command

    rows = rules_try_command(loaded_config(ctx), settings(ctx), account, folder, last)
    click.echo(_table(rows, ["MESSAGE", "RULE", "ACTION", "GUARDS"]))


@rules.command("failed")
@click.option("--limit", default=50, show_default=True, help="At most this many rows of each kind.")
@config_option
@click.pass_context
def rules_failed(ctx: click.Context, limit: int) -> None:
    """Incoming messages set aside, and actions and webhooks given up on — with the reason."""
    store = _existing_store(settings(ctx))
    if store is not None:
        try:
            aside = store.inbound.set_aside()[:limit]
            actions = store.ledger.dead_actions(limit=limit)
            hooks = store.ledger.dead_webhooks(limit=limit)
        finally:
            store.close()
    else:  # nothing has run here yet, so nothing has failed
        aside, actions, hooks = [], [], []
    click.echo(f"messages set aside: {len(aside)}")
    if aside:
        click.echo(
            _table(
                [[r.key, r.message_id or "-", str(r.attempts), (r.error or "")[:80]] for r in aside],
                ["KEY", "MESSAGE-ID", "TRIES", "LAST ERROR"],
            )
        )
    click.echo(f"actions given up on: {len(actions)}")
    if actions:
        click.echo(
            _table(
                [[key, f"{rule}#{index}", kind, (error or "")[:80]] for (key, rule, index), kind, error in actions],
                ["MESSAGE KEY", "RULE#ACTION", "KIND", "REASON"],
            )
        )
    click.echo(f"webhooks given up on: {len(hooks)}")
    if hooks:
        click.echo(
            _table(
                [[h.webhook_id, h.rule, h.url[:40], str(h.attempts), (h.last_error or "")[:80]] for h in hooks],
                ["WEBHOOK-ID", "RULE", "URL", "TRIES", "LAST ERROR"],
            )
        )


# -- outbox --------------------------------------------------------------------------------
@app.group(invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Show dead letters and why they failed.")
@click.option("--bounced", is_flag=True, help="Show messages that bounced, with the status that came back.")
@click.option("--limit", default=50, show_default=True, help="At most this many rows.")
@config_option
@click.pass_context
def outbox(ctx: click.Context, dead: bool, bounced: bool, limit: int) -> None:
    """What waits to be sent (or, with --dead, what failed and why; --bounced, what bounced)."""
    if ctx.invoked_subcommand is not None:
        return
    if bounced:
        _show_bounced(settings(ctx), limit)
        return
    from .outgoing.shown import held_next_step, message_state, refused_line, refused_replies
    from .store.outbox import WAITING

    store = _existing_store(settings(ctx))
    refused = []
    if store is not None:
        try:
            counts = store.outbox.counts()
            items = store.outbox.list(statuses=["dead"] if dead else list(WAITING), limit=limit)
            refused = [] if dead else store.outbox.with_refused(limit=limit)
        finally:
            store.close()
    else:  # nothing has run here yet: an empty outbox
        counts, items = {}, []
    click.echo("outbox: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"))
    if not items:
        click.echo("no dead letters" if dead else "nothing waiting")
    else:
        rows = []
        for i in items:
            to = ", ".join(i.recipients or list(i.refused)) or "-"
            state = message_state(i)
            when = held_next_step(i.account) if state == "held" else _fmt_time(i.next_attempt_at)
            rows.append(
                [
                    str(i.id),
                    i.account,
                    i.origin or "-",
                    to[:40],
                    *([] if dead else [state]),
                    str(i.attempts),
                    *([] if dead else [when]),
                    (i.last_error or "")[:80],
                ]
            )
        state_headers = [] if dead else ["STATE"]
        when_headers = [] if dead else ["NEXT TRY"]
        headers = ["ID", "ACCOUNT", "FROM JOB/RULE", "TO", *state_headers, "TRIES", *when_headers, "LAST ERROR"]
        click.echo(_table(rows, headers))
        if dead:
            click.echo("put one back with: postroom outbox retry ID")
    if refused:
        click.echo(f"sent, with recipients refused: {len(refused)}")
        click.echo(
            _table(
                [
                    [str(i.id), i.account, i.origin or "-", refused_line(len(i.refused)), refused_replies(i)[:100]]
                    for i in refused
                ],
                ["ID", "ACCOUNT", "FROM JOB/RULE", "REFUSED", "SERVER'S REPLIES"],
            )
        )


@outbox.command("retry")
@click.argument("item_id", metavar="ID", type=int)
@config_option
@click.pass_context
def outbox_retry(ctx: click.Context, item_id: int) -> None:
    """Put dead letter ID back in the queue (same Message-ID; the daemon sends it)."""
    from .clock import utcnow

    store = _existing_store(settings(ctx))
    if store is None:
        raise Failed(f"no outbox message with ID {item_id} (there is no store yet)")
    try:
        item = store.outbox.get(item_id)
        if item is None:
            raise Failed(f"no outbox message with ID {item_id}")
        if item.status != "dead":
            raise Failed(f"message {item_id} is {item.status}, not dead; nothing to retry")
        store.outbox.retry(item_id, now=utcnow())
    finally:
        store.close()
    click.echo(f"message {item_id} is queued again; a running daemon sends it at its next pass")


def _show_bounced(settings: Settings, limit: int) -> None:
    store = _existing_store(settings)
    if store is None:
        click.echo("no bounced messages")
        return
    try:
        rows = store.bounces.bounced(limit=limit)
    finally:
        store.close()
    if not rows:
        click.echo("no bounced messages")
        return
    table = [
        [
            str(r.outbox_id),
            r.account,
            r.origin or "-",
            line.recipient[:40],
            line.status or "-",
            "yes" if line.hard else "no",
            line.diagnostic[:70],
        ]
        for r in rows
        for line in (r.lines or [])
    ]
    click.echo(_table(table, ["ID", "ACCOUNT", "FROM JOB/RULE", "RECIPIENT", "STATUS", "SUPPRESSED", "DIAGNOSTIC"]))


# -- suppressions --------------------------------------------------------------------------
@app.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, metavar="[ACCOUNT] | remove ADDR")
@click.option("--account", "only", help="remove: only from this account's list (default: every account's).")
@config_option
@click.pass_context
def suppressions(ctx: click.Context, args: tuple[str, ...], only: str | None) -> None:
    """Addresses jobs no longer send to (hard bounces): `suppressions [ACCOUNT]` lists them,
    `suppressions remove ADDR` takes one off."""
    if args and args[0] == "remove":
        if len(args) != 2:
            raise click.UsageError("usage: postroom suppressions remove ADDR [--account ACCOUNT]")
        _remove_suppression(settings(ctx), args[1], only)
        return
    if len(args) > 1:
        raise click.UsageError("usage: postroom suppressions [ACCOUNT]")
    store = _existing_store(settings(ctx))
    listed = []
    if store is not None:
        try:
            listed = store.bounces.suppressions(args[0] if args else None)
        finally:
            store.close()
    if not listed:
        click.echo("no suppressed addresses")
        return
    click.echo(
        _table(
            [
                [
                    s.account,
                    s.address,
                    s.status or "-",
                    _fmt_time(s.created_at),
                    str(s.outbox_id or "-"),
                    s.diagnostic[:60],
                ]
                for s in listed
            ],
            ["ACCOUNT", "ADDRESS", "STATUS", "SINCE", "OUTBOX ID", "DIAGNOSTIC"],
        )
    )
    for s in listed:  # why each is there: the report (its ledger key) or refusal that put it there
        click.echo(f"{s.account} {s.address}: report {s.report_key or '-'}; {s.evidence or 'no evidence recorded'}")
    click.echo("take one off with: postroom suppressions remove ADDR")


def _remove_suppression(settings: Settings, address: str, account: str | None) -> None:
    store = _existing_store(settings)
    removed = 0
    if store is not None:
        try:
            removed = store.bounces.remove(address, account=account)
        finally:
            store.close()
    if not removed:
        raise Failed(f"{address} is not on " + (f"{account}'s" if account else "any") + " suppression list")
    click.echo(f"{address} removed from {removed} suppression list(s); jobs send to it again")


# -- deploy --------------------------------------------------------------------------------
@app.group()
def deploy() -> None:
    """Write a systemd unit or a compose file for this config (its secrets, paths and state)."""


def _write_deployment(ctx: click.Context, kind: str, output: Path, force: bool, postroom: str | None) -> None:
    from . import deploy as deployment

    try:
        planned = deployment.plan(settings(ctx, logs=False), postroom=postroom)
        text = deployment.systemd_unit(planned) if kind == "systemd" else deployment.compose_file(planned)
    except ConfigError as exc:
        raise broken_config(exc) from None
    if output.exists() and not force:
        raise Failed(f"{output} exists; --force overwrites it")
    try:
        output.write_text(text)
    except OSError as exc:
        raise Failed(f"cannot write {output}: {exc.strerror}") from None
    steps = (
        deployment.systemd_steps(planned, output) if kind == "systemd" else deployment.compose_steps(planned, output)
    )
    click.echo(f"wrote {output} for {planned.config}")
    secrets = ", ".join(planned.credentials) or "none"
    click.echo(f"secrets it loads ({len(planned.credentials)}): {secrets}")
    click.echo("next:")
    for step in steps:
        click.echo(f"  {step}")


@deploy.command("systemd")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("postroom.service"))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@click.option("--exec", "postroom", metavar="PATH", help="The postroom the unit runs (default: this one).")
@config_option
@click.pass_context
def deploy_systemd(ctx: click.Context, output: Path, force: bool, postroom: str | None) -> None:
    """A systemd unit for this config: one LoadCredential= per secret it uses."""
    _write_deployment(ctx, "systemd", output, force, postroom)


@deploy.command("compose")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("compose.yaml"))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT.")
@config_option
@click.pass_context
def deploy_compose(ctx: click.Context, output: Path, force: bool) -> None:
    """A Docker Compose file for this config: one secret per secret it uses."""
    _write_deployment(ctx, "compose", output, force, None)


# -- auth ----------------------------------------------------------------------------------
@app.group()
def auth() -> None:
    """OAuth2 sign-in (Microsoft 365, Gmail, any OAuth2 server): refresh tokens per account."""


class _Terminal:
    """The person signing in, as `postroom auth login` meets them (signin.Person)."""

    def __init__(self, browser: bool):
        self.browser = browser

    def tell(self, text: str) -> None:
        click.echo(text)

    def open_in_browser(self, url: str) -> None:
        if self.browser:
            import threading

            # In a thread: a browser command may wait for its browser to close, and the
            # redirect it follows must reach our listener meanwhile.
            threading.Thread(target=self._open, args=(url,), daemon=True).start()

    @staticmethod
    def _open(url: str) -> None:
        import webbrowser

        if not webbrowser.open(url):
            click.echo("(no browser could be opened here: open the URL above yourself)")

    def paste_secret(self, prompt: str) -> str:
        if sys.stdin.isatty():
            return str(click.prompt(prompt, hide_input=True, default="", show_default=False))
        return sys.stdin.readline()


def _token_vault(settings: Settings) -> TokenVault:
    """The refresh-token key, found as the daemon finds it: like any ${NAME} secret."""
    from .bootstrap import token_vault

    try:
        return token_vault(settings)
    except ConfigError as exc:
        raise Failed(str(exc)) from None


@auth.command("login")
@click.argument("account")
@click.option("--browser", is_flag=True, help="Google: also open the sign-in URL in a browser on this machine.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default="any free port",
    help="Google: the port on 127.0.0.1 the browser is sent back to (to forward it over SSH).",
)
@config_option
@click.pass_context
def auth_login(ctx: click.Context, account: str, browser: bool, port: int) -> None:
    """Sign ACCOUNT in once and store its refresh token, encrypted.

    Microsoft: a device code (open a URL on any device, enter the code). Google: a URL to open
    in a browser, which comes back to 127.0.0.1 here. Generic: paste a refresh token (stdin).
    Needs POSTROOM_TOKEN_KEY."""
    import asyncio

    from .bootstrap import open_store, store_name
    from .config.providers import Grant
    from .signin import RELOAD_HINT, oauth2_of, sign_in

    cfg = loaded_config(ctx)
    try:
        oauth2 = oauth2_of(account, cfg)
    except PostroomError as exc:
        raise Failed(str(exc)) from None
    if oauth2.grant is Grant.CLIENT_CREDENTIALS:
        click.echo(
            f"{account} uses grant client_credentials: postroom gets its tokens with the app's own client "
            "secret, so there is nothing to sign in to. `postroom check` gets a token and logs in."
        )
        return
    if oauth2.refresh_token is not None:
        raise Failed(
            f"{account}'s config gives its refresh token (oauth2.refresh_token), so a signed-in one would "
            "not be used: drop that key to sign in here, or put the new refresh token there"
        )
    vault = _token_vault(settings(ctx))  # before the person signs in: a missing key must not waste that
    click.echo(f"{account}: the refresh token goes to the store {store_name(settings(ctx))}")
    store = open_store(settings(ctx))
    try:
        signed = asyncio.run(
            sign_in(account, cfg.accounts[account], store.tokens, vault, _Terminal(browser), port=port)
        )
    except PostroomError as exc:
        raise Failed(str(exc)) from None
    finally:
        store.close()
    click.echo(
        f"{account}: signed in; the refresh token is stored encrypted, and a refresh with it worked "
        f"(access token good until {_fmt_time(signed.expires_at)})."
    )
    click.echo(RELOAD_HINT)


@auth.command("status")
@config_option
@click.pass_context
def auth_status(ctx: click.Context) -> None:
    """Each OAuth2 account: provider, grant, refresh token, token expiry, last refresh, last error.

    Names the store it read, and opens each stored token with the key found here."""
    from .bootstrap import store_name, token_vault
    from .signin import token_states

    cfg = loaded_config(ctx)
    store = _existing_store(settings(ctx))
    if store is not None:
        try:
            stored = {grant.account: grant for grant in store.tokens.all()}
        finally:
            store.close()
    else:  # nothing has signed in or run here yet
        stored = {}
    try:
        vault: TokenVault | None = token_vault(settings(ctx))
        key_note = None
    except ConfigError as exc:
        vault, key_note = None, str(exc)
    states = token_states(cfg, stored, vault)
    if not states:
        click.echo("no OAuth2 accounts configured")
        return
    click.echo(
        _table(
            [
                [
                    s.account,
                    s.provider,
                    s.grant,
                    s.refresh_token,
                    _fmt_time(s.expires_at),
                    _fmt_time(s.refreshed_at),
                    s.last_error or "-",
                ]
                for s in states
            ],
            ["ACCOUNT", "PROVIDER", "GRANT", "REFRESH TOKEN", "TOKEN EXPIRES", "LAST REFRESH", "LAST ERROR"],
        )
    )
    if store is not None:
        click.echo(f"store: {store_name(settings(ctx))}")
    if key_note is not None and stored:
        click.echo(f"the stored tokens were not opened: {key_note}")
    for s in states:
        if s.key_problem:
            click.echo(s.key_problem)
        if s.needs_login:
            click.echo(f"sign {s.account} in with: postroom auth login {s.account}")
    if any(s.key_problem for s in states):
        ctx.exit(1)


def main() -> None:
    try:
        app(prog_name="postroom")
    except ConfigError as exc:  # a setting or the store's URL found wrong deep in a command
        broken_config(exc).show()
        sys.exit(EX_CONFIG)
    except PostroomError as exc:  # e.g. the store's database down: said, then exit 1
        Failed(str(exc)).show()
        sys.exit(1)


if __name__ == "__main__":
    main()
