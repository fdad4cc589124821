"""bench/footprint: what the daemon costs while it waits — peak RSS and CPU when idle.

`postroom run` with 50 jobs (cron schedules that don't fire in the window) and 10 IMAP
folders watched with IDLE (one rule each, on alice, against the lab's Dovecot). Once
/readyz says 200 (every watcher connected and idling, the scheduler running) each console
page is loaded once (POSTROOM_CONSOLE_TOKEN set: the console is on, its code imported and
its templates compiled), then the process is left alone for `--seconds` (default 60):
nothing is delivered, nothing scraped, no page open.

- CPU: utime + stime from /proc/PID/stat at the start and the end of the idle window, as a
  share of one core over the window's wall time.
- Peak RSS: VmHWM from /proc/PID/status at the end of the window (the high-water mark of the
  process's whole life, start-up included); VmRSS beside it.

The daemon runs from a runtime-only install, what users get: the bench builds a venv of its
own in the temporary directory (`python -m venv`, then `pip install -c deploy/constraints.txt
.` from this checkout: no dev or test extras, so no trio, pygments or pytest riding along),
untimed. `--dev-venv` runs the checkout's .venv instead (quicker, heavier).

The jobs use a one-paragraph template of the bench's own (beside the project's layout.j2).

Run: bench/footprint [--seconds 60] [--port-offset 23000] [--check] [--keep] [--dev-venv] [--json FILE]
`--check` exits 1 unless peak RSS <= 64 MiB and CPU <= 0.2 % of one core (issue 22).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests' helpers are not installed: import them from this checkout (hence the E402s below).
sys.path.insert(0, str(ROOT))

from tests.lab import LabPorts, MailLab  # noqa: E402
from tests.lab.maildir import ensure_folder  # noqa: E402
from tests.support.daemon import ACCOUNT_CONFIG, POSTROOM, free_port, postroom_env  # noqa: E402

JOBS = 50
FOLDERS = 10
MAX_RSS_MIB = 64.0
MAX_CPU_PERCENT = 0.2
READY_TIMEOUT = 60.0
CONSOLE_TOKEN = "footprint-bench-console-token"
CONSOLE_PAGES = ("/", "/jobs", "/outbox", "/mailboxes", "/webhooks")

# 05:00 on 1 January: no fire while the bench runs (unless run then; the numbers would show it).
JOB = """\
  job{i:02d}:
    schedule: {{cron: "{minute} 5 1 1 *"}}
    account: alice
    template: idle
    to: [bob@example.test]
"""
RULE = """\
  - name: watch{i:02d}
    account: alice
    folder: Watch{i:02d}
    match: {{subject: {{contains: "[watch{i:02d}]"}}}}
    actions: [{{flag: "\\\\Flagged"}}]
