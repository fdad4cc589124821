"""Config loading: the reference config as written, and errors that name file, line and key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from postroom.config import Settings, load_config
from postroom.errors import ConfigError

from tests.support.data import DESIGN_REFERENCE

REFERENCE = Path(__file__).parent.parent / "deploy" / "demo" / "postroom.yaml"
SECRETS = {"ALICE_PASSWORD": "a", "BOB_PASSWORD": "b", "CAROL_PASSWORD": "c", "HOOK_SECRET": "whsec_dGVzdA=="}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "postroom.yaml"
    path.write_text(text)
    return load_config(Settings(config=path), environ=SECRETS if env is None else env)


def test_reference_config_loads_as_written():
    loaded = load_config(Settings(config=REFERENCE), environ=SECRETS)
    cfg = loaded.config
    assert set(cfg.accounts) == {"alice", "bob", "carol"}
    assert cfg.accounts["alice"].smtp.password.get_secret_value() == "a"
    assert cfg.accounts["bob"].pop3.delete_after is False
    job = cfg.jobs["orders-report"]
    assert job.schedule.cron == "0 8 * * mon-fri"
    assert cfg.job_timezone(job) == "Europe/Berlin"
    assert cfg.job_timezone(cfg.jobs["statements"]) == "UTC"
    assert job.misfire_grace == timedelta(hours=1)
    # relative sqlite paths mean beside the config file
    assert job.data["orders"].database == f"sqlite:///{REFERENCE.parent / 'shop.db'}"
    assert [r.name for r in cfg.rules] == ["archive-reports", "invoices", "alerts", "out-of-office"]
    assert loaded.templates_dir == REFERENCE.parent / "templates"


def test_webhook_secret_without_whsec_prefix_is_refused_with_how_to_make_one():
    with pytest.raises(ConfigError) as err:
        load_config(Settings(config=REFERENCE), environ={**SECRETS, "HOOK_SECRET": "plain-words"})
    text = str(err.value)
    assert str(REFERENCE) in text and "rules.2.actions.0.webhook.secret" in text
    assert "'whsec_' followed by base64" in text and "base64.b64encode(os.urandom(24))" in text
    assert "plain-words" not in text  # never echo a secret


def test_unset_variable_names_it_and_the_key(tmp_path):
    env = dict(SECRETS)
    del env["BOB_PASSWORD"]
    with pytest.raises(ConfigError) as err:
        load_config(Settings(config=REFERENCE), environ=env)
    text = str(err.value)
    assert "${BOB_PASSWORD} is not set" in text
    assert "accounts.bob.smtp.password" in text
    assert str(REFERENCE) in text


def test_secret_from_a_secrets_dir(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "PW").write_text("from-file\n")
    path = tmp_path / "postroom.yaml"
    path.write_text(
        "accounts:\n  a:\n    address: a@example.test\n    smtp: {host: h, username: u, password: '${PW}'}\n"
    )
    cfg = load_config(Settings(config=path, secrets_dir=secrets), environ={}).config
    assert cfg.accounts["a"].smtp.password.get_secret_value() == "from-file"


def test_name_file_variables_are_read_as_secret_files(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("from-docker-secret\n")
    path = tmp_path / "postroom.yaml"
    path.write_text(
        "accounts:\n  a:\n    address: a@example.test\n    smtp: {host: h, username: u, password: '${PW}'}\n"
    )
    cfg = load_config(Settings(config=path), environ={"PW_FILE": str(tmp_path / "pw")}).config
    assert cfg.accounts["a"].smtp.password.get_secret_value() == "from-docker-secret"

    with pytest.raises(ConfigError) as err:
        load_config(Settings(config=path), environ={"PW_FILE": str(tmp_path / "missing")})
    assert "PW_FILE=" in str(err.value) and "can't read it" in str(err.value)
    assert "accounts.a.smtp.password" in str(err.value)
    with pytest.raises(ConfigError, match="both PW and PW_FILE are set"):
        load_config(Settings(config=path), environ={"PW": "x", "PW_FILE": str(tmp_path / "pw")})

    # the process settings too: POSTROOM_DATABASE_URL_FILE, as a compose file would pass it
    (tmp_path / "url").write_text(f"sqlite:///{tmp_path / 'elsewhere.db'}\n")
    monkeypatch.setenv("POSTROOM_DATABASE_URL_FILE", str(tmp_path / "url"))
    assert Settings().database_url == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("POSTROOM_DATABASE_URL", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="POSTROOM_DATABASE_URL_FILE are set"):
        Settings()


BASE = """\
accounts:
  a:
    address: a@example.test
    smtp: {host: 127.0.0.1, port: 10025, security: starttls}
