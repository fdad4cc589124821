"""OAuth2 sign-in: bearer tokens for SMTP, IMAP and POP3 instead of passwords.

- ``sasl``: the XOAUTH2 / OAUTHBEARER messages (pure)
- ``providers``: what Microsoft, Google and a generic server need (URLs, scopes, shapes)
- ``tokens``: one token provider per account — cached access tokens, refresh, rotation
- ``vault``: refresh tokens encrypted at rest (key from ``${POSTROOM_TOKEN_KEY}``)
- ``signin``: what `postroom auth login` and `auth status` do; the proving login over IMAP,
  POP3 or SMTP is handed in by the CLI (those edges sit above auth/)
"""
