"""bench/all: every bench under bench/, one after the other, and one table of what they found.

The table has issue 22's columns: measure, postroom, anchor (the other side measured in the
same run), limit (the target), ratio (postroom / anchor, or postroom / limit where there is no
anchor) and load (the 1-minute load average while that bench ran: on the shared 2-core
machines a figure means little without it). Each bench runs as its own command, as a person
would run it, with its own lab on its own port offset (``--port-offset`` shifts them all);
its full output is kept in the work directory printed at the end.

A bench that is missing, fails or prints something this script can't read gives a row that
says so (``failed: ...``), and the others still run: the table is always printed. Exit 1 when
a bench failed or a limit was missed (``--check``).

- rules, send: read from the summary lines they print;
- startup, footprint: from the JSON they write (``--json``);
- any other bench (merge, ...): if its ``--help`` offers ``--table FILE``, the rows it writes
  there (a JSON list of objects with the table's keys); otherwise one row saying whether it
  exited 0;
- replicas: only with ``--replicas`` (it needs PostgreSQL and takes many minutes).

Run: bench/all [--quick] [--replicas] [--only rules,send,...] [--port-offset 21000] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The order they run in; the ones a person always wants first.
KNOWN = ("startup", "footprint", "rules", "send", "merge", "replicas")
SKIPPED = ("all", "soak")  # soak is a crash test of ten minutes, not a figure for the table


@dataclass
class Row:
    measure: str
    postroom: str
    anchor: str = "—"
    limit: str = "—"
    ratio: str = "—"
    load: str = "—"
    ok: bool | None = None  # None: no limit to judge by


@dataclass
class Run:
    name: str
    code: int | None  # None: it did not start, or ran out of time
    out: str
    json_path: Path
    table_path: Path
    load: str


def benches() -> list[str]:
    """The runnable benches under bench/ (an executable without a suffix), known ones first."""
    found = sorted(p.name for p in HERE.iterdir() if p.is_file() and "." not in p.name and os.access(p, os.X_OK))
    found = [name for name in found if name not in SKIPPED]
    return [name for name in KNOWN if name in found] + [name for name in found if name not in KNOWN]


def accepts(name: str, option: str) -> bool:
    try:
        done = subprocess.run([str(HERE / name), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in done.stdout


def run_bench(name: str, args: list[str], work: Path, timeout: float) -> Run:
    json_path, table_path = work / f"{name}.json", work / f"{name}.table.json"
    argv = [str(HERE / name), *args]
    if name in ("startup", "footprint"):
        argv += ["--json", str(json_path)]
    elif name not in ("rules", "send") and accepts(name, "--table"):
        argv += ["--table", str(table_path)]
    print(f"running {' '.join(argv[0:1] + args)} ...", flush=True)
    load0 = os.getloadavg()[0]
    started = time.monotonic()
    code: int | None = None
    out = ""
    try:
        # Its own process group: a bench that runs out of time is stopped with what it started
        # (its lab's servers stop when the bench does; its daemons are its children).
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        out = f"did not start: {exc}"
    else:
        try:
            raw, _ = child.communicate(timeout=timeout)
            code = child.returncode
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            raw, _ = child.communicate()
            raw += f"\nno end within {timeout:.0f} s".encode()
        out = raw.decode(errors="replace")
    load = f"{load0:.1f}–{os.getloadavg()[0]:.1f}"
    (work / f"{name}.out").write_text(out)
    print(f"  {name}: {'exit ' + str(code) if code is not None else 'failed'} in {time.monotonic() - started:.0f} s")
    return Run(name, code, out, json_path, table_path, load)


def _ratio(value: float, anchor: float) -> str:
    return f"{value / anchor:.2f}×" if anchor else "—"


def _find(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        raise ValueError(f"no line matching {pattern!r}")
    return found


def rows_startup(run: Run) -> list[Row]:
    data = json.loads(run.json_path.read_text())
    med, targets = data["median_s"], data["targets"]
    floor = med["python -c pass"]
    rows = []
    for name in ("postroom --version", "postroom check --offline"):
        t = targets[name]
        rows.append(
            Row(
                f"start: `{name.removeprefix('postroom ')}`",
                f"{med[name] * 1000:.0f} ms",
                f"python -c pass {floor * 1000:.0f} ms",
                f"≤ {t['limit']:g}×",
                f"{t['value']:.1f}×",
                ok=t["value"] <= t["limit"],
            )
        )
    for name, label in (
        ("run -> /readyz (current store)", "start: spawn → /readyz 200, current store"),
        ("run -> /readyz (fresh store)", "start: spawn → /readyz 200, fresh store"),
    ):
        t = targets[name]
        rows.append(
            Row(
                label,
                f"{med[name]:.2f} s (CPU {data['cpu_median_s'][name]:.2f} s)",
                limit=f"≤ {t['limit']:g} s",
                ratio=f"{t['value'] / t['limit']:.2f}× limit",
                ok=t["value"] <= t["limit"],
            )
        )
    return rows


def rows_footprint(run: Run) -> list[Row]:
    data = json.loads(run.json_path.read_text())
    lim = data["limits"]
    return [
        Row(
            f"idle RSS, 50 jobs + 10 IDLE folders, console on ({data['install']})",
            f"{data['hwm_mib']:.1f} MiB",
            limit=f"≤ {lim['hwm_mib']:g} MiB",
            ratio=f"{data['hwm_mib'] / lim['hwm_mib']:.2f}× limit",
            ok=data["ok"]["hwm_mib"],
        ),
        Row(
            "idle CPU, same daemon",
            f"{data['cpu_percent']:.2f} %",
            limit=f"≤ {lim['cpu_percent']:g} %",
            ratio=f"{data['cpu_percent'] / lim['cpu_percent']:.2f}× limit",
            ok=data["ok"]["cpu_percent"],
        ),
    ]


def rows_rules(run: Run) -> list[Row]:
    out = run.out
    imapfilter = float(_find(r"^imapfilter move_messages\s+s:.*median\s+([\d.]+)", out)[1])
    archive = float(_find(r"^postroom archive, one pass\s+s:.*median\s+([\d.]+)", out)[1])
    regex = float(_find(r"^postroom regex, one pass\s+s:.*median\s+([\d.]+)", out)[1])
    rows = [
        Row(
            "rules: archive pass (move the [report] half)",
            f"{archive:.2f} s",
            f"imapfilter {imapfilter:.2f} s",
            "≤ 0.7× imapfilter",
            _ratio(archive, imapfilter),
            ok=archive <= 0.7 * imapfilter,
        ),
        Row(
            "rules: same with a client-side regex on From",
            f"{regex:.2f} s",
            f"imapfilter {imapfilter:.2f} s",
            "≤ 1.0× imapfilter",
            _ratio(regex, imapfilter),
            ok=regex <= imapfilter,
        ),
    ]
    latency = re.search(r"p50 ([\d.]+) s\s+p99 ([\d.]+) s", out)
    if latency:
        rows.append(Row("rules: Postfix accept → webhook", f"p50 {latency[1]} s, p99 {latency[2]} s"))
    return rows


def rows_send(run: Run) -> list[Row]:
    out = run.out
    plain = float(_find(r"^smtplib loop.*median\s+([\d.]+)", out)[1])
    cli = float(_find(r"^postroom send \(CLI.*median\s+([\d.]+)", out)[1])
    daemon = float(_find(r"^postroom run \(daemon.*median\s+([\d.]+)", out)[1])
    anchor = f"smtplib loop {plain:.0f} msg/s"
    return [
        Row(
            "send: merge to Postfix accept, daemon",
            f"{daemon:.0f} msg/s",
            anchor,
            "≥ 1.5× the loop",
            _ratio(daemon, plain),
            ok=daemon >= 1.5 * plain,
        ),
        Row(
            "send: merge to Postfix accept, `postroom send`",
            f"{cli:.0f} msg/s",
            anchor,
            "≥ 1.3× the loop",
            _ratio(cli, plain),
            ok=cli >= 1.3 * plain,
        ),
    ]


def rows_other(run: Run) -> list[Row]:
    if run.table_path.exists():
        rows = []
        for item in json.loads(run.table_path.read_text()):
            rows.append(
                Row(
                    str(item["measure"]),
                    str(item["postroom"]),
                    str(item.get("anchor", "—")),
                    str(item.get("limit", "—")),
                    str(item.get("ratio", "—")),
                    ok=item.get("ok"),
                )
            )
        return rows
    return [Row(f"{run.name}", f"ran, exit 0 (its figures: {run.name}.out)")]


READERS: dict[str, Callable[[Run], list[Row]]] = {
    "startup": rows_startup,
    "footprint": rows_footprint,
    "rules": rows_rules,
    "send": rows_send,
}


def rows_of(run: Run) -> list[Row]:
    if run.code != 0:
        last = [line for line in run.out.strip().splitlines() if line.strip()][-1:] or ["no output"]
        why = f"exit {run.code}" if run.code is not None else "did not finish"
        rows = [Row(run.name, f"failed: {why}: {last[0][:100]}", ok=False)]
    else:
        try:
            rows = READERS.get(run.name, rows_other)(run)
        except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            rows = [Row(run.name, f"failed: output not understood ({exc})", ok=False)]
    for row in rows:
        row.load = run.load
    return rows


def table(rows: list[Row]) -> str:
    head = ["measure", "postroom", "anchor", "limit", "ratio", "load"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        mark = "" if r.ok is None else (" ✓" if r.ok else " ✗")
        lines.append(f"| {r.measure} | {r.postroom} | {r.anchor} | {r.limit} | {r.ratio}{mark} | {r.load} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated bench names (default: every one found)")
    parser.add_argument("--replicas", action="store_true", help="run bench/replicas too (PostgreSQL, slow)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter windows: a look, not a note")
    parser.add_argument("--port-offset", type=int, default=21000, help="the benches' labs' port offset")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for one bench before it counts as failed")
    parser.add_argument("--check", action="store_true", help="exit 1 when a limit is missed, not only on failure")
    args = parser.parse_args()

    wanted = [n.strip() for n in args.only.split(",")] if args.only else None
    if wanted is not None and set(wanted) & set(SKIPPED):
        parser.error(f"{', '.join(sorted(set(wanted) & set(SKIPPED)))}: not a bench for the table")
    names = wanted if wanted is not None else [n for n in benches() if n != "replicas" or args.replicas]
    rounds = ["--rounds", "1"] if args.quick else []
    extra: dict[str, list[str]] = {
        "startup": ["--rounds", "5" if args.quick else "20"],
        "footprint": ["--seconds", "15" if args.quick else "60"],
        "rules": [*rounds, *(["--latency", "50"] if args.quick else [])],
        "send": rounds,
        "replicas": rounds,
    }
    lab_benches = ("footprint", "rules", "send", "merge", "replicas")
    work = Path(tempfile.mkdtemp(prefix="pr-bench-all-"))
    rows: list[Row] = []
    try:
        for name in names:
            if not (HERE / name).exists():
                rows.append(Row(name, "failed: no such bench under bench/", ok=False))
                continue
            bench_args = list(extra.get(name, []))
            if name in lab_benches:
                # One after the other, each stopping its lab: one offset serves them all.
                bench_args += ["--port-offset", str(args.port_offset)]
            rows.extend(rows_of(run_bench(name, bench_args, work, args.timeout)))
    finally:
        print()
        print(f"bench/all, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
        print(table(rows))
        print(f"\neach bench's full output: {work}")
    failed = any(r.postroom.startswith("failed") for r in rows)
    missed = any(r.ok is False for r in rows)
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