jobs:
  j:
    schedule: {cron: "0 8 * * *"}
    account: a
    template: t
    to: [b@example.test]
"""


@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ('cron: "0 8 * * *"', 'cron: "0 25 * * *"', "jobs.j.schedule.cron", "bad cron expression"),
        ("account: a\n    template", "account: zed\n    template", "jobs.j.account", "unknown account 'zed'"),
        ("address: a@example.test", "address: not-an-address", "accounts.a.address", "not one mail address"),
        ("template: t", "template: t\n    colour: red", "jobs.j.colour", "unknown key 'colour'"),
        ("security: starttls", "security: startls", "accounts.a.smtp.security", "'tls', 'starttls' or 'none'"),
        ('cron: "0 8 * * *"', 'cron: "0 8 * * *", every: 5m', "jobs.j.schedule", "exactly one of cron, every, at"),
        ('{cron: "0 8 * * *"}', "{every: 5m, timezone: Mars/Olympus}", "jobs.j.schedule.timezone", "unknown time zone"),
        ("template: t", "template: t\n    for_each: rows", "jobs.j.for_each", "unknown data key 'rows'"),
    ],
)
def test_errors_name_line_key_and_fix(tmp_path, old, new, key, says):
    text = BASE.replace(old, new)
    assert text != BASE
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    msg = str(err.value)
    assert key in msg and says in msg, msg
    assert "postroom.yaml: line " in msg


def test_yaml_syntax_error_has_a_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "  bad: [unclosed\n")
    assert "YAML syntax error" in str(err.value) and "line " in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    text = BASE.replace("account: a\n    template", "account: zed\n    template").replace(
        "to: [b@example.test]", "to: [b@example.test]\n    skip_if_empty: nothing"
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert len(err.value.problems) == 2


def test_pop3_account_refuses_imap_actions(tmp_path):
    text = """\
accounts:
  b:
    address: b@example.test
    pop3: {host: 127.0.0.1}
rules:
  - {name: r, account: b, actions: [{move: Archive}]}
"""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert "rules.0.actions.0.move" in str(err.value) and "needs IMAP" in str(err.value)


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("folder: Archive", "rules.0.folder"),
        ("folders: [INBOX, Lists]", "rules.0.folders"),
    ],
)
def test_pop3_account_refuses_a_rule_on_a_folder(tmp_path, where, key):
    """A POP3 maildrop has no folders: such a rule would never see a message, so it is refused."""
    text = f"""\
accounts:
  b:
    address: b@example.test
    pop3: {{host: 127.0.0.1}}
rules:
  - name: r
    account: b
    {where}
    actions: [{{webhook: {{url: "https://hooks.example.test/x"}}}}]
"""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    msg = str(err.value)
    assert "postroom.yaml: line 8" in msg and key in msg and "only INBOX" in msg, msg


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Settings(config=tmp_path / "nope.yaml"), environ={})
    assert "file not found" in str(err.value) and "--config" in str(err.value)


def test_demo_config_is_the_reference_config_verbatim():
    """The demo runs design.md's reference config exactly as written."""
    assert REFERENCE.read_text() == DESIGN_REFERENCE.read_text()


# -- bounded input --------------------------------------------------------------------------
def _laughs(levels: int) -> str:
    """Billion laughs: each level is ten aliases of the one before, so `levels` levels of a
    few hundred bytes expand to 10**levels strings."""
    lines = ['l0: &l0 "lol"']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels + 1)]
    return BASE + "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    """`postroom check` on the bomb, with its address space capped at 1 GiB: it must say why it
    refuses, at once. (Unbounded, it grows past 2.9 GB; the daemon runs the same loader on
    SIGHUP.)"""
    import resource
    import subprocess
    import sys

    path = tmp_path / "postroom.yaml"
    path.write_text(_laughs(9))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    postroom = Path(sys.executable).with_name("postroom")
    done = subprocess.run(
        [str(postroom), "check", "--offline", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert f"{path}: line 17: this expands to more than 200,000 values" in done.stderr, done.stderr


def test_yaml_alias_that_contains_itself_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "loop: &loop [1, *loop]\n")
    assert "line 11" in str(err.value) and "contains it" in str(err.value)


def test_a_few_aliases_still_load(tmp_path):
    loaded = load(
        tmp_path,
        BASE.replace("smtp: {host", "smtp: &relay {host").replace(
            "jobs:", "  b:\n    address: b@example.test\n    smtp: *relay\njobs:"
        ),
    )
    assert loaded.config.accounts["b"].smtp.port == 10025


def test_oversized_config_file_is_refused_unread(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + ("# padding\n" * 500_000))
    assert "larger than 4 MiB" in str(err.value)
