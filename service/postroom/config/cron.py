"""Whether a schedule's `cron:` string is one APScheduler 3.x's `CronTrigger.from_crontab` takes.

The config check runs on every `postroom check`; importing any APScheduler module costs
≈ 24 ms (its package `__init__` looks up its version and pulls in asyncio), so the config
validates the string here and APScheduler parses it only when the daemon schedules the job
(schedule/fires.py). tests/test_cron.py holds the two to the same answer on thousands of strings.

What from_crontab accepts, field by field (minute hour day month weekday, split on any
whitespace, so no term can hold a space: the `1st mon` / `last fri` day forms of the keyword
API cannot be written in a crontab):
- a term list split on commas, every term non-empty;
- `*`, `*/step`, `n`, `a-b`, `n/step`, `a-b/step` with (Unicode) decimal digits;
- month and weekday names, alone or as a `name-name` range, any case; text after the name
  (`mon-fri/2`, `jan5`) is ignored, as APScheduler's pattern is anchored only at the start;
- in the day field, any term starting with `last` (the month's last day), likewise.
Weekday numbers run 0 (Monday) to 6, APScheduler 3.x's numbering, not crontab's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["cron_problem"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    takes_last: bool = False  # the day field's `last`


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31, takes_last=True),
    _Field("month", 1, 12, names=("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    _Field("weekday", 0, 6, names=("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
)

# \d and int() both take any Unicode decimal digit, as APScheduler's patterns do.
_STAR = re.compile(r"\*(?:/(?P<step>\d+))?")
_NUMBERS = re.compile(r"(?P<first>\d+)(?:-(?P<last>\d+))?(?:/(?P<step>\d+))?")
# Matched at the start only (see the module docstring); IGNORECASE's Unicode folding
# (`ſ` for s, `K` for k) is kept so that the same strings match.
_NAMES = re.compile(r"(?P<first>[a-z]+)(?:-(?P<last>[a-z]+))?", re.IGNORECASE)
_LAST = re.compile(r"last", re.IGNORECASE)


def cron_problem(expr: str) -> str | None:
    """None if `expr` is a five-field crontab line APScheduler takes, else a short reason."""
    values = expr.split()
    if len(values) != len(_FIELDS):
        return f"{len(values)} fields, not {len(_FIELDS)}"
    for field, value in zip(_FIELDS, values, strict=True):
        for term in value.split(","):
            problem = _term_problem(field, term)
            if problem is not None:
                return f"{field.name} {term!r}: {problem}"
    return None


def _term_problem(field: _Field, term: str) -> str | None:
    if match := _STAR.fullmatch(term):
        return _range_problem(field, field.low, field.high, match["step"])
    if match := _NUMBERS.fullmatch(term):
        first, last, step = match["first"], match["last"], match["step"]
        if last is None and step is None:
            last = first
        return _range_problem(field, first, last, step)
    if field.names and (match := _NAMES.match(term)):
        first_at, last_at = (_name_index(field, match[key]) for key in ("first", "last"))
        if first_at is None or (match["last"] is not None and last_at is None):
            return f"not a {field.name} name"
        last_at = first_at if last_at is None else last_at
        return _range_problem(field, field.low + first_at, field.low + last_at, None)
    if field.takes_last and _LAST.match(term):
        return None
    return (
        "not *, a number, a range or a step"
        + (" or a name" if field.names else "")
        + (" or last" if field.takes_last else "")
    )


def _name_index(field: _Field, name: str | None) -> int | None:
    lowered = None if name is None else name.lower()
    return field.names.index(lowered) if lowered in field.names else None


def _range_problem(field: _Field, first: int | str, last: int | str | None, step: str | None) -> str | None:
    """The checks APScheduler makes of `first[-last][/step]`; `last` None: up to the top."""
    try:
        # int() also refuses digit strings longer than sys.get_int_max_str_digits(), as
        # APScheduler's own int() does.
        low, high = int(first), None if last is None else int(last)
        every = None if step is None else int(step)
    except ValueError:
        return "number too long"
    if every == 0:
        return "step 0"
    if high is not None and low > high:
        return "range runs backwards"
    if every is not None and every > field.high - field.low:
        return f"step above {field.high - field.low}"
    if low < field.low:
        return f"below {field.low}"
    if high is not None and high > field.high:
        return f"above {field.high}"
    # APScheduler measures a range that ends at 0 (`0-0/5`) as running to the field's top.
    span = (high or field.high) - low
    if every is not None and every > span:
        return f"step above the range's span {span}"
    return None
