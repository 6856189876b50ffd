"""A power-on owed after an interrupted change is paid, even when nobody selects the VM any more."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pyVmomi import vim

from testbed.fleet import REQUIRED_TAG, Fleet, VMSpec, build_fleet
from testbed.vcsim import Simulator, connect, disconnect, retrieve_one

from .conftest import Cluster, Replicas, SeenVM, policy_manifest, read_vms, summary

pytestmark = pytest.mark.slow


def running_tasks(sim: Simulator, vm_id: str) -> list[str]:
    si = connect(sim)
    try:
        return [
            t._moId
            for t in retrieve_one(si, vim.VirtualMachine(vm_id, si._stub), ["recentTask"]).get("recentTask")
            or []
        ]
    finally:
        disconnect(si)


def shown_now(sim: Simulator, vm_id: str) -> SeenVM:
    si = connect(sim)
    try:
        return read_vms(si, [vm_id])[vm_id]
    finally:
        disconnect(si)


def wait_vm(sim: Simulator, vm_id: str, predicate: Any, timeout: float, what: str) -> float:
    si = connect(sim)
    try:
        started = time.monotonic()
        while not predicate(read_vms(si, [vm_id])[vm_id]):
            assert time.monotonic() - started < timeout, (
                f"timed out waiting for {what}: {read_vms(si, [vm_id])}"
            )
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        disconnect(si)


def crash_during_change(
    simulator: Simulator, cluster: Cluster, run_operator: Any, resync: str = "10s"
) -> tuple[Fleet, str]:
    """A running VM shut down for its vTPM by policy "owner"; the operator SIGKILLed while the
    reconfigure runs (it never ends by itself). Returns the fleet and the VM's id."""
    fleet = build_fleet(simulator, [VMSpec("victim", powered_on=True), VMSpec("other", tags=())])
    victim = fleet.ids["victim"]
    simulator.admin.set_shutdown_delay(victim, 1.0)
    simulator.admin.hang_next_reconfigure(victim)
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(
        policy_manifest(
            "owner",
            vcenter,
            powerPolicy={"action": "Shutdown", "shutdownTimeout": "30s"},
            resyncPeriod=resync,
        )
    )
    operator: Replicas = run_operator()
    deadline = time.monotonic() + 60
    while simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0:
        assert time.monotonic() < deadline, "the change never reached its reconfigure"
        time.sleep(0.1)
    operator.kill()
    shown = shown_now(simulator, victim)
    assert shown.power == "poweredOff" and shown.marker, shown  # down for the change, the debt recorded
    return fleet, victim


def end_running_tasks(simulator: Simulator, vm_id: str) -> None:
    """The reconfigure ends while nobody watches (as success, the spec not applied)."""
    for task in running_tasks(simulator, vm_id):
        simulator.admin.finish_task(task)


def powered_on_again(simulator: Simulator, vm_id: str) -> float:
    return wait_vm(simulator, vm_id, lambda vm: vm.power == "poweredOn" and not vm.marker, 30, "the power-on")


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
@pytest.mark.parametrize("then", ["untag", "delete-policy"])
def test_a_vm_shut_down_for_its_change_is_powered_on_after_a_crash(
    simulator: Simulator, cluster: Cluster, run_operator: Any, then: str
) -> None:
    fleet, victim = crash_during_change(simulator, cluster, run_operator)
    end_running_tasks(simulator, victim)
    if then == "untag":
        fleet.untag("victim", REQUIRED_TAG)
    else:
        cluster.kubectl("delete", "vtpm", "owner", "-n", cluster.namespace, "--timeout=20s")
    run_operator()

    seconds = powered_on_again(simulator, victim)
    print(f"{then}: powered on again {seconds:.1f} s after the restart")
    counts = simulator.admin.call_counts()
    assert (counts.get("ReconfigVM_Task"), counts.get("PowerOnVM_Task")) == (1, 1), counts
    if then == "untag":
        cluster.wait_for(
            "owner", lambda p: summary(p).get("matched") == 0, timeout=10, what="the VM unselected"
        )


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_an_owed_power_on_waits_for_the_task_still_running_on_the_vm(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    """vCenter runs one task per VM at a time (others fail with TaskInProgress; the simulator does
    not refuse them, so the test watches for the attempt): the debt is paid once the task ends."""
    fleet, victim = crash_during_change(simulator, cluster, run_operator)
    fleet.untag("victim", REQUIRED_TAG)
    simulator.admin.reset_call_counts()
    run_operator()
    cluster.wait_for("owner", lambda p: summary(p).get("matched") == 0, timeout=30, what="the restarted view")
    time.sleep(5)  # a few pulses (2 s each) with the reconfigure still running
    assert simulator.admin.call_counts().get("PowerOnVM_Task", 0) == 0, "powered on during another task"

    end_running_tasks(simulator, victim)
    powered_on_again(simulator, victim)


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_a_refused_power_on_of_a_debt_is_tried_again(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    """The first power-on of the debt is refused (InsufficientResourcesFault, as vCenter answers when
    admission control has no room for a moment): the VM must not stay off for good; the retry comes
    after --retry-base."""
    fleet, victim = crash_during_change(simulator, cluster, run_operator, resync="1h")
    end_running_tasks(simulator, victim)
    fleet.untag("victim", REQUIRED_TAG)
    simulator.admin.inject_fault(method="PowerOnVM_Task", fault="InsufficientResourcesFault", count=1)
    simulator.admin.reset_call_counts()
    run_operator("--retry-base", "2s")

    seconds = powered_on_again(simulator, victim)
    print(f"powered on {seconds:.1f} s after the restart, at the second try")
    assert simulator.admin.call_counts().get("PowerOnVM_Task") == 2
