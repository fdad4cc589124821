"""A hostile token endpoint (a real socket server answering each bad shape): a silly
``expires_in`` is clamped, a huge answer is cut off early, an ``error_description`` that echoes
the request keeps no secret anywhere, and none of it is ever more than transient or an
account-level refusal (no OverflowError, no traceback)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from postroom.auth.tokens import (
    LONGEST_LIFETIME,
    MAX_REPLY_BYTES,
    UNKNOWN_LIFETIME,
    OAuth2Client,
    TokenProvider,
    lifetime_of,
)
from postroom.errors import OAuth2Error, ServerBusy, is_transient
from postroom.redact import MASK, redacted
from structlog.testing import capture_logs

from tests.support.hostile_token_server import (
    BROKEN_REPLIES,
    ECHO,
    ECHO_BUSY,
    HOSTILE_EXPIRES,
    HUGE,
    HostileTokenServer,
)
from tests.support.oauth2_fixtures import MemoryKeeper

NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
SECRET = "hush-client-secret"  # short and word-like: only redaction by value catches it
REFRESH = "rt-Qm3vX9kLp2Zw8Yt5Rb7N"


@pytest.fixture
def hostile() -> Iterator[HostileTokenServer]:
    with HostileTokenServer() as server:
        yield server


def provider_for(server: HostileTokenServer) -> TokenProvider:
    client = OAuth2Client("alice", server.token_url, "maillab", client_secret=SECRET, scopes=("mail",))
    return TokenProvider(client, MemoryKeeper(REFRESH), deadline=20)


@pytest.mark.parametrize("shape", sorted(HOSTILE_EXPIRES))
async def test_a_hostile_expires_in_is_clamped_to_a_sane_lifetime(hostile: HostileTokenServer, shape: str) -> None:
    hostile.shape = shape
    provider = provider_for(hostile)

    assert await provider.token(NOW) == "hostile-at.Zq81vTTe0aLw2PqR4mXy"

    expires_at = provider.status.expires_at
    assert expires_at is not None and NOW + timedelta(seconds=1) <= expires_at <= NOW + LONGEST_LIFETIME
    if shape in ("1e12", "1e30", "huge_int"):
        assert expires_at == NOW + LONGEST_LIFETIME
    else:
        assert expires_at == NOW + UNKNOWN_LIFETIME


def test_lifetime_of_every_silly_value() -> None:
    for value in (None, "", "soon", -1, 0, float("nan"), float("inf"), float("-inf"), "inf", True, [60]):
        assert lifetime_of(value) == UNKNOWN_LIFETIME, value
    assert lifetime_of(1e30) == lifetime_of("1e12") == lifetime_of(10**400) == LONGEST_LIFETIME
    assert lifetime_of("3600") == lifetime_of(3600) == timedelta(hours=1)
    assert lifetime_of(0.001) == timedelta(seconds=1)


async def test_a_huge_token_answer_is_cut_off_and_transient(hostile: HostileTokenServer) -> None:
    hostile.shape = HUGE
    provider = provider_for(hostile)

    with pytest.raises(ServerBusy, match="larger than") as raised:
        await provider.token(NOW)

    assert is_transient(raised.value) and not provider.status.broken
    # The client hung up soon after the cap, not after 64 MiB (socket buffers allow some more).
    assert hostile.sent < MAX_REPLY_BYTES + 8 * 1024 * 1024


@pytest.mark.parametrize("shape", sorted(BROKEN_REPLIES))
async def test_an_answer_without_a_usable_token_is_transient(hostile: HostileTokenServer, shape: str) -> None:
    hostile.shape = shape
    provider = provider_for(hostile)

    with pytest.raises(ServerBusy) as raised:
        await provider.token(NOW)

    assert is_transient(raised.value) and not provider.status.broken


@pytest.mark.parametrize("shape", [ECHO, ECHO_BUSY])
async def test_an_echoed_request_leaves_no_secret_in_error_status_or_log(
    hostile: HostileTokenServer, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.shape = shape
    provider = provider_for(hostile)
    caplog.set_level(logging.DEBUG)

    with capture_logs() as events, pytest.raises((OAuth2Error, ServerBusy)) as raised:
        await provider.token(NOW)

    shown = str(raised.value) + repr(events) + caplog.text + repr(provider.status)
    assert "bad request" in str(raised.value) or shape == ECHO_BUSY  # the description is still told
    assert SECRET not in shown and REFRESH not in shown
    assert "hush" not in shown  # not even a part of the secret
    assert is_transient(raised.value) == (shape == ECHO_BUSY)


def test_redaction_by_value_by_name_and_by_shape() -> None:
    text = (
        'client_secret=abc&refresh_token=xyz {"client_secret": "abc2"} '
        "access_token: eyJhbGciOiJIUzI1NiJ9x.eyJzdWIiOiIxIn0 plain words stay\r\nforged: line"
    )
    shown = redacted(text, ["hunter22"])

    assert "abc" not in shown and "xyz" not in shown and "eyJ" not in shown
    assert f"client_secret={MASK}" in shown and "plain words stay" in shown
    assert "\r" not in shown and "\n" not in shown
    assert redacted("my hunter22 here", ["hunter22"]) == f"my {MASK} here"
    assert redacted("AADSTS70008: the refresh token has expired") == "AADSTS70008: the refresh token has expired"
