"""The health/metrics endpoint, served for real on 127.0.0.1 with an OS-chosen port."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import httpx
import pytest
from postroom.errors import ConfigError, PortInUse
from postroom.http import HttpServer, Phase, parse_listen
from postroom.metrics import Metrics, OutboxGauges
from prometheus_client import CONTENT_TYPE_LATEST


class Readiness:
    """A readiness callable the test can flip."""

    def __init__(self) -> None:
        self.answer: tuple[bool, dict] = (True, {"store": "ok"})
        self.raises: Exception | None = None

    async def __call__(self) -> tuple[bool, dict]:
        if self.raises is not None:
            raise self.raises
        return self.answer


@pytest.fixture
async def served():
    metrics = Metrics(build_version="9.9.9")
    readiness = Readiness()
    server = HttpServer("127.0.0.1:0", registry=metrics.registry, readiness=readiness)
    host, port = await server.start()
    server.mark_running()
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
        yield server, client, metrics, readiness, (host, port)
    await server.stop()


async def test_healthz_answers_ok(served):
    _, client, *_ = served
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"


async def test_readyz_follows_the_readiness_callable(served):
    _server, client, _, readiness, _ = served
    ok = await client.get("/readyz")
    assert ok.status_code == 200
    assert ok.json() == {"ready": True, "phase": "running", "store": "ok"}

    readiness.answer = (False, {"store": "unreachable"})
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["content-type"] == "application/json"
    assert not_ready.json()["store"] == "unreachable"


async def test_readyz_is_503_when_the_check_raises_and_hides_the_message(served):
    _, client, _, readiness, _ = served
    readiness.raises = RuntimeError("postgresql://user:hunter2@db failed")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert "hunter2" not in response.text
    assert response.json()["error"] == "RuntimeError"


async def test_readyz_is_503_while_starting_and_stopping(served):
    server, client, *_ = served
    server.phase = Phase.STARTING
    assert (await client.get("/readyz")).json() == {"ready": False, "phase": "starting"}
    server.mark_stopping()
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["phase"] == "stopping"
    # still alive while draining
    assert (await client.get("/healthz")).status_code == 200


async def test_metrics_exposes_the_registry(served):
    _, client, metrics, *_ = served
    metrics.outbox_result("sent", "alice")
    metrics.outbox_result("sent", "alice")
    found = OutboxGauges({"queued": 3, "sending": 1, "sent": 10, "dead": 2})
    metrics.watch_store(lambda: found, lambda: datetime.now(UTC))
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    assert 'postroom_build_info{version="9.9.9"} 1.0' in text
    assert 'postroom_messages_sent_total{account="alice"} 2.0' in text
    assert "postroom_outbox_depth 4.0" in text
    assert "postroom_dead_letters 2.0" in text
    assert "process_resident_memory_bytes" in text  # process metrics on our own registry too


async def test_metrics_survive_a_failing_store(served):
    _, client, metrics, *_ = served

    def broken() -> OutboxGauges:
        raise OSError("database is gone")

    metrics.watch_store(broken, lambda: datetime.now(UTC))
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "postroom_build_info" in response.text
    assert "postroom_outbox_depth " not in response.text


async def test_unknown_path_is_404_and_other_methods_405(served):
    _, client, *_ = served
    assert (await client.get("/nope")).status_code == 404
    post = await client.post("/healthz", content=b"x")
    assert post.status_code == 405
    assert set(post.headers["allow"].split(", ")) == {"GET", "HEAD"}  # Starlette lists a set: any order
    head = await client.head("/healthz")
    assert head.status_code == 200
    assert head.content == b""


async def raw_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.parametrize(
    "payload, status",
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Long: " + b"y" * 20000 + b"\r\n\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"431"),
        (b"\xff\xfe\r\n\r\n", b"400"),
    ],
)
async def test_bad_requests_get_an_error_and_the_server_lives_on(served, payload, status):
    _, client, _, _, address = served
    answer = await raw_exchange(address, payload)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert (await client.get("/healthz")).status_code == 200


async def test_a_client_that_hangs_up_early_does_not_hurt(served):
    _, client, _, _, address = served
    _, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /heal")
    writer.close()
    await writer.wait_closed()
    assert (await client.get("/healthz")).status_code == 200


async def test_many_concurrent_requests_are_all_answered(served):
    _, client, *_ = served
    responses = await asyncio.gather(*(client.get("/metrics" if i % 2 else "/healthz") for i in range(40)))
    assert [r.status_code for r in responses] == [200] * 40


async def test_stop_ends_a_stalled_client_connection():
    server = HttpServer("127.0.0.1:0", registry=Metrics().registry, readiness=Readiness())
    address = await server.start()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its headers
    await writer.drain()
    await asyncio.sleep(0.2)  # the server has read what there is (else closing it is a reset)
    await server.stop()
    assert await reader.read() == b""  # closed by the server, no answer
    writer.close()


async def test_a_slow_client_gets_408():
    server = HttpServer("127.0.0.1:0", registry=Metrics().registry, readiness=Readiness(), read_timeout=0.2)
    address = await server.start()
    try:
        answer = await asyncio.wait_for(raw_exchange(address, b"GET /healthz HTTP/1.1\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        await server.stop()


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline():
    server = HttpServer("127.0.0.1:0", registry=Metrics().registry, readiness=Readiness(), read_timeout=0.2)
    address = await server.start()
    try:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the second request stalls in its head
        await writer.drain()
        second = await asyncio.wait_for(reader.read(), 10)
        assert second.startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        await server.stop()


async def test_without_a_console_other_paths_say_why():
    server = HttpServer("127.0.0.1:0", registry=Metrics().registry, readiness=Readiness())
    host, port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
            assert (await client.get("/")).status_code == 503  # starting: the console comes with the store
            server.mark_running()
            server.attach_console(None, "the console is off: set POSTROOM_CONSOLE_TOKEN")
            answer = await client.get("/")
            assert answer.status_code == 404 and "POSTROOM_CONSOLE_TOKEN" in answer.text
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.stop()


async def test_empty_listen_disables_the_server():
    server = HttpServer("", registry=Metrics().registry, readiness=Readiness())
    assert await server.start() is None
    await server.stop()


async def test_a_port_alone_listens_on_loopback_only():
    server = HttpServer(":0", registry=Metrics().registry, readiness=Readiness())
    host, port = await server.start()
    try:
        assert host == "127.0.0.1"
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        await server.stop()


def test_parse_listen():
    assert parse_listen("127.0.0.1:9325") == ("127.0.0.1", 9325)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9325") == ("127.0.0.1", 9325)
    assert parse_listen("0.0.0.0:9325") == ("0.0.0.0", 9325)
    assert parse_listen("  ") is None
    for bad in ("localhost", "host:port", "h:70000"):
        with pytest.raises(ConfigError, match="POSTROOM_HTTP"):
            parse_listen(bad)


async def test_a_busy_port_is_a_transient_error_naming_the_process_holding_it(served):
    *_, address = served
    other = HttpServer(f"{address[0]}:{address[1]}", registry=Metrics().registry, readiness=Readiness())
    with pytest.raises(PortInUse, match=f"{address[1]} is in use by pid {os.getpid()} ") as busy:
        await other.start()
    assert not isinstance(busy.value, ConfigError) and "EX_TEMPFAIL" in str(busy.value)
