"""A real TCP forwarder in front of the machine's PostgreSQL, which a test can cut or stall.

The shared PostgreSQL must never be stopped by a test, so an outage is made between the
daemons and it: `cut()` drops every open connection and refuses new ones (PostgreSQL down),
`stall()` keeps accepting but forwards nothing either way (a store that hangs), `restore()`
forwards again. Threads, not asyncio: the test's own code stays synchronous.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

FORWARD, CUT, STALL = "forward", "cut", "stall"


class TcpProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        self.mode = FORWARD
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (on 127.0.0.1:5432) pointed at this proxy."""
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def cut(self) -> None:
        self.mode = CUT
        self._drop_all()

    def stall(self) -> None:
        self.mode = STALL

    def restore(self) -> None:
        self.mode = FORWARD

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == CUT:
                client.close()  # as a stopped server: the connection ends at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            for ready in self._readable(client, upstream):
                data = ready.recv(65536)
                if not data:
                    return
                peers[ready].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with self._lock:
                    self._open.discard(sock)
                sock.close()

    def _readable(self, *socks: socket.socket) -> Iterator[socket.socket]:
        while not self._closed:
            if self.mode == STALL:  # hold everything: neither side hears from the other
                threading.Event().wait(0.1)
                continue
            if any(s.fileno() < 0 for s in socks):
                return
            ready, _, _ = select.select(socks, [], [], 0.2)
            yield from ready
