"""Webhooks: Standard Webhooks signing, what postroom and a receiver agree on.

Signing (https://www.standardwebhooks.com): the signed content is ``{id}.{timestamp}.{body}``,
HMAC-SHA256 keyed with the secret's bytes, sent as ``webhook-signature: v1,<base64>``. A secret
is ``whsec_`` + the key in base64, as the spec's own libraries expect; the config refuses any
other (``config.types.webhook_key``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

from postroom.config.types import webhook_key
from postroom.errors import WebhookVerifyError

SIGNATURE_VERSION = "v1"
#: How far a receiver may accept a timestamp from its own clock (for ``verify``).
TOLERANCE = timedelta(minutes=5)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}." + body>``. ``secret`` is ``whsec_<base64>``
    (ValueError otherwise)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str, headers: dict[str, str], body: bytes, *, now: datetime | None = None, tolerance: timedelta = TOLERANCE
) -> None:
    """Check a received webhook's signature (any of the space-separated ones) and timestamp.
    Raises WebhookVerifyError (``postroom.errors``); returns None when it is genuine."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
        timestamp = int(stamp)
    except (KeyError, ValueError):
        raise WebhookVerifyError("missing or malformed webhook headers") from None
    if now is not None and abs(now.timestamp() - timestamp) > tolerance.total_seconds():
        raise WebhookVerifyError("timestamp outside tolerance")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(value, expected):
            return
    raise WebhookVerifyError("no matching signature")


def webhook_id_for(action_key: str) -> str:
    """Stable across retries and restarts: derived from the action's idempotency key."""
    return "msg_" + hashlib.sha256(action_key.encode("utf-8")).hexdigest()[:24]
