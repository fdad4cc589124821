"""Standard Webhooks signing, and the delivery queue against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
from postroom.config.rules import RuleConfig
from postroom.errors import WebhookVerifyError
from postroom.incoming.rules import compile_rules
from postroom.store import Store
from postroom.store.ledger import LedgerStore
from postroom.webhooks.delivery import RetryPolicy, WebhookQueue, WebhookRequest
from postroom.webhooks.signing import sign, verify, webhook_id_for

from tests.support.clock import START, Clock
from tests.support.webhook_receiver import DrippingReceiver, Reply, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"postroom-test-key-0123456789").decode()


# -- signing ---------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_vector():
    # The example from the Standard Webhooks specification, recomputed here by hand too.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    assert sign(secret, msg_id, ts, body) == "v1," + expected.decode()
    assert sign(secret, msg_id, ts, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secret_without_whsec_prefix_is_refused_not_used_as_utf8():
    # As UTF-8 bytes it would sign what no Standard Webhooks verifier accepts.
    with pytest.raises(ValueError, match="whsec_"):
        sign("s\u00e9cret", "id", 5, b"{}")


def test_verify_accepts_genuine_and_refuses_tampered_or_stale():
    body = b'{"a": 1}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1000",
        "webhook-signature": "v1,bogus " + sign(SECRET, "msg_1", 1000, body),
    }
    verify(SECRET, headers, body, now=datetime.fromtimestamp(1010, UTC))
    with pytest.raises(WebhookVerifyError):
        verify(SECRET, headers, b'{"a": 2}')
    with pytest.raises(WebhookVerifyError):
        verify(SECRET, headers, body, now=datetime.fromtimestamp(5000, UTC))
    with pytest.raises(WebhookVerifyError):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, body)


# -- delivery --------------------------------------------------------------------------


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


def make_queue(store: Store, url: str, clock: Clock, **kw) -> WebhookQueue:
    rules = compile_rules(
        [
            RuleConfig.model_validate(
                {
                    "name": "hook",
                    "account": "bob",
                    "actions": [{"webhook": {"url": url + "/hook", "secret": SECRET, "timeout": 5}}],
                }
            )
        ]
    )
    ledger = LedgerStore(store.engine, owner="test", calls=store.calls)
    return WebhookQueue(ledger, spec_lookup=rules.action_config, clock=clock, **kw)


def request(base_url: str, n: int = 1) -> WebhookRequest:
    return WebhookRequest(
        action_key=f"bob/pop3/uidl{n}|hook|0",
        rule="hook",
        url=base_url + "/hook",
        payload={"account": "bob", "subject": f"alert {n}", "uid": None},
    )


async def test_delivery_is_signed_and_verifies_on_the_receiver(store, receiver):
    clock = Clock()
    queue = make_queue(store, receiver.url, clock)
    assert await queue.submit([request(receiver.url)]) == 1
    assert await queue.deliver_due() == 1
    [got] = receiver.received
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == webhook_id_for("bob/pop3/uidl1|hook|0")
    assert got.headers["webhook-timestamp"] == str(int(START.timestamp()))
    verify(SECRET, got.headers, got.body, now=START)
    # The spec's algorithm, computed here without postroom: HMAC-SHA256 keyed with the
    # base64-decoded part after whsec_, over "{id}.{timestamp}.{body}", sent as v1,<base64>.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == expected
    payload = json.loads(got.body)
    assert payload["type"] == "message.matched" and payload["subject"] == "alert 1"
    assert payload["timestamp"] == START.isoformat()
    assert queue.ledger.webhook_counts() == {"done": 1}


async def test_a_receiver_taking_ten_seconds_gets_the_webhook_once_by_default(store, receiver):
    # 10 s is what many receivers allow themselves; the old default deadline (10 s) cut such a
    # request at its end and posted it again (same webhook-id) though the receiver had it.
    rules = compile_rules(
        [RuleConfig.model_validate({"name": "hook", "account": "bob", "actions": [{"webhook": {"url": receiver.url}}]})]
    )
    queue = WebhookQueue(
        LedgerStore(store.engine, owner="test", calls=store.calls), spec_lookup=rules.action_config, clock=Clock()
    )
    receiver.script.append(Reply(204, delay=10.5))
    assert await queue.submit([request(receiver.url)]) == 1
    assert await queue.deliver_due() == 1
    assert len(receiver.received) == 1
    assert queue.ledger.webhook_counts() == {"done": 1}


async def test_enqueue_is_idempotent_on_the_action_key(store, receiver):
    queue = make_queue(store, receiver.url, Clock())
    assert await queue.submit([request(receiver.url, 1), request(receiver.url, 2)]) == 2
    assert await queue.submit([request(receiver.url, 1), request(receiver.url, 2), request(receiver.url, 1)]) == 0
    assert queue.ledger.webhook_counts() == {"queued": 2}


async def test_retry_after_500_resends_the_same_id_and_body(store, receiver):
    clock = Clock()
    queue = make_queue(store, receiver.url, clock, policy=RetryPolicy(base=timedelta(seconds=10)))
    receiver.answer(Reply(500, body=b"oops"))
    await queue.submit([request(receiver.url)])
    await queue.deliver_due()
    row = queue.ledger.webhook(webhook_id_for(request(receiver.url).action_key))
    assert row.status == "queued" and row.attempts == 1 and "HTTP 500: oops" in row.last_error
    assert row.next_attempt_at == START + timedelta(seconds=10)
    assert await queue.deliver_due() == 0  # not due yet
    clock.advance(seconds=10)
    assert await queue.deliver_due() == 1
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert second.headers["webhook-timestamp"] == str(int(START.timestamp()) + 10)  # sending time
    verify(SECRET, second.headers, second.body)
    assert queue.ledger.webhook_counts() == {"done": 1}


@pytest.mark.parametrize("retry_after", ["120", "http-date"])
async def test_retry_after_is_honoured(store, receiver, retry_after):
    clock = Clock()
    queue = make_queue(store, receiver.url, clock)
    value = (
        retry_after
        if retry_after != "http-date"
        else email.utils.format_datetime(START + timedelta(seconds=120), usegmt=True)
    )
    receiver.answer(Reply(429 if retry_after == "120" else 503, (("Retry-After", value),)))
    await queue.submit([request(receiver.url)])
    await queue.deliver_due()
    clock.advance(seconds=119)
    assert await queue.deliver_due() == 0
    clock.advance(seconds=1)
    assert await queue.deliver_due() == 1
    assert len(receiver.received) == 2
    assert queue.ledger.webhook_counts() == {"done": 1}


async def test_redirect_is_not_followed_and_counts_as_failure(store, receiver):
    queue = make_queue(store, receiver.url, Clock())
    receiver.answer(Reply(301, (("Location", receiver.url + "/elsewhere"),)))
    await queue.submit([request(receiver.url)])
    await queue.deliver_due()
    assert [r.path for r in receiver.received] == ["/hook"]
    row = queue.ledger.webhook(webhook_id_for(request(receiver.url).action_key))
    assert row.status == "queued" and "301" in row.last_error


async def test_gone_is_a_dead_letter_with_status_and_body(store, receiver):
    queue = make_queue(store, receiver.url, Clock())
    receiver.answer(Reply(410, body=b"endpoint retired"))
    await queue.submit([request(receiver.url)])
    await queue.deliver_due()
    row = queue.ledger.webhook(webhook_id_for(request(receiver.url).action_key))
    assert row.status == "dead" and row.last_error == "HTTP 410: endpoint retired"


async def test_gives_up_after_max_attempts(store, receiver):
    clock = Clock()
    queue = make_queue(store, receiver.url, clock, policy=RetryPolicy(max_attempts=3))
    receiver.answer(*[Reply(502)] * 3)
    await queue.submit([request(receiver.url)])
    for _ in range(3):
        await queue.deliver_due()
        clock.advance(hours=1)
    row = queue.ledger.webhook(webhook_id_for(request(receiver.url).action_key))
    assert row.status == "dead" and "after 3 attempts" in row.last_error
    assert len(receiver.received) == 3


async def test_connection_refused_is_retried(store):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    queue = make_queue(store, url, Clock())
    await queue.submit([request(url)])
    await queue.deliver_due()
    row = queue.ledger.webhook(webhook_id_for(request(url).action_key))
    assert row.status == "queued" and f"POST {url}/hook: All connection attempts failed" == row.last_error


async def test_restart_continues_pending_deliveries(store, receiver):
    clock = Clock()
    first = make_queue(store, receiver.url, clock)
    receiver.answer(Reply(503), Reply(503))
    await first.submit([request(receiver.url, 1), request(receiver.url, 2)])
    await first.deliver_due()
    assert first.ledger.webhook_counts() == {"queued": 2}
    # a new process: new queue, new store object over the same database
    clock.advance(minutes=5)
    again = Store.open(str(store.engine.url), owner="second")
    try:
        second = make_queue(again, receiver.url, clock)
        assert await second.deliver_due() == 2
        assert second.ledger.webhook_counts() == {"done": 2}
    finally:
        again.close()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == 4 and set(ids) == {
        webhook_id_for(request(receiver.url, 1).action_key),
        webhook_id_for(request(receiver.url, 2).action_key),
    }


async def test_run_delivers_until_stopped(store, receiver):
    queue = make_queue(store, receiver.url, datetime_now)
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(stop, idle=5))
    await queue.submit([request(receiver.url)])
    for _ in range(200):
        if queue.ledger.webhook_counts() == {"done": 1}:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert queue.ledger.webhook_counts() == {"done": 1}


def datetime_now() -> datetime:
    return datetime.now(UTC)


# -- hostile receivers -------------------------------------------------------------------


async def test_a_huge_retry_after_is_capped_and_retried_later(store, receiver):
    clock = Clock()
    queue = make_queue(store, receiver.url, clock)
    receiver.answer(Reply(429, (("Retry-After", "99999999999999999999"),)))
    await queue.submit([request(receiver.url)])
    assert await queue.deliver_due() == 1
    row = queue.ledger.webhook(webhook_id_for(request(receiver.url).action_key))
    assert row.status == "queued" and row.next_attempt_at == START + queue.policy.maximum
    clock.advance(hours=1)
    assert await queue.deliver_due() == 1
    assert queue.ledger.webhook_counts() == {"done": 1}


async def test_a_dripping_receiver_delays_only_its_own_deliveries(store, receiver):
    """One receiver answers a byte every 0.3 s (no single read ever times out): a delivery to
    another receiver queued meanwhile goes out at once, and the slow one ends at its 5 s
    deadline (a timeout, retried), not never."""
    with DrippingReceiver() as slow:
        queue = make_queue(store, receiver.url, datetime_now)
        stop = asyncio.Event()
        task = asyncio.create_task(queue.run(stop, idle=5))
        try:
            slow_request = WebhookRequest(
                action_key="bob/pop3/slow|hook|0", rule="hook", url=slow.url + "/hook", payload={"subject": "slow"}
            )
            await queue.submit([slow_request])
            await wait_for(lambda: slow.requests == 1, 5, "the slow receiver's request")
            started = asyncio.get_running_loop().time()
            await queue.submit([request(receiver.url)])
            await wait_for(lambda: len(receiver.received) == 1, 3, "the fast receiver's delivery")
            assert asyncio.get_running_loop().time() - started < 2
            slow_row = lambda: queue.ledger.webhook(webhook_id_for(slow_request.action_key))  # noqa: E731
            await wait_for(lambda: slow_row().attempts == 1, 8, "the slow delivery's deadline")
            assert slow_row().status == "queued" and "no complete answer within 5 s" in slow_row().last_error
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def wait_for(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
