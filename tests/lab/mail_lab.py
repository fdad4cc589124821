"""MailLab: a real Dovecot (IMAP, POP3, LMTP) and Postfix (SMTP) on 127.0.0.1, for tests.

Everything lives under one root directory: configs, TLS files, queue, Maildirs, logs. The
servers run as root without systemd, from their own config files; nothing under /etc is
touched and nothing leaves the machine (mail for other domains is discarded).
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from imapclient import IMAPClient

from tests.lab import config
from tests.lab.config import AUTO_FOLDERS, DOMAIN, LabLayout, LabPorts
from tests.lab.maildir import ensure_folder, extra_folders, make_owned_dirs, write_messages
from tests.lab.procs import (
    LabError,
    is_running,
    log_tail,
    port_in_use,
    read_greeting,
    terminate_group,
    wait_until,
)
from tests.lab.tls import LabCertificates, ensure_certificates

DEFAULT_USERS = {name: f"{name}-pw" for name in ("alice", "bob", "carol", "dave")}
ENVELOPE_SENDER = f"lab@{DOMAIN}"
START_TIMEOUT = 15.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; leave room for the socket names


class MailLab:
    """One lab instance. Use as a context manager, or start()/stop() it yourself."""

    def __init__(self, root: Path, ports: LabPorts | None = None, users: dict[str, str] | None = None) -> None:
        self.root = Path(root).absolute()
        self.ports = ports or LabPorts()
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.layout = LabLayout(self.root)
        self._certs: LabCertificates | None = None

    # -- files ---------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def pids_file(self) -> Path:
        return self.root / "pids"

    def prepare(self) -> None:
        """Create directories, TLS files and configs. Safe to call again."""
        self._check_root()
        layout = self.layout
        for path in (layout.log_dir, layout.dovecot_conf.parent, layout.postfix_etc, layout.postfix_queue):
            path.mkdir(parents=True, exist_ok=True)
        (layout.root / "dovecot" / "state").mkdir(exist_ok=True)
        make_owned_dirs(layout.mail_dir)
        self._certs = ensure_certificates(self.root / "tls")
        cert, key = self._certs.cert_file, self._certs.key_file
        layout.dovecot_conf.write_text(config.dovecot_conf(layout, self.ports, cert, key, self.dovecot_auth()))
        (layout.postfix_etc / "main.cf").write_text(config.postfix_main_cf(layout, self.ports, cert, key))
        (layout.postfix_etc / "master.cf").write_text(config.postfix_master_cf(self.ports))
        self._write_user_files()
        (self.root / "lab.json").write_text(
            json.dumps({"ports": self.ports.as_dict(), "users": sorted(self.users)}, indent=2)
        )

    def dovecot_auth(self) -> config.DovecotAuth:
        """How Dovecot authenticates: passwords here; OAuth2Lab adds bearer tokens."""
        return config.DovecotAuth()

    def _check_root(self) -> None:
        # Dovecot's mail processes (uid 8) and Postfix's (uid postfix) must reach the root.
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for parent in self.root.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise LabError(f"{parent} is not searchable by other users; the mail uid can't reach {self.root}")
        if len(str(self.layout.run_dir / "auth-postfix")) > SOCKET_PATH_MAX:
            raise LabError(f"lab root {self.root} is too long for unix socket paths; use a shorter one")

    def _write_user_files(self) -> None:
        self.layout.passwd_file.write_text(config.passwd_file(self.users))
        self.layout.vmailbox_file.write_text(config.vmailbox_map(self.users))
        self.layout.transport_file.write_text(config.transport_map())
        self.layout.recipient_access_file.write_text(config.dead_domain_access())
        for user in self.users:
            ensure_folder(self.layout.maildir(user), "INBOX")
        # Postfix waits ~2 s at start when main.cf or a map is younger than ~2 s.
        past = time.time() - 60
        for name in ("main.cf", "master.cf", "vmailbox", "transport", "recipient_access"):
            os.utime(self.layout.postfix_etc / name, (past, past))

    def add_user(self, user: str, password: str) -> None:
        """Add (or re-password) a user in Dovecot and Postfix; works while running."""
        self.users[user] = password
        self._write_user_files()
        if self.postfix_running():
            # `postfix reload` returns before old smtpd processes (holding the old map) exit;
            # a restart makes the new user known by the time we return.
            self.stop_postfix()
            self.start_postfix()

    # -- processes -----------------------------------------------------------------------

    def dovecot_pid(self) -> int | None:
        return _read_pid(self.layout.run_dir / "master.pid")

    def postfix_pid(self) -> int | None:
        return _read_pid(self.layout.postfix_queue / "pid" / "master.pid")

    def dovecot_running(self) -> bool:
        pid = self.dovecot_pid()
        return pid is not None and is_running(pid)

    def postfix_running(self) -> bool:
        pid = self.postfix_pid()
        return pid is not None and is_running(pid)

    def running(self) -> bool:
        return self.dovecot_running() and self.postfix_running()

    def start(self) -> None:
        self.prepare()
        self.start_dovecot()
        self.start_postfix()

    def stop(self) -> None:
        self.stop_postfix()
        self.stop_dovecot()

    def __enter__(self) -> MailLab:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start_dovecot(self) -> None:
        if self.dovecot_running():
            return
        if self._certs is None:
            self.prepare()
        ports = self.ports
        self._refuse_busy_ports(ports.imap, ports.imaps, ports.pop3, ports.pop3s, ports.lmtp)
        log = self.layout.log_dir / "dovecot.log"
        # Without -F Dovecot daemonizes itself once its config is accepted; the master's pid
        # lands in base_dir/master.pid and it leads its own session (pgid == pid).
        # Its output goes to the log file, never to a pipe: the daemon would hold a pipe open
        # and a reader waiting for EOF would wait forever.
        with log.open("ab") as out:
            result = subprocess.run(
                ["dovecot", "-c", str(self.layout.dovecot_conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        if result.returncode != 0:
            raise LabError(f"dovecot failed to start ({result.returncode}); log tail:\n{log_tail(log)}")
        context = self.ssl_context()
        ready = wait_until(
            lambda: (
                read_greeting(ports.imap, b"* OK")
                and read_greeting(ports.pop3, b"+OK")
                and read_greeting(ports.lmtp, b"220")
                and read_greeting(ports.imaps, b"* OK", context)
                and read_greeting(ports.pop3s, b"+OK", context)
            ),
            self.dovecot_running,
            START_TIMEOUT,
        )
        if not ready:
            self.stop_dovecot()
            raise LabError(f"dovecot did not greet on its ports; log tail:\n{log_tail(log)}")
        self._write_pids()
        self.flush_queue()  # Postfix may have marked LMTP dead while Dovecot was down

    def stop_dovecot(self) -> None:
        pid = self.dovecot_pid()
        if pid is not None:
            terminate_group(pid)
        self._write_pids()

    def start_postfix(self) -> None:
        if self.postfix_running():
            return
        if self._certs is None:
            self.prepare()
        self._refuse_busy_ports(self.ports.smtp)
        log = self.layout.log_dir / "postfix.log"
        result = self._postfix("start", check=False)
        if result.returncode != 0:
            output = log_tail(self.layout.log_dir / "postfix-command.out")
            raise LabError(f"postfix failed to start ({result.returncode}): {output}\n{log_tail(log)}")
        if not wait_until(lambda: read_greeting(self.ports.smtp, b"220"), self.postfix_running, START_TIMEOUT):
            self.stop_postfix()
            raise LabError(f"postfix did not greet on port {self.ports.smtp}; log tail:\n{log_tail(log)}")
        self._write_pids()

    def stop_postfix(self) -> None:
        # SIGTERM to the master (what `postfix stop` does) but waiting for every child too:
        # an smtpd still holding the listening socket would keep the port answering.
        pid = self.postfix_pid()
        if pid is not None:
            terminate_group(pid)
        self._write_pids()

    def _postfix(self, command: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        # Output to a file, not a pipe: the daemonized master would keep a pipe open.
        out_file = self.layout.log_dir / "postfix-command.out"
        with out_file.open("w+") as out:
            result = subprocess.run(
                ["postfix", "-c", str(self.layout.postfix_etc), command],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        if check and result.returncode != 0:
            raise LabError(f"postfix {command} failed: {out_file.read_text()}")
        return result

    def _refuse_busy_ports(self, *ports: int) -> None:
        busy = [port for port in ports if port_in_use(port)]
        if busy:
            raise LabError(
                f"ports {busy} on 127.0.0.1 are already in use (another lab still running?"
                " `python -m tests.lab down --dir DIR` stops one started from the CLI)"
            )

    def _write_pids(self) -> None:
        lines = [
            f"{name} {pid}\n"
            for name, pid in (("dovecot", self.dovecot_pid()), ("postfix", self.postfix_pid()))
            if pid is not None and is_running(pid)
        ]
        if self.root.is_dir():
            self.pids_file.write_text("".join(lines))

    # -- users and clients ---------------------------------------------------------------

    def password(self, user: str) -> str:
        return self.users[user]

    def address(self, user: str) -> str:
        return f"{user}@{DOMAIN}"

    def env(self) -> dict[str, str]:
        """Environment for configs like the reference one: ${ALICE_PASSWORD}, SSL_CERT_FILE…"""
        values = {f"{_env_name(user)}_PASSWORD": pw for user, pw in self.users.items()}
        values["SSL_CERT_FILE"] = str(self.ca_file)
        values["HOOK_SECRET"] = "whsec_cG9zdHJvb20tbGFiLWhvb2stc2VjcmV0"  # the reference config's webhook secret
        return values

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def imap_client(self, user: str) -> IMAPClient:
        """A logged-in IMAPClient over STARTTLS with the lab CA verified. Caller logs out."""
        client = IMAPClient("127.0.0.1", port=self.ports.imap, ssl=False, timeout=10)
        try:
            client.starttls(self.ssl_context())
            client.login(self.address(user), self.password(user))
        except Exception:
            client.shutdown()
            raise
        return client

    def fetch_all(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Every message in folder as raw RFC 822 bytes, in UID order, read over IMAP."""
        with self.imap_client(user) as client:
            return _fetch_folder(client, folder)

    def wait_for_messages(self, user: str, count: int, folder: str = "INBOX", timeout: float = 10.0) -> list[bytes]:
        """Poll until folder holds at least count messages; return them all."""
        deadline = time.monotonic() + timeout
        with self.imap_client(user) as client:
            while True:
                found = client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"]
                if found >= count:
                    return _fetch_folder(client, folder)
                if time.monotonic() > deadline:
                    raise LabError(f"{user}/{folder}: {found} messages after {timeout}s, wanted {count}")
                time.sleep(0.05)

    def deliver(self, user: str, raw: bytes) -> None:
        """Deliver one message straight into user's INBOX through Dovecot LMTP."""
        self.deliver_many(user, [raw])

    def deliver_many(self, user: str, raws: Iterable[bytes]) -> None:
        """Deliver several messages on one LMTP connection, in order."""
        with smtplib.LMTP("127.0.0.1", self.ports.lmtp, timeout=30) as lmtp:
            for raw in raws:
                lmtp.sendmail(ENVELOPE_SENDER, [self.address(user)], raw)

    def seed_maildir(self, user: str, folder: str, raws: Iterable[bytes]) -> int:
        """Write messages as Maildir files, then let Dovecot index them. Returns the count."""
        count = write_messages(self.layout.maildir(user), folder, raws)
        self.doveadm("index", "-u", user, folder)
        return count

    def clear_mailbox(self, user: str) -> None:
        """Expunge every message in every folder; delete folders other than the default ones."""
        self.doveadm("expunge", "-u", user, "mailbox", "*", "all")
        extra = extra_folders(self.layout.maildir(user), AUTO_FOLDERS)
        if extra:
            self.doveadm("mailbox", "delete", "-u", user, "-s", *extra)

    def clear_all(self) -> None:
        for user in self.users:
            self.clear_mailbox(user)

    def drop_queue(self) -> None:
        """Throw away whatever Postfix still holds (deferred mail from an earlier test)."""
        if self.postfix_running():
            subprocess.run(
                ["postsuper", "-c", str(self.layout.postfix_etc), "-d", "ALL"],
                check=True, capture_output=True,
            )  # fmt: skip
            self.flush_queue()

    def flush_queue(self) -> None:
        """Deliver deferred mail now, and make Postfix forget destinations it marked dead: a
        delivery that failed while Dovecot restarted suspends LMTP for minutes, and the mail of
        the tests after it would wait in the queue."""
        if self.postfix_running():
            subprocess.run(["postqueue", "-c", str(self.layout.postfix_etc), "-f"], check=False, capture_output=True)

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(["doveadm", "-c", str(self.layout.dovecot_conf), *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"doveadm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result.stdout


LabT = TypeVar("LabT", bound=MailLab)


@contextmanager
def running_lab(make: Callable[[Path], LabT], prefix: str = "postroom-lab-") -> Iterator[LabT]:
    """A lab made in a new directory, started, then stopped and removed. mkdtemp, not pytest's
    tmp_path_factory: pytest's base dir is 0700, which the mail uid can't enter."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    lab = make(root)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def _fetch_folder(client: IMAPClient, folder: str) -> list[bytes]:
    client.select_folder(folder, readonly=True)
    uids = sorted(client.search("ALL"))
    if not uids:
        return []
    data = client.fetch(uids, ["BODY.PEEK[]"])
    return [data[uid][b"BODY[]"] for uid in uids]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _env_name(user: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in user).upper()
