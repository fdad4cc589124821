"""Size bounds for template rendering, checked before a string is built, not after.

A block's output is capped when it is joined (templates.py), but one expression can ask for far
more than any output: ``"%999999999s"|format(1)`` allocates a gigabyte before anything is
joined. So every operation whose result can be much bigger than its inputs is sized here from
its arguments, and refused over MAX_BLOCK_CHARS (nothing bigger could be sent anyway):
printf and ``str.format`` widths and precisions, repetition, padding, and the filters and str
methods that multiply text (wordwrap, replace, join, indent, center, batch, slice, lipsum).
Pure functions of their arguments; the sandbox (templates.py) calls them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from functools import wraps
from string import Formatter
from typing import Any

import jinja2
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

MAX_BLOCK_CHARS = 2_000_000  # one rendered block (subject, text or html), in characters
MAX_RANGE = 10_000  # items one range() may yield
MAX_INT_BITS = 4_096  # size of an integer ** may produce


class LimitExceeded(jinja2.exceptions.SecurityError):
    """A template went over one of the MAX_* bounds."""


def refuse_over(what: str, size: int) -> None:
    if size > MAX_BLOCK_CHARS:
        raise LimitExceeded(f"{what} would make {size:,} characters, over the limit ({MAX_BLOCK_CHARS:,})")


def _len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


# -- formatting -----------------------------------------------------------------------------
# One printf conversion: %[(key)][flags][width][.precision][length]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
# The width and precision of a str.format spec: [[fill]align][sign][z][#][0][width][,_][.precision]
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?")


def printf_size(fmt: str, values: Any) -> int:
    """The most ``fmt % values`` can make: the text, the values, every width and precision.
    A ``*`` width or precision comes from the values: count the largest integer among them."""
    given = (
        tuple(values.values()) if isinstance(values, Mapping) else (values if isinstance(values, tuple) else (values,))
    )
    star = max((abs(v) for v in given if isinstance(v, int)), default=0)
    size = len(fmt) + sum(_len(v) for v in given)
    for width, precision in _PRINTF.findall(fmt):
        size += sum(star if n == "*" else int(n or 0) for n in (width, precision))
    return size


def spec_size(spec: str) -> int:
    match = _SPEC.match(spec)
    return int(match[1] or 0) + int(match[2] or 0) if match else 0


class _BoundedFormatter(SandboxedFormatter):
    """The sandbox's str.format, refusing a field whose width or precision is over the limit
    (the spec is checked after nested fields like ``{:{w}}`` are filled in) and a result that
    grows over it field by field."""

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._made = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        refuse_over("a format width", spec_size(format_spec))
        field = super().format_field(value, format_spec)
        self._made += len(field)
        refuse_over("str.format", self._made)
        return field


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


def bounded_str_format(env: jinja2.Environment, method: Any) -> Callable[..., str]:
    """What the sandbox's getattr hands a template for ``s.format`` / ``s.format_map``."""
    owner: str = method.__self__
    formatter: Formatter = (
        _BoundedEscapeFormatter(env, escape=owner.escape) if isinstance(owner, Markup) else _BoundedFormatter(env)
    )
    is_format_map = method.__name__ == "format_map"

    @wraps(method)
    def bounded(*args: Any, **kwargs: Any) -> str:
        if is_format_map:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            return type(owner)(formatter.vformat(owner, (), args[0]))
        return type(owner)(formatter.vformat(owner, args, kwargs))

    return bounded


# -- filters and str methods that multiply text ---------------------------------------------
def repeat_size(left: Any, right: Any) -> int:
    """``seq * n`` / ``n * seq``: len(seq) * n (elements for a list, characters for a str)."""
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, Sized) and not isinstance(seq, int) and isinstance(count, int):
            return len(seq) * count
    return 0


def concat_size(left: Any, right: Any) -> int:
    """``a + b`` on two strings, lists or tuples."""
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        return len(left) + len(right)
    return 0


def _padded(value: Any, width: Any = 80, *_: Any, **__: Any) -> int:
    return max(len(str(value)), _int(width))


