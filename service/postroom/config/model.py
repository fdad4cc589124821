"""The YAML config schema (pydantic v2). Validated once at load; unknown keys are errors.

Cross-references (a job's account, a rule's account, data keys named by `for_each`) are
checked by `Config.reference_problems`, outside pydantic, so each error keeps the exact key
path that holds the bad name.
Template existence is checked by the loader, which knows the templates folder.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from ..action_kinds import SENDING
from ..mail.headers import header_value_problem, job_header_problem
from .cron import cron_problem
from .providers import PROVIDERS, Grant, ProviderName
from .rules import RuleConfig, SieveConfig
from .types import Address, ByteSize, Duration, LocaleName, TimeZoneName

Security = Literal["tls", "starttls", "none"]
# How a server is logged in to: a password (LOGIN, USER/PASS, AUTH PLAIN) or an OAuth2 access
# token from the account's `oauth2:` block, sent as XOAUTH2 or OAUTHBEARER (RFC 7628).
AuthKind = Literal["password", "xoauth2", "oauthbearer"]
TOKEN_AUTH: frozenset[str] = frozenset({"xoauth2", "oauthbearer"})


class _Strict(BaseModel):
    # The docstrings under the fields are their descriptions, read by config.schema when it
    # writes the JSON Schema; pydantic's use_attribute_docstrings would read and tokenize every
    # model's source at import, ~15 % of `check --offline` and of the daemon's start.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServerConfig(_Strict):
    host: str
    """The server's host name or IP address."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """The server's port. Default: by `security`: SMTP 465/587/25, IMAP 993/143, POP3 995/110."""
    # tls: implicit TLS; starttls: required, never falls back to plaintext; none: plaintext.
    security: Security = "tls"
    """`tls`: TLS from the first byte; `starttls`: plain connect, then STARTTLS, required (never falls back to
    plaintext); `none`: plaintext."""
    username: str | None = None
    """The login name (often the address). Give it with `password`, or with `auth: xoauth2`/`oauthbearer` alone."""
    password: SecretStr | None = None
    """The login password; write `"${NAME}"` to read it from the environment or a secret file, never the password
    itself."""
    # Default: password when a password is given. xoauth2/oauthbearer need the account's
    # `oauth2:` block and a username, and no password.
    auth: AuthKind | None = None
    """How to log in: `password` (the default when a password is given), or `xoauth2`/`oauthbearer` with the
    account's `oauth2:` block."""
    ca_file: Path | None = None
    """A PEM file of CA certificates to trust for this server instead of the system's (a private CA)."""
    # Seconds of silence a read may wait (connect included): a dead peer is noticed by this.
    timeout: float = Field(default=30.0, gt=0)
    """Seconds a read may wait in silence (connecting included) before the server counts as gone."""
    # Seconds one whole command may take: an IMAP or POP3 command (a FETCH or RETR with all its
    # data, a login), an SMTP connect-and-login or one message's transaction. A server dripping
    # a byte now and then never trips ``timeout``; this cuts it off (a transient error).
    deadline: float = Field(default=300.0, gt=0)
    """Seconds one whole command may take (a login, an IMAP FETCH, a POP3 RETR, an SMTP connect or one message's
    transaction): a server that drips a byte now and then is cut off here (a transient error)."""

    _default_ports: dict[str, int] = {}

    def port_or_default(self) -> int:
        if self.port:
            return self.port
        return self._default_ports[self.security]

    def auth_kind(self) -> AuthKind | None:
        """How this server is logged in to; None: it takes us without a login."""
        if self.auth is not None:
            return self.auth
        return "password" if self.password is not None else None

    @model_validator(mode="after")
    def _auth_pair(self) -> ServerConfig:
        if self.auth in TOKEN_AUTH:
            if self.password is not None:
                raise ValueError(f"auth: {self.auth} logs in with a token; drop the password")
            if self.username is None:
                raise ValueError(f"auth: {self.auth} needs a username (the mailbox to log in to)")
            return self
        if self.auth == "password" and self.password is None:
            raise ValueError("auth: password needs a password")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class SmtpConfig(ServerConfig):
    _default_ports = {"tls": 465, "starttls": 587, "none": 25}
    # Parallel connections the sender may open for a batch; each is reused for many messages.
    connections: int = Field(default=2, ge=1, le=16)
    """Parallel connections the sender may open to this server for a batch; each is reused for many messages."""


