"""Reading deploy/kubernetes for the tests: the manifests kustomization.yaml lists (and the
optional ServiceMonitor), the replicas' Deployment and its container."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OPTIONAL = ("servicemonitor.yaml",)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests(*, include_optional: bool) -> Iterator[tuple[Path, dict[str, Any]]]:
    listed = load(KUBE / "kustomization.yaml")[0]["resources"]
    for name in [*listed, *(OPTIONAL if include_optional else ())]:
        for doc in load(KUBE / name):
            yield KUBE / name, doc


def deployment() -> dict[str, Any]:
    return next(doc for _, doc in manifests(include_optional=False) if doc["kind"] == "Deployment")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)
