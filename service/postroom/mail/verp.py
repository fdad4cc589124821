"""VERP return paths: a per-message envelope sender that names the message it belongs to.

``alice@example.test`` sending ``<5f0c…e1@example.test>`` uses the envelope sender
``alice+bounce-5f0c…e1@example.test``. A bounce is addressed to the envelope sender, so the
address it arrives at says which message bounced, even when the report quotes nothing of it.
The token is the Message-ID's random part (``make_message_id``), so the message is found by
its Message-ID: no other lookup, nothing else stored.
"""

from __future__ import annotations

import re

TAG = "bounce-"
_TOKEN = re.compile(r"^[0-9a-f]{16,64}$")


def return_path(address: str, message_id: str, delimiter: str = "+") -> str:
    """The VERP envelope sender for ``message_id`` sent from ``address`` (``address`` itself
    when the Message-ID is not one postroom made)."""
    local, _, domain = address.rpartition("@")
    token = message_id.strip("<>").partition("@")[0]
    if not local or not _TOKEN.match(token):
        return address
    return f"{local}{delimiter}{TAG}{token}@{domain}"


def message_id_from(recipient: str, address: str, delimiter: str = "+") -> str | None:
    """The Message-ID a bounce to ``recipient`` is about, if ``recipient`` is a return path
    ``return_path(address, …)`` made; else None."""
    local, _, domain = address.lower().rpartition("@")
    r_local, _, r_domain = recipient.strip().strip("<>").lower().rpartition("@")
    prefix = f"{local}{delimiter}{TAG}"
    if r_domain != domain or not r_local.startswith(prefix):
        return None
    token = r_local[len(prefix) :]
    return f"<{token}@{address.rpartition('@')[2]}>" if _TOKEN.match(token) else None
