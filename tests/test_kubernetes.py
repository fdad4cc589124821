"""deploy/kubernetes: the manifests validate against Kubernetes' schemas (kubernetes-validate,
offline: the schemas ship in the package), every pod spec meets the Pod Security Standard
"restricted", and the Deployment says what postroom needs: liveness on /healthz and readiness
on /readyz, a stop grace that covers postroom's, the instance from the pod's name, secrets as
files, --no-migrate with a migration Job."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml
from postroom.app import STOP_TIMEOUT

from tests.support.kubernetes_manifests import KUBE, container, deployment, load, manifests

# The oldest Kubernetes the manifests are for (preStop `sleep` is on by default from 1.30),
# and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards).
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
# bench/footprint: the daemon's peak RSS (a 500-message merge); the request must cover it.
PEAK_RSS_MIB = 86


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version):
    validated = 0
    for path, doc in manifests(include_optional=False):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name}: {exc.message} at {list(exc.path)}") from None
        validated += 1
    assert validated >= 5


def test_the_kustomization_lists_every_manifest_and_generated_file():
    kustomization = load(KUBE / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml", "servicemonitor.yaml"}
    assert listed == on_disk
    generated = [f for gen in kustomization["configMapGenerator"] for f in gen["files"]]
    assert all((KUBE / f).is_file() for f in generated)
    templates = {f"config/templates/{p.name}" for p in (KUBE / "config" / "templates").iterdir()}
    assert templates <= set(generated)


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, doc in manifests(include_optional=False):
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield f"{path.name}:{doc['kind']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield path.name, doc["spec"]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Where a pod spec breaks the Pod Security Standard "restricted" (baseline included)."""
    found: list[str] = []
    pod_sc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"{key} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    containers = [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]
    for c in containers:
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {caps['add']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            found.append(f"{name}: AppArmor unconfined")
        # Not in the standard, but in the issue: nothing in the image can be changed.
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: readOnlyRootFilesystem must be true")
    return found


def test_every_pod_spec_meets_the_restricted_pod_security_standard():
    specs = dict(pod_specs())
    assert len(specs) == 2  # the replicas and the migration Job
    for where, pod in specs.items():
        assert restricted_violations(pod) == [], where


def test_the_restricted_check_catches_a_loose_pod():
    loose = {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    found = "\n".join(restricted_violations(loose))
    for expected in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsNonRoot",
                     "seccompProfile", "drop ALL", "SYS_ADMIN", "readOnlyRootFilesystem"):  # fmt: skip
        assert expected in found


def test_probes_liveness_on_healthz_readiness_on_readyz():
    c = container(deployment())
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # a restart for a database blip would restart every replica at once
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] != "/readyz"


def test_stop_grace_covers_postrooms_and_the_prestop_pause():
    pod = deployment()["spec"]["template"]["spec"]
    pause = container(deployment())["lifecycle"]["preStop"]["sleep"]["seconds"]
    # postroom exits within STOP_TIMEOUT after SIGTERM plus a moment to close the store
    assert pod["terminationGracePeriodSeconds"] >= pause + STOP_TIMEOUT + 10


def test_replicas_name_themselves_by_pod_and_never_migrate():
    d = deployment()
    assert d["spec"]["replicas"] >= 2
    c = container(d)
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTROOM_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["command"] == ["postroom"] and c["args"] == ["run", "--no-migrate"]
    job = next(doc for _, doc in manifests(include_optional=False) if doc["kind"] == "Job")
    assert container(job)["args"] == ["migrate"]
    assert container(job)["env"] == [e for e in c["env"] if e["name"] in {x["name"] for x in container(job)["env"]}]


def test_secrets_arrive_as_files_never_as_environment_values():
    for where, pod in pod_specs():
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        for c in pod["containers"]:
            assert "envFrom" not in c, where
            for e in c["env"]:
                assert "secretKeyRef" not in e.get("valueFrom", {}), f"{where}: {e['name']} from a secret value"
                if e["name"].endswith("_FILE"):
                    mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in secret_volumes]
                    assert any(e["value"].startswith(m + "/") for m in mounts), f"{where}: {e['name']}"
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)$", " ".join(e["name"] for e in c["env"]))


def test_resource_requests_cover_the_measured_footprint():
    resources = container(deployment())["resources"]
    assert _mib(resources["requests"]["memory"]) >= PEAK_RSS_MIB
    assert _mib(resources["limits"]["memory"]) >= 2 * PEAK_RSS_MIB


def test_the_optional_servicemonitor_honours_postrooms_job_label():
    (monitor,) = [doc for path, doc in manifests(include_optional=True) if doc["kind"] == "ServiceMonitor"]
    service = next(doc for _, doc in manifests(include_optional=False) if doc["kind"] == "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= _labels(service).items()
    assert all(endpoint["honorLabels"] is True for endpoint in monitor["spec"]["endpoints"])
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9325"


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    """The labels a resource has once kustomize added the common ones."""
    common = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["labels"][0]["pairs"]
    return {**doc["metadata"].get("labels", {}), **common}


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)
