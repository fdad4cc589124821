"""A Sieve script end to end: real mail delivered through the lab's Postfix into alice's
Dovecot mailbox, `postroom run` with ``sieve:`` on the account, and every mailbox read back
over IMAP - the message filed (into a folder ``:create`` made) with its flag, the redirect in
bob's INBOX, the flag on the kept message, the vacation answer in dave's INBOX (once), and no
answer to the list message."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from email.utils import formatdate
from pathlib import Path

from tests.lab import MailLab
from tests.support.daemon import ACCOUNT_CONFIG, Daemon, postroom_env, wait_until

SCRIPT = r"""require ["fileinto", "imap4flags", "vacation", "copy", "mailbox"];
if header :contains "subject" "invoice" {
  addflag "$Invoice";
  fileinto :create "Invoices";
  stop;
}
if header :contains "subject" "lunch" {
  redirect :copy "bob@example.test";
  addflag "\\Flagged";
}
vacation :days 1 :subject "Alice is away" "Alice is away until Monday.";
"""


def message(subject: str, n: int, extra: str = "") -> bytes:
    return (
        f"From: Dave <dave@example.test>\nTo: Alice <alice@example.test>\nSubject: {subject}\n"
        f"Date: {formatdate()}\nMessage-ID: <sieve-{n}@example.test>\n{extra}\nbody {n}\n"
    ).encode()


def read(lab: MailLab, user: str, folder: str) -> list[tuple[email.message.EmailMessage, set[str]]]:
    with lab.imap_client(user) as client:
        if not client.folder_exists(folder):
            return []
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        if not uids:
            return []
        fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
        return [
            (
                email.message_from_bytes(d[b"BODY[]"], policy=email.policy.default),
                {f.decode() for f in d[b"FLAGS"]},
            )
            for d in fetched.values()
        ]


def test_a_sieve_script_files_flags_redirects_and_answers_real_mail(tmp_path: Path, clean_lab: MailLab):
    lab = clean_lab
    with lab.imap_client("alice") as client:
        assert not client.folder_exists("Invoices")  # fileinto :create makes it
    with smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=30) as smtp:  # Postfix delivers to Dovecot
        for raw in (
            message("Invoice 42", 1),
            message("Lunch on Friday?", 2),
            message("[news] weekly digest", 3, "List-Id: News <news.example.test>\n"),
            message("Lunch: one more thing", 4),
        ):
            smtp.sendmail("dave@example.test", ["alice@example.test"], raw)
    lab.wait_for_messages("alice", 4, timeout=30)

    config = ACCOUNT_CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap)
    head, _, tail = config.rpartition('"${ALICE_PASSWORD}"}')  # imap: take what is there at the first start
    config = head + '"${ALICE_PASSWORD}", start_from: all}' + tail
    (tmp_path / "postroom.yaml").write_text(config + "    sieve: filters.sieve\n")
    (tmp_path / "filters.sieve").write_text(SCRIPT)
    log = tmp_path / "daemon.log"
    daemon = Daemon(postroom_env(lab, tmp_path), log=log)
    try:
        wait_until(
            lambda: (
                read(lab, "alice", "Invoices") and len(read(lab, "bob", "INBOX")) == 2 and read(lab, "dave", "INBOX")
            ),
            timeout=90,
            what="the invoice filed, the lunch redirected and answered",
        )
        time.sleep(2.0)  # a second answer to dave, were one sent, would land now
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()

    ((invoice, invoice_flags),) = read(lab, "alice", "Invoices")
    assert invoice["Subject"] == "Invoice 42" and "$Invoice" in invoice_flags
    inbox = {str(m["Subject"]): flags for m, flags in read(lab, "alice", "INBOX")}
    assert set(inbox) == {"Lunch on Friday?", "[news] weekly digest", "Lunch: one more thing"}
    assert "\\Flagged" in inbox["Lunch on Friday?"] and "\\Flagged" not in inbox["[news] weekly digest"]
    redirected = sorted(str(m["Message-ID"]) for m, _ in read(lab, "bob", "INBOX"))
    assert redirected == ["<sieve-2@example.test>", "<sieve-4@example.test>"]
    answers = [m for m, _ in read(lab, "dave", "INBOX")]
    # the list message is not answered, and dave only once within :days
    assert len(answers) == 1, [str(m["Subject"]) for m in answers]
    (answer,) = answers
    assert answer["Subject"] == "Alice is away"
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["In-Reply-To"] == "<sieve-2@example.test>"
    assert "Alice is away until Monday." in answer.get_content()
