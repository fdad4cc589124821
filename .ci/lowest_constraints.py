"""Pip constraints pinning every direct dependency of postroom at its declared lower bound.

    python .ci/lowest_constraints.py [EXTRA ...] > lowest.txt
    pip install -c lowest.txt '.[EXTRA,...]'

pip has no "lowest direct" resolution: this is it, for the project's own requirements (the
core ones and those of the extras named, following `postroom[...]` self-references).
Transitive dependencies still resolve to the newest allowed, as uv's lowest-direct would.
A direct requirement without a `>=` or `==` lower bound is an error: an unbounded floor is a
claim nobody tests.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def direct_requirements(project: dict[str, Any], extras: list[str]) -> list[Requirement]:
    """The core requirements plus those of `extras`, self-references followed, each extra once."""
    own_name = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    pending = [Requirement(r) for r in project.get("dependencies", [])]
    to_visit, visited = list(extras), set[str]()
    found: list[Requirement] = []
    while pending or to_visit:
        if pending:
            req = pending.pop(0)
            if canonicalize_name(req.name) == own_name:
                to_visit.extend(req.extras)
            else:
                found.append(req)
            continue
        extra = to_visit.pop(0)
        if extra in visited:
            continue
        if extra not in optional:
            raise SystemExit(f"lowest_constraints: pyproject.toml has no extra {extra!r}")
        visited.add(extra)
        pending = [Requirement(r) for r in optional[extra]]
    return found


def lower_bound(req: Requirement) -> Version:
    floors = [Version(spec.version) for spec in req.specifier if spec.operator in (">=", "==", "~=")]
    if not floors:
        raise SystemExit(f"lowest_constraints: {req} has no lower bound")
    return max(floors)


def main(extras: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = {canonicalize_name(req.name): lower_bound(req) for req in direct_requirements(project, extras)}
    print("# each direct dependency at its lower bound: .ci/lowest_constraints.py", *extras)
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv[1:])
