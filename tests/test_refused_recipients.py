"""Recipients refused at RCPT by the lab's real Postfix (550 5.1.1 for an unknown user), and
what becomes of the message, its job run and the address; held mail as a state of its own.
The clock is the test's; Postfix, Dovecot and the store are real."""

from __future__ import annotations

from datetime import timedelta

import pytest
from postroom.errors import TokenRevoked
from postroom.mail.templates import MAX_UNDEFINED_TOLD, TemplateRenderer
from postroom.outgoing.refusals import MAX_REPLY, mailbox_refusal, suppressing
from postroom.outgoing.sender import HOLD, DrainStats, decide
from postroom.outgoing.shown import held_next_step, message_state, run_outcome
from postroom.outgoing.smtp import SendResult
from postroom.store.outbox import NewMessage, OutboxItem, Settlement

from tests.support.clock import Clock
from tests.support.fake_smtp import lab_smtp, make_raw, message_ids
from tests.support.sending import ALICE, BOB, CAROL, POLICY, SENDER_START, arrived, sender_for

NOBODY, NOONE = "nobody@example.test", "no-one@example.test"


@pytest.fixture
def clock() -> Clock:
    return Clock(SENDER_START)


def enqueue(store, clock: Clock, recipients: list[str], *, run_id: int | None = None, origin: str = "digest") -> str:
    message_id, raw = make_raw(ALICE, recipients, "digest")
    message = NewMessage(
        dedup_key=f"k:{message_id}",
        message_id=message_id,
        account="alice",
        envelope_from=ALICE,
        recipients=recipients,
        raw=raw,
        origin=origin,
    )
    store.outbox.enqueue([message], now=clock(), run_id=run_id)
    return message_id


def sender(store, clock, lab, refused: list[tuple[str, str, int]] | None = None, results=None):
    return sender_for(
        store,
        clock,
        lab_smtp(lab, "alice"),
        suppress=suppressing(store.bounces),
        on_refused=(lambda *args: refused.append(args)) if refused is not None else None,
        on_result=(lambda kind, item: results.append(kind)) if results is not None else None,
    )


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown", "5.1.1"),
        ("550-5.1.1 The email account that you tried to reach does not exist", "5.1.1"),
        ("553 5.1.3 bad recipient address syntax", "5.1.3"),
        ("550 5.1.10 null MX", "5.1.10"),
        ("550 5.7.1 message refused by policy", None),  # about the message, not the address
        ("550 5.1.8 sender's domain unknown", None),  # about our sender
        ("550 user unknown", None),  # no enhanced status: nothing to go on
        ("450 4.1.1 try later", None),
        ("550 5.1.1x", None),
        ("550 " + "5" * 100_000, None),  # huge: read from the start only
        ("", None),
    ],
)
def test_which_refusals_say_the_mailbox_is_wrong(reply, status):
    assert mailbox_refusal(reply) == status


def test_a_huge_refusal_is_kept_bounded():
    """A server may answer RCPT with a reply of any length: the row keeps the first
    MAX_REPLY characters (the start says what went wrong)."""
    item = OutboxItem(
        id=1,
        dedup_key="k",
        message_id="<m@x>",
        account="alice",
        envelope_from=ALICE,
        recipients=[BOB, CAROL],
        raw=b"",
        status="sending",
        attempts=0,
        next_attempt_at=SENDER_START,
        last_error=None,
        delivered=[],
        refused={},
        origin="digest",
        created_at=SENDER_START,
    )
    huge = "550 5.1.1 " + "x" * 1_000_000
    outcome = decide(item, SendResult([BOB], {}, {CAROL: huge}), now=SENDER_START, policy=POLICY)
    assert outcome.kind == "sent" and outcome.refused == {CAROL: huge[:MAX_REPLY]}
    dead = decide(item, SendResult([], {}, {BOB: huge, CAROL: huge}), now=SENDER_START, policy=POLICY)
    assert dead.kind == "dead" and len(dead.error or "") < 3 * MAX_REPLY


def test_many_undefined_names_are_told_bounded(tmp_path):
    names = " ".join(f"{{{{ n{i} }}}}" for i in range(5000))
    (tmp_path / "many.j2").write_text(
        f"{{% block subject %}}s{{% endblock %}}{{% block text %}}{names}{{% endblock %}}\n"
    )
    told = TemplateRenderer(tmp_path).undefined_names("many", {"today"})
    assert len(told) == MAX_UNDEFINED_TOLD and all(p.lineno == 1 for p in told)


# -- against the lab's Postfix -----------------------------------------------------------------


