"""The Sieve interpreter, pure: a script, a message, its envelope and ``now`` in; the Sieve
actions and a trace out (RFC 5228 with the extensions in ``syntax.EXTENSIONS``).

The result is in Sieve's own terms (store in folder with flags, redirect, vacation, discard,
keep), as Pigeonhole's ``sieve-test`` reports it, so the two can be compared
(tests/test_sieve_pigeonhole.py); ``postroom.sieve.plan`` turns it into the executor's
planned actions. A runtime error (a bad address, too many redirects) drops every action and
keeps the message, as RFC 5228 2.10.6 asks and Pigeonhole does.

Bounds: at most ``MAX_ACTIONS`` actions and ``MAX_REDIRECTS`` redirects (Pigeonhole's
defaults), variables of at most ``MAX_VARIABLE`` characters and ``MAX_VARIABLES`` of them,
a body read up to ``MAX_BODY`` bytes, :regex on bounded input (``match``), and the script's
size and nesting were bounded when it was read (``syntax``).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from email.message import Message

from postroom.config.rules import flag_problem
from postroom.incoming.envelope import Envelope
from postroom.incoming.message import ParsedMessage
from postroom.mail.compose import validate_address
from postroom.mail.parse import decode_header_value, parse_message

from .match import COMPARATORS, MAX_REGEX_SECONDS, Matcher, SieveRuntimeError
from .syntax import Node, Script

MAX_ACTIONS = 32
MAX_REDIRECTS = 4
MAX_VARIABLE = 4096
MAX_VARIABLES = 255
MAX_BODY = 1024 * 1024
INBOX = "INBOX"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")
# RFC 5322 3.3 date-time (the obsolete forms' two-digit years too): day month year, time, zone
_RFC5322_DATE = re.compile(
    r"^\s*(?:[A-Za-z]{3}\s*,\s*)?\d{1,2}\s+[A-Za-z]{3}\s+\d{2,4}\s+\d{1,2}:\d{2}(?::\d{2})?\s+(?:[+-]\d{4}|[A-Za-z]{1,5})\b"
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class Store:
    """keep (folder INBOX) or fileinto: the message in ``folder`` with ``flags``."""

    folder: str
    flags: tuple[str, ...] = ()
    copy: bool = False  # fileinto :copy
    create: bool = False  # fileinto :create
    explicit: bool = True  # False: the implicit keep


@dataclass(frozen=True)
class Redirect:
    address: str
    copy: bool = False


@dataclass(frozen=True)
class Vacation:
    reason: str
    seconds: int
    handle: str
    subject: str | None = None
    from_: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False


@dataclass(frozen=True)
class Discard:
    pass


SieveAction = Store | Redirect | Vacation | Discard


@dataclass
class Outcome:
    """What a script decided for one message, and how it got there."""

    actions: list[SieveAction]
    trace: list[str]
    error: str | None = None  # a runtime error: ``actions`` is then just the implicit keep

    def stores(self) -> list[Store]:
        return [a for a in self.actions if isinstance(a, Store)]

    def kept(self) -> bool:
        return any(s.folder.upper() == INBOX for s in self.stores())


@dataclass
class _State:
    msg: ParsedMessage
    envelope: Envelope
    now: datetime
    variables_on: bool
    actions: list[SieveAction] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    keep_implicit: bool = True
    flags: list[str] = field(default_factory=list)  # imap4flags' internal variable
    variables: dict[str, str] = field(default_factory=dict)
    captures: list[str] = field(default_factory=list)
    redirects: int = 0
    # every :regex of this run together (match.MAX_REGEX_SECONDS): a bound, not a decision
    regex_deadline: float = field(default_factory=lambda: time.monotonic() + MAX_REGEX_SECONDS)
    body_cache: dict[str, list[str]] = field(default_factory=dict)


class _Stop(Exception):
    pass


def run(script: Script, msg: ParsedMessage, envelope: Envelope, *, now: datetime) -> Outcome:
    state = _State(msg, envelope, now, "variables" in script.requires)
    try:
        _block(state, script.commands)
    except _Stop:
        state.trace.append("stop")
    except SieveRuntimeError as exc:
        state.trace.append(f"runtime error: {exc}; the message is kept")
        return Outcome([Store(INBOX, explicit=False)], state.trace, str(exc))
    if state.keep_implicit:
        _add(state, Store(INBOX, tuple(state.flags), explicit=False))
    return Outcome(_merged(state.actions), state.trace)


def _merged(actions: list[SieveAction]) -> list[SieveAction]:
    """Duplicates are one action (RFC 5228 2.10.3): a second store into the same folder, a
    second redirect to the same address; an explicit store's flags win over the implicit
    keep's, a later explicit one's over an earlier one's."""
    merged: list[SieveAction] = []
    stores: dict[str, int] = {}  # folder -> its position in merged
    for action in actions:
        if isinstance(action, Store):
            at = stores.get(_folder_key(action.folder))
            earlier = merged[at] if at is not None else None
            if at is not None and isinstance(earlier, Store):
                merged[at] = Store(
                    earlier.folder,
                    action.flags if action.explicit or not earlier.explicit else earlier.flags,
                    earlier.copy and action.copy,
                    earlier.create or action.create,
                    earlier.explicit or action.explicit,
                )
                continue
            stores[_folder_key(action.folder)] = len(merged)
        elif isinstance(action, Redirect):
            if any(isinstance(a, Redirect) and a.address.lower() == action.address.lower() for a in merged):
                continue
        merged.append(action)
    return merged


