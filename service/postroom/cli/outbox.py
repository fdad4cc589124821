"""`postroom outbox` (queued, dead and bounced mail; `retry`) and `postroom suppressions`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .root import Failed, _existing_store, _fmt_time, _table, app, config_option, settings

if TYPE_CHECKING:
    from ..config import Settings


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
    from ..outgoing.shown import held_next_step, message_state, refused_line, refused_replies
    from ..store.outbox import WAITING

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
    from ..clock import utcnow

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
