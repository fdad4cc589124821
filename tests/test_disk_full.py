"""A full disk under a SQLite store: the write that does not fit fails as a transient store
error (the caller retries later), nothing half-written is left behind, and once there is room
again the same write goes through once. The store sits on a real 2 MiB tmpfs that is really
filled (the tests run as root, as CI does)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.errors import StoreUnavailable, is_transient
from postroom.store import NewMessage, Store
from postroom.store.calls import store_call

NOW = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True, check=False
    )
    assert mounted.returncode == 0, f"this test mounts a small tmpfs (as root): {mounted.stderr}"
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; the filler file, to delete for room again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def message(n: int, size: int) -> NewMessage:
    return NewMessage(
        dedup_key=f"job:x:{n}",
        message_id=f"<{n}@example.test>",
        account="alice",
        envelope_from="alice@example.test",
        recipients=["bob@example.test"],
        raw=os.urandom(size),
        origin="x",
    )


def test_a_full_disk_fails_the_write_as_transient_and_loses_nothing(small_disk: Path):
    store = Store.open(f"sqlite:///{small_disk / 'postroom.db'}", owner="test")
    try:
        first = message(1, 1000)
        assert store.outbox.enqueue([first], now=NOW) == 1
        filler = fill(small_disk)

        big = message(2, 300_000)  # needs pages the disk no longer has
        with pytest.raises(StoreUnavailable, match="full") as refused:
            asyncio.run(store_call(store.outbox.enqueue, [big], now=NOW))
        assert is_transient(refused.value)  # retried later, never a dead letter
        assert [i.message_id for i in store.outbox.list(statuses=["queued"])] == [first.message_id]

        filler.unlink()  # room again: the same write goes through, once
        assert asyncio.run(store_call(store.outbox.enqueue, [big], now=NOW)) == 1
        assert asyncio.run(store_call(store.outbox.enqueue, [big], now=NOW)) == 0
        queued = store.outbox.list(statuses=["queued"])
        assert sorted(i.message_id for i in queued) == [first.message_id, big.message_id]
    finally:
        store.close()
