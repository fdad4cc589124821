"""The IMAP edge: IMAPClient on one dedicated thread per connection (the wire format it
speaks, pure, is ``imap_wire``).

IMAPClient blocks, so every call of one connection runs on that connection's own single
worker thread (``threaded.ThreadedConnection``). Low-level errors are mapped to
``postroom.errors`` by one table here (``IMAP_ERRORS``) and nowhere else; after a
connection-level failure the connection is marked broken and the watcher opens a new one.

UIDs go to the server as compact UID sets ("1:500,502") in chunks, one command per chunk:
fetching or moving message by message is two orders of magnitude slower on big folders.
Deleting and moving without MOVE use UID EXPUNGE (UIDPLUS) of just our UIDs; a plain
EXPUNGE would also remove other clients' \\Deleted messages, so without UIDPLUS we refuse.
"""

from __future__ import annotations

import contextlib
import imaplib
import io
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
    ProtocolError,
)

from postroom.config.model import ImapConfig
from postroom.credentials import Credentials, Mechanism
from postroom.errors import (
    AuthError,
    ErrorTable,
    PermanentError,
    PostroomError,
    ServerConnectError,
    ServerRejected,
    ServerTimeout,
    TLSError,
    tls_hint,
)
from postroom.incoming.cutoff import Cutoff
from postroom.incoming.imap_wire import (
    _NEW_MAIL,
    _announces_mail,
    _announces_news,
    _aware,
    _body_item,
    _literal_size,
    _text,
    attachments_from_bodystructure,
    chunks,
    parse_fetch_reply,
    uid_set,
)
from postroom.incoming.message import Attachment
from postroom.incoming.threaded import Login, ThreadedConnection, map_server_error

log = structlog.get_logger(__name__)

IDLE_RENEW_SECONDS = 600.0  # RFC 2177: servers may drop an IDLE after 30 min; renew well before
_IDLE_SLICE = 1.0  # how often a waiting IDLE looks at the wake-up flag


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None = None


class HeaderFetch(NamedTuple):
    """What ``fetch_headers`` returns per UID (a tuple: made thousands of times per pass)."""

    header_bytes: bytes
    size: int
    internal_date: datetime | None
    flags: frozenset[str]
    attachments: list[Attachment] | None  # None unless BODYSTRUCTURE was asked for
    raw: bytes | None = None  # the whole message, when asked for (body conditions)


# -- error mapping -------------------------------------------------------------------------

# IMAPClient's and imaplib's errors as ours, read in order (a subclass before its base).
IMAP_ERRORS: ErrorTable = {
    ssl.SSLCertVerificationError: TLSError,
    TimeoutError: ServerTimeout,
    IMAPClientAbortError: ServerConnectError,
    imaplib.IMAP4.abort: ServerConnectError,
    OSError: ServerConnectError,
    EOFError: ServerConnectError,
    # A reply IMAPClient cannot parse (seen in idle_check over TLS, whose non-blocking reads
    # can split a line): the session is out of step, and only a new one is safe.
    ProtocolError: ServerConnectError,
    CapabilityError: PermanentError,
    LoginError: AuthError,
    IMAPClientError: ServerRejected,  # imaplib.IMAP4.error: a NO or BAD
}
# RFC 5530 response codes that mean "not now": the refusal is ServerBusy, tried again soon.
IMAP_BUSY_CODES = ("[UNAVAILABLE]", "[INUSE]", "[LIMIT]")


def map_imap_error(exc: BaseException, where: str) -> PostroomError:
    """One low-level IMAP/socket/TLS error as ours. ``where`` names the server and step."""
    return map_server_error(exc, where, IMAP_ERRORS, IMAP_BUSY_CODES)


def _ssl_context(cfg: ImapConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)


