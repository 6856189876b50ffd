"""Admin-owned VCenters: admitted namespaces, no credentials before proof, one engine per vCenter."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.decoy import running_decoy
from testbed.fleet import VMSpec, build_fleet
from testbed.kube import ControlPlane
from testbed.vcsim import Simulator, running_simulator

from .conftest import Cluster, condition, policy_manifest, summary

pytestmark = pytest.mark.slow


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return condition(obj, "Ready")


def wait_vcenter(cluster: Cluster, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = cluster.vcenter_object(name)
        if ready(obj).get("reason") == reason:
            return obj
        time.sleep(0.5)
    raise AssertionError(f"VCenter {name} never {reason}: {obj.get('status')}")


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_a_namespace_the_vcenter_does_not_admit_reads_nothing(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vcenter = cluster.vcenter(simulator, allowedNamespaces={"names": ["someone-else"]})
    cluster.apply(policy_manifest("outsider", vcenter))
    simulator.admin.reset_call_counts()
    run_operator()

    policy = cluster.wait_for("outsider", lambda p: ready(p).get("reason") == "NamespaceNotAllowed")
    assert condition(policy, "Stalled")["status"] == "True"
    assert cluster.namespace in ready(policy)["message"]
    assert ready(wait_vcenter(cluster, vcenter, "Connected"))["status"] == "True"
    time.sleep(3)  # longer than a tag refresh (2 s): nothing is read for the policy meanwhile either
    counts = simulator.admin.call_counts()
    never = ("WaitForUpdatesEx", "CreateContainerView", "HasPrivilegeOnEntities")
    assert {op: counts[op] for op in never if counts.get(op)} == {}
    assert not any("tagging" in op for op in counts), counts
    # One read, of the custom attribute definitions (is any power-on owed on this vCenter?), no VM.
    assert counts.get("RetrievePropertiesEx", 0) == 1, counts

    # Admitting the namespace (by label) lets the same policy work without a restart.
    cluster.kubectl("label", "namespace", cluster.namespace, "vsphere.example.com/prod=true")
    selector = {"names": [], "selector": {"matchLabels": {"vsphere.example.com/prod": "true"}}}
    cluster.kubectl(
        "patch",
        "vcenter",
        vcenter,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"allowedNamespaces": selector}}),
    )
    admitted = cluster.wait_for("outsider", lambda p: ready(p).get("status") == "True", timeout=60)
    assert summary(admitted)["compliant"] == 1


@pytest.fixture
def esx_host(tmp_path: Path, _vcsim_binary: Path, _vcsim_tls: tuple[Path, Path, Path]) -> Iterator[Simulator]:
    with running_simulator(tmp_path / "esx", binary=_vcsim_binary, tls=_vcsim_tls, esx=True) as sim:
        yield sim


def test_no_credentials_reach_a_server_that_is_not_a_vcenter(
    cluster: Cluster,
    run_operator: Any,
    esx_host: Simulator,
    tmp_path: Path,
    _vcsim_tls: tuple[Path, Path, Path],
) -> None:
    ca = _vcsim_tls[0]
    with running_decoy(tmp_path / "decoy", ca=ca, ca_key=ca.with_name("ca.key")) as decoy:
        esx = cluster.vcenter(esx_host, name=f"{cluster.namespace}-esx")
        web = cluster.vcenter(esx_host, name=f"{cluster.namespace}-web", server=decoy.server)
        cluster.apply(policy_manifest("on-esx", esx))
        esx_host.admin.reset_auth_counters()
        run_operator()

        for name in (esx, web):
            obj = wait_vcenter(cluster, name, "NotVCenter")
            assert condition(obj, "Stalled")["status"] == "True"
        assert "HostAgent" in ready(cluster.vcenter_object(esx))["message"]
        policy = cluster.wait_for("on-esx", lambda p: ready(p).get("reason") == "NotVCenter")
        assert condition(policy, "Stalled")["status"] == "True"
        time.sleep(4)  # a retry or two more: still nothing

        counters = esx_host.admin.auth_counters()
        assert (counters.soap_login_attempts, counters.rest_login_attempts, counters.password_seen) == (
            0,
            0,
            0,
        )
        received = decoy.requests()
        assert received, "the decoy saw no request at all: the test would prove nothing"
        assert not decoy.received(esx_host.password)
        assert not any(r.header("Authorization") for r in received)
        assert not any(b"Login" in r.body for r in received)


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_two_vcenter_objects_for_one_vcenter(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    build_fleet(simulator, [VMSpec("a")])
    simulator.admin.reset_call_counts()
    first = cluster.vcenter(simulator, name=f"{cluster.namespace}-first")
    time.sleep(1.1)  # creationTimestamp has whole seconds: the second is later for sure
    second = cluster.vcenter(
        simulator, name=f"{cluster.namespace}-second", server=f"localhost:{simulator.port}"
    )
    cluster.apply(policy_manifest("via-first", first))
    cluster.apply(policy_manifest("via-second", second))
    run_operator()

    duplicate = wait_vcenter(cluster, second, "DuplicateVCenter")
    assert first in ready(duplicate)["message"]
    assert ready(wait_vcenter(cluster, first, "Connected"))["status"] == "True"
    assert cluster.vcenter_object(first)["status"]["instanceUuid"]
    cluster.wait_for("via-first", lambda p: ready(p).get("status") == "True")
    acting_on_nothing = cluster.wait_for("via-second", lambda p: ready(p).get("reason") == "DuplicateVCenter")
    assert "matched" not in (acting_on_nothing["status"].get("summary") or {})
    assert simulator.admin.call_counts().get("ReconfigVM_Task") == 1  # one VM, changed once

    columns = cluster.kubectl("get", "vc", first).stdout.split("\n")[0].split()
    assert columns[:1] == ["NAME"] and {"SERVER", "READY", "VERSION", "POLICIES", "VMS", "AGE"} <= set(
        columns
    )


def _service_account_kubeconfig(cluster: Cluster, control_plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig with the token that the controller-manager minted for the shipped ServiceAccount."""
    core = client.CoreV1Api(cluster.api)
    deadline = time.monotonic() + 30
    while True:
        account = core.read_namespaced_service_account("vtpm-operator", cluster.namespace)
        if account.secrets:
            break
        assert time.monotonic() < deadline, "no token for the ServiceAccount"
        time.sleep(0.5)
    secret = core.read_namespaced_secret(account.secrets[0].name, cluster.namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    admin = yaml.safe_load(control_plane.kubeconfig.read_text())
    cluster_entry = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster_entry],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster_entry["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_the_shipped_service_account_is_enough(
    simulator: Simulator,
    cluster: Cluster,
    control_plane: ControlPlane,
    crd_installed: str,
    tmp_path: Path,
    kubectl: Any,
) -> None:
    """Every handler, the engine, the status writer, events and leases, with the shipped RBAC only,
    the operator watching all namespaces as the Deployment runs it."""
    repo = Path(__file__).resolve().parents[2]
    unique = f"vtpm-operator-{cluster.namespace}"
    rendered = kubectl("kustomize", str(repo / "deploy")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    for doc in docs:
        if doc["kind"] not in wanted or doc["metadata"]["name"] != "vtpm-operator":
            continue
        doc["metadata"].pop("namespace", None)
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] = unique
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = unique
        for subject in doc.get("subjects") or []:
            subject["namespace"] = cluster.namespace
        kubectl("apply", "-n", cluster.namespace, "-f", "-", input=yaml.safe_dump(doc))
    try:
        fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b", powered_on=True)])
        vcenter = cluster.vcenter(simulator)
        cluster.apply(policy_manifest("as-deployed", vcenter))
        kubeconfig = _service_account_kubeconfig(cluster, control_plane, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator-sa.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(Path(os.sys.executable).with_name("vtpm-operator")), "run", "--all-namespaces",
                 "--operator-namespace", cluster.namespace, "--metrics-port", "0", "--tag-refresh", "2s"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )  # fmt: skip
        try:
            policy = cluster.wait_for("as-deployed", lambda p: summary(p).get("compliant") == 1, timeout=90)
            assert summary(policy)["blocked"] == 1
            assert ready(wait_vcenter(cluster, vcenter, "Connected"))["status"] == "True"
            assert {e.reason for e in cluster.events()} >= {"VTPMAdded", "VMsBlocked"}
            leases = client.CoordinationV1Api(cluster.api).list_namespaced_lease(cluster.namespace).items
            assert any(lease.spec.holder_identity for lease in leases)
            assert fleet.ids["a"]
            text = log.read_text(errors="replace")
            assert " 403" not in text and "Forbidden" not in text, text[-3000:]
        finally:
            process.terminate()
            process.wait(timeout=40)
    finally:
        kubectl("delete", "clusterrolebinding", unique, "--ignore-not-found")
        kubectl("delete", "clusterrole", unique, "--ignore-not-found")
