"""`postroom preview` in a real headless Chromium: a real `postroom preview` process on the demo
config (design.md's reference config, deploy/demo/postroom.yaml, with deploy/demo/seed.py's shop
database), its templates copied so the tests can edit them as a template author would."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.chromium import chromium, console_errors, screenshot_path
from tests.support.daemon import HOOK_SECRET, POSTROOM, ROOT, DataServer, wait_until

WAIT = 15  # seconds a page may take to show a change on this shared machine (usually well under 1)
STATEMENT = "statement.j2"


def _seed(db: Path) -> None:
    """deploy/demo/seed.py, as demo.sh runs it (three customers; the second is Carol Client)."""
    spec = importlib.util.spec_from_file_location("demo_seed", ROOT / "deploy" / "demo" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.seed(db)


@dataclass
class Preview:
    url: str  # as printed, with the token
    base: str  # http://127.0.0.1:PORT
    templates: Path
    state: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def preview(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Preview]:
    work = tmp_path_factory.mktemp("preview")
    data = DataServer()
    (work / "postroom.yaml").write_text(
        (ROOT / "deploy" / "demo" / "postroom.yaml").read_text().replace("http://127.0.0.1:9400", data.url)
    )
    _seed(work / "shop.db")
    shutil.copytree(ROOT / "templates", work / "templates")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(
        {
            "ALICE_PASSWORD": "unused",
            "BOB_PASSWORD": "unused",
            "CAROL_PASSWORD": "unused",
            "HOOK_SECRET": HOOK_SECRET,
            "POSTROOM_CONFIG": str(work / "postroom.yaml"),
            "POSTROOM_TEMPLATES": str(work / "templates"),
            "POSTROOM_STATE_DIR": str(work / "state"),
            "PYTHONPATH": str(ROOT),
        }
    )
    out = work / "preview.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*POSTROOM, "preview", "statements"], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=work
        )
    try:

        def printed() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"postroom preview exited {proc.returncode}:\n{out.read_text()}")
            found = re.search(r"http://127\.0\.0\.1:\d+/\S*", out.read_text())
            return found.group(0) if found else None

        url = wait_until(printed, 30, "the preview URL")
        parts = urlsplit(url)
        yield Preview(
            url=url,
            base=f"{parts.scheme}://{parts.netloc}",
            templates=work / "templates",
            state=work / "state",
            proc=proc,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        data.close()
    assert proc.returncode == 0, out.read_text()


@pytest.fixture(scope="module")
def driver(preview: Preview) -> Iterator[webdriver.Chrome]:
    with chromium() as browser:
        browser.get(preview.url)  # sets the session cookie, as a person opening the printed URL
        yield browser


@pytest.fixture
def statement(preview: Preview) -> Iterator[Path]:
    """statement.j2 in the preview's templates; whatever a test writes there is undone after."""
    path = preview.templates / STATEMENT
    original = path.read_text()
    yield path
    path.write_text(original)


def _open_row(driver: webdriver.Chrome, preview: Preview, row: int) -> None:
    driver.get(f"{preview.base}/?job=statements")
    Select(driver.find_element(By.NAME, "row")).select_by_value(str(row))  # submits the choice
    _wait(driver).until(lambda d: f"row={row}" in d.current_url and d.find_elements(By.ID, "subject"))


def _wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    # The page swaps its content when a rendering is pushed: an element found just before may
    # be gone when read, which is a reason to look again, not a failure.
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def _text_part(driver: webdriver.Chrome) -> str:
    """The text part as shown, read in one step (no element to go stale in between)."""
    text = driver.execute_script("const e = document.getElementById('text-part'); return e ? e.innerText : ''")
    return str(text)


def _frame_text(driver: webdriver.Chrome, showing: str) -> str:
    """The html part's text as its frame shows it, once it shows ``showing`` (a frame swapped
    in with a pushed rendering loads after the page has it)."""

    def read(d: webdriver.Chrome) -> str | None:
        d.switch_to.frame(d.find_element(By.ID, "html-frame"))
        try:
            text = str(d.find_element(By.TAG_NAME, "body").text)
        finally:
            d.switch_to.default_content()
        return text if showing in text else None

    found: str = _wait(driver).until(read)
    return found


def test_second_row_shows_that_customers_email(driver, preview, tmp_path):
    _open_row(driver, preview, 1)
    assert driver.find_element(By.ID, "subject").text.startswith("Your statement for ")
    text = _text_part(driver)
    assert "Dear Carol Client," in text and "You are in credit by 15.00" in text
    assert "Bob Builder" not in text
    summary = driver.find_element(By.CSS_SELECTOR, ".summary").text
    assert "carol@example.test" in summary and "bytes" in summary
    assert "Dear Carol Client," in _frame_text(driver, "Statement for Carol Client")  # the html part
    raw = driver.find_element(By.ID, "raw").get_attribute("textContent")
    assert "To: carol@example.test" in raw and "Content-Type: multipart/alternative" in raw
    driver.save_screenshot(str(screenshot_path("preview.png", tmp_path)))
    assert console_errors(driver) == []


