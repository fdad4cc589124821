"""Forward loops between watched accounts, end to end: alice's rule forwards everything to
carol, carol's forwards everything back, both watched by one real `postroom run` against the
lab. A forward is a new message (the loop marker of the one before ends up inside it, and
`Received` starts again), so only a marker carried across forwards can end the ring."""

from __future__ import annotations

import time

import pytest

from tests.support.daemon import (
    ACCOUNT_CONFIG,
    Daemon,
    free_port,
    iter_json_lines,
    mail,
    postroom_env,
    wait_ready,
    wait_until,
)

# alice as every end-to-end test has her, and carol the same way; each forwards all to the other
CAROL_ACCOUNT = ACCOUNT_CONFIG.removeprefix("accounts:\n").replace("alice", "carol").replace("ALICE", "CAROL")
RING_CONFIG = (
    ACCOUNT_CONFIG
    + CAROL_ACCOUNT
    + """\
rules:
  - name: alice-to-carol
    account: alice
    match: {{}}
    actions: [{{forward: {{to: [carol@example.test], as: {alice_as}}}}}]
  - name: carol-to-alice
    account: carol
    match: {{}}
    actions: [{{forward: {{to: [alice@example.test], as: {carol_as}}}}}]
"""
)


def skipped_as_loop(log) -> list[str]:
    return [
        line["reason"]
        for line in iter_json_lines(log)
        if line.get("event") == "action skipped" and "alice@example.test" in line.get("reason", "")
    ]


@pytest.mark.parametrize("alice_as, carol_as", [("attachment", "attachment"), ("attachment", "inline")])
def test_two_accounts_forwarding_to_each_other_stop_after_one_round(tmp_path, clean_lab, alice_as, carol_as):
    lab = clean_lab
    (tmp_path / "postroom.yaml").write_text(
        RING_CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap, alice_as=alice_as, carol_as=carol_as)
    )
    port = free_port()
    daemon = Daemon(postroom_env(lab, tmp_path, POSTROOM_HTTP=f"127.0.0.1:{port}"), log=tmp_path / "daemon.log")
    try:
        wait_ready(port, daemon)
        lab.deliver("alice", mail("dora@elsewhere.test", "alice@example.test", "ring").as_bytes())
        # alice → carol (Fwd), carol → alice (Fwd: Fwd), and there alice's rule must stop
        [reason] = wait_until(lambda: skipped_as_loop(daemon.log), 40, "the loop to be refused")
        assert "already carries X-Postroom-Loop" in reason
        time.sleep(3)  # anything still in flight would arrive by now
        alice, carol = lab.fetch_all("alice"), lab.fetch_all("carol")
        assert (len(alice), len(carol)) == (2, 1)
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log.read_text()[-3000:]