class ImapConfig(ServerConfig):
    _default_ports = {"tls": 993, "starttls": 143, "none": 143}
    idle: bool = True
    """Wait for new mail with IMAP IDLE when the server offers it (renewed every 10 minutes); false: poll every
    `poll_interval`."""
    poll_interval: Duration = timedelta(seconds=60)
    """How often to look for new mail when not using IDLE (`30s`, `5m`)."""
    # What to do with mail already in a folder the first time postroom sees it.
    start_from: Literal["new", "unseen", "all"] = "new"
    """Mail already in a folder the first time postroom watches it: `new` (leave it, handle what arrives from now
    on), `unseen` (handle the unread), `all`."""


class Pop3Config(ServerConfig):
    _default_ports = {"tls": 995, "starttls": 110, "none": 110}
    delete_after: bool = False
    """Delete each message from the maildrop once it is handled (else it stays, and is remembered by its UIDL)."""
    # POP3 has no push; one short session every 15 s is light for a server and keeps mail
    # from waiting long.
    poll_interval: Duration = timedelta(seconds=15)
    """How often to look for new mail (POP3 has no push)."""
    start_from: Literal["new", "all"] = "new"
    """Mail already in the maildrop the first time postroom reads it: `new` (leave it) or `all`."""


class OAuth2Config(_Strict):
    """Where and how an account gets OAuth2 access tokens (one token provider per account,
    shared by its SMTP, IMAP and POP3 logins)."""

    provider: ProviderName = ProviderName.GENERIC
    """`microsoft`, `google` (their URLs and scopes are known) or `generic` (give `token_url`)."""
    token_url: str | None = None  # generic only: microsoft and google know theirs
    """The token endpoint; `generic` only (microsoft and google know theirs)."""
    tenant: str | None = None  # microsoft: the tenant id or domain
    """microsoft: the tenant id or domain (`contoso.onmicrosoft.com`)."""
    # Replaces scheme and host of the provider's URLs: a national cloud
    # (https://login.microsoftonline.us), or a local test server.
    authority: str | None = None
    """Replaces scheme and host of the provider's URLs: a national cloud (`https://login.microsoftonline.us`) or a
    local test server."""
    client_id: str
    """The app registration's client id."""
    client_secret: SecretStr | None = None  # optional for public clients
    """The app's client secret (`"${NAME}"`); optional for a public client."""
    # Optional: else the one `postroom auth login ACCOUNT` stored.
    refresh_token: SecretStr | None = None
    """A refresh token to start from (`"${NAME}"`); default: the one `postroom auth login ACCOUNT` stored."""
    grant: Grant = Grant.REFRESH_TOKEN
    """`refresh_token` (a user signs in once with `postroom auth login`) or `client_credentials` (the app's own
    identity; needs `client_secret`)."""
    scopes: list[str] | None = None  # default: the provider's, for the protocols used
    """The scopes to ask for; default: the provider's, for the protocols the account uses."""

    @model_validator(mode="after")
    def _provider_needs(self) -> OAuth2Config:
        known = PROVIDERS[self.provider]
        if known.needs_tenant and not self.tenant:
            raise ValueError(f"provider {self.provider.value} needs `tenant` (a tenant id or domain)")
        if known.endpoints.token_url and self.token_url:
            raise ValueError(f"provider {self.provider.value} knows its token URL; drop `token_url`")
        if not known.endpoints.token_url and not self.token_url:
            raise ValueError(f"provider {self.provider.value} needs `token_url`")
        if self.grant is Grant.CLIENT_CREDENTIALS and self.client_secret is None:
            raise ValueError("grant: client_credentials needs a client_secret")
        return self