def _login(client: IMAPClient, login: Login, where: str) -> None:
    try:
        try:
            _LOGINS[login.mechanism](client, login.username, login.secret)
        except IMAPClientError as exc:
            if login.mechanism == "password" or isinstance(exc, LoginError | imaplib.IMAP4.abort):
                raise
            # IMAPClient reports a refused AUTHENTICATE as a plain NO: a refused login all the same
            raise LoginError(*exc.args) from exc
    except LoginError as exc:
        # imapclient turns every failure during LOGIN into LoginError, a dropped connection
        # too (a server restarting): only the server's own refusal is a settings problem
        if isinstance(exc.__context__, imaplib.IMAP4.abort | OSError | EOFError):
            text = _text(exc.args[0]) if exc.args else str(exc)
            raise ServerConnectError(f"{where}: connection lost during login: {text}") from exc
        raise


# How each login mechanism is spoken over IMAP.
_LOGINS: Mapping[Mechanism, Callable[[IMAPClient, str, str], object]] = {
    "password": lambda client, username, password: client.login(username, password),
    # IMAPClient answers a refusal's error challenge itself (imaplib's authenticate loop)
    "xoauth2": lambda client, username, token: client.oauth2_login(username, token),
    "oauthbearer": lambda client, username, token: client.oauthbearer_login(username, token),
}


# -- the connection ------------------------------------------------------------------------


