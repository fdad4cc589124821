"""OutboxSender: the outbox drained into the lab's real Postfix (and aiosmtpd for faults).

Time is a clock the test moves; it is never patched."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from postroom.errors import AuthError, ServerBusy, ServerConnectError, TokenRevoked
from postroom.outgoing.sender import HOLD, DrainStats, backoff, decide
from postroom.outgoing.smtp import SendResult
from postroom.store.outbox import NewMessage, OutboxItem, Settlement
from structlog.testing import capture_logs

from tests.support.clock import Clock
from tests.support.fake_smtp import FaultyHandler, fake_smtp, lab_smtp, make_raw, message_ids, plain_smtp
from tests.support.sending import ALICE, BOB, CAROL, POLICY, SENDER_START, arrived, sender_for


@pytest.fixture
def clock() -> Clock:
    return Clock(SENDER_START)


def enqueue(
    store, clock: Clock, recipients: list[str], *, n: int = 1, account: str = "alice", subject: str = "report"
) -> list[str]:
    """n messages from alice; returns their Message-IDs."""
    messages, ids = [], []
    for i in range(n):
        message_id, raw = make_raw(ALICE, recipients, f"{subject} {i}")
        ids.append(message_id)
        messages.append(
            NewMessage(
                dedup_key=f"{subject}:{i}:{message_id}",
                message_id=message_id,
                account=account,
                envelope_from=ALICE,
                recipients=recipients,
                raw=raw,
            )
        )
    store.outbox.enqueue(messages, now=clock())
    return ids


def only_row(store) -> OutboxItem:
    rows = store.outbox.list(statuses=["queued", "sending", "sent", "dead"])
    assert len(rows) == 1
    return rows[0]


async def until(condition, tries: int = 500) -> None:
    """Poll condition (a hang guard, not a timing assertion: callers assert the outcome)."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)


# -- pure ------------------------------------------------------------------------------------


def test_backoff_doubles_caps_and_jitters():
    mid = lambda: 0.5  # noqa: E731  (no jitter at the midpoint)
    assert backoff(0, POLICY, rand=mid) == timedelta(seconds=30)
    assert backoff(1, POLICY, rand=mid) == timedelta(seconds=60)
    assert backoff(3, POLICY, rand=mid) == timedelta(seconds=240)
    assert backoff(7, POLICY, rand=mid) == timedelta(hours=1)  # 30 * 128 s > 1 h
    assert backoff(10_000, POLICY, rand=mid) == timedelta(hours=1)  # no overflow
    assert backoff(0, POLICY, rand=lambda: 0.0) == timedelta(seconds=27)
    assert backoff(0, POLICY, rand=lambda: 1.0) == timedelta(seconds=33)
    assert backoff(2, POLICY, jitter=0.0, rand=lambda: 1.0) == timedelta(seconds=120)


def _item(attempts: int = 0, created: datetime | None = None) -> OutboxItem:
    created = created or datetime(2030, 1, 7, tzinfo=UTC)
    return OutboxItem(
        id=1,
        dedup_key="k",
        message_id="<m@x>",
        account="alice",
        envelope_from=ALICE,
        recipients=[BOB, CAROL],
        raw=b"",
        status="sending",
        attempts=attempts,
        next_attempt_at=created,
        last_error=None,
        delivered=[],
        refused={},
        origin="",
        created_at=created,
    )


def test_decide_maps_results_and_errors():
    now = datetime(2030, 1, 7, 1, tzinfo=UTC)
    mid = lambda: 0.5  # noqa: E731
    sent = decide(_item(), SendResult([BOB], {}, {CAROL: "550 5.1.1 no"}), now=now, policy=POLICY)
    assert (sent.kind, sent.delivered, sent.refused) == ("sent", [BOB], {CAROL: "550 5.1.1 no"})
    partial = decide(_item(attempts=2), SendResult([BOB], {CAROL: "451 later"}, {}), now=now, policy=POLICY, rand=mid)
    assert (partial.kind, partial.remaining, partial.delivered) == ("deferred", [CAROL], [BOB])
    assert partial.retry_at == now + timedelta(seconds=120)
    busy = decide(_item(), ServerBusy("421 closing", code=421), now=now, policy=POLICY)
    assert busy.kind == "deferred" and busy.remaining is None and "421 closing" in (busy.error or "")
    dead = decide(_item(), AuthError("535 5.7.8 bad credentials"), now=now, policy=POLICY)
    assert dead.kind == "dead" and "535" in (dead.error or "")


