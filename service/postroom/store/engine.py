"""Opening the store: SQLite (WAL, synchronous=FULL) by default, PostgreSQL for replicas."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigError
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
            return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)
        except ModuleNotFoundError as exc:  # SQLAlchemy imports the driver here
            # The core install is SQLite only; psycopg comes with the `postgres` extra.
            raise ConfigError(
                f"POSTROOM_DATABASE_URL: {parsed.drivername} needs the module {exc.name!r}, which is not "
                "installed: pip install 'postroom[postgres]' (in a checkout: '.[postgres]')") from None
    raise ConfigError(f"POSTROOM_DATABASE_URL: unsupported database {backend!r}; use sqlite or postgresql")


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
    return revisions - parents


def current_revisions(engine: Engine) -> set[str]:
    """What alembic_version says the schema is at (empty: never migrated)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration. Safe to run on every start."""
    if current_revisions(engine) == head_revisions():
        return
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def schema_is_current(engine: Engine) -> bool:
    try:
        current = current_revisions(engine)
    except SQLAlchemyError:
        return False
    return current == head_revisions()
