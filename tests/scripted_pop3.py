"""A real-socket POP3 server for the faults the lab's Dovecot can't be made to produce: a
maildrop another session holds ([IN-USE]), a server short of something ([SYS/TEMP]).
Plaintext, loopback, one connection; each command line goes to ``answer(command)``, which
returns the bytes to send back, or None to close at once. The lines received are kept in
``lines`` so a test can check what was sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Answer = Callable[[bytes], "bytes | None"]


@dataclass
class ScriptedPop3:
    port: int
    lines: list[bytes] = field(default_factory=list)


@contextlib.contextmanager
def scripted_pop3(answer: Answer, greeting: bytes = b"+OK scripted\r\n") -> Iterator[ScriptedPop3]:
    server = socket.create_server(("127.0.0.1", 0))
    scripted = ScriptedPop3(server.getsockname()[1])

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(greeting)
            conn.settimeout(5)
            try:
                for line in conn.makefile("rb"):
                    scripted.lines.append(line)
                    reply = answer(line.strip())
                    if reply is None:
                        return
                    conn.sendall(reply)
            except OSError:
                pass  # the client went away: the test says what that means

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        thread.join(5)
        server.close()
