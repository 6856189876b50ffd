"""The operator in its pod reconciles a policy against the simulator: the proof that image, RBAC and
network path work together (Secrets read, vCenter reached on 127.0.0.1 from the hostNetwork pod,
status and events written with the pod's own ServiceAccount).

``apply_policy`` is the one place that knows the API's shape: the VCenter's Secrets in the
operator's namespace (the pod's own, from POD_NAMESPACE), the cluster-scoped VCenter, and a team's
policy naming it.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pyVmomi import vim

from testbed.fleet import VMSpec, build_fleet
from testbed.vcsim import Simulator, connect, disconnect, retrieve_one

from ..conftest import Kubectl
from ..e2e.conftest import Cluster, condition, policy_manifest, settled, vm_rows
from .conftest import NAMESPACE as OPERATOR_NAMESPACE
from .conftest import DeployedOperator

pytestmark = pytest.mark.slow

READY_VM = VMSpec("win11-ready")
BIOS_VM = VMSpec("win10-bios", guest="windows9_64Guest", firmware="bios")


def apply_policy(cluster: Cluster, sim: Simulator, name: str) -> None:
    """The VCenter (Secrets in the operator's namespace) and a policy for the fleet's tags."""
    operator_side = Cluster(cluster.kubectl, cluster.api, OPERATOR_NAMESPACE)
    vcenter = operator_side.vcenter(sim, name=f"{cluster.namespace}-vc")
    cluster.vcenters.append(vcenter)
    cluster.apply(policy_manifest(name, vcenter))


def has_vtpm(sim: Simulator, vm_id: str) -> bool:
    si = connect(sim)
    try:
        devices = retrieve_one(si, vim.VirtualMachine(vm_id, si._stub), ["config.hardware.device"])
    finally:
        disconnect(si)
    return any(isinstance(d, vim.vm.device.VirtualTPM) for d in devices["config.hardware.device"])


def delete_and_wait(cluster: Cluster, name: str, timeout: float = 60) -> None:
    """Delete the policy and its VCenter while the operator still runs (nothing waits on them)."""
    cluster.kubectl("delete", "vtpm", name, "-n", cluster.namespace, "--wait=false")
    api = client.CustomObjectsApi(cluster.api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.get_namespaced_custom_object(
                "vtpm-operator.io", "v1alpha1", cluster.namespace, "vtpmpolicies", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.5)
    raise AssertionError(f"policy {name} still there {timeout}s after deletion")


def delete_vcenters(cluster: Cluster) -> None:
    for vcenter in cluster.vcenters:
        cluster.kubectl("delete", "vcenter", vcenter, "--ignore-not-found", "--wait=false")


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_the_pod_reconciles_a_policy_against_the_simulator(
    deployed_operator: DeployedOperator,
    simulator: Simulator,
    kubectl: Kubectl,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    fleet = build_fleet(simulator, [READY_VM, BIOS_VM])
    cluster = Cluster(kubectl, kube_api, namespace)
    apply_policy(cluster, simulator, "fleet")
    try:
        policy = cluster.wait_for("fleet", settled, timeout=120, what="a settled sync by the pod")
        rows = vm_rows(policy)
        assert READY_VM.name not in rows  # compliant VMs are not listed
        assert rows[BIOS_VM.name]["state"] == "Blocked"
        assert rows[BIOS_VM.name]["reasons"] == ["FirmwareNotEFI"]
        assert condition(policy, "Ready")["status"] == "False"
        assert has_vtpm(simulator, fleet.ids[READY_VM.name])
        assert not has_vtpm(simulator, fleet.ids[BIOS_VM.name])
        assert ("Normal", "VTPMAdded") in {(e.type, e.reason) for e in cluster.events()}
    finally:
        delete_and_wait(cluster, "fleet")
        delete_vcenters(cluster)
    assert "Traceback" not in deployed_operator.container_log()
