"""postroom's exception tree, in one place.

    PostroomError                      root: catch this to catch everything of ours
    ├── ConfigError                    bad YAML / settings / reference; names file, key, fix
    ├── TemplateError                  a template failed to load or render; names template, line
    ├── MessageRefused                 a composed message is unsafe (CR/LF in a header, ...)
    ├── WebhookVerifyError             a received webhook's signature or timestamp is wrong
    ├── DataSourceError                a job's sql/http/file source failed (.source)
    │   ├── TransientSourceError       also a TransientError (below)
    │   └── PermanentSourceError       also a PermanentError (below)
    ├── TransientError                 worth retrying later with backoff
    │   ├── ServerConnectError         also a ConnectionError: refused, reset, dropped, unreachable
    │   ├── ServerTimeout              also a TimeoutError
    │   ├── ServerBusy                 the server said "try later" (SMTP 4xx, HTTP 5xx/429,
    │   │                              IMAP [UNAVAILABLE]); .retry_after when it said when
    │   ├── TransientSourceError       the database or server may be back soon
    │   ├── PortInUse                  our HTTP port is taken: exit 75 (EX_TEMPFAIL), retried
    │   └── StoreUnavailable           our own store is unreachable, stalled or its file gone
    └── PermanentError                 retrying will not help: goes to the dead letters
        ├── AuthError                  credentials refused
        │   └── OAuth2Error            the token endpoint refused the client or the request
        │       └── TokenRevoked       the refresh token is no good: a person must sign in
        ├── TLSError                   certificate not trusted, STARTTLS not offered, ...
        ├── ServerRejected             the server said no for good (SMTP 5xx, HTTP 4xx)
        └── PermanentSourceError       bad SQL, HTTP 4xx, missing file, bad JSON

Low-level errors (aiosmtplib, imaplib, poplib, httpx, SQLAlchemy, ssl, file and socket errors)
are mapped to these at the edge that meets them, by one table per edge (``ErrorTable``, read
with ``map_errors``), as httpx maps httpcore's. Everything above the edges decides retry vs
dead letter by one test, ``is_transient``: ours marked transient, or a bare connection or
timeout error. Any other OSError (a missing file, a bad certificate) is not worth a retry
unless its edge said so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta


class PostroomError(Exception):
    """Root of every error postroom raises on purpose."""


class ConfigError(PostroomError):
    """The configuration is wrong. ``problems`` lists (location, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]] | str, *, file: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = problems
        self.file = file
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.file}: " if self.file else ""
        lines = []
        for where, what in self.problems:
            lines.append(f"{head}{where}: {what}" if where else f"{head}{what}")
        return "\n".join(lines)


class TemplateError(PostroomError):
    """A template could not be loaded or rendered."""

    def __init__(self, message: str, *, template: str | None = None, lineno: int | None = None):
        self.template = template
        self.lineno = lineno
        self.message = message  # without the place: `postroom preview` shows that apart
        where = ""
        if template:
            where = f"{template}:{lineno}: " if lineno else f"{template}: "
        super().__init__(f"{where}{message}")


class DataSourceError(PostroomError):
    """A job's data source failed. ``source`` is the data key in the job; a loader that does
    not know it leaves it None and the caller that does sets it (the message follows)."""

    transient = False

    def __init__(self, message: str, *, source: str | None = None):
        self.message = message
        self.source = source
        super().__init__(message)

    def __str__(self) -> str:
        return f"data source {self.source!r}: {self.message}" if self.source else self.message


class MessageRefused(PostroomError):
    """A message we were about to send is unsafe or malformed; it is never sent."""


class WebhookVerifyError(PostroomError, ValueError):
    """A received webhook's signature or timestamp did not check out (``webhooks.verify``)."""


class TransientError(PostroomError):
    """A failure that may go away: retry with backoff."""


class ServerConnectError(TransientError, ConnectionError):
    """Could not reach the server, or it dropped the connection."""


class ServerTimeout(TransientError, TimeoutError):
    """The server did not answer in time."""


class ServerBusy(TransientError):
    """The server answered with a temporary failure (SMTP 4xx and the like); ``retry_after``
    when it said how long to wait (HTTP ``Retry-After``)."""

    def __init__(self, message: str, *, code: int | None = None, retry_after: timedelta | None = None):
        self.code = code
        self.retry_after = retry_after
        super().__init__(message)


