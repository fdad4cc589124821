"""The Kubernetes Deployment as three local processes: each runs the manifest's exact command,
arguments and environment (the pod name from the downward API, secrets as files, config and
templates where the volumes mount them — mapped to folders of this test), on PostgreSQL and
the lab, after the migration Job's own command. Then a rolling restart as the Deployment's
strategy does it (maxSurge 1, maxUnavailable 0): a new pod started and ready by the
manifest's probes, then an old one stopped — its preStop pause, then SIGTERM — in turn, while
a job sends every 2 s and mail keeps arriving for the rules. Nothing is lost, nothing repeated:
each queued message arrives exactly once (counted by Message-ID) and each incoming message's
webhook is delivered exactly once.

The one change to the manifest: each process listens on a port of its own (pods each have
their own network; three local processes share one).
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.daemon import DataServer, free_port, mail, wait_until
from tests.support.kubernetes_manifests import container, deployment, manifests

CONFIG = """\
accounts:
  alice:
    address: alice@example.test
    smtp: {{host: 127.0.0.1, port: {smtp}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap}, security: starttls, username: alice@example.test,
           password: "${{ALICE_PASSWORD}}", start_from: all}}
jobs:
  tick:
    schedule: {{every: 2s}}
    account: alice
    template: tick
    to: [bob@example.test]
rules:
  - name: hooks
    account: alice
    folders: [INBOX, f1, f2]
    match: {{}}
    actions: [{{webhook: {{url: "{hooks}/hook", secret: "${{HOOK_SECRET}}"}}}}]
