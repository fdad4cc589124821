"""bench/merge: a mail merge's dry run (`postroom send JOB --dry-run`) at two sizes, time and peak RSS.

A for_each job over an N-row SQLite table rendered with templates/statement.j2 (HTML layout,
CSS inlined, text part derived from the html), printed by `send --dry-run` to /dev/null. Each
run is a fresh process timed from spawn to exit; its peak RSS is ``ru_maxrss`` from wait4().
No store, no mail servers: this measures loading rows, rendering, composing and printing.

``--before REF`` runs the same project with the code of git revision REF too (its
``service/`` exported with `git archive` into a temporary directory and put first on
PYTHONPATH), interleaved with this checkout in every round, so both sides share one sitting.

Run: bench/merge [--rows 10000,100000] [--rounds 3] [--before REF]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
RUN_CLI = "import sys; from postroom.cli import main; sys.argv[0] = 'postroom'; main()"

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: 25, security: none}}
jobs:
  merge:
    schedule: {{cron: "0 6 1 * *"}}
    account: alice
    template: statement
    for_each: customers
    to: ["{{{{ row.email }}}}"]
    data:
      customers: {{sql: "SELECT name, email, balance FROM customers", database: "sqlite:///{db}"}}
"""


def seed(db: Path, rows: int) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE customers (name TEXT, email TEXT, balance REAL)")
        con.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            ((f"Customer {i:06d}", f"c{i}@example.test", (i % 7 - 3) * 12.5 + i) for i in range(rows)),
        )
    con.close()


def export(ref: str, into: Path) -> Path:
    """REF's service/ tree in ``into``; returns the directory to put on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "service"], check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "service"


def dry_run(work: Path, code: Path, rows: int) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one `postroom send merge --dry-run` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(
        POSTROOM_CONFIG=str(work / f"postroom-{rows}.yaml"),
        POSTROOM_TEMPLATES=str(ROOT / "templates"),
        POSTROOM_STATE_DIR=str(work / "state"),
        PYTHONPATH=str(code),
    )
    err = work / "stderr.txt"
    with err.open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(PYTHON), "-c", RUN_CLI, "send", "merge", "--dry-run"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=work,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = err.read_text(errors="replace")
    made = text.count("--- message ")
    if proc.returncode != 0 or made != rows:
        raise SystemExit(f"dry run of {rows} rows ({code}): exit {proc.returncode}, {made} messages\n{text[-2000:]}")
    return seconds, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000", help="comma-separated row counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", metavar="REF", help="also measure git revision REF, interleaved")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        work = Path(tmp)
        sides = {"after": ROOT / "service"}
        if args.before:
            sides = {"before": export(args.before, work / "before"), **sides}
        for rows in sizes:
            seed(work / f"rows-{rows}.db", rows)
            (work / f"postroom-{rows}.yaml").write_text(CONFIG.format(db=work / f"rows-{rows}.db"))
        results: dict[tuple[str, int], list[tuple[float, int]]] = {}
        for round_no in range(args.rounds):
            order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
            for rows in sizes:
                for side in order:
                    seconds, rss = dry_run(work, sides[side], rows)
                    results.setdefault((side, rows), []).append((seconds, rss))
                    print(f"round {round_no + 1}: {side:6} {rows:>7} rows  {seconds:7.2f} s  {rss / 1024:6.1f} MiB")
        print()
        print(f"{'side':6} {'rows':>7}  {'median s':>8}  {'ms/row':>7}  {'peak MiB':>8}")
        medians: dict[tuple[str, int], float] = {}
        for (side, rows), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            seconds = statistics.median(s for s, _ in runs)
            rss = max(r for _, r in runs) / 1024
            medians[side, rows] = seconds
            print(f"{side:6} {rows:>7}  {seconds:8.2f}  {seconds / rows * 1000:7.3f}  {rss:8.1f}")
        if args.before:
            for rows in sizes:
                print(f"after/before at {rows} rows: {medians['after', rows] / medians['before', rows]:.2f}x time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
