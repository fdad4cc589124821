"""bench/startup: what a typed command and a starting daemon cost before they do anything,
beside a bare interpreter.

Five things, each spawned and timed, N rounds; each round runs them in a rotated order so a
burst of load from a neighbour lands on all of them alike:

- ``python -c pass``: the project's venv interpreter doing nothing (the floor);
- ``postroom --version``: the console script, click and the package's version;
- ``postroom check --offline``: on a project written by ``postroom init`` (its starter
  config and templates), read, validated, templates compiled — no server, no store;
- ``postroom run`` to ``/readyz`` 200 on a *current* store (migrated once, untimed, before
  the rounds) and on a *fresh* one (a new state directory each round: the schema is created
  first). The starter config has no rules, so no server is contacted: this is start-up alone.
  Polled every 5 ms; the daemon is then stopped with SIGTERM and must exit 0.

Wall clock and the child's CPU time (user + system, from ``wait4``) are both reported for
the commands (the daemon's CPU is read from /proc just before it is stopped): on the shared
2-core machines the wall time moves with the neighbours' load, the CPU time much less.
Targets (issue 22): ``--version`` <= 6x and ``check --offline`` <= 12x ``python -c pass``;
ready <= 0.5 s on a current store, <= 1.0 s on a fresh one. Nothing here needs the mail lab.

Run: bench/startup [--rounds 20] [--check] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
POSTROOM = ROOT / ".venv" / "bin" / "postroom"
VERSION_MAX = 6.0  # x python -c pass
CHECK_MAX = 12.0  # x python -c pass
READY_CURRENT_MAX_S = 0.5
READY_FRESH_MAX_S = 1.0
READY_TIMEOUT_S = 60.0

COMMANDS = {
    "python -c pass": [str(PYTHON), "-c", "pass"],
    "postroom --version": [str(POSTROOM), "--version"],
    "postroom check --offline": [str(POSTROOM), "check", "--offline"],
}
DAEMONS = ("run -> /readyz (current store)", "run -> /readyz (fresh store)")


def bench_env(pycache: Path) -> dict[str, str]:
    """No POSTROOM_* from the caller's shell, and bytecode caching on: an installed wheel has
    its .pyc files (pip compiles them), so a run that compiled postroom's sources each time (as
    under PYTHONDONTWRITEBYTECODE, set on these machines) would time the compiler, ~40 ms for
    a command and far more for the daemon. The cache goes to a temporary folder, written by
    the untimed first round."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def starter_project(where: Path, env: dict[str, str]) -> Path:
    """`postroom init`'s project: one account, one weekly job, no rules (.env holds the
    password placeholder the config reads)."""
    project = where / "project"
    subprocess.run([str(POSTROOM), "init", str(project)], env=env, check=True, capture_output=True)
    return project


def ready_after(project: Path, state: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawning `postroom run` to /readyz 200, and the daemon's CPU seconds by then."""
    port = free_port()
    denv = {**env, "POSTROOM_STATE_DIR": str(state), "POSTROOM_HTTP": f"127.0.0.1:{port}"}
    url = f"http://127.0.0.1:{port}/readyz"
    log = state.parent / f"{state.name}.log"
    start = time.perf_counter()
    with open(log, "ab") as out:
        child = subprocess.Popen([str(POSTROOM), "run"], env=denv, cwd=project, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"postroom run exited {child.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - start > READY_TIMEOUT_S:
                raise SystemExit(f"/readyz not 200 within {READY_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        code = child.wait(60)
    if code != 0:
        raise SystemExit(f"postroom run exited {code} on SIGTERM: {log.read_text()[-2000:]}")
    return elapsed, used


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
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", type=Path, help="also write the medians and verdicts here (for bench/all)")
    args = parser.parse_args()

    names = [*COMMANDS, *DAEMONS]
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with (
        tempfile.TemporaryDirectory(prefix="pr-startup-") as tmp,
        tempfile.TemporaryDirectory(prefix="pr-startup-pyc-") as pycache,
    ):
        env = bench_env(Path(pycache))
        project = starter_project(Path(tmp), env)
        before = sorted(p.name for p in project.iterdir())
        current = Path(tmp) / "current"
        fresh_n = 0

        def one(name: str) -> tuple[float, float]:
            nonlocal fresh_n
            if name == DAEMONS[0]:
                return ready_after(project, current, env)
            if name == DAEMONS[1]:
                fresh_n += 1
                return ready_after(project, Path(tmp) / f"fresh{fresh_n}", env)
            return timed(COMMANDS[name], env, project)

        for name in names:  # warm the page cache and the .pyc files, migrate `current`: untimed
            one(name)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                wall, used = one(name)
                times[name].append(wall)
                cpu[name].append(used)
        left = sorted(p.name for p in project.iterdir())
    if left != before:
        print(f"FAIL: the commands wrote into the project: {', '.join(sorted(set(left) - set(before)))}")
        return 1

    medians = {name: statistics.median(times[name]) for name in names}
    floor = medians["python -c pass"]
    print(f"{args.rounds} rounds, wall clock spawn to exit (daemons: to /readyz 200), {sys.version.split()[0]}")
    for name in names:
        xs = times[name]
        print(
            f"{name:<32} median {medians[name] * 1000:7.1f} ms   min {min(xs) * 1000:7.1f}   "
            f"max {max(xs) * 1000:7.1f}   {medians[name] / floor:5.1f}x python -c pass   "
            f"CPU median {statistics.median(cpu[name]) * 1000:7.1f} ms"
        )
    verdicts = {
        "postroom --version": (medians["postroom --version"] / floor, VERSION_MAX, "x"),
        "postroom check --offline": (medians["postroom check --offline"] / floor, CHECK_MAX, "x"),
        DAEMONS[0]: (medians[DAEMONS[0]], READY_CURRENT_MAX_S, "s"),
        DAEMONS[1]: (medians[DAEMONS[1]], READY_FRESH_MAX_S, "s"),
    }
    missed = [name for name, (value, limit, _unit) in verdicts.items() if value > limit]
    for name, (value, limit, unit) in verdicts.items():
        print(f"target {name}: {value:.2f}{unit} <= {limit:g}{unit}: {'MISSED' if name in missed else 'met'}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "rounds": args.rounds,
                    "median_s": medians,
                    "cpu_median_s": {name: statistics.median(cpu[name]) for name in names},
                    "targets": {n: {"value": v, "limit": lim, "unit": u} for n, (v, lim, u) in verdicts.items()},
                },
                indent=2,
            )
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
