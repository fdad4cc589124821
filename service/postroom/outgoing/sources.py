"""A job's data: sql / http / file sources, loaded concurrently, each bounded by its timeout.

An http source's timeout is a deadline for the whole request, body included, and its body is
capped at max_size. URLs and DSNs appear in messages with their passwords masked.

Every failure becomes a `DataSourceError` naming the data key, and is either a
`TransientSourceError` (also a TransientError: the database or server may be back soon) or
a `PermanentSourceError` (bad SQL, 4xx, missing file, bad JSON: retrying will not help).
`.transient` says which without an isinstance test. Foreign errors are mapped by a table per
edge (httpx, files, content, engine set-up); a database's own errors by their SQLSTATE, which
says more than their type.

SQL is read-only by construction, not by intent: one statement per load, on a connection that
cannot write. SQLite files are opened read-only, with `query_only` on and an authorizer that
lets a statement read and nothing else (no ATTACH, which would create a file, no VACUUM INTO,
no pragma that sets anything). PostgreSQL connections start with `default_transaction_read_only`
and a `statement_timeout` as connection options, and every statement goes through the extended
protocol, which refuses a second statement (`COMMIT; INSERT …` is an error, not a commit).
Every transaction is rolled back all the same.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from ..config.model import DataSourceConfig, FileSource, HttpSource, SqlSource
from ..errors import (
    DataSourceError,
    ErrorTable,
    PermanentSourceError,
    TransientSourceError,
    map_errors,
)
from ..redact import shown_url

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger(__name__)

# PostgreSQL SQLSTATEs worth a retry: connection trouble (class 08), shutdown/cancel (57),
# serialization failure and deadlock (40), out of resources (53).
_PG_TRANSIENT_CLASSES = ("08", "57", "40", "53")
_HTTP_TRANSIENT_STATUS = {408, 425, 429}


# httpx's errors on a GET: a timeout or a broken connection may pass, a URL we can't use won't.
# httpx (~8 MiB, ~60 ms of imports) is imported by the first http source's load.
@functools.cache
def _http_errors() -> ErrorTable:
    import httpx

    return {
        httpx.InvalidURL: PermanentSourceError,
        httpx.DecodingError: PermanentSourceError,  # a body its Content-Encoding does not decode
        httpx.UnsupportedProtocol: PermanentSourceError,  # a TransportError: listed before it
        httpx.TransportError: TransientSourceError,  # timeouts, refused, reset, DNS
    }


# Reading a file: what is missing or forbidden stays so; other I/O errors (EIO, a network
# file system gone stale) may pass.
_FILE_ERRORS: ErrorTable = {
    FileNotFoundError: PermanentSourceError,
    IsADirectoryError: PermanentSourceError,
    NotADirectoryError: PermanentSourceError,
    PermissionError: PermanentSourceError,
    UnicodeDecodeError: PermanentSourceError,
    OSError: TransientSourceError,
}
# Content that does not parse will not parse next time either.
_CONTENT_ERRORS: ErrorTable = {
    UnicodeDecodeError: PermanentSourceError,
    json.JSONDecodeError: PermanentSourceError,
    csv.Error: PermanentSourceError,
}
# Setting up a SQLAlchemy engine: a URL, dialect or driver problem is the config's.
_ENGINE_ERRORS: ErrorTable = {
    ArgumentError: PermanentSourceError,
    NoSuchModuleError: PermanentSourceError,
    ImportError: PermanentSourceError,  # the dialect's driver is not installed
    ValueError: PermanentSourceError,
}


def _fail(key: str, message: str, *, transient: bool) -> DataSourceError:
    cls = TransientSourceError if transient else PermanentSourceError
    return cls(message, source=key)


async def load_data(
    sources: Mapping[str, DataSourceConfig], *, http: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Load every source of a job at once. The first failure (in key order) is raised and the
    other loads are cancelled."""
    if not sources:
        return {}
    if http is None and any(s.kind == "http" for s in sources.values()):
        import httpx

        async with httpx.AsyncClient(follow_redirects=False) as client:
            return await _load_all(sources, client)
    return await _load_all(sources, http)