def test_attachments_are_listed_with_their_sizes(driver, preview):
    driver.get(f"{preview.base}/?job=orders-report")
    rows = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#attachments tbody tr"))
    assert rows[0].text.startswith("orders.csv text/csv")
    assert re.search(r"\d+ bytes$", rows[0].text)
    assert console_errors(driver) == []


def test_saving_the_template_changes_the_open_page_without_a_reload(driver, preview, statement):
    _open_row(driver, preview, 1)
    driver.execute_script("window.sameDocument = true")  # gone if the page were loaded again
    statement.write_text(
        statement.read_text().replace("Questions? Just reply to this email.", "Questions? Call us on 555-0100.")
    )
    _wait(driver).until(lambda d: "Call us on 555-0100" in _text_part(d))
    assert driver.execute_script("return window.sameDocument") is True
    assert "Carol Client" in _text_part(driver)  # still the row that was picked
    assert "Carol Client" in _frame_text(driver, "Call us on 555-0100")
    assert console_errors(driver) == []


def test_a_template_syntax_error_shows_template_line_and_message(driver, preview, statement, tmp_path):
    _open_row(driver, preview, 1)
    lines = statement.read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if "<p>Dear {{ row.name }},</p>" in line)
    lines[broken] = "<p>Dear {{ row.name }</p>"
    statement.write_text("\n".join(lines) + "\n")
    _wait(driver).until(lambda d: d.find_elements(By.ID, "problem"))
    assert driver.find_element(By.ID, "problem-template").text == STATEMENT
    assert driver.find_element(By.ID, "problem-line").text == str(broken + 1)
    assert "unexpected '}'" in driver.find_element(By.ID, "problem-message").text
    assert "Template error" in driver.find_element(By.ID, "problem").text
    assert driver.find_elements(By.ID, "html-frame") == []  # in place of the email
    bad = driver.find_element(By.CSS_SELECTOR, ".excerpt .bad").text
    assert "{{ row.name }</p>" in bad
    driver.save_screenshot(str(screenshot_path("preview-error.png", tmp_path)))
    # Fixed and saved: the email is back.
    lines[broken] = "<p>Dear {{ row.name }},</p>"
    statement.write_text("\n".join(lines) + "\n")
    _wait(driver).until(lambda d: "Dear Carol Client," in _text_part(d))
    assert console_errors(driver) == []


class _Counter(ThreadingHTTPServer):
    daemon_threads = True
    hits: int = 0


@pytest.fixture
def tracker() -> Iterator[_Counter]:
    """A server a remote image would be fetched from: it counts requests."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    server = _Counter(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_html_part_runs_no_script_and_loads_nothing_remote(driver, preview, statement, tracker):
    image = f"http://127.0.0.1:{tracker.server_address[1]}/open.gif"
    statement.write_text(
        statement.read_text().replace(
            "<p>Dear {{ row.name }},</p>",
            "<p id='hello'>Dear {{ row.name }},</p><script>document.getElementById('hello').textContent = 'SCRIPT RAN';"
            "try { parent.document.title = 'SCRIPT RAN'; } catch (e) {}</script>"
            f"<img src='{image}' alt='tracker'>",
        )
    )
    _open_row(driver, preview, 1)
    body = _frame_text(driver, "Statement for Carol Client")
    assert "Dear Carol Client," in body and "SCRIPT RAN" not in body
    assert "SCRIPT RAN" not in driver.title
    assert tracker.hits == 0
    frame = driver.find_element(By.ID, "html-frame")
    assert frame.get_attribute("sandbox") == ""  # sandboxed, and allow-scripts not among its tokens
    # The frame's own response forbids scripts and remote loads even when opened directly.
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    answer = httpx.get(preview.base + "/" + frame.get_attribute("src").split("/", 3)[3], cookies=cookies, timeout=10)
    csp = answer.headers["content-security-policy"]
    assert answer.status_code == 200 and "<script>" in answer.text
    assert csp.startswith("sandbox;") and "default-src 'none'" in csp and "script-src" not in csp
    assert "img-src data:" in csp


def test_without_the_token_the_page_is_refused(driver, preview):
    for path in ("/", "/?job=statements&row=1", "/events?job=statements", "/frame/x", "/assets/preview.js"):
        assert httpx.get(preview.base + path, timeout=10).status_code == 401, path
    wrong = httpx.get(preview.base + "/?token=not-the-token", timeout=10)
    assert wrong.status_code == 401
    # With the token: the cookie is set and the token leaves the address bar.
    right = httpx.get(preview.url, timeout=10)
    assert right.status_code == 303 and "token" not in right.headers["location"]
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    # A browser without the cookie (a fresh session) is refused too.
    with chromium() as stranger:
        stranger.get(preview.base + "/?job=statements")
        assert "401" in stranger.find_element(By.TAG_NAME, "body").text
        assert stranger.find_elements(By.ID, "pane") == []


def test_nothing_is_written(preview):
    assert not preview.state.exists()
