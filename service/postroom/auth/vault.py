"""Refresh tokens encrypted at rest: Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``)
with a key from the secrets, never from the config file or the store.

The key comes from ``POSTROOM_TOKEN_KEY`` or the file named by ``POSTROOM_TOKEN_KEY_FILE``,
found where the config's ${NAME} secrets are (``from_secrets``): the environment, a systemd
credential or Docker secret of that name, ``.env``. Several keys separated by commas or
whitespace rotate them: the first encrypts, any of them decrypts. Make one with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import UNDECRYPTABLE, ConfigError, OAuth2Error

KEY_VARIABLE = "POSTROOM_TOKEN_KEY"
KEY_FILE_VARIABLE = "POSTROOM_TOKEN_KEY_FILE"
MAKE_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class TokenVault:
    """Seals and opens refresh tokens. Holds no token itself; its repr shows no key."""

    def __init__(self, keys: list[str], *, source: str = KEY_VARIABLE):
        if not keys:
            raise ConfigError(f"{source}: no key given; make one with {MAKE_KEY}")
        fernets: list[Fernet] = []
        for position, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                # Never echo the value: it is (meant to be) a secret.
                raise ConfigError(
                    f"{source}: key {position} is not a Fernet key (32 bytes, url-safe base64); "
                    f"make one with {MAKE_KEY}"
                ) from None
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "TokenVault(<keys hidden>)"

    @classmethod
    def from_text(cls, text: str, *, source: str = KEY_VARIABLE) -> TokenVault:
        return cls(re.split(r"[\s,]+", text.strip()) if text.strip() else [], source=source)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TokenVault:
        return cls.from_secrets(environ.get)

    @classmethod
    def from_secrets(cls, lookup: Callable[[str], str | None]) -> TokenVault:
        """The key where ``lookup`` finds it: the config's ${NAME} lookup
        (``config.loader.SecretLookup.get``: the environment, a secret file of that name from
        systemd's LoadCredential= or Docker, then .env), so the key is kept like any secret."""
        key = lookup(KEY_VARIABLE)
        if key:
            return cls.from_text(key)
        path = lookup(KEY_FILE_VARIABLE)
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"{KEY_FILE_VARIABLE}: cannot read {path}: {exc.strerror}") from None
            return cls.from_text(text, source=f"{KEY_FILE_VARIABLE} ({path})")
        raise ConfigError(
            f"OAuth2 accounts keep refresh tokens encrypted: set {KEY_VARIABLE} (in the environment, .env or a "
            f"secret file of that name; or {KEY_FILE_VARIABLE}, naming a file that holds it); make a key with "
            f"{MAKE_KEY}"
        )

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, sealed: bytes, *, account: str) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise OAuth2Error(
                f"{account}: the stored refresh token does not decrypt with {KEY_VARIABLE} (was the key "
                f"changed? keep the old one after the new, comma-separated, or sign in again with "
                f"`postroom auth login {account}`)",
                account=account,
                error=UNDECRYPTABLE,
            ) from None

    def rotated(self, sealed: bytes) -> bytes:
        """The same secret sealed with the first key (after a key rotation)."""
        return self._fernet.rotate(sealed)
