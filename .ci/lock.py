"""Write deploy/constraints.txt: the exact versions of postroom[postgres]'s runtime dependencies
(direct and transitive) installed in the environment running this script, normally .venv,
where the tests ran against them.

    .venv/bin/python .ci/lock.py           rewrite deploy/constraints.txt
    .venv/bin/python .ci/lock.py --check   exit 1 if the file differs from what .venv holds

The Docker image and the systemd install read the file (`pip install -c deploy/constraints.txt
'.[postgres]'`), and deploy/setup.sh installs .venv with it: what the tests ran on is what
ships. Test and lint tools are not in it; they are no runtime dependencies.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "deploy" / "constraints.txt"
TOP = Requirement("postroom[postgres]")

HEADER = """\
# Exact versions of postroom[postgres]'s runtime dependencies, as tested: used by the Docker
# image, the systemd install (README) and deploy/setup.sh:
#   pip install -c deploy/constraints.txt '.[postgres]'
# Regenerate after changing dependencies in pyproject.toml (or to take new releases):
#   .venv/bin/pip install -U -e '.[dev]' && .venv/bin/python .ci/lock.py
# then run the tests; .ci/run fails while this file and .venv disagree.
"""


def runtime_closure(top: Requirement) -> dict[NormalizedName, str]:
    """Every installed distribution `top` needs at run time, with its version; markers are
    evaluated for this interpreter, with the extras that pulled each requirement in."""
    versions: dict[NormalizedName, str] = {}
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    pending = [top]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"lock: {req} is required but not installed; install '.[dev]' first") from None
        versions[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras))
            if wanted:
                pending.append(sub)
    versions.pop(canonicalize_name(top.name))
    return versions


def render(versions: dict[NormalizedName, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def main(args: list[str]) -> int:
    text = render(runtime_closure(TOP))
    if args == ["--check"]:
        if LOCK.read_text() != text:
            print(
                f"lock: {LOCK.relative_to(ROOT)} differs from the installed versions; run .ci/lock.py", file=sys.stderr
            )
            return 1
        return 0
    if args:
        raise SystemExit(__doc__)
    LOCK.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
