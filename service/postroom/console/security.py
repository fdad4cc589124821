"""Token, session and CSRF for the console, as one ASGI middleware: ``require_token(app, token)``.

- The token (POSTROOM_CONSOLE_TOKEN) is compared in constant time. A browser signs in once
  on ``/login`` and gets a session cookie (HttpOnly, SameSite=Strict, Secure behind https);
  a script may send ``Authorization: Bearer <token>`` instead.
- The session is a signed value (expiry, nonce, HMAC keyed from the token), and its nonce is
  kept server-side (``Sessions``, bounded) from sign-in to sign-out: a cookie copied before
  ``/logout`` stops working at it; changing the token, or a restart, ends every session.
- Wrong tokens (form or Bearer) are counted per client address (``SignInThrottle``): after
  FREE_FAILURES, each further try waits twice as long as the last (up to LONGEST_WAIT), and a
  try before the wait is over answers 429 with Retry-After, unchecked.
- ``next`` after sign-in is a path on this site or ``/``: one leading ``/``, no ``//``, no
  backslash, no control character (browsers drop a tab: ``/\t/evil.test`` is ``//evil.test``).
- ``token_weakness`` says why a token is too easy to guess (the daemon refuses to start).
- Every POST made with a session cookie carries the CSRF token of that session (form field
  ``csrf`` or header ``X-CSRF-Token``), or it is refused with 403. The app finds the token
  for its forms in ``request.state.csrf``.
- Every response gets a strict Content-Security-Policy (no inline script or style, nothing
  from another origin) and no-store caching.

Unauthenticated: an HTML GET answers 401 with the login form, anything else 401 text.
Paths in ``public`` (static assets, which hold no data) pass without a session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import itertools
import math
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "postroom_session"
SESSION_TTL = 12 * 3600  # seconds a sign-in lasts
MAX_FORM = 16 * 1024  # bytes of a form body; the console's forms are a few fields
BODY_TIMEOUT = 10.0  # seconds a client may take to send a form body
MIN_TOKEN = 16  # characters: a short token is guessable over the network
MIN_DISTINCT = 8  # different characters in a token: fewer is a pattern, not a secret
# Words that make up guessable tokens; what is left without them must still be a secret.
COMMON_WORDS = re.compile(
    r"password|passw0rd|changeme|secret|letmein|qwerty|admin|postroom|default|example|123456|abcdef",
    re.IGNORECASE,
)
MIN_LEFT = 8  # characters a token must keep without COMMON_WORDS
MAX_SESSIONS = 1000  # live sign-ins kept; past it the oldest is signed out
FREE_FAILURES = 5  # wrong tokens from one client before it must wait
FIRST_WAIT = 1.0  # seconds after the first failure past the free ones; doubles each time
LONGEST_WAIT = 900.0
MAX_CLIENTS = 10_000  # client addresses the throttle remembers (the oldest forgotten first)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too easy to guess, or None: too short, too few different characters,
    a repeated or straight run (``abcabc…``, ``0123…``), or common words and little else."""
    if len(token) < MIN_TOKEN:
        return f"it has {len(token)} characters; at least {MIN_TOKEN} are needed"
    distinct = len(set(token))
    if distinct < MIN_DISTINCT:
        return f"it uses only {distinct} different characters; at least {MIN_DISTINCT} are needed"
    for period in range(1, len(token) // 2 + 1):
        if token == (token[:period] * (len(token) // period + 1))[: len(token)]:
            return f"it repeats {token[:period]!r}"
    steps = Counter(ord(b) - ord(a) for a, b in itertools.pairwise(token))
    if steps.most_common(1)[0][1] * 2 > len(token) - 1:
        return "it is mostly a straight run of characters (like abcd… or 1234…)"
    left = COMMON_WORDS.sub("", token)
    if len(left) < MIN_LEFT:
        return "it is mostly common words"
    return None


class Sessions:
    """The live sessions' nonces, each with its expiry: a sign-out removes one for good.
    Bounded: past MAX_SESSIONS the oldest sign-in ends."""

    def __init__(self, limit: int = MAX_SESSIONS):
        self._live: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def add(self, nonce: str, expires: float) -> None:
        self._live[nonce] = expires
        while len(self._live) > self._limit:
            self._live.popitem(last=False)

    def live(self, nonce: str, now: float) -> bool:
        expires = self._live.get(nonce)
        if expires is not None and expires <= now:
            del self._live[nonce]
            return False
        return expires is not None

    def end(self, nonce: str) -> None:
        self._live.pop(nonce, None)


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0  # no try is checked before this


class SignInThrottle:
    """Wrong tokens per client address, and how long it must wait before the next try (pure:
    ``now`` is passed in). A right token clears the client's count."""

    def __init__(self) -> None:
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, client: str, now: float) -> float:
        """Seconds the client must still wait before a try is checked (0: go ahead)."""
        failures = self._clients.get(client)
        return max(0.0, failures.until - now) if failures is not None else 0.0

    def failed(self, client: str, now: float) -> float:
        """Count a wrong token; returns the wait it earned (0 while within FREE_FAILURES)."""
        failures = self._clients.pop(client, None) or _Failures()
        self._clients[client] = failures  # most recent last: the oldest are forgotten first
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        failures.count += 1
        over = failures.count - FREE_FAILURES
        if over <= 0:
            return 0.0
        wait: float = min(FIRST_WAIT * 2.0 ** min(over - 1, 32), LONGEST_WAIT)
        failures.until = now + wait
        return wait

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


class Guard:
    """The token and what is derived from it: session values and CSRF tokens."""

    def __init__(self, token: str):
        self._token = token.encode()
        self._key = hmac.new(self._token, b"postroom console session v1", hashlib.sha256).digest()

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self, now: float, sessions: Sessions | None = None) -> str:
        """A new session's cookie value; ``sessions`` keeps its nonce until it ends."""
        expires, nonce = int(now) + SESSION_TTL, secrets.token_urlsafe(16)
        if sessions is not None:
            sessions.add(nonce, expires)
        body = f"{expires}.{nonce}"
        return f"{body}.{self._sign(body)}"

    def session_nonce(self, value: str, now: float) -> str | None:
        """The session's nonce if ``value`` is a session this token signed and it has not expired."""
        body, _, sig = value.rpartition(".")
        expires, _, nonce = body.partition(".")
        if not (sig and nonce and expires.isdigit()) or not hmac.compare_digest(sig, self._sign(body)):
            return None
        return nonce if int(expires) > now else None

    def csrf_for(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()


def require_token(
    app: ASGIApp,
    token: str,
    *,
    public: Collection[str] = ("/static/",),
    login_path: str = "/login",
    logout_path: str = "/logout",
    stylesheet: str | None = "/static/console.css",
    clock: Callable[[], float] = time.time,
) -> ASGIApp:
    """``app`` behind the token (see the module doc). ``public``: path prefixes served without
    a session. ``stylesheet``: what the login page links (must be public). ``clock``: the
    time sessions and the sign-in throttle go by."""
    return _TokenGate(app, Guard(token), tuple(public), login_path, logout_path, stylesheet, clock)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class _TokenGate:
    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        public: tuple[str, ...],
        login_path: str,
        logout_path: str,
        stylesheet: str | None,
        clock: Callable[[], float],
    ):
        self.app, self.guard, self.public, self.clock = app, guard, public, clock
        self.login_path, self.logout_path, self.stylesheet = login_path, logout_path, stylesheet
        self.sessions = Sessions()
        self.throttle = SignInThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(self.public):
            await self.app(scope, receive, send)
            return
        if path == self.login_path:
            await self._login(scope, receive, send)
            return
        headers = _headers(scope)
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            if not await self._token_tried(scope, send, bearer[7:].strip()):
                return
            scope.setdefault("state", {})["csrf"] = ""  # no cookie, nothing to forge: no CSRF
            await self.app(scope, receive, send)
            return
        now = self.clock()
        nonce = self.guard.session_nonce(_cookie(headers, SESSION_COOKIE), now)
        if nonce is None or not self.sessions.live(nonce, now):
            await self._unauthorized(scope, send)
            return
        csrf = self.guard.csrf_for(nonce)
        scope.setdefault("state", {})["csrf"] = csrf
        if method not in ("GET", "HEAD"):
            form = await _read_form(receive, send, headers)
            if form is None:
                return
            given = headers.get("x-csrf-token") or _first(form, "csrf")
            if not hmac.compare_digest(given.encode(), csrf.encode()):
                await _text(send, 403, "refused: missing or wrong CSRF token; reload the page and try again\n")
                return
            if path == self.logout_path:
                self.sessions.end(nonce)  # the cookie stops working, even a copy of it
                await _redirect(send, self.login_path, cookie=_clear_cookie())
                return
            receive = _replay(form)
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        next_path = _local_path(_query(scope).get("next", "/"))
        if scope["method"] in ("GET", "HEAD"):
            await _html(send, 200, self._login_page(next_path))
            return
        form = await _read_form(receive, send, headers)
        if form is None:
            return
        client, now = _client(scope), self.clock()
        if (wait := self.throttle.wait(client, now)) > 0:
            await _too_soon(send, wait)
            return
        if not self.guard.token_ok(_first(form, "token")):
            waited = self.throttle.failed(client, now)
            error = "That token is not the console's token." + (
                f" Wait {math.ceil(waited)} s before the next try." if waited else ""
            )
            await _html(send, 401, self._login_page(next_path, error=error))
            return
        self.throttle.succeeded(client)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        value = self.guard.new_session(now, self.sessions)
        cookie = f"{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_TTL}; HttpOnly; SameSite=Strict{secure}"
        await _redirect(send, _local_path(_first(form, "next") or next_path), cookie=cookie)

    async def _token_tried(self, scope: Scope, send: Send, candidate: str) -> bool:
        """A Bearer token checked under the same throttle as the form; False after answering."""
        client, now = _client(scope), self.clock()
        if (wait := self.throttle.wait(client, now)) > 0:
            await _too_soon(send, wait)
            return False
        if not self.guard.token_ok(candidate):
            self.throttle.failed(client, now)
            await self._unauthorized(scope, send)
            return False
        self.throttle.succeeded(client)
        return True

    async def _unauthorized(self, scope: Scope, send: Send) -> None:
        accept = _headers(scope).get("accept", "")
        if scope["method"] in ("GET", "HEAD") and "text/html" in accept:
            target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
            await _html(send, 401, self._login_page(_local_path(target)))
        else:
            await _text(
                send,
                401,
                "sign in first: POSTROOM_CONSOLE_TOKEN as a Bearer token, or at /login\n",
                extra=[(b"www-authenticate", b'Bearer realm="postroom"')],
            )

    def _login_page(self, next_path: str, error: str | None = None) -> str:
        style = f'<link rel="stylesheet" href="{html.escape(self.stylesheet)}">' if self.stylesheet else ""
        problem = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        action = html.escape(f"{self.login_path}?{urlencode({'next': next_path})}")
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>postroom — sign in</title>{style}<link rel="icon" href="/static/favicon.svg"></head>
<body class="login"><main><h1>postroom</h1>{problem}
<form method="post" action="{action}">
<label for="token">Console token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Sign in</button></form>
<p class="hint">The token is POSTROOM_CONSOLE_TOKEN in the daemon's environment or .env.</p>
</main></body></html>
"""


# -- small ASGI helpers ------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cookie(headers: dict[str, str], name: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is no session
        return ""
    morsel = jar.get(name)
    return morsel.value if morsel is not None else ""


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)
    return {k: v[0] for k, v in parsed.items()}


def _first(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0]


_NOT_IN_A_LOCAL_PATH = re.compile(r"[\x00-\x20\x7f\\]")  # controls, space, backslash


def _local_path(target: str) -> str:
    """Where to go after signing in: a path on this site only (no open redirect). Browsers
    drop tabs and newlines from a URL and read a backslash as a slash, so a target with any
    of those (or a space) is refused whole, not cleaned into ``//evil.test``."""
    if not target.startswith("/") or target.startswith("//") or _NOT_IN_A_LOCAL_PATH.search(target):
        return "/"
    return target


async def _read_form(receive: Receive, send: Send, headers: dict[str, str]) -> dict[str, list[str]] | None:
    """The urlencoded body, bounded in size and time; None after answering an error."""
    declared = headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM:
        await _text(send, 413, "request body too large\n")
        return None
    body = b""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_FORM:
                    await _text(send, 413, "request body too large\n")
                    return None
    except TimeoutError:
        await _text(send, 408, "request timeout\n")
        return None
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        await _text(send, 400, "malformed form\n")
        return None


def _replay(form: dict[str, list[str]]) -> Receive:
    """The body, read once here, handed on to the app as if it came from the client."""
    body = urlencode(form, doseq=True).encode()
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            if b"cache-control" not in present:
                extra.append((b"cache-control", b"no-store"))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _respond(
    send: Send, status: int, body: bytes, ctype: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers: list[Any] = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _text(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _respond(send, status, text.encode(), b"text/plain; charset=utf-8", extra)


async def _html(send: Send, status: int, page: str) -> None:
    await _respond(send, status, page.encode(), b"text/html; charset=utf-8")


async def _redirect(send: Send, location: str, *, cookie: str) -> None:
    await _respond(
        send,
        303,
        b"",
        b"text/plain; charset=utf-8",
        [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1"))],
    )


async def _too_soon(send: Send, wait: float) -> None:
    seconds = str(math.ceil(wait))
    await _text(
        send, 429, f"too many wrong tokens from here: try again in {seconds} s\n", [(b"retry-after", seconds.encode())]
    )


def _clear_cookie() -> str:
    return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
