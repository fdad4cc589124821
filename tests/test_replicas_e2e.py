"""Two `postroom run` replicas, one config, one real PostgreSQL, the lab's Dovecot and Postfix:
every scheduled fire is sent once and every new message gets its webhook once; when the
replica that watches the folder stops, the other one takes the folder over."""

from __future__ import annotations

import email
import email.policy
import json
import time
from collections import Counter

import pytest

from tests.support.daemon import HOOK_SECRET, Daemon, DataServer, free_port, mail, postroom_env, wait_ready, wait_until

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
jobs:
  tick:
    schedule: {{every: 2s}}
    account: alice
    template: tick
    to: [bob@example.test]
rules:
  - name: hooks
    account: alice
    match: {{subject: {{contains: "[hook]"}}}}
    actions: [{{webhook: {{url: "{hooks}/hook", secret: "${{HOOK_SECRET}}"}}}}]
"""
TEMPLATE = """{% block subject %}tick {{ fire_time }}{% endblock %}
{% block text %}fired at {{ fire_time }}{% endblock %}
"""


@pytest.fixture
def hooks():
    server = DataServer()
    yield server
    server.close()


def start(tmp_path, lab, pg_url: str, name: str) -> tuple[Daemon, int]:
    port = free_port()
    env = postroom_env(
        lab,
        tmp_path,
        HOOK_SECRET=HOOK_SECRET,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_DATABASE_URL=pg_url,
        POSTROOM_INSTANCE=name,
        POSTROOM_TEMPLATES=str(tmp_path / "templates"),
        POSTROOM_STATE_DIR=str(tmp_path / name),
    )
    daemon = Daemon(env, log=tmp_path / f"{name}.log")
    wait_ready(port, daemon)
    return daemon, port


def hook_ids(hooks: DataServer) -> Counter[str]:
    return Counter(headers["webhook-id"] for headers, _ in hooks.posts)


def deliver_hooks(lab, prefix: str, count: int) -> None:
    lab.deliver_many(
        "alice",
        [mail("carol@example.test", "alice@example.test", f"[hook] {prefix} {i}").as_bytes() for i in range(count)],
    )


def test_two_replicas_do_everything_once_and_hand_the_folder_over(tmp_path, clean_lab, pg_url, hooks):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "tick.j2").write_text(TEMPLATE)
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(smtp=clean_lab.ports.smtp, imap=clean_lab.ports.imap, hooks=hooks.url)
    )
    a, _ = start(tmp_path, clean_lab, pg_url, "replica-a")
    b = None
    try:
        b, _ = start(tmp_path, clean_lab, pg_url, "replica-b")
        b.wait_log("standing by: another replica watches this folder")

        deliver_hooks(clean_lab, "first", 10)
        wait_until(lambda: len(hooks.posts) >= 10, 30, "10 webhooks")
        ticks = clean_lab.wait_for_messages("bob", 3, timeout=30)  # fires of `every: 2s`, either replica's

        code = a.terminate()  # the replica holding the folder stops: the other takes it over
        assert code == 0, (tmp_path / "replica-a.log").read_text()[-3000:]
        b.wait_log("taking over the watch")
        deliver_hooks(clean_lab, "second", 5)
        wait_until(lambda: len(hooks.posts) >= 15, 30, "15 webhooks")
        time.sleep(2)  # time for any duplicate to show up
    finally:
        if b is not None:
            assert b.terminate() == 0, (tmp_path / "replica-b.log").read_text()[-3000:]
        if a.proc.poll() is None:
            a.terminate()

    ids = hook_ids(hooks)
    assert len(hooks.posts) == 15 and len(ids) == 15 and set(ids.values()) == {1}
    subjects = sorted(json.loads(body)["subject"] for _, body in hooks.posts)
    assert subjects == sorted([f"[hook] first {i}" for i in range(10)] + [f"[hook] second {i}" for i in range(5)])
    ticks = clean_lab.fetch_all("bob")
    fired = Counter(email.message_from_bytes(raw, policy=email.policy.default)["Subject"] for raw in ticks)
    assert len(fired) >= 3 and set(fired.values()) == {1}, fired  # each fire time sent once
