"""The change queue of one vCenter: judged again before each start, one change per VM whoever asks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from testbed.fleet import CATEGORY, EXEMPT_TAG, REQUIRED_TAG, VMSpec, build_fleet
from testbed.vcsim import Simulator

from .conftest import Cluster, Replicas, VMWatch, policy_manifest, settled, summary

pytestmark = pytest.mark.slow

SHUTDOWN_DELAY = 6.0  # seconds each guest takes to shut down: long enough to act while the queue waits


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_an_exclude_tag_added_to_a_queued_vm_keeps_it_untouched(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    names = ["web-0", "web-1", "web-2"]
    fleet = build_fleet(simulator, [VMSpec(name, powered_on=True) for name in names])
    for vm_id in fleet.ids.values():
        simulator.admin.set_shutdown_delay(vm_id, SHUTDOWN_DELAY)
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(
        policy_manifest(
            "one-at-a-time",
            vcenter,
            maxConcurrent=1,
            powerPolicy={"action": "Shutdown", "shutdownTimeout": "60s"},
        )
    )
    ids = [fleet.ids[name] for name in names]
    with VMWatch(simulator, ids) as watch:
        run_operator()
        deadline = time.monotonic() + 60
        while simulator.admin.call_counts().get("ShutdownGuest", 0) == 0:
            assert time.monotonic() < deadline, "no guest was shut down"
            time.sleep(0.1)
        # The first VM's guest is going down (its marker is written first); the other two wait.
        time.sleep(0.5)
        first = [name for name in names if watch.latest(fleet.ids[name]).marker]
        assert len(first) == 1, [watch.latest(i) for i in ids]
        queued = [name for name in names if name not in first]
        excluded, control = queued
        fleet.tag(excluded, EXEMPT_TAG)
        print(f"{first[0]} shutting down; {excluded} excluded while queued; {control} goes on")

        policy = cluster.wait_for(
            "one-at-a-time",
            lambda p: settled(p) and summary(p).get("compliant") == 2,
            timeout=60,
            what="the first and the control VM changed",
        )
        time.sleep(3)  # had the excluded VM started after all, its guest would be going down now

    excluded_id = fleet.ids[excluded]
    assert not watch.errors, watch.errors[:3]
    assert not watch.ever(excluded_id, lambda vm: vm.power != "poweredOn"), "the excluded VM was shut down"
    assert not watch.ever(excluded_id, lambda vm: vm.vtpm or bool(vm.marker)), "the excluded VM was touched"
    counts = simulator.admin.call_counts()
    assert (counts.get("ShutdownGuest"), counts.get("ReconfigVM_Task")) == (2, 2), counts
    for name in (first[0], control):
        assert watch.latest(fleet.ids[name]).vtpm and watch.latest(fleet.ids[name]).power == "poweredOn"
    assert (summary(policy)["matched"], summary(policy)["excluded"]) == (2, 1)


ALSO_TAG = "vtpm-wanted"  # a second team's tag on the same VMs


@pytest.mark.parametrize("simulator", [{"vms": 20}], indirect=True)
def test_two_policies_that_want_the_same_state_change_each_vm_once(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    build_fleet(
        simulator,
        [VMSpec(f"vm-{i:02d}", tags=(REQUIRED_TAG, ALSO_TAG)) for i in range(20)],
        extra_tags=[ALSO_TAG],
    )
    simulator.admin.reset_call_counts()
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("team-a", vcenter, maxConcurrent=4))
    cluster.apply(
        policy_manifest(
            "team-b", vcenter, maxConcurrent=8, selector={"tags": [{"category": CATEGORY, "name": ALSO_TAG}]}
        )
    )
    operator: Replicas = run_operator()

    for name in ("team-a", "team-b"):
        policy = cluster.wait_for(
            name, lambda p: settled(p) and summary(p).get("compliant") == 20, timeout=90, what="20 compliant"
        )
        assert summary(policy)["matched"] == 20
        assert summary(policy)["remediatedTotal"] == 20, summary(policy)
        assert operator.metric("vtpm_operator_remediations_total", policy=name) == 20
    assert simulator.admin.call_counts().get("ReconfigVM_Task") == 20  # 20 VMs, each changed once
