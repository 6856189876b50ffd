"""The vSphere adapter against the simulator over the wire: bulk reads, refusals, sessions, TLS."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from pyVmomi import vim

from testbed.fleet import CATEGORY, EXEMPT_TAG, REQUIRED_TAG, VMSpec, build_fleet
from testbed.vcsim import Simulator, connect, disconnect, wait_task
from vtpm_operator.api import parse_policy
from vtpm_operator.claims import Claim, ClaimBoard
from vtpm_operator.facts import PowerState
from vtpm_operator.planning import VMState, make_plan
from vtpm_operator.policy import DesiredVTPM, Policy, PowerAction, PowerPolicy, TagRef
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.sync import SyncResult, run_sync
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.session import Credentials, Endpoint, VCenterSession


def policy_for(sim: Simulator, **overrides: object) -> Policy:
    """The API's defaults (from its parser), selecting REQUIRED_TAG and exempting EXEMPT_TAG."""
    spec = {
        "vcenterRef": {"name": "sim"},
        "selector": {
            "tags": [{"category": CATEGORY, "name": REQUIRED_TAG}],
            "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
        },
    }
    return dataclasses.replace(parse_policy(spec), **overrides)  # type: ignore[arg-type]


def power(**overrides: object) -> PowerPolicy:
    """The API's default power policy with these changes."""
    return dataclasses.replace(parse_policy(MINIMAL).power, **overrides)  # type: ignore[arg-type]


MINIMAL = {
    "vcenterRef": {"name": "sim"},
    "selector": {"tags": [{"category": CATEGORY, "name": REQUIRED_TAG}]},
}


def client_for(sim: Simulator, *, password: str | None = None, ca_pem: str | None = None) -> VSphereClient:
    endpoint = Endpoint(sim.server, ca_pem=ca_pem if ca_pem is not None else sim.ca_file.read_text())
    return VSphereClient(VCenterSession(endpoint, Credentials(sim.username, password or sim.password)))


def reads_for_fleet(sim: Simulator, size: int) -> dict[str, int]:
    build_fleet(sim, [VMSpec(f"vm-{i:03d}") for i in range(size)])
    vsphere = client_for(sim)
    try:
        vsphere.read_inventory(policy_for(sim))  # logs in, learns guest OS support
        sim.admin.reset_call_counts()
        inventory = vsphere.read_inventory(policy_for(sim))
    finally:
        vsphere.close()
    assert len(inventory.vms) == size
    return sim.admin.call_counts()


