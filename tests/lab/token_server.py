"""The lab's OAuth2 authorization server: tokens that Dovecot's oauth2 passdb checks.

A stdlib ``http.server`` on 127.0.0.1, run in a thread of the test process so tests can look
at and bend its state directly (``server.authority``). Endpoints:

    POST /token                          generic and Google shape: grants refresh_token,
                                         client_credentials, authorization_code (with PKCE)
    POST /{tenant}/oauth2/v2.0/token     Microsoft shape: the same grants plus device_code;
                                         refresh tokens always rotate, as Microsoft's do
    POST /{tenant}/oauth2/v2.0/devicecode  Microsoft's device code flow, first leg
    GET  /o/oauth2/v2/auth               Google's authorize endpoint for the loopback flow: the
                                         lab user consents at once; 302 to redirect_uri?code=…
    POST /introspect                     RFC 7662, for Dovecot: 200 {"active": false} for every
                                         bad token (a 4xx is an *internal* error to Dovecot)
    POST /revoke                         RFC 7009; revoking a refresh token revokes its access
                                         tokens too
    POST /lab/device                     the person at the verification URL: user_code, user
    POST /lab/issue                      a refresh token for user (scope, client_id), as if they
                                         had signed in: for a demo lab in another process
    POST /lab/settings                   access_lifetime (seconds), rotate (yes/no)
    GET  /lab/counters                   how often each thing happened, as JSON

``python -m tests.lab.token_server --port N`` serves it on its own until SIGTERM or Ctrl-C.

Test hooks: a form field ``expires_in=N`` on /token asks for a token living N seconds;
``authority.access_lifetime`` sets the default; ``authority.rotate`` makes /token rotate
refresh tokens too; ``authority.fault`` makes the token endpoints answer slowly or with an
error status; ``TokenServer.stop()`` then ``start()`` is an outage that keeps every token.

Dovecot checks the scope ``mail``: introspection reports it for a token that carries any mail
scope (the lab's own ``mail`` or a Microsoft or Google one), so provider-shaped tokens log in.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.lab.config import DOMAIN

LAB_SCOPE = "mail"  # what Dovecot's oauth2 passdb requires (`scope = mail`)
MAIL_SCOPES = frozenset(
    {
        LAB_SCOPE,
        "https://mail.google.com/",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office365.com/.default",
    }
)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MICROSOFT_PATH = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/(?P<leg>token|devicecode)$")
GOOGLE_AUTHORIZE_PATH = "/o/oauth2/v2/auth"
DEFAULT_LIFETIME = 3600


@dataclass(frozen=True)
class LabClient:
    """A registered client. ``secret`` None: a public client. ``app_mailbox``: the mailbox its
    client_credentials tokens open (Dovecot compares one user name, so one app per mailbox)."""

    client_id: str
    secret: str | None = None
    app_mailbox: str | None = None


DEFAULT_CLIENTS = (
    LabClient("maillab", "maillab-secret"),
    LabClient("maillab-public"),
    LabClient("maillab-app", "maillab-app-secret", app_mailbox="carol"),
)


@dataclass
class Grant:
    """What a refresh token (or a code, or an app) stands for: a user, a client, scopes."""

    user: str
    client_id: str
    scope: str
    family: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class AccessGrant:
    grant: Grant
    expires_at: float


@dataclass
class PendingDevice:
    client_id: str
    scope: str
    user_code: str
    expires_at: float
    user: str | None = None  # set once the person approved


@dataclass
class PendingCode:
    client_id: str
    user: str
    scope: str
    redirect_uri: str
    challenge: str | None
    offline: bool


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    form: dict[str, str]
    basic_auth: tuple[str, str] | None


@dataclass(frozen=True)
class Fault:
    """Make the token endpoints misbehave: wait ``delay`` seconds, then answer ``status``
    (0: answer normally after the delay)."""

    status: int = 503
    delay: float = 0.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    location: str | None = None


class OAuthRefusal(Exception):
    """An RFC 6749 §5.2 error reply."""

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def reply(self) -> Reply:
        return Reply(self.status, {"error": self.error, "error_description": self.description})


class TokenAuthority:
    """The server's state and rules, apart from HTTP. Thread-safe: one lock around it all."""

    def __init__(self, clients: tuple[LabClient, ...] = DEFAULT_CLIENTS):
        self.clients = {client.client_id: client for client in clients}
        self.access_lifetime = DEFAULT_LIFETIME
        self.rotate = False  # generic /token: rotate refresh tokens (Microsoft's always do)
        self.fault: Fault | None = None
        self.signed_in_user = "alice"  # who consents at the Google authorize endpoint
        self.base_url = ""  # set by the TokenServer serving this authority
        self.counters: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self._refresh: dict[str, Grant] = {}
        self._access: dict[str, AccessGrant] = {}
        self._devices: dict[str, PendingDevice] = {}
        self._codes: dict[str, PendingCode] = {}
        self._revoked_families: set[str] = set()
        self._lock = threading.Lock()

    # -- hooks for tests ---------------------------------------------------------------

    def issue_refresh_token(self, user: str, scope: str = LAB_SCOPE, client_id: str = "maillab") -> str:
        """A refresh token as if ``user`` had signed in to ``client_id`` earlier."""
        with self._lock:
            return self._new_refresh(Grant(user, client_id, scope))

    def issue_access_token(
        self, user: str, scope: str = LAB_SCOPE, lifetime: float | None = None, client_id: str = "maillab"
    ) -> str:
        with self._lock:
            return self._new_access(Grant(user, client_id, scope), lifetime)

    def expire(self, access_token: str) -> None:
        """Make an access token expired now, as if its lifetime had passed."""
        with self._lock:
            self._access[access_token].expires_at = time.time() - 1

    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoke(token)

    def refresh_token_is_valid(self, token: str) -> bool:
        with self._lock:
            grant = self._refresh.get(token)
            return grant is not None and grant.family not in self._revoked_families

    def approve_device(self, user_code: str, user: str) -> None:
        with self._lock:
            self._approve(user_code, user)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    # -- rules ---------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str], basic_auth: tuple[str, str] | None
    ) -> Reply:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, dict(form), basic_auth))
            try:
                return self._route(method, path, query, form, basic_auth)
            except OAuthRefusal as refusal:
                self.counters[f"error.{refusal.error}"] += 1
                return refusal.reply()

    def _route(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str], basic_auth: tuple[str, str] | None
    ) -> Reply:
        microsoft = MICROSOFT_PATH.match(path)
        if method == "POST" and path == "/token":
            return self._token(form, basic_auth, rotate=self.rotate)
        if method == "POST" and microsoft and microsoft["leg"] == "token":
            return self._token(form, basic_auth, rotate=True)
        if method == "POST" and microsoft:
            return self._device_code(form, basic_auth)
        if method == "GET" and path == GOOGLE_AUTHORIZE_PATH:
            return self._authorize(query)
        if method == "POST" and path == "/introspect":
            return self._introspect(form)
        if method == "POST" and path == "/revoke":
            self.counters["revoke"] += 1
            self._revoke(form.get("token", ""))
            return Reply(200, {})
        if method == "POST" and path == "/lab/device":
            self._approve(form.get("user_code", ""), form.get("user", ""))
            return Reply(200, {"approved": True})
        if method == "POST" and path == "/lab/issue":
            grant = Grant(form.get("user", ""), form.get("client_id", "maillab"), form.get("scope", LAB_SCOPE))
            return Reply(200, {"refresh_token": self._new_refresh(grant)})
        if method == "POST" and path == "/lab/settings":
            self.access_lifetime = int(form.get("access_lifetime", self.access_lifetime))
            self.rotate = form.get("rotate", "yes" if self.rotate else "no") == "yes"
            return Reply(200, {"access_lifetime": self.access_lifetime, "rotate": self.rotate})
        if method == "GET" and path == "/lab/counters":
            return Reply(200, dict(self.counters))
        return Reply(404, {"error": "not_found"})

    def _client(self, form: dict[str, str], basic_auth: tuple[str, str] | None) -> LabClient:
        # RFC 6749 §2.3.1: HTTP Basic or the form fields, not both.
        client_id, secret = basic_auth or (form.get("client_id", ""), form.get("client_secret"))
        client = self.clients.get(client_id)
        if client is None or (client.secret is not None and secret != client.secret):
            raise OAuthRefusal("invalid_client", f"client {client_id!r} unknown or wrong secret", 401)
        return client

    def _token(self, form: dict[str, str], basic_auth: tuple[str, str] | None, *, rotate: bool) -> Reply:
        grant_type = form.get("grant_type", "")
        self.counters[f"token.{grant_type}"] += 1
        client = self._client(form, basic_auth)
        if self.fault is not None and self.fault.status:  # before anything changes: no token lost
            raise OAuthRefusal("temporarily_unavailable", "lab fault", self.fault.status)
        lifetime = float(form["expires_in"]) if "expires_in" in form else None
        if grant_type == "refresh_token":
            grant = self._refresh.get(form.get("refresh_token", ""))
            if grant is None or grant.family in self._revoked_families:
                raise OAuthRefusal("invalid_grant", "refresh token revoked, expired or unknown")
            if grant.client_id != client.client_id:
                raise OAuthRefusal("invalid_grant", "refresh token was issued to another client")
            scope = _narrowed(grant.scope, form.get("scope"))
            refresh = form["refresh_token"]
            if rotate:
                del self._refresh[refresh]
                refresh = self._new_refresh(grant)
            return self._tokens(Grant(grant.user, grant.client_id, scope, grant.family), lifetime, refresh)
        if grant_type == "client_credentials":
            if client.app_mailbox is None or client.secret is None:
                raise OAuthRefusal("unauthorized_client", "client may not use client_credentials")
            return self._tokens(Grant(client.app_mailbox, client.client_id, form.get("scope", LAB_SCOPE)), lifetime)
        if grant_type == "authorization_code":
            return self._code_exchange(form, client, lifetime)
        if grant_type == DEVICE_GRANT:
            return self._device_poll(form, client, lifetime)
        raise OAuthRefusal("unsupported_grant_type", f"grant_type {grant_type!r}")

    def _tokens(self, grant: Grant, lifetime: float | None, refresh: str | None = None) -> Reply:
        access = self._new_access(grant, lifetime)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "scope": grant.scope,
            "expires_in": int(self._access[access].expires_at - time.time() + 0.5),
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return Reply(200, body)

    def _device_code(self, form: dict[str, str], basic_auth: tuple[str, str] | None) -> Reply:
        self.counters["devicecode"] += 1
        client = self._client(form, basic_auth)
        device_code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self._devices[device_code] = PendingDevice(
            client.client_id, form.get("scope", LAB_SCOPE), user_code, time.time() + 900
        )
        return Reply(
            200,
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": f"{self.base_url}/lab/device",
                "expires_in": 900,
                "interval": 1,
                "message": f"To sign in, open {self.base_url}/lab/device and enter the code {user_code}.",
            },
        )

    def _device_poll(self, form: dict[str, str], client: LabClient, lifetime: float | None) -> Reply:
        pending = self._devices.get(form.get("device_code", ""))
        if pending is None or pending.client_id != client.client_id:
            raise OAuthRefusal("invalid_grant", "unknown device code")
        if pending.expires_at < time.time():
            raise OAuthRefusal("expired_token", "device code expired")
        if pending.user is None:
            raise OAuthRefusal("authorization_pending", "the user has not signed in yet")
        del self._devices[form["device_code"]]
        grant = Grant(pending.user, client.client_id, pending.scope)
        return self._tokens(grant, lifetime, self._new_refresh(grant))

    def _approve(self, user_code: str, user: str) -> None:
        for pending in self._devices.values():
            if pending.user_code == user_code:
                pending.user = user
                return
        raise OAuthRefusal("invalid_request", f"no pending device code {user_code!r}")

    def _authorize(self, query: dict[str, str]) -> Reply:
        self.counters["authorize"] += 1
        redirect_uri = query.get("redirect_uri", "")
        if urlsplit(redirect_uri).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise OAuthRefusal("invalid_request", "redirect_uri must be a loopback address")
        if query.get("client_id") not in self.clients or query.get("response_type") != "code":
            raise OAuthRefusal("invalid_request", "unknown client or response_type is not code")
        if query.get("code_challenge") and query.get("code_challenge_method") != "S256":
            raise OAuthRefusal("invalid_request", "only S256 code challenges")
        code = secrets.token_urlsafe(24)
        self._codes[code] = PendingCode(
            query["client_id"],
            self.signed_in_user,
            query.get("scope", LAB_SCOPE),
            redirect_uri,
            query.get("code_challenge"),
            query.get("access_type") == "offline",
        )
        params = {"code": code, "scope": self._codes[code].scope}
        if "state" in query:
            params["state"] = query["state"]
        return Reply(302, {}, location=f"{redirect_uri}?{urlencode(params)}")

    def _code_exchange(self, form: dict[str, str], client: LabClient, lifetime: float | None) -> Reply:
        pending = self._codes.pop(form.get("code", ""), None)
        if pending is None or pending.client_id != client.client_id:
            raise OAuthRefusal("invalid_grant", "unknown or used authorization code")
        if form.get("redirect_uri") != pending.redirect_uri:
            raise OAuthRefusal("invalid_grant", "redirect_uri differs from the authorize request")
        if pending.challenge is not None and _s256(form.get("code_verifier", "")) != pending.challenge:
            raise OAuthRefusal("invalid_grant", "code_verifier does not match the code challenge")
        grant = Grant(pending.user, client.client_id, pending.scope)
        return self._tokens(grant, lifetime, self._new_refresh(grant) if pending.offline else None)

    def _introspect(self, form: dict[str, str]) -> Reply:
        entry = self._access.get(form.get("token", ""))
        live = entry is not None and entry.expires_at > time.time() and entry.grant.family not in self._revoked_families
        self.counters["introspect.active" if live else "introspect.inactive"] += 1
        if entry is None or not live:
            return Reply(200, {"active": False})  # never a 4xx: Dovecot would call that internal
        scopes = entry.grant.scope.split()
        if MAIL_SCOPES.intersection(scopes) and LAB_SCOPE not in scopes:
            scopes.append(LAB_SCOPE)
        return Reply(
            200,
            {
                "active": True,
                "username": f"{entry.grant.user}@{DOMAIN}",
                "scope": " ".join(scopes),
                "client_id": entry.grant.client_id,
                "token_type": "Bearer",
                "exp": int(entry.expires_at),
            },
        )

    def _revoke(self, token: str) -> None:
        grant = self._refresh.get(token)
        if grant is not None:
            self._revoked_families.add(grant.family)  # and every access token it gave
        elif token in self._access:
            self._access[token].expires_at = 0

    def _new_refresh(self, grant: Grant) -> str:
        token = "lab-rt." + secrets.token_urlsafe(24)
        self._refresh[token] = grant
        return token

    def _new_access(self, grant: Grant, lifetime: float | None) -> str:
        token = "lab-at." + secrets.token_urlsafe(24)
        seconds = self.access_lifetime if lifetime is None else lifetime
        self._access[token] = AccessGrant(grant, time.time() + seconds)
        return token