def _folder_key(folder: str) -> str:
    return INBOX if folder.upper() == INBOX else folder


def _add(state: _State, action: SieveAction) -> None:
    if len(state.actions) >= MAX_ACTIONS:
        raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")
    state.actions.append(action)


# -- commands ------------------------------------------------------------------------------


def _block(state: _State, commands: Sequence[Node]) -> None:
    taken = False  # an if/elsif of this chain ran its block
    for node in commands:
        name = node.name
        if name == "if":
            taken = _test(state, node.tests()[0])
            if taken:
                _block(state, node.block)
        elif name == "elsif":
            if not taken:
                taken = _test(state, node.tests()[0])
                if taken:
                    _block(state, node.block)
        elif name == "else":
            if not taken:
                _block(state, node.block)
        elif name == "require":
            continue
        else:
            _COMMANDS[name](state, node)


def _stop(state: _State, node: Node) -> None:
    raise _Stop


def _keep(state: _State, node: Node) -> None:
    flags = _flag_list(state, node.tag_strings("flags")) if node.tag("flags") else list(state.flags)
    state.trace.append("keep")
    _add(state, Store(INBOX, tuple(flags)))
    state.keep_implicit = False


def _fileinto(state: _State, node: Node) -> None:
    folder = _expand(state, node.text("mailbox"))
    flags = _flag_list(state, node.tag_strings("flags")) if node.tag("flags") else list(state.flags)
    copy = node.tag("copy") is not None
    if not folder or any(ord(c) < 32 for c in folder):
        raise SieveRuntimeError(f"fileinto {folder!r}: not a usable folder name")
    state.trace.append(f"fileinto {folder!r}" + (" :copy" if copy else ""))
    _add(state, Store(folder, tuple(flags), copy=copy, create=node.tag("create") is not None))
    if not copy:
        state.keep_implicit = False


def _redirect(state: _State, node: Node) -> None:
    address = _expand(state, node.text("address")).strip()
    try:
        validate_address(address, what="redirect")
    except Exception as exc:
        raise SieveRuntimeError(f"redirect {address!r}: {exc}") from None
    state.redirects += 1
    if state.redirects > MAX_REDIRECTS:
        raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
    copy = node.tag("copy") is not None
    state.trace.append(f"redirect {address}" + (" :copy" if copy else ""))
    _add(state, Redirect(address, copy))
    if not copy:
        state.keep_implicit = False


def _discard(state: _State, node: Node) -> None:
    state.trace.append("discard")
    state.keep_implicit = False
    _add(state, Discard())