def test_decide_gives_up_after_max_attempts_or_max_age():
    now = datetime(2030, 1, 7, 1, tzinfo=UTC)
    down = ServerConnectError("connection refused")
    assert decide(_item(attempts=3), down, now=now, policy=POLICY).kind == "deferred"
    last = decide(_item(attempts=4), down, now=now, policy=POLICY)
    assert last.kind == "dead" and "5 attempts" in (last.error or "") and "refused" in (last.error or "")
    old = decide(_item(created=now - timedelta(days=2)), down, now=now, policy=POLICY)
    assert old.kind == "dead" and "connection refused" in (old.error or "")
    partly = decide(_item(attempts=4), SendResult([BOB], {CAROL: "451 later"}, {}), now=now, policy=POLICY)
    assert (partly.kind, partly.delivered) == ("dead", [BOB])


def test_an_account_stopped_for_a_token_holds_its_mail_untried(store, clock):
    """A revoked refresh token is the account's trouble, not the message's: held (its own state,
    due again after HOLD), the try not counted, never dead however old; `bring_forward` makes it
    due now once the account signs in again."""
    now = datetime(2030, 1, 7, 1, tzinfo=UTC)
    revoked = TokenRevoked("alice: sign in again with `postroom auth login alice`", account="alice")
    for item in (_item(attempts=4), _item(created=now - timedelta(days=30))):
        held = decide(item, revoked, now=now, policy=POLICY)
        assert (held.kind, held.retry_at) == ("held", now + HOLD) and "auth login alice" in (held.error or "")

    enqueue(store, clock, [BOB])
    (row,) = store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=5))
    store.outbox.settle_many([Settlement("held", row, clock(), error="stopped", retry_at=clock() + HOLD)])
    assert store.outbox.list(statuses=["queued"]) == [] and store.outbox.counts() == {"held": 1}
    (kept,) = store.outbox.list(statuses=["held"])
    assert (kept.attempts, kept.next_attempt_at, kept.last_error) == (0, clock() + HOLD, "stopped")
    assert store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=5)) == []
    assert store.outbox.bring_forward(["bob"], now=clock(), within=HOLD) == 0  # another account's
    assert store.outbox.bring_forward(["alice"], now=clock(), within=HOLD) == 1
    assert [r.id for r in store.outbox.claim_due(now=clock(), limit=10, lease=timedelta(minutes=5))] == [row.id]


async def test_unknown_account_is_a_dead_letter(store, clock):
    enqueue(store, clock, [BOB], account="ghost")
    stats = await sender_for(store, clock, plain_smtp(1)).drain_once()
    assert stats == DrainStats(sent=0, deferred=0, dead=1)
    assert "ghost" in (only_row(store).last_error or "")


# -- against the lab's Postfix ---------------------------------------------------------------


async def test_sends_the_stored_message_through_postfix(store, clock, clean_lab):
    lab = clean_lab
    [message_id] = enqueue(store, clock, [BOB])
    seen: list[tuple[str, int]] = []
    sender = sender_for(store, clock, lab_smtp(lab, "alice"), on_result=lambda kind, item: seen.append((kind, item.id)))
    assert await sender.drain_once() == DrainStats(sent=1, deferred=0, dead=0)
    row = only_row(store)
    assert (row.status, row.delivered, row.sent_at) == ("sent", [BOB], clock.now)
    assert seen == [("sent", row.id)]
    assert message_ids(await arrived(lab, "bob", 1)) == [message_id]
    assert await sender.drain_once() == DrainStats()  # nothing left to claim


async def test_bad_password_is_a_dead_letter_with_the_reply(store, clock, lab):
    enqueue(store, clock, [BOB], n=3)
    sender = sender_for(store, clock, lab_smtp(lab, "alice", password="not-her-password"))
    assert await sender.drain_once() == DrainStats(sent=0, deferred=0, dead=3)
    rows = store.outbox.list(statuses=["dead"])
    assert len(rows) == 3
    assert all("535" in (r.last_error or "") and "not-her-password" not in (r.last_error or "") for r in rows)


