"""The schema of one ``rules:`` entry: when it applies (``match``) and what it does (``actions``).

A rule::

    - name: invoices                 # required; unique (checked by the top-level Config)
      account: alice                 # required; an account name
      folder: INBOX                  # default INBOX; IMAP only
      folders: [INBOX, Lists/ops]    # optional: watch several folders instead of ``folder``
      match: {...}                   # default {}: every new message
      actions: [...]                 # at least one; run in order

Conditions (``match``; several keys in one mapping must all hold, ``{}`` matches everything):

    from / to / cc       string test against each address: its addr-spec (``a@b.test``), its
                         display name, and its display form (``Name <a@b.test>``); any match wins
    subject / body       string test against the decoded subject / the decoded text body
    header               {name: X-Alert, <op>: ...}: any value of that header
    has_attachment       true / false
    attachment           {filename: <string test>, content_type: <string test>}: some attachment
                         satisfies every test given
    size                 {over: 10k, under: 2M}: bytes, or a number with k / M / G (powers of 1024)
    older_than           a duration: 30m, 12h, 7d, 2w (or seconds as a number); measured from the
                         server's arrival time, or the Date header when that is unknown
    all / any / not      [cond, ...] / [cond, ...] / cond

String tests: ``{contains: s}``, ``{is: s}``, ``{matches: "*@vendor.test"}`` (a glob over the
whole value) are case-insensitive; ``{regex: "..."}`` is a Python regular expression, searched
anywhere in the value and case-sensitive as written (add ``(?i)`` to ignore case). A bad regex
is a config error naming its key. A plain string is short for ``{contains: s}``. Several
operators in one test must all hold for the same value.

Actions (each a single-key mapping): forward, redirect, reply, vacation, move, copy,
create_folder, flag, unflag, mark_read, delete, webhook, save, stop. ``vacation`` is Sieve's (RFC 5230: a text
reason instead of a template, ``seconds`` between replies per sender and ``handle``); a Sieve
script plans it, and YAML may name it too. ``move``/``copy`` take a folder of the same account or
``{account: archive, folder: "2026"}`` (another IMAP account); ``save`` takes ``{maildir: PATH}``
or ``{mbox: PATH}``. ``stop: true`` ends evaluation of later rules for the
message after this rule's actions; it may sit anywhere in the list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from ..action_kinds import IMAP_ONLY, Kind
from .types import parse_duration, parse_size, webhook_key

#: The system flags a client may set (RFC 3501 2.3.2); \Recent is the server's alone.
SYSTEM_FLAGS: frozenset[str] = frozenset({"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"})
# atom-specials of RFC 3501 that may not appear in a keyword
_KEYWORD_RE = re.compile(r'^[^\s(){%*"\\\]\x00-\x1f\x7f]+$')


class _Strict(BaseModel):
    # The docstrings under the fields are their descriptions, read by config.schema when it
    # writes the JSON Schema; pydantic's use_attribute_docstrings would read and tokenize every
    # model's source at import, ~15 % of `check --offline` and of the daemon's start.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class StringTest(_Strict):
    """One value test; every operator given must hold for the same value."""

    contains: str | None = None
    """The value contains this text (case-insensitive)."""
    is_: str | None = Field(default=None, alias="is")
    """The value is exactly this (case-insensitive)."""
    matches: str | None = None
    """The value matches this glob (`*@vendor.test`; case-insensitive)."""
    regex: str | None = None
    """The value matches this regular expression (Python syntax, searched, case-sensitive as written)."""

    @model_validator(mode="before")
    @classmethod
    def _plain_string_is_contains(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"contains": data}
        return data

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _has_an_operator(self) -> StringTest:
        if not self.operators():
            raise ValueError("needs one of contains, is, matches, regex")
        return self

    def operators(self) -> list[tuple[str, str]]:
        """(operator, operand) pairs in a fixed order, operator names as written in YAML."""
        pairs = [("contains", self.contains), ("is", self.is_), ("matches", self.matches), ("regex", self.regex)]
        return [(op, value) for op, value in pairs if value is not None]


class HeaderTest(StringTest):
    """``{name: X-Alert, regex: "^high$"}``: some value of header ``name`` passes the test."""

    name: str = Field(min_length=1, pattern=r"^[\x21-\x39\x3b-\x7e]+$")
    """The header's name (`X-Alert`); some value of it must pass the test."""


