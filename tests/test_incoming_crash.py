"""Crash and restart under load: `postroom run` takes in 1,000 messages (flag, webhook, move;
a forward for every tenth), is killed with SIGKILL mid-work, started again, and has Dovecot
restarted under it while new mail arrives. In the end every message is handled once: each is
in Archive exactly once and flagged, each has its webhook and its forward, and repeats exist
only for deliveries that were in flight at the kill (bounded by the queues' batch sizes)."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import time
from collections import Counter, defaultdict
from email.utils import formatdate
from pathlib import Path

from tests.lab import MailLab
from tests.support.daemon import Daemon, DataServer, postroom_env

SEEDED = 1000
LATE = 20  # delivered while Dovecot restarts under the second daemon
KILL_AFTER = 100  # webhooks received before the SIGKILL
WEBHOOK_IN_FLIGHT = 20  # WebhookQueue's default batch: claimed together, so at most these repeat
OUTBOX_BATCH = 10  # set below: at most this many forwards can be in flight at the kill
TIMEOUT = 90.0

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, start_from: all,
           username: alice@example.test, password: "${{ALICE_PASSWORD}}"}}
outbox: {{batch_size: {outbox_batch}, retry_base: 1s}}
rules:
  - name: every-message
    account: alice
    folder: INBOX
    match: {{}}
    actions:
      - {{flag: "\\\\Flagged"}}
      - {{webhook: {{url: "{hook}/hook"}}}}
      - {{move: Archive}}
  - name: forward-some
    account: alice
    folder: INBOX
    match: {{subject: {{contains: "[fwd]"}}}}
    actions: [{{forward: {{to: [carol@example.test]}}}}]
"""


def message(n: int, kind: str) -> bytes:
    subject = f"{kind} {n}" + (" [fwd]" if n % 10 == 0 else "")
    return (
        f"From: Sender {n} <sender{n}@example.test>\r\nTo: alice@example.test\r\n"
        f"Subject: {subject}\r\nDate: {formatdate()}\r\nMessage-ID: <{kind}-{n}@example.test>\r\n"
        f"\r\nbody of {kind} {n}\r\n"
    ).encode()


def wait_until(predicate, what: str, timeout: float = TIMEOUT, daemon: Daemon | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.proc.returncode}:\n{daemon.log.read_text()[-3000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = daemon.log.read_text(errors="replace")[-3000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def flush_postfix(lab: MailLab) -> None:
    subprocess.run(["postqueue", "-c", str(lab.layout.postfix_etc), "-f"], check=True, capture_output=True)
    time.sleep(0.5)


def folder_counts(lab: MailLab, user: str, *folders: str) -> dict[str, int]:
    with lab.imap_client(user) as client:
        return {f: int(client.folder_status(f, [b"MESSAGES"])[b"MESSAGES"]) for f in folders}


def archive_state(lab: MailLab) -> tuple[list[str], list[int]]:
    """Message-IDs in Archive (with repeats) and the UIDs there that are not \\Flagged."""
    with lab.imap_client("alice") as client:
        client.select_folder("Archive", readonly=True)
        fetched = client.fetch(client.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        unflagged = client.search(["UNFLAGGED"])
    ids = [b" ".join(v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split()[1:]).decode() for v in fetched.values()]
    return ids, unflagged


def forwarded_originals(lab: MailLab) -> Counter[str]:
    """How many forwards carol holds per original Message-ID (read from the attached message)."""
    found: Counter[str] = Counter()
    for raw in lab.fetch_all("carol"):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        inner = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"]
        assert inner, f"a forward without the original attached: {msg['Subject']}"
        found[inner[0].get_payload()[0]["Message-ID"]] += 1
    return found


def test_kill9_and_dovecot_restart_lose_and_repeat_nothing(tmp_path: Path, clean_lab: MailLab):
    lab = clean_lab
    hooks = DataServer()  # records only complete POSTs: one cut by the kill is no delivery
    seeded = [message(n, "seeded") for n in range(SEEDED)]
    late = [message(n, "late") for n in range(LATE)]
    everything = {
        f"<{kind}-{n}@example.test>" for kind, count in (("seeded", SEEDED), ("late", LATE)) for n in range(count)
    }
    to_forward = {
        f"<{kind}-{n}@example.test>"
        for kind, count in (("seeded", SEEDED), ("late", LATE))
        for n in range(0, count, 10)
    }
    lab.seed_maildir("alice", "INBOX", seeded)
    (tmp_path / "postroom.yaml").write_text(
        CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap, hook=hooks.url, outbox_batch=OUTBOX_BATCH)
    )
    env = postroom_env(lab, tmp_path)
    log = tmp_path / "daemon.log"
    second: Daemon | None = None
    try:
        first = Daemon(env, log=log)
        wait_until(lambda: len(hooks.posts) >= KILL_AFTER, f"{KILL_AFTER} webhooks", daemon=first)
        first.kill9()
        killed_at = len(hooks.posts)

        second = Daemon(env, log=log)
        wait_until(lambda: len(hooks.posts) > killed_at, "the restarted daemon's first webhook", daemon=second)
        lab.stop_dovecot()  # under the running daemon: it must reconnect and carry on
        lab.start_dovecot()
        lab.deliver_many("alice", late)

        wait_until(
            lambda: folder_counts(lab, "alice", "INBOX", "Archive") == {"INBOX": 0, "Archive": len(everything)},
            "INBOX empty and every message in Archive",
            daemon=second,
        )
        wait_until(
            lambda: len({h["webhook-id"] for h, _ in hooks.posts}) >= len(everything),
            "a webhook for every message",
            daemon=second,
        )
        # Postfix deferred what it could not hand to Dovecot while it was down: retry it now
        wait_until(
            lambda: flush_postfix(lab) or folder_counts(lab, "carol", "INBOX")["INBOX"] >= len(to_forward),
            "a forward for every [fwd] message",
            daemon=second,
        )
        time.sleep(1.0)  # anything still on its way (a repeat) would show up now
        code = second.terminate()
        second = None
        assert code == 0, log.read_text()[-3000:]
    finally:
        if second is not None:
            second.kill9()
        hooks.close()

    # IMAP actions: each message moved exactly once (no second copy) and flagged
    archived, unflagged = archive_state(lab)
    assert sorted(archived) == sorted(everything)
    assert unflagged == []

    # webhooks: one id per message, every message has one; repeats only from the kill
    ids_per_message: dict[str, set[str]] = defaultdict(set)
    messages_per_id: dict[str, set[str]] = defaultdict(set)
    for headers, body in hooks.posts:
        mid = json.loads(body)["message_id"]
        ids_per_message[mid].add(headers["webhook-id"])
        messages_per_id[headers["webhook-id"]].add(mid)
    assert set(ids_per_message) == everything
    assert all(len(ids) == 1 for ids in ids_per_message.values())
    assert all(len(mids) == 1 for mids in messages_per_id.values())
    repeats = len(hooks.posts) - len(messages_per_id)
    assert repeats <= WEBHOOK_IN_FLIGHT, f"{repeats} webhook deliveries repeated"

    # forwards: one per [fwd] message, none for the rest; repeats only from the kill
    forwards = forwarded_originals(lab)
    assert set(forwards) == to_forward
    assert sum(forwards.values()) - len(forwards) <= OUTBOX_BATCH
