"""Which postroom metrics, with which labels, the alert rules and the dashboard query.

A small reading of PromQL, enough for our own expressions: every `postroom_*` selector with
the labels it matches on, and the labels of each `by (...)` / `on (...)` in the expression.
Recorded series (`postroom:…`) and Prometheus' own (`up`) are not postroom's to export;
`instance` (and `job` on `up`) are target labels Prometheus adds at scrape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "postroom.json"

SELECTOR = re.compile(r"\b(postroom_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
TARGET_LABELS = {"instance", "le"}  # le: every histogram's bucket label


@dataclass
class Use:
    """One metric family as the expressions use it."""

    labels: set[str] = field(default_factory=set)  # matched on, or grouped by with it alone
    where: set[str] = field(default_factory=set)


def family(sample_name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def uses(expressions: Iterable[tuple[str, str]]) -> dict[str, Use]:
    """{family: labels used} over (where, expr) pairs. A grouping label counts for a family
    when the expression selects that family alone (with several, it may belong to any)."""
    found: dict[str, Use] = {}
    for where, expr in expressions:
        selected = [(family(m.group(1)), m.group(2) or "") for m in SELECTOR.finditer(expr)]
        for name, matchers in selected:
            use = found.setdefault(name, Use())
            use.where.add(where)
            use.labels |= set(MATCHER.findall(matchers)) - TARGET_LABELS
        if len({name for name, _ in selected}) == 1:
            grouped = {label.strip() for g in GROUPING.findall(expr) for label in g.split(",") if label.strip()}
            found[selected[0][0]].labels |= grouped - TARGET_LABELS
    return found


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, object]]) -> Iterator[dict[str, object]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # type: ignore[arg-type]

    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):  # type: ignore[union-attr]
            yield str(panel["title"]), target["expr"]


def scraped(text: str) -> dict[str, set[str]]:
    """{family: label names seen on its samples} from a Prometheus text exposition; a family
    declared (# TYPE) without samples maps to an empty set."""
    seen: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            seen.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest.rpartition("}")[0])) if rest else set()
            seen.setdefault(family(name.split()[0]), set()).update(labels)
    return seen
