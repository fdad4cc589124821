"""A blocking mail client on a worker thread of its own, awaited from the event loop.

Neither IMAPClient nor poplib has an async twin, so each connection owns one single worker
thread (never the loop's default executor: a parked IDLE would starve it) and every call of
that connection runs there, in order. What the IMAP and POP3 edges share lives here: the
thread, the mapping of every call's foreign errors to ours by the protocol's one table, the
"broken" mark after a lost connection, the login secret fetched on the loop, and a close that
never hangs.

Each blocking call is bounded by the socket timeout the client was opened with; closing is
bounded by that timeout plus a second, after which the socket is just dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from postroom.config.model import ServerConfig
from postroom.credentials import Credentials, Mechanism, log_in
from postroom.errors import (
    ErrorTable,
    PostroomError,
    ServerBusy,
    ServerConnectError,
    ServerTimeout,
    TransientError,
    mapped_error,
)

T = TypeVar("T")
ClientT = TypeVar("ClientT")
ConfigT = TypeVar("ConfigT", bound=ServerConfig)


@dataclass(frozen=True)
class Login:
    """The credentials of one login, secret already fetched (the worker thread can't await)."""

    username: str
    mechanism: Mechanism
    secret: str = field(repr=False)


def map_server_error(exc: BaseException, where: str, table: ErrorTable,
                     busy_codes: tuple[str, ...] = ()) -> PostroomError:
    """One error of a blocking mail client as ours, by the protocol's ``table``; what no row
    names is a lost connection. A refusal that carries one of ``busy_codes`` (the protocol's
    "try later" response codes, such as IMAP's [INUSE]) is ServerBusy, whatever was refused."""
    if isinstance(exc, PostroomError):
        return exc
    if exc.args and isinstance(exc.args[0], bytes):  # poplib's and imaplib's replies are bytes
        with contextlib.suppress(TypeError):  # a class that takes other arguments: keep it as is
            exc = type(exc)(exc.args[0].decode("utf-8", "replace"))
    ours = mapped_error(exc, table, f"{where}: ") or ServerConnectError(f"{where}: {exc!r}")
    if not isinstance(ours, TransientError) and any(code in str(exc) for code in busy_codes):
        return ServerBusy(f"{where}: put off by the server: {exc}")
    return ours


class ThreadedConnection(Generic[ClientT, ConfigT]):
    """One logged-in session of a blocking client; subclasses speak the protocol.

    A subclass names its ``protocol`` ("imap"), its ``errors`` table and ``busy_codes``,
    opens the client in ``_open`` (on the worker thread, ``login`` None without credentials),
    and says how to drop a client (``_drop``) and, if it has one, say goodbye (``_goodbye``).
    """

    protocol: ClassVar[str]
    errors: ClassVar[ErrorTable]
    busy_codes: ClassVar[tuple[str, ...]] = ()
    says_goodbye: ClassVar[bool] = True  # close() runs ``_goodbye`` first; False: just drop

    def __init__(self, account: str, cfg: ConfigT, credentials: Credentials | None = None):
        """``credentials``: how to log in (``AccountLogins.credentials``); default: the
        config's password, or no login. A token login must be given its credentials."""
        self.account = account
        self.cfg = cfg
        self.credentials = cfg.login(account, credentials)
        self._client: ClientT | None = None
        self._broken = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.protocol}-{account}")
        self._where = f"{self.protocol} {account} ({cfg.host}:{cfg.port_or_default()})"

    # -- the protocol's part -----------------------------------------------------------

    def _open(self, login: Login | None) -> ClientT:
        """Connect, secure and log in (blocking); close what was opened if anything fails."""
        raise NotImplementedError

    def _goodbye(self, client: ClientT) -> None:
        """Log out politely (blocking); on trouble drop the socket. Never raises."""
        self._drop(client)

    def _drop(self, client: ClientT) -> None:
        """Close the socket without a word (any thread). Never raises."""
        raise NotImplementedError

    def _opened(self, client: ClientT) -> None:
        """Called on the worker thread once ``_open`` succeeded (the client is in place)."""

    def _map_error(self, exc: BaseException, where: str) -> PostroomError:
        return map_server_error(exc, where, self.errors, self.busy_codes)

    # -- running on the connection's thread --------------------------------------------

    async def _run(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guarded, step, fn, *args))

    def _guarded(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        if self._broken and step != "connect":
            raise ServerConnectError(f"{self._where}: connection is broken; reconnect")
        try:
            return fn(*args)
        except Exception as exc:
            mapped = self._map_error(exc, f"{self._where} {step}")
            if isinstance(mapped, ServerConnectError | ServerTimeout):
                self._broken = True  # the session's state is unknown: only a new one is safe
            if mapped is exc:
                raise
            raise mapped from exc

    @property
    def usable(self) -> bool:
        return self._client is not None and not self._broken

    def _c(self) -> ClientT:
        if self._client is None:
            raise ServerConnectError(f"{self._where}: not connected")
        return self._client

    # -- connect / close ---------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and log in, with the secret asked for now: a reconnect (or an IDLE renewal
        that reconnects) logs in with a token that is fresh now. A refused token is renewed
        once and a new session tried (servers may close the refused one)."""
        credentials = self.credentials
        if credentials is None:
            await self._run("connect", self._connect, None)
            return
        await log_in(credentials, lambda secret: self._run(
            "connect", self._connect, Login(credentials.username, credentials.mechanism, secret)))

    def _connect(self, login: Login | None) -> None:
        client = self._open(login)
        self._client = client
        self._broken = False
        self._opened(client)

    async def close(self) -> None:
        """Say goodbye within the socket timeout, then drop the socket; never hangs."""
        client, self._client = self._client, None
        if client is not None and not self.says_goodbye:
            self._drop(client)
        elif client is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor, self._goodbye, client),
                                       timeout=self.cfg.timeout + 1)
            except TimeoutError:
                self._drop(client)
            except asyncio.CancelledError:
                self._drop(client)
                self._executor.shutdown(wait=False, cancel_futures=True)
                raise
        self._executor.shutdown(wait=False, cancel_futures=True)
