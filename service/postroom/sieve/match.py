"""Comparators and match types (RFC 5228 2.7, RFC 5231 relational, the regex draft), pure.

``i;ascii-casemap`` folds ASCII letters only (not Unicode: "É" and "é" differ, as in
Pigeonhole); ``i;octet`` compares as written. ``:matches`` is a glob whose ``*`` match as
little as possible (so ``${1}`` of ``"*a*"`` on "This is a test" is "This is ", as RFC 5229
and Pigeonhole have it). ``:regex`` is a POSIX extended regular expression (leftmost-longest, as Pigeonhole's libc
engine matches), run by the ``regex`` library, searched anywhere in a value cut to
``MAX_REGEX_INPUT`` characters, with a deadline (``Matcher.deadline``): a backtracking engine
can take exponential time on some patterns, so a pattern with a quantified group that itself
repeats (``(a+)+``) is refused by ``check``, and whatever else runs too long is a runtime
error (the message is kept), never a stalled watcher.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex

from postroom.errors import PostroomError

MAX_REGEX_INPUT = 4096  # characters of a value a :regex looks at
MAX_PATTERN = 1024  # characters of a :regex or :matches key
MAX_REGEX_SECONDS = 1.0  # what every :regex of a script may take together, per message
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
# a group holding a quantifier, itself quantified: ``(a+)+``, ``(a|aa)*`` is let through
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}][^()]*\)[+*{]")

COMPARATORS = ("i;ascii-casemap", "i;octet")


class SieveRuntimeError(PostroomError):
    """A script failed on a message (Pigeonhole's "runtime error"): its actions are dropped
    and the message is kept, as RFC 5228 2.10.6 asks."""


def casemap(value: str) -> str:
    return value.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Matcher:
    """One match type with its comparator; ``match`` returns the captures (``${0}``..) on a
    match, or None."""

    match_type: str  # :is :contains :matches :regex :value :count
    comparator: str
    relation: str | None = None  # :value / :count: gt ge lt le eq ne
    deadline: float = float("inf")  # time.monotonic() by which every :regex must be done

    def fold(self, value: str) -> str:
        return casemap(value) if self.comparator == "i;ascii-casemap" else value

    def match(self, value: str, key: str) -> list[str] | None:
        kind = self.match_type
        if kind == ":is":
            return [] if self.fold(value) == self.fold(key) else None
        if kind == ":contains":
            return [] if self.fold(key) in self.fold(value) else None
        if kind == ":matches":
            found = _glob(key, self.comparator == "i;ascii-casemap").fullmatch(value)
            return [found.group(0), *found.groups()] if found else None
        if kind == ":regex":
            left = self.deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                found = _regex(key, self.comparator == "i;ascii-casemap").search(
                    value[:MAX_REGEX_INPUT], timeout=min(left, MAX_REGEX_SECONDS)
                )
            except TimeoutError:
                raise SieveRuntimeError(f":regex {key!r} ran out of time") from None
            return [found.group(0), *(g or "" for g in found.groups())] if found else None
        if kind == ":value":
            return [] if _relate(self.fold(value), self.fold(key), self.relation or "eq") else None
        raise SieveRuntimeError(f"match type {kind} is not supported here")

    def any_match(self, values: Sequence[str], keys: Sequence[str]) -> list[str] | None:
        if self.match_type == ":count":
            count = str(len(values))
            return [] if any(_relate_numbers(count, key, self.relation or "eq") for key in keys) else None
        for value in values:
            for key in keys:
                found = self.match(value, key)
                if found is not None:
                    return found
        return None


_RELATIONS: dict[str, Callable[[int], bool]] = {
    "gt": lambda c: c > 0,
    "ge": lambda c: c >= 0,
    "lt": lambda c: c < 0,
    "le": lambda c: c <= 0,
    "eq": lambda c: c == 0,
    "ne": lambda c: c != 0,
}


def _relate(a: str, b: str, relation: str) -> bool:
    return _RELATIONS[relation]((a > b) - (a < b))


def _relate_numbers(a: str, b: str, relation: str) -> bool:
    if not b.isdigit():
        return False
    return _RELATIONS[relation]((int(a) > int(b)) - (int(a) < int(b)))


_glob_cache: dict[tuple[str, bool], re.Pattern[str]] = {}
_regex_cache: dict[tuple[str, bool], regex.Pattern[str]] = {}
_CACHE_SIZE = 256


def _glob(pattern: str, fold: bool) -> re.Pattern[str]:
    cached = _glob_cache.get((pattern, fold))
    if cached is not None:
        return cached
    if len(pattern) > MAX_PATTERN:
        raise SieveRuntimeError(f":matches key longer than {MAX_PATTERN} characters")
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    compiled = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE | re.ASCII if fold else 0))
    if len(_glob_cache) >= _CACHE_SIZE:
        _glob_cache.clear()
    _glob_cache[(pattern, fold)] = compiled
    return compiled


def check_regex(pattern: str) -> str | None:
    """Why ``pattern`` can't be used as a :regex key, or None."""
    if len(pattern) > MAX_PATTERN:
        return f"longer than {MAX_PATTERN} characters"
    if _NESTED_QUANTIFIER.search(pattern):
        return "a repeated group that itself repeats (like (a+)+) can take exponential time; rewrite it"
    try:
        regex.compile(pattern, regex.POSIX)
    except regex.error as exc:
        return f"bad regular expression: {exc}"
    return None


def _regex(pattern: str, fold: bool) -> regex.Pattern[str]:
    cached = _regex_cache.get((pattern, fold))
    if cached is not None:
        return cached
    problem = check_regex(pattern)
    if problem:
        raise SieveRuntimeError(f":regex {pattern!r}: {problem}")
    compiled = regex.compile(pattern, regex.POSIX | (regex.IGNORECASE | regex.ASCII if fold else 0))
    if len(_regex_cache) >= _CACHE_SIZE:
        _regex_cache.clear()
    _regex_cache[(pattern, fold)] = compiled
    return compiled
