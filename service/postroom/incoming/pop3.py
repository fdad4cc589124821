"""The POP3 edge: stdlib poplib on one dedicated thread per connection.

There is no maintained async POP3 client; poplib blocks, so each connection owns a single
worker thread and its async methods await it. Errors are mapped to ``postroom.errors`` here.
DELE only marks a message; the server removes it when QUIT commits the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import poplib
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from postroom.config.model import Pop3Config
from postroom.errors import (
    AuthError,
    PostroomError,
    ServerConnectError,
    ServerRejected,
    ServerTimeout,
    TLSError,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")


def map_pop3_error(exc: BaseException, where: str) -> PostroomError:
    if isinstance(exc, PostroomError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"{where}: certificate not trusted: {exc.verify_message or exc}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ServerTimeout(f"{where}: no answer in time")
    if isinstance(exc, OSError | EOFError):
        return ServerConnectError(f"{where}: connection lost: {exc}")
    if isinstance(exc, poplib.error_proto):
        text = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if "[SYS/TEMP]" in text or "[IN-USE]" in text:
            return ServerConnectError(f"{where}: {text}")
        return ServerRejected(f"{where}: {text}")
    return ServerConnectError(f"{where}: {exc!r}")


class Pop3Connection:
    def __init__(self, account: str, cfg: Pop3Config):
        self.account = account
        self.cfg = cfg
        self._pop: poplib.POP3 | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pop3-{account}")
        self._where = f"pop3 {account} ({cfg.host}:{cfg.port_or_default()})"

    async def _run(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, step, fn, *args))

    def _guarded(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except BaseException as exc:
            mapped = map_pop3_error(exc, f"{self._where} {step}")
            if mapped is exc:
                raise
            raise mapped from exc

    def _p(self) -> poplib.POP3:
        if self._pop is None:
            raise ServerConnectError(f"{self._where}: not connected")
        return self._pop

    async def connect(self) -> None:
        await self._run("connect", self._connect)

    def _connect(self) -> None:
        cfg = self.cfg
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        host, port = cfg.host, cfg.port_or_default()
        if cfg.security == "tls":
            pop: poplib.POP3 = poplib.POP3_SSL(host, port, timeout=cfg.timeout, context=context)
        else:
            pop = poplib.POP3(host, port, timeout=cfg.timeout)
        try:
            if cfg.security == "starttls":
                self._stls(pop, context)
            if cfg.username is not None and cfg.password is not None:
                try:
                    pop.user(cfg.username)
                    pop.pass_(cfg.password.get_secret_value())
                except poplib.error_proto as exc:
                    raise AuthError(f"{self._where}: login refused: {exc}") from exc
        except BaseException:
            _close_quietly(pop)
            raise
        self._pop = pop
        log.info("pop3 connected", account=self.account, host=host, port=port, security=cfg.security)

    def _stls(self, pop: poplib.POP3, context: ssl.SSLContext) -> None:
        try:
            offered = "STLS" in pop.capa()
        except poplib.error_proto:
            offered = False
        if not offered:
            raise TLSError(f"{self._where}: server does not offer STLS; refusing to log in in plaintext")
        try:
            pop.stls(context)
        except ssl.SSLCertVerificationError:
            raise
        except (ssl.SSLError, poplib.error_proto) as exc:
            raise TLSError(f"{self._where}: STLS failed: {exc}") from exc

    async def uidl(self) -> dict[str, int]:
        """UIDL -> message number, for every message in the maildrop."""
        return await self._run("uidl", self._uidl)

    def _uidl(self) -> dict[str, int]:
        _, lines, _ = self._p().uidl()
        found: dict[str, int] = {}
        for line in lines:
            num, _, uidl = line.decode("ascii", "replace").partition(" ")
            found[uidl.strip()] = int(num)
        return found

    async def retr(self, num: int) -> bytes:
        return await self._run(f"retr {num}", self._retr, num)

    def _retr(self, num: int) -> bytes:
        _, lines, _ = self._p().retr(num)
        return b"\r\n".join(lines) + b"\r\n"

    async def dele(self, num: int) -> None:
        await self._run(f"dele {num}", lambda: self._p().dele(num))

    async def quit(self) -> None:
        """QUIT commits DELEs. Raises (mapped) if the server did not confirm."""
        pop, self._pop = self._pop, None
        try:
            if pop is not None:
                await self._run("quit", pop.quit)
        finally:
            if pop is not None:
                _close_quietly(pop)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Drop the connection without QUIT: marked deletions are not committed."""
        pop, self._pop = self._pop, None
        if pop is not None:
            _close_quietly(pop)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_quietly(pop: poplib.POP3) -> None:
    with contextlib.suppress(Exception):  # closing: the server may be gone already
        pop.close()
