"""URLs and DSNs as they may be shown: in an error, a log line or a command's output.

A URL in the config can carry a secret (``https://user:PASSWORD@host/…``,
``postgresql://app:PASSWORD@db/shop``, ``…?api_key=…``). Whatever shows one shows
``shown_url(url)``: the password and any query value whose name says secret become ``***``.
"""

from __future__ import annotations

import re
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
