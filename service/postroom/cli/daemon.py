"""The daemon and what it keeps: `postroom run`, `migrate`, `jobs` (schedules, last runs) and
`status` (replicas, leases).
"""

from __future__ import annotations

import click

from ..errors import ConfigError, PortInUse, PostroomError, map_errors
from .root import (
    Failed,
    TryAgainLater,
    _existing_store,
    _fmt_seconds,
    _fmt_time,
    _table,
    app,
    broken_config,
    config_option,
    loaded_config,
    settings,
)


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
    from ..app import run_daemon

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
    from ..store import migrate as migrate_store
    from ..store import open_engine
    from ..store.calls import STORE_ERRORS

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
    from ..clock import utcnow
    from ..schedule.fires import jobs_overview

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
    from ..outgoing.shown import run_outcome

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


# -- status --------------------------------------------------------------------------------
@app.command()
@config_option
@click.pass_context
def status(ctx: click.Context) -> None:
    """Replicas sharing the store: which are alive, what each holds (folders, work in flight)."""
    from ..clock import utcnow
    from ..clock_check import clock_note

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
