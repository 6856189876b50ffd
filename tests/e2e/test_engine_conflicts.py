"""A Present and a removing Absent policy on one VM: nobody changes it, whatever restarts come."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from testbed.fleet import CATEGORY, VMSpec, build_fleet
from testbed.vcsim import Simulator

from .conftest import Cluster, Replicas, VMWatch, condition, policy_manifest, vm_rows

pytestmark = pytest.mark.slow

REMOVE_TAG = "decommission"
RESTARTS = 5
# The API server lists by name: the Absent policy comes first, as the one that won after a restart before.
ABSENT, PRESENT = "a-remove", "b-keep"


def conflicted(policy: dict[str, Any], vm: str) -> bool:
    return "ConflictingPolicies" in (vm_rows(policy).get(vm) or {}).get("reasons", [])


def both_conflicted(cluster: Cluster, since: str = "") -> bool:
    """Both policies show the shared VM in conflict, in a status written at or after `since`."""
    policies = cluster.policies()
    return all(
        conflicted(policies[name], "shared")
        and str((policies[name].get("status") or {}).get("lastSyncTime") or "") >= since
        for name in (ABSENT, PRESENT)
    )


def judged_since(cluster: Cluster, since: str) -> bool:
    """The Absent policy shows the conflict in a status the running operator wrote."""
    policy = cluster.policy(ABSENT)
    return conflicted(policy, "shared") and str(policy["status"].get("lastSyncTime")) >= since


def eventually(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_opposite_policies_never_remove_the_vtpm_across_restarts(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    fleet = build_fleet(
        simulator,
        [VMSpec("shared", vtpm=True), VMSpec("control", vtpm=True, tags=(REMOVE_TAG,))],
        extra_tags=[REMOVE_TAG],
    )
    shared, control = fleet.ids["shared"], fleet.ids["control"]
    vcenter = cluster.vcenter(simulator, allowRemoval=True)
    remover = policy_manifest(
        ABSENT,
        vcenter,
        vtpm="Absent",
        allowRemoval=True,
        selector={"tags": [{"category": CATEGORY, "name": REMOVE_TAG}]},
    )
    cluster.apply(remover)
    operator: Replicas = run_operator()

    with VMWatch(simulator, [shared, control]) as watch:
        # The control: alone, the Absent policy does remove a vTPM.
        wait(lambda: not watch.latest(control).vtpm, 60, "the control VM's vTPM to go")
        cluster.wait_for(ABSENT, lambda p: condition(p, "Ready").get("status") == "True", what="removal done")

        cluster.apply(policy_manifest(PRESENT, vcenter))
        cluster.wait_for(PRESENT, lambda p: condition(p, "Ready").get("status") == "True", what="keep ready")
        fleet.tag("shared", REMOVE_TAG)  # now both select it, and want the opposite
        seconds = wait(
            lambda: conflicted(cluster.policy(ABSENT), "shared"), 30, "the Absent policy's conflict"
        )
        print(f"conflict shown {seconds:.1f} s after the tag")
        both_first = eventually(lambda: both_conflicted(cluster), 10)
        simulator.admin.reset_call_counts()

        loop_started = time.monotonic()
        judged = 0  # restarts whose operator showed the conflict again
        for _ in range(RESTARTS):
            operator.kill()
            since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            operator = run_operator()
            if not eventually(lambda since=since: judged_since(cluster, since), 60):
                break  # the assertions below say what went wrong
            judged += 1
            time.sleep(2.5)  # a tag refresh and a pulse (2 s) later: would it act now?
        print(f"{RESTARTS} SIGKILLs and restarts took {time.monotonic() - loop_started:.1f} s")
        time.sleep(3)

    assert not watch.errors, watch.errors[:3]
    assert len(watch.samples) > 50
    assert not watch.ever(shared, lambda vm: not vm.vtpm), "the shared VM lost its vTPM"
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0
    assert judged == RESTARTS, f"restart {judged + 1} never showed the conflict"
    policies = cluster.policies()
    assert "policy b-keep" in vm_rows(policies[ABSENT])["shared"]["message"]  # same namespace: named
    # Every policy involved reports the conflict, the one whose state the VM has now included.
    assert both_first, "before the restarts, the Present policy did not report ConflictingPolicies"
    assert both_conflicted(cluster), {n: vm_rows(p).get("shared") for n, p in policies.items()}
