"""`postroom auth login` proves who signed in, against the real OAuth2 lab (Dovecot checking each
bearer token with the lab's token server): a device code approved by another user than the
account's mailbox is refused and nothing is stored; the account's own user signs in as before.

The lab's token server gives no OpenID id token, so the proof here is the login itself: the new
access token, sent as XOAUTH2 for alice@example.test to Dovecot, which asks the token server
whose token it is."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from postroom.auth.flows import signed_in_as
from postroom.auth.signin import Obtained, prove_mailbox
from postroom.errors import OAuth2Error
from postroom.store import Store

from tests.lab.oauth2 import OAuth2Lab
from tests.support.daemon import ROOT, postroom_env
from tests.test_auth_cli import Running
from tests.test_store_named import postroom

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    oauth2: {{provider: microsoft, tenant: organizations, authority: "{authority}", client_id: maillab-public}}
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: alice@example.test, auth: xoauth2}}
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test, auth: xoauth2}}
  paste:
    address: alice@example.test
    oauth2: {{token_url: "{authority}/token", client_id: maillab, client_secret: maillab-secret, scopes: [mail]}}
    imap: {{host: 127.0.0.1, port: {imaps}, security: tls, username: alice@example.test, auth: oauthbearer}}
"""


def project(lab: OAuth2Lab, root: Path) -> dict[str, str]:
    (root / "postroom.yaml").write_text(
        CONFIG.format(authority=lab.token_server.url, imaps=lab.ports.imaps, smtp=lab.ports.smtp)
    )
    env = postroom_env(lab, root, POSTROOM_TOKEN_KEY=Fernet.generate_key().decode())
    env["PYTHONPATH"] = str(ROOT)
    return env


def device_login_approved_by(lab: OAuth2Lab, root: Path, env: dict[str, str], user: str) -> tuple[int, str, str]:
    login = Running(root, "auth", "login", "alice", env=env)
    verification_uri = login.line_with("open ").split()[-1]
    user_code = login.line_with("enter ").split()[-1]
    login.line_with("waiting")
    httpx.post(verification_uri, data={"user_code": user_code, "user": user}).raise_for_status()
    return login.finish()


def stored(root: Path, account: str) -> bool:
    store = Store.open(f"sqlite:///{root / 'state' / 'postroom.db'}", owner="test")
    try:
        grant = store.tokens.get(account)
    finally:
        store.close()
    return grant is not None and grant.sealed_refresh_token is not None


def test_a_device_code_approved_by_another_user_is_refused_and_nothing_stored(
    oauth2_lab: OAuth2Lab, tmp_path: Path
) -> None:
    env = project(oauth2_lab, tmp_path)

    code, out, err = device_login_approved_by(oauth2_lab, tmp_path, env, "bob")

    assert code == 1, out + err
    assert "sign in as alice@example.test" in out  # the person was told whom to sign in as
    assert "does not open alice@example.test" in err and "imap refused it" in err
    assert "sign in again as alice@example.test: postroom auth login alice" in err
    assert not stored(tmp_path, "alice")
    [asked] = oauth2_lab.authority.requests_to("/organizations/oauth2/v2.0/devicecode")
    assert asked.form["login_hint"] == "alice@example.test"


def test_the_accounts_own_user_signs_in(oauth2_lab: OAuth2Lab, tmp_path: Path) -> None:
    env = project(oauth2_lab, tmp_path)

    code, out, err = device_login_approved_by(oauth2_lab, tmp_path, env, "alice")

    assert code == 0, out + err
    assert "alice: signed in" in out
    assert stored(tmp_path, "alice")


def test_a_pasted_token_of_another_user_is_refused_and_forgotten(oauth2_lab: OAuth2Lab, tmp_path: Path) -> None:
    env = project(oauth2_lab, tmp_path)
    bobs = oauth2_lab.refresh_token("bob")

    done = postroom(env, "auth", "login", "paste", stdin=bobs + "\n")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not open alice@example.test" in done.stderr
    assert not stored(tmp_path, "paste")


def _id_token(claims: dict[str, object]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl"


def test_the_id_tokens_email_names_who_signed_in_and_forged_or_huge_ones_name_nobody() -> None:
    def reply(token: object) -> bytes:
        return json.dumps({"access_token": "a", "id_token": token}).encode()

    assert signed_in_as(reply(_id_token({"email": "bob@example.test"}))) == "bob@example.test"
    assert signed_in_as(reply(_id_token({"preferred_username": "bob@contoso.example"}))) == "bob@contoso.example"
    assert signed_in_as(reply(_id_token({"name": "Bob"}))) is None
    assert signed_in_as(reply("not.a-token")) is None
    assert signed_in_as(reply("x.!!!.y")) is None
    assert signed_in_as(reply(_id_token({"email": "bob@example.test", "pad": "x" * 20_000}))) is None
    assert signed_in_as(reply(12)) is None
    assert signed_in_as(b"\xff not json") is None


def test_an_id_token_for_another_mailbox_is_refused_with_whom_to_sign_in_as() -> None:
    from postroom.config.model import AccountConfig

    account = AccountConfig.model_validate(
        {
            "address": "alice@example.test",
            "oauth2": {"provider": "generic", "token_url": "http://127.0.0.1:1/token", "client_id": "c"},
            "imap": {"host": "127.0.0.1", "port": 1, "username": "alice@example.test", "auth": "xoauth2"},
        }
    )
    said: list[str] = []

    class Person:
        def tell(self, text: str) -> None:
            said.append(text)

    with pytest.raises(OAuth2Error) as refused:
        asyncio.run(prove_mailbox("alice", account, Obtained("rt", "at", "Bob@Example.test"), "at", Person()))  # type: ignore[arg-type]
    assert str(refused.value) == (
        "alice: signed in as Bob@Example.test, but account alice is alice@example.test; "
        "sign in again as alice@example.test: postroom auth login alice (nothing was stored)"
    )
    # The same mailbox in other letters is the same mailbox: no login is needed to say so.
    asyncio.run(prove_mailbox("alice", account, Obtained("rt", "at", "ALICE@example.test"), "at", Person()))  # type: ignore[arg-type]
    assert said == []
