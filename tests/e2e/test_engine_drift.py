"""Drift is seen from the live feed within 2 s, long before a resync, and repaired at once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pyVmomi import vim

from testbed.fleet import VMSpec, build_fleet
from testbed.vcsim import Simulator, connect, disconnect, retrieve_one, wait_task

from .conftest import Cluster, Replicas, condition, policy_manifest, read_vms, settled, summary

pytestmark = pytest.mark.slow

TAG_REFRESH = 2.0  # the harness runs the operator with --tag-refresh 2s
DRIFT_LIMIT = 2.0  # issue 8: drift shows in status, an event and a counter within 2 s


def remove_vtpm(sim: Simulator, vm_id: str) -> float:
    """Remove the VM's vTPM as a person would; the moment vCenter shows it gone (monotonic)."""
    si = connect(sim)
    try:
        vm = vim.VirtualMachine(vm_id, si._stub)
        devices = retrieve_one(si, vm, ["config.hardware.device"])["config.hardware.device"]
        tpm = next(d for d in devices if isinstance(d, vim.vm.device.VirtualTPM))
        change = vim.vm.device.VirtualDeviceSpec(operation="remove", device=tpm)
        info = wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])))
        assert info.error is None, info.error
        return time.monotonic()
    finally:
        disconnect(si)


def first_seen(checks: dict[str, Any], since: float, timeout: float) -> dict[str, float]:
    """Seconds after `since` at which each check first held (polled together, ~20 times a second)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(checks) and time.monotonic() < deadline:
        for name, check in checks.items():
            if name not in seen and check():
                seen[name] = time.monotonic() - since
        time.sleep(0.05)
    return seen


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_drift_shows_within_two_seconds_and_is_repaired_before_any_resync(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b"), VMSpec("late", tags=())])
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("drift", vcenter, resyncPeriod="1h"))
    operator: Replicas = run_operator()
    cluster.wait_for("drift", lambda p: settled(p) and condition(p, "Ready")["status"] == "True", timeout=90)
    # Nothing else changing: the first changes' status writes and their 5 s settling (the engine lets
    # the feed catch up after a change before it starts another on that VM) are over.
    time.sleep(6)
    simulator.admin.reset_call_counts()
    si = connect(simulator)

    try:
        removed = remove_vtpm(simulator, fleet.ids["a"])
        seen = first_seen(
            {
                "status": lambda: summary(cluster.policy("drift")).get("driftedTotal") == 1,
                "event": lambda: any(e.reason == "DriftDetected" for e in cluster.events()),
                "counter": lambda: operator.metric("vtpm_operator_drift_total", policy="drift") == 1,
                "repaired": lambda: read_vms(si, [fleet.ids["a"]])[fleet.ids["a"]].vtpm,
            },
            removed,
            timeout=30,
        )
        print(f"after the vTPM was removed out of band (s): {seen}")
        repairs = simulator.admin.call_counts()
        for shown in ("status", "event", "counter"):
            assert seen.get(shown, 99) <= DRIFT_LIMIT, f"drift in the {shown} after {seen.get(shown)} s"
        assert seen.get("repaired", 99) <= DRIFT_LIMIT, f"repaired after {seen.get('repaired')} s"
        # Repaired from the feed: no full read (a new container view) happened in between.
        assert repairs.get("CreateContainerView", 0) == 0, repairs
        assert repairs.get("ReconfigVM_Task") == 2  # the person's removal and the repair

        # A VM that gains the tag out of band: a new match within the tag refresh, not drift.
        cluster.wait_for("drift", lambda p: settled(p) and condition(p, "Ready")["status"] == "True")
        time.sleep(1)
        fleet.tag("late", "vtpm-required")
        tagged = time.monotonic()
        matched = first_seen(
            {"matched": lambda: summary(cluster.policy("drift")).get("matched") == 3}, tagged, 30
        )
        print(f"after the tag was attached out of band (s): {matched}")
        # The engine's refresh comes within TAG_REFRESH; its status write within the coalescing second.
        assert matched.get("matched", 99) <= TAG_REFRESH + 1.0
        done = cluster.wait_for("drift", lambda p: settled(p) and condition(p, "Ready")["status"] == "True")
        assert read_vms(si, [fleet.ids["late"]])[fleet.ids["late"]].vtpm
    finally:
        disconnect(si)
    assert summary(done)["driftedTotal"] == 1
    assert summary(done)["remediatedTotal"] == 4  # a and b, a's repair, late
    assert operator.metric("vtpm_operator_drift_total", policy="drift") == 1
    assert simulator.admin.call_counts().get("CreateContainerView", 0) == 0
