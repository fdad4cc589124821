"""Rule evaluation, pure: a parsed message and ``now`` in, planned actions out.

``compile_rules`` turns validated ``RuleConfig``s into a ``RuleSet`` once (globs and regexes
compiled). A watcher takes ``ruleset.for_folder(account, folder)``, asks it ``needs()`` to know
which header fields (and whether body, BODYSTRUCTURE, size, internal date) to fetch, builds a
``ParsedMessage`` and calls ``evaluate(msg, now=...)``. The result lists actions in rule order,
each with its rule name and its index in that rule's ``actions`` list, so (message key, rule,
index) is the action's idempotency key. ``stop: true`` ends evaluation after its rule and is
not itself a planned action.

``search_criteria`` translates a rule's condition into IMAP SEARCH criteria (imapclient's list
form) as a *prefilter*: the server returns a superset of the messages that can match, so most
messages need not be fetched at all. The client ALWAYS evaluates the rule on what it fetched,
even for messages the server found, because SEARCH differs from our matching: it is a
case-insensitive substring test only, dates are whole days in the server's zone, and
``is`` / ``matches`` / ``regex`` / attachments can't be said at all. What can't be said is
widened (``is x`` -> contains x; ``matches "*@vendor.test"`` -> contains "@vendor.test") or
dropped from an ``all`` (fewer terms = more messages); an ``any`` with an unsayable branch, or
a ``not`` whose inner part isn't exact, can't be prefiltered (None). Needles are kept to ASCII
so the criteria work without a CHARSET argument.

``exact_search`` goes further, for a watcher that may then skip fetching: one SEARCH per
rule whose result IS that rule's match set, or None. It needs every test of every rule to be
exact: a ``contains`` on subject or a header (IMAP SEARCH SUBJECT / HEADER is a
case-insensitive substring match on the decoded, unfolded field, as our ``contains`` on the
parsed header), sizes (LARGER/SMALLER are strict, as ours), and all/any/not of those. The
needle must also be one where the server's comparator (Dovecot: decompose, then titlecase)
and Python's ``casefold`` cannot disagree: printable ASCII without spaces, not ending in a
letter that a precomposed character decomposes to ("cafe" finds "café" on the server, not
here), and not touching what a non-ASCII character casefolds or uppercases to ("ss" finds
"ß" here, not on the server; "i" finds "ı" there). Everything else stays a prefilter.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, Protocol, TypeAlias

from postroom.action_kinds import Kind
from postroom.config.rules import (
    ActionConfig,
    AttachmentTest,
    Condition,
    HeaderTest,
    RuleConfig,
    StopAction,
    StringTest,
)
from postroom.incoming.message import Address, ParsedMessage

#: Header fields every fetch includes: the rules' own fields and what a webhook payload shows.
#: (Forward/redirect/reply read their guards - Auto-Submitted, Return-Path, Reply-To … - from
#: the whole message, which they fetch anyway, so those fields need not be fetched for every
#: message: on a big folder each extra field costs bytes on the wire and parse time.)
BASE_HEADER_FIELDS: tuple[str, ...] = ("Message-ID", "From", "To", "Cc", "Subject", "Date")

#: What every fetch needs even when no action reads the message: the inbound row's Message-ID.
KEY_HEADER_FIELDS: tuple[str, ...] = ("Message-ID",)
#: The header field each condition key reads (older_than falls back to Date).
_CONDITION_FIELDS = {"from_": "From", "to": "To", "cc": "Cc", "subject": "Subject", "older_than": "Date"}

Predicate = Callable[[ParsedMessage, datetime], bool]

#: IMAP SEARCH criteria in imapclient's list form: tokens (keys and needles as text, sizes for
#: LARGER / SMALLER as numbers, days for BEFORE as dates) and, as the operands of OR and NOT,
#: nested criteria lists.
SearchCriteria: TypeAlias = list["SearchToken"]
SearchToken: TypeAlias = "str | int | date | SearchCriteria"


@dataclass(frozen=True)
class PlannedAction:
    """One action to take on one message: the typed config action (a member of the
    ``ActionConfig`` union, frozen), and where it comes from - a YAML rule, or a Sieve script
    (``postroom.sieve``), which plans the same members."""

    rule: str
    index: int  # position in the rule's ``actions``: part of the idempotency key
    action: ActionConfig

    @property
    def kind(self) -> Kind:
        """What the executor runs (``postroom.action_kinds``)."""
        return self.action.planned_kind()

    @property
    def params(self) -> dict[str, Any]:
        """The ledger's and the log's view: JSON-safe, no secrets."""
        return self.action.params()

    def key(self, message_key: str) -> str:
        return f"{message_key}|{self.rule}|{self.index}"


@dataclass(frozen=True)
class FetchNeeds:
    header_fields: frozenset[str]
    body: bool = False  # a body condition: fetch the whole message (BODY.PEEK[])
    bodystructure: bool = False  # attachment conditions (not needed if body is fetched)
    size: bool = False  # RFC822.SIZE
    internal_date: bool = False  # INTERNALDATE, for older_than

    def merge(self, other: FetchNeeds) -> FetchNeeds:
        return FetchNeeds(
            header_fields=_dedupe_fields([*self.header_fields, *other.header_fields]),
            body=self.body or other.body,
            bodystructure=self.bodystructure or other.bodystructure,
            size=self.size or other.size,
            internal_date=self.internal_date or other.internal_date,
        )


class Explanation(NamedTuple):
    rule: str
    matched: bool
    actions: list[PlannedAction]  # what the rule would do; [] when it did not match or was skipped
    skipped: bool  # an earlier matching rule said ``stop``
    trace: tuple[str, ...] = ()  # a Sieve script's: each test with its result, each action


class ScriptRule(Protocol):
    """A Sieve script as the rule set runs it (``postroom.sieve.rule.SieveRule``): after the
    YAML rules, deciding its actions per message."""

    @property
    def name(self) -> str: ...

    @property
    def account(self) -> str: ...

    def watched_folders(self) -> tuple[str, ...]: ...

    def bound(self, folder: str) -> ScriptRule:
        """This script for messages of ``folder`` (keep means: stay there)."""
        ...

    def plan(self, msg: ParsedMessage, *, now: datetime) -> tuple[list[PlannedAction], tuple[str, ...]]:
        """(the actions, the trace)."""
        ...


#: What a script may plan (``postroom.sieve.plan``): none of these is done from the UID alone
#: by every handler, so a folder with a script is never decided by SEARCH.
SCRIPT_KINDS: frozenset[Kind] = frozenset(
    {Kind.REDIRECT, Kind.VACATION, Kind.CREATE_FOLDER, Kind.COPY, Kind.FLAG, Kind.MOVE, Kind.DELETE}
)


def _dedupe_fields(names: Sequence[str]) -> frozenset[str]:
    """Header names are case-insensitive: keep the first spelling of each."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return frozenset(seen.values())


