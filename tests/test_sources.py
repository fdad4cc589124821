"""Data sources against real things: a SQLite file, the lab PostgreSQL, a local HTTP server, files."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from postroom.config.model import DataSourceConfig
from postroom.errors import DataSourceError, PermanentSourceError, TransientError, is_transient
from postroom.outgoing.sources import load_data
from pydantic import TypeAdapter
from sqlalchemy import create_engine, text

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def src(**kw) -> DataSourceConfig:
    return TypeAdapter(DataSourceConfig).validate_python(kw)


async def failure(sources: dict[str, DataSourceConfig]) -> DataSourceError:
    with pytest.raises(DataSourceError) as info:
        await load_data(sources)
    return info.value


# -- sqlite ---------------------------------------------------------------------------------
@pytest.fixture
def shop_db(tmp_path) -> str:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, "Ada", 12.5), (2, "Bo", 7.0)])
    return f"sqlite:///{path}"


def order_count(url: str) -> int:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


async def test_sqlite_rows_are_dicts_by_column_name(shop_db):
    data = await load_data({"orders": src(sql="SELECT id, customer, total FROM orders ORDER BY id", database=shop_db)})
    assert data == {"orders": [{"id": 1, "customer": "Ada", "total": 12.5}, {"id": 2, "customer": "Bo", "total": 7.0}]}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO orders VALUES (3, 'Cy', 1.0)",
        "UPDATE orders SET total = 0",
        "DELETE FROM orders",
    ],
)
async def test_sqlite_source_cannot_write(shop_db, statement):
    err = await failure({"orders": src(sql=statement, database=shop_db)})
    assert err.source == "orders"
    assert not err.transient
    assert "only reads" in str(err)
    assert order_count(shop_db) == 2
    with sqlite3.connect(shop_db.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT total FROM orders WHERE id = 1").fetchone()[0] == 12.5


@pytest.mark.parametrize(
    "statement",
    [
        "ATTACH DATABASE '{out}' AS side",
        "VACUUM INTO '{out}'",
    ],
)
async def test_sqlite_source_creates_no_file(shop_db, tmp_path, statement):
    """mode=ro and query_only do not stop these: both write a new file beside the read-only one."""
    out = tmp_path / "side.db"
    err = await failure({"orders": src(sql=statement.format(out=out), database=shop_db)})
    assert not err.transient and "not authorized" in str(err)
    assert not out.exists()


async def test_sqlite_source_cannot_set_a_pragma_but_can_read_one(shop_db):
    err = await failure({"p": src(sql="PRAGMA query_only = OFF", database=shop_db)})
    assert not err.transient and "not authorized" in str(err)
    data = await load_data(
        {
            "cols": src(sql="PRAGMA table_info(orders)", database=shop_db),
            "version": src(sql="PRAGMA user_version", database=shop_db),
            "cte": src(
                sql="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 3) SELECT count(*) AS c FROM n",
                database=shop_db,
            ),
        }
    )
    assert [c["name"] for c in data["cols"]] == ["id", "customer", "total"]
    assert data["version"] == [{"user_version": 0}] and data["cte"] == [{"c": 3}]


async def test_sqlite_missing_file_is_permanent_and_not_created(tmp_path):
    missing = tmp_path / "nope.db"
    err = await failure({"orders": src(sql="SELECT 1", database=f"sqlite:///{missing}")})
    assert not err.transient
    assert not missing.exists()


async def test_bad_sql_is_permanent_and_names_the_source(shop_db):
    err = await failure({"orders": src(sql="SELECT nope FROM orders", database=shop_db)})
    assert err.source == "orders"
    assert "no such column" in str(err)
    assert "Traceback" not in str(err) and "sqlalche.me" not in str(err)
    assert not err.transient and not is_transient(err)


async def test_slow_sqlite_query_times_out_as_transient(shop_db):
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    err = await failure({"big": src(sql=endless, database=shop_db, timeout=0.3)})
    assert err.transient and isinstance(err, TransientError)
    assert "longer than" in str(err)


# -- postgresql -----------------------------------------------------------------------------
@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"src_{uuid.uuid4().hex[:10]}"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE TABLE "{schema}".orders (id int, total numeric(10,2), placed timestamptz)'))
        conn.execute(
            text(
                f'INSERT INTO "{schema}".orders VALUES '
                "(1, 12.50, '2026-11-26 08:00+00'), (2, 7.25, '2026-11-27 09:30+00')"
            )
        )
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def pg_count(schema: str) -> int:
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            return conn.scalar(text(f'SELECT count(*) FROM "{schema}".orders'))
    finally:
        engine.dispose()


async def test_postgresql_rows_keep_python_types(pg_schema):
    data = await load_data(
        {"orders": src(sql=f'SELECT id, total, placed FROM "{pg_schema}".orders ORDER BY id', database=PG_URL)}
    )
    rows = data["orders"]
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["total"] == Decimal("12.50") and isinstance(rows[0]["total"], Decimal)
    assert isinstance(rows[1]["placed"], datetime) and rows[1]["placed"].tzinfo is not None


async def test_postgresql_source_is_read_only(pg_schema):
    err = await failure(
        {"w": src(sql=f'INSERT INTO "{pg_schema}".orders VALUES (3, 1, now()) RETURNING id', database=PG_URL)}
    )
    assert "read-only" in str(err)
    assert not err.transient
    assert pg_count(pg_schema) == 2


@pytest.mark.parametrize(
    "statement",
    [
        'COMMIT; INSERT INTO "{schema}".orders VALUES (3, 1, now())',
        "COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; "
        'INSERT INTO "{schema}".orders VALUES (3, 1, now())',
    ],
)
async def test_postgresql_source_runs_one_statement(pg_schema, statement):
    """A simple-protocol query runs every statement in it: a COMMIT ends the read-only
    transaction, and the session's read-only default can be set back in the same text."""
    err = await failure({"w": src(sql=statement.format(schema=pg_schema), database=PG_URL)})
    assert not err.transient and "one statement only" in str(err)
    assert pg_count(pg_schema) == 2


