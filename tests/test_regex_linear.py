"""Every pattern that reads message, server or data-source input runs in time linear in it.

Property tests: Hypothesis draws an adversarial unit (a few of the characters each pattern
trips on: address characters without an "@", "<" without ">", blank lines, "Message-ID:"…)
and the input is that unit repeated to a size. The size is doubled until one call takes a few
milliseconds, then 16× the input must take under 48× the time (linear: about 16×; quadratic:
256×: a margin of 3 both ways, which cache effects and other workers' load on two cores do not
cross). A ratio of best-of-five CPU times, re-measured before it fails, holds on a loaded
machine where a wall-clock threshold would not. docs/guarantees.md lists each pattern and its verdict.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from postroom.auth import sasl
from postroom.incoming import forward, imap_wire, message, replies
from postroom.mail import compose, dsn, headers, parse, text

FLOOR = 0.002  # CPU seconds one call must take before its growth is judged (timer noise below)
# The most units the big input may have: a call still under FLOOR when 16x its input would
# pass this counts as linear (quadratic, it would take seconds). Past a few MB, cache and
# allocator effects bend even linear curves (52x for 16x the input at 4 MB, seen).
CAP = 1 << 18
GROWTH = 16  # the big input is this many times the small one
RATIO = 48.0  # ... and must take under this many times the time
WHOLE_RATIO = 8.0  # a whole report: 4× the text (up to the reader's cut) in under this

PROPERTY = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,  # the same examples each run: a failure can be replayed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _best(fn: Callable[[Any], object], arg: Any, reps: int = 5) -> float:
    """The least CPU time of this thread for ``fn(arg)``: other processes' load (eight
    sessions on two cores) stretches wall-clock time, not this."""
    best = float("inf")
    for _ in range(reps):
        start = time.thread_time()
        fn(arg)
        best = min(best, time.thread_time() - start)
    return best


def assert_linear(fn: Callable[[Any], object], make: Callable[[int], Any], what: str) -> None:
    """``fn(make(GROWTH × n))`` takes under RATIO × ``fn(make(n))``, n large enough to measure."""
    gc.disable()
    try:
        n = 256
        while _best(fn, make(n)) < FLOOR:
            if n * GROWTH >= CAP:
                return  # under FLOOR with the big input at CAP: linear (quadratic takes seconds)
            n *= 2
        ratios = []
        for _ in range(8):  # a burst of load on one measurement is not a quadratic pattern
            small, big = _best(fn, make(n)), _best(fn, make(GROWTH * n))
            ratios.append(big / small)
            if ratios[-1] < RATIO:
                return
        raise AssertionError(f"{what}: {GROWTH}x the input took {min(ratios):.1f}x the time at {n} units: {ratios}")
    finally:
        gc.enable()


def repeated(unit: str, tail: str = "") -> Callable[[int], str]:
    return lambda n: unit * max(1, n // len(unit)) + tail


def units(*pieces: str) -> st.SearchStrategy[str]:
    """An adversarial unit: one to four of the pieces, joined."""
    return st.lists(st.sampled_from(pieces), min_size=1, max_size=4).map("".join)


# -- mail/dsn.py: what a bounce report is read with ----------------------------------------------
def _lines(fn: Callable[[str], object]) -> Callable[[str], object]:
    return lambda s: [fn(line) for line in s.splitlines()]


DSN_READERS: dict[str, tuple[Callable[[str], object], st.SearchStrategy[str]]] = {
    "address": (dsn._address, units("a", ".", "-", "@", "a@", "@a", "a.", " ", ";")),
    "addresses": (dsn._ADDR.findall, units("a", "!", ".", "@", "a@b", "b.", "@@")),
    "message id": (dsn._message_id, units("<", "a", ">", "<a", " ", "@")),
    "quoted message id": (dsn._quoted_message_id, units("\n", " ", "Message-ID:", "<a", "\t", "x")),
    "paragraphs": (dsn._paragraphs, units("\n", " ", "\r\n", "a", "\n \n")),
    "qmail recipient": (_lines(dsn._qmail_recipient), units("<", "a@", "@", ">", ">:", "a")),
    "smtp reply": (_lines(dsn._reply_class), units("\n", " ", "5", "55", "550", "-")),
    "status": (dsn._STATUS.search, units("5.", "1.", "5", ".", "1", " ")),
    "bounce subject": (dsn._BOUNCE_SUBJECTS.search, units("undeliver", "delivery ", "non", "-", " ", "a")),
}


@pytest.mark.parametrize("name", sorted(DSN_READERS))
def test_bounce_report_readers_take_linear_time(name):
    fn, strategy = DSN_READERS[name]

    @PROPERTY
    @given(unit=strategy)
    @example(unit={"address": "a", "addresses": "a", "message id": "<a"}.get(name, "\n"))
    def check(unit: str) -> None:
        assert_linear(fn, repeated(unit), f"dsn {name} on {unit!r}")

    check()


def _report(body: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail\nX-Failed-Recipients: x@example.org\n"
        f"Content-Type: text/plain\n\n{body}"
    ).encode()


@PROPERTY
@given(unit=units("a", "@", "<", ">", "\n", " ", "Message-ID:", "550", "<a@b>:\n", "5.1.1"))
@example(unit="a")  # 256 KB of address characters took 68 s before
@example(unit="\n")
def test_a_whole_bounce_report_parses_in_linear_time(unit):
    # Up to MAX_TEXT: past it, the text is cut (and the time flat).
    sizes = {1: dsn.MAX_TEXT // 16, 4: dsn.MAX_TEXT // 4}
    gc.disable()
    try:
        for _ in range(5):
            small = _best(dsn.parse_bounce, _report(repeated(unit)(sizes[1])))
            big = _best(dsn.parse_bounce, _report(repeated(unit)(sizes[4])))
            if big / small < WHOLE_RATIO:
                return
        raise AssertionError(f"parse_bounce on {unit!r}: 4x the input took {big / small:.1f}x the time")
    finally:
        gc.enable()


# -- the rest of the package: message headers, IMAP replies, token answers, data values ----------
def _b(make: Callable[[int], str]) -> Callable[[int], bytes]:
    return lambda n: make(n).encode()


OTHERS: dict[str, tuple[Callable[[Any], object], st.SearchStrategy[str], bool]] = {
    # name: (the pattern as the code calls it, units, bytes input)
    "message: bare address": (message._BARE_ADDRESS.match, units("a", "@", ".", " ", "a@b", "!"), False),
    "message: named address": (message._NAMED_ADDRESS.match, units("a", " ", "a ", "<", "@", "'"), False),
    "parse: folding": (lambda s: parse._FOLDING_RE.sub("", s), units("\r\n", "\n", " ", "\t", "a"), False),
    "message: header name": (message._HEADER_NAME.match, units("a", ":", "-", " "), False),
    "imap: untagged count": (imap_wire._UNTAGGED_COUNT.match, units("* ", "1", " ", "A", "*"), True),
    "imap: literal at end": (lambda b: imap_wire._literal_size(b + b"}"), units("{", "1", "}", "a"), True),
    "imap: lean fetch": (imap_wire._LEAN_FETCH.match, units("1", " ", "(UID ", "1 ", "{", "RFC822.SIZE "), True),
    "forward: subject prefix": (forward._FWD_PREFIX.match, units("fwd", ":", " ", "fw", "wg:", "tr"), False),
    "forward: control characters": (lambda s: forward._CONTROL.sub(" ", s), units("\x00", "a", "\n"), False),
    "replies: auto prefix": (replies._AUTO_PREFIX.match, units("auto", ":", " ", "auto:"), False),
    "replies: message id": (replies._MSGID.findall, units("<", "a", ">", " "), False),
    "sasl: bearer token": (sasl._BEARER_TOKEN.fullmatch, units("a", "=", "a=", "-", " "), False),
    "text: html tag (fallback)": (lambda s: text._TAG.sub(" ", s), units("<", "a", ">", "<<"), False),
    "text: whitespace": (lambda s: text._WHITESPACE.sub(" ", s), units(" ", "\t", "a", "\n"), False),
    "text: html to text": (
        text.html_to_text,
        units("<", "<![x[", "a", ">", "\n", "<b>", "&#", "<!--", "-->", "</", "'", "<a b="),
        False,
    ),
    "compose: domain": (compose._DOMAIN.match, units("a", "-", ".", "!"), False),
    "compose: message id": (compose._MESSAGE_ID.match, units("<", "a", "@", ">"), False),
    "compose: content type": (compose._CONTENT_TYPE.match, units("a", "/", "+", " "), False),
    "compose: simple address": (compose._SIMPLE_ADDRESS.match, units("a", ".", "@", "-", "a."), False),
    "headers: url": (headers._URL.match, units("http://", "a", "/", " "), False),
    "headers: bare address": (headers._BARE_ADDRESS.match, units("a", ".", "@", "-", "b."), False),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_every_pattern_on_message_or_server_input_takes_linear_time(name):
    fn, strategy, as_bytes = OTHERS[name]

    @PROPERTY
    @given(unit=strategy)
    def check(unit: str) -> None:
        make = _b(repeated(unit, "!")) if as_bytes else repeated(unit, "!")
        assert_linear(fn, make, f"{name} on {unit!r}")

    check()
