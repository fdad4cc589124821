"""The token core against the lab's token server over real HTTP: caching, refresh before
expiry, rotation saved at once (and surviving a restart), permanent vs transient failures,
encryption at rest, no token in any log line, and each provider's request shape."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from postroom.auth.keeper import StoredRefreshToken, current_sealed, origin_of
from postroom.auth.sasl import Mechanism, error_challenge, initial_response, oauthbearer, xoauth2
from postroom.auth.tokens import AccessToken, OAuth2Client, TokenProvider, read_token_reply, token_form
from postroom.auth.vault import TokenVault
from postroom.config.providers import PROVIDERS, Grant, MailProtocol, ProviderName, default_scopes, endpoints
from postroom.errors import (
    ConfigError,
    OAuth2Error,
    ServerBusy,
    ServerConnectError,
    ServerTimeout,
    TokenRevoked,
    is_transient,
)
from postroom.store import Store
from sqlalchemy import text
from structlog.testing import capture_logs

from tests.lab.oauth2 import OAuth2Lab
from tests.lab.token_server import Fault, TokenServer
from tests.support.oauth2_fixtures import MemoryKeeper

NOW = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
SECRET = "maillab-secret"


def generic(server: TokenServer, account: str = "alice", **overrides: object) -> OAuth2Client:
    values: dict[str, object] = {
        "account": account,
        "token_url": server.token_url,
        "client_id": "maillab",
        "client_secret": SECRET,
        "scopes": ("mail",),
    }
    values.update(overrides)
    return OAuth2Client(**values)  # type: ignore[arg-type]


def refreshes(server: TokenServer) -> int:
    return server.authority.counters["token.refresh_token"]


# -- SASL (pure) ---------------------------------------------------------------------------


def test_sasl_initial_responses_are_byte_exact() -> None:
    assert xoauth2("a@x.test", "tok.1") == b"user=a@x.test\x01auth=Bearer tok.1\x01\x01"
    assert oauthbearer("a@x.test", "tok.1") == b"n,a=a@x.test,\x01auth=Bearer tok.1\x01\x01"
    assert oauthbearer("a=b,c", "t", host="h", port=993) == (
        b"n,a=a=3Db=2Cc,\x01host=h\x01port=993\x01auth=Bearer t\x01\x01"
    )
    assert initial_response(Mechanism.XOAUTH2, "u", "t") == xoauth2("u", "t")


def test_sasl_refuses_a_token_that_would_break_the_framing() -> None:
    with pytest.raises(OAuth2Error):
        xoauth2("u", "tok\x01auth=Bearer other")


def test_error_challenge_reads_base64_or_json() -> None:
    raw = b'{"status":"invalid_token","scope":"mail"}'
    assert error_challenge(base64.b64encode(raw))["status"] == "invalid_token"
    assert error_challenge(raw)["scope"] == "mail"
    assert error_challenge(b"not a challenge!") == {}


# -- providers (pure) ----------------------------------------------------------------------


def test_default_scopes_follow_provider_grant_and_protocols() -> None:
    microsoft, google = PROVIDERS[ProviderName.MICROSOFT], PROVIDERS[ProviderName.GOOGLE]

    assert default_scopes(microsoft, Grant.REFRESH_TOKEN, [MailProtocol.SMTP, MailProtocol.IMAP]) == (
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "offline_access",
    )
    assert default_scopes(microsoft, Grant.CLIENT_CREDENTIALS, [MailProtocol.IMAP]) == (
        "https://outlook.office365.com/.default",
    )
    assert default_scopes(google, Grant.REFRESH_TOKEN, list(MailProtocol)) == ("https://mail.google.com/",)
    assert default_scopes(PROVIDERS[ProviderName.GENERIC], Grant.REFRESH_TOKEN, [MailProtocol.IMAP]) == ()


def test_endpoints_need_what_the_provider_cannot_know() -> None:
    with pytest.raises(ConfigError, match="tenant"):
        endpoints(PROVIDERS[ProviderName.MICROSOFT])
    with pytest.raises(ConfigError, match="token_url"):
        endpoints(PROVIDERS[ProviderName.GENERIC])
    with pytest.raises(ConfigError, match="drop `token_url`"):
        endpoints(PROVIDERS[ProviderName.GOOGLE], token_url="https://elsewhere.test/token")

    urls = endpoints(PROVIDERS[ProviderName.MICROSOFT], tenant="contoso.example")
    assert urls.token_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    assert urls.device_code_url == "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/devicecode"


def test_token_reply_reading_is_pure_and_classifies_refusals() -> None:
    reply = read_token_reply("a", 200, b'{"access_token": "x", "token_type": "Bearer", "expires_in": 60}', NOW)
    assert reply.access == AccessToken("x", NOW, NOW + timedelta(seconds=60)) and reply.refresh_token is None

    cases: list[tuple[int, bytes, type[Exception]]] = [
        (400, b'{"error": "invalid_grant", "error_description": "AADSTS70008: expired"}', TokenRevoked),
        (400, b'{"error": "invalid_scope"}', OAuth2Error),
        (401, b'{"error": "invalid_client"}', OAuth2Error),
        (404, b"<html>not here</html>", OAuth2Error),
        (503, b"", ServerBusy),
        (429, b'{"error": "slow_down"}', ServerBusy),
        (400, b'{"error": "temporarily_unavailable"}', ServerBusy),
        (200, b"<html>captive portal</html>", ServerBusy),
    ]
    for status, body, expected in cases:
        with pytest.raises(expected) as raised:
            read_token_reply("a", status, body, NOW)
        assert type(raised.value) is expected, (status, body)
    assert not is_transient(TokenRevoked("x"))


def test_access_tokens_are_fresh_until_a_margin_before_expiry() -> None:
    hour = AccessToken("tok-secret", NOW, NOW + timedelta(hours=1))
    short = AccessToken("tok-secret", NOW, NOW + timedelta(seconds=20))

    assert hour.fresh(NOW + timedelta(minutes=54)) and not hour.fresh(NOW + timedelta(minutes=56))
    assert short.fresh(NOW + timedelta(seconds=14)) and not short.fresh(NOW + timedelta(seconds=16))
    assert "tok-secret" not in repr(hour)


# -- the provider over HTTP ----------------------------------------------------------------


async def test_access_token_is_cached_until_shortly_before_expiry(token_server: TokenServer) -> None:
    keeper = MemoryKeeper(token_server.authority.issue_refresh_token("alice"))
    provider = TokenProvider(generic(token_server), keeper)

    first = await provider.token(NOW)
    assert await provider.token(NOW + timedelta(minutes=54)) == first
    assert refreshes(token_server) == 1
    later = await provider.token(NOW + timedelta(minutes=56))

    assert later != first and refreshes(token_server) == 2
    assert provider.status.refreshed_at == NOW + timedelta(minutes=56) and not provider.status.broken


async def test_a_refused_token_is_refreshed_even_when_it_looks_fresh(token_server: TokenServer) -> None:
    provider = TokenProvider(generic(token_server), MemoryKeeper(token_server.authority.issue_refresh_token("alice")))
    first = await provider.token(NOW)

    second = await provider.token(NOW, refused=first)

    assert second != first and refreshes(token_server) == 2


async def test_concurrent_callers_share_one_refresh(token_server: TokenServer) -> None:
    provider = TokenProvider(generic(token_server), MemoryKeeper(token_server.authority.issue_refresh_token("alice")))

    tokens = await asyncio.gather(*(provider.token(NOW) for _ in range(5)))

    assert len(set(tokens)) == 1 and refreshes(token_server) == 1


async def test_a_rotated_refresh_token_is_saved_before_use_and_survives_a_restart(
    token_server: TokenServer, store: Store
) -> None:
    authority = token_server.authority
    authority.rotate = True
    vault = TokenVault([Fernet.generate_key().decode()])
    signed_in = authority.issue_refresh_token("alice")
    store.tokens.save_refresh_token("alice", vault.seal(signed_in), origin=origin_of(None), now=NOW)

    await TokenProvider(generic(token_server), StoredRefreshToken(store.tokens, vault, "alice")).token(NOW)
    stored = store.tokens.get("alice")
    assert stored is not None and stored.sealed_refresh_token is not None
    rotated = vault.open(stored.sealed_refresh_token, account="alice")
    assert rotated != signed_in and authority.refresh_token_is_valid(rotated)
    assert not authority.refresh_token_is_valid(signed_in)  # the old one is dead on the server

    # A restart: a new provider and keeper, nothing in memory; the store's token works.
    restarted = TokenProvider(generic(token_server), StoredRefreshToken(store.tokens, vault, "alice"))
    assert await restarted.token(NOW + timedelta(hours=2))

    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT sealed_refresh_token FROM oauth2_tokens")).scalar_one()
    assert signed_in.encode() not in raw and rotated.encode() not in raw


async def test_a_replica_that_read_a_token_just_rotated_elsewhere_retries_with_the_latest(
    token_server: TokenServer,
) -> None:
    authority = token_server.authority
    authority.rotate = True
    old = authority.issue_refresh_token("alice")
    other_replica = MemoryKeeper(old)
    await TokenProvider(generic(token_server), other_replica).token(NOW)  # rotates old away
    late_reader = MemoryKeeper(other_replica.token, stale_first=old)

    assert await TokenProvider(generic(token_server), late_reader).token(NOW)
    assert authority.counters["error.invalid_grant"] == 1 and refreshes(token_server) == 3


async def test_a_config_token_wins_over_rotations_of_an_older_one(token_server: TokenServer, store: Store) -> None:
    vault = TokenVault([Fernet.generate_key().decode()])
    first, pasted = "rt-first", "rt-pasted"
    store.tokens.save_refresh_token("alice", vault.seal("rt-rotated"), origin=origin_of(first), now=NOW)

    assert await StoredRefreshToken(store.tokens, vault, "alice", configured=first).load() == "rt-rotated"
    assert await StoredRefreshToken(store.tokens, vault, "alice", configured=pasted).load() == pasted
    assert await StoredRefreshToken(store.tokens, vault, "alice").load() == "rt-rotated"
    assert current_sealed(pasted, store.tokens.get("alice")) is None


async def test_a_revoked_refresh_token_is_permanent_and_says_how_to_fix_it(token_server: TokenServer) -> None:
    refresh = token_server.authority.issue_refresh_token("alice")
    token_server.authority.revoke(refresh)
    provider = TokenProvider(generic(token_server), MemoryKeeper(refresh))

    with pytest.raises(TokenRevoked) as revoked:
        await provider.token(NOW)

    message = str(revoked.value)
    assert "postroom auth login alice" in message and "invalid_grant" in message and refresh not in message
    assert revoked.value.account == "alice" and not is_transient(revoked.value)
    assert provider.status.broken and provider.status.last_error == message


async def test_no_refresh_token_at_all_asks_for_a_sign_in(token_server: TokenServer) -> None:
    with pytest.raises(TokenRevoked, match="postroom auth login alice"):
        await TokenProvider(generic(token_server), MemoryKeeper(None)).token(NOW)


async def test_a_wrong_client_secret_is_permanent_but_not_a_revocation(token_server: TokenServer) -> None:
    provider = TokenProvider(
        generic(token_server, client_secret="wrong"), MemoryKeeper(token_server.authority.issue_refresh_token("alice"))
    )

    with pytest.raises(OAuth2Error) as refused:
        await provider.token(NOW)

    assert type(refused.value) is OAuth2Error and refused.value.error == "invalid_client"


async def test_token_endpoint_down_slow_or_failing_is_transient(token_server: TokenServer) -> None:
    authority = token_server.authority
    authority.rotate = True  # a refused refresh must not cost the refresh token
    provider = TokenProvider(generic(token_server), MemoryKeeper(authority.issue_refresh_token("alice")), deadline=0.5)

    authority.fault = Fault(status=503)
    with pytest.raises(ServerBusy):
        await provider.token(NOW)
    # A reply that comes too late is lost; with rotation that would lose the new refresh
    # token too (a hazard of rotation itself), so the slow server here does not rotate.
    authority.rotate = False
    authority.fault = Fault(status=0, delay=1.5)
    with pytest.raises(ServerTimeout):
        await provider.token(NOW)
    authority.fault = None
    token_server.stop()
    with pytest.raises(ServerConnectError):
        await provider.token(NOW)
    assert not provider.status.broken

    token_server.start()  # back: the same refresh token still works
    assert await provider.token(NOW)


async def test_no_token_or_secret_reaches_any_log_line(
    token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    authority = token_server.authority
    authority.rotate = True
    first = authority.issue_refresh_token("alice")
    keeper = MemoryKeeper(first)
    provider = TokenProvider(generic(token_server), keeper)
    for name in ("", "httpx", "httpcore"):  # the libraries at their chattiest too (setup_logging
        caplog.set_level(logging.DEBUG, logger=name)  # of an earlier test may have quieted them)

    with capture_logs() as events:
        access = await provider.token(NOW)
        authority.revoke(keeper.token or "")
        with pytest.raises(TokenRevoked):
            await provider.token(NOW + timedelta(hours=2))

    secrets = [access, first, *keeper.saved, SECRET]
    logged = repr(events) + caplog.text + repr(provider) + repr(provider.client) + repr(provider.status)
    assert [event["event"] for event in events] == ["oauth2.refreshed", "oauth2.refresh_failed"]
    assert "HTTP Request: POST" in caplog.text  # the library logs were captured, and hold none
    assert [secret for secret in secrets if secret in logged] == []


# -- each provider's request shape, answered by the lab server ------------------------------


async def test_microsoft_refresh_shape_sends_scopes_and_takes_the_rotated_token(token_server: TokenServer) -> None:
    scopes = "https://outlook.office.com/SMTP.Send https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    refresh = token_server.authority.issue_refresh_token("alice", scope=scopes)
    client = OAuth2Client.for_provider(
        "alice",
        PROVIDERS[ProviderName.MICROSOFT],
        client_id="maillab",
        client_secret=SECRET,
        tenant="contoso.example",
        authority=token_server.url,
        protocols=(MailProtocol.IMAP, MailProtocol.SMTP),
    )
    keeper = MemoryKeeper(refresh)

    await TokenProvider(client, keeper).token(NOW)

    [request] = token_server.authority.requests_to("/contoso.example/oauth2/v2.0/token")
    assert request.form == {
        "grant_type": "refresh_token",
        "client_id": "maillab",
        "client_secret": SECRET,
        "refresh_token": refresh,
        "scope": scopes,
    }
    assert keeper.saved and keeper.saved[0] != refresh  # Microsoft rotates: saved at once


async def test_microsoft_app_only_shape_is_client_credentials_with_default_scope(token_server: TokenServer) -> None:
    client = OAuth2Client.for_provider(
        "carol",
        PROVIDERS[ProviderName.MICROSOFT],
        client_id="maillab-app",
        client_secret="maillab-app-secret",
        tenant="contoso.example",
        grant=Grant.CLIENT_CREDENTIALS,
        authority=token_server.url,
    )

    assert await TokenProvider(client).token(NOW)

    [request] = token_server.authority.requests_to("/contoso.example/oauth2/v2.0/token")
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "maillab-app",
        "client_secret": "maillab-app-secret",
        "scope": "https://outlook.office365.com/.default",
    }


async def test_google_refresh_shape_sends_no_scope(token_server: TokenServer) -> None:
    refresh = token_server.authority.issue_refresh_token("alice", scope="https://mail.google.com/")
    client = OAuth2Client.for_provider(
        "alice",
        PROVIDERS[ProviderName.GOOGLE],
        client_id="maillab",
        client_secret=SECRET,
        authority=token_server.url,
        protocols=(MailProtocol.IMAP,),
    )

    await TokenProvider(client, MemoryKeeper(refresh)).token(NOW)

    [request] = token_server.authority.requests_to("/token")
    assert request.form == {
        "grant_type": "refresh_token",
        "client_id": "maillab",
        "client_secret": SECRET,
        "refresh_token": refresh,
    }


def test_public_clients_send_no_secret() -> None:
    client = OAuth2Client("a", "http://127.0.0.1:1/token", "maillab-public", scopes=("mail",))
    assert token_form(client, "rt") == {
        "grant_type": "refresh_token",
        "client_id": "maillab-public",
        "refresh_token": "rt",
        "scope": "mail",
    }


# -- a provider's token at the real Dovecot -------------------------------------------------


def _imap_xoauth2(lab: OAuth2Lab, token: str) -> bool:
    client = imaplib.IMAP4("127.0.0.1", lab.ports.imap)
    client.starttls(lab.ssl_context())
    try:
        client.authenticate("XOAUTH2", lambda challenge: b"" if challenge else xoauth2(lab.address("alice"), token))
    except imaplib.IMAP4.error:
        client.shutdown()
        return False
    client.logout()
    return True


async def test_refresh_once_after_a_refusal_logs_in_again(oauth2_lab: OAuth2Lab) -> None:
    server = oauth2_lab.token_server
    provider = TokenProvider(generic(server), MemoryKeeper(oauth2_lab.refresh_token("alice")))
    token = await provider.token(NOW)
    assert await asyncio.to_thread(_imap_xoauth2, oauth2_lab, token)

    oauth2_lab.authority.expire(token)  # lapsed early, as a server may decide
    assert not await asyncio.to_thread(_imap_xoauth2, oauth2_lab, token)
    fresh = await provider.token(NOW, refused=token)

    assert await asyncio.to_thread(_imap_xoauth2, oauth2_lab, fresh)


# -- the vault -----------------------------------------------------------------------------


def test_vault_round_trip_and_key_rotation() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = TokenVault([old]).seal("rt-secret")

    assert b"rt-secret" not in sealed
    rotated_vault = TokenVault.from_text(f"{new}, {old}")
    assert rotated_vault.open(sealed, account="a") == "rt-secret"
    assert TokenVault([new]).open(rotated_vault.rotated(sealed), account="a") == "rt-secret"
    with pytest.raises(OAuth2Error, match="does not decrypt"):
        TokenVault([new]).open(sealed, account="a")
    assert old not in repr(rotated_vault)


def test_vault_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    key_file = tmp_path / "token.key"
    key_file.write_text(key + "\n")

    sealed = TokenVault.from_environ({"POSTROOM_TOKEN_KEY": key}).seal("x")
    assert TokenVault.from_environ({"POSTROOM_TOKEN_KEY_FILE": str(key_file)}).open(sealed, account="a") == "x"
    with pytest.raises(ConfigError, match="POSTROOM_TOKEN_KEY"):
        TokenVault.from_environ({})
    with pytest.raises(ConfigError) as bad:
        TokenVault.from_environ({"POSTROOM_TOKEN_KEY": "hunter2-not-a-key"})
    assert "hunter2" not in str(bad.value)


# -- the store -----------------------------------------------------------------------------


def test_token_store_keeps_state_per_account(any_store: Store) -> None:
    tokens = any_store.tokens
    tokens.record_error("bob", "the token endpoint is not answering", now=NOW)
    tokens.save_refresh_token("alice", b"sealed-1", origin="login", now=NOW)
    tokens.record_refresh("alice", expires_at=NOW + timedelta(hours=1), now=NOW)
    tokens.save_refresh_token("alice", b"sealed-2", origin="login", now=NOW + timedelta(minutes=1))

    alice, bob = tokens.all()
    assert (alice.account, alice.sealed_refresh_token, alice.origin) == ("alice", b"sealed-2", "login")
    assert alice.expires_at == NOW + timedelta(hours=1) and alice.refreshed_at == NOW and alice.last_error is None
    assert (bob.sealed_refresh_token, bob.last_error) == (None, "the token endpoint is not answering")
    assert "sealed" not in repr(alice)
    tokens.forget("bob")
    assert tokens.get("bob") is None