class AttachmentTest(_Strict):
    filename: StringTest | None = None
    """A test on some attachment's file name."""
    content_type: StringTest | None = None
    """A test on some attachment's MIME type (`application/pdf`)."""

    @model_validator(mode="after")
    def _has_a_test(self) -> AttachmentTest:
        if self.filename is None and self.content_type is None:
            raise ValueError("needs filename and/or content_type")
        return self


class SizeTest(_Strict):
    over: int | None = Field(default=None, ge=0)
    """The message is larger than this many bytes."""
    under: int | None = Field(default=None, ge=1)
    """The message is smaller than this many bytes."""

    @field_validator("over", "under", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return parse_size(value)

    @model_validator(mode="after")
    def _has_a_bound(self) -> SizeTest:
        if self.over is None and self.under is None:
            raise ValueError("needs over and/or under")
        return self


class Condition(_Strict):
    """A ``match:`` mapping. Absent keys are None; all present keys must hold."""

    from_: StringTest | None = Field(default=None, alias="from")
    """A test on the From address (addr-spec, display name or `Name <addr>`); a plain string means `contains`."""
    to: StringTest | None = None
    """A test on the To addresses: one of them must pass."""
    cc: StringTest | None = None
    """A test on the Cc addresses: one of them must pass."""
    subject: StringTest | None = None
    """A test on the Subject."""
    body: StringTest | None = None
    """A test on the text of the message's text/plain parts (of an html-only message: the text derived from its
    html)."""
    header: HeaderTest | None = None
    """A test on a header's values: `{name: X-Alert, regex: "^high$"}`."""
    has_attachment: bool | None = None
    """true: the message has an attachment; false: it has none."""
    attachment: AttachmentTest | None = None
    """A test on some attachment's file name or type."""
    size: SizeTest | None = None
    """A test on the message's size in bytes."""
    older_than: timedelta | None = None
    """The message arrived longer ago than this (`30d`)."""
    all_: list[Condition] | None = Field(default=None, alias="all")
    """Every one of these conditions holds."""
    any_: list[Condition] | None = Field(default=None, alias="any", min_length=1)
    """At least one of these conditions holds."""
    not_: Condition | None = Field(default=None, alias="not")
    """This condition does not hold."""

    @field_validator("older_than", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("older_than")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than zero")
        return value

    def walk(self) -> Iterator[Condition]:
        """This condition and every nested one, depth first."""
        yield self
        for child in (self.all_ or []) + (self.any_ or []) + ([self.not_] if self.not_ else []):
            yield from child.walk()


class RedirectSpec(_Strict):
    to: list[str] = Field(min_length=1)
    """The addresses the message goes to."""

    @field_validator("to", mode="before")
    @classmethod
    def _one_to(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ForwardSpec(RedirectSpec):
    as_: Literal["attachment", "inline"] = Field(default="attachment", alias="as")
    """`attachment`: the original is attached whole; `inline`: its content is in the new message's body."""


class ReplySpec(_Strict):
    template: str = Field(min_length=1)
    """The reply's template: `templates/NAME.j2`."""
    days: int = Field(default=7, ge=1)  # at most one reply per sender per this many days
    """At most one reply per sender in this many days."""


class VacationSpec(_Strict):
    """Sieve's vacation (RFC 5230), planned by a script (``postroom.sieve``)."""

    reason: str
    """The reply's text (with `mime`, a whole MIME entity)."""
    seconds: int = Field(default=7 * 86400, ge=0)
    """At most one reply to a sender in this many seconds (Sieve's `:days` × 86400 or `:seconds`)."""
    handle: str = ""
    """Replies with different handles are counted apart (Sieve's `:handle`)."""
    subject: str | None = None
    """The reply's subject (default: "Auto: " and the message's subject)."""
    from_: str | None = Field(default=None, alias="from")
    """The reply's From (default: the account's address)."""
    addresses: list[str] = []
    """The user's other addresses: the message must be addressed to one of them (or the account) to be answered."""
    mime: bool = False
    """`reason` is a MIME entity with its own headers (Sieve's `:mime`)."""


#: A webhook delivery's whole-request deadline by default. Receivers commonly take a few
#: seconds and some allow themselves 10 s or more; a deadline at their own limit would time out
#: a request the receiver completes, and post it again. The delivery's lease is renewed every
#: third of POSTROOM_LEASE_SECONDS while the request runs, so the deadline is free of the lease.
WEBHOOK_TIMEOUT = 30.0

#: A webhook body's content cap when ``include`` is given without ``max_bytes``.
WEBHOOK_MAX_BYTES = 5 * 1024 * 1024


class WebhookSpec(_Strict):
    url: str
    """Where the message's summary is POSTed as JSON (Standard Webhooks: signed, retried, one `webhook-id` per
    message)."""
    secret: SecretStr | None = None  # "whsec_<base64>" (Standard Webhooks)
    """The signing secret, `"${NAME}"` holding `whsec_<base64>` (Standard Webhooks); without it deliveries are
    unsigned."""
    timeout: float = Field(default=WEBHOOK_TIMEOUT, gt=0, le=300)
    """Seconds a delivery may take in all; longer is a failed attempt, retried later (with the same
    `webhook-id`). The delivery's lease is renewed while it runs, so this may exceed the lease."""
    include: list[Literal["text", "html", "attachments", "raw"]] = []
    """Content to add to the JSON: `text`, `html`, `attachments`, `raw`."""
    # the included content's cap (as encoded in the JSON); what does not fit is listed, not sent
    max_bytes: int = Field(default=WEBHOOK_MAX_BYTES, ge=0, le=64 * 1024 * 1024)
    """The most the included content may take in the JSON (encoded); what does not fit is listed, not sent."""

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_key(value.get_secret_value())  # raises ValueError saying how to make one
        return value


def flag_problem(flag: str) -> str | None:
    """Why ``flag`` can't be set on an IMAP message, or None."""
    if flag.startswith("\\"):
        if flag.lower() not in SYSTEM_FLAGS:
            return f"{flag!r} is not a settable system flag (\\Seen, \\Answered, \\Flagged, \\Deleted, \\Draft)"
    elif not _KEYWORD_RE.match(flag) or not flag.isascii():  # an atom is ASCII (RFC 3501 9)
        return f"{flag!r} is not a valid IMAP keyword"
    return None


def _check_flags(value: Any) -> Any:
    flags = [value] if isinstance(value, str) else value
    if not isinstance(flags, list) or not flags:
        return value  # let pydantic report the type
    for flag in flags:
        problem = flag_problem(flag) if isinstance(flag, str) else None
        if problem:
            raise ValueError(problem)
    return flags


class _Action(_Strict):
    """One action: a mapping with a single key, its kind (``{move: Archive}``)."""

    kind: ClassVar[str]  # the YAML key (a ``Kind`` for every real action)

    def params(self) -> dict[str, Any]:
        """What the ledger, the log and ``rules test`` show of the action: JSON-safe, without
        secrets. The executor reads the typed fields, never this."""
        return {}

    def planned_kind(self) -> Kind:
        """The kind the executor runs (``postroom.action_kinds``): the YAML key, except for a
        move or copy to another account."""
        return Kind(self.kind)

    def other_account(self) -> str | None:
        """The account this action acts on besides the rule's own, if any."""
        return None


class ForwardAction(_Action):
    kind: ClassVar[str] = Kind.FORWARD
    forward: ForwardSpec
    """A new message from this account to `to`, carrying the original (as an attachment or inline), Reply-To the
    original sender."""

    def params(self) -> dict[str, Any]:
        return self.forward.model_dump(by_alias=True)


class RedirectAction(_Action):
    kind: ClassVar[str] = Kind.REDIRECT
    redirect: RedirectSpec
    """Send the original message on to `to`, with Resent-* headers."""

    def params(self) -> dict[str, Any]:
        return self.redirect.model_dump(by_alias=True)


class ReplyAction(_Action):
    kind: ClassVar[str] = Kind.REPLY
    reply: ReplySpec
    """An RFC 3834 auto-reply from a template, at most once per sender in `days` (never to lists, bulk or
    auto-submitted mail)."""

    def params(self) -> dict[str, Any]:
        return self.reply.model_dump(by_alias=True)


class VacationAction(_Action):
    kind: ClassVar[str] = Kind.VACATION
    vacation: VacationSpec
    """Sieve's vacation (RFC 5230): an auto-reply behind the RFC 3834 guards and a per-sender ledger."""

    def params(self) -> dict[str, Any]:
        return {"seconds": self.vacation.seconds, "handle": self.vacation.handle, "subject": self.vacation.subject}


class OtherAccount(_Strict):
    """``{account: archive, folder: "2026"}``: a folder of another (IMAP) account."""

    account: str = Field(min_length=1)
    """Another account's name; it needs an `imap:` section (postroom APPENDs there)."""
    folder: str = Field(default="INBOX", min_length=1)
    """The folder in that account."""


def _target(value: str | OtherAccount) -> str | OtherAccount:
    if isinstance(value, str) and not value:
        raise ValueError("a folder name can't be empty")
    return value


def _target_params(target: str | OtherAccount) -> dict[str, Any]:
    if isinstance(target, OtherAccount):
        return {"account": target.account, "folder": target.folder}
    return {"folder": target}


class MoveAction(_Action):
    kind: ClassVar[str] = Kind.MOVE
    move: str | OtherAccount
    """Move the message to this folder, or to `{account, folder}` of another account."""

    @field_validator("move")
    @classmethod
    def _folder(cls, value: str | OtherAccount) -> str | OtherAccount:
        return _target(value)

    def params(self) -> dict[str, Any]:
        return _target_params(self.move)

    def planned_kind(self) -> Kind:
        return Kind.MOVE_TO if isinstance(self.move, OtherAccount) else Kind.MOVE

    def other_account(self) -> str | None:
        return self.move.account if isinstance(self.move, OtherAccount) else None


class CopyAction(_Action):
    kind: ClassVar[str] = Kind.COPY
    copy_: str | OtherAccount = Field(alias="copy")
    """Copy the message to this folder, or to `{account, folder}` of another account."""

    @field_validator("copy_")
    @classmethod
    def _folder(cls, value: str | OtherAccount) -> str | OtherAccount:
        return _target(value)

    def params(self) -> dict[str, Any]:
        return _target_params(self.copy_)

    def planned_kind(self) -> Kind:
        return Kind.COPY_TO if isinstance(self.copy_, OtherAccount) else Kind.COPY

    def other_account(self) -> str | None:
        return self.copy_.account if isinstance(self.copy_, OtherAccount) else None


class CreateFolderAction(_Action):
    """``create_folder: Reports``: make the folder when it is missing (Sieve's ``fileinto
    :create``); a move or copy into it may follow."""

    kind: ClassVar[str] = Kind.CREATE_FOLDER
    create_folder: str = Field(min_length=1)
    """The folder to create when it is missing."""

    def params(self) -> dict[str, Any]:
        return {"folder": self.create_folder}


class SaveSpec(_Strict):
    """``{maildir: PATH}`` or ``{mbox: PATH}``: a local mailbox, created when missing."""

    maildir: str | None = None
    """A local Maildir folder to save the message to."""
    mbox: str | None = None
    """A local mbox file to append the message to."""
    follow_symlinks: bool | None = None
    """Allow a symbolic link as the mailbox, a Maildir subfolder or a folder on the way
    (refused unless this says it is meant)."""

    @field_validator("maildir", "mbox")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"{value!r} is not an absolute path (the service's working directory is not yours)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SaveSpec:
        if (self.maildir is None) == (self.mbox is None):
            raise ValueError("give maildir or mbox (one of them)")
        return self


class SaveAction(_Action):
    kind: ClassVar[str] = Kind.SAVE
    save: SaveSpec
    """Save the message to a local Maildir or mbox."""

    def params(self) -> dict[str, Any]:
        return self.save.model_dump(exclude_none=True)


class FlagAction(_Action):
    kind: ClassVar[str] = Kind.FLAG
    flag: list[str]
    """IMAP flags or keywords to set (`\\Flagged`, `$Important`)."""

    @field_validator("flag", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return _check_flags(value)

    def params(self) -> dict[str, Any]:
        return {"flags": list(self.flag)}


class UnflagAction(_Action):
    kind: ClassVar[str] = Kind.UNFLAG
    unflag: list[str]
    """IMAP flags or keywords to clear."""

    @field_validator("unflag", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return _check_flags(value)

    def params(self) -> dict[str, Any]:
        return {"flags": list(self.unflag)}


class MarkReadAction(_Action):
    kind: ClassVar[str] = Kind.MARK_READ
    mark_read: Literal[True]
    """true: mark the message read (\\Seen)."""


class DeleteAction(_Action):
    kind: ClassVar[str] = Kind.DELETE
    delete: Literal[True]
    """true: delete the message (\\Deleted and UID EXPUNGE of just it)."""


class WebhookAction(_Action):
    kind: ClassVar[str] = Kind.WEBHOOK
    webhook: WebhookSpec
    """POST the message's summary to a URL."""

    def params(self) -> dict[str, Any]:
        # only whether it signs: params go to logs and the ledger
        params: dict[str, Any] = {
            "url": self.webhook.url,
            "timeout": self.webhook.timeout,
            "signed": self.webhook.secret is not None,
        }
        if self.webhook.include:
            params.update(include=list(self.webhook.include), max_bytes=self.webhook.max_bytes)
        return params


class StopAction(_Action):
    kind: ClassVar[str] = Kind.STOP
    stop: Literal[True]
    """true: no later rule sees this message."""


class _NoKind(_Action):
    """A mapping naming no known kind: each of its keys is reported unknown (``mvoe:``)."""

    kind: ClassVar[str] = ""

    @model_validator(mode="after")
    def _refuse(self) -> _NoKind:
        raise ValueError(_ONE_KIND)


#: The schema of each action kind, by the key that names it (``postroom.action_kinds`` says
#: what each kind does).
ACTION_MODELS: dict[str, type[_Action]] = {
    model.kind: model
    for model in (
        ForwardAction,
        RedirectAction,
        ReplyAction,
        VacationAction,
        MoveAction,
        CopyAction,
        CreateFolderAction,
        FlagAction,
        UnflagAction,
        MarkReadAction,
        DeleteAction,
        WebhookAction,
        SaveAction,
        StopAction,
    )
}
_ONE_KIND = "an action is a mapping with exactly one of: " + ", ".join(ACTION_MODELS)
# pydantic puts a tagged union's tag in each error's location; the loader leaves out location
# parts starting "tagged-union", so errors name the YAML keys a user wrote (actions.0.move)
_TAG = "tagged-union:"


def _action_tag(value: Any) -> str | None:
    """Which model reads ``value``: the one its single kind key names. None (an error) when
    it names several kinds, or is no mapping."""
    if isinstance(value, _Action):
        return _TAG + value.kind
    if not isinstance(value, dict):
        return None
    kinds = [key for key in value if key in ACTION_MODELS]
    if len(kinds) > 1:
        return None
    return _TAG + (kinds[0] if kinds else "")


ActionConfig = Annotated[
    Annotated[ForwardAction, Tag(_TAG + "forward")]
    | Annotated[RedirectAction, Tag(_TAG + "redirect")]
    | Annotated[ReplyAction, Tag(_TAG + "reply")]
    | Annotated[VacationAction, Tag(_TAG + "vacation")]
    | Annotated[MoveAction, Tag(_TAG + "move")]
    | Annotated[CopyAction, Tag(_TAG + "copy")]
    | Annotated[CreateFolderAction, Tag(_TAG + "create_folder")]
    | Annotated[FlagAction, Tag(_TAG + "flag")]
    | Annotated[UnflagAction, Tag(_TAG + "unflag")]
    | Annotated[MarkReadAction, Tag(_TAG + "mark_read")]
    | Annotated[DeleteAction, Tag(_TAG + "delete")]
    | Annotated[WebhookAction, Tag(_TAG + "webhook")]
    | Annotated[SaveAction, Tag(_TAG + "save")]
    | Annotated[StopAction, Tag(_TAG + "stop")]
    | Annotated[_NoKind, Tag(_TAG)],
    Discriminator(_action_tag, custom_error_type="action_kind", custom_error_message=_ONE_KIND),
]


class SieveConfig(_Strict):
    """An account's ``sieve:``: a script file (relative: beside the config), run on the new
    messages of ``folders`` after the account's YAML rules."""

    file: Path
    """The Sieve script (relative: beside the config file)."""
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    """The folders whose new messages the script reads."""

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, data: Any) -> Any:
        return {"file": data} if isinstance(data, str) else data


class RuleConfig(_Strict):
    name: str = Field(min_length=1)
    """The rule's name, unique: the action ledger and `postroom rules failed` know the rule by it."""
    account: str = Field(min_length=1)
    """The account whose mail the rule reads."""
    folder: str = Field(default="INBOX", min_length=1)
    """The folder the rule watches (one of `folder`, `folders`)."""
    folders: list[str] | None = Field(default=None, min_length=1)
    """Several folders the rule watches, each on its own."""
    match: Condition = Field(default_factory=Condition)
    """What a message must satisfy; empty: every message."""
    actions: list[ActionConfig] = Field(min_length=1)
    """What is done with a message that matches, in order; each a mapping with one key, its kind (`{move: Archive}`)."""

    @field_validator("match", mode="before")
    @classmethod
    def _empty_match(cls, value: Any) -> Any:
        return {} if value is None else value  # a bare "match:" in YAML means every message

    @model_validator(mode="after")
    def _folder_or_folders(self) -> RuleConfig:
        if self.folders is not None and "folder" in self.model_fields_set:
            raise ValueError("give folder or folders, not both")
        return self

    def watched_folders(self) -> tuple[str, ...]:
        return tuple(self.folders) if self.folders is not None else (self.folder,)

    def imap_only_actions(self) -> list[tuple[int, str]]:
        """(index, kind) of each action a POP3 account cannot do."""
        return [(i, a.kind) for i, a in enumerate(self.actions) if a.kind in IMAP_ONLY]

    def needs_imap_only_actions(self) -> bool:
        return bool(self.imap_only_actions())

    def pop3_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(key path inside this rule, message) for what a POP3 account can't do; [] if fine."""
        problems: list[tuple[tuple[str | int, ...], str]] = [
            (("actions", i, kind), f"{kind} needs IMAP; a POP3 account can only read its mail")
            for i, kind in self.imap_only_actions()
        ]
        if [f.upper() for f in self.watched_folders()] != ["INBOX"]:
            # a POP3 maildrop has no folders: a rule watching one would silently never match
            problems.append(
                (
                    ("folders",) if self.folders is not None else ("folder",),
                    "a POP3 account has only INBOX; leave folder out or use an IMAP account",
                )
            )
        return problems