def _vacation(state: _State, node: Node) -> None:
    if any(isinstance(a, Vacation) for a in state.actions):
        raise SieveRuntimeError("a second vacation action")
    seconds_tag = node.tag_number("seconds")
    days = node.tag_number("days")
    seconds = seconds_tag if seconds_tag is not None else (days if days is not None else 7) * 86400
    # Pigeonhole's limits: at least one day (vacation-seconds: any), at most 90 days
    seconds = min(max(seconds, 0 if seconds_tag is not None else 86400), 90 * 86400)
    reason = _expand(state, node.text("reason"))
    subject = node.tag_text("subject")
    from_ = node.tag_text("from")
    handle = node.tag_text("handle")
    if handle is None:  # Pigeonhole's default handle: the unexpanded arguments
        handle = (
            node.text("reason")
            + (subject if subject is not None else "<default-subject>")
            + (from_ if from_ is not None else "<default-from>")
            + ("<MIME>" if node.tag("mime") else "<NO-MIME>")
        )
    state.trace.append(f"vacation (every {seconds} s)")
    _add(
        state,
        Vacation(
            reason,
            seconds,
            handle if node.tag_text("handle") is None else _expand(state, handle),
            _expand(state, subject) if subject is not None else None,
            _expand(state, from_) if from_ is not None else None,
            tuple(_expand(state, a) for a in node.tag_strings("addresses")),
            node.tag("mime") is not None,
        ),
    )


def _flag_list(state: _State, values: Sequence[str]) -> list[str]:
    """Flags as imap4flags has them: space-separated in each string, unique ignoring case;
    one IMAP can't hold (a keyword with ``%`` or ``[``, a non-ASCII one, an unknown system
    flag) is left out, as Pigeonhole leaves it out."""
    flags: list[str] = []
    for value in values:
        for flag in _expand(state, value).split():
            if flag_problem(flag) is None and flag.lower() not in (f.lower() for f in flags):
                flags.append(flag)
    return flags


def _flag_command(change: Callable[[list[str], list[str]], list[str]]) -> Callable[[_State, Node], None]:
    def command(state: _State, node: Node) -> None:
        if "variable-name" in node.args:
            raise SieveRuntimeError("flag commands on a named variable are not supported; use the internal one")
        state.flags = change(state.flags, _flag_list(state, node.strings("list-of-flags")))
        state.trace.append(f"{node.name} -> {' '.join(state.flags) or '(none)'}")

    return command


def _add_flags(have: list[str], new: list[str]) -> list[str]:
    return have + [f for f in new if f.lower() not in {h.lower() for h in have}]


def _remove_flags(have: list[str], gone: list[str]) -> list[str]:
    return [f for f in have if f.lower() not in {g.lower() for g in gone}]


def _set(state: _State, node: Node) -> None:
    name = node.text("name").lower()
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise SieveRuntimeError(f"set {name!r}: not a variable name")
    value = _expand(state, node.text("value"))
    # modifiers by precedence (RFC 5229 4.1): :length last applied... first in the list wins
    if node.tag("quotewildcard"):
        value = re.sub(r"([*?\\])", r"\\\1", value)
    first = node.tag("first-case")
    if first == ":lowerfirst":
        value = value[:1].lower() + value[1:]
    elif first == ":upperfirst":
        value = value[:1].upper() + value[1:]
    case = node.tag("case")
    if case == ":lower":
        value = value.lower()
    elif case == ":upper":
        value = value.upper()
    if node.tag("length"):
        value = str(len(value))
    if name not in state.variables and len(state.variables) >= MAX_VARIABLES:
        raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
    state.variables[name] = value[:MAX_VARIABLE]
    state.trace.append(f"set {name} = {state.variables[name][:60]!r}")


_COMMANDS: dict[str, Callable[[_State, Node], None]] = {
    "stop": _stop,
    "keep": _keep,
    "fileinto": _fileinto,
    "redirect": _redirect,
    "discard": _discard,
    "vacation": _vacation,
    "setflag": _flag_command(lambda have, new: new),
    "addflag": _flag_command(_add_flags),
    "removeflag": _flag_command(_remove_flags),
    "set": _set,
}


def _expand(state: _State, text: str) -> str:
    if not state.variables_on or "${" not in text:
        return text

    def value(found: re.Match[str]) -> str:
        name = found.group(1)
        if name.isdigit():
            index = int(name)
            return state.captures[index] if index < len(state.captures) else ""
        return state.variables.get(name.lower(), "")

    return _VARIABLE.sub(value, text)[:MAX_VARIABLE]


