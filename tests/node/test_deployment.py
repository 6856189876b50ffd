"""The shipped Deployment as a pod on a real node: image, securityContext, ServiceAccount, RBAC, probes.

deploy/ is rendered with kustomize and tests/node/overlay (image, hostNetwork, API server address
only), applied server-side, scheduled by kube-scheduler and run by kubelet through containerd and
runc. What the pod really got is read from the kernel (/proc of the container's process), not
from the pod spec, and the probes' results from kubelet's own prober metrics.
"""

from __future__ import annotations

import re
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from testbed.kube import ControlPlane

from .conftest import NAMESPACE, PROBES, DeployedOperator

pytestmark = pytest.mark.slow

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def container_pid(operator: DeployedOperator) -> int:
    """The host PID of the operator container's first process, as containerd reports it."""
    container_id = operator.pod.status.container_statuses[0].container_id.removeprefix("containerd://")
    for line in operator.node.ctr("tasks", "ls").splitlines()[1:]:
        task, pid, _status = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"containerd runs no task for container {container_id}")


def in_container(pid: int, path: str) -> Path:
    """``path`` as the container sees it, through /proc/PID/root, following its absolute symlinks there."""
    root = Path(f"/proc/{pid}/root")
    resolved = root
    for part in Path(path).parts[1:]:
        candidate = resolved / part
        while candidate.is_symlink():
            target = Path(candidate.readlink())
            candidate = root / target.relative_to("/") if target.is_absolute() else candidate.parent / target
        resolved = candidate
    return resolved


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError("the container has no root mount")


def test_pod_runs_with_the_deployments_own_security_context(deployed_operator: DeployedOperator) -> None:
    pid = container_pid(deployed_operator)
    status = proc_status(pid)
    assert status["Uid"].split() == ["10001"] * 4
    assert status["Gid"].split() == ["10001"] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, f"{capabilities} = {status[capabilities]}"
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "2"  # a filter: seccompProfile RuntimeDefault
    assert "ro" in root_mount_options(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"/opt/vtpm-operator/bin/vtpm-operator" in cmdline
    assert deployed_operator.pod.spec.node_name == deployed_operator.node.name
    # ...and that is what the shipped Deployment asks for, not something the overlay added.
    shipped = deployed_operator.deployment["spec"]["template"]["spec"]
    assert shipped["securityContext"]["runAsUser"] == 10001
    assert shipped["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert shipped["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_pod_has_its_own_service_account_token_mounted_by_kubelet(
    deployed_operator: DeployedOperator, kube_api: client.ApiClient, control_plane: ControlPlane
) -> None:
    pid = container_pid(deployed_operator)
    token = in_container(pid, f"{SERVICE_ACCOUNT_DIR}/token").read_text()
    assert in_container(pid, f"{SERVICE_ACCOUNT_DIR}/namespace").read_text() == NAMESPACE
    assert in_container(pid, f"{SERVICE_ACCOUNT_DIR}/ca.crt").read_text() == control_plane.ca_file.read_text()
    review = client.AuthenticationV1Api(kube_api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{NAMESPACE}:vtpm-operator"


def kubelet_probe_counts(operator: DeployedOperator) -> dict[tuple[str, str], float]:
    """(probe type, result) → count for the operator's container, from kubelet's /metrics/probes."""
    serving_cert = operator.node.workdir / "kubelet" / "pki" / "kubelet.crt"
    context = ssl.create_default_context(cafile=str(serving_cert))
    context.check_hostname = False  # kubelet's self-signed serving certificate names the node, not 127.0.0.1
    url = f"https://127.0.0.1:{operator.node.kubelet_port}/metrics/probes"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("prober_probe_total{") and f'pod="{operator.pod.metadata.name}"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels["probe_type"], labels["result"])] = float(line.rsplit(" ", 1)[1])
    return counts


def probe_failures(counts: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: n for key, n in counts.items() if key[1] != "successful" and n > 0}


def shipped_probes(operator: DeployedOperator) -> dict[str, dict[str, Any]]:
    container = operator.deployment["spec"]["template"]["spec"]["containers"][0]
    return {name.removesuffix("Probe").capitalize(): container[name] for name in PROBES if name in container}


def test_the_deployments_probes_pass_as_kubelet_runs_them(
    deployed_operator: DeployedOperator, kube_api: client.ApiClient
) -> None:
    """Liveness never fails. Readiness may fail before its first success (kubelet probes it at once,
    before the health port listens: that is "not ready yet"), and never after."""
    probes = shipped_probes(deployed_operator)
    assert "Liveness" in probes, "the shipped Deployment has no liveness probe"
    longest = max(p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) for p in probes.values())
    deadline = time.monotonic() + longest + 30
    counts = kubelet_probe_counts(deployed_operator)
    while not all(counts.get((kind, "successful"), 0) >= 1 for kind in probes):
        assert counts.get(("Liveness", "failed"), 0) == 0, f"liveness failed: {counts}"
        assert time.monotonic() < deadline, f"kubelet's probe results so far: {counts}"
        time.sleep(2)
        counts = kubelet_probe_counts(deployed_operator)
    failures_once_ready = probe_failures(counts)
    time.sleep(max(p.get("periodSeconds", 10) for p in probes.values()) + 2)  # one more round of each
    counts = kubelet_probe_counts(deployed_operator)
    assert probe_failures(counts) == failures_once_ready, f"probes failed once ready: {counts}"
    assert counts.get(("Liveness", "failed"), 0) == 0, f"liveness failed: {counts}"
    assert all(counts[(kind, "successful")] >= 2 for kind in probes), counts
    pod = client.CoreV1Api(kube_api).read_namespaced_pod(deployed_operator.pod.metadata.name, NAMESPACE)
    assert pod.status.container_statuses[0].restart_count == 0
    assert pod.status.container_statuses[0].ready is True
    assert '"GET /healthz HTTP/1.1" 200' in deployed_operator.container_log()


def test_operator_starts_with_its_rbac_and_logs_no_error(deployed_operator: DeployedOperator) -> None:
    # Kopf logs its login, then lists and watches namespaces, CRDs and policies cluster-wide: a
    # missing rule shows up as a 403 in this log within seconds.
    time.sleep(5)
    log = deployed_operator.container_log()
    assert "Initial authentication has finished" in log, log
    for sign in ("Forbidden", " 403", "Traceback", "[ERROR"):
        assert sign not in log, f"{sign!r} in the operator's log:\n{log}"
