"""Files against whoever can write into a mail folder or an attachments folder (issue 18,
item 6): a symlinked mbox, a planted ``Maildir/tmp/<name>`` symlink, a symlinked Maildir
subfolder or parent folder, a per-row attachment named ``.env``, and FIFOs (which must not hang:
each case runs under a timeout in a child process)."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postroom.config import Settings, load_config
from postroom.errors import MessageRefused, PermanentError
from postroom.incoming.local_save import Mbox, SymlinkRefused, save_id, save_maildir
from postroom.mail.templates import TemplateRenderer
from postroom.outgoing.jobs import JobRunner

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
RAW = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
FIFO_TIMEOUT = 20.0  # seconds; the fixed code answers at once, the old one waited forever


def victim(tmp_path: Path) -> Path:
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    return target


def save(root: Path, **kwargs: object) -> dict[str, str]:
    return save_maildir(root, RAW, unique=save_id("k1"), now=NOW, in_doubt=False, **kwargs)  # type: ignore[arg-type]


def append(path: Path, **kwargs: object) -> None:
    with Mbox(path, lock_wait=1, **kwargs) as box:  # type: ignore[arg-type]
        box.append(RAW, sender="a@example.test", now=NOW)


def test_a_symlinked_mbox_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = victim(tmp_path)
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "inbox").symlink_to(target)

    with pytest.raises(SymlinkRefused, match=r"inbox is a symbolic link: refused .*follow_symlinks"):
        append(tmp_path / "mail" / "inbox")

    assert target.read_text() == "precious\n"
    append(tmp_path / "mail" / "inbox", follow_symlinks=True)  # meant: the option allows it
    assert target.read_text().startswith("precious\n\nFrom a@example.test")


def test_a_planted_maildir_tmp_symlink_is_never_written_through(tmp_path: Path) -> None:
    target = victim(tmp_path)
    root = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    name = f"{int(NOW.timestamp())}.{save_id('k1')}.{os.uname().nodename.replace('/', '_').replace(':', '_')}"
    (root / "tmp" / name).symlink_to(target)

    with pytest.raises(SymlinkRefused, match=r"Maildir/tmp/.* is a symbolic link: refused"):
        save(root)

    assert target.read_text() == "precious\n"
    assert os.listdir(root / "new") == []


@pytest.mark.parametrize("sub", ["tmp", "new", "cur"])
def test_a_symlinked_maildir_subfolder_is_refused(tmp_path: Path, sub: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "Maildir"
    root.mkdir()
    (root / sub).symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(SymlinkRefused, match=f"Maildir/{sub} is a symbolic link"):
        save(root)

    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_a_symlinked_parent_folder_is_not_written_through(tmp_path: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mail").symlink_to(elsewhere, target_is_directory=True)
    where = tmp_path / "home" / "mail" / "box"

    with pytest.raises(SymlinkRefused, match=r"home/mail is a symbolic link"):
        save(where) if kind == "maildir" else append(where)

    assert os.listdir(elsewhere) == []


def _in_child(work: Callable[[], object], queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        work()
        queue.put("done")
    except Exception as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def within_timeout(work: Callable[[], object]) -> str:
    """``work`` in a child process, which is killed (and the test failed) if it hangs."""
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()  # type: ignore[type-arg]
    child = multiprocessing.get_context("fork").Process(target=_in_child, args=(work, queue))
    child.start()
    child.join(FIFO_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"hung for {FIFO_TIMEOUT} s on a FIFO")
    return str(queue.get(timeout=5))


def test_a_fifo_as_the_mbox_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "inbox")
    said = within_timeout(lambda: append(tmp_path / "inbox"))
    assert said.startswith("PermanentError") and "not a regular file" in said


# -- per-row attachments ----------------------------------------------------------------------

JOB = """\
accounts:
  shop: {address: billing@shop.example, smtp: {host: 127.0.0.1, port: 25, security: none}}
jobs:
  statements:
    schedule: {cron: "0 6 1 * *"}
    account: shop
    template: statement
    to: ["{{ row.email }}"]
    data: {customers: {file: customers.json}}
    for_each: customers
    attachments: [{file: "{{ row.doc }}"}]
"""


def project(tmp_path: Path, doc: str) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "statement.j2").write_text(
        "{% block subject %}Invoice{% endblock %}{% block text %}Hi{% endblock %}\n"
    )
    (tmp_path / "customers.json").write_text(json.dumps([{"email": "bob@example.test", "doc": doc}]))
    (tmp_path / ".env").write_text("MAIL_PASSWORD=hunter2-the-real-one\n")
    (tmp_path / "attachments").mkdir()
    (tmp_path / "postroom.yaml").write_text(JOB)
    return tmp_path / "postroom.yaml"


def build(config: Path) -> int:
    import asyncio

    loaded = load_config(Settings(config=config), environ={})
    runner = JobRunner(loaded.config, TemplateRenderer(loaded.templates_dir), None)
    return len(asyncio.run(runner.build("statements", key_prefix="t", now=NOW)).messages)


def test_a_row_naming_env_does_not_attach_the_secrets_file(tmp_path: Path) -> None:
    config = project(tmp_path, ".env")
    # The default attachments_dir is attachments/, not the config's folder: no .env there.
    with pytest.raises(Exception, match=r"\.env") as raised:
        build(config)
    assert "hunter2" not in str(raised.value)

    (tmp_path / "attachments" / ".env").write_text("SECRET=1\n")  # a dotfile inside the folder
    with pytest.raises(MessageRefused, match="hidden file"):
        build(config)
    (tmp_path / "attachments" / "invoice.pdf").symlink_to(tmp_path / "attachments" / ".env")
    (tmp_path / "customers.json").write_text(json.dumps([{"email": "bob@example.test", "doc": "invoice.pdf"}]))
    with pytest.raises(MessageRefused, match="leads to a hidden file"):
        build(config)


def test_a_row_naming_a_fifo_or_a_device_is_refused_without_hanging(tmp_path: Path) -> None:
    config = project(tmp_path, "pipe")
    os.mkfifo(tmp_path / "attachments" / "pipe")
    said = within_timeout(lambda: build(config))
    assert said.startswith("MessageRefused") and "not a regular file" in said

    (tmp_path / "attachments" / "null").symlink_to("/dev/null")  # leads out: refused as before
    (tmp_path / "customers.json").write_text(json.dumps([{"email": "bob@example.test", "doc": "sub"}]))
    (tmp_path / "attachments" / "sub").mkdir()
    said = within_timeout(lambda: build(config))
    assert "not a regular file" in said


def test_a_regular_per_row_file_is_still_attached(tmp_path: Path) -> None:
    config = project(tmp_path, "invoice-7.pdf")
    (tmp_path / "attachments" / "invoice-7.pdf").write_bytes(b"%PDF-1.4")
    assert build(config) == 1


def test_permanent_errors_for_files_are_permanent() -> None:
    assert issubclass(SymlinkRefused, PermanentError)
