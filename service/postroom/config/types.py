"""Small value types shared by the config schema: durations, sizes, time zones, addresses,
webhook secrets."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import timedelta
from email.utils import getaddresses
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_ADDR_SPEC = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.?[^@\s<>(),;:\"\[\]]*$")


def parse_duration(value: Any) -> timedelta:
    """'15m', '1h', '7d', '30s', 90 (seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"])
    raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 15m, 1h, 7d")


def parse_size(value: Any) -> int:
    """'10k', '2M', 5000 -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a size; write e.g. 5000, 10k, 2M")


def parse_timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a time zone is a name like UTC or Europe/Berlin")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Berlin") from None
    return value


def parse_locale(value: Any) -> str:
    """A locale Babel knows (de_DE, fr, pt-BR); Babel is imported only when a config names one."""
    if not isinstance(value, str):
        raise ValueError("a locale is a name like en_US, de_DE or fr")
    from ..mail.locale_filters import locale_problem

    problem = locale_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def parse_address(value: Any) -> str:
    """Exactly one mail address (a display name is allowed); returned as written, trimmed."""
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise ValueError("an address is one line of text like name@example.org")
    pairs = getaddresses([value])
    if len(pairs) != 1 or not _ADDR_SPEC.match(pairs[0][1] or ""):
        raise ValueError(f"{value!r} is not one mail address like name@example.org")
    return value.strip()


WEBHOOK_SECRET_PREFIX = "whsec_"
# What a secret error tells the user to run (24 random bytes, as Standard Webhooks suggests).
MAKE_WEBHOOK_SECRET = "python -c \"import base64,os;print('whsec_'+base64.b64encode(os.urandom(24)).decode())\""


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` + the key's bytes in base64.

    Anything else is a ValueError saying how to make one (the message never holds the
    secret). A secret without the prefix is refused rather than guessed at: used as UTF-8
    bytes it signs what no Standard Webhooks verifier accepts, and read as bare base64 a
    typo could still decode to some other key."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(
            f"a webhook secret is {WEBHOOK_SECRET_PREFIX!r} followed by base64 (Standard Webhooks);"
            f" make one with: {MAKE_WEBHOOK_SECRET}"
        )
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"the part after {WEBHOOK_SECRET_PREFIX!r} is not valid base64; make a secret with: {MAKE_WEBHOOK_SECRET}"
        ) from None
    if not key:
        raise ValueError(f"the secret has no key after {WEBHOOK_SECRET_PREFIX!r}; make one with: {MAKE_WEBHOOK_SECRET}")
    return key


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
TimeZoneName = Annotated[str, BeforeValidator(parse_timezone)]
LocaleName = Annotated[str, BeforeValidator(parse_locale)]
Address = Annotated[str, BeforeValidator(parse_address)]