# -- tests ---------------------------------------------------------------------------------


def _test(state: _State, node: Node) -> bool:
    result = _TESTS[node.name](state, node)
    state.trace.append(f"{_describe(node)}: {'true' if result else 'false'}")
    return result


def _describe(node: Node) -> str:
    parts = [node.name]
    for name, value in node.args.items():
        if isinstance(value, str):
            parts.append(value if value.startswith(":") else f'"{value}"')
        elif isinstance(value, int):
            parts.append(str(value))
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            parts.append("[" + ", ".join(f'"{v}"' for v in value) + "]")
        if name in node.tag_values and isinstance(node.tag_values[name], str):
            parts.append(f'"{node.tag_values[name]}"')
    return " ".join(parts)


def _matcher(state: _State, node: Node) -> Matcher:
    comparator = node.tag_text("comparator") or "i;ascii-casemap"
    if comparator not in COMPARATORS:
        raise SieveRuntimeError(f"comparator {comparator!r} is not supported")
    relation = node.tag_text("match-type")
    return Matcher(
        node.tag("match-type") or ":is", comparator, relation.lower() if relation else None, state.regex_deadline
    )


def _keys(state: _State, node: Node) -> list[str]:
    return [_expand(state, key) for key in node.strings("key-list")]


def _compare(state: _State, node: Node, values: Sequence[str]) -> bool:
    matcher = _matcher(state, node)
    found = matcher.any_match(values, _keys(state, node))
    if found is None:
        return False
    if matcher.match_type in (":matches", ":regex"):
        state.captures = [c[:MAX_VARIABLE] for c in found[:10]]
    return True


def _header_values(state: _State, name: str) -> list[str]:
    try:
        raw = state.msg.headers.get_all(name) or []
    except Exception:
        return []
    return [_FOLD.sub("", decode_header_value(v)).strip() for v in raw]


def _header(state: _State, node: Node) -> bool:
    values = [v for name in node.strings("header-names") for v in _header_values(state, _expand(state, name))]
    return _compare(state, node, values)


def _address_part(address: str, part: str | None) -> str:
    if part == ":localpart":
        return address.rsplit("@", 1)[0] if "@" in address else address
    if part == ":domain":
        return address.rsplit("@", 1)[1] if "@" in address else ""
    return address


def _address(state: _State, node: Node) -> bool:
    part = node.tag("address-part")
    values: list[str] = []
    for name in node.strings("header-list"):
        try:
            raw = [str(v) for v in state.msg.headers.get_all(_expand(state, name)) or []]
        except Exception:
            raw = []
        for _display, address in email.utils.getaddresses(raw):
            if "@" in address:  # no mailbox ("From: foo"): not an address, as in Pigeonhole
                values.append(_address_part(address, part))
    return _compare(state, node, values)


def _envelope(state: _State, node: Node) -> bool:
    part = node.tag("address-part")
    values: list[str] = []
    for name in node.strings("header-list"):
        which = _expand(state, name).lower()
        if which == "from":
            values.append(_address_part(state.envelope.sender, part) if state.envelope.sender else "")
        elif which == "to":
            values.append(_address_part(state.envelope.recipient, part))
    return _compare(state, node, values)


def _exists(state: _State, node: Node) -> bool:
    return all(_header_values(state, _expand(state, name)) for name in node.strings("header-names"))


def _size(state: _State, node: Node) -> bool:
    limit = node.args.get("limit")
    if not isinstance(limit, int):
        return False
    size = state.msg.size
    return size > limit if node.tag("comparator") == ":over" else size < limit


def _allof(state: _State, node: Node) -> bool:
    return all(_test(state, test) for test in node.tests())


def _anyof(state: _State, node: Node) -> bool:
    return any(_test(state, test) for test in node.tests())


def _not(state: _State, node: Node) -> bool:
    return not _test(state, node.tests()[0])


def _body(state: _State, node: Node) -> bool:
    transform = node.tag("body-transform") or ":text"
    types = node.tag_strings("body-transform") if transform == ":content" else ()
    key = transform + "|" + ",".join(types)
    if key not in state.body_cache:
        state.body_cache[key] = _body_values(state.msg, transform, types)
    return _compare(state, node, state.body_cache[key])