# -- compiling conditions ------------------------------------------------------------------


def _operator_check(op: str, operand: str) -> Callable[[str], bool]:
    """One operator of a string test, its operand prepared once."""
    if op == "contains":
        needle = operand.casefold()
        return lambda value: needle in value.casefold()
    if op == "is":
        wanted = operand.strip().casefold()
        return lambda value: value.strip().casefold() == wanted
    if op == "matches":
        glob = re.compile(fnmatch.translate(operand), re.IGNORECASE)
        return lambda value: glob.match(value) is not None
    pattern = re.compile(operand)  # regex, as written
    return lambda value: pattern.search(value) is not None


def _string_matcher(test: StringTest) -> Callable[[str], bool]:
    checks = [_operator_check(op, operand) for op, operand in test.operators()]
    if len(checks) == 1:
        return checks[0]  # the usual case, called for every value of every message
    return lambda value: all(check(value) for check in checks)


def _address_values(addresses: Sequence[Address]) -> list[str]:
    values: list[str] = []
    for address in addresses:
        values.extend(v for v in (address.addr, address.name, address.display) if v)
    return values


_FIELD_VALUES: dict[str, Callable[[ParsedMessage], list[str]]] = {
    "from_": lambda m: _address_values(m.from_),
    "to": lambda m: _address_values(m.to),
    "cc": lambda m: _address_values(m.cc),
    "subject": lambda m: [m.subject],
    "body": lambda m: [m.body_text()],
}


