"""`postroom check`: the config, its templates, and (unless --offline) a login to each server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import ConfigError
from .root import app, broken_config, config_option, counted, settings

if TYPE_CHECKING:
    from ..checks import Finding
    from ..config import Config, Settings


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
    from ..bootstrap import load_checked

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

    from ..checks import render_findings
    from ..clock import utcnow

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

    from ..bootstrap import (
        build_logins,
        needs_token_store,
        no_store_here,
        open_store,
        signed_in_accounts,
        store_exists,
        store_name,
    )
    from ..checks import Finding, server_findings
    from ..store.calls import close_store

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