async def _load_all(sources: Mapping[str, DataSourceConfig], http: httpx.AsyncClient | None) -> dict[str, Any]:
    tasks = {key: asyncio.create_task(_load_one(key, cfg, http), name=f"data:{key}") for key, cfg in sources.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks.values():
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return {key: task.result() for key, task in tasks.items()}


async def _load_one(key: str, cfg: DataSourceConfig, http: httpx.AsyncClient | None) -> Any:
    started = time.monotonic()
    try:
        if isinstance(cfg, SqlSource):
            value = await _load_sql(key, cfg)
        elif isinstance(cfg, HttpSource):
            value = await _load_http(key, cfg, http)
        else:
            value = await _load_file(key, cfg)
    except DataSourceError as exc:
        exc.source = exc.source or key  # the edges' tables don't know the key
        raise
    log.debug(
        "data source loaded",
        source=key,
        kind=cfg.kind,
        rows=len(value) if isinstance(value, list) else None,
        seconds=round(time.monotonic() - started, 3),
    )
    return value


# -- sql ------------------------------------------------------------------------------------
async def _load_sql(key: str, cfg: SqlSource) -> list[dict[str, Any]]:
    deadline = time.monotonic() + cfg.timeout
    try:
        return await asyncio.wait_for(asyncio.to_thread(_run_sql, key, cfg, deadline), cfg.timeout)
    except TimeoutError:
        # The worker thread stops soon after: SQLite's progress handler and PostgreSQL's
        # statement_timeout both end the query at the same deadline.
        raise _fail(key, f"sql query took longer than {cfg.timeout:g}s", transient=True) from None


def _run_sql(key: str, cfg: SqlSource, deadline: float) -> list[dict[str, Any]]:
    try:
        url = make_url(cfg.database or "")
    except (ArgumentError, ValueError):
        raise _fail(key, "database: is not a SQLAlchemy URL", transient=False) from None
    where = shown_url(url.render_as_string(hide_password=False))  # never put a password in a message
    with map_errors(_ENGINE_ERRORS, f"cannot use {where} (URL, dialect, driver): "):
        engine = _engine(url, cfg.timeout, deadline)
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise _sql_error(key, f"cannot connect to {where}", exc, connecting=True) from None
        with conn:
            try:
                result = conn.execute(text(cfg.sql or ""))
                if not result.returns_rows:
                    raise _fail(key, "the sql statement returned no rows; a data source is a SELECT", transient=False)
                return [dict(row) for row in result.mappings()]
            except SQLAlchemyError as exc:
                raise _sql_error(key, "sql query failed", exc, connecting=False) from None
            finally:
                _roll_back(conn)
    finally:
        engine.dispose()


def _roll_back(conn: Any) -> None:
    """Read-only intent: never commit, whatever the statement was. A connection that broke
    mid-query cannot roll back; the error that broke it is the one to report."""
    try:
        conn.rollback()
    except SQLAlchemyError:
        pass


def _engine(url: URL, timeout: float, deadline: float) -> Engine:
    """A throwaway engine (no pool) for one load, on connections that cannot write where the
    backend allows (SQLite and PostgreSQL; elsewhere give the source a read-only user)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ":memory:"
        if database != ":memory:" and not database.startswith("file:"):
            # mode=ro: writes fail, and a missing file is an error instead of a new empty db.
            url = url.set(database=f"file:{quote(database)}", query={**url.query, "mode": "ro", "uri": "true"})
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})

        @event.listens_for(engine, "connect")
        def _guard(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA query_only = ON")
            dbapi_conn.set_authorizer(_sqlite_read_only)
            # Abort the query at the deadline (returning True from the handler interrupts it).
            dbapi_conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)

        return engine
    if backend == "postgresql":
        return create_engine(_psycopg_url(url), poolclass=NullPool, connect_args=_pg_read_only_args(url, timeout))
    return create_engine(url, poolclass=NullPool)


def _psycopg_url(url: URL) -> URL:
    """PostgreSQL through psycopg only: its extended protocol is what refuses a second
    statement; other drivers send the text as a simple query, which runs every statement."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise ValueError(
            f"a PostgreSQL source runs through psycopg (postgresql:// or postgresql+psycopg://), not {url.drivername}"
        )
    return url


def _pg_read_only_args(url: URL, timeout: float) -> dict[str, Any]:
    """psycopg connect arguments: a session that cannot write, with the source's timeout as
    statement_timeout, and every statement prepared (prepare_threshold 0: the extended
    protocol, one statement per execute). Our options go after any the URL gives, so they win."""
    settings = f"-c default_transaction_read_only=on -c statement_timeout={max(int(timeout * 1000), 1)}"
    given = url.query.get("options")
    options = " ".join([*([given] if isinstance(given, str) else given or ()), settings])
    return {"connect_timeout": max(int(timeout), 1), "prepare_threshold": 0, "options": options}


# What a data source's statement may do in SQLite: read. Pragmas only those that report and
# change nothing: the ones below that take a table or index name, or any in _READ_PRAGMAS
# asked without a value (PRAGMA user_version reads; PRAGMA user_version = 3 would set it).
_SQLITE_READ_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
        sqlite3.SQLITE_TRANSACTION,
    }
)
_NAMED_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
_READ_PRAGMAS = _NAMED_PRAGMAS | {
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "journal_mode",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "query_only",
    "read_uncommitted",
    "schema_version",
    "user_version",
}


