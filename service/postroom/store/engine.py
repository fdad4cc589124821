"""Opening the store: SQLite (WAL, synchronous=FULL) by default, PostgreSQL for replicas."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigError, PostroomError
from ..redact import shown_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def to_utc(value: datetime) -> datetime:
    """What goes into the store: SQLite keeps no zone, so every stored time is UTC."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; pass an aware one")
    return value.astimezone(UTC)


def open_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception:
        # Never echo the value: a URL that does not parse may still hold a password.
        raise ConfigError(f"POSTROOM_DATABASE_URL: {shown_url(url)!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take control so writers
        # serialise on BEGIN IMMEDIATE instead of failing on lock upgrade mid-transaction.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return create_engine(
                parsed,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                pool_timeout=POOL_TIMEOUT,
                connect_args=_pg_timeouts(parsed.query),
            )
        except ModuleNotFoundError as exc:  # SQLAlchemy imports the driver here
            # The core install is SQLite only; psycopg comes with the `postgres` extra.
            raise ConfigError(
                f"POSTROOM_DATABASE_URL: {parsed.drivername} needs the module {exc.name!r}, which is not "
                "installed: pip install 'postroom[postgres]' (in a checkout: '.[postgres]')"
            ) from None
    raise ConfigError(f"POSTROOM_DATABASE_URL: unsupported database {backend!r}; use sqlite or postgresql")


# A store that does not answer must not hold a thread (and the work behind it) for ever: a
# connection attempt gives up after CONNECT_TIMEOUT, a statement after STATEMENT_TIMEOUT (the
# server cancels it), a wait for a free pooled connection after POOL_TIMEOUT. A connection whose
# other end vanished without a word (a half-open TCP connection: the server's host gone, a
# firewall dropping the flow) is found by TCP keepalives while idle and given up by the kernel
# after TCP_USER_TIMEOUT while data waits unacknowledged, instead of blocking a read for good.
# Each can be changed in POSTROOM_DATABASE_URL (`?connect_timeout=5`, `?keepalives_idle=60`,
# `?options=-c statement_timeout=60000`); what the URL sets wins, and other `-c` settings in
# the URL's `options` keep the default statement timeout beside them.
CONNECT_TIMEOUT = 10  # seconds
STATEMENT_TIMEOUT_MS = 30_000
POOL_TIMEOUT = 15.0  # seconds
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,  # seconds idle before the first probe
    "keepalives_interval": 10,  # seconds between probes
    "keepalives_count": 3,  # unanswered probes before the connection is dead
    "tcp_user_timeout": 30_000,  # ms data may stay unacknowledged (Linux)
}


def _pg_timeouts(query: Mapping[str, Any]) -> dict[str, Any]:
    """libpq connection parameters for what the URL leaves unset. ``options`` is merged: the
    driver takes connect_args' value instead of the URL's, so the URL's own are kept in it."""
    args: dict[str, Any] = {name: value for name, value in PG_KEEPALIVES.items() if name not in query}
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT
    given = query.get("options", ())
    options = " ".join([given] if isinstance(given, str) else given)
    if "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    return args


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    dbapi_conn.isolation_level = None  # autocommit at the driver; "begin" listener starts txns
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed outbox row survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


# alembic (with mako and pygments, about 7 MiB resident) is imported only when a migration
# has to run: a daemon whose schema is current never loads it (bench/footprint).
def head_revisions() -> set[str]:
    """The newest migration(s), read from the migration files' `revision`/`down_revision`."""
    revisions, parents = _revisions()
    return revisions - parents


def known_revisions() -> set[str]:
    """Every revision this postroom's migration files know."""
    return _revisions()[0]


def _revisions() -> tuple[set[str], set[str]]:
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    found = ast.literal_eval(value)  # a str, None, or a tuple for a merge
                    names = {found} if isinstance(found, str) else set(found or ())
                    (revisions if target.id == "revision" else parents).update(names)
    return revisions, parents


def current_revisions(engine: Engine) -> set[str]:
    """What alembic_version says the schema is at (empty: never migrated)."""
    with engine.connect() as conn:
        return _revisions_on(conn)


def _revisions_on(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("alembic_version"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def _shown(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


def refuse_newer(current: set[str]) -> None:
    """A schema written by a newer postroom (a revision these migration files don't know) is
    never touched: this code would misread it, and alembic cannot downgrade to us."""
    if current - known_revisions():
        raise PostroomError(
            f"store schema {_shown(current)} is newer than this postroom ({_shown(head_revisions())}); upgrade postroom"
        )


# Any fixed number all postroom processes agree on: the key of the PostgreSQL advisory lock
# migrations run under, so replicas started together migrate one at a time.
MIGRATION_LOCK = 0x706F7374726F6F6D  # "postroom"


def migrate(engine: Engine) -> tuple[set[str], set[str]]:
    """Bring the schema to the newest migration; returns (revisions before, after). Safe to
    run on every start and from several processes at once: on PostgreSQL the work is done
    under an advisory lock, so the others wait, then find the schema current."""
    before = current_revisions(engine)
    refuse_newer(before)
    head = head_revisions()
    if before == head:
        return before, head
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # A migration may take longer than a normal statement may, and the lock wait too.
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            # Read again under the lock: another process may have migrated while we waited.
            before = _revisions_on(conn)
            refuse_newer(before)
            if before == head:
                return before, head
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head


def schema_is_current(engine: Engine) -> bool:
    try:
        current = current_revisions(engine)
    except SQLAlchemyError:
        return False
    return current == head_revisions()
