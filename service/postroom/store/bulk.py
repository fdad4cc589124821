"""Bulk row writes for batches of thousands: one DBAPI ``executemany``, without SQLAlchemy's
per-row parameter processing.

A watcher's pass over 5,000 messages writes 15,000 rows (inbound, ledger planned, ledger
done). Through ``conn.execute(insert(table), [dict, ...])`` SQLAlchemy builds and converts
every row's parameters in Python, which cost more than SQLite itself. Here the statement
text is built once (the dialect's parameter style and identifier quoting), values that are
the same for every row (``now``, a status) are converted once with the column type's own bind
processor, and per-row values go through a column's processor only when it has one (e.g.
JSON on SQLite). Still one transaction per call site: the caller's ``engine.begin()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table


def _placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"  # sqlite3 / psycopg


def _converters(conn: Connection, table: Table, names: Sequence[str]) -> list[Any]:
    dialect = conn.dialect
    return [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]


def _rows(
    conn: Connection, table: Table, names: Sequence[str], rows: Sequence[Sequence[Any]], constants: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    converters = _converters(conn, table, names)
    fixed = tuple(
        conv(value) if conv else value
        for conv, value in zip(_converters(conn, table, list(constants)), constants.values(), strict=True)
    )
    if not any(converters):
        return [(*row, *fixed) for row in rows]
    return [(*(conv(v) if conv else v for conv, v in zip(converters, row, strict=True)), *fixed) for row in rows]


def insert_rows(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    constants: Mapping[str, Any] | None = None,
) -> None:
    """INSERT one row per ``rows`` entry: values for ``names`` in order, plus ``constants``."""
    if not rows:
        return
    constants = constants or {}
    quote = conn.dialect.identifier_preparer.quote
    columns = [*names, *constants]
    mark = _placeholder(conn)
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(mark for _ in columns)})"
    )
    conn.exec_driver_sql(sql, _rows(conn, table, names, rows, constants))


def update_rows(
    conn: Connection,
    table: Table,
    names: Sequence[str],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
    constants: Mapping[str, Any] | None = None,
    where: str = "",
) -> None:
    """UPDATE ... SET ``names`` (and ``constants``) WHERE every ``keys`` column equals; each
    row holds the ``names`` values, then the ``keys`` values. ``where`` adds a fixed SQL test."""
    if not rows:
        return
    constants = constants or {}
    quote = conn.dialect.identifier_preparer.quote
    mark = _placeholder(conn)
    sets = ", ".join(f"{quote(c)} = {mark}" for c in [*names, *constants])
    tests = " AND ".join([*(f"{quote(k)} = {mark}" for k in keys), *([where] if where else [])])
    sql = f"UPDATE {quote(table.name)} SET {sets} WHERE {tests}"
    # parameters in statement order: SET values (row's, then constants), then the row's keys
    width = len(names)
    converted = _rows(conn, table, [*names, *keys], rows, {})
    fixed = _rows(conn, table, [], [()], constants)[0]
    conn.exec_driver_sql(sql, [(*row[:width], *fixed, *row[width:]) for row in converted])
