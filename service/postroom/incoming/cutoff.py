"""Cutting a blocking client's connection from another thread.

imaplib and poplib block in ``recv`` on their worker thread, and a socket timeout bounds each
read, not a command: a server that drips a byte every few seconds keeps one going for ever.
Only the connection itself can end such a read from outside, and ``shutdown(SHUT_RDWR)`` does:
the blocked ``recv`` returns at once (EOF, or an error over TLS) on any thread.

``Cutoff`` opens a client's TCP connection (``connect``, called from the client's socket
factory) and keeps a duplicate of it: the same connection under a descriptor of our own, which
stays valid whatever the client does to its socket (a TLS wrap moves the descriptor into a new
object; closing the client closes only its own descriptor). ``cut`` shuts that connection down
from any thread: the per-command watchdog at a deadline, and a stop.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from postroom.errors import ServerConnectError


class Cutoff:
    """The connections one client opened, and the switch that ends them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        self._cut = False  # this connection is cut: a socket opened now is cut at once
        self._closed = False  # for good (stop, close): no new connection may be opened

    def connect(
        self, host: str, port: int, timeout: float | None, context: ssl.SSLContext | None = None
    ) -> socket.socket:
        """A TCP connection (``timeout`` bounds the connect, then each read), held before its
        TLS handshake (when ``context``) so a cut ends a handshake that drips too."""
        sock = socket.create_connection((host, port), timeout)
        try:
            self._hold(sock)
            return context.wrap_socket(sock, server_hostname=host) if context is not None else sock
        except BaseException:
            sock.close()
            raise

    def _hold(self, sock: socket.socket) -> None:
        with self._lock:
            self._held.append(sock.dup())
            if self._cut or self._closed:  # cut while the connect was under way
                _shut(self._held[-1])

    def reset(self) -> None:
        """Before a new connection of the same client: forget the old one (worker thread)."""
        with self._lock:
            if self._closed:
                raise ServerConnectError("the connection is closing; no new one is opened")
            held, self._held, self._cut = self._held, [], False
        for sock in held:
            sock.close()

    def cut(self, *, for_good: bool = False) -> None:
        """Shut the connection down now (any thread): a read blocked on it returns at once.
        ``for_good``: and refuse any new one (stop, close)."""
        with self._lock:
            self._cut = True
            self._closed = self._closed or for_good
            for sock in self._held:
                _shut(sock)

    def release(self) -> None:
        """Close our duplicates (after the client is done with the connection)."""
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut, or the peer is gone: either way it's over
        sock.shutdown(socket.SHUT_RDWR)
