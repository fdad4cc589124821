"""sd_notify without a dependency: tell systemd (Type=notify) what the daemon is doing.

The protocol is one datagram of newline-separated KEY=VALUE lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET ('@' at the start means the abstract namespace). With no socket (not
under systemd, or in Docker) every call is a no-op, so the daemon calls these unconditionally.

Watchdog pings are sent by `watchdog_loop` *from the event loop*: if the loop blocks, pings
stop and systemd restarts the service — which is the point of WatchdogSec=.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

from .retry import sleep_or_stop

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages. ``socket_path=None`` reads $NOTIFY_SOCKET; ``""`` disables."""

    def __init__(self, socket_path: str | None = None, *, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._address: str | None = _socket_address(path)
        self._env = env
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete."""
        return self._send("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        """Free-form line shown by `systemctl status`."""
        return self._send(*_status_line(text))

    def reloading(self) -> bool:
        """A reload began; send `ready()` when it is done.

        MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253) and harmless before.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self._send("STOPPING=1", *_status_line(status))

    def watchdog(self) -> bool:
        return self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds systemd waits between pings before it kills us, or None when no watchdog.

        WATCHDOG_PID, when set, names the process meant to ping; another process must not.
        """
        raw = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        if not raw or not self.enabled:
            return None
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(raw)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC", value=raw)
            return None
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, *lines: str) -> bool:
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full queue: a lost ping is followed by the
                # next one at half the interval; a blocked loop would miss them all.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:  # once: a gone socket would otherwise log on every ping
                log.warning("sd_notify failed", error=str(exc), message=lines[0])
                self._warned = True
            return False
        return True


def _status_line(status: str | None) -> list[str]:
    # A newline would start a new KEY=VALUE line: keep STATUS one line.
    return [f"STATUS={' '.join(status.split())}"] if status else []


def _socket_address(path: str) -> str | None:
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # e.g. "vsock:..." (systemd >= 254 in VMs): not something a service on a host gets.
    log.warning("unsupported NOTIFY_SOCKET, notifications disabled", socket=path)
    return None


async def watchdog_loop(notifier: Notifier, stop: asyncio.Event) -> None:
    """Ping the watchdog at half its interval until `stop` is set; returns at once if none."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    period = interval / 2
    while not stop.is_set():
        notifier.watchdog()
        await sleep_or_stop(stop, period)