def _sqlite_read_only(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    """sqlite3 authorizer: SQLITE_OK for reading, SQLITE_DENY (the statement fails to prepare,
    "not authorized") for everything else, so nothing runs, not even in part."""
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        if arg2 is None or (arg1 or "").lower() in _NAMED_PRAGMAS:
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


_READ_ONLY_HINT = "not authorized: a data source only reads (no ATTACH, no writes, no pragma that sets anything)"


def _sql_error(key: str, what: str, exc: SQLAlchemyError, *, connecting: bool) -> DataSourceError:
    orig = getattr(exc, "orig", None) or exc
    first_line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    message = f"{what}: {first_line}"
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_AUTH:  # our authorizer said no
        transient = False
        message = f"{what}: {_READ_ONLY_HINT}"
    elif isinstance(orig, sqlite3.OperationalError):
        # "unable to open database file": the file is missing or unreadable; "locked": busy.
        transient = "locked" in first_line or "busy" in first_line or "interrupted" in first_line
        if "interrupted" in first_line:
            message = f"{what}: took longer than the timeout"
    elif sqlstate:
        transient = sqlstate.startswith(_PG_TRANSIENT_CLASSES)
        if sqlstate == "57014":
            message = f"{what}: took longer than the timeout (statement_timeout)"
        elif sqlstate == "42601" and "multiple commands" in first_line:
            message = f"{what}: one statement only ({first_line})"
    else:
        transient = connecting or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
    return _fail(key, message, transient=transient)


# -- http -----------------------------------------------------------------------------------
async def _load_http(key: str, cfg: HttpSource, client: httpx.AsyncClient | None) -> Any:
    if client is None:  # load_data always passes one; kept total for direct callers
        import httpx

        async with httpx.AsyncClient(follow_redirects=False) as own:
            return await _load_http(key, cfg, own)
    url = cfg.http or ""
    shown = shown_url(url)
    # httpx's timeout bounds each read, so a server sending a byte now and then never trips
    # it: the whole request, body included, runs under one deadline.
    try:
        async with asyncio.timeout(cfg.timeout):
            with map_errors(_http_errors(), f"GET {shown} failed (timeout {cfg.timeout:g}s): "):
                async with client.stream(
                    "GET", url, headers=cfg.headers, timeout=cfg.timeout, follow_redirects=False
                ) as response:
                    _check_status(key, shown, response)
                    body = await _read_capped(key, shown, response, cfg.max_size)
    except TimeoutError:
        raise _fail(
            key, f"GET {shown} took longer than its timeout ({cfg.timeout:g}s, the whole request)", transient=True
        ) from None
    with map_errors(_CONTENT_ERRORS, f"GET {shown} did not return valid JSON: "):
        return json.loads(body)


def _check_status(key: str, shown: str, response: httpx.Response) -> None:
    status = response.status_code
    if not 200 <= status < 300:
        hint = ""
        if 300 <= status < 400 and "location" in response.headers:
            hint = f" (redirects are not followed; use {shown_url(response.headers['location'])})"
        raise _fail(
            key,
            f"GET {shown} answered HTTP {status} {response.reason_phrase}{hint}",
            transient=status >= 500 or status in _HTTP_TRANSIENT_STATUS,
        )


async def _read_capped(key: str, shown: str, response: httpx.Response, limit: int) -> bytes:
    """The body, decoded (so a compressed bomb counts at its real size), refused past `limit`
    bytes: by its Content-Length before reading, else as soon as it grows past it."""
    too_big = _fail(key, f"GET {shown} answered more than max_size ({limit:,} bytes)", transient=False)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and "content-encoding" not in response.headers and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


# -- file -----------------------------------------------------------------------------------
async def _load_file(key: str, cfg: FileSource) -> Any:
    path = Path(cfg.file or "")
    fmt = cfg.format or path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "json"):
        raise _fail(key, f"cannot tell the format of {path}; name it .csv or .json or set format:", transient=False)
    try:
        content = await asyncio.wait_for(asyncio.to_thread(_read_text, path), cfg.timeout)
    except TimeoutError:
        raise _fail(key, f"reading {path} took longer than {cfg.timeout:g}s", transient=True) from None
    with map_errors(_CONTENT_ERRORS, f"{path} is not valid {fmt}: "):
        if fmt == "json":
            return json.loads(content)
        return list(csv.DictReader(io.StringIO(content, newline="")))


def _read_text(path: Path) -> str:
    # Mapped here, in the worker thread: TimeoutError is an OSError too, and the caller's
    # deadline must not read as the file's error.
    with map_errors(_FILE_ERRORS, f"cannot read {path} as UTF-8 text: "):
        return path.read_text(encoding="utf-8-sig")
