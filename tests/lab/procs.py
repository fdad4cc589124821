"""Process and socket helpers for the lab: liveness from /proc, stopping, waiting for greetings.

In a container, exited children of a vanished parent can linger as zombies that `kill -0`
still reports alive, so liveness is judged from /proc/PID/stat.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path


class LabError(RuntimeError):
    """The lab could not start, stop or do what a test asked."""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def is_running(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes in process group pgid (servers' children share their master's group)."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def terminate_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM a server master (a session leader) and wait until its whole group is gone.

    Children hold the listening sockets too; a port only closes when the last one exits.
    """
    _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(pgid):
            _reap(pgid)
        else:
            left = group_members(pgid)
            if not left:
                return
            for pid in left:
                _signal(pid, signal.SIGTERM)
        time.sleep(0.02)
    for pid in [pgid, *group_members(pgid)]:
        _signal(pid, signal.SIGKILL)
    _reap(pgid)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if pid is our child; otherwise nothing to do."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_greeting(port: int, prefix: bytes, tls: ssl.SSLContext | None = None) -> bool:
    """True if a server on port answers with a first line starting with prefix."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return False
    try:
        if tls:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        with sock.makefile("rb") as stream:
            line = stream.readline(512)
    except OSError:  # ssl.SSLError is an OSError
        return False
    finally:
        sock.close()
    return line.startswith(prefix)


def wait_until(ready: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> bool:
    """Poll ready() until it holds; give up early if alive() says the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(0.02)
    return ready()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log {path})"