def _body_values(msg: ParsedMessage, transform: str, types: Sequence[str]) -> list[str]:
    raw = (msg.raw or b"")[: MAX_BODY + 64 * 1024]
    split = re.search(rb"\r?\n\r?\n", raw)
    if split is None:
        return []  # no empty line after the header: no body (what Python would call one is a broken header)
    if transform == ":raw":
        return [raw[split.end() :][:MAX_BODY].decode("utf-8", "replace")]
    try:
        parsed = parse_message(raw)
    except Exception:
        return []
    wanted = ["text"] if transform == ":text" else [t.lower() for t in types]
    values: list[str] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if not any(w == "" or ctype == w or ctype.split("/")[0] == w for w in wanted):
            continue
        values.append(_part_text(part))
    return values


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload[:MAX_BODY].decode(charset, "replace")
    except LookupError:
        return payload[:MAX_BODY].decode("utf-8", "replace")


def _zone(text: str) -> timezone | None:
    found = re.fullmatch(r"([+-])(\d\d)(\d\d)", text.strip())
    if not found:
        return None
    offset = timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
    return timezone(offset if found.group(1) == "+" else -offset)


def _date_part(when: datetime, part: str) -> str | None:
    offset = when.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    zone = f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    parts = {
        "year": f"{when.year:04d}",
        "month": f"{when.month:02d}",
        "day": f"{when.day:02d}",
        "date": when.strftime("%Y-%m-%d"),
        "julian": str((when.date() - date(1858, 11, 17)).days),
        "hour": f"{when.hour:02d}",
        "minute": f"{when.minute:02d}",
        "second": f"{when.second:02d}",
        "time": when.strftime("%H:%M:%S"),
        "iso8601": when.strftime("%Y-%m-%dT%H:%M:%S") + f"{zone[:3]}:{zone[3:]}",
        "std11": email.utils.format_datetime(when),
        "zone": zone,
        "weekday": str((when.weekday() + 1) % 7),
    }
    return parts.get(part.lower())


def _in_zone(state: _State, node: Node, when: datetime, *, original: bool) -> datetime:
    if node.tag("zone") == ":originalzone" and original:
        return when
    zone_text = node.tag_text("zone")
    if zone_text is not None:
        zone = _zone(zone_text)
        if zone is None:
            raise SieveRuntimeError(f":zone {zone_text!r} is not +hhmm or -hhmm")
        return when.astimezone(zone)
    return when.astimezone(state.now.tzinfo or UTC)


def _hasflag(state: _State, node: Node) -> bool:
    if "variable-list" in node.args and "list-of-flags" in node.args:
        raise SieveRuntimeError("hasflag on a named variable is not supported; use the internal one")
    values = state.flags
    matcher = _matcher(state, node)
    keys = [f for key in node.strings("list-of-flags") for f in _expand(state, key).split()]
    return matcher.any_match(values, keys) is not None


def _date(state: _State, node: Node) -> bool:
    header = _expand(state, node.text("header-name"))
    values = _header_values(state, header)
    if not values:
        return False
    if not _RFC5322_DATE.match(values[0]):
        return False  # Python would guess at it; Pigeonhole, and RFC 5260 4, take none
    try:
        when = email.utils.parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    part = _date_part(_in_zone(state, node, when, original=True), _expand(state, node.text("date-part")))
    return part is not None and _compare(state, node, [part])


def _currentdate(state: _State, node: Node) -> bool:
    part = _date_part(_in_zone(state, node, state.now, original=False), _expand(state, node.text("date-part")))
    return part is not None and _compare(state, node, [part])


_TESTS: dict[str, Callable[[_State, Node], bool]] = {
    "header": _header,
    "address": _address,
    "envelope": _envelope,
    "exists": _exists,
    "size": _size,
    "allof": _allof,
    "anyof": _anyof,
    "not": _not,
    "true": lambda state, node: True,
    "false": lambda state, node: False,
    "body": _body,
    "date": _date,
    "currentdate": _currentdate,
    "hasflag": _hasflag,
}