def _indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    prefix = len(width) if isinstance(width, str) else _int(width)
    text = str(s)
    return len(text) + (text.count("\n") + 1) * prefix


def _wordwrap(s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, *_: Any, **__: Any) -> int:
    # Two lines in a row hold at least `width` characters (else the second's first word would
    # have fitted on the first), so a paragraph wraps into at most 2 * len / width + 1 lines.
    text = str(s)
    lines = min(len(text), 2 * len(text) // max(_int(width), 1)) + text.count("\n") + 1
    return len(text) + lines * len(str(wrapstring or "\n"))


def _replace(s: Any, old: Any, new: Any, count: Any = None) -> int:
    text, old, new = str(s), str(old), str(new)
    hits = text.count(old)  # "" is found len(text) + 1 times
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _join(value: Any, d: Any = "", *_: Any) -> int:
    items = list(value) if isinstance(value, Iterable) and isinstance(value, Sized) else []
    return sum(_len(v) for v in items) + max(len(items) - 1, 0) * len(str(d))


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> int:
    return _int(linecount) if fill_with is not None else 0  # padded out to linecount items


def _slice(value: Any, slices: Any, fill_with: Any = None) -> int:
    return _int(slices)  # one list per slice


def _lipsum(n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> int:
    return _int(n) * _int(max) * 12  # words of up to 12 characters with their space


def _expandtabs(s: str, tabsize: Any = 8, **__: Any) -> int:
    return len(s) + s.count("\t") * _int(tabsize)


def _str_join(s: str, iterable: Any, **__: Any) -> int:
    return _join(iterable, s)


def _str_replace(s: str, old: Any, new: Any, count: Any = -1, **__: Any) -> int:
    return _replace(s, old, new, count)


Sizer = Callable[..., int]

# Jinja's filters (and globals) that can build much more than they are given, by name, with
# what they would make given the same arguments (after the environment / eval context that
# Jinja passes some of them first).
FILTER_SIZES: dict[str, Sizer] = {
    "center": _padded,
    "indent": _indent,
    "format": lambda value, *args, **kwargs: printf_size(str(value), kwargs or args),
    "wordwrap": _wordwrap,
    "replace": _replace,
    "join": _join,
    "batch": _batch,
    "slice": _slice,
}
GLOBAL_SIZES: dict[str, Sizer] = {"lipsum": _lipsum}
# The same for methods of a str (or Markup) called from a template. (These sizers take any
# other keyword: Jinja's call passes one of its own, which it drops before the call.)
STR_METHOD_SIZES: dict[str, Sizer] = {
    "center": _padded,
    "ljust": _padded,
    "rjust": _padded,
    "zfill": _padded,
    "expandtabs": _expandtabs,
    "replace": _str_replace,
    "join": _str_join,
}


def materialized(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The first argument as a list if it is a one-shot iterator (``x|map(...)``), so it can
    be sized and still be used."""
    if args and isinstance(args[0], Iterator) and not isinstance(args[0], str):
        return (list(args[0]), *args[1:])
    return args


def bounded(name: str, function: Callable[..., Any], sizer: Sizer) -> Callable[..., Any]:
    """``function`` (a filter or global), refusing a call whose result would be over the limit.
    Keeps the function's attributes: Jinja reads from them whether it passes the environment
    or eval context first."""

    @wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        lead = 1 if args and isinstance(args[0], (jinja2.Environment, EvalContext, Context)) else 0
        rest = materialized(args[lead:])
        refuse_over(name, sizer(*rest, **kwargs))
        return function(*args[:lead], *rest, **kwargs)

    return checked


def check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """For a call from a template: refuse a str method whose result would be over the limit.
    Returns the arguments to call it with (an iterator argument made a list)."""
    owner = getattr(method, "__self__", None)
    sizer = STR_METHOD_SIZES.get(getattr(method, "__name__", "")) if isinstance(owner, str) else None
    if sizer is None:
        return args
    args = materialized(args)
    refuse_over(f"str.{method.__name__}", sizer(owner, *args, **kwargs))
    return args
