"""The POP3 edge: stdlib poplib on one dedicated thread per connection.

There is no maintained async POP3 client; poplib blocks, so each connection owns a single
worker thread (``threaded.ThreadedConnection``). Errors are mapped to ``postroom.errors`` by
one table here (``POP3_ERRORS``). DELE only marks a message; the server removes it when QUIT
commits the session, so ``close`` drops the socket without QUIT and ``quit`` commits.
A login is USER/PASS, or for an OAuth2 account AUTH XOAUTH2 / OAUTHBEARER (RFC 5034), which
poplib lacks: ``sasl_login`` speaks it.
"""

from __future__ import annotations

import contextlib
import poplib
import socket
import ssl
from collections.abc import Callable, Mapping

import structlog

from postroom.auth import sasl
from postroom.config.model import Pop3Config
from postroom.credentials import Mechanism
from postroom.errors import (
    AuthError,
    ErrorTable,
    PostroomError,
    ServerConnectError,
    ServerRejected,
    ServerTimeout,
    TLSError,
    tls_hint,
)
from postroom.incoming.cutoff import Cutoff
from postroom.incoming.threaded import Login, ThreadedConnection, map_server_error

log = structlog.get_logger(__name__)


class LoginRefused(poplib.error_proto):
    """poplib's -ERR to USER/PASS (or AUTH): told apart so the table can call it an AuthError."""


# poplib's and the socket's errors as ours, read in order (a subclass before its base).
POP3_ERRORS: ErrorTable = {
    ssl.SSLCertVerificationError: TLSError,
    TimeoutError: ServerTimeout,
    OSError: ServerConnectError,
    EOFError: ServerConnectError,
    LoginRefused: AuthError,
    poplib.error_proto: ServerRejected,
}
# RFC 2449/3206 response codes that mean "not now" (another session holds the maildrop, the
# server is short of something): the refusal is ServerBusy, tried again soon.
POP3_BUSY_CODES = ("[IN-USE]", "[SYS/TEMP]")


def map_pop3_error(exc: BaseException, where: str) -> PostroomError:
    """One low-level POP3/socket/TLS error as ours. ``where`` names the server and step."""
    if isinstance(exc, poplib.error_proto) and exc.args and exc.args[0] in _POPLIB_EOF:
        # poplib reports a connection closed under it as if the server had said -ERR
        exc = EOFError(f"connection closed by the server ({exc.args[0]!r})")
    return map_server_error(exc, where, POP3_ERRORS, POP3_BUSY_CODES)


_POPLIB_EOF = ("-ERR EOF", b"-ERR EOF")


def _user_pass(pop: poplib.POP3, username: str, password: str) -> None:
    pop.user(username)
    pop.pass_(password)


# RFC 5034 §4: an AUTH command line with its initial response must fit in 255 octets, CRLF
# included; a longer one (a Microsoft access token is about 1.5 KB) goes in the two-step form
# instead: ``AUTH XOAUTH2``, the server's empty "+ ", then the response on a line of its own.
INITIAL_RESPONSE_MAX = 255
_MAX_LINE = 2048


def _command(pop: poplib.POP3, line: bytes) -> bytes:
    """Send one line and read one reply line, over the socket poplib opened and secured.

    poplib has no SASL and no public call for a raw command: this writes to and reads from
    its public ``sock`` and ``file`` attributes (replaced by ``stls`` with the TLS ones), the
    one place postroom does so. A reply line longer than poplib's own limit (2048) is cut there."""
    pop.sock.sendall(line + b"\r\n")
    reply = pop.file.readline(_MAX_LINE + 1)
    if not reply:
        raise EOFError("connection closed by the server during AUTH")
    return reply.rstrip(b"\r\n")