async def test_postgresql_source_needs_psycopg():
    err = await failure({"db": src(sql="SELECT 1", database="postgresql+pg8000://postgres@127.0.0.1:5432/test")})
    assert not err.transient and "psycopg" in str(err)


async def test_postgresql_statement_timeout_is_transient():
    err = await failure({"slow": src(sql="SELECT pg_sleep(5)", database=PG_URL, timeout=0.5)})
    assert err.transient and "longer than" in str(err)


async def test_missing_driver_is_permanent():
    err = await failure({"db": src(sql="SELECT 1", database="mysql://x@127.0.0.1/test")})
    assert not err.transient and "driver" in str(err)


async def test_unreachable_database_is_transient():
    err = await failure(
        {"db": src(sql="SELECT 1", database="postgresql+psycopg://postgres@127.0.0.1:1/test", timeout=2)}
    )
    assert err.transient
    assert "cannot connect" in str(err)


# -- http -----------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    release: threading.Event

    def do_GET(self):
        if self.path == "/slow":
            self.release.wait(10)
        if self.path.startswith("/drip"):
            return self._drip()
        if self.path.startswith("/big"):
            return self._big()
        routes = {
            "/rates.json": (200, json.dumps({"EUR": 1.0, "USD": 1.08}).encode()),
            "/headers": (200, json.dumps({"token": self.headers.get("X-Token")}).encode()),
            "/broken": (500, b"oops"),
            "/missing": (404, b"no"),
            "/invalid": (200, b"{not json"),
            "/slow": (200, b"{}"),
        }
        status, body = routes.get(self.path, (404, b""))
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # /slow: the client timed out and left, as the test wants

    def _drip(self):
        """A valid JSON answer, one byte every 0.2 s: each read is quick, the whole is not."""
        body = json.dumps({"pad": "x" * 100}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(len(body)):
                if self.release.wait(0.2):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _big(self):
        """/big/N: N MiB of valid JSON; /big/N/chunked: the same without a Content-Length."""
        size = int(self.path.split("/")[2]) * 1024 * 1024
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        chunked = self.path.endswith("/chunked")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        piece = b"[" + b" " * (1024 * 1024 - 2) + b"]"  # the first MiB; then spaces
        try:
            for i in range(size // len(piece)):
                data = piece if i == 0 else b" " * len(piece)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused part-way, as the test wants

    def log_message(self, *args):
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_http_json(http_base):
    data = await load_data(
        {
            "rates": src(http=f"{http_base}/rates.json"),
            "who": src(http=f"{http_base}/headers", headers={"X-Token": "t1"}),
        }
    )
    assert data == {"rates": {"EUR": 1.0, "USD": 1.08}, "who": {"token": "t1"}}


async def test_http_5xx_is_transient_and_names_status_and_url(http_base):
    err = await failure({"rates": src(http=f"{http_base}/broken")})
    assert err.transient and "500" in str(err) and f"{http_base}/broken" in str(err)


async def test_http_4xx_is_permanent(http_base):
    err = await failure({"rates": src(http=f"{http_base}/missing")})
    assert not err.transient and "404" in str(err)


async def test_http_invalid_json_is_permanent(http_base):
    err = await failure({"rates": src(http=f"{http_base}/invalid")})
    assert not err.transient and "valid JSON" in str(err)


async def test_http_timeout_is_transient(http_base):
    err = await failure({"rates": src(http=f"{http_base}/slow", timeout=0.3)})
    assert err.transient and "longer than its timeout (0.3s" in str(err)


async def test_http_timeout_is_a_deadline_for_the_whole_request(http_base):
    """A server that drips a byte every 0.2 s never trips a per-read timeout of 1 s."""
    started = time.monotonic()
    err = await failure({"rates": src(http=f"{http_base}/drip", timeout=1)})
    assert time.monotonic() - started < 3
    assert err.transient and "longer than its timeout (1s" in str(err)


@pytest.mark.parametrize("path", ["/big/17", "/big/17/chunked"])
async def test_http_body_over_the_default_16_mib_is_refused(http_base, path):
    err = await failure({"rates": src(http=f"{http_base}{path}")})
    assert not err.transient and "more than max_size (16,777,216 bytes)" in str(err)


async def test_http_max_size_is_configurable(http_base):
    err = await failure({"rates": src(http=f"{http_base}/big/2/chunked", max_size="1M")})
    assert not err.transient and "max_size (1,048,576 bytes)" in str(err)
    data = await load_data({"rates": src(http=f"{http_base}/big/2/chunked", max_size="3M")})
    assert data == {"rates": []}


async def test_a_password_in_a_url_is_never_shown(http_base):
    host = http_base.removeprefix("http://")
    err = await failure({"rates": src(http=f"http://feed:s3cret@{host}/broken?api_key=k3y&day=1")})
    assert f"http://feed:***@{host}/broken?api_key=***&day=1" in str(err)
    assert "s3cret" not in str(err) and "k3y" not in str(err)
    err = await failure(
        {"db": src(sql="SELECT 1", database="postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test", timeout=2)}
    )
    assert "postgres:***@127.0.0.1:1" in str(err) and "s3cret" not in str(err)


async def test_one_failure_fails_the_load_and_names_its_key(http_base, shop_db):
    err = await failure(
        {"orders": src(sql="SELECT * FROM orders", database=shop_db), "rates": src(http=f"{http_base}/broken")}
    )
    assert err.source == "rates"


# -- files ----------------------------------------------------------------------------------
async def test_csv_and_json_files(tmp_path):
    (tmp_path / "people.csv").write_text("\ufeffname,email\nAda,ada@x.test\nBo,bo@x.test\n", encoding="utf-8")
    (tmp_path / "cfg.json").write_text('{"limit": 3, "tags": ["a"]}', encoding="utf-8")
    (tmp_path / "rows.txt").write_text("a,b\n1,2\n", encoding="utf-8")
    data = await load_data(
        {
            "people": src(file=tmp_path / "people.csv"),
            "cfg": src(file=tmp_path / "cfg.json"),
            "forced": src(file=tmp_path / "rows.txt", format="csv"),
        }
    )
    assert data["people"] == [{"name": "Ada", "email": "ada@x.test"}, {"name": "Bo", "email": "bo@x.test"}]
    assert data["cfg"] == {"limit": 3, "tags": ["a"]}
    assert data["forced"] == [{"a": "1", "b": "2"}]


async def test_missing_file_and_bad_json_are_permanent(tmp_path):
    err = await failure({"x": src(file=tmp_path / "absent.csv")})
    assert not err.transient and "absent.csv" in str(err)
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    err = await failure({"y": src(file=tmp_path / "bad.json")})
    assert not err.transient and err.source == "y" and "not valid json" in str(err)


async def test_unknown_file_format_is_refused(tmp_path):
    (tmp_path / "data.xml").write_text("<a/>", encoding="utf-8")
    err = await failure({"x": src(file=tmp_path / "data.xml")})
    assert "format" in str(err)


async def test_missing_file_is_a_permanent_source_error_naming_the_key(tmp_path):
    err = await failure({"terms": src(file=tmp_path / "gone.json")})
    assert isinstance(err, PermanentSourceError) and not is_transient(err)
    assert err.source == "terms" and str(err).startswith("data source 'terms': cannot read ")
    assert isinstance(err.__cause__, FileNotFoundError)
