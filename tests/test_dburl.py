"""SQLite URLs read without SQLAlchemy: the same answers SQLAlchemy's make_url gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from postroom.config.dburl import sqlite_beside, sqlite_file
from sqlalchemy.engine import make_url

BASE = Path("/srv/post room")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///shop.db",
        "sqlite:///data/shop%20v2.db",
        "sqlite+pysqlite:///shop.db?mode=ro&timeout=5",
        "sqlite:////var/lib/shop.db",
        "sqlite:///:memory:",
        "sqlite://",
        "postgresql://u:p@db/shop",
    ],
)
def test_relative_sqlite_files_move_beside_the_config_as_sqlalchemy_reads_them(url):
    parsed = make_url(url)
    moved = make_url(sqlite_beside(url, BASE))
    db = parsed.database
    if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" and not Path(db).is_absolute():
        assert moved.database == str(BASE / db)
        assert sqlite_file(url) == Path(db)
    else:
        assert sqlite_beside(url, BASE) == url
    assert moved.drivername == parsed.drivername
    assert dict(moved.query) == dict(parsed.query)


def test_no_file_for_memory_or_server_databases():
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql://db/x") is None
    assert sqlite_file("sqlite:////abs/x.db") == Path("/abs/x.db")