async def test_unknown_recipient_is_recorded_and_the_rest_delivered(store, clock, clean_lab):
    lab = clean_lab
    nobody = "nobody@example.test"
    [message_id] = enqueue(store, clock, [BOB, nobody, CAROL])
    assert await sender_for(store, clock, lab_smtp(lab, "alice")).drain_once() == DrainStats(sent=1)
    row = only_row(store)
    assert row.status == "sent" and row.delivered == [BOB, CAROL]
    assert list(row.refused) == [nobody] and row.refused[nobody].startswith("550")
    assert message_ids(await arrived(lab, "bob", 1)) == [message_id]
    assert message_ids(await arrived(lab, "carol", 1)) == [message_id]


async def test_postfix_down_defers_everything_and_loses_nothing(store, clock, clean_lab):
    lab = clean_lab
    ids = enqueue(store, clock, [BOB], n=20)
    sender = sender_for(store, clock, lab_smtp(lab, "alice"))
    lab.stop_postfix()
    try:
        assert await sender.drain_once() == DrainStats(deferred=20)
        assert store.outbox.counts() == {"queued": 20}
        assert await sender.drain_once() == DrainStats()  # backing off: nothing due yet
    finally:
        lab.start_postfix()
    clock.advance(POLICY.retry_max * 2)
    assert await sender.drain_once() == DrainStats(sent=20)
    got = message_ids(await arrived(lab, "bob", 20))
    assert sorted(got) == sorted(ids)  # every one, exactly once
    assert store.outbox.counts() == {"sent": 20}


async def test_one_drain_reuses_at_most_connections_connections(store, clock, clean_lab):
    lab = clean_lab
    log = lab.layout.log_dir / "postfix.log"
    before = _connects(log)
    ids = enqueue(store, clock, [BOB], n=50)
    sender = sender_for(store, clock, lab_smtp(lab, "alice", connections=2))
    assert await sender.drain_once() == DrainStats(sent=50)
    assert sorted(message_ids(await arrived(lab, "bob", 50))) == sorted(ids)
    opened = await _wait_for(lambda: _connects(log) - before)
    assert 1 <= opened <= 2
    assert sender.connections_opened == opened


async def test_prewarmed_connections_are_the_ones_the_drain_uses(store, clock, clean_lab):
    # prewarm() opens the account's connections before the rows exist (as `postroom send`
    # does while rendering); the drain sends over them and opens none of its own.
    lab = clean_lab
    log = lab.layout.log_dir / "postfix.log"
    before = _connects(log)
    sender = sender_for(store, clock, lab_smtp(lab, "alice", connections=3))
    await sender.prewarm("alice")
    ids = enqueue(store, clock, [BOB], n=2)
    assert await sender.drain_once() == DrainStats(sent=2)
    await sender.close_idle()
    assert sorted(message_ids(await arrived(lab, "bob", 2))) == sorted(ids)
    for _ in range(100):  # Postfix logs through postlogd: let the lines land
        if (opened := _connects(log) - before) >= 3:
            break
        await asyncio.sleep(0.02)
    assert opened == 3  # two used by the drain, one closed unused; nothing reconnected
    assert sender.connections_opened == 3
    await sender.prewarm("nobody")  # an unknown account: nothing to open
    await sender.close_idle()
    assert sender.connections_opened == 3


def _connects(log) -> int:
    return len(re.findall(r"smtpd\[\d+\]: connect from", log.read_text()))


async def _wait_for(count, tries: int = 100) -> int:
    """Postfix logs through postlogd: give the lines a moment to land."""
    for _ in range(tries):
        if (n := count()) > 0:
            return n
        await asyncio.sleep(0.02)
    return count()


# -- faults from aiosmtpd ----------------------------------------------------------------------


