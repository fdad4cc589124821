"""A blocking mail client on a worker thread of its own, awaited from the event loop.

Neither IMAPClient nor poplib has an async twin, so each connection owns one single worker
thread (never the loop's default executor: a parked IDLE would starve it) and every call of
that connection runs there, in order. What the IMAP and POP3 edges share lives here: the
thread, the mapping of every call's foreign errors to ours by the protocol's one table, the
"broken" mark after a lost connection, the login secret fetched on the loop, and a close that
never hangs.

Each call has a deadline (the server's ``deadline``), counted from when it starts on the thread:
a socket timeout bounds each read, not a command, and a server dripping a byte now and then
would hold a FETCH or RETR for ever. At the deadline a watchdog on the event loop cuts the
connection (``cutoff.Cutoff``): the thread's read returns at once and the call fails with
``ServerTimeout`` (transient: the watcher reconnects with backoff). A call whose awaiting task
is cancelled (a stop that stopped waiting) cuts the connection the same way, so no thread
outlives its connection. Closing says goodbye within ``CLOSE_DEADLINE`` when the connection
is sound, and otherwise just cuts it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from postroom.config.model import ServerConfig
from postroom.credentials import Credentials, Mechanism, handed_login, log_in
from postroom.errors import (
    ErrorTable,
    PostroomError,
    ServerBusy,
    ServerConnectError,
    ServerTimeout,
    TransientError,
    mapped_error,
)
from postroom.incoming.cutoff import Cutoff

T = TypeVar("T")
ClientT = TypeVar("ClientT")
ConfigT = TypeVar("ConfigT", bound=ServerConfig)

CLOSE_DEADLINE = 5.0  # seconds for LOGOUT on close: a server that won't answer is just cut off


@dataclass(frozen=True)
class Login:
    """The credentials of one login, secret already fetched (the worker thread can't await)."""

    username: str
    mechanism: Mechanism
    secret: str = field(repr=False)


_BYTES_REPR = re.compile(r"""b(['"])(.*)\1""", re.DOTALL)
REPLY_TEXT_MAX = 2000  # characters of a server's reply kept in a message


def reply_text(reply: bytes | str) -> str:
    """A server's reply as text: bytes decoded, and the repr of bytes some libraries make of
    them (imapclient's LoginError says "b'[AUTHENTICATIONFAILED] …'") read back as text."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")[:REPLY_TEXT_MAX]
    if _BYTES_REPR.fullmatch(reply) is None or len(reply) > REPLY_TEXT_MAX * 4:
        return reply
    try:
        value = ast.literal_eval(reply)
    except (ValueError, SyntaxError):
        return reply
    return value.decode("utf-8", "replace")[:REPLY_TEXT_MAX] if isinstance(value, bytes) else reply


def map_server_error(
    exc: BaseException, where: str, table: ErrorTable, busy_codes: tuple[str, ...] = ()
) -> PostroomError:
    """One error of a blocking mail client as ours, by the protocol's ``table``; what no row
    names is a lost connection. A refusal that carries one of ``busy_codes`` (the protocol's
    "try later" response codes, such as IMAP's [INUSE]) is ServerBusy, whatever was refused."""
    if isinstance(exc, PostroomError):
        return exc
    # poplib's and imaplib's replies are bytes, and imapclient passes on their repr
    if exc.args and isinstance(exc.args[0], bytes | str) and reply_text(exc.args[0]) != exc.args[0]:
        with contextlib.suppress(TypeError):  # a class that takes other arguments: keep it as is
            exc = type(exc)(reply_text(exc.args[0]))
    ours = mapped_error(exc, table, f"{where}: ") or ServerConnectError(f"{where}: {exc!r}")
    if not isinstance(ours, TransientError) and any(code in str(exc) for code in busy_codes):
        return ServerBusy(f"{where}: put off by the server: {exc}")
    return ours


class ThreadedConnection(Generic[ClientT, ConfigT]):
    """One logged-in session of a blocking client; subclasses speak the protocol.

    A subclass names its ``protocol`` ("imap"), its ``errors`` table and ``busy_codes``,
    opens the client in ``_open`` (on the worker thread, ``login`` None without credentials)
    over a socket from ``self._cutoff.connect`` (so the watchdog can cut it), and says how to
    drop a client (``_drop``) and, if it has one, say goodbye (``_goodbye``).
    """

    protocol: ClassVar[str]
    errors: ClassVar[ErrorTable]
    busy_codes: ClassVar[tuple[str, ...]] = ()
    says_goodbye: ClassVar[bool] = True  # close() runs ``_goodbye`` first; False: just drop

    def __init__(self, account: str, cfg: ConfigT, credentials: Credentials | None = None):
        """``credentials``: how to log in (``AccountLogins.credentials``); None: no login,
        for a server that takes us without one."""
        self.account = account
        self.cfg = cfg
        self.credentials = handed_login(account, cfg.auth_kind(), credentials)
        self._client: ClientT | None = None
        self._broken = False
        self._ended = False
        self._cutoff = Cutoff()  # how the watchdog and a stop end a blocked read
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
        """Close the socket without a word (on the worker thread). Never raises."""
        raise NotImplementedError

    def _opened(self, client: ClientT) -> None:
        """Called on the worker thread once ``_open`` succeeded (the client is in place)."""

    def _map_error(self, exc: BaseException, where: str) -> PostroomError:
        return map_server_error(exc, where, self.errors, self.busy_codes)

    # -- running on the connection's thread --------------------------------------------

    async def _run(self, step: str, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """``fn(*args)`` on the connection's thread, cut off ``deadline`` seconds (default: the
        server's ``deadline``) after it starts there; a call waiting behind another is not
        counted. Cancelling the caller cuts the connection: the thread returns at once."""
        loop = asyncio.get_running_loop()
        watch = _Watch(loop, self.cfg.deadline if deadline is None else deadline, self._cutoff)
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self._guarded, step, watch, fn, *args))
        except asyncio.CancelledError:
            self._broken = True  # abandoned half way: the session's state is unknown
            self._cutoff.cut()
            raise

    def _guarded(self, step: str, watch: _Watch, fn: Callable[..., T], *args: Any) -> T:
        if self._broken and step != "connect":
            raise ServerConnectError(f"{self._where}: connection is broken; reconnect")
        watch.start()
        try:
            result = fn(*args)
        except Exception as exc:
            if watch.stop():
                self._broken = True
                raise ServerTimeout(
                    f"{self._where} {step}: no complete answer within its deadline ({watch.limit:g} s); cut off"
                ) from exc
            mapped = self._map_error(exc, f"{self._where} {step}")
            if isinstance(mapped, ServerConnectError | ServerTimeout):
                self._broken = True  # the session's state is unknown: only a new one is safe
            if mapped is exc:
                raise
            raise mapped from exc
        if watch.stop():
            self._broken = True  # done just as it was cut: the answer is whole, the connection gone
        return result

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
        await log_in(
            credentials,
            lambda secret: self._run(
                "connect", self._connect, Login(credentials.username, credentials.mechanism, secret)
            ),
            account=self.account,
        )

    def _connect(self, login: Login | None) -> None:
        self._cutoff.reset()  # a second attempt (a renewed token) is a new connection
        client = self._open(login)
        self._client = client
        self._broken = False
        self._opened(client)

    async def close(self) -> None:
        """LOGOUT (or the like) within ``CLOSE_DEADLINE`` when the connection is sound, then
        drop it; a broken one is just cut. Never hangs."""
        client, self._client = self._client, None
        polite = client is not None and self.says_goodbye and not self._broken
        await self._end(
            client, "logout", self._goodbye if polite else None, deadline=min(CLOSE_DEADLINE, self.cfg.deadline)
        )

    async def _end(
        self, client: ClientT | None, step: str, last: Callable[[ClientT], object] | None, *, deadline: float
    ) -> None:
        """Run the last command ``last(client)`` within ``deadline`` (its errors propagate), then
        cut the connection for good and drop the client on its own thread: never from the
        loop, where closing imaplib's or poplib's reader would wait for a read in progress."""
        if self._ended:
            return
        try:
            if client is not None and last is not None:
                await self._run(step, last, client, deadline=deadline)
        finally:
            self._ended = True
            self._cutoff.cut(for_good=True)
            self._executor.submit(self._dispose, client)
            self._executor.shutdown(wait=False)

    def _dispose(self, client: ClientT | None) -> None:
        if client is not None:
            self._drop(client)
        self._cutoff.release()


class _Watch:
    """One call's deadline: armed on the loop when the call starts on the worker thread; at the
    deadline it cuts the connection, unless the call was over by then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float, cutoff: Cutoff):
        self.loop = loop
        self.limit = limit
        self._cutoff = cutoff
        self._lock = threading.Lock()  # the thread's stop and the loop's expiry, one at a time
        self._over = False
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """On the worker thread, as the call starts."""
        with contextlib.suppress(RuntimeError):  # the loop has closed (exiting): nothing waits
            self.loop.call_soon_threadsafe(self._arm)

    def stop(self) -> bool:
        """On the worker thread, as the call ends: True when the deadline cut it first."""
        with self._lock:
            self._over = True
            expired = self._expired
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._disarm)
        return expired

    def _arm(self) -> None:
        if not self._over:
            self._timer = self.loop.call_later(self.limit, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self._expired = True
            self._cutoff.cut()
