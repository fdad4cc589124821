"""What the packaging promises at run time: the core install needs no PostgreSQL driver."""

from __future__ import annotations

import sys

import pytest
from postroom.errors import ConfigError
from postroom.store import open_engine


def test_a_postgresql_url_without_psycopg_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import psycopg` fail as it does when psycopg is not installed.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"'psycopg'.*pip install 'postroom\[postgres\]'"):
        open_engine("postgresql://postgres@127.0.0.1:5432/test")


def test_a_bad_database_url_is_refused_without_its_password():
    with pytest.raises(ConfigError) as caught:
        open_engine("postgresql://user:sekret@db.example:5432:oops/postroom")
    assert "sekret" not in str(caught.value) and "POSTROOM_DATABASE_URL" in str(caught.value)
