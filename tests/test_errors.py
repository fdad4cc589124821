"""The error tree's one retry test, and the tables edges map foreign errors by."""

from __future__ import annotations

import errno
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from postroom.config.model import OutboxConfig
from postroom.errors import (
    ErrorTable,
    PermanentSourceError,
    ServerConnectError,
    ServerTimeout,
    TLSError,
    TransientSourceError,
    is_transient,
    map_errors,
    mapped_error,
)
from postroom.outgoing.sender import decide
from postroom.store.outbox import OutboxItem


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
        (ServerConnectError("refused"), True),
        (TransientSourceError("locked"), True),
        # OSErrors that are not connection trouble: retrying will not bring the file back.
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/terms.pdf"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (ssl.SSLCertVerificationError("certificate verify failed"), False),
        (PermanentSourceError("bad SQL"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_transient_is_connection_and_timeout_only(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_missing_file_is_a_dead_letter_not_a_retry() -> None:
    now = datetime(2030, 1, 7, tzinfo=UTC)
    item = OutboxItem(
        id=1,
        dedup_key="k",
        message_id="<m@x>",
        account="alice",
        envelope_from="a@x.test",
        recipients=["b@x.test"],
        raw=b"",
        status="sending",
        attempts=0,
        next_attempt_at=now,
        last_error=None,
        delivered=[],
        refused={},
        origin="",
        created_at=now,
    )
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/terms.pdf")
    assert decide(item, missing, now=now, policy=OutboxConfig()).kind == "dead"
    reset = ConnectionResetError("reset by peer")
    outcome = decide(item, reset, now=now, policy=OutboxConfig())
    assert outcome.kind == "deferred" and outcome.retry_at is not None and outcome.retry_at > now
    assert outcome.retry_at - now < timedelta(hours=1)


TABLE: ErrorTable = {
    ssl.SSLError: TLSError,  # a subclass before its base: SSLError is an OSError
    TimeoutError: ServerTimeout,
    OSError: ServerConnectError,
}


def test_tables_map_in_order_and_keep_the_foreign_message() -> None:
    untrusted = mapped_error(ssl.SSLCertVerificationError(1, "certificate verify failed"), TABLE, "h:25: ")
    assert isinstance(untrusted, TLSError) and str(untrusted) == "h:25: certificate verify failed"
    unreachable = mapped_error(OSError(errno.EHOSTUNREACH, "No route to host"), TABLE)
    assert isinstance(unreachable, ServerConnectError) and is_transient(unreachable)
    quiet = mapped_error(TimeoutError(), TABLE, "h:25: ")
    assert isinstance(quiet, ServerTimeout) and str(quiet) == "h:25: TimeoutError"  # never an empty reason
    assert mapped_error(ValueError("x"), TABLE) is None


def test_map_errors_raises_ours_from_theirs_and_lets_the_rest_through() -> None:
    with pytest.raises(ServerConnectError) as info:
        with map_errors(TABLE, "h:25: "):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    with pytest.raises(KeyError):
        with map_errors(TABLE):
            raise KeyError("not ours to map")
