"""`postroom auth login|status`: OAuth2 sign-in (the work itself is ``auth.signin``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConfigError, PostroomError
from .root import Failed, _existing_store, _fmt_time, _table, app, config_option, loaded_config, settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..auth.vault import TokenVault
    from ..config import Settings
    from ..config.model import ServerConfig
    from ..credentials import Credentials


# -- auth ----------------------------------------------------------------------------------
@app.group()
def auth() -> None:
    """OAuth2 sign-in (Microsoft 365, Gmail, any OAuth2 server): refresh tokens per account."""


class _Terminal:
    """The person signing in, as `postroom auth login` meets them (auth.signin.Person)."""

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


def _proof_login(name: str, protocol: str, server: ServerConfig, credentials: Credentials) -> Any:
    """The edge a sign-in logs in with to prove its token (auth.signin.ProofLogin; imported
    here: only a sign-in needs them)."""
    from ..incoming.imap import ImapConnection
    from ..incoming.pop3 import Pop3Connection
    from ..outgoing.smtp import SmtpConnection

    edges: dict[str, Callable[..., Any]] = {"imap": ImapConnection, "pop3": Pop3Connection, "smtp": SmtpConnection}
    return edges[protocol](name, server, credentials)


def _token_vault(settings: Settings) -> TokenVault:
    """The refresh-token key, found as the daemon finds it: like any ${NAME} secret."""
    from ..bootstrap import token_vault

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

    from ..auth.signin import RELOAD_HINT, oauth2_of, sign_in
    from ..bootstrap import open_store, store_name
    from ..config.providers import Grant

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
            sign_in(
                account, cfg.accounts[account], store.tokens, vault, _Terminal(browser), login=_proof_login, port=port
            )
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
    from ..auth.signin import token_states
    from ..bootstrap import store_name, token_vault

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