class TransientSourceError(DataSourceError, TransientError):
    """A data source failed in a way that may pass (connection, timeout, 5xx, locked)."""

    transient = True


class PortInUse(TransientError):
    """Our listening port is taken (by another process, or the one we replace, not gone yet):
    the process exits EX_TEMPFAIL (75), which a service manager restarts."""


class StoreUnavailable(TransientError):
    """postroom's own store could not be used just now (PostgreSQL unreachable or too slow,
    a SQLite file gone or unwritable): the work waits and is tried again, never dropped."""


class PermanentError(PostroomError):
    """A failure retrying will not fix: record it as a dead letter with the reason."""


class AuthError(PermanentError):
    """The server refused our credentials."""


class OAuth2Error(AuthError):
    """An OAuth2 token endpoint refused for good (invalid_client, invalid_scope …): the
    account's ``oauth2:`` settings need fixing. ``account`` and ``error`` (the RFC 6749 code)
    say whose and what; the message never holds a token."""

    def __init__(self, message: str, *, account: str | None = None, error: str | None = None):
        self.account = account
        self.error = error
        super().__init__(message)


# OAuth2Error.error of a stored refresh token this process's key does not open: about the
# process (a wrong POSTROOM_TOKEN_KEY), not the account, so never recorded as the account's.
UNDECRYPTABLE = "undecryptable"


class TokenRevoked(OAuth2Error):
    """The refresh token was revoked, expired or its consent withdrawn (``invalid_grant``):
    only a new sign-in (``postroom auth login ACCOUNT``) brings the account back."""


class TLSError(PermanentError):
    """TLS could not be set up as configured (untrusted certificate, no STARTTLS offered)."""


class ServerRejected(PermanentError):
    """The server refused for good (SMTP 5xx and the like)."""

    def __init__(self, message: str, *, code: int | None = None):
        self.code = code
        super().__init__(message)


class PermanentSourceError(DataSourceError, PermanentError):
    """A data source failed for good (bad SQL, 4xx, missing file, bad JSON)."""

    transient = False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth a retry: ours marked transient, or a bare connection or
    timeout error. Not any OSError: a missing file or an untrusted certificate stays so; an
    edge whose OSErrors are network trouble maps them (``ServerConnectError``) first."""
    if isinstance(exc, PostroomError):
        return isinstance(exc, TransientError)
    return isinstance(exc, ConnectionError | TimeoutError)


# One edge's foreign errors and what each becomes; read in order, so list a subclass before
# its base (``ssl.SSLError`` before ``OSError``).
ErrorTable = Mapping[type[BaseException], type[PostroomError]]


def mapped_error(exc: BaseException, table: ErrorTable, context: str = "") -> PostroomError | None:
    """Ours for ``exc`` by ``table`` (None when no row matches); the message keeps the
    foreign one, after ``context`` ("imap.example.org:993: "), and what to do about it when
    the foreign error says (``tls_hint``)."""
    for foreign, ours in table.items():
        if isinstance(exc, foreign):
            return ours(f"{context}{str(exc) or type(exc).__name__}{tls_hint(exc)}")
    return None


# What to do about a TLS failure, by the OpenSSL reason it carries (``ssl.SSLError.reason``).
TLS_HINTS: Mapping[str, str] = {
    "WRONG_VERSION_NUMBER": "the server does not speak TLS at once on this port: did you mean `security: starttls`?",
    "CERTIFICATE_VERIFY_FAILED": (
        "the server's certificate is not trusted here: give this server `ca_file:` (the CA that signed it), "
        "or set SSL_CERT_FILE"
    ),
}


def tls_hint(exc: BaseException) -> str:
    """ "; what to do" for a TLS failure in ``exc`` or its causes (``TLS_HINTS``), else ""."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        reason = getattr(current, "reason", None)
        if isinstance(reason, str) and reason in TLS_HINTS:
            return f"; {TLS_HINTS[reason]}"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return ""


@contextmanager
def map_errors(table: ErrorTable, context: str = "") -> Iterator[None]:
    """Raise ours ``from`` the foreign error for any row of ``table``; let the rest through."""
    try:
        yield
    except PostroomError:
        raise
    except Exception as exc:
        ours = mapped_error(exc, table, context)
        if ours is None:
            raise
        raise ours from exc
