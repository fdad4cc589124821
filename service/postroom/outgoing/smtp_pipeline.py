"""SMTP PIPELINING (RFC 2920) + CHUNKING (RFC 3030) over an already authenticated connection.

aiosmtplib reads one reply per command written and drops replies that arrive early, so it
can't pipeline. Once it has connected, upgraded and logged in, this protocol takes over the
same (TLS) transport: a whole transaction — MAIL FROM, every RCPT TO, ``BDAT n LAST`` and
the message — goes out in one write, and the replies are read back in order. One round trip
per message instead of four, and no dot-stuffing.

Only the wire lives here; what the replies mean is decided by the caller (smtp.py).
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Reply", "SmtpPipeline"]

_MAX_BUFFER = 1 << 20  # unparsed reply bytes; a server sending more is broken or hostile
_MAX_REPLY_LINES = 1000

Reply = tuple[int, str]  # ("250", "2.0.0 Ok") as (250, "2.0.0 Ok")


class SmtpPipeline(asyncio.Protocol):
    """Writes command groups, queues the server's replies. One transaction at a time."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._buffer = bytearray()
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: BaseException | None = None  # why no more replies will come
        transport.set_protocol(self)

    @property
    def lost(self) -> bool:
        return self._error is not None or self._transport.is_closing()

    # -- asyncio.Protocol --------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            self._parse()
        except ConnectionError as exc:
            self._fail(exc)
            self._transport.abort()
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionResetError("the server closed the connection") if exc is None else exc)
        self._writable.set()

    def eof_received(self) -> bool | None:
        self._fail(ConnectionResetError("the server closed the connection"))
        return None  # close the transport

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- use ---------------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Queue data on the transport; wait while the transport's buffer is over its limit."""
        if self._error is not None or self._transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self._transport.write(data)
        await self._writable.wait()

    async def reply(self, timeout: float) -> Reply:
        """The next reply, in the order the commands were written."""
        async with asyncio.timeout(timeout):
            while not self._replies:
                if self._error is not None:
                    raise self._error
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        self._transport.close()

    # -- internals ---------------------------------------------------------------------------
    def _parse(self) -> None:
        while True:
            lines: list[bytes] = []
            offset = 0
            complete = False
            while (end := self._buffer.find(b"\n", offset)) != -1:
                line = bytes(self._buffer[offset:end]).rstrip(b"\r")
                offset = end + 1
                if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                    raise ConnectionError(f"malformed SMTP reply line: {line[:80]!r}")
                lines.append(line)
                if len(lines) > _MAX_REPLY_LINES:
                    raise ConnectionError("SMTP reply has too many lines")
                if line[3:4] != b"-":
                    complete = True
                    break
            if not complete:
                if len(self._buffer) > _MAX_BUFFER:
                    raise ConnectionError("SMTP reply too long")
                return
            del self._buffer[:offset]
            text = "\n".join(line[4:].decode("utf-8", "replace").strip() for line in lines)
            self._replies.append((int(lines[-1][:3]), text))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
