"""SASL initial responses for bearer tokens: XOAUTH2 (Google's, also Microsoft's) and
OAUTHBEARER (RFC 7628). Pure: bytes in, bytes out; the edges send them.

aiosmtplib and IMAPClient build these themselves (``auth_xoauth2``, ``oauth2_login``,
``oauthbearer_login``); POP3 has no helper, and ``postroom check`` wants one place that says
what goes on the wire. A refused token is not refused at once: the server first sends a
base64 JSON error challenge, which the client answers (``challenge_answer``) before the
final NO / -ERR / 535 arrives.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import StrEnum
from typing import Any

from ..errors import OAuth2Error

# RFC 6750 §2.1 b64token: what a bearer token may hold. Anything else (a \x01 above all)
# would break the SASL framing, so it is refused rather than sent.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Mechanism(StrEnum):
    """The SASL mechanisms that carry an OAuth2 access token (config: ``auth:``)."""

    XOAUTH2 = "xoauth2"
    OAUTHBEARER = "oauthbearer"

    @property
    def sasl_name(self) -> str:
        return self.value.upper()


def _checked_token(token: str) -> str:
    if not _BEARER_TOKEN.fullmatch(token):
        raise OAuth2Error("the token endpoint gave an access token that is not a bearer token")
    return token


def _checked_user(user: str) -> str:
    if "\x01" in user or not user:
        raise ValueError("a SASL user name must be non-empty and hold no \\x01")
    return user


def xoauth2(user: str, token: str) -> bytes:
    """``user=USER^Aauth=Bearer TOKEN^A^A``, not yet base64."""
    return f"user={_checked_user(user)}\x01auth=Bearer {_checked_token(token)}\x01\x01".encode()


def oauthbearer(user: str, token: str, host: str | None = None, port: int | None = None) -> bytes:
    """RFC 7628 §3.1: a GS2 header naming the user, then key=value pairs, not yet base64."""
    # RFC 5801 saslname: "=" and "," are escaped in the authzid.
    authzid = _checked_user(user).replace("=", "=3D").replace(",", "=2C")
    pairs = ""
    if host is not None:
        pairs += f"host={host}\x01"
    if port is not None:
        pairs += f"port={port}\x01"
    return f"n,a={authzid},\x01{pairs}auth=Bearer {_checked_token(token)}\x01\x01".encode()


def initial_response(mechanism: Mechanism, user: str, token: str) -> bytes:
    """The client's first message for mechanism, not yet base64."""
    return xoauth2(user, token) if mechanism is Mechanism.XOAUTH2 else oauthbearer(user, token)


def encoded(response: bytes) -> str:
    """Base64, as every protocol puts a SASL message on the wire."""
    return base64.b64encode(response).decode("ascii")


def challenge_answer(mechanism: Mechanism) -> bytes:
    """What the client sends after an error challenge, before the server's final refusal:
    RFC 7628 §3.2.3 wants a single ^A for OAUTHBEARER; XOAUTH2 an empty response."""
    return b"\x01" if mechanism is Mechanism.OAUTHBEARER else b""


def error_challenge(challenge: bytes | str) -> dict[str, Any]:
    """The server's JSON error challenge (``{"status": "invalid_token", "scope": …}``), given
    base64 or decoded; {} when it is not one."""
    raw = challenge.encode() if isinstance(challenge, str) else challenge
    try:
        decoded = base64.b64decode(raw, validate=True) if not raw.lstrip().startswith(b"{") else raw
        found = json.loads(decoded)
    except (binascii.Error, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
