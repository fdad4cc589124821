"""What a PostgreSQL store connection is opened with, read back from the real server and the
real socket: the default statement timeout also when the URL brings its own ``options``, and
TCP keepalives with a TCP user timeout, so a half-open connection cannot hold a store thread
for good."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from postroom.store import open_engine
from postroom.store.engine import PG_KEEPALIVES, STATEMENT_TIMEOUT_MS
from sqlalchemy import Connection, text


@contextmanager
def connected(url: str) -> Iterator[Connection]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def show(conn: Connection, setting: str) -> str:
    return str(conn.execute(text(f"SHOW {setting}")).scalar_one())


def test_the_default_statement_timeout_is_set(pg_url):
    with connected(pg_url) as conn:
        assert show(conn, "statement_timeout") == f"{STATEMENT_TIMEOUT_MS // 1000}s"


def test_options_in_the_url_keep_the_default_statement_timeout_beside_them(pg_url):
    with connected(pg_url + "?options=-c%20search_path%3Dpg_catalog%20-c%20lock_timeout%3D4000") as conn:
        assert show(conn, "search_path") == "pg_catalog"
        assert show(conn, "lock_timeout") == "4s"
        assert show(conn, "statement_timeout") == f"{STATEMENT_TIMEOUT_MS // 1000}s"


def test_a_statement_timeout_in_the_url_wins(pg_url):
    with connected(pg_url + "?options=-c%20statement_timeout%3D60000") as conn:
        assert show(conn, "statement_timeout") == "1min"


def _socket_options(conn: Connection) -> dict[str, int]:
    raw = conn.connection.driver_connection
    fd = raw.pgconn.socket  # type: ignore[union-attr]
    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:  # a duplicate of the fd
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


def test_the_connection_socket_has_keepalives_and_a_user_timeout(pg_url):
    with connected(pg_url) as conn:
        assert _socket_options(conn) == {
            "keepalive": 1,
            "idle": PG_KEEPALIVES["keepalives_idle"],
            "interval": PG_KEEPALIVES["keepalives_interval"],
            "count": PG_KEEPALIVES["keepalives_count"],
            "user_timeout": PG_KEEPALIVES["tcp_user_timeout"],
        }


def test_keepalive_settings_in_the_url_win(pg_url):
    with connected(pg_url + "?keepalives_idle=77&tcp_user_timeout=12000") as conn:
        found = _socket_options(conn)
    assert (found["idle"], found["user_timeout"]) == (77, 12000)
