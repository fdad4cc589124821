"""Settings and headers against hostile or mistaken input (issue 18, item 7): a ``*_FILE``
pointing at a secret file is never printed, every settings error exits 78 without a
traceback, a job cannot forge trace or signature headers nor put control characters in one,
templates stay in their folder, a 1,000-deep MIME nest is an expected input, and a full disk
makes ``/readyz`` not ready until a write goes through."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from postroom.config import Settings, load_config
from postroom.errors import ConfigError, MessageRefused, TemplateError
from postroom.incoming.message import MAX_MIME_DEPTH, ParsedMessage, message_parts, mime_depth
from postroom.mail.templates import TemplateRenderer
from postroom.outgoing.jobs import JobRunner
from postroom.store import Store
from postroom.store.health import StoreMonitor
from structlog.testing import capture_logs

from tests import test_disk_full
from tests.support.daemon import ROOT, Daemon, free_port, run_cli, wait_ready, wait_until

fill = test_disk_full.fill
small_disk = test_disk_full.small_disk  # the fixture: a real 2 MiB tmpfs, really filled

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
SHADOW = "root:$6$saltsalt$SECRETHASHxyz:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
STARTER = ROOT / "service" / "postroom" / "starter" / "postroom.yaml"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "service"),
        "POSTROOM_CONFIG": str(STARTER),
        "POSTROOM_STATE_DIR": str(tmp_path / "state"),
        "POSTROOM_HTTP": "",
        "MAIL_PASSWORD": "x",
        **extra,
    }


@pytest.mark.parametrize("setting", ["HTTP", "DATABASE_URL", "LOG_LEVEL", "LOG_FORMAT", "LEASE_SECONDS"])
@pytest.mark.parametrize("command", [["run"], ["outbox"]])
def test_a_setting_file_with_the_wrong_content_is_named_never_printed(
    tmp_path: Path, setting: str, command: list[str]
) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    env = base_env(tmp_path, **{f"POSTROOM_{setting}_FILE": str(shadow)})
    env.pop(f"POSTROOM_{setting}", None)

    done = run_cli(command, env, timeout=60)
    said = done.stdout + done.stderr

    assert done.returncode == 78, said
    assert f"POSTROOM_{setting}_FILE={shadow}: the file's content is not a valid setting" in said
    assert "SECRETHASH" not in said and "daemon:*" not in said and "Traceback" not in said


def test_outbox_with_a_bad_database_url_is_a_config_error_without_traceback(tmp_path: Path) -> None:
    done = run_cli(["outbox"], base_env(tmp_path, POSTROOM_DATABASE_URL="nosuch://app:pw-xyz@db/x"), timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 78 and "POSTROOM_DATABASE_URL: expected a database URL" in said
    assert "pw-xyz" not in said and "Traceback" not in said


def test_outbox_with_the_database_down_says_so_without_traceback(tmp_path: Path) -> None:
    url = "postgresql://app:pw-xyz@127.0.0.1:1/shop"  # nothing listens on port 1
    done = run_cli(["outbox"], base_env(tmp_path, POSTROOM_DATABASE_URL=url), timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and said.startswith("store: ") and "Connection refused" in said
    assert "pw-xyz" not in said and "Traceback" not in said


def test_settings_errors_are_config_errors_without_the_value() -> None:
    for given in ({"http": "root:x:0:0"}, {"log_level": "LOUD-hunter2"}, {"lease_seconds": "hunter2"}):
        with pytest.raises(ConfigError) as raised:
            Settings(**given)
        assert "hunter2" not in str(raised.value) and "root:x" not in str(raised.value)
    assert Settings(http=":9325", log_level="debug").log_level == "DEBUG"
    assert Settings(database_url="postgresql+psycopg://u@h/db").database_url == "postgresql+psycopg://u@h/db"


# -- headers ------------------------------------------------------------------------------

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
    headers: {%s}
"""


def job_project(tmp_path: Path, headers: str, rows: list[dict[str, str]] | None = None) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "statement.j2").write_text(
        "{% block subject %}Invoice{% endblock %}{% block text %}Hi{% endblock %}\n"
    )
    (tmp_path / "customers.json").write_text(json.dumps(rows or [{"email": "bob@example.test", "tag": "a"}]))
    (tmp_path / "postroom.yaml").write_text(JOB % headers)
    return tmp_path / "postroom.yaml"


def build(config: Path) -> int:
    loaded = load_config(Settings(config=config), environ={})
    runner = JobRunner(loaded.config, TemplateRenderer(loaded.templates_dir), None)
    return len(asyncio.run(runner.build("statements", key_prefix="t", now=NOW)).messages)


@pytest.mark.parametrize(
    "name",
    [
        "Return-Path",
        "Received",
        "DKIM-Signature",
        "ARC-Seal",
        "Authentication-Results",
        "Resent-From",
        "Resent-Message-ID",
        "Delivered-To",
        "X-Failed-Recipients",
    ],
)
def test_a_job_may_not_set_trace_signature_or_resent_headers(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="never by a sender"):
        build(job_project(tmp_path, f'{name}: "x"'))


