"""SMTP submission: one live connection per account, reused for many messages.

The I/O edge of outgoing mail. Every aiosmtplib / ssl / socket error is mapped here to the
error tree in postroom.errors, so the sender decides retry vs dead letter by type alone. A
reply with a code goes by its code (4xx ServerBusy, else ServerRejected); everything else by
the one table ``_SMTP_ERRORS``:

    untrusted cert, TLS to a plain port  -> TLSError             (permanent)
    535 and other AUTH refusals          -> AuthError            (permanent)
    timeouts, the deadline passed        -> ServerTimeout        (transient)
    refused, reset, unreachable, DNS     -> ServerConnectError   (transient)
    what the server can't do (no AUTH)   -> ServerRejected       (permanent)

Recipients are sent one RCPT at a time so a partly refused list is known exactly (see
SendResult). A 4xx or 5xx on MAIL FROM or on DATA concerns the whole message: it is raised
(ServerBusy / ServerRejected), not folded into the result. After any raised error the
connection is closed, and the next send() connects afresh. Connecting (with STARTTLS and
AUTH) and each message's transaction each have the server's ``deadline`` as a whole, on top
of aiosmtplib's per-reply ``timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType

import aiosmtplib
import structlog

from postroom.auth import sasl
from postroom.config.model import SmtpConfig
from postroom.credentials import Credentials, Mechanism, handed_login, log_in
from postroom.errors import (
    AuthError,
    ErrorTable,
    PostroomError,
    ServerBusy,
    ServerConnectError,
    ServerRejected,
    ServerTimeout,
    TLSError,
    map_errors,
    mapped_error,
)
from postroom.timing import Timings

from .smtp_pipeline import SmtpPipeline

log = structlog.get_logger(__name__)
observe = Timings()  # each send's duration, result (ok, error) and account: the daemon's metrics

__all__ = ["SendResult", "SmtpConnection", "tls_context"]


@dataclass(frozen=True)
class SendResult:
    """What the server said about each recipient of one message."""

    accepted: list[str] = field(default_factory=list)
    refused_temporary: dict[str, str] = field(default_factory=dict)  # rcpt -> "451 4.x.x reply"
    refused_permanent: dict[str, str] = field(default_factory=dict)  # rcpt -> "550 5.1.1 reply"


def tls_context(cfg: SmtpConfig) -> ssl.SSLContext:
    """A verifying context (hostname checked) trusting cfg.ca_file, else the system store.

    The system store honours SSL_CERT_FILE / SSL_CERT_DIR.
    """
    with map_errors({OSError: TLSError}, f"cannot load CA file {cfg.ca_file}: "):  # ssl.SSLError too
        return ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)


async def _oauthbearer(smtp: aiosmtplib.SMTP, username: str, token: str) -> aiosmtplib.SMTPResponse:
    """AUTH OAUTHBEARER (RFC 7628) through aiosmtplib's public ``execute_command``, which has
    no helper for it: the initial response, and after a refusal's error challenge (334) the
    answer RFC 7628 wants before the final 535."""
    mechanism = sasl.Mechanism.OAUTHBEARER
    first = sasl.encoded(sasl.initial_response(mechanism, username, token))
    response = await smtp.execute_command(b"AUTH", mechanism.sasl_name.encode(), first.encode("ascii"))
    if response.code == aiosmtplib.SMTPStatus.auth_continue:
        response = await smtp.execute_command(sasl.encoded(sasl.challenge_answer(mechanism)).encode("ascii"))
    if response.code != aiosmtplib.SMTPStatus.auth_successful:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)
    return response


# How each login mechanism is spoken over SMTP (aiosmtplib picks AUTH PLAIN or LOGIN for a
# password; its auth_xoauth2 answers XOAUTH2's error challenge itself).
_LOGINS: Mapping[Mechanism, Callable[[aiosmtplib.SMTP, str, str], Awaitable[object]]] = {
    "password": lambda smtp, username, password: smtp.login(username, password),
    "xoauth2": lambda smtp, username, token: smtp.auth_xoauth2(username, token),
    "oauthbearer": _oauthbearer,
}


class _StaleConnection(Exception):
    """A reused connection was found dead before anything of the message was sent."""


class SmtpConnection:
    """One account's connection. Not safe for concurrent sends: use one per task."""

    def __init__(self, account: str, cfg: SmtpConfig, credentials: Credentials | None = None):
        """``credentials``: how to log in (``AccountLogins.credentials``); None: no login,
        for a server that takes us without one."""
        self.account = account
        self.cfg = cfg
        self.credentials = handed_login(account, cfg.auth_kind(), credentials)
        self._smtp: aiosmtplib.SMTP | None = None
        # After login, when the server offers PIPELINING and CHUNKING, the connection's
        # transport is driven by this instead of aiosmtplib (one round trip per message).
        self._pipe: SmtpPipeline | None = None
        self._context: ssl.SSLContext | None = None
        self.connects = 0  # how many times a connection was opened (for tests and metrics)

    async def __aenter__(self) -> SmtpConnection:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        if self._pipe is not None:
            return not self._pipe.lost
        return self._smtp is not None and self._smtp.is_connected

    @property
    def pipelined(self) -> bool:
        """Whether messages go out pipelined (BDAT) on the current connection."""
        return self._pipe is not None

    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port_or_default()}"

    async def connect(self) -> None:
        """Connect, secure the channel as configured and log in. Raises mapped errors."""
        if self.connected:
            return
        self.abort()
        cfg = self.cfg
        if cfg.security != "none" and self._context is None:
            self._context = tls_context(cfg)
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port_or_default(),
            use_tls=cfg.security == "tls",
            # Never let aiosmtplib decide: its default upgrades opportunistically and would
            # silently carry on in plaintext when STARTTLS is not offered.
            start_tls=False,
            tls_context=self._context if cfg.security == "tls" else None,
            timeout=cfg.timeout,
        )
        self._smtp = smtp
        try:
            async with self._deadline("connect and login"):
                with _mapped(self._where(), "connect"):
                    await smtp.connect()
                    self.connects += 1
                    if cfg.security == "starttls":
                        await smtp.ehlo()
                        if not smtp.supports_extension("starttls"):
                            raise TLSError(
                                f"{self._where()} does not offer STARTTLS, which the config requires; nothing was sent"
                            )
                        await smtp.starttls(tls_context=self._context, server_hostname=cfg.host)
                    credentials = self.credentials
                    if credentials is not None:
                        await self._login(smtp, credentials)
        except BaseException:
            self.abort()
            raise
        transport = smtp.transport
        if (
            smtp.supports_extension("pipelining")
            and smtp.supports_extension("chunking")
            and isinstance(transport, asyncio.Transport)
        ):
            self._pipe = SmtpPipeline(transport)
        log.debug("smtp connected", account=self.account, server=self._where(), security=cfg.security)

    async def _login(self, smtp: aiosmtplib.SMTP, credentials: Credentials) -> None:
        username = credentials.username
        await smtp.ehlo()
        if not smtp.supports_extension("auth"):
            raise AuthError(f"{self._where()} offers no AUTH; cannot log in as {username}")
        # A refused token leaves the connection usable: a renewed one is tried on it.
        await log_in(
            credentials, lambda secret: self._auth(smtp, credentials.mechanism, username, secret), account=self.account
        )

    async def _auth(self, smtp: aiosmtplib.SMTP, mechanism: Mechanism, username: str, secret: str) -> None:
        try:
            await _LOGINS[mechanism](smtp, username, secret)
        except aiosmtplib.SMTPAuthenticationError as exc:
            reply = _reply(exc)
            if 400 <= exc.code < 500:
                raise ServerBusy(f"{self._where()} AUTH as {username}: {reply}", code=exc.code) from exc
            raise AuthError(f"{self._where()} refused login as {username}: {reply}") from exc
        except aiosmtplib.SMTPResponseException:
            raise  # other replies: mapped by the caller like any command's
        except aiosmtplib.SMTPException as exc:  # e.g. no AUTH mechanism we both speak
            raise AuthError(f"{self._where()} login as {username}: {exc}") from exc

    async def close(self) -> None:
        """Say QUIT if we can (briefly), then drop the connection."""
        smtp, pipe = self._smtp, self._pipe
        try:
            if pipe is not None and not pipe.lost:
                await pipe.write(b"QUIT\r\n")
                await pipe.reply(min(self.cfg.timeout, 5.0))
            elif pipe is None and smtp is not None and smtp.is_connected:
                await smtp.quit(timeout=min(self.cfg.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass  # closing anyway; the server's opinion of our QUIT does not matter
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (after errors, on cancellation)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> SendResult:
        """Send raw as is to recipients. envelope_from "" is the null sender <>."""
        if not recipients:
            return SendResult()
        started, result = time.monotonic(), "error"
        try:
            sent = await self._send(envelope_from, recipients, raw)
            result = "ok"
            return sent
        finally:
            observe(time.monotonic() - started, result, self.account)

    async def _send(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> SendResult:
        reused = self.connected
        await self.connect()
        try:
            try:
                return await self._transaction(envelope_from, recipients, raw)
            except _StaleConnection:
                if not reused:
                    raise
                # The server closed an idle connection we meant to reuse: nothing of this
                # message went out, so one fresh connection is safe.
                self.abort()
                await self.connect()
                return await self._transaction(envelope_from, recipients, raw)
        except _StaleConnection as exc:
            self.abort()
            dropped = ServerConnectError(f"{self._where()} dropped the connection at MAIL FROM")
            raise dropped from exc.__cause__
        except BaseException:
            self.abort()
            raise

    @asynccontextmanager
    async def _deadline(self, step: str) -> AsyncIterator[None]:
        """``step`` as a whole within the server's ``deadline``: aiosmtplib's timeout bounds each
        reply, and a server dripping a byte now and then would hold a connect or a transaction
        (MAIL, every RCPT, DATA) for ever. Cut off, it is a ServerTimeout (the caller aborts)."""
        limit = self.cfg.deadline
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise  # aiosmtplib's own, already ours
            raise ServerTimeout(
                f"{self._where()} {step}: not done within its deadline ({limit:g} s); cut off"
            ) from None

    async def _transaction(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> SendResult:
        async with self._deadline("transaction"):
            return await self._exchange(envelope_from, recipients, raw)

    async def _exchange(self, envelope_from: str, recipients: Sequence[str], raw: bytes) -> SendResult:
        smtp = self._smtp
        if smtp is None:
            raise ServerConnectError(f"{self._where()}: not connected")
        where = self._where()
        mail_options, encoding = _mail_options(smtp, envelope_from, recipients, raw, where)
        if self._pipe is not None:
            return await self._pipelined(self._pipe, envelope_from, recipients, raw, mail_options, encoding)
        try:
            await smtp.mail(envelope_from, options=mail_options, encoding=encoding)
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise _StaleConnection() from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            raise _reply_error(exc, where, f"MAIL FROM:<{envelope_from}>") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _map(exc, where, "MAIL FROM") from exc

        accepted: list[str] = []
        temporary: dict[str, str] = {}
        permanent: dict[str, str] = {}
        with _mapped(where, "RCPT TO"):
            for rcpt in recipients:
                try:
                    await smtp.rcpt(rcpt, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code == 421:  # the server is closing the connection
                        raise _reply_error(exc, where, f"RCPT TO:<{rcpt}>") from exc
                    bucket = temporary if 400 <= exc.code < 500 else permanent
                    bucket[rcpt] = _reply(exc)
                else:
                    accepted.append(rcpt)
            if not accepted:
                await smtp.rset()
                return SendResult([], temporary, permanent)
        try:
            await smtp.data(raw)
        except aiosmtplib.SMTPDataError as exc:
            raise _reply_error(exc, where, "DATA") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _map(exc, where, "DATA") from exc
        return SendResult(accepted, temporary, permanent)

    async def _pipelined(
        self,
        pipe: SmtpPipeline,
        envelope_from: str,
        recipients: Sequence[str],
        raw: bytes,
        mail_options: list[str],
        encoding: str,
    ) -> SendResult:
        """The same transaction as the one-command-at-a-time path, in one write: MAIL FROM,
        each RCPT TO, BDAT LAST with the message; then the replies, read in that order."""
        where, timeout = self._where(), self.cfg.timeout
        mail = " ".join([f"MAIL FROM:<{_envelope_address(envelope_from)}>", *mail_options])
        commands = [mail, *(f"RCPT TO:<{_envelope_address(r)}>" for r in recipients), f"BDAT {len(raw)} LAST"]
        head = "\r\n".join(commands).encode(encoding) + b"\r\n"
        with _mapped(where, "MAIL FROM"):
            try:
                await pipe.write(head + raw)
                code, text = await pipe.reply(timeout)
            except ConnectionError as exc:
                # No reply even to MAIL FROM: the server had dropped the (idle) connection
                # before reading any of it, so nothing of this message went out.
                raise _StaleConnection() from exc
        if code >= 400:
            raise _refusal(code, text, where, f"MAIL FROM:<{envelope_from}>")
        accepted: list[str] = []
        temporary: dict[str, str] = {}
        permanent: dict[str, str] = {}
        with _mapped(where, "RCPT TO"):
            for rcpt in recipients:
                code, text = await pipe.reply(timeout)
                if code == 421:  # the server is closing the connection
                    raise _refusal(code, text, where, f"RCPT TO:<{rcpt}>")
                if code < 400:
                    accepted.append(rcpt)
                else:
                    (temporary if code < 500 else permanent)[rcpt] = f"{code} {text}".strip()
        with _mapped(where, "DATA"):
            code, text = await pipe.reply(timeout)
        if not accepted:
            return SendResult([], temporary, permanent)  # the server refused the chunk: nothing sent
        if code >= 400:
            raise _refusal(code, text, where, "DATA")
        return SendResult(accepted, temporary, permanent)


def _envelope_address(address: str) -> str:
    """The addr-spec of an outbox recipient (which may carry a display name), as aiosmtplib
    would put it on the command line; no CR/LF can get through."""
    if "<" in address or " " in address:
        address = email.utils.parseaddr(address)[1] or address.strip()
    if any(c in address for c in "\r\n\0<>"):
        raise ValueError(f"address can't go on an SMTP command line: {address!r}")
    return address


def _mail_options(
    smtp: aiosmtplib.SMTP, envelope_from: str, recipients: Sequence[str], raw: bytes, where: str
) -> tuple[list[str], str]:
    """MAIL FROM parameters the message needs: 8BITMIME for 8-bit bodies, SMTPUTF8 for
    non-ASCII addresses (refused for good when the server lacks it)."""
    options: list[str] = []
    encoding = "ascii"
    if not raw.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (envelope_from, *recipients)):
        if not smtp.supports_extension("smtputf8"):
            raise ServerRejected(f"{where} lacks SMTPUTF8, needed for a non-ASCII address")
        options.append("SMTPUTF8")
        encoding = "utf-8"
    return options, encoding


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def _reply_error(exc: aiosmtplib.SMTPResponseException, where: str, step: str) -> PostroomError:
    return _refusal(exc.code, exc.message, where, step)


def _refusal(code: int, message: str, where: str, step: str) -> PostroomError:
    text = f"{where} refused {step}: {f'{code} {message}'.strip()}"
    if 400 <= code < 500:
        return ServerBusy(text, code=code)
    return ServerRejected(text, code=code)


# aiosmtplib's and the socket's errors, read in order (a subclass before its base). The first
# row is looked up on the ssl error found in the chain: aiosmtplib wraps it in SMTPConnectError.
_SMTP_ERRORS: ErrorTable = {
    ssl.SSLError: TLSError,  # untrusted or mismatched certificate, TLS spoken to a plain port
    aiosmtplib.SMTPAuthenticationError: AuthError,
    TimeoutError: ServerTimeout,  # aiosmtplib's timeouts are TimeoutErrors (a connect one too)
    OSError: ServerConnectError,  # refused, reset, unreachable, DNS; SMTPServerDisconnected
    # aiosmtplib's plain SMTPException means "the server can't do what we asked" (no AUTH
    # mechanism we share, SMTPNotSupported ...): retrying will not change it.
    aiosmtplib.SMTPException: ServerRejected,
}


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):  # ssl.CertificateError is one too
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _map(exc: BaseException, where: str, step: str) -> PostroomError:
    """One low-level error -> ours: a reply by its code, the rest by ``_SMTP_ERRORS``."""
    if isinstance(exc, PostroomError):
        return exc
    tls = _tls_cause(exc)
    if tls is not None:
        ours = mapped_error(tls, _SMTP_ERRORS, f"{where} TLS failed at {step}: ")
    elif isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _reply_error(exc, where, step)
    else:
        ours = mapped_error(exc, _SMTP_ERRORS, f"{where} {step}: ")
    if ours is None:
        raise TypeError(f"unmapped error {exc!r}")  # callers only pass aiosmtplib/OS errors
    return ours


@contextmanager
def _mapped(where: str, step: str) -> Iterator[None]:
    """Map aiosmtplib/ssl/OS errors raised inside to ours; ours pass through untouched."""
    try:
        yield
    except (PostroomError, _StaleConnection):
        raise  # ServerConnectError is also an OSError: never map ours twice
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _map(exc, where, step) from exc
