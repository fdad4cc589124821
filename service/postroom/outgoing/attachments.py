"""A job's attachments: data rows as CSV, files on disk, and files chosen per row.

A file attachment whose ``file:`` or ``filename:`` holds a template (``invoices/{{ row.id }}.pdf``)
is rendered for each message. Such a path comes from data, so it is confined: relative, no
``..``, no part starting with a dot (``.env``, ``.ssh/…``), and inside the config's
``attachments_dir`` (default: ``attachments/`` beside the config, a folder of its own) once
symlinks are followed — a row can pick an invoice, never ``/etc/shadow`` or the secrets file.
Paths written out in the config are the operator's own and are taken as written. A file that
is missing fails the run naming the row: the merge stays all or nothing.

Whatever the path, only a regular file is attached: a FIFO (whose open would wait for a
writer and hang the run), a device or a folder is refused after a ``stat``, before it is
opened; the open itself does not block and is checked again (and, for a per-row path, does
not follow a link swapped in since).
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..config.model import AttachmentConfig
from ..errors import DataSourceError, MessageRefused
from ..mail.compose import Attachment, rows_to_csv

MAX_FILE = 25 * 1024 * 1024  # bytes: more than most receiving servers take in a whole message

Render = Callable[[str, str], str]  # (template source, what) -> text, for the current message


def is_per_message(att: AttachmentConfig) -> bool:
    """True when this attachment differs per message (its path or name is a template)."""
    return (att.file is not None and "{" in str(att.file)) or "{" in (att.filename or "")


def static_attachments(atts: Sequence[AttachmentConfig], data: Mapping[str, Any]) -> list[Attachment]:
    """The attachments every message of a run shares, built (and base64-encoded) once."""
    out = []
    for att in atts:
        if is_per_message(att):
            continue
        if att.data is not None:
            out.append(
                Attachment(
                    filename=att.filename or f"{att.data}.csv",
                    content=rows_to_csv(data[att.data] or []),
                    content_type=att.content_type or "text/csv",
                )
            )
        elif att.file is not None:  # the config allows exactly one of data, file
            path = Path(att.file)
            out.append(
                _file_attachment(path, att.filename or path.name, att.content_type, what=str(path), from_data=False)
            )
    return out


def message_attachments(
    atts: Sequence[AttachmentConfig], data: Mapping[str, Any], base: Path, render: Render, *, where: str
) -> list[Attachment]:
    """The attachments rendered for one message (in config order; the static ones are added
    by the caller, which built them once)."""
    out = []
    for i, att in enumerate(atts):
        if not is_per_message(att):
            continue
        what = f"attachments[{i}]"  # errors: the caller puts the job and row in front
        rendered = f"{where}.{what}"  # template errors name the whole place themselves
        if att.data is not None:  # only the filename is a template
            filename = render(att.filename or "", f"{rendered}.filename").strip()
            out.append(
                Attachment(
                    filename=filename,
                    content=rows_to_csv(data[att.data] or []),
                    content_type=att.content_type or "text/csv",
                )
            )
            continue
        source = str(att.file)
        from_data = "{" in source
        path = confined(render(source, f"{rendered}.file").strip(), base, what=what) if from_data else Path(source)
        filename = render(att.filename, f"{rendered}.filename").strip() if att.filename else path.name
        out.append(
            _file_attachment(path, filename, att.content_type, what=f"{what} {str(path)!r}", from_data=from_data)
        )
    return out


def confined(rendered: str, base: Path, *, what: str) -> Path:
    """``rendered`` (a path a template made from data) as a file inside ``base``, or refused."""
    if not rendered:
        raise MessageRefused(f"{what}.file rendered empty")
    if "\0" in rendered or "\\" in rendered:
        raise MessageRefused(f"{what}.file: not a plain relative path: {rendered!r}")
    pure = PurePosixPath(rendered)
    if pure.is_absolute() or ".." in pure.parts:
        raise MessageRefused(
            f"{what}.file: {rendered!r} leaves the attachments folder ({base}); "
            "per-row paths must be relative, without '..'"
        )
    if _hidden(pure.parts):
        raise MessageRefused(f"{what}.file: {rendered!r} names a hidden file (a part starts with '.'): refused")
    root = base.resolve()
    path = (root / pure).resolve()  # follows symlinks: a link out of the folder is refused too
    if not path.is_relative_to(root):
        raise MessageRefused(f"{what}.file: {rendered!r} leads out of the attachments folder ({base})")
    if _hidden(path.relative_to(root).parts):  # a link inside the folder to its .env
        raise MessageRefused(f"{what}.file: {rendered!r} leads to a hidden file: refused")
    return path


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def _file_attachment(path: Path, filename: str, content_type: str | None, *, what: str, from_data: bool) -> Attachment:
    """The file's content, if it is a regular file. ``from_data``: the path came from a row
    (``confined`` resolved it), so its last part must not have become a link since."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise MessageRefused(f"attachment {what}: not a regular file (a FIFO, device or folder?): refused")
        flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if from_data else 0)
        fd = os.open(path, flags)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MessageRefused(f"attachment {what}: not a regular file: refused")
            content = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise DataSourceError(f"attachment {what}: {exc.strerror}") from None
    if len(content) > MAX_FILE:
        raise DataSourceError(f"attachment {what}: over {MAX_FILE // (1024 * 1024)} MiB")
    guessed = mimetypes.guess_type(filename or path.name)[0] or "application/octet-stream"
    return Attachment(filename=filename, content=content, content_type=content_type or guessed)
