"""SQLite URLs read without SQLAlchemy (whose import costs a one-shot command ~0.2 s).

Only SQLAlchemy's file form is understood: ``sqlite[+driver]:///DATABASE[?query]``, where a
relative DATABASE is relative and ``sqlite:////abs/path`` is absolute. The DATABASE part is
percent-decoded as SQLAlchemy's ``make_url`` decodes it, and quoted back the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

_SQLITE = re.compile(r"^(?P<scheme>sqlite(?:\+\w+)?):///(?P<database>[^?]*)(?P<query>\?.*)?$")


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or any other kind."""
    m = _SQLITE.match(url)
    if m is None:
        return None
    database = unquote(m["database"])
    return Path(database) if database and database != ":memory:" else None


def sqlite_beside(url: str, base: Path) -> str:
    """A SQLite URL with a relative file made relative to `base`; any other URL unchanged."""
    m = _SQLITE.match(url)
    path = sqlite_file(url)
    if m is None or path is None or path.is_absolute():
        return url
    return f"{m['scheme']}:///{quote(str(base / path), safe=' +/')}{m['query'] or ''}"
