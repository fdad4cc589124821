"""A real-socket SMTP server (aiosmtpd) for the faults the lab's Postfix can't be made to produce:
no STARTTLS offered, implicit TLS, a 451 on one RCPT then success, a 554 at DATA, a DATA that
never answers (and ``dripping_smtp``, a raw-socket one that answers a byte at a time). It runs
in the test's own event loop on an ephemeral port, and records what
it got so tests can check that nothing was sent.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from postroom.config.model import SmtpConfig

from tests.lab.tls import ensure_certificates
from tests.support.scripted_imap import Drip, Reply, ScriptedImap, scripted_imap


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class FaultyHandler:
    """Accepts everything except the faults it is told about."""

    # rcpt -> replies to give, in order, before accepting it (e.g. ["451 4.3.0 try later"])
    rcpt_faults: dict[str, list[str]] = field(default_factory=dict)
    data_reply: str | None = None  # e.g. "554 5.6.0 content rejected"
    data_gate: asyncio.Event | None = None  # DATA waits for this (to hold a send in flight)
    data_started: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    mail_froms: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.mail_froms.append(address)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        pending = self.rcpt_faults.get(address)
        if pending:
            return pending.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        if self.data_gate is not None:
            await self.data_gate.wait()
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 2.0.0 queued"


@asynccontextmanager
async def fake_smtp(
    handler: FaultyHandler,
    *,
    implicit_tls: ssl.SSLContext | None = None,
    starttls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[int]:
    """Serve handler on host (ephemeral port, yielded) until the block ends."""
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        handler.sessions += 1
        kwargs: dict[str, Any] = {"hostname": "fake.test", "loop": loop}
        if starttls is not None:
            kwargs["tls_context"] = starttls
        return SMTP(handler, **kwargs)

    server = await loop.create_server(session, host, 0, ssl=implicit_tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if handler.data_gate is not None:
            handler.data_gate.set()  # let a held DATA finish so the server can close
        await server.wait_closed()


@contextmanager
def dripping_smtp(*, greeting_every: float = 0.0, reply_every: float = 0.0) -> Iterator[ScriptedImap]:
    """A plaintext SMTP server (one connection, the scripted IMAP server's machinery) that says
    yes to everything, slowly: the greeting and/or every reply after EHLO a byte at a time,
    ``*_every`` seconds apart (0: at once). Each reply is whole well within a per-reply
    timeout; only a deadline for the whole exchange notices."""
    in_data = False

    def slow(reply: bytes, every: float) -> Reply:
        return Drip(reply, every) if every else reply

    def answer(verb: bytes, rest: bytes) -> Reply | tuple[Reply, bool] | None:
        nonlocal in_data
        if in_data:
            if verb == b"." and not rest:
                in_data = False
                return slow(b"250 2.0.0 queued\r\n", reply_every)
            return b""
        command = verb.upper()
        if command in (b"EHLO", b"HELO"):
            return b"250-fake.test\r\n250 8BITMIME\r\n"
        if command == b"DATA":
            in_data = True
            return slow(b"354 go ahead\r\n", reply_every)
        if command == b"QUIT":
            return b"221 bye\r\n", True
        return slow(b"250 OK\r\n", reply_every)

    greeting = slow(b"220 fake.test ESMTP, slowly\r\n", greeting_every)
    with scripted_imap(answer, greeting) as server:
        yield server


# -- helpers shared by the SMTP and sender tests ---------------------------------------------


def make_raw(sender: str, to: list[str], subject: str, *, message_id: str | None = None) -> tuple[str, bytes]:
    """A small message and its Message-ID."""
    message = EmailMessage(policy=email.policy.SMTP)
    message_id = message_id or email.utils.make_msgid(domain="postroom.test")
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(f"{subject}\n")
    return message_id, message.as_bytes()


def message_ids(raws: list[bytes]) -> list[str]:
    return [str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]) for raw in raws]


def lab_smtp(lab: Any, user: str, **overrides: Any) -> SmtpConfig:
    """SMTP settings for a lab user: the lab's Postfix port, STARTTLS, AUTH, the lab CA."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": lab.ports.smtp,
        "security": "starttls",
        "username": lab.address(user),
        "password": lab.password(user),
        "ca_file": lab.ca_file,
        "timeout": 10,
    }
    values.update(overrides)
    return SmtpConfig(**values)


def server_tls(lab: Any) -> ssl.SSLContext:
    """A server-side context with the lab's certificate (trusted through lab.ca_file)."""
    certs = ensure_certificates(lab.ca_file.parent)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    return context


def plain_smtp(port: int, **overrides: Any) -> SmtpConfig:
    """SMTP settings for a fake server on 127.0.0.1:port."""
    return SmtpConfig(**{"host": "127.0.0.1", "port": port, "timeout": 10, **overrides})