"""


def config_text(lab: MailLab) -> str:
    jobs = "".join(JOB.format(i=i, minute=i) for i in range(JOBS))
    rules = "".join(RULE.format(i=i) for i in range(FOLDERS))
    return ACCOUNT_CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap) + "jobs:\n" + jobs + "rules:\n" + rules


IDLE_TEMPLATE = """\
{% extends "layout.j2" %}
{% block subject %}Nothing new on {{ today }}{% endblock %}
{% block content %}<p>Nothing to report for {{ job }} on {{ today }}.</p>{% endblock %}
"""


def runtime_install(where: Path, source: Path = ROOT) -> list[str]:
    """A venv with postroom as users install it (runtime dependencies only, the tested
    versions): the command to start it. ``source``: another checkout (an older commit's
    tree, for a before/after in one sitting)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-input"]
    done = subprocess.run(
        [*pip, "-c", str(ROOT / "deploy" / "constraints.txt"), str(source)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pip install of the checkout failed:\n{done.stderr[-3000:]}")
    return [str(where / "bin" / "postroom")]


def templates_dir(workdir: Path) -> Path:
    folder = workdir / "templates"
    folder.mkdir()
    shutil.copy(ROOT / "templates" / "layout.j2", folder / "layout.j2")
    (folder / "idle.j2").write_text(IDLE_TEMPLATE)
    return folder


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"/readyz not 200 within {READY_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def open_console(port: int) -> None:
    """Each console page once (its code imported, its template compiled): the peak counts them."""
    for path in CONSOLE_PAGES:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != 200:
                raise SystemExit(f"console page {path}: HTTP {response.status}")


def measure(lab: MailLab, workdir: Path, seconds: float, postroom: list[str]) -> dict[str, float]:
    (workdir / "postroom.yaml").write_text(config_text(lab))
    port = free_port()
    env = postroom_env(
        lab,
        workdir,
        POSTROOM_HTTP=f"127.0.0.1:{port}",
        POSTROOM_CONSOLE_TOKEN=CONSOLE_TOKEN,
        POSTROOM_TEMPLATES=str(templates_dir(workdir)),
    )
    if postroom != POSTROOM:  # the runtime install: nothing from this checkout on the path
        env.pop("PYTHONPATH", None)
    log = workdir / "daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*postroom, "run"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            ready_after = wait_ready(port, proc, log)
            open_console(port)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            mem = memory_kib(proc.pid)
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited during the window:\n{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.terminate()
            code = proc.wait(30)
    if code != 0:
        raise SystemExit(f"daemon exited {code} on SIGTERM:\n{log.read_text()[-3000:]}")
    return {
        "ready_s": ready_after,
        "window_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
        "hwm_mib": mem["VmHWM"] / 1024,
        "rss_mib": mem["VmRSS"] / 1024,
        "threads": mem["Threads"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window after readiness")
    parser.add_argument("--port-offset", type=int, default=23000, help="the bench lab's port offset")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless peak RSS <= {MAX_RSS_MIB:.0f} MiB and CPU <= {MAX_CPU_PERCENT} %%",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, lab)")
    parser.add_argument("--dev-venv", action="store_true", help="run the checkout's .venv, not a runtime install")
    parser.add_argument("--install-from", type=Path, default=ROOT, help="the checkout to install (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the figures and verdicts here (for bench/all)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pr-footprint-"))
    base.chmod(0o755)  # the mail uid must reach the lab inside it
    lab = MailLab(base / "lab", LabPorts().offset(args.port_offset))
    try:
        postroom = POSTROOM if args.dev_venv else runtime_install(base / "venv", args.install_from)
        lab.start()
        for i in range(FOLDERS):
            ensure_folder(lab.layout.maildir("alice"), f"Watch{i:02d}")
        workdir = base / "work"
        workdir.mkdir()
        print(
            f"postroom run: {JOBS} jobs, {FOLDERS} IMAP folders watched (IDLE); idle {args.seconds:.0f} s "
            f"after /readyz 200"
        )
        m = measure(lab, workdir, args.seconds, postroom)
    finally:
        lab.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    rss_ok = m["hwm_mib"] <= MAX_RSS_MIB
    cpu_ok = m["cpu_percent"] <= MAX_CPU_PERCENT
    install = "the checkout's .venv" if args.dev_venv else "a runtime-only install"
    print(f"ready after {m['ready_s']:.1f} s; {m['threads']:.0f} threads; {install}")
    print(
        f"peak RSS (VmHWM) {m['hwm_mib']:.1f} MiB (now {m['rss_mib']:.1f} MiB)   "
        f"limit {MAX_RSS_MIB:.0f} MiB   {'ok' if rss_ok else 'OVER'}"
    )
    print(
        f"CPU {m['cpu_percent']:.2f} % of one core ({m['cpu_s']:.2f} s in {m['window_s']:.1f} s)   "
        f"limit {MAX_CPU_PERCENT:g} %   {'ok' if cpu_ok else 'OVER'}"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    **m,
                    "install": install,
                    "limits": {"hwm_mib": MAX_RSS_MIB, "cpu_percent": MAX_CPU_PERCENT},
                    "ok": {"hwm_mib": rss_ok, "cpu_percent": cpu_ok},
                },
                indent=2,
            )
        )
    if args.check and not (rss_ok and cpu_ok):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
