"""The web pages postroom serves: the operator's console (status pages on the daemon's HTTP
listener, ``http.py``) and the template preview (``preview.py``, mounted in the console at
``/preview`` and served alone by `postroom preview`).

``app.build_console`` makes the Starlette app; ``security.require_token`` guards it (and any
mounted app): token, session cookie, CSRF, CSP. ``daemon`` decides whether the daemon serves
the console (its token) and builds it around the running daemon (``app.py`` alone imports it).
"""
