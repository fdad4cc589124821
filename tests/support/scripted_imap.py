"""A real-socket IMAP server for the faults the lab's Dovecot can't be made to produce: no
STARTTLS offered, no UIDNEXT or UIDVALIDITY in a SELECT reply, a reply that breaks off inside
a literal, a BYE in the middle of a FETCH, a server that drips. Plaintext, loopback, one
connection at a time, as many in a row as the client opens (a watcher reconnects); each
command line goes to ``answer(tag, command)``, which returns the bytes to send back, ``(bytes,
True)`` to send them and then close, or None to close at once. The lines received are kept in
``lines`` so a test can check what was sent; ``connections`` counts the connections accepted.
Bytes given as ``Drip`` (an answer, or the greeting) go out one at a time, ``every`` seconds
apart: each read of the client is quick, the reply takes ``len(data) * every`` seconds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Drip:
    """Bytes a server sends one at a time, ``every`` seconds apart."""

    data: bytes
    every: float = 0.1


Reply = bytes | Drip
Answer = Callable[[bytes, bytes], "Reply | tuple[Reply, bool] | None"]


@dataclass
class ScriptedImap:
    port: int
    lines: list[bytes] = field(default_factory=list)
    connections: int = 0
    done: threading.Event = field(default_factory=threading.Event)  # the test is over: stop dripping
    connected: threading.Event = field(default_factory=threading.Event)  # a client came
    closed: threading.Event = field(default_factory=threading.Event)  # the connection is over

    def send(self, conn: socket.socket, data: Reply) -> None:
        if isinstance(data, bytes):
            conn.sendall(data)
            return
        for byte in data.data:
            if self.done.wait(data.every):
                raise ConnectionAbortedError("the test is over")
            conn.sendall(bytes([byte]))


def capability(tag: bytes, caps: bytes = b"IMAP4rev1") -> bytes:
    return b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n"


@contextlib.contextmanager
def scripted_imap(answer: Answer, greeting: Reply = b"* OK scripted\r\n") -> Iterator[ScriptedImap]:
    server = socket.create_server(("127.0.0.1", 0))
    scripted = ScriptedImap(server.getsockname()[1])

    server.settimeout(0.1)  # look at ``done`` between accepts

    def converse(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                scripted.send(conn, greeting)
                for line in conn.makefile("rb"):
                    scripted.lines.append(line)
                    tag, _, command = line.strip().partition(b" ")
                    reply = answer(tag, command)
                    data, close = reply if isinstance(reply, tuple) else (reply, reply is None)
                    if data:
                        scripted.send(conn, data)
                    if close:
                        return
            except OSError:
                pass  # the client went away: the test says what that means
            finally:
                scripted.closed.set()

    def serve() -> None:
        while not scripted.done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            scripted.connections += 1
            scripted.connected.set()
            converse(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        scripted.done.set()
        thread.join(5)
        server.close()