@pytest.mark.parametrize("char", ["\\x0b", "\\x0c", "\\x1c", "\\t", "\\x7f", "\\x00"])
def test_control_characters_are_refused_in_header_values_at_load_time(tmp_path: Path, char: str) -> None:
    with pytest.raises(ConfigError, match="control character U\\+00"):
        build(job_project(tmp_path, f'X-Campaign: "a{char}b"'))


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\t", "\x7f"])
def test_control_characters_from_row_data_are_refused_at_render_time(tmp_path: Path, char: str) -> None:
    config = job_project(tmp_path, 'X-Tag: "{{ row.tag }}"', [{"email": "bob@example.test", "tag": f"a{char}b"}])
    with pytest.raises(MessageRefused, match="header X-Tag: contains the control character"):
        build(config)


def test_ordinary_extra_headers_still_go_out(tmp_path: Path) -> None:
    assert build(job_project(tmp_path, 'X-Campaign: "spring", Precedence: bulk, X-Tag: "{{ row.tag }}"')) == 1


# -- templates ------------------------------------------------------------------------------


def test_a_template_symlinked_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.j2"
    outside.write_text("{% block text %}SECRET-OUTSIDE{% endblock %}")
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "footer.j2").symlink_to(outside)
    (folder / "include_symlink.j2").write_text(
        '{% block subject %}s{% endblock %}{% block text %}hi {% include "footer.j2" %}{% endblock %}'
    )
    (folder / "extends_symlink.j2").write_text('{% extends "footer.j2" %}{% block subject %}s{% endblock %}')
    renderer = TemplateRenderer(folder)

    for name in ("include_symlink", "extends_symlink", "footer"):
        with pytest.raises(TemplateError, match="leads out of the templates folder") as raised:
            renderer.render(name, {})
        assert "SECRET-OUTSIDE" not in str(raised.value)

    (folder / "inside.j2").write_text("{% block text %}inside{% endblock %}")
    (folder / "alias.j2").symlink_to(folder / "inside.j2")  # a link within the folder is fine
    (folder / "ok.j2").write_text(
        '{% block subject %}s{% endblock %}{% block text %}{% include "alias.j2" %}{% endblock %}'
    )
    assert renderer.render("ok", {}).text.strip() == "inside"


# -- a MIME nest --------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode() for i in range(depth)
    )
    closing = b"".join(f"\r\n--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nhello" + closing


def test_a_1000_deep_mime_nest_is_read_as_headers_with_a_clear_warning() -> None:
    raw = nested(1000)
    with capture_logs() as logs:
        msg = ParsedMessage.from_bytes(raw, key="k1")
        subject, sender, body, attachments = msg.subject, msg.nested_header("From"), msg.body_text(), msg.attachments()
        parts = message_parts(raw)

    assert msg.mime_too_deep and subject == "deep" and sender == ["a@example.test"]
    assert body == "" and attachments == [] and parts.text is None
    assert {e["event"] for e in logs} == {"message MIME nesting too deep: read as headers only"}
    assert "RecursionError" not in repr(logs)


def test_an_ordinary_nest_is_read_whole_and_depth_is_counted_linearly() -> None:
    msg = ParsedMessage.from_bytes(nested(5), key="k2")
    assert not msg.mime_too_deep and msg.body_text().strip() == "hello"
    assert mime_depth(nested(5)) == 5 and mime_depth(nested(1000)) == MAX_MIME_DEPTH + 1


# -- a full disk -----------------------------------------------------------------------------


async def test_a_full_disk_makes_the_store_not_ready_until_a_write_succeeds(small_disk: Path) -> None:
    store = Store.open(f"sqlite:///{small_disk / 'postroom.db'}", owner="test")
    try:
        monitor = StoreMonitor(store.engine, store.calls, sqlite_path=small_disk / "postroom.db")
        assert (await monitor.check()).ok
        filler = fill(small_disk)
        state = await monitor.check()
        assert not state.ok and state.why is not None and "is full" in state.why
        filler.unlink()
        assert (await monitor.check()).ok
    finally:
        store.close()


def test_readyz_says_not_ready_while_the_state_disk_is_full(small_disk: Path, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(tmp_path, POSTROOM_STATE_DIR=str(small_disk), POSTROOM_HTTP=f"127.0.0.1:{port}")
    env["PYTHONPATH"] = f"{ROOT / 'service'}:{ROOT}"
    daemon = Daemon(env, log=tmp_path / "daemon.log")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        wait_ready(port, daemon, timeout=60)
        filler = fill(small_disk)
        problem = wait_until(lambda: httpx.get(url, timeout=5).json().get("store_problem"), 20, "not ready")
        assert "is full" in problem and httpx.get(url, timeout=5).status_code == 503
        filler.unlink()
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 20, "ready again")
    finally:
        assert daemon.terminate() == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
