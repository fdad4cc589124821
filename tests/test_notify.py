"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from postroom.notify import Notifier, watchdog_loop


class FakeManager:
    """The receiving end: a SOCK_DGRAM socket, read without blocking."""

    def __init__(self, sock: socket.socket, address: str):
        self.sock = sock
        self.address = address

    def messages(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield FakeManager(sock, path)
    sock.close()


def test_lifecycle_messages(manager: FakeManager):
    notifier = Notifier(environ={"NOTIFY_SOCKET": manager.address})
    assert notifier.enabled
    assert notifier.ready(status="running 3 jobs")
    assert notifier.status("line one\nline two")
    assert notifier.reloading()
    assert notifier.stopping()
    notifier.close()
    ready, status, reloading, stopping = manager.messages()
    assert ready == {"READY": "1", "STATUS": "running 3 jobs"}
    assert status == {"STATUS": "line one line two"}  # a newline would forge another key
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert stopping == {"STOPPING": "1"}


def test_abstract_namespace_socket():
    name = f"postroom-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        notifier = Notifier(f"@{name}")
        assert notifier.ready()
        assert sock.recv(100) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_no_socket_means_no_op():
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval() is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path):
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_watchdog_interval_from_the_environment(manager: FakeManager):
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "30000000"}
    assert Notifier(environ=env).watchdog_interval() == 30.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(environ=mine).watchdog_interval() == 30.0
    # the watchdog was meant for another process (e.g. our parent): not ours to ping
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(environ=other).watchdog_interval() is None
    assert Notifier(environ={**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None


async def test_watchdog_loop_pings_until_stopped(manager: FakeManager):
    notifier = Notifier(environ={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"})
    stop = asyncio.Event()
    task = asyncio.create_task(watchdog_loop(notifier, stop))
    received: list[dict[str, str]] = []

    async def three_pings() -> None:
        # Wait for pings by counting them, not by timing: three prove it repeats.
        while len(received) < 3:
            await asyncio.sleep(0.02)
            received.extend(manager.messages())

    await asyncio.wait_for(three_pings(), 10)
    stop.set()
    await asyncio.wait_for(task, 5)
    notifier.stopping()
    after = manager.messages()
    assert all(m == {"WATCHDOG": "1"} for m in received)
    assert after[-1] == {"STOPPING": "1"}


async def test_watchdog_loop_returns_without_a_watchdog(manager: FakeManager):
    notifier = Notifier(environ={"NOTIFY_SOCKET": manager.address})
    await asyncio.wait_for(watchdog_loop(notifier, asyncio.Event()), 5)
    assert manager.messages() == []