class BouncesConfig(_Strict):
    """Bounce tracking: where the account's bounce reports arrive, read before the rules."""

    folder: str = "INBOX"  # an IMAP folder; a POP3 account: its maildrop (INBOX)
    """The folder bounce reports arrive in; it is read before the rules. A POP3 account: its maildrop (leave it
    `INBOX`)."""
    # Jobs' envelope sender: local+bounce-<id>@domain of the account's address (its mailbox
    # must take the address extension: Postfix recipient_delimiter, Gmail, Microsoft 365 do),
    # so a bounce names the message even when it quotes nothing of it.
    verp: bool = False
    """Send jobs' mail with a per-message envelope sender (local+bounce-ID@domain), so a bounce names its message
    even when it quotes nothing of it; the mailbox must accept address extensions."""
    delimiter: Literal["+", "-", "="] = "+"
    """The address extension's delimiter for `verp` (`+`, `-` or `=`), as the mail server is set up."""
    max_size: ByteSize = Field(default=256 * 1024, gt=0, le=16 * 1024 * 1024)
    """A bounce report is read up to this many bytes (the returned message after it is not
    needed), so one big hostile message costs at most this much parsing."""


class AccountConfig(_Strict):
    address: Address
    """The account's email address: the From of mail its jobs send."""
    name: str | None = None  # display name for mail we send
    """A display name for the From of mail the account sends."""
    oauth2: OAuth2Config | None = None
    """Log in with OAuth2 tokens instead of a password (Microsoft 365, Google, any OAuth2 server)."""
    smtp: SmtpConfig | None = None
    """The server the account sends through (jobs, forward, redirect, reply)."""
    imap: ImapConfig | None = None
    """The IMAP server the account's mail is read from (rules, bounce reports); not together with `pop3`."""
    pop3: Pop3Config | None = None
    """The POP3 maildrop the account's mail is read from; not together with `imap`."""
    bounces: BouncesConfig | None = None  # off unless given
    """Bounce tracking: read the bounce reports for the account's mail and suppress addresses that bounce for good.
    Off unless given."""
    sieve: SieveConfig | None = None
    """A Sieve script (RFC 5228) run on the account's new mail after the YAML rules."""

    def servers(self) -> dict[str, ServerConfig]:
        """The servers this account names, by protocol."""
        found = {"smtp": self.smtp, "imap": self.imap, "pop3": self.pop3}
        return {protocol: server for protocol, server in found.items() if server is not None}

    def token_servers(self) -> dict[str, ServerConfig]:
        """The servers this account logs in to with an OAuth2 token."""
        return {p: s for p, s in self.servers().items() if s.auth_kind() in TOKEN_AUTH}

    @model_validator(mode="after")
    def _one_inbox(self) -> AccountConfig:
        if self.imap and self.pop3:
            raise ValueError("an account reads mail over imap or pop3, not both; split it in two")
        if self.token_servers() and self.oauth2 is None:
            raise ValueError("auth: xoauth2/oauthbearer needs an `oauth2:` block on the account")
        if self.bounces is not None:
            if self.imap is None and self.pop3 is None:
                raise ValueError("bounces: needs an imap: or pop3: section to read the reports from")
            if self.pop3 is not None and self.bounces.folder != "INBOX":
                raise ValueError("bounces: a POP3 account reads its maildrop; leave folder out (or INBOX)")
        return self


