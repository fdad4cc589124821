"""Which extra header names a message may carry: pure and cheap to import, so the config loader
checks a job's ``headers:`` with the same rule compose applies to every message.
"""

from __future__ import annotations

import re

HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
# Headers compose() sets itself; extra headers may not replace (or smuggle in) these.
OWN_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "auto-submitted",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "sender",
    }
)
# Headers a job gets from its own keys (list_unsubscribe:), or postroom's loop marks
# (X-Postroom-*): a job's headers: may not set them by hand.
JOB_MANAGED = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
POSTROOM_PREFIX = "x-postroom-"
# Headers that others write about a message, never its sender: a job that set them would
# forge a trace, a signature or a verdict that receivers (and postroom's own bounce handling)
# trust. Name (lower case) -> who writes it.
NOT_THE_SENDERS: dict[str, str] = {
    "return-path": "the receiving server, from the envelope sender",
    "received": "each server on the way (trace)",
    "delivered-to": "the delivering server",
    "x-original-to": "the delivering server",
    "dkim-signature": "the signing relay",
    "arc-seal": "the forwarding relays (ARC)",
    "arc-message-signature": "the forwarding relays (ARC)",
    "arc-authentication-results": "the forwarding relays (ARC)",
    "authentication-results": "the receiving server's checks",
    "received-spf": "the receiving server's checks",
    "x-failed-recipients": "a bouncing server",
}
# Prefixes of such headers: Resent-* make up a resending block (RFC 5322 3.6.6), not a send.
NOT_THE_SENDERS_PREFIXES: dict[str, str] = {"resent-": "a resend (RFC 5322 3.6.6), not postroom's send"}
# Control characters have no place in a header value: CR/LF start a header, NUL ends a C
# string, and the rest (\x0b, \x0c, \x1c, DEL …) confuse parsers and filters downstream.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` can't be an extra header on a message compose() makes; None if it can."""
    if not HEADER_NAME.match(name):
        return f"not a valid header name: {name!r}"
    if name.lower() in OWN_HEADERS:
        return f"{name!r} is set by postroom itself (from the job's own keys)"
    return None


def job_header_problem(name: str) -> str | None:
    """Why a job's ``headers:`` may not name ``name``; None if it may."""
    problem = header_name_problem(name)
    if problem is not None:
        return problem
    if name.lower() in JOB_MANAGED:
        return f"{name!r} comes from the job's list_unsubscribe: key"
    if name.lower().startswith(POSTROOM_PREFIX):
        return f"{name!r}: X-Postroom-* headers are postroom's own (loop guards)"
    writer = NOT_THE_SENDERS.get(name.lower()) or next(
        (who for prefix, who in NOT_THE_SENDERS_PREFIXES.items() if name.lower().startswith(prefix)), None
    )
    if writer is not None:
        return f"{name!r} is written by {writer}, never by a sender"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` can't be a header's value (a control character, named by code); None if
    it can. For a job's headers: at load time for the template, at render time for the text."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return f"contains the control character U+{ord(found.group()):04X} (not allowed in a header)"


# RFC 3986 characters: anything else in a rendered URL (a space, '<', '>', a quote, a line
# break) would end the <...> of List-Unsubscribe early; row data belongs in it |urlencode'd.
_URL = re.compile(r"^https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
_BARE_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")
MAX_URL = 900  # stays on one header line (998 octets) with the mailto beside it


def list_unsubscribe_problem(url: str | None, mailto: str | None, *, one_click: bool) -> str | None:
    """Why these rendered values can't make List-Unsubscribe headers; None if they can."""
    if url is not None:
        if not _URL.match(url) or len(url) > MAX_URL:
            return f"list_unsubscribe.url is not a plain http(s) URL (|urlencode row values): {url[:200]!r}"
        if one_click and not url.startswith("https://"):
            return f"list_unsubscribe: one_click needs an https:// url (RFC 8058): {url[:200]!r}"
    elif one_click:
        return "list_unsubscribe: one_click needs a url"
    if mailto is not None and not _BARE_ADDRESS.match(mailto):
        return f"list_unsubscribe.mailto is not a bare address (a@b.example): {mailto[:200]!r}"
    if url is None and mailto is None:
        return "list_unsubscribe needs a url, a mailto, or both"
    return None


def list_unsubscribe_headers(url: str | None, mailto: str | None, *, one_click: bool) -> dict[str, str]:
    """RFC 2369 List-Unsubscribe (the URL first: receivers take the first they can use) and,
    for ``one_click``, RFC 8058's List-Unsubscribe-Post. Checked with list_unsubscribe_problem
    first. Gmail and Yahoo want both from bulk senders, with a DKIM signature covering them
    (that is the relay's job)."""
    targets = []
    if url is not None:
        targets.append(f"<{url}>")
    if mailto is not None:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
    headers = {"List-Unsubscribe": ", ".join(targets)}
    if one_click:
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers
