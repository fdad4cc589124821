"""deploy/prometheus/alerts.yaml: the rules load (`promtool check rules`), their unit tests pass
(`promtool test rules`, alerts_test.yaml), every alert has a case that must fire it and one
that must not, and each is shaped for a person: `for:`, a severity, a summary naming what
broke and a runbook entry that exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "pages" / "runbook.md"
RUNBOOK_URL = "https://github.com/postroom/postroom/blob/main/docs/pages/runbook.md#"
SEVERITIES = {"critical", "warning"}
# Alerts about the whole deployment (one store, all replicas): nothing narrower to name.
DEPLOYMENT_WIDE = {"PostroomOutboxBacklogGrowing", "PostroomOutboxOldestAging", "PostroomAbsent"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool is missing: deploy/setup.sh installs Debian's prometheus package")
    return found


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=RULES.parent, capture_output=True, text=True, timeout=300, check=False
    )


def test_promtool_checks_the_rules():
    checked = run_promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_unit_tests_pass():
    tested = run_promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in alerts():
        name = rule["alert"]
        assert cases.get(name) == {True, False}, f"{name}: needs a case that fires and one that does not"


def test_every_alert_is_shaped_for_a_person():
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, name
        summary = rule["annotations"]["summary"]
        if name not in DEPLOYMENT_WIDE:
            assert "$labels." in summary, f"{name}: the summary must name the account, job, folder or replica"
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL), name
        assert url.removeprefix(RUNBOOK_URL) in anchors, f"{name}: no runbook entry {url}"


def _anchor(heading: str) -> str:
    """The id MkDocs (Python-Markdown's toc) gives a heading."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
