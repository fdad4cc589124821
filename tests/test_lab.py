"""The mail lab itself: real submission, delivery, retrieval and outages work as tests expect."""

from __future__ import annotations

import poplib
import smtplib
from email.message import EmailMessage

import pytest

from tests.lab import MailLab


def _message(sender: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content("hello from the lab\n")
    return msg


def _submit(lab: MailLab, user: str, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=10) as smtp:
        smtp.starttls(context=lab.ssl_context())
        smtp.login(lab.address(user), lab.password(user))
        smtp.send_message(msg)


def test_submission_with_starttls_and_auth_reaches_imap(clean_lab: MailLab) -> None:
    lab = clean_lab
    _submit(lab, "alice", _message(lab.address("alice"), lab.address("bob"), "lab check 1"))

    [raw] = lab.wait_for_messages("bob", 1)

    assert b"Subject: lab check 1" in raw
    assert b"with ESMTPSA" in raw  # Postfix saw TLS and SASL authentication


def test_auth_is_refused_before_starttls(clean_lab: MailLab) -> None:
    with smtplib.SMTP("127.0.0.1", clean_lab.ports.smtp, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.has_extn("starttls")


def test_unknown_recipient_is_refused_at_rcpt(clean_lab: MailLab) -> None:
    with smtplib.SMTP("127.0.0.1", clean_lab.ports.smtp, timeout=10) as smtp:
        smtp.starttls(context=clean_lab.ssl_context())
        smtp.login(clean_lab.address("alice"), clean_lab.password("alice"))
        smtp.mail(clean_lab.address("alice"))
        code, _ = smtp.rcpt("nobody@example.test")

    assert code == 550


def test_other_domains_are_discarded_not_relayed(clean_lab: MailLab) -> None:
    lab = clean_lab
    msg = _message(lab.address("alice"), "someone@elsewhere.test", "never leaves")
    msg["Cc"] = lab.address("dave")
    _submit(lab, "alice", msg)

    lab.wait_for_messages("dave", 1)
    log = (lab.layout.log_dir / "postfix.log").read_text()
    assert "to=<someone@elsewhere.test>, relay=none" in log and "status=sent (elsewhere.test)" in log


def test_pop3_over_tls_lists_a_delivered_message(clean_lab: MailLab) -> None:
    lab = clean_lab
    lab.deliver("bob", bytes(_message("x@vendor.test", lab.address("bob"), "for pop")))

    pop = poplib.POP3_SSL("127.0.0.1", lab.ports.pop3s, context=lab.ssl_context(), timeout=10)
    try:
        pop.user(lab.address("bob"))
        pop.pass_(lab.password("bob"))
        count, _ = pop.stat()
        _, lines, _ = pop.retr(1)
    finally:
        pop.quit()

    assert count == 1
    assert b"Subject: for pop" in lines


def test_seed_and_clear_mailboxes(clean_lab: MailLab) -> None:
    lab = clean_lab
    raws = [bytes(_message("a@b.test", lab.address("carol"), f"seed {i}")) for i in range(5)]
    lab.seed_maildir("carol", "Reports/2024", raws)
    lab.deliver_many("carol", raws[:2])

    assert [b"Subject: seed 3" in raw for raw in lab.fetch_all("carol", "Reports/2024")].count(True) == 1
    assert len(lab.fetch_all("carol")) == 2

    lab.clear_mailbox("carol")
    assert lab.fetch_all("carol") == []
    with lab.imap_client("carol") as client:
        assert not client.folder_exists("Reports/2024")
        assert client.folder_exists("Archive")


def test_postfix_outage_and_recovery(clean_lab: MailLab) -> None:
    lab = clean_lab
    lab.stop_postfix()
    try:
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP("127.0.0.1", lab.ports.smtp, timeout=5)
    finally:
        lab.start_postfix()

    _submit(lab, "alice", _message(lab.address("alice"), lab.address("bob"), "after outage"))
    assert b"after outage" in lab.wait_for_messages("bob", 1)[0]


def test_dovecot_restart_keeps_mail(clean_lab: MailLab) -> None:
    lab = clean_lab
    lab.deliver("dave", bytes(_message("a@b.test", lab.address("dave"), "survives restart")))
    lab.stop_dovecot()
    lab.start_dovecot()

    assert b"survives restart" in lab.fetch_all("dave")[0]


def test_env_names_every_user_password_and_the_ca(lab: MailLab) -> None:
    env = lab.env()
    assert env["ALICE_PASSWORD"] == lab.password("alice")
    assert env["SSL_CERT_FILE"] == str(lab.ca_file)
    assert {"BOB_PASSWORD", "CAROL_PASSWORD", "DAVE_PASSWORD"} <= env.keys()
