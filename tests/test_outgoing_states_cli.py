"""What `postroom send`, `outbox`, `jobs` and `suppressions` tell about refused recipients,
failed runs and held mail: the real command, the lab's real Postfix (550 5.1.1 at RCPT for
an unknown user), and an OAuth2 account nobody signed in yet (its mail is held)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.daemon import postroom_env, run_cli

CONFIG = Path(__file__).parent / "data" / "outgoing_states.yaml"
NOTE = "{% block subject %}A note for {{ today }}{% endblock %}{% block text %}Hello.{% endblock %}\n"


@pytest.fixture
def env(tmp_path: Path, clean_lab) -> dict[str, str]:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.j2").write_text(NOTE)
    (tmp_path / "postroom.yaml").write_text(CONFIG.read_text().format(smtp=clean_lab.ports.smtp))
    return postroom_env(
        clean_lab,
        tmp_path,
        POSTROOM_TEMPLATES=str(tmp_path / "templates"),
        POSTROOM_TOKEN_KEY=Fernet.generate_key().decode(),
    )


def test_refused_recipients_and_a_failed_run_are_told_by_every_command(env, clean_lab):
    partly = run_cli(["send", "partly"], env)
    assert partly.returncode == 0, partly.stdout + partly.stderr
    assert "partly: sent 1, deferred 0, dead 0 (of 1)" in partly.stdout
    assert "1 recipient refused by the server; see `postroom outbox` for the server's replies" in partly.stdout
    clean_lab.wait_for_messages("bob", 1)

    nowhere = run_cli(["send", "nowhere"], env)
    assert nowhere.returncode == 1, nowhere.stdout + nowhere.stderr
    # nobody's 5.1.1 suppressed the address like a hard bounce: left out of this run
    assert "1 suppressed recipient(s) left out" in nowhere.stdout
    assert "nowhere: sent 0, deferred 0, dead 1 (of 1)" in nowhere.stdout
    assert "see `postroom outbox --dead` for why" in nowhere.stdout

    outbox = run_cli(["outbox"], env).stdout
    assert "sent, with recipients refused: 1" in outbox
    (row,) = [line for line in outbox.splitlines() if line.startswith("1 ")]
    assert "partly" in row and "1 recipient refused by the server" in row
    assert "nobody@example.test: 550 5.1.1" in row

    dead = run_cli(["outbox", "--dead"], env).stdout
    (row,) = [line for line in dead.splitlines() if line.startswith("2 ")]
    assert "nowhere" in row and "every recipient refused: no-one@example.test: 550 5.1.1" in row

    jobs = run_cli(["jobs"], env).stdout
    (partly_row,) = [line for line in jobs.splitlines() if line.startswith("partly ")]
    assert partly_row.endswith("done (sent 1, refused 1)")
    (nowhere_row,) = [line for line in jobs.splitlines() if line.startswith("nowhere ")]
    assert nowhere_row.endswith("failed (dead 1, refused 1)")
    assert "nowhere: last run failed: every message died (dead 1, refused 1); see `postroom outbox --dead`" in jobs

    suppressed = run_cli(["suppressions"], env).stdout
    assert "nobody@example.test" in suppressed and "no-one@example.test" in suppressed and "5.1.1" in suppressed
    again = run_cli(["send", "nowhere"], env)  # both addresses are left out now, like hard bounces
    assert "2 suppressed recipient(s) left out" in again.stdout


def test_mail_of_a_signed_out_account_is_held_not_queued(env, clean_lab):
    sent = run_cli(["send", "signed-out"], env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "1 held: account erin must sign in again (`postroom auth login erin`)" in sent.stdout
    outbox = run_cli(["outbox"], env).stdout
    assert outbox.splitlines()[0] == "outbox: held 1"
    (row,) = [line for line in outbox.splitlines() if line.startswith("1 ")]
    assert " held " in row and "queued" not in row
    assert "held until erin signs in again (`postroom auth login erin`)" in row
    assert clean_lab.fetch_all("bob") == []
