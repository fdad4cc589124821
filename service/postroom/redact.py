"""URLs and DSNs as they may be shown: in an error, a log line or a command's output.

A URL in the config can carry a secret (``https://user:PASSWORD@host/…``,
``postgresql://app:PASSWORD@db/shop``, ``…?api_key=…``). Whatever shows one shows
``shown_url(url)``: the password and any query value whose name says secret become ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
_SECRET_PARAM = re.compile(r"pass(word)?|secret|token|key|sig(nature)?|auth|credential", re.IGNORECASE)


def shown_url(url: str) -> str:
    """``url`` with its password and secret-named query values replaced by ``***``; a string
    that does not parse as a URL is shown as ``***`` whole (it may be all secret)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    shown = url
    if password is not None:  # user:password@host -> user:***@host
        userinfo, _, host = parts.netloc.rpartition("@")
        shown = shown.replace(parts.netloc, f"{userinfo.partition(':')[0]}:{MASK}@{host}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(name) for name, _ in pairs):
        masked = urlencode([(name, MASK if _SECRET_PARAM.search(name) else value) for name, value in pairs], safe="*")
        shown = shown.replace(f"?{parts.query}", f"?{masked}", 1)
    # Edited in place, not re-joined: urlunsplit would turn sqlite:////abs into sqlite://abs.
    return shown


# Free text from a server (an OAuth2 ``error_description``) may echo what we sent it: the
# form's secret fields by name, and anything shaped like a token by itself.
_SECRET_PAIR = re.compile(
    # Bounded name parts: no backtracking over a long run of word characters.
    r"""(?P<name>\b[\w-]{0,40}?(?:pass(?:word)?|secret|token|key|verifier|assertion|sig(?:nature)?|credential|auth)[\w-]{0,20})"""
    r"""(?P<sep>["']?\s{0,3}[:=]\s{0,3}["']?)(?P<value>[^\s"'&,;]{1,4096})""",
    re.IGNORECASE,
)
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-+~=]{20,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
SHORTEST_SECRET = 4  # a shorter "secret" would mask ordinary words of the message


def _masked_if_token(found: re.Match[str]) -> str:
    run = found.group()
    letters_mixed = any(c.islower() for c in run) and any(c.isupper() for c in run)
    return MASK if letters_mixed or any(c.isdigit() for c in run) else run


def redacted(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` as it may be logged, stored or shown: each of ``secrets`` (by value), the value
    of every ``name=value`` whose name says secret, and every long token-shaped run become
    ``***``; control characters (a forged log line) become a space."""
    for secret in sorted({s for s in secrets if len(s) >= SHORTEST_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _SECRET_PAIR.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    text = _TOKEN_LIKE.sub(_masked_if_token, text)
    return _CONTROL.sub(" ", text)