class ScheduleConfig(_Strict):
    cron: str | None = None
    """A five-field cron expression (minute hour day month weekday), in `timezone`: `0 8 * * mon-fri`."""
    every: Duration | None = None
    """An interval (`30s`, `15m`, `1h`, `7d`), anchored at 2000-01-01 00:00 in the job's zone so every replica
    computes the same fire times."""
    at: datetime | None = None
    """A one-off fire time; without an offset it is in the job's zone."""
    timezone: TimeZoneName | None = None  # default: the config's top-level timezone
    """The schedule's IANA zone (`Europe/Berlin`); default: the config's top-level `timezone`."""

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        problem = None if value is None else cron_problem(value)
        if problem is not None:
            raise ValueError(f"bad cron expression {value!r} ({problem}); five fields: minute hour day month weekday")
        return value

    @field_validator("every")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() < 1:
            raise ValueError("every must be at least 1s")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleConfig:
        given = [k for k in ("cron", "every", "at") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, every, at")
        return self


class _DataSource(_Strict):
    kind: ClassVar[str]
    timeout: float = Field(default=30.0, gt=0)
    """Seconds reading the source may take in all (a deadline, not a per-read timeout)."""


class SqlSource(_DataSource):
    kind: ClassVar[str] = "sql"
    sql: str
    """One SELECT statement; its rows are the data. Run read-only."""
    database: str | None = None  # any SQLAlchemy URL; relative sqlite paths: beside the config
    """A SQLAlchemy URL (`sqlite:///shop.db`, `postgresql+psycopg://…`); a relative SQLite path is beside the config."""

    @model_validator(mode="after")
    def _has_database(self) -> SqlSource:
        if not self.database:
            raise ValueError("a sql source needs database: (a SQLAlchemy URL such as sqlite:///shop.db)")
        return self


class HttpSource(_DataSource):
    kind: ClassVar[str] = "http"
    http: str
    """An http:// or https:// URL answering JSON (a GET)."""
    headers: dict[str, str] = {}
    """Request headers (`Authorization: "Bearer ${TOKEN}"`)."""
    max_size: ByteSize = Field(default=16 * 1024 * 1024, gt=0)  # the answer's body, decoded
    """The most the answer's body may hold, decoded (`16M`; k, M, G or bytes); a bigger one is refused."""

    @field_validator("http")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("http: must be an http:// or https:// URL")
        return value


class FileSource(_DataSource):
    kind: ClassVar[str] = "file"
    file: Path  # .csv or .json; relative: beside the config
    """A .csv or .json file; relative: beside the config."""
    format: Literal["csv", "json"] | None = None  # default: from the file's suffix
    """`csv` or `json`; default: by the file's suffix."""


_SOURCE_KINDS = ("sql", "http", "file")
# pydantic puts a tagged union's tag in each error's location; the loader leaves out location
# parts starting "tagged-union", so errors name the YAML keys a user wrote (data.orders.sql)
_TAG = "tagged-union:"


def _source_tag(value: Any) -> str | None:
    """Which model reads a ``data:`` entry: the one its single kind key names (None: an error)."""
    if isinstance(value, _DataSource):
        return _TAG + value.kind
    kinds = [key for key in value if key in _SOURCE_KINDS] if isinstance(value, dict) else []
    return _TAG + kinds[0] if len(kinds) == 1 else None


# One entry of a job's ``data:``, by the key that names its kind: sql, http or file.
DataSourceConfig = Annotated[
    Annotated[SqlSource, Tag(_TAG + "sql")]
    | Annotated[HttpSource, Tag(_TAG + "http")]
    | Annotated[FileSource, Tag(_TAG + "file")],
    Discriminator(
        _source_tag, custom_error_type="source_kind", custom_error_message="give exactly one of sql, http, file"
    ),
]


class AttachmentConfig(_Strict):
    data: str | None = None  # a data key: its rows become CSV
    """A data key: its rows are attached as CSV."""
    # A file on disk; relative: beside the config. A template ("invoices/{{ row.id }}.pdf") is
    # rendered per message, relative to the config's attachments_dir and confined to it.
    file: str | None = None
    """A file to attach; relative: beside the config. A template (`invoices/{{ row.id }}.pdf`) is rendered per
    message, under `attachments_dir` and confined to it."""
    filename: str | None = None  # may be a template
    """The attachment's file name in the message (may be a template); default: the file's own name."""
    content_type: str | None = None
    """The attachment's MIME type; default: guessed from the file name."""

    @model_validator(mode="after")
    def _one_kind(self) -> AttachmentConfig:
        if (self.data is None) == (self.file is None):
            raise ValueError("give exactly one of data, file")
        return self


class ListUnsubscribeConfig(_Strict):
    """RFC 2369 List-Unsubscribe (+ RFC 8058 one-click): what bulk senders must offer."""

    url: str | None = None  # a template: "https://shop.example/u/{{ row.id }}"
    """An unsubscribe URL (a template: `https://shop.example/u/{{ row.id }}`)."""
    mailto: str | None = None  # a template: the address unsubscribe requests go to
    """An address unsubscribe requests may be mailed to (a template)."""
    one_click: bool = False  # List-Unsubscribe-Post; needs an https:// url
    """Add `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058); needs an https:// `url`."""

    @model_validator(mode="after")
    def _usable(self) -> ListUnsubscribeConfig:
        if self.url is None and self.mailto is None:
            raise ValueError("give url, mailto, or both")
        if self.one_click and (self.url is None or not self.url.startswith("https://")):
            raise ValueError("one_click needs a url starting https:// (RFC 8058)")
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// (or http://)")
        return self


class JobConfig(_Strict):
    schedule: ScheduleConfig
    """When the job fires: one of `cron`, `every`, `at`."""
    account: str
    """The account whose SMTP server sends the job's mail (and whose address is its From)."""
    template: str
    """The template's name: `templates/NAME.j2`."""
    to: list[str] = Field(min_length=1)  # each may be a template: "{{ row.email }}"
    """Recipients; each may be a template (`"{{ row.email }}"`)."""
    cc: list[str] = []
    """Cc recipients; each may be a template."""
    bcc: list[str] = []
    """Bcc recipients (not shown in the message); each may be a template."""
    reply_to: str | None = None  # may be a template
    """A Reply-To address (may be a template)."""
    # Extra headers, values may be templates: {X-Campaign: "statements-{{ today }}"}.
    headers: dict[str, str] = {}
    """Extra headers for every message; values may be templates (`X-Campaign: "orders-{{ today }}"`). Headers
    postroom sets itself cannot be given."""
    list_unsubscribe: ListUnsubscribeConfig | None = None
    """List-Unsubscribe headers (RFC 2369, RFC 8058 one-click): what bulk senders must offer."""
    data: dict[str, DataSourceConfig] = {}
    """Named data sources (`sql`, `http` or `file`); each is a variable in the templates."""
    attachments: list[AttachmentConfig] = []
    """Attachments: a data key's rows as CSV, or a file."""
    for_each: str | None = None  # a data key: one message per row, the row is `row`
    """A data key: one message per row, the row is `row` in the templates."""
    skip_if_empty: str | None = None  # a data key: no rows, no mail
    """A data key: when it has no rows, the fire sends nothing."""
    # A fire missed while the daemon was down runs once at start if it is at most this late.
    misfire_grace: Duration = timedelta(hours=1)
    """A fire missed while postroom was down runs once at start if it is at most this late; older ones are skipped
    and logged."""
    enabled: bool = True
    """false: the job is kept in the config but never fires."""
    # How money, number and date filters write (de_DE: 1.234,50 €); default: the config's.
    locale: LocaleName | None = None
    """How money, number and date filters write (`de_DE`: 1.234,50 €); default: the config's `locale`."""

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        problems = [p for name in value if (p := job_header_problem(name)) is not None]
        problems += [f"{name}: {p}" for name, text in value.items() if (p := header_value_problem(text)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class OutboxConfig(_Strict):
    # Backoff: first retry after `retry_base`, doubling up to `retry_max`, with jitter.
    retry_base: Duration = timedelta(seconds=30)
    """After a transient failure the first retry waits this long; each further one twice as long, up to `retry_max`
    (with jitter)."""
    retry_max: Duration = timedelta(hours=1)
    """The longest wait between two tries of a message."""
    # A message still undelivered after this long (or this many tries) becomes a dead letter.
    max_age: Duration = timedelta(days=2)
    """A message still undelivered this long after it was queued becomes a dead letter."""
    max_attempts: int = Field(default=20, ge=1)
    """A message tried this many times without delivery becomes a dead letter."""
    batch_size: int = Field(default=100, ge=1)
    """Messages a sender claims at a time; replicas share a merge batch by batch."""


class Config(_Strict):
    timezone: TimeZoneName = "UTC"
    """The IANA zone (`Europe/Berlin`) of schedules that name none, and of `now` and `today` in templates."""
    # Where per-row attachment paths (file: templates) are looked up, and the only place they
    # may read from. Default: `attachments/` beside the config (never the config's own folder,
    # which holds .env); relative: beside the config.
    attachments_dir: Path | None = None
    """Where per-row attachment paths (`file:` templates) are looked up, and the only place they may read from.
    Default: the config's folder; relative: beside the config."""
    locale: LocaleName | None = None  # for every job without its own; none: English forms
    """How money, number and date filters write for every job without its own (`de_DE`); none: English forms."""
    accounts: dict[str, AccountConfig] = Field(min_length=1)
    """The mail accounts, by a name of your choice; jobs and rules refer to them by it."""
    jobs: dict[str, JobConfig] = {}
    """Scheduled mail, by job name: a template rendered with data and sent."""
    rules: list[RuleConfig] = []
    """Inbox rules, tried in order for each incoming message: a `match:` and the actions for mail that matches."""
    outbox: OutboxConfig = OutboxConfig()
    """How sending retries and when it gives up (dead letters)."""

    def job_timezone(self, job: JobConfig) -> str:
        return job.schedule.timezone or self.timezone

    def job_locale(self, job: JobConfig) -> str | None:
        return job.locale or self.locale

    def reference_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """Names that point nowhere, each with the key path that holds it."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        for name, job in self.jobs.items():
            at: tuple[str | int, ...] = ("jobs", name)
            account = self.accounts.get(job.account)
            if account is None:
                problems.append(((*at, "account"), _unknown("account", job.account, self.accounts)))
            elif account.smtp is None:
                problems.append(((*at, "account"), f"account {job.account!r} has no smtp: section to send with"))
            for key in ("for_each", "skip_if_empty"):
                ref = getattr(job, key)
                if ref is not None and ref not in job.data:
                    problems.append(((*at, key), _unknown("data key", ref, job.data)))
            for i, att in enumerate(job.attachments):
                if att.data is not None and att.data not in job.data:
                    problems.append(((*at, "attachments", i, "data"), _unknown("data key", att.data, job.data)))
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            at = ("rules", i)
            if rule.name in seen:
                problems.append(((*at, "name"), f"rule name {rule.name!r} is used twice; names must be unique"))
            seen.add(rule.name)
            account = self.accounts.get(rule.account)
            if account is None:
                problems.append(((*at, "account"), _unknown("account", rule.account, self.accounts)))
                continue
            if account.imap is None and account.pop3 is None:
                problems.append(((*at, "account"), f"account {rule.account!r} has no imap: or pop3: section to watch"))
            if account.pop3 is not None:
                problems.extend(
                    ((*at, *where), f"{what} (account {rule.account!r} reads POP3)")
                    for where, what in rule.pop3_problems()
                )
            for j, action in enumerate(rule.actions):
                other = action.other_account()
                if other is None:
                    continue
                where = (*at, "actions", j, action.kind, "account")
                if other not in self.accounts:
                    problems.append((where, _unknown("account", other, self.accounts)))
                elif self.accounts[other].imap is None:
                    problems.append(
                        (
                            where,
                            f"{action.kind} to account {other!r} needs its imap: section "
                            "(postroom APPENDs the message there)",
                        )
                    )
            if account.smtp is None:
                sending = [(j, a.kind) for j, a in enumerate(rule.actions) if a.kind in SENDING]
                for j, kind in sending:
                    problems.append(
                        ((*at, "actions", j, kind), f"{kind} sends mail; account {rule.account!r} has no smtp: section")
                    )
        for name, account in self.accounts.items():
            if account.sieve is not None and account.imap is None:
                # a script files, flags and deletes: a POP3 maildrop can do none of it
                problems.append(
                    (("accounts", name, "sieve"), "a Sieve script needs the account's imap: section to act on")
                )
        return problems


def _unknown(what: str, name: str, known: Any) -> str:
    names = ", ".join(sorted(known)) or "none defined"
    return f"unknown {what} {name!r}; known: {names}"