def _narrowed(granted: str, asked: str | None) -> str:
    """RFC 6749 §6: a refresh may ask for the granted scopes or fewer, never more.
    Microsoft's offline_access is about the refresh token, not a scope of the access token."""
    if not asked:
        return granted
    wanted = set(asked.split()) - {"offline_access"}
    if not wanted <= set(granted.split()):
        raise OAuthRefusal("invalid_scope", f"scope {asked!r} exceeds the grant {granted!r}")
    return " ".join(scope for scope in granted.split() if scope in wanted)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET", {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self._answer("POST", dict(parse_qsl(body, keep_blank_values=True)))

    def _answer(self, method: str, form: dict[str, str]) -> None:
        url = urlsplit(self.path)
        authority = self.server.authority
        fault = authority.fault
        if fault is not None and (url.path == "/token" or MICROSOFT_PATH.match(url.path)):
            time.sleep(fault.delay)  # a slow endpoint; the handler thread waits, not the server
        basic_auth = _basic_auth(self.headers.get("Authorization"))
        reply = authority.handle(method, url.path, dict(parse_qsl(url.query)), form, basic_auth)
        body = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if reply.location:
            self.send_header("Location", reply.location)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters instead
        pass


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restart after an outage takes the same port at once
    daemon_threads = True

    def __init__(self, port: int, authority: TokenAuthority):
        self.authority = authority
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    # Clients keep connections alive (Dovecot does): an outage must cut those too, not only
    # stop accepting new ones.
    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a test's deadline against a slow fault) is no lab error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class TokenServer:
    """The HTTP face of a ``TokenAuthority``, served from a thread. ``stop()`` + ``start()``
    is an outage: the authority (every token) survives it."""

    def __init__(self, port: int, authority: TokenAuthority | None = None):
        self.port = port
        self.authority = authority or TokenAuthority()
        self.authority.base_url = self.url
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self.port, self.authority)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"lab-token-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.cut_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.token_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=10080, help="on 127.0.0.1 (default 10080)")
    parser.add_argument("--access-lifetime", type=int, default=DEFAULT_LIFETIME, help="seconds")
    args = parser.parse_args(argv)
    server = TokenServer(args.port)
    server.authority.access_lifetime = args.access_lifetime
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    server.start()
    print(
        f"token server on {server.url} (token {server.token_url}, introspection {server.introspection_url})", flush=True
    )
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
