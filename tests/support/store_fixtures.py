"""Store fixtures: a fresh SQLite file per test, and a throwaway PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from postroom.store import Store
from sqlalchemy import create_engine, text

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'postroom.db'}"


@pytest.fixture
def store(sqlite_url) -> Iterator[Store]:
    s = Store.open(sqlite_url, owner="test")
    yield s
    s.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (real server on 127.0.0.1:5432)."""
    name = f"postroom_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> Iterator[Store]:
    """The same behaviour on both backends."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'postroom.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store.open(url, owner="test")
    yield s
    s.close()
