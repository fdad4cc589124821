"""A real-socket IMAP server for the faults the lab's Dovecot can't be made to produce: no
STARTTLS offered, no UIDNEXT or UIDVALIDITY in a SELECT reply, a reply that breaks off inside
a literal, a BYE in the middle of a FETCH. Plaintext, loopback, one connection at a time, as many in a
row as the client opens (a watcher reconnects); each command line goes to ``answer(tag,
command)``, which returns the bytes to send back, ``(bytes, True)`` to send them and then
close, or None to close at once. The lines received are kept in ``lines`` so a test can check
what was sent; ``connections`` counts the connections accepted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Answer = Callable[[bytes, bytes], "bytes | tuple[bytes, bool] | None"]


@dataclass
class ScriptedImap:
    port: int
    lines: list[bytes] = field(default_factory=list)
    connections: int = 0


def capability(tag: bytes, caps: bytes = b"IMAP4rev1") -> bytes:
    return b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n"


@contextlib.contextmanager
def scripted_imap(answer: Answer, greeting: bytes = b"* OK scripted\r\n") -> Iterator[ScriptedImap]:
    server = socket.create_server(("127.0.0.1", 0))
    scripted = ScriptedImap(server.getsockname()[1])

    closing = threading.Event()
    server.settimeout(0.1)  # look at ``closing`` between accepts

    def converse(conn: socket.socket) -> None:
        with conn:
            conn.sendall(greeting)
            conn.settimeout(5)
            try:
                for line in conn.makefile("rb"):
                    scripted.lines.append(line)
                    tag, _, command = line.strip().partition(b" ")
                    reply = answer(tag, command)
                    data, close = reply if isinstance(reply, tuple) else (reply, reply is None)
                    if data:
                        conn.sendall(data)
                    if close:
                        return
            except OSError:
                pass  # the client went away: the test says what that means

    def serve() -> None:
        while not closing.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            scripted.connections += 1
            converse(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        closing.set()
        thread.join(5)
        server.close()