def sasl_login(
    pop: poplib.POP3,
    mechanism: sasl.Mechanism,
    username: str,
    token: str,
    *,
    initial_response_max: int = INITIAL_RESPONSE_MAX,
) -> None:
    """AUTH XOAUTH2 / OAUTHBEARER (RFC 5034): the initial response on the AUTH line, or the
    two-step form when that line would be too long. A refused token first gets a base64 JSON
    error challenge ("+ eyJ…"), answered as the mechanism wants, before the final -ERR."""
    response = sasl.encoded(sasl.initial_response(mechanism, username, token)).encode("ascii")
    command = b"AUTH " + mechanism.sasl_name.encode("ascii")
    if len(command) + 1 + len(response) + 2 <= initial_response_max:
        reply = _command(pop, command + b" " + response)
    else:
        reply = _command(pop, command)
        if reply.startswith(b"+"):
            reply = _command(pop, response)
    if reply.startswith(b"+ ") or reply == b"+":  # the error challenge: answer, then the -ERR comes
        reply = _command(pop, sasl.encoded(sasl.challenge_answer(mechanism)).encode("ascii"))
    if not reply.startswith(b"+OK"):
        raise poplib.error_proto(reply)


# How each login mechanism is spoken over POP3.
_LOGINS: Mapping[Mechanism, Callable[[poplib.POP3, str, str], None]] = {
    "password": _user_pass,
    "xoauth2": lambda pop, username, token: sasl_login(pop, sasl.Mechanism.XOAUTH2, username, token),
    "oauthbearer": lambda pop, username, token: sasl_login(pop, sasl.Mechanism.OAUTHBEARER, username, token),
}


def _login(pop: poplib.POP3, login: Login) -> None:
    try:
        _LOGINS[login.mechanism](pop, login.username, login.secret)
    except poplib.error_proto as exc:
        raise LoginRefused(*exc.args) from exc


class Pop3Connection(ThreadedConnection[poplib.POP3, Pop3Config]):
    protocol = "pop3"
    errors = POP3_ERRORS
    busy_codes = POP3_BUSY_CODES
    # closing must not say QUIT: QUIT commits the DELEs of the session
    says_goodbye = False

    def _map_error(self, exc: BaseException, where: str) -> PostroomError:
        return map_pop3_error(exc, where)

    def _open(self, login: Login | None) -> poplib.POP3:
        cfg = self.cfg
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        host, port = cfg.host, cfg.port_or_default()
        pop = _Pop3(self._cutoff, host, port, cfg.timeout, context if cfg.security == "tls" else None)
        try:
            if cfg.security == "starttls":
                self._stls(pop, context)
            if login is not None:
                _login(pop, login)
        except BaseException:
            _close_quietly(pop)
            raise
        return pop

    def _opened(self, client: poplib.POP3) -> None:
        cfg = self.cfg
        log.info(
            "pop3 connected", account=self.account, host=cfg.host, port=cfg.port_or_default(), security=cfg.security
        )

    def _drop(self, client: poplib.POP3) -> None:
        _close_quietly(client)

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
            raise TLSError(f"{self._where}: STLS failed: {exc}{tls_hint(exc)}") from exc

    async def uidl(self) -> dict[str, int]:
        """UIDL -> message number, for every message in the maildrop."""
        return await self._run("uidl", self._uidl)

    def _uidl(self) -> dict[str, int]:
        _, lines, _ = self._c().uidl()
        found: dict[str, int] = {}
        for line in lines:
            num, _, uidl = line.decode("ascii", "replace").partition(" ")
            found[uidl.strip()] = int(num)
        return found

    async def retr(self, num: int) -> bytes:
        return await self._run(f"retr {num}", self._retr, num)

    def _retr(self, num: int) -> bytes:
        _, lines, _ = self._c().retr(num)
        return b"\r\n".join(lines) + b"\r\n"

    async def dele(self, num: int) -> None:
        await self._run(f"dele {num}", lambda: self._c().dele(num))

    async def quit(self) -> None:
        """QUIT commits DELEs. Raises (mapped) if the server did not confirm."""
        pop, self._client = self._client, None
        await self._end(pop, "quit", poplib.POP3.quit, deadline=self.cfg.deadline)


class _Pop3(poplib.POP3):
    """poplib over a connection a ``Cutoff`` opened (implicit TLS when ``context``), so the
    deadline watchdog and a stop can cut it from the event loop (``threaded``)."""

    def __init__(self, cutoff: Cutoff, host: str, port: int, timeout: float, context: ssl.SSLContext | None) -> None:
        self._cutoff, self._context = cutoff, context
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        # poplib's one seam for the socket it talks over (POP3_SSL overrides it too)
        return self._cutoff.connect(self.host, self.port, timeout, self._context)


def _close_quietly(pop: poplib.POP3) -> None:
    with contextlib.suppress(Exception):  # closing: the server may be gone already
        pop.close()
