"""The operator as a process: real API server, simulator with vCenter's rules, policies as YAML."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from testbed.fleet import MIXED_FLEET, VMSpec, build_fleet, specs_of
from testbed.vcsim import Simulator, connect, disconnect, retrieve_one

from .conftest import Cluster, Replicas, condition, policy_manifest, settled, summary, vm_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SELECTED = [
    (spec, state, reasons) for spec, state, reasons in MIXED_FLEET if state not in ("Excluded", "NotSelected")
]


def vm_properties(sim: Simulator, vm_id: str) -> dict[str, Any]:
    si = connect(sim)
    try:
        return retrieve_one(
            si,
            vim.VirtualMachine(vm_id, si._stub),
            ["runtime.powerState", "config.hardware.device", "config.keyId"],
        )
    finally:
        disconnect(si)


def vm_state(sim: Simulator, vm_id: str) -> dict[str, Any]:
    """The VM as vCenter sees it: power state, vTPM present, encryption key id."""
    props = vm_properties(sim, vm_id)
    return {
        "power": props["runtime.powerState"],
        "vtpm": any(isinstance(d, vim.vm.device.VirtualTPM) for d in props["config.hardware.device"]),
        "key_id": props.get("config.keyId"),
    }


def reconfigure_vm(sim: Simulator, vm_id: str, spec: Any) -> None:
    from pyVim.task import WaitForTask

    si = connect(sim)
    try:
        WaitForTask(vim.VirtualMachine(vm_id, si._stub).ReconfigVM_Task(spec=spec))
    finally:
        disconnect(si)


def next_full_read(cluster: Cluster, sim: Simulator, name: str, timeout: float = 40) -> dict[str, Any]:
    """The policy once the engine has read its vCenter fully again (a new container view)."""
    deadline = time.monotonic() + timeout
    while sim.admin.call_counts().get("CreateContainerView", 0) == 0:
        assert time.monotonic() < deadline, "no full re-read"
        time.sleep(0.5)
    time.sleep(2)  # the read's verdicts reach status within the coalescing second
    return cluster.policy(name)


@pytest.mark.parametrize("simulator", [{"vms": 14, "standalone_hosts": 1}], indirect=True)
def test_enforce_fixes_every_unblocked_vm_and_reports_each_blocker(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(simulator, specs_of(MIXED_FLEET))
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("fleet", vcenter))
    operator: Replicas = run_operator()

    policy = cluster.wait_for(
        "fleet", lambda p: summary(p).get("compliant") == 3, timeout=90, what="the ready VMs changed"
    )

    rows = vm_rows(policy)
    for spec, state, reasons in SELECTED:
        if state == "Compliant":
            assert spec.name not in rows, rows.get(spec.name)
        else:
            assert rows[spec.name]["state"] == state
            assert set(rows[spec.name]["reasons"]) == set(reasons), rows[spec.name]
            assert rows[spec.name]["id"] == fleet.ids[spec.name]
    assert policy["status"]["summary"] == {
        "matched": len(SELECTED),
        "compliant": 3,
        "nonCompliant": 0,
        "pending": 1,  # win11-busy: waits for the task running on it
        "blocked": len(SELECTED) - 4,
        "failed": 0,
        "excluded": 1,
        "drifted": 0,
        "driftedTotal": 0,
        "remediatedTotal": 2,
    }
    assert condition(policy, "Stalled")["status"] == "True"
    assert condition(policy, "Stalled")["reason"] == "VMsBlocked"
    assert condition(policy, "Ready")["status"] == "False"
    assert condition(policy, "Compliant")["status"] == "False"

    # Exactly the two ready VMs were reconfigured; vCenter shows their vTPMs and encrypted homes.
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 2
    for name in ("win11-ready", "rhel9-ready", "win11-has-vtpm"):
        state = vm_state(simulator, fleet.ids[name])
        assert state["vtpm"] and state["key_id"] is not None, name
    for name in ("win11-exempt", "win11-untagged", "win11-powered-on", "win10-many"):
        assert not vm_state(simulator, fleet.ids[name])["vtpm"], name
    assert vm_state(simulator, fleet.ids["win11-powered-on"])["power"] == "poweredOn"

    # A full re-read of the same fleet (resyncPeriod 10s) changes nothing.
    simulator.admin.reset_call_counts()
    again = next_full_read(cluster, simulator, "fleet")
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0
    assert again["status"]["summary"]["remediatedTotal"] == 2

    reasons = {(e.type, e.reason) for e in cluster.events()}
    assert ("Normal", "VTPMAdded") in reasons
    assert ("Warning", "VMsBlocked") in reasons
    metrics = operator.metrics()  # every replica's: only the lease holder exports the policy's series
    assert (
        len(
            re.findall(
                r'vtpm_operator_vms\{mode="Enforce",policy="fleet",[^}]*state="Blocked"[^}]*\} 8\.0', metrics
            )
        )
        == 1
    )
    assert (
        len(
            re.findall(
                r'vtpm_operator_remediations_total\{mode="Enforce",policy="fleet",[^}]*\} 2\.0', metrics
            )
        )
        == 1
    )
    # Every series the shipped alerts query is one the operator really exports.
    alerted = set(re.findall(r"vtpm_operator_[a-z_]+", (REPO / "deploy/monitoring/rules.yaml").read_text()))
    exported = set(re.findall(r"^(vtpm_operator_[a-z_]+)\{", metrics, re.MULTILINE))
    assert alerted and alerted <= exported, alerted - exported

    table = cluster.kubectl("get", "vtpm", "-n", cluster.namespace).stdout
    header, row = table.strip().splitlines()
    for column in ("VCENTER", "MODE", "READY", "MATCHED", "COMPLIANT", "BLOCKED", "AGE"):
        assert column in header.split()
    assert row.split()[:3] == ["fleet", vcenter, "Enforce"]
    assert f" {len(SELECTED)} " in row and " 3 " in row


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_audit_reports_without_changing_anything(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(
        simulator, [VMSpec("a-ready"), VMSpec("b-ready", guest="rhel9_64Guest"), VMSpec("c-has", vtpm=True)]
    )
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("audit", vcenter, mode="Audit"))
    run_operator()

    policy = cluster.wait_for("audit", settled, what="a settled sync")
    rows = vm_rows(policy)
    assert {name: row["state"] for name, row in rows.items()} == {
        "a-ready": "NonCompliant",
        "b-ready": "NonCompliant",
    }
    assert "would add" in rows["a-ready"]["message"]
    assert policy["status"]["summary"]["compliant"] == 1
    assert policy["status"]["summary"]["nonCompliant"] == 2
    assert condition(policy, "Compliant")["status"] == "False"
    assert condition(policy, "Ready")["reason"] == "NotCompliant"
    assert condition(policy, "Stalled")["status"] == "False"
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0
    assert not vm_state(simulator, fleet.ids["a-ready"])["vtpm"]


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_shutdown_power_cycles_a_running_vm_and_restores_its_power(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(simulator, [VMSpec("running", powered_on=True), VMSpec("no-tools", powered_on=True)])
    simulator.admin.set_tools_running(fleet.ids["no-tools"], False)
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(
        policy_manifest("cycle", vcenter, powerPolicy={"action": "Shutdown", "shutdownTimeout": "30s"})
    )
    run_operator()

    policy = cluster.wait_for("cycle", settled, what="a settled sync")
    running = vm_state(simulator, fleet.ids["running"])
    assert running["vtpm"] and running["power"] == "poweredOn"
    counts = simulator.admin.call_counts()
    assert counts.get("ShutdownGuest") == 1
    assert counts.get("PowerOnVM_Task") == 1
    rows = vm_rows(policy)
    assert "running" not in rows
    assert rows["no-tools"]["state"] == "Blocked"
    assert rows["no-tools"]["reasons"] == ["PoweredOn"]
    assert "VMware Tools" in rows["no-tools"]["message"]
    assert vm_state(simulator, fleet.ids["no-tools"]) == {"power": "poweredOn", "vtpm": False, "key_id": None}


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_absent_needs_allow_removal(simulator: Simulator, cluster: Cluster, run_operator: Any) -> None:
    fleet = build_fleet(simulator, [VMSpec("a", vtpm=True), VMSpec("b", vtpm=True)])
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator, allowRemoval=True)
    cluster.apply(policy_manifest("remove", vcenter, vtpm="Absent"))
    run_operator()

    policy = cluster.wait_for("remove", settled, what="a settled sync")
    assert condition(policy, "Stalled")["status"] == "True"
    assert condition(policy, "Stalled")["reason"] == "RemovalNotAllowed"
    assert condition(policy, "Ready")["reason"] == "RemovalNotAllowed"
    assert {row["state"] for row in vm_rows(policy).values()} == {"NonCompliant"}
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0
    assert vm_state(simulator, fleet.ids["a"])["vtpm"]

    # Both must allow it: the policy now does, its VCenter (the admin's) not yet. The VCenter's
    # change is seen first (they arrive on two watches), so that removal is never allowed meanwhile.
    cluster.vcenter(simulator, allowRemoval=False)
    deadline = time.monotonic() + 30
    while not _status_current(vc := cluster.vcenter_object(vcenter)):
        assert time.monotonic() < deadline, vc.get("status")
        time.sleep(0.2)
    cluster.apply(policy_manifest("remove", vcenter, vtpm="Absent", allowRemoval=True))
    policy = cluster.wait_for(
        "remove",
        lambda p: (
            p["metadata"]["generation"] == p["status"].get("observedGeneration")
            and "has allowRemoval: false" in condition(p, "Ready").get("message", "")
        ),
        what="the VCenter's refusal",
    )
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0

    cluster.vcenter(simulator, allowRemoval=True)  # the admin allows it: the same policy acts now
    policy = cluster.wait_for(
        "remove", lambda p: settled(p) and condition(p, "Ready")["status"] == "True", what="removal"
    )
    for name in ("a", "b"):
        assert vm_state(simulator, fleet.ids[name]) == {"power": "poweredOff", "vtpm": False, "key_id": None}
    assert policy["status"]["summary"]["remediatedTotal"] == 2


def _status_current(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_drift_is_found_and_repaired(simulator: Simulator, cluster: Cluster, run_operator: Any) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b"), VMSpec("late", tags=())])
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("drift", vcenter))
    run_operator()
    policy = cluster.wait_for("drift", lambda p: settled(p) and condition(p, "Ready")["status"] == "True")
    assert policy["status"]["summary"]["matched"] == 2

    # Out of band: someone removes a's vTPM, and another VM gains the tag.
    devices = vm_properties(simulator, fleet.ids["a"])["config.hardware.device"]
    tpm = next(d for d in devices if isinstance(d, vim.vm.device.VirtualTPM))
    reconfigure_vm(
        simulator,
        fleet.ids["a"],
        vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=tpm)]),
    )
    fleet.tag("late", "vtpm-required")

    # The engine repairs drift within seconds, so the running total is what shows it for sure.
    drifted = cluster.wait_for(
        "drift",
        lambda p: summary(p).get("driftedTotal") == 1 and summary(p)["matched"] == 3,
        timeout=40,
        what="drift in the summary",
    )
    assert drifted["status"]["summary"]["matched"] == 3
    repaired = cluster.wait_for("drift", lambda p: settled(p) and condition(p, "Ready")["status"] == "True")
    assert repaired["status"]["summary"]["remediatedTotal"] == 4
    assert vm_state(simulator, fleet.ids["a"])["vtpm"]
    assert vm_state(simulator, fleet.ids["late"])["vtpm"]
    assert ("Warning", "DriftDetected") in {(e.type, e.reason) for e in cluster.events()}


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_policy_level_problems_give_documented_conditions(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b", tags=())])
    fleet.create_tag("named-provider")  # b alone, so that the "creds" policy never changes it
    fleet.tag("b", "named-provider")
    vcenter = cluster.vcenter(simulator)
    cluster.kubectl("delete", "secret", "vcenter-creds", "-n", cluster.namespace)  # back below
    cluster.apply(policy_manifest("creds", vcenter))
    cluster.apply(
        policy_manifest("unknown-tag", vcenter, selector={"tags": [{"category": "security", "name": "nope"}]})
    )
    cluster.apply(
        policy_manifest(
            "provider",
            vcenter,
            keyProvider="kp-missing",
            selector={"tags": [{"category": "security", "name": "named-provider"}]},
        )
    )
    cluster.apply(policy_manifest("orphan", "no-such-vcenter"))
    operator: Replicas = run_operator()

    def reason_is(reason: str) -> Any:
        return lambda p: condition(p, "Ready").get("reason") == reason

    missing = cluster.wait_for("creds", reason_is("SecretNotFound"), what="SecretNotFound")
    assert condition(missing, "Stalled")["status"] == "True"
    assert "vcenter-creds" in condition(missing, "Ready")["message"]
    # The VCenter's problem, told to every policy of it. Each status is a write of its own, made
    # beside the others: one that shows it says nothing yet of the rest.
    cluster.wait_for("provider", reason_is("SecretNotFound"), timeout=10, what="the VCenter's SecretNotFound")
    deadline = time.monotonic() + 10
    while (
        "conditions" not in (cluster.vcenter_object(vcenter).get("status") or {})
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    vc_status = cluster.vcenter_object(vcenter)["status"]
    assert [c["reason"] for c in vc_status["conditions"] if c["type"] == "Ready"] == ["SecretNotFound"]

    orphan = cluster.wait_for("orphan", reason_is("VCenterNotFound"), what="VCenterNotFound")
    assert condition(orphan, "Stalled")["status"] == "True"

    cluster.credentials(simulator, password="wrong-password")
    refused = cluster.wait_for(
        "creds", reason_is("AuthenticationFailed"), timeout=90, what="AuthenticationFailed"
    )
    assert condition(refused, "Stalled")["status"] == "True"
    assert "wrong-password" not in str(refused)

    cluster.credentials(simulator)  # the right password: the VCenter recovers without a restart
    fixed = cluster.wait_for("creds", lambda p: condition(p, "Ready").get("status") == "True", timeout=120)
    assert fixed["status"]["summary"]["compliant"] == 1
    assert vm_state(simulator, fleet.ids["a"])["vtpm"]
    unknown = cluster.wait_for("unknown-tag", reason_is("TagNotFound"), timeout=60, what="TagNotFound")
    assert "security/nope" in condition(unknown, "Ready")["message"]

    provider = cluster.wait_for(
        "provider", reason_is("KeyProviderMissing"), timeout=60, what="KeyProviderMissing"
    )
    assert condition(provider, "Stalled")["reason"] == "KeyProviderMissing"
    assert vm_rows(provider)["b"]["reasons"] == ["KeyProviderMissing"]
    assert "kp-missing" in vm_rows(provider)["b"]["message"]
    warnings = [e for e in cluster.events() if e.type == "Warning"]
    assert {"SecretNotFound", "AuthenticationFailed", "TagNotFound"} <= {e.reason for e in warnings}
    assert all("wrong-password" not in (e.message or "") for e in cluster.events())
    log = operator.log_text()
    assert "logged in to" in log  # the log is real (and verbose)
    assert "wrong-password" not in log and simulator.password not in log


def test_unreachable_vcenter_is_not_stalled(
    cluster: Cluster, run_operator: Any, simulator: Simulator
) -> None:
    vcenter = cluster.vcenter(simulator, server="127.0.0.1:9")  # discard port: nothing listens
    cluster.apply(policy_manifest("gone", vcenter))
    run_operator()
    policy = cluster.wait_for("gone", lambda p: condition(p, "Ready").get("reason") == "VCenterUnreachable")
    assert condition(policy, "Stalled")["status"] == "False"
    assert condition(policy, "Compliant")["status"] == "Unknown"


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_expired_session_is_renewed(simulator: Simulator, cluster: Cluster, run_operator: Any) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("renew", vcenter))
    run_operator()
    cluster.wait_for("renew", lambda p: settled(p) and condition(p, "Ready")["status"] == "True")
    simulator.admin.expire_sessions()
    simulator.admin.reset_call_counts()
    again = next_full_read(cluster, simulator, "renew")
    assert condition(again, "Ready")["status"] == "True"
    assert simulator.admin.call_counts().get("Login", 0) >= 1  # it logged in again


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_deleting_a_policy_stops_its_worker_and_its_metrics(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("short-lived", vcenter))
    operator: Replicas = run_operator()
    policy = cluster.wait_for(
        "short-lived", lambda p: settled(p) and condition(p, "Ready")["status"] == "True"
    )
    assert not policy["metadata"].get("finalizers")  # nothing waits on deletion: deleting is instant
    assert 'policy="short-lived"' in operator.metrics()

    cluster.kubectl("delete", "vtpm", "short-lived", "-n", cluster.namespace, "--timeout=10s")
    assert cluster.kubectl("get", "vtpm", "-n", cluster.namespace, "-o", "name").stdout.strip() == ""
    deadline = time.monotonic() + 10  # the engine drops the view within a pulse or two
    while 'policy="short-lived"' in operator.metrics():
        assert time.monotonic() < deadline, "the deleted policy's series are still exported"
        time.sleep(0.2)
    assert operator.alive()  # the operator itself keeps running
    assert all(operator.healthz())  # and each replica's liveness endpoint, the Deployment's probe