def _field_predicate(values_of: Callable[[ParsedMessage], list[str]], test: StringTest) -> Predicate:
    matches = _string_matcher(test)

    def check(msg: ParsedMessage, now: datetime) -> bool:
        for value in values_of(msg):  # a loop, not any(genexpr): runs for every message of a folder
            if matches(value):
                return True
        return False

    return check


def _attachment_predicate(spec: AttachmentTest) -> Predicate:
    name_ok = _string_matcher(spec.filename) if spec.filename else None
    type_ok = _string_matcher(spec.content_type) if spec.content_type else None

    def check(msg: ParsedMessage, now: datetime) -> bool:
        return any(
            (name_ok is None or name_ok(a.filename or "")) and (type_ok is None or type_ok(a.content_type))
            for a in msg.attachments()
        )

    return check


def _older_than(age: timedelta) -> Predicate:
    def check(msg: ParsedMessage, now: datetime) -> bool:
        when = msg.internal_date or msg.date
        return when is not None and now - when > age  # unknown age: never "old"

    return check


def compile_condition(cond: Condition) -> Predicate:
    """One predicate for the whole mapping: every present key must hold."""
    parts: list[Predicate] = []
    for name, values_of in _FIELD_VALUES.items():
        test = getattr(cond, name)
        if test is not None:
            parts.append(_field_predicate(values_of, test))
    if cond.header is not None:
        header_name = cond.header.name
        parts.append(_field_predicate(lambda m: m.header(header_name), cond.header))
    if cond.has_attachment is not None:
        wanted = cond.has_attachment
        parts.append(lambda msg, now: msg.has_attachment == wanted)
    if cond.attachment is not None:
        parts.append(_attachment_predicate(cond.attachment))
    if cond.size is not None:
        over, under = cond.size.over, cond.size.under
        parts.append(lambda msg, now: (over is None or msg.size > over) and (under is None or msg.size < under))
    if cond.older_than is not None:
        parts.append(_older_than(cond.older_than))
    if cond.all_ is not None:
        parts.extend(compile_condition(child) for child in cond.all_)
    if cond.any_ is not None:
        branches = [compile_condition(child) for child in cond.any_]
        parts.append(lambda msg, now: any(branch(msg, now) for branch in branches))
    if cond.not_ is not None:
        inner = compile_condition(cond.not_)
        parts.append(lambda msg, now: not inner(msg, now))
    if len(parts) == 1:
        return parts[0]
    return lambda msg, now: all(part(msg, now) for part in parts)


# -- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    config: RuleConfig
    predicate: Predicate
    # built once: evaluate() runs for every message of a folder
    _planned: tuple[PlannedAction, ...] = dataclass_field(init=False, repr=False, compare=False)
    _stops: bool = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_planned",
            tuple(
                PlannedAction(self.config.name, i, a)
                for i, a in enumerate(self.config.actions)
                if not isinstance(a, StopAction)
            ),
        )
        object.__setattr__(self, "_stops", any(isinstance(a, StopAction) for a in self.config.actions))

    @property
    def name(self) -> str:
        return self.config.name

    def watches(self, account: str, folder: str) -> bool:
        return self.config.account == account and any(
            _same_folder(folder, watched) for watched in self.config.watched_folders()
        )

    def planned(self) -> tuple[list[PlannedAction], bool]:
        """(actions to take, whether the rule says stop)."""
        return list(self._planned), self._stops


def _same_folder(a: str, b: str) -> bool:
    # INBOX is case-insensitive in IMAP (RFC 3501 5.1); every other name is exact
    return a == b or (a.upper() == "INBOX" and b.upper() == "INBOX")


