"""`postroom rules test|try|failed`: the inbox rules against a message file, a live folder, and
what they set aside.
"""

from __future__ import annotations

from pathlib import Path

import click

from .root import _existing_store, _table, app, config_option, loaded_config, settings


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
    from ..rules_commands import rules_test_command

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
    from ..rules_commands import rules_try_command

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