async def test_temporary_rcpt_refusal_is_deferred_then_sent_to_that_one_only(store, clock):
    handler = FaultyHandler(rcpt_faults={CAROL: ["451 4.3.0 mailbox busy, try later"]})
    [message_id] = enqueue(store, clock, [BOB, CAROL])
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none"))
        assert await sender.drain_once() == DrainStats(deferred=1)
        row = only_row(store)
        assert (row.status, row.recipients, row.delivered) == ("queued", [CAROL], [BOB])
        assert "451 4.3.0" in (row.last_error or "")
        assert await sender.drain_once() == DrainStats()  # not due yet
        clock.advance(timedelta(minutes=5))
        assert await sender.drain_once() == DrainStats(sent=1)
    row = only_row(store)
    assert (row.status, row.delivered, row.attempts) == ("sent", [BOB, CAROL], 2)
    assert [r.rcpt_tos for r in handler.received] == [[BOB], [CAROL]]
    assert message_ids([r.content for r in handler.received]) == [message_id, message_id]


async def test_data_554_is_a_dead_letter_with_the_reply(store, clock):
    handler = FaultyHandler(data_reply="554 5.6.0 message content rejected")
    enqueue(store, clock, [BOB])
    async with fake_smtp(handler) as port:
        stats = await sender_for(store, clock, plain_smtp(port, security="none")).drain_once()
    assert stats == DrainStats(dead=1)
    row = only_row(store)
    assert row.status == "dead" and "554 5.6.0 message content rejected" in (row.last_error or "")


async def test_cancelled_drain_hands_unsent_rows_back(store, clock):
    handler = FaultyHandler(data_gate=asyncio.Event())  # DATA never answers until the end
    enqueue(store, clock, [BOB], n=5)
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none", connections=1))
        drain = asyncio.create_task(sender.drain_once())
        await asyncio.wait_for(handler.data_started.wait(), 10)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
    assert store.outbox.counts() == {"queued": 5}
    assert all(r.next_attempt_at <= clock.now for r in store.outbox.list(statuses=["queued"]))


async def test_stop_finishes_what_is_on_the_wire_and_hands_back_the_rest(store, clock):
    """SIGTERM mid-batch: no new row is started; the one in flight is settled; the rest go
    back to the queue, due at once, for the next start."""
    handler = FaultyHandler(data_gate=asyncio.Event())
    enqueue(store, clock, [BOB], n=20)
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none", connections=1))
        stop = asyncio.Event()
        loop = asyncio.create_task(sender.run(stop))
        await asyncio.wait_for(handler.data_started.wait(), 10)
        stop.set()
        handler.data_gate.set()  # the message in flight is accepted after the stop
        await asyncio.wait_for(loop, 10)
    assert len(handler.received) == 1
    assert store.outbox.counts() == {"sent": 1, "queued": 19}
    assert all(r.next_attempt_at <= clock.now for r in store.outbox.list(statuses=["queued"]))


async def test_run_sends_at_once_when_woken_and_stops(store, clock):
    handler = FaultyHandler()
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none"))
        stop = asyncio.Event()
        loop = asyncio.create_task(sender.run(stop))
        await asyncio.sleep(0.05)  # let it find the outbox empty and go idle
        message_id = await enqueue_wake_and_stop(store, clock, sender, handler, stop, loop)
    assert message_ids([r.content for r in handler.received]) == [message_id]
    assert store.outbox.counts() == {"sent": 1}


async def test_run_survives_a_failing_drain(store, clock):
    handler = FaultyHandler()
    with store.engine.begin() as conn:  # the store breaks: every claim fails
        conn.exec_driver_sql("ALTER TABLE outbox RENAME TO outbox_away")
    async with fake_smtp(handler) as port:
        sender = sender_for(store, clock, plain_smtp(port, security="none"))
        stop = asyncio.Event()
        with capture_logs() as logs:
            loop = asyncio.create_task(sender.run(stop))
            await until(lambda: any(e["event"].startswith("outbox drain failed") for e in logs))
        assert not loop.done()
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE outbox_away RENAME TO outbox")
        message_id = await enqueue_wake_and_stop(store, clock, sender, handler, stop, loop)
    assert message_ids([r.content for r in handler.received]) == [message_id]


async def enqueue_wake_and_stop(store, clock, sender, handler, stop, loop) -> str:
    """One new message, wake() the running sender, wait for it to arrive, stop the loop."""
    [message_id] = enqueue(store, clock, [BOB])
    sender.wake()
    await until(lambda: handler.received)
    stop.set()
    await asyncio.wait_for(loop, 10)
    return message_id