class RuleSet:
    """The YAML rules, in file order, then the accounts' Sieve scripts (``scripts``)."""

    def __init__(self, rules: Sequence[CompiledRule], scripts: Sequence[ScriptRule] = ()):
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.scripts: tuple[ScriptRule, ...] = tuple(scripts)

    def __len__(self) -> int:
        return len(self.rules) + len(self.scripts)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)

    def with_scripts(self, scripts: Sequence[ScriptRule]) -> RuleSet:
        return RuleSet(self.rules, [*self.scripts, *scripts])

    def for_folder(self, account: str, folder: str) -> RuleSet:
        return RuleSet(
            [r for r in self.rules if r.watches(account, folder)],
            [
                script.bound(folder)
                for script in self.scripts
                if script.account == account and any(_same_folder(folder, f) for f in script.watched_folders())
            ],
        )

    def for_account(self, account: str) -> RuleSet:
        return RuleSet(
            [r for r in self.rules if r.config.account == account],
            [script for script in self.scripts if script.account == account],
        )

    def watch_targets(self) -> list[tuple[str, str]]:
        """(account, folder) pairs that need a watcher, in first-mention order."""
        targets: dict[tuple[str, str], None] = {}
        for rule in self.rules:
            for folder in rule.config.watched_folders():
                targets.setdefault((rule.config.account, folder), None)
        for script in self.scripts:
            for folder in script.watched_folders():
                targets.setdefault((script.account, folder), None)
        return list(targets)

    def action_config(self, rule: str, index: int) -> ActionConfig:
        """The configured action behind a PlannedAction (e.g. for the webhook secret)."""
        for compiled in self.rules:
            if compiled.name == rule:
                return compiled.config.actions[index]
        raise KeyError(rule)

    def needs(self, *, rules_only: bool = False) -> FetchNeeds:
        """What to fetch. ``rules_only``: no action reads the message (the handler does every
        planned kind from the UID), so only the conditions' fields and Message-ID (for the
        inbound row) are fetched, not what webhook payloads show: fewer bytes to parse."""
        base = KEY_HEADER_FIELDS if rules_only else BASE_HEADER_FIELDS
        needs = FetchNeeds(header_fields=frozenset(base))
        for rule in self.rules:
            needs = needs.merge(condition_needs(rule.config.match, base=base))
        if self.scripts:  # a script may test any header, the body and the size
            needs = needs.merge(FetchNeeds(header_fields=frozenset(base), body=True, size=True))
        return needs

    def evaluate(self, msg: ParsedMessage, *, now: datetime) -> list[PlannedAction]:
        """The actions of ``explain``'s matching rules, without building its rows (this runs
        for every message of a folder): rules in order, ending after a matching ``stop``."""
        planned: list[PlannedAction] = []
        for rule in self.rules:
            if rule.predicate(msg, now):
                planned.extend(rule._planned)
                if rule._stops:
                    return planned
        for script in self.scripts:
            planned.extend(script.plan(msg, now=now)[0])
        return planned

    def explain(self, msg: ParsedMessage, *, now: datetime) -> list[Explanation]:
        rows: list[Explanation] = []
        stopped = False
        for rule in self.rules:
            matched = rule.predicate(msg, now)
            actions, stops = rule.planned()
            rows.append(Explanation(rule.name, matched, actions if matched and not stopped else [], stopped))
            stopped = stopped or (matched and stops)
        for script in self.scripts:
            if stopped:
                rows.append(Explanation(script.name, False, [], True))
                continue
            actions, trace = script.plan(msg, now=now)
            rows.append(Explanation(script.name, True, actions, False, trace))
        return rows

    def plan_for(self, matched: set[str]) -> list[PlannedAction]:
        """``evaluate`` when which rules match is already known (by name), e.g. from SEARCH."""
        planned: list[PlannedAction] = []
        for rule in self.rules:
            if rule.name in matched:
                actions, stops = rule.planned()
                planned.extend(actions)
                if stops:
                    break
        return planned

    def action_kinds(self) -> frozenset[Kind]:
        """Every kind of action these rules can plan (``stop`` is not one)."""
        kinds = frozenset(a.kind for rule in self.rules for a in rule._planned)
        return kinds | SCRIPT_KINDS if self.scripts else kinds

    def exact_search(self, *, now: datetime) -> list[tuple[str, SearchCriteria]] | None:
        """(rule name, SEARCH criteria whose result is exactly the messages the rule matches)
        for every rule here, or None when any rule needs the client to decide. Names are
        unique per config, so they identify the rules."""
        if self.scripts:
            return None  # a script decides on the fetched message
        per_rule: list[tuple[str, SearchCriteria]] = []
        for rule in self.rules:
            translated = _translate(rule.config.match, now)
            if not translated.certain:
                return None
            per_rule.append((rule.name, _group(translated.keys) or ["ALL"]))
        return per_rule or None

    def search_criteria(self, *, now: datetime) -> SearchCriteria | None:
        """One prefilter for every rule here (OR of each rule's), or None if any can't."""
        if self.scripts:
            return None  # a script sees every new message
        per_rule: list[SearchCriteria] = []
        for rule in self.rules:
            criteria = search_criteria(rule.config, now=now)
            if criteria is None:
                return None
            per_rule.append(criteria)
        return _or_chain(per_rule) if per_rule else None