class _Client(IMAPClient):  # type: ignore[misc]  # imapclient ships no type hints mypy reads
    """IMAPClient over a connection a ``Cutoff`` opened, so the deadline watchdog and a stop
    can cut it from the event loop (``threaded``)."""

    def __init__(self, cutoff: Cutoff, host: str, **kwargs: Any) -> None:
        self._cutoff = cutoff
        super().__init__(host, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        # IMAPClient's one seam for opening its imaplib connection; its own TLS and timeout
        # classes differ from imaplib's only in the socket they open, as ours does.
        return _Imap4(self._cutoff, self.host, self.port, self._timeout.connect, self.ssl_context if self.ssl else None)


class _Imap4(imaplib.IMAP4):
    def __init__(
        self, cutoff: Cutoff, host: str, port: int, timeout: float | None, context: ssl.SSLContext | None
    ) -> None:
        self._cutoff, self._context = cutoff, context
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return self._cutoff.connect(self.host, self.port, timeout, self._context)


class ImapConnection(ThreadedConnection[IMAPClient, ImapConfig]):
    """One logged-in IMAP session with its own worker thread. Also the ``MailboxOps`` of the
    folder selected last (``folder``/``uidvalidity`` say which)."""

    protocol = "imap"
    errors = IMAP_ERRORS
    busy_codes = IMAP_BUSY_CODES

    def __init__(
        self,
        account: str,
        cfg: ImapConfig,
        credentials: Credentials | None = None,
        *,
        idle_renew: float = IDLE_RENEW_SECONDS,
    ):
        super().__init__(account, cfg, credentials)
        self.idle_renew = idle_renew
        self.folder = ""
        self.uidvalidity = 0
        self.capabilities: frozenset[str] = frozenset()
        self._news = False  # EXISTS/RECENT read past by our FETCH reader since the last SELECT
        self._saved: frozenset[int] | None = None  # the UIDs the server holds as ``$`` (search_saved)
        self._wake = threading.Event()

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # -- connect / close -------------------------------------------------------------------

    def _open(self, login: Login | None) -> IMAPClient:
        cfg = self.cfg
        context = _ssl_context(cfg)
        try:
            client = _Client(
                self._cutoff,
                cfg.host,
                port=cfg.port_or_default(),
                ssl=cfg.security == "tls",
                ssl_context=context if cfg.security == "tls" else None,
                timeout=cfg.timeout,
            )
        except ssl.SSLError as exc:
            if isinstance(exc, ssl.SSLCertVerificationError | ssl.SSLEOFError | ssl.SSLZeroReturnError):
                raise
            # e.g. implicit TLS against a plaintext port: a settings problem, not a blip
            raise TLSError(f"{self._where}: TLS handshake failed: {exc}{tls_hint(exc)}") from exc
        try:
            if cfg.security == "starttls":
                if b"STARTTLS" not in client.capabilities():
                    raise TLSError(f"{self._where}: server does not offer STARTTLS; refusing to log in in plaintext")
                try:
                    client.starttls(context)
                except ssl.SSLCertVerificationError:
                    raise
                except ssl.SSLError as exc:
                    raise TLSError(f"{self._where}: STARTTLS failed: {exc}{tls_hint(exc)}") from exc
            if login is not None:
                _login(client, login, self._where)
            # Asked after login on purpose: the pre-login list lacks MOVE on Dovecot. imapclient
            # caches nothing before login, and afterwards takes the login reply's CAPABILITY
            # or sends CAPABILITY itself.
            self.capabilities = frozenset(_text(c).upper() for c in client.capabilities())
            _keep_alive(client.socket())
        except BaseException:
            _shutdown_quietly(client)  # already failing: the original error is what matters
            raise
        return client

    def _opened(self, client: IMAPClient) -> None:
        self._saved = None  # a new session has no ``$``
        cfg = self.cfg
        log.info(
            "imap connected",
            account=self.account,
            host=cfg.host,
            port=cfg.port_or_default(),
            security=cfg.security,
            idle=self.has("IDLE"),
            move=self.has("MOVE"),
            uidplus=self.has("UIDPLUS"),
        )

    def _goodbye(self, client: IMAPClient) -> None:
        _logout_quietly(client)

    def _drop(self, client: IMAPClient) -> None:
        _shutdown_quietly(client)

    async def close(self) -> None:
        """LOGOUT within the socket timeout; on any trouble just drop the socket. Never hangs."""
        self._wake.set()
        await super().close()

    # -- folders ---------------------------------------------------------------------------

    async def select(self, folder: str) -> FolderState:
        state = await self._run(f"select {folder!r}", self._select, folder)
        self.folder, self.uidvalidity = folder, state.uidvalidity
        return state

    async def examine(self, folder: str) -> None:
        """Open ``folder`` read-only (EXAMINE): reading it changes no flag, not even \\Recent
        (``postroom rules try``)."""
        self._saved = None  # SELECT/EXAMINE reset ``$`` (RFC 5182)
        await self._run(f"examine {folder!r}", lambda: self._c().select_folder(folder, readonly=True))
        self.folder = folder

    def _select(self, folder: str) -> FolderState:
        self._saved = None  # SELECT/EXAMINE reset ``$`` (RFC 5182)
        info = self._c().select_folder(folder)
        self._drain_news()  # what SELECT reports, the SEARCH that follows it sees
        if b"UIDVALIDITY" not in info:
            # without it a checkpoint by UID could silently point at other messages one day
            raise PermanentError(
                f"{self._where}: the server gave no UIDVALIDITY for {folder!r}; "
                "postroom needs UIDs it can trust (RFC 3501 requires it)"
            )
        modseq = info.get(b"HIGHESTMODSEQ")
        # UIDNEXT is required too, but some servers leave it out; 0 = unknown (only used as a
        # fallback when the folder is empty)
        return FolderState(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info.get(b"UIDNEXT", 0)),
            exists=int(info.get(b"EXISTS", 0)),
            highestmodseq=int(modseq) if modseq is not None else None,
        )

    async def news_since_select(self) -> bool:
        """Did the server announce new mail (EXISTS, RECENT) while other commands ran since the
        last SELECT? It announces each arrival once: a watcher that then waits in IDLE without
        asking would not hear of those messages until the next one comes."""
        return await self._run("news", self._drain_news)

    def _drain_news(self) -> bool:
        imap = _imaplib(self._c())  # imaplib keeps untagged responses; its public response() takes them
        exists = imap.response("EXISTS")[1]
        recent = imap.response("RECENT")[1]
        news, self._news = self._news, False
        return news or exists != [None] or any(value not in (None, b"0") for value in recent)

    async def create_folder(self, folder: str) -> None:
        await self._run(f"create {folder!r}", lambda: self._c().create_folder(folder))

    async def ensure_folder(self, folder: str) -> None:
        """Create ``folder`` unless it exists (an APPEND into a missing one is refused)."""

        def ensure() -> None:
            client = self._c()
            if not client.folder_exists(folder):
                client.create_folder(folder)

        await self._run(f"create {folder!r}", ensure)

    async def append(self, folder: str, raw: bytes, flags: Sequence[str], when: datetime | None) -> None:
        """APPEND one message with these flags (\\Recent is the server's) and internal date."""
        kept = [f for f in flags if f.lower() != "\\recent"]
        await self._run(f"append to {folder!r}", lambda: self._c().append(folder, raw, flags=kept, msg_time=when))

    async def list_folders(self) -> list[str]:
        return await self._run("list", lambda: [name for _, _, name in self._c().list_folders()])

    # -- searching and fetching ----------------------------------------------------------

    async def search_uids(self, criteria: list[Any] | str) -> list[int]:
        return await self._run("search", lambda: sorted(int(u) for u in self._c().search(criteria)))

    async def search_saved(self, criteria: list[Any]) -> list[int]:
        """``UID SEARCH RETURN (SAVE) criteria`` (SEARCHRES, RFC 5182): the server keeps the
        result as ``$``, and a later command on exactly these UIDs says ``$`` instead of a UID
        set (``_uid_sets``): one ``UID MOVE $`` for a whole folder, however many UIDs, never a
        command over the server's line limit. The UIDs are read back from ``$`` itself
        (``UID SEARCH UID $``), so what the caller records is what ``$`` names."""

        def run() -> list[int]:
            client = self._c()
            self._saved = None  # until both commands have answered, ``$`` is not known
            client.search(["RETURN", ["SAVE"], *criteria])  # no untagged reply: SAVE alone
            found = sorted(int(u) for u in client.search(["UID", "$"]))
            self._saved = frozenset(found)
            return found

        return await self._run("search", run)

    def saved_is(self, uids: Collection[int]) -> bool:
        """True when ``$`` on the server is exactly these UIDs."""
        return self._saved is not None and self._saved == frozenset(uids)

    def _uid_sets(self, uids: Collection[int]) -> list[str]:
        """The UID sets for one command each: ``$`` when ``uids`` is exactly the saved search
        result, else compact sets of ``CHUNK`` UIDs."""
        if self.saved_is(uids):
            return ["$"]
        return [uid_set(part) for part in chunks(uids)]

    async def uids_from(self, min_uid: int) -> list[int]:
        """UIDs >= min_uid. ``n:*`` also names the highest UID when nothing is newer: filtered."""
        start = max(1, min_uid)
        found = await self.search_uids(["UID", f"{start}:*"])
        return [uid for uid in found if uid >= start]

    async def fetch_headers(
        self,
        uids: Collection[int],
        fields: Iterable[str],
        *,
        bodystructure: bool = False,
        whole: bool = False,
        internal_date: bool = True,
        flags: bool = True,
    ) -> dict[int, HeaderFetch]:
        """Header fields, size, internal date, flags (+ attachments from BODYSTRUCTURE, or the
        whole message with ``whole``) for many UIDs, one FETCH per chunk. Nothing gets \\Seen.
        Leave out ``internal_date``/``flags`` when unused: on a big folder, parsing them costs
        about as much as everything else in the reply (they come back as None / empty)."""
        names = " ".join(sorted(set(fields), key=str.lower))
        items = ["RFC822.SIZE", *(["INTERNALDATE"] if internal_date else []), *(["FLAGS"] if flags else [])]
        items.append("BODY.PEEK[]" if whole else f"BODY.PEEK[HEADER.FIELDS ({names})]")
        if bodystructure and not whole:
            items.append("BODYSTRUCTURE")
        result: dict[int, HeaderFetch] = {}
        no_flags: frozenset[str] = frozenset()
        for part in chunks(uids):
            data = await self._run("fetch", self._c_fetch, part, items)
            for uid, row in data.items():
                body = _body_item(row)
                structure = row.get(b"BODYSTRUCTURE")
                result[int(uid)] = HeaderFetch(
                    header_bytes=body,
                    size=int(row.get(b"RFC822.SIZE", len(body))),
                    internal_date=_aware(row.get(b"INTERNALDATE")) if internal_date else None,
                    flags=frozenset(_text(f) for f in row.get(b"FLAGS", ())) if flags else no_flags,
                    attachments=attachments_from_bodystructure(structure)
                    if bodystructure and structure
                    else ([] if bodystructure and not whole else None),
                    raw=body if whole else None,
                )
        return result

    def _c_fetch(self, part: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        """uid -> {item: value} as ``IMAPClient.fetch`` returns it, read by ``parse_fetch_reply``
        (the lean reader for header-field fetches, imapclient's parser for anything else)."""
        wanted = set(part)
        untagged: list[bytes] = []
        data = _uid_fetch_unparsed(self._c(), uid_set(part), items, untagged)
        self._news = self._news or any(_announces_mail(line) for line in untagged)
        return {uid: row for uid, row in parse_fetch_reply(data).items() if uid in wanted}

    async def fetch_raw(self, uids: Collection[int]) -> dict[int, bytes]:
        result: dict[int, bytes] = {}
        for part in chunks(uids):
            data = await self._run("fetch", self._c_fetch, part, ["BODY.PEEK[]"])
            result.update({int(uid): _body_item(row) for uid, row in data.items()})
        return result

    async def message_ids(self, uids: Collection[int]) -> dict[int, str]:
        fetched = await self.fetch_headers(uids, ["Message-ID"], internal_date=False, flags=False)
        out: dict[int, str] = {}
        for uid, row in fetched.items():
            value = row.header_bytes.decode("utf-8", "replace").partition(":")[2]
            out[uid] = " ".join(value.split())
        return out

    # -- MailboxOps ------------------------------------------------------------------------

    async def existing_uids(self, uids: Collection[int]) -> set[int]:
        found: set[int] = set()
        for part in chunks(uids):
            found.update(await self.search_uids(["UID", uid_set(part)]))
        return found & set(uids)

    async def flags(self, uids: Collection[int]) -> dict[int, frozenset[str]]:
        result: dict[int, frozenset[str]] = {}
        for part in chunks(uids):
            data = await self._run("fetch flags", self._c_fetch, part, ["FLAGS"])
            result.update({int(u): frozenset(_text(f) for f in row.get(b"FLAGS", ())) for u, row in data.items()})
        return result

    async def add_flags(self, uids: Collection[int], flags: Sequence[str]) -> None:
        for part in self._uid_sets(uids):
            await self._run("store +flags", lambda p=part: self._c().add_flags(p, list(flags), silent=True))

    async def remove_flags(self, uids: Collection[int], flags: Sequence[str]) -> None:
        for part in self._uid_sets(uids):
            await self._run("store -flags", lambda p=part: self._c().remove_flags(p, list(flags), silent=True))

    async def copy(self, uids: Collection[int], folder: str) -> None:
        for part in chunks(uids):
            await self._run(f"copy to {folder!r}", lambda p=part: self._c().copy(uid_set(p), folder))

    async def move(self, uids: Collection[int], folder: str) -> None:
        if not uids:
            return
        if self.has("MOVE"):
            for part in self._uid_sets(uids):
                await self._run(f"move to {folder!r}", lambda p=part: self._c().move(p, folder))
            return
        self._require_uidplus(f"move to {folder!r}")
        await self.copy(uids, folder)
        await self.delete(uids)

    async def delete(self, uids: Collection[int]) -> None:
        """\\Deleted + UID EXPUNGE of exactly these UIDs; other messages marked \\Deleted stay."""
        if not uids:
            return
        self._require_uidplus("delete")
        for part in chunks(uids):
            await self._run("delete", self._delete_chunk, part)

    def _delete_chunk(self, part: list[int]) -> None:
        client = self._c()
        client.add_flags(uid_set(part), [b"\\Deleted"], silent=True)
        client.uid_expunge(uid_set(part))

    def _require_uidplus(self, what: str) -> None:
        if not self.has("UIDPLUS"):
            raise PermanentError(
                f"{self._where}: can't {what}: the server offers neither MOVE nor UIDPLUS, and a plain"
                " EXPUNGE would also remove other clients' messages marked \\Deleted"
            )

    # -- IDLE ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Make a waiting ``idle_wait`` return now, and every later one at once (thread-safe;
        used on stop). It stays set: a stop that comes just before an IDLE starts must not be
        lost, or the watcher would sit in that IDLE until its timeout."""
        self._wake.set()

    async def idle_wait(self, timeout: float) -> bool:
        """IDLE until the server reports new mail (True), or ``timeout`` / ``wake()`` (False).
        Callers loop; each call is one IDLE, so keep ``timeout`` under ``idle_renew``."""
        if self._wake.is_set():
            return False
        wait = min(timeout, self.idle_renew)
        return await self._run("idle", self._idle, wait, deadline=wait + self.cfg.deadline)

    def _begin_idle(self, client: IMAPClient) -> bool:
        """Start IDLE. RFC 2177 lets a server announce changes before its "+" continuation;
        IMAPClient (< 5) takes such a line for the answer and raises "Unexpected IDLE response"
        with it (which would read as a refusal). imaplib has kept the line; the continuation
        is still to come: read up to it. True when something on the way announced new mail."""
        try:
            client.idle()
            return False
        except IMAPClientError as exc:
            if _EARLY_IDLE_LINE not in str(exc):
                raise  # a tagged NO or BAD: IDLE really was refused
        imap = _imaplib(client)
        news = self._drain_news()
        while not (line := imap.readline()).startswith(b"+"):  # the socket timeout bounds each line
            if not line:
                raise EOFError("connection closed while starting IDLE")
            news = _announces_news(line) or news
        return news

    def _idle(self, timeout: float) -> bool:
        client = self._c()
        news = self._begin_idle(client)
        deadline = time.monotonic() + timeout
        # Mail that came just before IDLE is announced with its continuation, often in the
        # same packet: those lines already sit in imaplib's read buffer, where idle_check's
        # poll of the socket never sees them (the watcher then slept until the renewal).
        news = _buffered_news(_imaplib(client)) or news
        try:
            while not news and not self._wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                slice_ = min(_IDLE_SLICE, left)
                started = time.monotonic()
                responses = client.idle_check(timeout=slice_)
                for resp in responses:
                    if len(resp) > 1 and resp[1] in _NEW_MAIL and not (resp[1] == b"RECENT" and resp[0] == 0):
                        news = True
                    if resp and resp[0] == b"BYE":
                        raise ServerConnectError(f"{self._where}: server said BYE during IDLE")
                if not responses and time.monotonic() - started < slice_ / 2:
                    # readable but nothing parsed: imapclient swallows EOF in idle_check
                    raise ServerConnectError(f"{self._where}: connection closed during IDLE")
        finally:
            if not self._broken:
                client.idle_done()
        return news


# -- FETCH replies -------------------------------------------------------------------------


def _uid_fetch_unparsed(
    client: IMAPClient, uids: str, items: Sequence[str], untagged: list[bytes] | None = None
) -> list[Any]:
    """``UID FETCH uids (items)`` and its untagged FETCH data in imaplib's own shape: per
    FETCH response a ``(b"seq (... {n}", literal)`` tuple per literal, then the bytes after
    the last one (``[None]`` when there were none, as imaplib says it).

    IMAPClient has no public call that returns a reply unparsed, and both its generic parser
    (a Python lexer, byte by byte) and imaplib's reader (per line: two regexes, a ``%r`` of the
    line for its debug log, a dict append) cost more than the server's own work on a big
    folder's header fields. So this takes the ``imaplib.IMAP4`` that IMAPClient wraps
    (``_imaplib``) and speaks the command through that object's public ``send``/``readline``/``read``
    (the methods imaplib documents for this) with a tag of its own: lower case, where imaplib's
    are upper case, so the two never meet. Untagged responses other than FETCH (EXISTS,
    EXPUNGE, OK) go to ``untagged`` when given (without "* "), else are read past. Errors are
    imaplib's and imapclient's, as from ``IMAPClient.fetch`` (``map_imap_error`` knows both)."""
    imap = _imaplib(client)
    tag = b"pr%d" % next(_TAGS)
    imap.send(
        b"%s UID FETCH %s (%s)\r\n"
        % (tag, uids.encode("ascii"), " ".join(item.upper() for item in items).encode("ascii"))
    )
    data: list[Any] = []
    tagged = tag + b" "
    while True:
        line = _reply_line(imap)
        if line.startswith(b"* "):
            first, _, rest = line[2:].partition(b" ")
            if first.upper() == b"BYE":
                raise imaplib.IMAP4.abort(f"server said BYE: {_text(rest)}")
            kind, _, dat = rest.partition(b" ")
            fetch = first.isdigit() and kind.upper() == b"FETCH"
            dat = first + b" " + dat if fetch else rest
            while (size := _literal_size(dat)) is not None:
                literal = imap.read(size)
                if len(literal) != size:
                    raise imaplib.IMAP4.abort("socket error: EOF inside a literal")
                if fetch:
                    data.append((dat, literal))
                dat = _reply_line(imap)
            if fetch:
                data.append(dat)
            elif untagged is not None:
                untagged.append(line[2:])
        elif line.startswith(tagged):
            status, _, text = line[len(tagged) :].partition(b" ")
            if status.upper() != b"OK":
                raise IMAPClientError(f"fetch failed: {_text(status)} {_text(text)}")
            return data or [None]
        else:
            raise imaplib.IMAP4.abort(f"unexpected response: {line[:200]!r}")


def _imaplib(client: IMAPClient) -> imaplib.IMAP4:
    """The ``imaplib.IMAP4`` inside an IMAPClient: its one private attribute we read, and only
    here. IMAPClient offers no call that returns a reply unparsed, nor one for the untagged
    responses a command left behind; imaplib's own public methods (``send``, ``readline``,
    ``read``, ``response``) do both."""
    imap: imaplib.IMAP4 = client._imap
    return imap


def _buffered_news(imap: imaplib.IMAP4) -> bool:
    """Read the untagged lines imaplib has already buffered (without waiting for more) and
    say whether one announces new mail."""
    news = False
    sock = imap.socket()
    timeout = sock.gettimeout()
    buffered = imap.file  # the socket's makefile("rb"): a BufferedReader
    if not isinstance(buffered, io.BufferedReader):
        return False
    while True:
        sock.settimeout(0.0)  # peek at what is buffered: with nothing there, read nothing
        try:
            waiting = buffered.peek(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            waiting = b""
        finally:
            sock.settimeout(timeout)
        if not waiting:
            return news
        line = imap.readline()  # the rest of a started line follows at once (socket timeout)
        news = _announces_news(line) or news


# How IMAPClient's idle() reports an untagged line that came before the continuation.
_EARLY_IDLE_LINE = "Unexpected IDLE response: b'* "

_TAGS = itertools.count(1)


def _reply_line(imap: imaplib.IMAP4) -> bytes:
    """One CRLF-terminated line of a reply, without the CRLF (imaplib's checks)."""
    line = imap.readline()
    if not line:
        raise imaplib.IMAP4.abort("socket error: EOF")
    if not line.endswith(b"\r\n"):
        raise imaplib.IMAP4.abort(f"socket error: unterminated line: {line[:200]!r}")
    return line[:-2]


# TCP keepalive on the IMAP socket: a connection parked in IDLE reads nothing for minutes, so
# a peer that vanished without a FIN or RST (a NAT entry dropped, a server powered off) would
# go unnoticed until the IDLE renewal; the kernel's probes notice it in about 2 minutes.
KEEPALIVE_IDLE = 60  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 15
KEEPALIVE_PROBES = 4


def _keep_alive(sock: socket.socket) -> None:
    """Turn on keepalive probes (IMAPClient calls its socket "for polling only"; setting
    options on it changes nothing of what IMAPClient reads or writes)."""
    with contextlib.suppress(OSError):  # an option this kernel lacks: the IDLE renewal still bounds it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _logout_quietly(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:
        _shutdown_quietly(client)


def _shutdown_quietly(client: IMAPClient) -> None:
    with contextlib.suppress(Exception):  # closing: the socket may be gone already
        client.shutdown()
