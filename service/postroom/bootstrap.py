"""Getting a process started: config + templates checked together, the store opened.

Kept apart from app.py so one-shot commands (`postroom send`, `outbox`, `jobs`) load only
what they use, not the daemon's HTTP server, watchers and metrics. The store (SQLAlchemy,
about 0.2 s of imports) is imported only by the functions that open it: `check` needs none.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checks import template_findings
from .clock import utcnow
from .config import LoadedConfig, Settings, load_config
from .errors import ConfigError, PostroomError, map_errors
from .mail.templates import TemplateRenderer

if TYPE_CHECKING:
    from .auth.accounts import AccountLogins, RefreshHook
    from .auth.vault import TokenVault
    from .config import Config
    from .store import Store


def _log() -> Any:
    # structlog (with asyncio, ~20 ms) is imported by the paths that log, not by `check --offline`.
    import structlog

    return structlog.get_logger(__name__)


def load_checked(settings: Settings) -> tuple[LoadedConfig, TemplateRenderer]:
    """Config plus templates, validated together; ConfigError lists every problem."""
    loaded = load_config(settings)
    renderer = TemplateRenderer(loaded.templates_dir)
    bad = [f for f in template_findings(loaded.config, renderer) if not f.ok]
    if bad:
        raise ConfigError([(f.where, f.message) for f in bad], file=str(loaded.path))
    return loaded, renderer


def open_store(settings: Settings) -> Store:
    """The store, created and migrated if it does not exist yet."""
    from .errors import map_errors
    from .store import Store
    from .store.calls import STORE_ERRORS

    # A command's one edge to the store: a database that is down is told, not a traceback.
    with map_errors(STORE_ERRORS, "store: "):
        return Store.open(settings.database_url_or_default(), owner=settings.instance)


def token_vault(settings: Settings) -> TokenVault:
    """The refresh-token key (``POSTROOM_TOKEN_KEY``), found as any ${NAME} secret is: the
    environment, then secret files (systemd credentials, Docker secrets), then `.env`; so
    `postroom auth login` and the daemon always agree on it."""
    from .auth.vault import TokenVault
    from .config.loader import SecretLookup

    return TokenVault.from_secrets(SecretLookup(settings).get)


def build_logins(
    settings: Settings,
    config: Config,
    store: Store | None,
    *,
    on_refresh: RefreshHook | None = None,
    keep: AccountLogins | None = None,
) -> AccountLogins:
    """Every account's credentials: one token provider per account with an ``oauth2:`` block
    (auth/accounts.py), its refresh token in ``store`` sealed with the key ``token_vault``
    finds. ``keep``: the previous generation, on reload."""
    from .auth.accounts import AccountLogins, needs_vault

    # Asked for even without a store (`check` opens none): the daemon will need it.
    vault = token_vault(settings) if needs_vault(config) else None
    return AccountLogins.build(
        config, store=store.tokens if store is not None else None, vault=vault, on_refresh=on_refresh, keep=keep
    )


def needs_token_store(config: Config) -> bool:
    """Whether logging in needs the store: an account keeps its OAuth2 refresh token there
    (and a rotated one must be saved at once, or the next login has none)."""
    from .auth.accounts import needs_vault

    return needs_vault(config)


def signed_in_accounts(config: Config) -> list[str]:
    """The accounts whose refresh token only the store has (`postroom auth login`'s)."""
    from .config.providers import Grant

    return sorted(
        name
        for name, account in config.accounts.items()
        if account.oauth2 is not None
        and account.oauth2.grant is Grant.REFRESH_TOKEN
        and account.oauth2.refresh_token is None
    )


def store_exists(settings: Settings) -> bool:
    """False only for a SQLite store whose file is not there yet (a server database is
    assumed to exist; opening it creates nothing on this machine)."""
    path = settings.sqlite_path()
    return path is None or path.is_file()


def store_name(settings: Settings) -> str:
    """The store as a command names it: the SQLite file's path, or the database URL with its
    password masked; so a command run with another state directory than the daemon's says so."""
    from .redact import shown_url

    path = settings.sqlite_path()
    return str(path) if path is not None else shown_url(settings.database_url_or_default())


def no_store_here(settings: Settings) -> str:
    """What a command that only reads the store says when there is none where it looked."""
    return (
        f"no store at {store_name(settings)}: nothing has run or signed in with this POSTROOM_STATE_DIR "
        "(or POSTROOM_DATABASE_URL); if the daemon runs elsewhere, run this with its settings "
        "(systemd: its state directory, /var/lib/postroom)"
    )


# A migration imports alembic, mako and pygments (about 12 MiB resident) that a months-long
# daemon would then carry to its end: the daemon migrates in a short-lived child instead.
_MIGRATE = "import sys; from postroom.store import migrate, open_engine; migrate(open_engine(sys.stdin.read()))"
MIGRATE_TIMEOUT = 300.0  # seconds; a large PostgreSQL migration may take a while


def open_daemon_store(settings: Settings, *, migrate: bool = True) -> Store:
    """The store with its schema current, migrated (when needed) by a child process; a SQLite
    store is locked to this process first (``store.owner``: one daemon per SQLite file).
    ``migrate=False`` (`postroom run --no-migrate`): an old schema is refused instead, naming
    `postroom migrate`. A schema from a newer postroom is always refused."""
    from .store import Store
    from .store.calls import STORE_ERRORS
    from .store.engine import current_revisions, head_revisions, refuse_newer
    from .store.owner import claim_store

    url = settings.database_url_or_default()
    lock = claim_store(sqlite) if (sqlite := settings.sqlite_path()) is not None else None
    store = Store.open(url, owner=settings.instance, migrate_schema=False)
    store.lock = lock
    try:
        with map_errors(STORE_ERRORS, "store: "):
            current = current_revisions(store.engine)
        refuse_newer(current)
        if current == head_revisions():
            return store
        if not migrate:
            raise PostroomError(
                f"store schema {', '.join(sorted(current)) or 'none (empty database)'} is older than this "
                f"postroom ({', '.join(sorted(head_revisions()))}) and --no-migrate was given: "
                "run `postroom migrate` first"
            )
        _migrate_in_child(url)
        if current_revisions(store.engine) != head_revisions():
            raise PostroomError("store schema migration failed: the schema is still not current after it")
    except BaseException:
        store.close()
        raise
    return store


def _migrate_in_child(url: str) -> None:
    _log().info("migrating the store schema")
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # The URL (it may hold a password) goes through stdin, never argv where `ps` shows it.
    # -P: the working directory is not put on sys.path, so a postroom/ folder there can't
    # shadow the package.
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _MIGRATE],
            input=url,
            env=env,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PostroomError(f"store schema migration failed: no end within {MIGRATE_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise PostroomError(f"store schema migration failed: {_last_error_line(done.stderr, done.returncode)}")


def _last_error_line(stderr: str, code: int) -> str:
    """The error a child's traceback ends with; SQLAlchemy closes its messages with a line
    that is only a link ("(Background on this error at: https://sqlalche.me/...)"), which
    says nothing by itself."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("(Background on this error")]
    return lines[-1] if lines else f"exit {code}"


def recover_single_node(store: Store) -> None:
    """SQLite means one process: whatever a previous process left in flight is ours again now
    (no need to wait for leases to run out), unless a `postroom send` is running beside us
    (``store.owner``). PostgreSQL replicas wait for the lease instead."""
    if store.engine.dialect.name != "sqlite":
        return
    with store.lock.alone() if store.lock is not None else contextlib.nullcontext(True) as alone:
        if not alone:  # a `postroom send` is sending its rows now: they are not left over
            _log().info("a postroom send is running; leases are left to run out, not taken back")
            return
        now = utcnow()
        released = store.outbox.release_all_leases(now=now)
        hooks = store.ledger.release_all_webhook_leases(now=now)
        fires = store.runs.release_running_fires()
    if released or hooks or fires:
        _log().info("took back work in flight at the last stop", messages=released, webhooks=hooks, fires=fires)
