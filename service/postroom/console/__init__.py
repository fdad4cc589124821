"""The operator's console: status pages served by the daemon's HTTP listener (``http.py``).

``app.build_console`` makes the Starlette app; ``security.require_token`` guards it (and any
other app, e.g. `postroom preview`): token, session cookie, CSRF, CSP.
"""
