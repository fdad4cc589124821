"""Who holds a TCP port on this machine, for the error when ours is taken: read from /proc
(Linux), bounded, and only as far as this process may look (another user's process is found
only when running as root). Anything unreadable means "not known", never an error."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
MAX_PROCESSES = 4096  # processes looked through for the socket; a busy host stops here
MAX_FDS = 4096  # open files looked at per process
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """The socket inodes listening on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines[:65536]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                found.add(fields[9])
    return found


def port_holder(port: int, proc: Path = PROC) -> str | None:
    """ "pid 1234 (postroom)" for the process listening on ``port``, or None when not known."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        pids = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()][:MAX_PROCESSES]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = [entry.path for entry in os.scandir(proc / pid / "fd")][:MAX_FDS]
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return f"pid {pid} ({_command(proc / pid)})"
            except OSError:
                continue
    return None


def _command(process: Path) -> str:
    try:
        argv = (process / "cmdline").read_bytes()[:500].split(b"\0")
        shown = " ".join(part.decode("utf-8", "replace") for part in argv if part)
        return shown[:120] or (process / "comm").read_text().strip()
    except OSError:
        return "?"
