"""The `postroom` command. Each command is a thin shell over the same parts the daemon uses."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import Settings
from .errors import ConfigError, PostroomError
from .logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="postroom: scheduled template mail out, inbox rules in.")
rules_app = typer.Typer(no_args_is_help=True, help="Inspect inbox rules.")
outbox_app = typer.Typer(invoke_without_command=True, help="What waits to be sent, and what failed.")
app.add_typer(rules_app, name="rules")
app.add_typer(outbox_app, name="outbox")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file (default: $POSTROOM_CONFIG, else ./postroom.yaml).", show_default=False)]


class State:
    settings: Settings


state = State()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"postroom {version('postroom')}")
        except PackageNotFoundError:
            typer.echo("postroom (not installed)")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, config: ConfigOpt = None,
          _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                      help="Print the version and exit.")] = False) -> None:
    overrides = {"config": config} if config else {}
    state.settings = Settings(**overrides)
    level = state.settings.log_level
    if ctx.invoked_subcommand != "run" and "POSTROOM_LOG_LEVEL" not in os.environ:
        # One-shot commands speak through their own output; their logs are for trouble only.
        level = "WARNING"
    setup_logging(fmt=state.settings.log_format, level=level)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _fmt_time(value: datetime | None, tz: str | None = None) -> str:
    if value is None:
        return "-"
    if tz:
        from zoneinfo import ZoneInfo

        value = value.astimezone(ZoneInfo(tz))
    return value.strftime("%Y-%m-%d %H:%M %Z")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# -- check ---------------------------------------------------------------------------------
@app.command()
def check(offline: Annotated[bool, typer.Option("--offline", help="Only validate; don't connect to servers.")] = False) -> None:
    """Validate config, templates and rules; then log in to every server (unless --offline)."""
    from .app import load_checked
    from .checks import server_findings

    try:
        loaded, _renderer = load_checked(state.settings)
    except ConfigError as exc:
        raise fail(f"config is broken:\n{exc}") from None
    cfg = loaded.config
    typer.echo(f"{loaded.path}: OK — {len(cfg.accounts)} accounts, {len(cfg.jobs)} jobs, {len(cfg.rules)} rules; "
               f"templates in {loaded.templates_dir}")
    if offline:
        return
    findings = asyncio.run(server_findings(cfg))
    for f in findings:
        mark = typer.style("ok  ", fg=typer.colors.GREEN) if f.ok else typer.style("FAIL", fg=typer.colors.RED)
        typer.echo(f"  {mark} {f.where}: {f.message}")
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


# -- run -----------------------------------------------------------------------------------
@app.command()
def run(dry_run: Annotated[bool, typer.Option("--dry-run", help="Log every action it would take; perform none.")] = False) -> None:
    """Run the daemon in the foreground (for systemd, Docker, or a terminal)."""
    from .app import run_daemon

    try:
        code = run_daemon(state.settings, dry_run=dry_run)
    except ConfigError as exc:
        raise fail(f"config is broken:\n{exc}") from None
    except PostroomError as exc:
        raise fail(f"postroom: {exc}") from None
    raise typer.Exit(code)


# -- jobs ----------------------------------------------------------------------------------
@app.command()
def jobs() -> None:
    """Each job with its schedule and next fire time."""
    from .app import open_store
    from .config import load_config
    from .scheduler import jobs_overview
    from .store import utcnow

    try:
        cfg = load_config(state.settings).config
    except ConfigError as exc:
        raise fail(f"config is broken:\n{exc}") from None
    overview = jobs_overview(cfg, now=utcnow())
    last = {}
    try:
        store = open_store(state.settings)
        last = store.runs.last_runs()
        store.close()
    except Exception:  # the overview is still useful without run history
        pass
    rows = []
    for j in overview:
        run_ = last.get(j.name)
        last_text = f"{run_.status} {_fmt_time(run_.started_at, j.timezone)}" if run_ else "never"
        rows.append([j.name, j.schedule, j.timezone, _fmt_time(j.next_fire, j.timezone), last_text])
    if not rows:
        typer.echo("no jobs configured")
        return
    typer.echo(_table(rows, ["JOB", "SCHEDULE", "ZONE", "NEXT FIRE", "LAST RUN"]))


# -- send ----------------------------------------------------------------------------------
@app.command()
def send(
    job: Annotated[str, typer.Argument(help="The job to run now.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the MIME message(s); send nothing.")] = False,
    to: Annotated[Optional[list[str]], typer.Option("--to", help="Send to this address instead (repeatable).")] = None,
) -> None:
    """Run a job now and send what it makes."""
    try:
        asyncio.run(_send(job, dry_run=dry_run, to=to or None))
    except ConfigError as exc:
        raise fail(f"config is broken:\n{exc}") from None
    except PostroomError as exc:
        raise fail(f"{job}: {exc}") from None


async def _send(job: str, *, dry_run: bool, to: list[str] | None) -> None:
    from collections import Counter

    from .app import load_checked, open_store
    from .outgoing.jobs import JobRunner
    from .outgoing.sender import OutboxSender
    from .store import utcnow
    from .store.outbox import OutboxItem

    loaded, renderer = load_checked(state.settings)
    cfg = loaded.config
    if job not in cfg.jobs:
        raise PostroomError(f"no job named {job!r}; jobs: {', '.join(sorted(cfg.jobs)) or 'none'}")
    store = await asyncio.to_thread(open_store, state.settings)
    sender: OutboxSender | None = None
    warming: asyncio.Task[None] | None = None
    try:
        runner = JobRunner(cfg, renderer, store)
        if dry_run:
            built = await runner.build(job, key_prefix="dry-run", now=utcnow(), to_override=to)
            if built.skipped:
                typer.echo(f"{job}: nothing to send ({built.skipped})", err=True)
                return
            for i, m in enumerate(built.messages):
                typer.echo(f"--- message {i + 1} of {len(built.messages)}; envelope from <{m.envelope_from}> to "
                           f"{', '.join(m.recipients)}", err=True)
                sys.stdout.write(m.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
                sys.stdout.write("\n")
            return
        wanted: set[str] = set()
        outcomes: dict[str, str] = {}  # message_id -> its latest result in this process

        def seen(kind: str, item: OutboxItem) -> None:
            if item.message_id in wanted:
                outcomes[item.message_id] = kind

        sender = OutboxSender(store.outbox, cfg.accounts, cfg.outbox, on_result=seen)
        # The SMTP handshakes (TCP, STARTTLS, AUTH per connection) overlap the rendering.
        warming = asyncio.create_task(sender.prewarm(cfg.jobs[job].account))
        built = await runner.run_now(job, key_prefix=f"manual:{job}:{uuid.uuid4().hex}", to_override=to)
        await warming
        if built.skipped:
            typer.echo(f"{job}: nothing to send ({built.skipped})")
            return
        total = len(built.messages)
        typer.echo(f"{job}: {total} message(s) queued; sending…")
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
            items = await asyncio.to_thread(store.outbox.by_message_ids, wanted)
            counts = Counter("deferred" if i.status == "queued" and i.attempts > 0 else i.status for i in items)
        sent, deferred, dead = counts["sent"], counts["deferred"], counts["dead"]
        typer.echo(f"{job}: sent {sent}, deferred {deferred}, dead {dead} (of {total}); "
                   f"at {_fmt_time(utcnow())}")
        if deferred:
            typer.echo("  deferred messages stay in the outbox; `postroom run` retries them with backoff")
        if dead:
            typer.echo("  see `postroom outbox --dead` for why")
            raise typer.Exit(1)
    finally:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        if sender is not None:
            await sender.close_idle()  # prewarmed connections no drain used (failed/skipped run)
        await asyncio.to_thread(store.close)


# -- rules test ----------------------------------------------------------------------------
@rules_app.command("test")
def rules_test(
    file: Annotated[Path, typer.Argument(help="A message file (.eml).", exists=True, dir_okay=False)],
    account: Annotated[Optional[str], typer.Option("--account", help="Only this account's rules.")] = None,
) -> None:
    """Which rules match this message and which actions they would take."""
    from .config import load_config
    from .incoming.message import ParsedMessage
    from .incoming.rules import compile_rules
    from .store import utcnow

    try:
        cfg = load_config(state.settings).config
    except ConfigError as exc:
        raise fail(f"config is broken:\n{exc}") from None
    if account is not None and account not in cfg.accounts:
        raise fail(f"no account named {account!r}; accounts: {', '.join(sorted(cfg.accounts))}")
    rules = [r for r in cfg.rules if account is None or r.account == account]
    msg = ParsedMessage.from_bytes(file.read_bytes(), key=str(file))
    typer.echo(f"message: {msg.subject!r} from {', '.join(a.display for a in msg.from_) or '-'}")
    any_match = False
    for ex in compile_rules(rules).explain(msg, now=utcnow()):
        if ex.skipped:
            typer.echo(f"  -    {ex.rule}: not evaluated (an earlier rule said stop)")
        elif ex.matched:
            any_match = True
            typer.echo(typer.style(f"  MATCH {ex.rule}", fg=typer.colors.GREEN))
            for a in ex.actions:
                params = ", ".join(f"{k}={v}" for k, v in a.params.items())
                typer.echo(f"        {a.index}: {a.kind}" + (f" ({params})" if params else ""))
        else:
            typer.echo(f"  no    {ex.rule}")
    if not any_match:
        typer.echo("no rule matches")


# -- outbox --------------------------------------------------------------------------------
@outbox_app.callback()
def outbox(ctx: typer.Context,
           dead: Annotated[bool, typer.Option("--dead", help="Show dead letters and why they failed.")] = False,
           limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50) -> None:
    """What waits to be sent (or, with --dead, what failed and why)."""
    if ctx.invoked_subcommand is not None:
        return
    from .app import open_store

    store = open_store(state.settings)
    try:
        counts = store.outbox.counts()
        statuses = ["dead"] if dead else ["queued", "sending"]
        items = store.outbox.list(statuses=statuses, limit=limit)
    finally:
        store.close()
    typer.echo("outbox: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"))
    if not items:
        typer.echo("no dead letters" if dead else "nothing waiting")
        return
    rows = []
    for i in items:
        to = ", ".join(i.recipients or list(i.refused)) or "-"
        when = _fmt_time(i.next_attempt_at)
        rows.append([str(i.id), i.account, i.origin or "-", to[:40], str(i.attempts),
                     "" if dead else when, (i.last_error or "")[:80]])
    headers = ["ID", "ACCOUNT", "FROM JOB/RULE", "TO", "TRIES", "" if dead else "NEXT TRY", "LAST ERROR"]
    typer.echo(_table(rows, headers))
    if dead:
        typer.echo("put one back with: postroom outbox retry ID")


@outbox_app.command("retry")
def outbox_retry(item_id: Annotated[int, typer.Argument(help="The dead letter's ID.")]) -> None:
    """Put a dead letter back in the queue (same Message-ID; the daemon sends it)."""
    from .app import open_store
    from .store import utcnow

    store = open_store(state.settings)
    try:
        item = store.outbox.get(item_id)
        if item is None:
            raise fail(f"no outbox message with ID {item_id}")
        if item.status != "dead":
            raise fail(f"message {item_id} is {item.status}, not dead; nothing to retry")
        store.outbox.retry(item_id, now=utcnow())
    finally:
        store.close()
    typer.echo(f"message {item_id} is queued again; a running daemon sends it at its next pass")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
