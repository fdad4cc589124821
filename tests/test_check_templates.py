"""`postroom check` finds template names that point nowhere: statically (every check) and by
rendering each job once from its real data (`check --render`, and online `check`), sending
nothing and writing no store. The lab's servers and a real data server stand behind the config."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from postroom.mail.templates import TemplateRenderer

from tests.support.daemon import REFERENCE, DataServer, lab_config_text, postroom_env, run_cli

ROOT = Path(__file__).resolve().parent.parent


def seed_shop(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript((ROOT / "tests" / "data" / "shop.sql").read_text())
    db.close()


@pytest.fixture
def data_server():
    server = DataServer()
    yield server
    server.close()


@pytest.fixture
def project(tmp_path, clean_lab, data_server) -> Path:
    """The reference config on the lab, its data, and a copy of the templates to break."""
    (tmp_path / "postroom.yaml").write_text(lab_config_text(clean_lab, REFERENCE.read_text(), data_server))
    seed_shop(tmp_path / "shop.db")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    return tmp_path


def env_for(lab, project: Path) -> dict[str, str]:
    return postroom_env(lab, project, POSTROOM_TEMPLATES=str(project / "templates"))


def test_a_misspelt_name_is_a_config_error_with_file_line_and_suggestion(project, clean_lab):
    statement = project / "templates" / "statement.j2"
    lines = statement.read_text().splitlines()
    assert "{{ today }}" in lines[3]
    lines[3] = lines[3].replace("{{ today }}", "{{ todya }}")
    statement.write_text("\n".join(lines) + "\n")
    result = run_cli(["check", "--offline"], env_for(clean_lab, project))
    assert result.returncode == 78, result.stdout + result.stderr  # EX_CONFIG
    assert "jobs.statements.template: statement.j2:4: 'todya' is not defined; did you mean 'today'?" in result.stderr
    assert "orders-report" not in result.stderr  # the other job is fine


def test_the_demo_and_an_init_project_pass_as_written(project, clean_lab, tmp_path):
    assert run_cli(["check", "--offline"], postroom_env(clean_lab, project)).returncode == 0
    starter = tmp_path / "starter"
    init = subprocess.run(
        [sys.executable, "-m", "postroom.cli", "init", str(starter)], capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "postroom.cli", "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=starter,
        env={k: v for k, v in postroom_env(clean_lab, starter).items() if k != "POSTROOM_TEMPLATES"}
        | {"POSTROOM_CONFIG": str(starter / "postroom.yaml")},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_names_defined_in_the_template_are_known_and_top_level_ones_are_told(tmp_path):
    (tmp_path / "macros.j2").write_text("{% macro money2(x) %}{{ x }}{% endmacro %}\n")
    (tmp_path / "layout.j2").write_text("{% block text %}{% block content %}{% endblock %} {{ brnad }}{% endblock %}\n")
    (tmp_path / "fine.j2").write_text(
        '{% extends "layout.j2" %}\n'
        "{% block subject %}{% set n = orders|length %}{{ n }} for {{ job }}{% endblock %}\n"
        '{% block content %}{% from "macros.j2" import money2 %}{% import "macros.j2" as m %}\n'
        "{% for o in orders %}{{ loop.index }} {{ money2(o) }}{{ m.money2(o) }}{% endfor %}\n"
        "{% with w = 2 %}{{ w }}{% endwith %}{% set ns = namespace(t=0) %}{{ ns.t }} {{ range(2)|list }}\n"
        "{% endblock %}\n"
    )
    (tmp_path / "outside.j2").write_text(
        '{% from "macros.j2" import money2 %}{% set brand = "B" %}\n'
        "{% block subject %}{{ brand }}{% endblock %}"
        "{% block text %}{{ money2(1) }}{{ nothing_like_it }}{% endblock %}\n"
    )
    renderer = TemplateRenderer(tmp_path)
    known = {"orders", "job", "now", "today", "fire_time", "brand"}
    [layout] = renderer.undefined_names("fine", known)  # the layout's own typo, on its line
    assert str(layout) == "layout.j2:1: 'brnad' is not defined; did you mean 'brand'?"
    assert renderer.undefined_names("fine", {*known, "brnad"}) == []
    told = [str(p) for p in renderer.undefined_names("outside", {"job", "today"})]
    assert told[0] == (
        "outside.j2:2: 'brand' is defined outside any block, where nothing is run: "
        "set or import it inside the block that uses it"
    )
    assert told[1].startswith("outside.j2:2: 'money2' is defined outside any block")
    assert told[2] == "outside.j2:2: 'nothing_like_it' is not defined; known here: job, today"
    # What check says is what a render does: the top-level name really is undefined there.
    with pytest.raises(Exception, match="'brand' is undefined"):
        renderer.render("outside", {"job": "j", "today": "t"})


def test_check_render_renders_each_job_from_its_data_sending_nothing_storing_nothing(project, clean_lab):
    """A typo in an attribute (`row.emial`) passes the static check; rendering each job once
    from shop.db and the data server finds it, per job, before any fire."""
    statement = project / "templates" / "statement.j2"
    statement.write_text(statement.read_text().replace("{{ row.name }},", "{{ row.emial }},"))
    env = env_for(clean_lab, project)
    assert run_cli(["check", "--offline"], env).returncode == 0
    result = run_cli(["check", "--render"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "ok   jobs.orders-report: rendered 1 message; nothing sent" in out
    assert "FAIL jobs.statements: does not render: statement.j2:8: 'dict object' has no attribute 'emial'" in out
    assert "accounts." not in out  # --render logs in nowhere
    online = run_cli(["check"], env)  # online: the logins, then the same renders
    assert online.returncode == 1
    assert "ok   accounts.alice.smtp" in online.stdout and "FAIL jobs.statements: does not render" in online.stdout
    assert clean_lab.fetch_all("bob") == [] and clean_lab.fetch_all("carol") == []  # nothing sent
    assert not (project / "state").exists()  # no store made
    assert run_cli(["check", "--offline", "--render"], env).returncode == 2  # one or the other
