"""Shared pytest fixtures. Each block is owned by one part of the suite; add yours below."""

from __future__ import annotations

# ==== mail lab fixtures (owner: tests/lab) ================================================
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import LabPorts, MailLab
from tests.lab.mail_lab import running_lab
from tests.support.workers import lab_port_offset

# Store fixtures (store, sqlite_url, pg_url, any_store) and OAuth2 fixtures (oauth2_lab,
# token_server) live in their own modules; no_skips turns every skip not marked may_skip
# into a failure.
pytest_plugins = [
    "tests.support.store_fixtures",
    "tests.support.oauth2_fixtures",
    "tests.support.no_skips",
    "tests.support.scheduling",
]

# Tests use ports shifted from the reference config's, so a demo lab (`python -m tests.lab up`)
# can run at the same time. POSTROOM_LAB_PORT_OFFSET moves them if something else sits there;
# each xdist worker adds 1000 more (tests/support/workers.py).
LAB_PORT_OFFSET = lab_port_offset()


@pytest.fixture(scope="session")
def lab() -> Iterator[MailLab]:
    """A real Dovecot + Postfix on 127.0.0.1, started once per session (once per xdist worker)."""
    missing = [tool for tool in ("dovecot", "doveadm", "postfix", "openssl") if shutil.which(tool) is None]
    if missing or not Path("/usr/sbin/dovecot").exists():
        pytest.fail(
            f"mail lab needs {', '.join(missing) or 'dovecot'} installed; run `bash deploy/setup.sh` as root",
            pytrace=False,
        )
    with running_lab(lambda root: MailLab(root, LabPorts().offset(LAB_PORT_OFFSET))) as mail_lab:
        yield mail_lab


@pytest.fixture
def clean_lab(lab: MailLab) -> MailLab:
    """The session lab with both servers up, no queued mail and every mailbox empty."""
    lab.start_dovecot()
    lab.start_postfix()
    lab.drop_queue()
    lab.clear_all()
    return lab


@pytest.fixture
def lab_env(lab: MailLab, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The lab's ${ALICE_PASSWORD}…, SSL_CERT_FILE and HOOK_SECRET set in os.environ."""
    values = lab.env()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


# ==== end of mail lab fixtures ============================================================