def compile_rules(rules: Sequence[RuleConfig]) -> RuleSet:
    return RuleSet([CompiledRule(rule, compile_condition(rule.match)) for rule in rules])


def condition_needs(cond: Condition, *, base: Sequence[str] = BASE_HEADER_FIELDS) -> FetchNeeds:
    fields = list(base)
    body = bodystructure = size = internal_date = False
    for node in cond.walk():
        fields.extend(name for attr, name in _CONDITION_FIELDS.items() if getattr(node, attr) is not None)
        if node.header is not None:
            fields.append(node.header.name)
        body = body or node.body is not None
        bodystructure = bodystructure or node.has_attachment is not None or node.attachment is not None
        size = size or node.size is not None
        internal_date = internal_date or node.older_than is not None
    return FetchNeeds(_dedupe_fields(fields), body, bodystructure, size, internal_date)


# -- IMAP SEARCH prefilter -----------------------------------------------------------------


class _Keys(NamedTuple):
    keys: list[SearchCriteria]  # search keys (each a token list), ANDed; [] = no narrowing
    exact: bool  # the keys select exactly the messages the condition matches (as a prefilter)
    certain: bool  # ... even for Unicode subjects: fit to decide without fetching (exact_search)


_SEARCH_KEY = {"from_": "FROM", "to": "TO", "cc": "CC", "subject": "SUBJECT", "body": "BODY"}
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")


def _glob_literal(pattern: str) -> str:
    """The longest run of literal text in a glob: every match contains it."""
    pieces = re.split(r"\*|\?|\[[^\]]*\]?", pattern)
    return max(pieces, key=len, default="")


def _needle(field: str, test: StringTest) -> list[tuple[str, bool]]:
    """(substring the server can look for, exact?) for each operator that allows one.
    ``_casing_agrees`` is not asked here: the prefilter has always accepted that rare
    disagreement; only ``exact_search`` must not."""
    needles = []
    for op, operand in test.operators():
        if op == "contains":
            needles.append((operand, True))
        elif op == "is":
            needles.append((operand.strip(), False))
        elif op == "matches":
            needles.append((_glob_literal(operand), False))
    usable = []
    for text, exact in needles:
        if not _PRINTABLE_ASCII.match(text):
            continue  # empty, non-ASCII (needs CHARSET) or control characters
        if field in ("from_", "to", "cc") and any(c in text for c in '<>"'):
            continue  # servers match addresses their own way; only plain parts are safe
        if field == "body" and (any(c in text for c in "&<>\"'") or " " in text):
            continue  # HTML entities, line breaks: our text and the server's may differ
        # whitespace folding may differ between us and the server; addresses/bodies vary more
        usable.append((text, exact and " " not in text and field not in ("from_", "to", "cc", "body")))
    return usable


#: Unicode blocks holding every character with such a hazard (Latin, Greek punctuation, Latin
#: Extended Additional + Greek Extended, letterlike symbols + operators, ligatures); the test
#: compares the result against a scan of all of Unicode, which takes a second
HAZARD_BLOCKS: tuple[range, ...] = (
    range(0x80, 0x300),
    range(0x370, 0x400),
    range(0x1E00, 0x2000),
    range(0x2100, 0x2300),
    range(0xFB00, 0xFB50),
)


@functools.cache
def _unicode_hazards(blocks: tuple[range, ...] = HAZARD_BLOCKS) -> tuple[str, ...]:
    """What non-ASCII characters turn into on one side but not the other, where either side
    holds ASCII: Python's ``casefold`` vs the server's comparator (RFC 5051 i;unicode-casemap,
    as Dovecot does it: canonical decomposition, then simple titlecase per character), with
    the server's ASCII lowercased to compare. E.g. "é" is "e" + U+0301 there, "ß" is "ss" here,
    "ı" is "i" there; "K" (Kelvin) and "ſ" agree. Computed once, on first use."""
    hazards: set[str] = set()
    for code in (code for block in blocks for code in block):
        char = chr(code)
        ours = char.casefold()
        theirs = "".join(t if len(t := c.title()) == 1 else c for c in unicodedata.normalize("NFD", char))
        theirs = "".join(c.lower() if c.isascii() else c for c in theirs)
        if ours != theirs:
            hazards.update(side for side in (ours, theirs) if any(c.isascii() for c in side))
    return tuple(sorted(hazards))


