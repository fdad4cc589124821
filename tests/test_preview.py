"""The template preview without a browser: what build_preview makes of the demo config (design.md's
reference config with deploy/demo/seed.py's shop), the watch signature, and the page's gate and
headers through httpx's ASGI transport. The browser tests are in test_preview_browser.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from postroom.config import Config, Settings, load_config
from postroom.console.preview import FRAME_CSP, files_signature, preview_app
from postroom.console.preview_render import build_preview

from tests.support.daemon import DataServer, run_cli

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)
SECRETS = {"ALICE_PASSWORD": "x", "BOB_PASSWORD": "x", "CAROL_PASSWORD": "x", "HOOK_SECRET": "whsec_ZGVtbw=="}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """The demo config, its shop database and rates server, a copy of the templates (tests edit them)."""
    data = DataServer()
    (tmp_path / "postroom.yaml").write_text(
        (ROOT / "deploy" / "demo" / "postroom.yaml").read_text().replace("http://127.0.0.1:9400", data.url)
    )
    spec = importlib.util.spec_from_file_location("demo_seed", ROOT / "deploy" / "demo" / "seed.py")
    assert spec is not None and spec.loader is not None
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    seed.seed(tmp_path / "shop.db")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    yield tmp_path
    data.close()


def _settings(work: Path) -> Settings:
    return Settings(config=work / "postroom.yaml", templates=work / "templates", state_dir=work / "state")


def _loader(work: Path):
    settings = _settings(work)

    def load() -> Config:
        return load_config(settings, environ=SECRETS).config

    return load


async def _preview(work: Path, job: str | None, row: int | None):
    return await build_preview(_loader(work), work / "templates", job, row, now=NOW)


async def test_a_merge_row_is_rendered_with_that_rows_data(work):
    shown = await _preview(work, "statements", 1)
    assert shown.problem is None and shown.row == 1 and shown.row_count == 3
    assert [r.label for r in shown.rows][1] == "Carol Client · carol@example.test · -15.0"
    email = shown.email
    assert email is not None
    assert email.subject == "Your statement for 2027-03-01"
    assert email.recipients == ["carol@example.test"]
    assert "Dear Carol Client," in (email.text or "") and "Carol Client" in (email.html or "")
    assert ("To", "carol@example.test") in email.headers
    assert email.size == len(email.raw.replace("\n", "\r\n").encode()) and email.raw_cut == 0
    assert not (work / "state").exists()  # nothing written: no store


async def test_defaults_are_the_first_job_and_row_0(work):
    shown = await _preview(work, None, None)
    assert shown.jobs == ["orders-report", "statements"] and shown.job == "orders-report"
    assert shown.row is None and shown.rows == [] and shown.email is not None  # not a merge
    (attachment,) = shown.email.attachments
    assert (attachment.filename, attachment.content_type) == ("orders.csv", "text/csv")
    assert attachment.size == len("id,customer,total\r\n") + sum(
        len(line) + 2
        for line in [
            "1001,Ada Lovelace,129.9",
            "1002,Grace Hopper,48.0",
            "1003,Edsger Dijkstra,310.25",
            "1004,Barbara Liskov,77.1",
            "1005,Ken Thompson,15.99",
        ]
    )
    first = await _preview(work, "statements", None)
    assert first.row == 0 and first.email is not None and first.email.recipients == ["bob@example.test"]


async def test_a_template_error_names_template_line_and_shows_the_lines_around_it(work):
    path = work / "templates" / "statement.j2"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "<p>Dear" in line)
    lines[at] = "<p>Dear {{ row.name }</p>"
    path.write_text("\n".join(lines) + "\n")
    shown = await _preview(work, "statements", 1)
    problem = shown.problem
    assert problem is not None and shown.email is None
    assert (problem.kind, problem.template, problem.lineno) == ("template", "statement.j2", at + 1)
    assert "unexpected '}'" in problem.message and "statement.j2" not in problem.message
    assert (at + 1, "<p>Dear {{ row.name }</p>") in problem.excerpt
    assert [n for n, _ in problem.excerpt] == list(range(at - 2, at + 5))
    assert shown.rows  # the row picker stays usable


async def test_a_runtime_error_names_the_row_data_it_needs(work):
    path = work / "templates" / "statement.j2"
    path.write_text(path.read_text().replace("{{ row.name }},", "{{ row.nickname }},"))
    shown = await _preview(work, "statements", 2)
    assert shown.problem is not None and shown.problem.kind == "template"
    assert shown.problem.template == "statement.j2" and shown.problem.lineno is not None
    assert "nickname" in shown.problem.message


async def test_choices_that_do_not_exist_say_so(work):
    missing_row = await _preview(work, "statements", 7)
    assert missing_row.problem is not None and missing_row.problem.kind == "choice"
    assert "rows 0 to 2; there is no row 7" in missing_row.problem.message
    missing_job = await _preview(work, "nope", None)
    assert missing_job.problem is not None and "no job named 'nope'" in missing_job.problem.message


async def test_a_broken_config_is_shown_not_raised(work):
    config = work / "postroom.yaml"
    config.write_text(config.read_text().replace('cron: "0 6 1 * *"', 'cron: "0 6 32 * *"'))
    shown = await _preview(work, "statements", 0)
    assert shown.problem is not None and shown.problem.kind == "config"
    assert "jobs.statements.schedule.cron" in shown.problem.message


async def test_a_data_error_is_shown(work):
    (work / "shop.db").unlink()
    shown = await _preview(work, "statements", 0)
    assert shown.problem is not None and shown.problem.kind == "data"
    assert "customers" in shown.problem.message


def test_the_signature_changes_when_a_watched_file_is_saved_added_or_removed(work):
    watched = [work / "templates", work / "postroom.yaml"]
    first = files_signature(watched)
    assert files_signature(watched) == first
    statement = work / "templates" / "statement.j2"
    stat = statement.stat()
    os.utime(statement, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    saved = files_signature(watched)
    assert saved != first
    (work / "templates" / "new.j2").write_text("{% block subject %}x{% endblock %}")
    added = files_signature(watched)
    assert added != saved
    (work / "templates" / "new.j2").unlink()
    assert files_signature(watched) == saved
    config = work / "postroom.yaml"
    config.write_text(config.read_text() + "\n")
    assert files_signature(watched) != saved


@pytest.fixture
async def client(work: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    for name, value in SECRETS.items():  # the app loads the config as `postroom preview` does
        monkeypatch.setenv(name, value)
    app = preview_app(_settings(work), token="s3cret-token", port=4242)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:4242") as client:
        yield client


async def test_the_token_sets_a_strict_cookie_and_leaves_the_url(client):
    assert (await client.get("/?job=statements")).status_code == 401
    assert (await client.get("/?job=statements&token=wrong")).status_code == 401
    answer = await client.get("/?job=statements&row=1&token=s3cret-token")
    assert answer.status_code == 303 and answer.headers["location"] == "/?job=statements&row=1"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("postroom_preview_4242=s3cret-token;")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = await client.get("/?job=statements&row=1")
    assert page.status_code == 200 and "Dear Carol Client," in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"


async def test_other_host_names_are_refused(client):
    client.cookies.set("postroom_preview_4242", "s3cret-token")
    assert (await client.get("/", headers={"host": "rebound.example:4242"})).status_code == 400


async def test_the_html_part_is_served_sandboxed_and_assets_only_by_name(client):
    client.cookies.set("postroom_preview_4242", "s3cret-token")
    page = await client.get("/?job=statements&row=1")
    key = page.text.split('src="frame/', 1)[1].split('"', 1)[0]
    frame = await client.get(f"/frame/{key}")
    assert frame.status_code == 200 and "Statement for Carol Client" in frame.text
    assert frame.headers["content-security-policy"] == FRAME_CSP
    assert (await client.get("/frame/unknown")).status_code == 404
    assert (await client.get("/assets/preview.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/assets/preview.py")).status_code == 404


def test_the_command_refuses_a_job_that_is_not_there(work):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(
        SECRETS,
        POSTROOM_CONFIG=str(work / "postroom.yaml"),
        POSTROOM_TEMPLATES=str(work / "templates"),
        POSTROOM_STATE_DIR=str(work / "state"),
    )
    result = run_cli(["preview", "nope"], env)
    assert result.returncode == 1
    assert "no job named 'nope'; jobs: orders-report, statements" in result.stderr
    assert "http://" not in result.stdout  # it never listened