async def test_every_recipient_refused_is_a_dead_letter_with_the_reply_and_suppressed(store, clock, clean_lab):
    """All recipients refused with 550 5.1.1 at RCPT: nobody got it, nobody will — dead (not
    sent), with Postfix's reply, counted, listed with the dead letters, retryable and
    discardable; both addresses suppressed as a hard bounce would be."""
    refused: list[tuple[str, str, int]] = []
    results: list[str] = []
    enqueue(store, clock, [NOBODY, NOONE])
    assert await sender(store, clock, clean_lab, refused, results).drain_once() == DrainStats(dead=1)
    (row,) = store.outbox.list(statuses=["dead"])
    assert row.delivered == [] and sorted(row.refused) == [NOONE, NOBODY]
    assert all(reply.startswith("550 5.1.1") for reply in row.refused.values())
    assert (row.last_error or "").startswith("every recipient refused: no-one@example.test: 550 5.1.1")
    assert results == ["dead"] and refused == [("alice", "digest", 2)]
    assert store.outbox.with_refused() == []  # not "sent with refusals": it went nowhere
    suppressed = {s.address: s for s in store.bounces.suppressions("alice")}
    assert set(suppressed) == {NOBODY, NOONE}
    assert suppressed[NOBODY].status == "5.1.1" and suppressed[NOBODY].outbox_id == row.id
    assert "User unknown" in suppressed[NOBODY].diagnostic or "unknown" in suppressed[NOBODY].diagnostic.lower()

    assert store.outbox.retry(row.id, now=clock())  # retryable: both recipients owed again
    (again,) = store.outbox.list(statuses=["queued"])
    assert sorted(again.recipients) == [NOONE, NOBODY] and again.refused == {}
    assert await sender(store, clock, clean_lab).drain_once() == DrainStats(dead=1)
    assert store.outbox.discard(row.id, now=clock())
    assert store.outbox.counts() == {"discarded": 1}


async def test_some_recipients_refused_is_sent_with_the_refusals_kept(store, clock, clean_lab):
    """bob and carol get it; nobody's 550 is kept on the row, counted per account and job,
    listed among the messages sent with refusals, and nobody is suppressed."""
    refused: list[tuple[str, str, int]] = []
    [message_id] = [enqueue(store, clock, [BOB, NOBODY, CAROL])]
    assert await sender(store, clock, clean_lab, refused).drain_once() == DrainStats(sent=1)
    (row,) = store.outbox.with_refused()
    assert row.status == "sent" and row.delivered == [BOB, CAROL]
    assert list(row.refused) == [NOBODY] and row.refused[NOBODY].startswith("550 5.1.1")
    assert refused == [("alice", "digest", 1)]
    assert store.outbox.refused_count() == 1
    assert [s.address for s in store.bounces.suppressions("alice")] == [NOBODY]
    assert message_ids(await arrived(clean_lab, "bob", 1)) == [message_id]


async def test_a_run_whose_messages_all_died_is_failed_and_counts_them(store, clock, clean_lab):
    """The run queued its messages (`done` when it ended); once Postfix refused every
    recipient of each, the run reads failed, with its messages counted."""
    runs = store.runs
    failed_run = runs.start_run("digest", fire_time=None, trigger="manual", now=clock())
    enqueue(store, clock, [NOBODY], run_id=failed_run)
    enqueue(store, clock, [NOONE], run_id=failed_run)
    runs.finish_run(failed_run, now=clock(), status="done", messages=2)
    assert runs.last_runs()["digest"].state == "done"  # queued, not tried yet
    assert await sender(store, clock, clean_lab).drain_once() == DrainStats(dead=2)
    last = runs.last_runs()["digest"]
    assert (last.status, last.state) == ("done", "failed")
    assert (last.outcome.dead, last.outcome.refused, last.outcome.sent) == (2, 2, 0)
    assert run_outcome(last) == "failed (dead 2, refused 2)"
    assert "every message died" in (last.why or "") and "postroom outbox --dead" in (last.why or "")

    mixed = runs.start_run("report", fire_time=None, trigger="manual", now=clock())
    enqueue(store, clock, [BOB, NOBODY], run_id=mixed, origin="report")
    enqueue(store, clock, [NOONE], run_id=mixed, origin="report")
    runs.finish_run(mixed, now=clock(), status="done", messages=2)
    assert await sender(store, clock, clean_lab).drain_once() == DrainStats(sent=1, dead=1)
    report = runs.last_runs()["report"]
    assert report.state == "done" and run_outcome(report) == "done (sent 1, dead 1, refused 2)"
    assert [r.state for r in runs.recent_runs()] == ["done", "failed"]
    await arrived(clean_lab, "bob", 1)


async def test_held_mail_is_held_not_queued(store, clock, clean_lab):
    """A message put off for an account's sign-in is `held` in the store (counts, listings,
    the words shown), due again like queued ones, and brought forward by a sign-in."""
    enqueue(store, clock, [BOB])
    (row,) = store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=1))
    revoked = TokenRevoked("alice: no refresh token yet", account="alice")
    store.outbox.settle_many([Settlement("held", row, clock(), error=str(revoked), retry_at=clock() + HOLD)])
    assert store.outbox.counts() == {"held": 1}
    (held,) = store.outbox.list(statuses=["held"])
    assert message_state(held) == "held" and held.attempts == 0
    assert held_next_step("alice") == "held until alice signs in again (`postroom auth login alice`)"
    assert store.outbox.next_due() == clock() + HOLD
    assert store.outbox.bring_forward(["alice"], now=clock(), within=HOLD) == 1
    assert await sender(store, clock, clean_lab).drain_once() == DrainStats(sent=1)
    await arrived(clean_lab, "bob", 1)