def _casing_agrees(needle: str) -> bool:
    """True when no subject can match ``needle`` on the server but not here, or the reverse,
    through Unicode decomposition or case mapping (see the module docstring)."""
    text = needle.casefold()
    for fold in _unicode_hazards():
        if fold in text or text in fold:
            return False
        # the mapped string straddling either end of the needle
        if any(text.startswith(fold[i:]) or text.endswith(fold[:i]) for i in range(1, len(fold))):
            return False
    return True


def _string_keys(imap_key: Sequence[str], field: str, test: StringTest) -> _Keys:
    usable = _needle(field, test)
    keys: list[SearchCriteria] = [[*imap_key, text] for text, _ in usable]
    exact = len(usable) == len(test.operators()) and all(e for _, e in usable)
    return _Keys(keys, exact, exact and all(_casing_agrees(text) for text, _ in usable))


def _group(keys: list[SearchCriteria]) -> SearchCriteria:
    return [token for key in keys for token in key]


def _or_chain(groups: list[SearchCriteria]) -> SearchCriteria:
    if len(groups) == 1:
        return groups[0]
    return ["OR", groups[0], _or_chain(groups[1:])]


def _translate(cond: Condition, now: datetime) -> _Keys:
    keys: list[SearchCriteria] = []
    exact = certain = True

    def add(part: _Keys) -> None:
        nonlocal exact, certain
        keys.extend(part.keys)
        exact = exact and part.exact
        certain = certain and part.certain

    for field, imap_key in _SEARCH_KEY.items():
        test = getattr(cond, field)
        if test is not None:
            add(_string_keys([imap_key], field, test))
    if cond.header is not None:
        add(_header_keys(cond.header))
    if cond.has_attachment is not None or cond.attachment is not None:
        exact = certain = False
    if cond.size is not None:
        if cond.size.over is not None:
            keys.append(["LARGER", cond.size.over])
        if cond.size.under is not None:
            keys.append(["SMALLER", cond.size.under])
    if cond.older_than is not None:
        # BEFORE compares whole days of INTERNALDATE in the server's zone (up to 14 h off UTC):
        # two days of slack keep the result a superset
        cutoff = (now.astimezone(UTC) - cond.older_than).date() + timedelta(days=2)
        add(_Keys([["BEFORE", cutoff]], False, False))
    for child in cond.all_ or []:
        add(_translate(child, now))
    if cond.any_ is not None:
        add(_translate_any(cond.any_, now))
    if cond.not_ is not None:
        inner = _translate(cond.not_, now)
        if inner.exact and inner.keys:
            keys.append(["NOT", _group(inner.keys)])
            certain = certain and inner.certain
        else:
            exact = certain = False  # NOT of a superset would wrongly exclude messages
    return _Keys(keys, exact, certain)


def _header_keys(test: HeaderTest) -> _Keys:
    part = _string_keys(["HEADER", test.name], "header", test)
    if part.keys:
        return part
    # every string test needs the header to be present: HEADER name "" says just that
    return _Keys([["HEADER", test.name, ""]], False, False)


def _translate_any(children: list[Condition], now: datetime) -> _Keys:
    parts = [_translate(child, now) for child in children]
    if any(not p.keys for p in parts):
        # a branch the server can't narrow makes the whole OR "anything"
        everything = [p for p in parts if not p.keys]
        return _Keys([], any(p.exact for p in everything), any(p.certain for p in everything))
    return _Keys(
        [_or_chain([_group(p.keys) for p in parts])], all(p.exact for p in parts), all(p.certain for p in parts)
    )


def search_criteria(rule: RuleConfig | CompiledRule, *, now: datetime) -> SearchCriteria | None:
    """IMAP SEARCH criteria selecting a superset of the messages ``rule`` can match, or None
    when the server can't narrow it (then every message is fetched and evaluated)."""
    config = rule.config if isinstance(rule, CompiledRule) else rule
    translated = _translate(config.match, now)
    return _group(translated.keys) if translated.keys else None
