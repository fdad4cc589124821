"""The README's "When outgoing mail goes wrong" table says what postroom shows for each
failure: each message it quotes (``…`` in the "what postroom shows" column) must be what the
real `postroom` command prints when that failure happens, against the lab's real Postfix.
A `…` in a quoted message stands for text that varies (the server's wording, other counts)."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.daemon import REFERENCE, postroom_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
HEADING = "### When outgoing mail goes wrong"
QUOTED = re.compile(r"``\s?(.+?)\s?``")


def table_rows() -> list[tuple[str, list[str]]]:
    """(failure, the messages its row quotes) for each row of the README's table."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(HEADING) :].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 3 or cells[0] in ("failure", "---"):
            continue
        rows.append((cells[0], QUOTED.findall(cells[1])))
    return rows


def shows(corpus: str, quoted: str) -> bool:
    """Whether the output holds the quoted message, its `…` parts in order on one line."""
    parts = [re.escape(p) for p in quoted.split("…")]
    return re.search(".*?".join(parts), corpus) is not None


def test_the_table_has_a_row_for_each_outgoing_failure():
    failures = [failure for failure, _ in table_rows()]
    assert len(failures) == 6, failures
    for words in ("refuses it at", "Every recipient", "every message died", "template reads a name", "real data"):
        assert any(words in f for f in failures), words
    assert any("signed out" in f for f in failures)
    assert all(quoted for _, quoted in table_rows())  # every row quotes what is shown


@pytest.fixture
def outputs(tmp_path: Path, clean_lab) -> str:
    """Every failure of the table made to happen, and what the commands printed meanwhile."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.j2").write_text(
        "{% block subject %}A note for {{ today }}{% endblock %}{% block text %}Hello.{% endblock %}\n"
    )
    config = (ROOT / "tests" / "data" / "outgoing_states.yaml").read_text()
    (tmp_path / "postroom.yaml").write_text(config.format(smtp=clean_lab.ports.smtp))
    env = postroom_env(
        clean_lab,
        tmp_path,
        POSTROOM_TEMPLATES=str(tmp_path / "templates"),
        POSTROOM_TOKEN_KEY=Fernet.generate_key().decode(),
    )
    printed = []
    for args in (["send", "partly"], ["send", "nowhere"], ["outbox"], ["outbox", "--dead"], ["jobs"]):
        printed.append(run_cli(args, env))
    printed += [run_cli(["send", "signed-out"], env), run_cli(["outbox"], env)]

    # The reference config's templates, one with a misspelt name, one with a misspelt key.
    project = tmp_path / "reference"
    shutil.copytree(ROOT / "templates", project / "templates")
    (project / "postroom.yaml").write_text(REFERENCE.read_text())
    ref_env = postroom_env(clean_lab, project, POSTROOM_TEMPLATES=str(project / "templates"))
    statement = project / "templates" / "statement.j2"
    original = statement.read_text()
    statement.write_text(original.replace("for {{ today }}", "for {{ todya }}", 1))
    printed.append(run_cli(["check", "--offline"], ref_env))
    statement.write_text(original.replace("{{ row.name }},", "{{ row.emial }},"))
    (project / "templates" / "orders_report.j2").write_text(
        "{% block subject %}r{% endblock %}{% block text %}t{% endblock %}\n"
    )
    with sqlite3.connect(project / "shop.db") as db:
        db.executescript((ROOT / "tests" / "data" / "shop.sql").read_text())
    db.close()
    printed.append(run_cli(["check", "--render"], ref_env))
    return "\n".join(p.stdout + p.stderr for p in printed)


def test_each_rows_message_is_what_the_command_prints(outputs):
    missing = [
        (failure, quoted) for failure, messages in table_rows() for quoted in messages if not shows(outputs, quoted)
    ]
    assert missing == [], f"the README quotes what postroom does not print:\n{missing}\n--- printed:\n{outputs}"
