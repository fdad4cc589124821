"""bench/startup: what a typed command costs before it does anything, beside a bare interpreter.

Three commands, each spawned and timed to exit (wall clock), N rounds; each round runs them
in a rotated order so a burst of load from a neighbour lands on all three alike:

- ``python -c pass``: the project's venv interpreter doing nothing (the floor);
- ``postroom --version``: the console script, click and the package metadata;
- ``postroom check --offline -c deploy/demo/postroom.yaml``: the reference config read,
  interpolated (the demo's variables, as deploy/demo.sh sets them), validated, its templates
  compiled — no server contacted, no store opened.

Wall clock and the child's CPU time (user + system, from ``wait4``) are both reported: on
the shared 2-core machines the wall time moves with the neighbours' load, the CPU time much
less. Target: ``check --offline`` <= 0.25 s wall (median). Nothing here needs the mail lab.

Run: bench/startup [--rounds 20] [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
POSTROOM = ROOT / ".venv" / "bin" / "postroom"
TARGET_S = 0.25

COMMANDS = {
    "python -c pass": [str(PYTHON), "-c", "pass"],
    "postroom --version": [str(POSTROOM), "--version"],
    "postroom check --offline": [str(POSTROOM), "check", "--offline", "-c", str(ROOT / "deploy/demo/postroom.yaml")],
}


def demo_env(pycache: Path) -> dict[str, str]:
    """What deploy/demo.sh exports that `check --offline` reads (the passwords are the lab's;
    any value does offline), and bytecode caching on: an installed wheel has its .pyc files
    (pip compiles them), so a run that compiled postroom's sources each time (as under
    PYTHONDONTWRITEBYTECODE, set on these machines) would time the compiler, ~40 ms. The
    cache goes to a temporary folder, written by the untimed first round."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update({f"{user}_PASSWORD": "bench" for user in ("ALICE", "BOB", "CAROL")})
    env["HOOK_SECRET"] = "whsec_YmVuY2g="
    env["POSTROOM_TEMPLATES"] = str(ROOT / "templates")
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds spawn to exit, and the child's CPU seconds (user + system: what the wall
    time would be on an idle machine, give or take the disk)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    err = child.stderr.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}: {err.decode()[-500:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 unless check --offline's median is <= {TARGET_S} s"
    )
    args = parser.parse_args()

    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    # An empty working directory: no stray .env is read, and nothing may appear in it.
    with (
        tempfile.TemporaryDirectory(prefix="pr-startup-") as cwd,
        tempfile.TemporaryDirectory(prefix="pr-startup-pyc-") as pycache,
    ):
        env = demo_env(Path(pycache))
        for name in names:  # warm the page cache and the .pyc files, untimed
            timed(COMMANDS[name], env, Path(cwd))
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                wall, used = timed(COMMANDS[name], env, Path(cwd))
                times[name].append(wall)
                cpu[name].append(used)
        left = sorted(p.name for p in Path(cwd).iterdir())
    if left:
        print(f"FAIL: the commands wrote into the working directory: {', '.join(left)}")
        return 1

    medians = {name: statistics.median(times[name]) for name in names}
    floor = medians["python -c pass"]
    print(f"{args.rounds} rounds, wall clock spawn to exit, {sys.version.split()[0]}")
    for name in names:
        xs = times[name]
        print(
            f"{name:<26} median {medians[name] * 1000:6.1f} ms   min {min(xs) * 1000:6.1f}   "
            f"max {max(xs) * 1000:6.1f}   {medians[name] / floor:5.1f}x python -c pass   "
            f"CPU median {statistics.median(cpu[name]) * 1000:6.1f} ms"
        )
    check_s = medians["postroom check --offline"]
    print(
        f"check --offline / --version: {check_s / medians['postroom --version']:.1f}x; "
        f"target check --offline <= {TARGET_S * 1000:.0f} ms: {'met' if check_s <= TARGET_S else 'MISSED'}"
    )
    return 1 if args.check and check_s > TARGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
