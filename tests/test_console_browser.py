"""The console in a real headless Chromium (selenium) against the real daemon (`postroom run`)
and the mail lab. One daemon and one browser for the module; the tests run in file order and
build on each other's traffic (run now → dead letter → retry → overview counts).

The daemon's accounts: alice (the lab: sends, watches INBOX with a webhook rule whose receiver
answers 410), mallory (sends through a fake SMTP server that answers 554 until fixed) and
dave (the lab's IMAP with a wrong password: a failing account).

POSTROOM_SCREENSHOTS=1 keeps a PNG of each page in docs/screenshots/ (else in a temp dir).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.lab import MailLab
from tests.support.daemon import ACCOUNT_CONFIG, Daemon, DataServer, free_port, mail, postroom_env, wait_until
from tests.support.fake_smtp import FaultyHandler, fake_smtp

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token-0123456789"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PROBES = ("/healthz", "/readyz", "/metrics")
PAGES = ("/", "/jobs", "/jobs/hello/preview", "/outbox", "/mailboxes", "/webhooks", "/nope", "/preview")

# alice from the shared ACCOUNT_CONFIG (lab SMTP + IMAP), then the rest.
CONFIG = (
    ACCOUNT_CONFIG
    + """\
  mallory:
    address: mallory@example.test
    smtp: {{host: 127.0.0.1, port: {fake}, security: none, timeout: 10}}
  dave:
    address: dave@example.test
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls,
           username: dave@example.test, password: "not-daves-password"}}
jobs:
  hello:
    schedule: {{cron: "0 3 1 1 *"}}
    account: alice
    template: console_hello
    to: [bob@example.test]
  bounce:
    schedule: {{cron: "0 3 1 1 *"}}
    account: mallory
    template: console_hello
    to: [carol@example.test]
rules:
  - name: alerts
    account: alice
    match: {{subject: {{contains: "[alert]"}}}}
    actions: [{{webhook: {{url: "{hook}/hook", secret: "${{HOOK_SECRET}}"}}}}]
  - name: dave-inbox
    account: dave
    match: {{}}
    actions: [{{flag: "\\\\Seen"}}]
