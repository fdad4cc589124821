"""One job now: `postroom send` (run it and send, or print with --dry-run) and `postroom preview`
(its messages in a browser).
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError, PostroomError
from .root import Failed, _fmt_time, app, broken_config, config_option, settings

if TYPE_CHECKING:
    from ..config import Settings


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
    from ..store.owner import writing

    sqlite = settings.sqlite_path()
    return writing(sqlite) if sqlite is not None else contextlib.nullcontext()


async def _dry_run(settings: Settings, job: str, *, to: list[str] | None) -> int:
    """Build JOB's messages and print them. Needs no store, so it opens none (writes nothing)."""
    from ..bootstrap import load_checked
    from ..clock import utcnow
    from ..outgoing.jobs import JobRunner

    loaded, renderer = load_checked(settings)
    runner = JobRunner(loaded.config, renderer, store=None)
    built = await runner.build(job, key_prefix="dry-run", now=utcnow(), to_override=to)
    if built.skipped:
        click.echo(f"{job}: nothing to send ({built.skipped})", err=True)
        return 0
    for i, m in enumerate(built.messages):
        click.echo(
            f"--- message {i + 1} of {len(built.messages)}; envelope from <{m.envelope_from}> to "
            f"{', '.join(m.recipients)}",
            err=True,
        )
        sys.stdout.write(m.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
        sys.stdout.write("\n")
    return 0


async def _send(settings: Settings, job: str, *, to: list[str] | None) -> int:
    import asyncio
    import uuid
    from collections import Counter

    from ..bootstrap import build_logins, load_checked, open_store
    from ..clock import utcnow
    from ..outgoing.envelopes import given_verp_key, signed_return_paths
    from ..outgoing.jobs import JobRunner
    from ..outgoing.refusals import suppressing
    from ..outgoing.sender import OutboxSender
    from ..outgoing.shown import message_state, refused_line
    from ..store.calls import close_store, store_call
    from ..store.outbox import OutboxItem

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
    from ..config import load_config
    from ..console.preview import serve_preview

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
