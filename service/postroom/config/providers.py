"""What each OAuth2 provider needs: endpoints, default scopes per protocol, request shape.

One table (``PROVIDERS``) instead of ``if provider == "microsoft"`` across the code. Pure data
and pure functions: nothing here talks to the network.

- Microsoft 365 (Entra ID, v2.0 endpoints): delegated scopes per protocol on the Outlook
  resource plus ``offline_access`` (without it no refresh token comes back), sent again on
  every refresh; app-only (client credentials) asks for ``https://outlook.office365.com/.default``
  and needs an Exchange service principal with mailbox access. Refresh tokens rotate.
- Google: one scope, ``https://mail.google.com/``, for all three protocols; the installed-app
  flow with a loopback redirect (its device flow does not allow the mail scope). A refresh
  request carries no scope.
- generic: any RFC 6749 server; the config names the token URL and the scopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import ConfigError


class ProviderName(StrEnum):
    MICROSOFT = "microsoft"
    GOOGLE = "google"
    GENERIC = "generic"


class Grant(StrEnum):
    """How the account gets tokens: a person's refresh token, or the app's own credentials."""

    REFRESH_TOKEN = "refresh_token"
    CLIENT_CREDENTIALS = "client_credentials"


class MailProtocol(StrEnum):
    SMTP = "smtp"
    IMAP = "imap"
    POP3 = "pop3"


@dataclass(frozen=True)
class Endpoints:
    token_url: str
    device_code_url: str | None = None  # device code flow (Microsoft)
    authorize_url: str | None = None  # browser flow (Google's loopback redirect)
    revoke_url: str | None = None  # RFC 7009, where the provider has one


@dataclass(frozen=True)
class Provider:
    name: ProviderName
    endpoints: Endpoints  # {tenant} stands for Microsoft's tenant; "" token_url: from config
    delegated_scopes: Mapping[MailProtocol, tuple[str, ...]] = field(default_factory=dict)
    offline_scopes: tuple[str, ...] = ()  # asked with delegated scopes to get a refresh token
    app_only_scopes: tuple[str, ...] = ()
    scope_on_refresh: bool = True  # send `scope` again with grant_type=refresh_token
    needs_tenant: bool = False
    # Extra query parameters of the browser flow's authorize URL.
    authorize_params: Mapping[str, str] = field(default_factory=dict)


_OUTLOOK = "https://outlook.office.com"
_MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"

PROVIDERS: Mapping[ProviderName, Provider] = {
    ProviderName.MICROSOFT: Provider(
        ProviderName.MICROSOFT,
        Endpoints(
            token_url=f"{_MICROSOFT_LOGIN}/token",
            device_code_url=f"{_MICROSOFT_LOGIN}/devicecode",
            authorize_url=f"{_MICROSOFT_LOGIN}/authorize",
        ),
        delegated_scopes={
            MailProtocol.IMAP: (f"{_OUTLOOK}/IMAP.AccessAsUser.All",),
            MailProtocol.POP3: (f"{_OUTLOOK}/POP.AccessAsUser.All",),
            MailProtocol.SMTP: (f"{_OUTLOOK}/SMTP.Send",),
        },
        offline_scopes=("offline_access",),
        app_only_scopes=("https://outlook.office365.com/.default",),
        scope_on_refresh=True,
        needs_tenant=True,
    ),
    ProviderName.GOOGLE: Provider(
        ProviderName.GOOGLE,
        Endpoints(
            token_url="https://oauth2.googleapis.com/token",
            authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
            revoke_url="https://oauth2.googleapis.com/revoke",
        ),
        delegated_scopes={protocol: ("https://mail.google.com/",) for protocol in MailProtocol},
        scope_on_refresh=False,
        # Without these Google returns no refresh token (offline), or only on the first consent.
        authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    ProviderName.GENERIC: Provider(ProviderName.GENERIC, Endpoints(token_url="")),
}


def endpoints(
    provider: Provider, *, tenant: str | None = None, token_url: str | None = None, authority: str | None = None
) -> Endpoints:
    """The provider's URLs for one account. ``authority`` ("https://login.microsoftonline.us",
    or a local test server) replaces scheme and host of every URL the table holds."""
    if provider.needs_tenant and not tenant:
        raise ConfigError(f"oauth2: provider {provider.name} needs `tenant` (a tenant id or domain)")
    if provider.endpoints.token_url and token_url:
        raise ConfigError(f"oauth2: provider {provider.name} knows its token URL; drop `token_url`")
    if not provider.endpoints.token_url and not token_url:
        raise ConfigError(f"oauth2: provider {provider.name} needs `token_url`")

    def resolve(template: str | None) -> str | None:
        if template is None:
            return None
        url = template.replace("{tenant}", quote(tenant or "", safe=""))
        if authority is None:
            return url
        base, parts = urlsplit(authority), urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))

    table = provider.endpoints
    return Endpoints(
        token_url=token_url or resolve(table.token_url) or "",
        device_code_url=resolve(table.device_code_url),
        authorize_url=resolve(table.authorize_url),
        revoke_url=resolve(table.revoke_url),
    )


def default_scopes(provider: Provider, grant: Grant, protocols: Iterable[MailProtocol]) -> tuple[str, ...]:
    """The scopes to ask for when the config names none: one token serves every protocol the
    account uses, so it carries the scopes of all of them (in a stable order)."""
    if grant is Grant.CLIENT_CREDENTIALS:
        return provider.app_only_scopes
    wanted = set(protocols)
    scopes: list[str] = []
    for protocol in MailProtocol:
        if protocol in wanted:
            scopes.extend(scope for scope in provider.delegated_scopes.get(protocol, ()) if scope not in scopes)
    return (*scopes, *provider.offline_scopes) if scopes else ()