"""
TICK = """\
{% block subject %}tick {{ fire_time.isoformat() }}{% endblock %}
{% block text %}A scheduled message.{% endblock %}
"""
FOLDERS = ("INBOX", "f1", "f2")
LEASE = "4"  # seconds, as the other replica tests: a dead replica's work moves within a few


class Pod:
    """One replica: the container's command and environment, as the kubelet would run it."""

    def __init__(self, name: str, spec: dict[str, Any], volumes: dict[str, Path], extra_env: dict[str, str], log: Path):
        c = container(spec)
        self.name, self.port, self.log = name, free_port(), log
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(log.parent), **extra_env}
        for var in c["env"]:
            env[var["name"]] = self._value(var, volumes, c)
        env["POSTROOM_HTTP"] = f"127.0.0.1:{self.port}"  # the one change: a port per process
        self.env = env
        self.probes = {kind: c[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")}
        self.pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        self.grace = spec["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        command = [shutil.which(c["command"][0], path=env["PATH"]) or c["command"][0], *c["command"][1:]]
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(
            [*command, *c.get("args", [])], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def _value(self, var: dict[str, Any], volumes: dict[str, Path], c: dict[str, Any]) -> str:
        field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field is not None:
            assert field == "metadata.name", field
            return self.name
        return local(str(var["value"]), c, volumes)

    def probe(self, kind: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{self.probes[kind]}", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return self.probe("livenessProbe") and self.probe("readinessProbe")

        wait_until(ready, timeout, f"{self.name} live and ready")

    def stop(self) -> None:
        """As the kubelet stops a pod: the preStop pause, SIGTERM, SIGKILL after the grace."""
        time.sleep(self.pause)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(self.grace - self.pause)
        finally:
            self._out.close()
        assert code == 0, f"{self.name} exited {code}: {self.log.read_text()[-3000:]}"


@pytest.fixture
def hooks():
    server = DataServer()
    yield server
    server.close()


@pytest.mark.timeout(600)
def test_a_rolling_restart_of_the_deployment_loses_and_repeats_nothing(tmp_path, clean_lab, pg_url, hooks):
    lab = clean_lab
    for folder in FOLDERS[1:]:
        lab.doveadm("mailbox", "create", "-u", "alice", folder)
    spec = deployment()
    volumes = {v["name"]: tmp_path / "volumes" / v["name"] for v in spec["spec"]["template"]["spec"]["volumes"]}
    for folder in volumes.values():
        folder.mkdir(parents=True)
    # The ConfigMaps' and the Secret's keys, as files in their volumes.
    (volumes["config"] / "postroom.yaml").write_text(
        CONFIG.format(smtp=lab.ports.smtp, imap=lab.ports.imap, hooks=hooks.url)
    )
    (volumes["templates"] / "tick.j2").write_text(TICK)
    secrets = {"POSTROOM_DATABASE_URL": pg_url, **{k: v for k, v in lab.env().items() if k != "SSL_CERT_FILE"}}
    for key, value in secrets.items():
        (volumes["secrets"] / key).write_text(value)
    # What the cluster gives every pod besides the manifest: its CA bundle (the lab's), and
    # the test-sized lease of the other replica tests.
    cluster = {"SSL_CERT_FILE": lab.env()["SSL_CERT_FILE"], "POSTROOM_LEASE_SECONDS": LEASE}
    cluster["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # the checkout, not an installed copy

    migrate(tmp_path, volumes, cluster)
    pods: dict[str, Pod] = {}
    generation = iter(range(1, 100))

    def start() -> Pod:
        name = f"postroom-{next(generation)}"
        pod = Pod(name, spec, volumes, cluster, tmp_path / f"{name}.log")
        pods[name] = pod
        pod.wait_ready()
        return pod

    subjects: list[str] = []

    def incoming(round_: int) -> None:
        with lab.imap_client("alice") as client:
            for folder in FOLDERS:
                subject = f"[hook] {round_} {folder}"
                client.append(folder, mail("carol@example.test", "alice@example.test", subject).as_bytes())
                subjects.append(subject)

    try:
        running = [start() for _ in range(spec["spec"]["replicas"])]
        incoming(0)
        stops: list[datetime] = []
        for round_, old in enumerate(list(running), start=1):
            new = start()  # maxSurge 1: the new pod is ready before an old one goes
            incoming(round_)
            stops.append(datetime.now(UTC))
            old.stop()
            running = [*[p for p in running if p is not old], new]
            incoming(round_ + 10)
        wait_until(lambda: len(hooks.posts) >= len(subjects), 60, "every incoming message's webhook")
        for pod in running:
            pod.stop()
    finally:
        for pod in pods.values():
            if pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait(10)

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            queued = {row.message_id: row.status for row in conn.execute(text("SELECT message_id, status FROM outbox"))}
            fires = conn.execute(
                text("SELECT fire_time, status FROM fire_claims WHERE job_id = 'tick' ORDER BY fire_time")
            ).all()
    finally:
        engine.dispose()
    # No fire lost: one every 2 s from before the first stop to after the last, each run once.
    assert fires and fires[0].fire_time <= stops[0] and fires[-1].fire_time >= stops[-1], "fired all along the rollout"
    assert {(b.fire_time - a.fire_time).total_seconds() for a, b in itertools.pairwise(fires)} == {2.0}
    assert {f.status for f in fires[:-3]} == {"done"}, Counter(f.status for f in fires)
    # Every message sent arrived once; what the last stop handed back waits in the store.
    sent = {mid.strip("<>") for mid, status in queued.items() if status == "sent"}
    assert set(queued.values()) <= {"sent", "queued"} and len(queued) - len(sent) <= 3, Counter(queued.values())
    delivered = Counter(
        str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]).strip("<>")
        for raw in lab.wait_for_messages("bob", len(sent), timeout=30)
    )
    assert set(delivered) == sent, "lost or foreign messages"
    assert max(delivered.values()) == 1, f"repeated: {[m for m, n in delivered.items() if n > 1]}"
    by_subject = Counter(json.loads(body)["subject"] for _, body in hooks.posts)
    assert sorted(by_subject) == sorted(subjects)
    assert max(by_subject.values()) == 1, "a webhook repeated"


def migrate(tmp_path: Path, volumes: dict[str, Path], cluster: dict[str, str]) -> None:
    """The migration Job's command with its environment (its volumes are the Deployment's)."""
    job = next(doc for _, doc in manifests(include_optional=False) if doc["kind"] == "Job")
    c = container(job)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), **cluster}
    for var in c["env"]:
        env[var["name"]] = local(str(var["value"]), c, volumes)
    command = [shutil.which(c["command"][0], path=env["PATH"]) or c["command"][0], *c["args"]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def local(value: str, c: dict[str, Any], volumes: dict[str, Path]) -> str:
    """A path inside one of the container's mounts: the same path in that volume's folder here."""
    for mount in c.get("volumeMounts", []):
        if value == mount["mountPath"] or value.startswith(mount["mountPath"] + "/"):
            return str(volumes[mount["name"]]) + value.removeprefix(mount["mountPath"])
    return value
