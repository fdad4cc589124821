"""Number, money and date filters for templates, in the conventions of a locale.

``{{ total|money("EUR", "de_DE") }}`` → ``1.234,50 €``; ``{{ now|date("long", "fr_FR") }}`` →
``29 novembre 2026``. A filter without a locale argument uses the job's ``locale:`` (set for
the render by ``rendering_locale``); with neither, money and number keep the plain English
form (``1,234.50``) without loading Babel, and dates are formatted for ``en_US``.

Pure. Rounding is half up, as on an invoice (Babel alone would round half to even). Places
and patterns are capped: a template can't ask for a million-digit number.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
from collections.abc import Iterator
from contextvars import ContextVar
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from babel import Locale

DATE_LOCALE = "en_US"  # dates with no locale anywhere
MAX_PLACES = 20
MAX_PATTERN = 64  # characters of a CLDR date pattern ("d MMMM y")
DATE_FORMATS = frozenset({"short", "medium", "long", "full"})

_current: ContextVar[str | None] = ContextVar("postroom_template_locale", default=None)


@contextlib.contextmanager
def rendering_locale(name: str | None) -> Iterator[None]:
    """Within this block, filters without a locale argument use ``name``."""
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def locale_problem(name: str) -> str | None:
    """Why ``name`` is not a locale Babel knows (``de_DE``, ``fr``, ``pt-BR``); None if it is."""
    try:
        _locale(name)
    except ValueError as exc:
        return str(exc)
    return None


def money(value: Any, currency: str = "", locale: str | int | None = None, places: int | None = None) -> str:
    """``1234.5|money`` → ``1,234.50``; ``|money("EUR")`` → ``1,234.50 EUR``;
    ``|money("EUR", "de_DE")`` (or a job's ``locale: de_DE``) → ``1.234,50 €``."""
    if isinstance(locale, int):  # money(currency, places), from before locales
        locale, places = None, locale
    name = locale or _current.get()
    if name is None:
        text = number(value, 2 if places is None else places)
        return f"{text} {currency}" if currency else text
    babel_locale = _locale(name)
    if not currency:
        return _decimal_text(_rounded(value, 2 if places is None else places), babel_locale)
    from babel.numbers import format_currency, get_currency_precision

    try:
        precision = get_currency_precision(currency) if places is None else _places(places)
        return str(
            format_currency(
                _rounded(value, precision),
                currency,
                locale=babel_locale,
                currency_digits=places is None,
                decimal_quantization=False,
            )
        )
    except Exception as exc:  # babel's unknown-currency errors are not ValueErrors
        raise ValueError(f"money: can't format {currency!r}: {exc}") from None


def number(value: Any, places: int = 0, locale: str | None = None) -> str:
    """``1234567|number`` → ``1,234,567``; ``0.125|number(2)`` → ``0.13`` (half up);
    ``|number(2, "de_DE")`` → ``0,13``."""
    amount = _rounded(value, places)
    name = locale or _current.get()
    if name is None:
        return f"{amount:,}"
    return _decimal_text(amount, _locale(name))


def date(value: Any, format: str = "medium", locale: str | None = None) -> str:
    """A date (or datetime, or ISO 8601 text) as the locale writes it: ``short``, ``medium``,
    ``long``, ``full``, or a CLDR pattern such as ``"d MMMM y"``."""
    from babel.dates import format_date

    when = _when(value)
    day = when.date() if isinstance(when, dt.datetime) else when
    return str(format_date(day, _pattern(format), locale=_locale(locale or _current.get() or DATE_LOCALE)))


def datetime(value: Any, format: str = "medium", locale: str | None = None) -> str:
    """A datetime (or ISO 8601 text) as the locale writes it, in its own time zone."""
    from babel.dates import format_datetime

    when = _when(value)
    if not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time())
    name = locale or _current.get() or DATE_LOCALE
    return str(format_datetime(when, _pattern(format), tzinfo=when.tzinfo, locale=_locale(name)))


def _rounded(value: Any, places: int) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return amount.quantize(Decimal(1).scaleb(-_places(places)), rounding=ROUND_HALF_UP)


def _places(places: Any) -> int:
    if not isinstance(places, int) or not 0 <= places <= MAX_PLACES:
        raise ValueError(f"places must be a whole number from 0 to {MAX_PLACES}, got {places!r}")
    return places


def _decimal_text(amount: Decimal, locale: Locale) -> str:
    """``amount`` with exactly its own places, in the locale's grouping and symbols."""
    from babel.numbers import parse_pattern

    pattern = copy.copy(parse_pattern(locale.decimal_formats[None]))
    places = max(0, -int(amount.as_tuple().exponent))
    pattern.frac_prec = (places, places)
    return str(pattern.apply(amount, locale))


def _when(value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"not a date, datetime or ISO 8601 text: {value!r}")


def _pattern(format: str) -> str:
    if not isinstance(format, str) or not format or len(format) > MAX_PATTERN:
        raise ValueError(f"date format: short, medium, long, full or a pattern of at most {MAX_PATTERN} characters")
    return format


@cache
def _locale(name: str) -> Locale:
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(name.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError(f"unknown locale {name!r} (e.g. en_US, de_DE, fr)") from None