@pytest.mark.parametrize("simulator", [{"vms": 40}], indirect=True)
def test_reading_forty_vms_costs_the_same_round_trips_as_reading_four(
    simulator: Simulator, tmp_path: Path
) -> None:
    large = reads_for_fleet(simulator, 40)
    # The same sync over a fleet ten times smaller, on a fresh simulator of the same shape.
    from testbed.vcsim import running_simulator

    with running_simulator(tmp_path / "small", vms=4) as small_sim:
        small = reads_for_fleet(small_sim, 4)
    assert large == small
    assert large["RetrievePropertiesEx"] <= 3  # VMs, their recent tasks, their hosts
    assert large["HasPrivilegeOnEntities"] == 1
    assert "QueryConfigOptionEx" not in large  # answered once per session


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_a_vm_powered_on_after_the_read_fails_with_vcenters_fault(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("racer"), VMSpec("calm")])
    vsphere = client_for(simulator)
    policy = policy_for(simulator)
    try:
        plan = make_plan(vsphere.read_inventory(policy), policy)
        assert {c.vm.name for c in plan.changes} == {"racer", "calm"}
        si = connect(simulator)  # someone powers a VM on between the read and the change
        try:
            wait_task(si, vim.VirtualMachine(fleet.ids["racer"], si._stub).PowerOnVM_Task())
        finally:
            disconnect(si)
        errors = vsphere.apply(plan.changes, (), policy, lambda: True)
        after = vsphere.read_vms(list(fleet.ids.values()))
    finally:
        vsphere.close()
    assert errors[fleet.ids["calm"]] is None
    assert "InvalidPowerState" in str(errors[fleet.ids["racer"]])
    assert after[fleet.ids["calm"]].has_vtpm
    assert not after[fleet.ids["racer"]].has_vtpm


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_failed_task_is_reported_failed_and_the_next_sync_retries(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("a")])
    simulator.admin.inject_fault(method="ReconfigVM_Task", count=1, fault="SystemError")
    vsphere = client_for(simulator)
    try:
        first = run_sync(vsphere, policy_for(simulator), frozenset())
        second = run_sync(vsphere, policy_for(simulator), first.compliant_ids)
    finally:
        vsphere.close()
    (outcome,) = first.outcomes
    assert outcome.state is VMState.FAILED
    assert "SystemError" in outcome.message
    assert first.remediated == 0
    assert [o.state for o in second.outcomes] == [VMState.COMPLIANT]
    assert second.remediated_ids == {fleet.ids["a"]}


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_expired_session_is_renewed_once(simulator: Simulator) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vsphere = client_for(simulator)
    try:
        vsphere.read_inventory(policy_for(simulator))
        assert simulator.admin.expire_sessions() >= 1
        simulator.admin.reset_call_counts()
        inventory = vsphere.read_inventory(policy_for(simulator))
    finally:
        vsphere.close()
    assert len(inventory.vms) == 1
    assert simulator.admin.call_counts()["Login"] == 1


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_stopped_endpoint_is_unreachable_then_recovers(simulator: Simulator) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vsphere = client_for(simulator)
    try:
        vsphere.read_inventory(policy_for(simulator))
        simulator.admin.stop_endpoint()
        with pytest.raises(PolicyProblem) as problem:
            vsphere.read_inventory(policy_for(simulator))
        assert problem.value.reason is ProblemReason.VCENTER_UNREACHABLE
        assert problem.value.transient
        simulator.admin.start_endpoint()
        assert len(vsphere.read_inventory(policy_for(simulator)).vms) == 1
    finally:
        vsphere.close()


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_wrong_password_and_untrusted_certificate_are_named(simulator: Simulator, tmp_path: Path) -> None:
    with pytest.raises(PolicyProblem) as refused:
        client_for(simulator, password="not-it").read_inventory(policy_for(simulator))
    assert refused.value.reason is ProblemReason.AUTHENTICATION_FAILED
    assert "not-it" not in refused.value.message
    from testbed.vcsim import make_tls

    other_ca, _, _ = make_tls(tmp_path / "other")
    with pytest.raises(PolicyProblem) as untrusted:
        client_for(simulator, ca_pem=other_ca.read_text()).read_inventory(policy_for(simulator))
    assert untrusted.value.reason is ProblemReason.CERTIFICATE_NOT_TRUSTED
    assert not untrusted.value.transient


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_unknown_exclude_tag_stops_the_sync(simulator: Simulator) -> None:
    build_fleet(simulator, [VMSpec("a")])
    policy = policy_for(simulator, exclude_tags=(TagRef(CATEGORY, "typo"),))
    with pytest.raises(PolicyProblem) as problem:
        client_for(simulator).read_inventory(policy)
    assert problem.value.reason is ProblemReason.TAG_NOT_FOUND
    assert "security/typo" in problem.value.message


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_a_power_on_that_failed_is_paid_at_the_next_sync(simulator: Simulator) -> None:
    """The operator records the power-on it owes in vCenter before shutting a guest down."""
    build_fleet(simulator, [VMSpec("web", powered_on=True)])
    simulator.admin.reset_call_counts()
    policy = policy_for(simulator, power=power(action=PowerAction.SHUTDOWN, shutdown_timeout=30))
    simulator.admin.inject_fault(method="PowerOnVM_Task", count=1, fault="SystemError")
    vsphere = client_for(simulator)
    try:
        first = run_sync(vsphere, policy, frozenset())
        (outcome,) = first.outcomes
        assert outcome.state is VMState.FAILED
        assert "the vTPM change took, but powering the VM back on failed" in outcome.message
        owed = vsphere.read_inventory(policy).vms[0]
        assert owed.power_state is PowerState.OFF and owed.has_vtpm and owed.power_on_owed

        second = run_sync(vsphere, policy, frozenset())
        after = vsphere.read_inventory(policy).vms[0]
    finally:
        vsphere.close()
    assert [o.state for o in second.outcomes] == [VMState.COMPLIANT]
    assert after.power_state is PowerState.ON
    assert not after.power_on_owed
    assert simulator.admin.call_counts()["ReconfigVM_Task"] == 1  # the vTPM was added once


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_vms_not_started_when_the_policy_changes_midway(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b")])
    simulator.admin.reset_call_counts()
    policy = policy_for(simulator, max_concurrent=1)
    calls = iter([True, False])  # the spec changes after the first VM has started
    vsphere = client_for(simulator)
    try:
        result = run_sync(vsphere, policy, frozenset(), should_continue=lambda: next(calls))
    finally:
        vsphere.close()
    states = {o.name: o.state for o in result.outcomes}
    assert states == {"a": VMState.COMPLIANT, "b": VMState.PENDING}
    assert result.attempted == {fleet.ids["a"]}
    assert simulator.admin.call_counts()["ReconfigVM_Task"] == 1


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_two_policies_wanting_the_opposite_leave_the_shared_vm_alone(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("shared", vtpm=True), VMSpec("only-removal", vtpm=True, tags=())])
    fleet.create_tag("decommission")
    fleet.tag("shared", "decommission")
    fleet.tag("only-removal", "decommission")
    simulator.admin.reset_call_counts()
    keep = policy_for(simulator)  # selects "shared" (vtpm-required); it already complies
    remove = policy_for(
        simulator,
        tags=(TagRef(CATEGORY, "decommission"),),
        exclude_tags=(),
        vtpm=DesiredVTPM.ABSENT,
        allow_removal=True,
    )
    board = ClaimBoard()

    def claim_for(name: str, policy: Policy) -> Callable[[frozenset[str]], Mapping[str, str]]:
        return lambda selected: board.claim(name, Claim(simulator.server, policy.vtpm, selected))

    vsphere = client_for(simulator)
    try:
        run_sync(vsphere, keep, frozenset(), claim=claim_for("ns/keep", keep))
        removed = run_sync(vsphere, remove, frozenset(), claim=claim_for("ns/remove", remove))
    finally:
        vsphere.close()
    states = {o.name: (o.state, o.reasons) for o in removed.outcomes}
    assert states["shared"] == (VMState.BLOCKED, ("ConflictingPolicies",))
    assert states["only-removal"] == (VMState.COMPLIANT, ())
    assert removed.remediated_ids == {fleet.ids["only-removal"]}
    assert simulator.admin.call_counts()["ReconfigVM_Task"] == 1  # only the uncontested VM


