"""A job's attachments: data rows as CSV, files on disk, and files chosen per row.

A file attachment whose ``file:`` or ``filename:`` holds a template (``invoices/{{ row.id }}.pdf``)
is rendered for each message. Such a path comes from data, so it is confined: relative, no
``..``, and inside the config's ``attachments_dir`` once symlinks are followed — a row can
pick an invoice, never ``/etc/shadow``. Paths written out in the config are the operator's own
and are taken as written. A file that is missing fails the run naming the row: the merge
stays all or nothing.
"""

from __future__ import annotations

import mimetypes
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
            out.append(_file_attachment(path, att.filename or path.name, att.content_type, what=str(path)))
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
        path = confined(render(source, f"{rendered}.file").strip(), base, what=what) if "{" in source else Path(source)
        filename = render(att.filename, f"{rendered}.filename").strip() if att.filename else path.name
        out.append(_file_attachment(path, filename, att.content_type, what=f"{what} {str(path)!r}"))
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
    root = base.resolve()
    path = (root / pure).resolve()  # follows symlinks: a link out of the folder is refused too
    if not path.is_relative_to(root):
        raise MessageRefused(f"{what}.file: {rendered!r} leads out of the attachments folder ({base})")
    return path


def _file_attachment(path: Path, filename: str, content_type: str | None, *, what: str) -> Attachment:
    try:
        with path.open("rb") as f:
            content = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise DataSourceError(f"attachment {what}: {exc.strerror}") from None
    if len(content) > MAX_FILE:
        raise DataSourceError(f"attachment {what}: over {MAX_FILE // (1024 * 1024)} MiB")
    guessed = mimetypes.guess_type(filename or path.name)[0] or "application/octet-stream"
    return Attachment(filename=filename, content=content, content_type=content_type or guessed)
