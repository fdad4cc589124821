"""`postroom init`: a small, commented starter project that `postroom check --offline` accepts.

The files ship as package data beside this module; the table below says where each goes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import PostroomError

# destination in the new project -> the packaged file (a dotfile is awkward as package data)
STARTER_FILES = {
    "postroom.yaml": "postroom.yaml",
    ".env.example": "env.example",
    "templates/layout.j2": "templates/layout.j2",
    "templates/hello.j2": "templates/hello.j2",
}
SCHEMA_FILE = "postroom.schema.json"  # the config's first line points the editor at it
# .env holds real secrets once edited: written (from .env.example) only where there is none,
# never overwritten, not even with --force.
DOTENV = ".env"


@dataclass(frozen=True)
class Written:
    path: Path
    note: str = ""


def write_starter(target: Path, *, force: bool, schema: str) -> list[Written]:
    """Write the starter into `target` (made if missing). Refuses, writing nothing, when any
    file would be overwritten and `force` is false."""
    texts = {dest: files(__name__).joinpath(src).read_text(encoding="utf-8") for dest, src in STARTER_FILES.items()}
    texts[SCHEMA_FILE] = schema
    existing = sorted(dest for dest in texts if (target / dest).exists())
    if existing and not force:
        raise PostroomError(
            f"{target.resolve()} already has {', '.join(existing)}; nothing written "
            "(--force overwrites them; .env is never overwritten)"
        )
    written = []
    for dest, text in texts.items():
        path = target / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(Written(path, "overwritten" if dest in existing else ""))
    dotenv = target / DOTENV
    if dotenv.exists():
        written.append(Written(dotenv, "kept as it was: add the names .env.example lists"))
    else:
        # Owner-only from the start: it is where the real password goes.
        fd = os.open(dotenv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(texts[".env.example"])
        written.append(Written(dotenv, "a copy of .env.example; put the real password in"))
    return written