@pytest.mark.parametrize("simulator", [{"vms": 5}], indirect=True)
def test_at_most_max_concurrent_vms_are_in_flight(simulator: Simulator) -> None:
    """Guests that take 2 s to shut down make the VMs in flight visible from outside."""
    fleet = build_fleet(simulator, [VMSpec(f"web-{i}", powered_on=True) for i in range(4)])
    for vm_id in fleet.ids.values():
        simulator.admin.set_shutdown_delay(vm_id, 2.0)
    simulator.admin.reset_call_counts()
    policy = policy_for(simulator, max_concurrent=2, power=power(action=PowerAction.SHUTDOWN))
    vsphere = client_for(simulator)
    results: list[SyncResult] = []
    worker = threading.Thread(target=lambda: results.append(run_sync(vsphere, policy, frozenset())))
    started = time.monotonic()
    worker.start()
    try:
        samples: list[tuple[float, int, float]] = []  # (asked at, ShutdownGuest calls so far, answered at)
        while worker.is_alive() and time.monotonic() - started < 30:
            asked = time.monotonic()
            count = simulator.admin.call_counts().get("ShutdownGuest", 0)
            samples.append((asked, count, time.monotonic()))
            time.sleep(0.1)
        worker.join(30)
        elapsed = time.monotonic() - started
        after = vsphere.read_vms(list(fleet.ids.values()))
    finally:
        vsphere.close()
    (result,) = results
    assert {o.state for o in result.outcomes} == {VMState.COMPLIANT}
    counts = [count for _, count, _ in samples]
    assert 2 in counts and max(counts) == 4
    # Two waves of two: the second pair is asked to shut down only once the first pair is off,
    # which the slow guests make 2 s after the first call. The first call happened before the
    # first sample that saw it was answered; the third after the last sample that did not see it
    # was asked.
    first_call_by = next(answered for _, count, answered in samples if count >= 1)
    third_call_after = max(asked for asked, count, _ in samples if count <= 2)
    assert third_call_after - first_call_by >= 1.5
    assert elapsed >= 4.0
    assert all(vm.has_vtpm and vm.power_state is PowerState.ON for vm in after.values())
    assert len(after) == 4
