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
    from ..outgoing.jobs import BuiltRun


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
    """Run JOB once and send its messages here (``outgoing.send_now``), saying what became of them."""
    import asyncio

    from ..bootstrap import build_logins, load_checked, open_store
    from ..clock import utcnow
    from ..outgoing.send_now import send_now
    from ..outgoing.shown import refused_line
    from ..store.calls import close_store

    loaded, renderer = load_checked(settings)
    cfg = loaded.config
    if job not in cfg.jobs:
        raise PostroomError(f"no job named {job!r}; jobs: {', '.join(sorted(cfg.jobs)) or 'none'}")
    store = await asyncio.to_thread(open_store, settings)

    def queued(built: BuiltRun) -> None:
        if built.suppressed:
            click.echo(
                f"{job}: {built.suppressed} suppressed recipient(s) left out (hard bounces; "
                "see `postroom suppressions`)"
            )
        click.echo(f"{job}: {len(built.messages)} message(s) queued; sending…")

    try:
        logins = build_logins(settings, cfg, store)
        done = await send_now(settings, cfg, renderer, store, logins, job, to=to, queued=queued)
    finally:
        await close_store(store)
    if done.skipped:
        click.echo(f"{job}: nothing to send ({done.skipped})")
        return 0
    counts, total = done.counts, done.total
    sent, deferred, dead = counts["sent"], counts["deferred"], counts["dead"]
    click.echo(f"{job}: sent {sent}, deferred {deferred}, dead {dead} (of {total}); at {_fmt_time(utcnow())}")
    if deferred:
        click.echo("  deferred messages stay in the outbox; `postroom run` retries them with backoff")
    if done.refused:
        click.echo(f"  {refused_line(done.refused)}; see `postroom outbox` for the server's replies")
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
