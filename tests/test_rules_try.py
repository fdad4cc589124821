"""``postroom rules try``: the rules (YAML and Sieve) run against a live lab folder's newest
messages without acting - a table of message, rule, action and the guards' decision - and
the folder reads back the same afterwards: the same UIDs, the same flags (no \\Seen from the
fetch, nothing moved, flagged or deleted)."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

from click.testing import CliRunner
from postroom.cli import app

from tests.lab import MailLab
from tests.support.daemon import ACCOUNT_CONFIG, postroom_env

SCRIPT = r"""require ["fileinto", "imap4flags", "vacation"];
if header :contains "subject" "invoice" { addflag "\\Flagged"; fileinto "Invoices"; stop; }
vacation :days 1 "Away.";
"""
RULES = """\
rules:
  - name: tidy
    account: alice
    match: {subject: "digest"}
    actions: [{delete: true}]
"""


def message(subject: str, n: int, extra: str = "") -> bytes:
    return (
        f"Return-Path: <dave@example.test>\nFrom: Dave <dave@example.test>\nTo: alice@example.test\n"
        f"Subject: {subject}\nDate: {formatdate()}\nMessage-ID: <try-{n}@example.test>\n{extra}\nbody {n}\n"
    ).encode()


def snapshot(lab: MailLab) -> dict[int, frozenset[bytes]]:
    with lab.imap_client("alice") as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        return {uid: frozenset(flags) for uid, flags in client.get_flags(uids).items()} if uids else {}


def test_rules_try_shows_what_would_happen_and_changes_nothing(tmp_path: Path, clean_lab: MailLab):
    lab = clean_lab
    lab.deliver_many(
        "alice",
        [
            message("old news", 0),
            message("Invoice 7", 1),
            message("Weekly digest", 2, "List-Id: <digest.example.test>\n"),
            message("Hello there", 3),
        ],
    )
    with lab.imap_client("alice") as client:
        client.select_folder("INBOX")
        client.add_flags(client.search("ALL")[:1], [b"$Old"])
    before = snapshot(lab)
    assert len(before) == 4 and all(b"\\Seen" not in flags for flags in before.values())

    (tmp_path / "postroom.yaml").write_text(
        ACCOUNT_CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap) + "    sieve: filters.sieve\n" + RULES
    )
    (tmp_path / "filters.sieve").write_text(SCRIPT)
    env = postroom_env(lab, tmp_path)
    result = CliRunner().invoke(app, ["rules", "try", "--account", "alice", "--last", "3"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["MESSAGE", "RULE", "ACTION", "GUARDS"]
    assert "old news" not in result.output  # only the newest three
    invoice = [line for line in lines if "Invoice 7" in line]
    assert any("flag (flags=['\\\\Flagged'])" in line and "will run" in line for line in invoice), result.output
    assert any("move (folder=Invoices)" in line for line in invoice)
    digest = [line for line in lines if "Weekly digest" in line]
    assert any("tidy" in line and "delete" in line and "will run" in line for line in digest), result.output
    assert any("vacation" in line and "would be declined: List-Id present" in line for line in digest)
    hello = [line for line in lines if "Hello there" in line]
    assert any("vacation" in line and "would send" in line for line in hello), result.output

    assert snapshot(lab) == before