"""
)

TEMPLATE = """\
{% block subject %}Hello from the console{% endblock %}
{% block text %}Sent by "run now".{% endblock %}
"""


class FakeSmtpThread:
    """tests.support.fake_smtp's server on its own loop in a thread (the tests here are sync)."""

    def __init__(self, handler: FaultyHandler):
        self.handler = handler
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("fake SMTP server did not start")

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with fake_smtp(self.handler) as port:
            self.port = port
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("POSTROOM_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def smtp_fault() -> Iterator[FakeSmtpThread]:
    server = FakeSmtpThread(FaultyHandler(data_reply="554 5.7.1 message refused by policy"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[DataServer]:
    server = DataServer(status=410)  # a receiver that is gone: the delivery dies at once
    yield server
    server.close()


@pytest.fixture(scope="module")
def console(
    lab: MailLab, smtp_fault: FakeSmtpThread, hooks: DataServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The daemon with its console on 127.0.0.1:<free port>; yields the base URL."""
    lab.start_dovecot()
    lab.start_postfix()
    lab.drop_queue()
    lab.clear_all()
    work = tmp_path_factory.mktemp("console")
    (work / "templates").mkdir()
    (work / "templates" / "console_hello.j2").write_text(TEMPLATE)
    (work / "postroom.yaml").write_text(
        CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap, fake=smtp_fault.port, hook=hooks.url)
    )
    port = free_port()
    env = postroom_env(
        lab,
        work,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_CONSOLE_TOKEN=TOKEN,
        POSTROOM_TEMPLATES=str(work / "templates"),
    )
    daemon = Daemon(env, log=work / "daemon.log")
    try:
        daemon.wait_log("postroom running", timeout=40)
        yield f"http://127.0.0.1:{port}"
    finally:
        assert daemon.terminate() == 0, (work / "daemon.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(console: str) -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            "the browser tests need Debian's chromium and chromium-driver: run `bash deploy/setup.sh`", pytrace=False
        )
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)  # --no-sandbox: the tests run as root
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def open_page(driver: webdriver.Chrome, url: str, screenshots: Path, name: str) -> None:
    """Load a page (signed in), keep its screenshot, and fail on any console message."""
    driver.get(url)
    driver.save_screenshot(str(screenshots / f"{name}.png"))
    errors = console_errors(driver)
    assert errors == [], f"{url} logged to the console: {errors}"


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


@contextmanager
def signed_in_client(base: str) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client signed in through the login form, and the session's CSRF token."""
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/login", data={"token": TOKEN}).status_code == 303
        match = re.search(r'name="csrf" value="(\w+)"', client.get("/").text)
        assert match is not None
        yield client, match.group(1)


# -- security against the daemon -------------------------------------------------------------


def test_without_the_token_every_page_but_the_probes_is_refused(console):
    with httpx.Client(base_url=console, timeout=10) as client:
        for path in PROBES:
            assert client.get(path).status_code in (200, 503), path  # /readyz: dave's watcher fails
        for path in PAGES:
            answer = client.get(path, headers={"Accept": "text/html"})
            assert answer.status_code == 401, path
            assert 'name="token"' in answer.text  # the login form
        assert client.get("/static/console.css").status_code == 200  # assets hold no data: public
        for path in ("/outbox/1/retry", "/jobs/hello/run", "/webhooks/retry"):
            assert client.post(path, data={"id": "x"}).status_code == 401
        wrong = client.get("/", headers={"Authorization": "Bearer wrong-token-wrong-token"})
        assert wrong.status_code == 401


def test_an_action_without_its_csrf_token_is_refused(console, smtp_fault):
    with signed_in_client(console) as (client, csrf):
        refused = client.post("/jobs/bounce/run", data={})
        assert refused.status_code == 403
        assert client.post("/jobs/bounce/run", data={"csrf": "0" * len(csrf)}).status_code == 403
        assert client.get("/outbox").text.count('data-id="') == 0  # nothing was run
        assert smtp_fault.handler.sessions == 0


# -- pages in the browser ------------------------------------------------------------------------


def test_sign_in_through_the_login_form(console, browser, screenshots):
    browser.get(console + "/")
    browser.save_screenshot(str(screenshots / "login.png"))
    browser.get_log("browser")  # the 401 that carries the form is logged by Chromium: not a page error
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-count]"), 10, "the overview")
    assert console_errors(browser) == []


def test_run_now_shows_a_dry_run_then_delivers_the_jobs_mail(console, browser, screenshots, lab):
    open_page(browser, console + "/jobs", screenshots, "jobs")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-job="hello"]')
    assert "cron 0 3 1 1 *" in row.text and "never" in row.text
    row.find_element(By.LINK_TEXT, "Run now…").click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-total]"), 20, "the dry run")
    browser.save_screenshot(str(screenshots / "job-preview.png"))
    assert console_errors(browser) == []
    assert "bob@example.test" in browser.page_source and "Hello from the console" in browser.page_source
    assert lab.fetch_all("bob") == []  # the preview sent nothing
    browser.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait_until(lambda: "queued for sending" in browser.page_source, 20, "the run's note")
    (raw,) = lab.wait_for_messages("bob", 1)
    assert b"Hello from the console" in raw
    wait_until(lambda: "done" in text_of(browser, 'tr[data-job="hello"]'), 20, "the run in the table")


def test_a_dead_letter_shows_the_servers_reply_and_is_retried_from_the_page(console, browser, screenshots, smtp_fault):
    # The job whose server refuses (a 554 at DATA): one dead letter.
    with signed_in_client(console) as (client, csrf):
        assert client.post("/jobs/bounce/run", data={"csrf": csrf}).status_code == 303

    def dead_row() -> Any:
        browser.get(console + "/outbox")
        return browser.find_elements(By.CSS_SELECTOR, "#dead ~ div tr[data-id]")

    (row,) = wait_until(dead_row, 30, "the dead letter")
    assert "554 5.7.1 message refused by policy" in row.text and "carol@example.test" in row.text
    browser.save_screenshot(str(screenshots / "outbox.png"))
    assert console_errors(browser) == []

    smtp_fault.handler.data_reply = None  # the server is fixed
    row.find_element(By.XPATH, ".//button[text()='Retry']").click()
    wait_until(lambda: "is queued again" in browser.page_source, 20, "the retry's note")
    wait_until(lambda: smtp_fault.handler.received, 30, "the retried message at the server")
    (got,) = smtp_fault.handler.received
    assert got.rcpt_tos == ["carol@example.test"] and b"Hello from the console" in got.content
    wait_until(lambda: not dead_row(), 20, "no dead letter left")


def test_the_overview_counts_what_needs_a_person(console, browser, screenshots, lab, hooks, smtp_fault):
    # Traffic: a mail the alerts rule turns into a webhook the receiver refuses (410: dead),
    # and a second dead letter (the fake server refuses again) that stays dead.
    lab.deliver("alice", mail("ops@example.test", "alice@example.test", "[alert] disk full").as_bytes())
    wait_until(lambda: hooks.posts, 30, "the webhook attempt")
    smtp_fault.handler.data_reply = "554 5.7.1 refused again"
    with signed_in_client(console) as (client, csrf):
        assert client.post("/jobs/bounce/run", data={"csrf": csrf}).status_code == 303

    def counts() -> dict[str, str]:
        browser.get(console + "/")
        return {
            e.get_attribute("data-count"): e.find_element(By.TAG_NAME, "b").text
            for e in browser.find_elements(By.CSS_SELECTOR, "[data-count]")
        }

    expected = {"dead-letters": "1", "set-aside": "0", "dead-webhooks": "1", "failing-accounts": "1"}
    wait_until(lambda: counts() == expected, 30, f"the overview's counts to be {expected}")
    assert "dave" in text_of(browser, ".problems")
    assert "this one" in browser.page_source  # the one replica (SQLite) and what it holds
    assert "alice/INBOX" in browser.page_source and "dave/INBOX" in browser.page_source
    browser.save_screenshot(str(screenshots / "overview.png"))
    assert console_errors(browser) == []


def test_a_failing_account_shows_its_error_on_the_mailboxes_page(console, browser, screenshots):
    open_page(browser, console + "/mailboxes", screenshots, "mailboxes")
    dave = text_of(browser, 'tr[data-watch="dave/INBOX"]')
    assert "failing" in dave
    assert re.search(r"auth|login|credentials", dave, re.IGNORECASE), dave
    assert "not-daves-password" not in browser.page_source  # never a secret
    alice = text_of(browser, 'tr[data-watch="alice/INBOX"]')
    assert "IDLE" in alice and "UID" in alice


def test_the_webhooks_page_shows_the_receivers_answer_and_retries(console, browser, screenshots, hooks):
    open_page(browser, console + "/webhooks", screenshots, "webhooks")
    dead = text_of(browser, "#dead ~ div tbody")
    assert "alerts" in dead and "410" in dead and hooks.url in dead
    before = len(hooks.posts)
    hooks.status = 204
    browser.find_element(By.XPATH, "//button[text()='Retry']").click()
    wait_until(lambda: "is queued again" in browser.page_source, 20, "the retry's note")
    wait_until(lambda: len(hooks.posts) > before, 30, "the webhook delivered again")


def test_pages_refresh_themselves_without_console_errors(console, browser):
    browser.get(console + "/")
    browser.get_log("browser")
    stamp = text_of(browser, "[data-updated]")
    wait_until(lambda: text_of(browser, "[data-updated]") != stamp, 20, "a refresh of the page's live part")
    assert browser.find_elements(By.CSS_SELECTOR, "[data-count]")
    assert console_errors(browser) == []


def test_the_template_preview_is_mounted_in_the_console_behind_its_sign_in(console, browser, screenshots):
    browser.get(console + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "nav a[href='/preview']")  # linked from every page
    browser.get(console + "/preview/?job=hello")
    wait_until(lambda: browser.find_elements(By.ID, "subject"), 20, "the preview's email")
    browser.save_screenshot(str(screenshots / "console-preview.png"))
    assert text_of(browser, "#subject") == "Hello from the console"
    assert "Sent by" in str(browser.execute_script("return document.getElementById('text-part').innerText"))
    assert console_errors(browser) == []


def test_pages_read_on_a_phone(console, browser, screenshots):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, console + "/", screenshots, "overview-phone")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, f"the page is {width}px wide on a 390px screen"
    finally:
        browser.set_window_size(1280, 1000)
