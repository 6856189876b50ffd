"""sync.run_sync against an in-memory fake of our VSphere protocol."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.facts import PowerState, VMFacts
from vtpm_operator.planning import VMState
from vtpm_operator.policy import DesiredVTPM, Mode, Policy, PowerAction
from vtpm_operator.sync import SyncResult, run_sync

from .vtpm_factories import FLEET, FakeVSphere, fleets, make_policy, make_vm, policies


def _fleet() -> list[VMFacts]:
    return [
        make_vm(id="vm-1", name="a-ready"),
        make_vm(id="vm-2", name="b-done", vtpm_device_key=11000),
        make_vm(id="vm-3", name="c-blocked", firmware="bios"),
        make_vm(id="vm-4", name="d-ready"),
    ]


def test_enforce_remediates_and_verifies() -> None:
    fake = FakeVSphere(_fleet(), excluded=2)
    progress: list[SyncResult] = []
    result = run_sync(fake, make_policy(), frozenset(), on_progress=progress.append)

    assert len(fake.apply_calls) == 1
    assert sorted(c.vm.id for c in fake.apply_calls[0]) == ["vm-1", "vm-4"]
    assert sorted(fake.read_vms_calls[0]) == ["vm-1", "vm-4"]
    states = {o.id: o.state for o in result.outcomes}
    assert states == {
        "vm-1": VMState.COMPLIANT,
        "vm-2": VMState.COMPLIANT,
        "vm-3": VMState.BLOCKED,
        "vm-4": VMState.COMPLIANT,
    }
    assert result.remediated == 2
    assert result.drifted == 0
    assert result.excluded == 2
    assert not result.in_flight
    assert [o.name for o in result.outcomes] == sorted(o.name for o in result.outcomes)

    (report,) = progress
    assert report.in_flight
    assert {o.id: o.state for o in report.outcomes} == {
        "vm-1": VMState.PENDING,
        "vm-2": VMState.COMPLIANT,
        "vm-3": VMState.BLOCKED,
        "vm-4": VMState.PENDING,
    }
    assert report.remediated == 0
    assert report.excluded == 2


def test_second_sync_over_compliant_fleet_makes_no_calls() -> None:
    fake = FakeVSphere(_fleet())
    first = run_sync(fake, make_policy(), frozenset())
    progress: list[SyncResult] = []
    second = run_sync(fake, make_policy(), first.compliant_ids, on_progress=progress.append)
    assert len(fake.apply_calls) == 1
    assert progress == []
    assert second.remediated == 0
    assert second.drifted == 0
    assert second.compliant_ids == first.compliant_ids


def test_all_compliant_fleet_issues_zero_apply_calls() -> None:
    vms = [make_vm(id=f"vm-{i}", name=f"n{i}", vtpm_device_key=11000) for i in range(5)]
    fake = FakeVSphere(vms)
    progress: list[SyncResult] = []
    result = run_sync(fake, make_policy(), frozenset(), on_progress=progress.append)
    assert fake.apply_calls == []
    assert fake.read_vms_calls == []
    assert progress == []
    assert result.count(VMState.COMPLIANT) == 5


def test_apply_that_reports_success_without_effect_is_failed() -> None:
    fake = FakeVSphere([make_vm()], effective=False)
    result = run_sync(fake, make_policy(), frozenset())
    (outcome,) = result.outcomes
    assert outcome.state is VMState.FAILED
    assert "did not change" in outcome.message
    assert result.remediated == 0


def test_apply_error_without_effect_is_failed_with_vcenters_words() -> None:
    fake = FakeVSphere([make_vm()], effective=False, errors={"vm-1": "InvalidPowerState: powered on"})
    (outcome,) = run_sync(fake, make_policy(), frozenset()).outcomes
    assert outcome.state is VMState.FAILED
    assert outcome.message == "InvalidPowerState: powered on"


def test_error_after_the_change_took_is_still_failed() -> None:
    fake = FakeVSphere([make_vm()], errors={"vm-1": "could not power the VM on again"})
    result = run_sync(fake, make_policy(), frozenset())
    (outcome,) = result.outcomes
    assert outcome.state is VMState.FAILED
    assert outcome.message == "could not power the VM on again"
    assert result.remediated == 0


def test_vm_that_vanishes_during_the_change_is_failed() -> None:
    fake = FakeVSphere([make_vm()], vanish=frozenset({"vm-1"}))
    (outcome,) = run_sync(fake, make_policy(), frozenset()).outcomes
    assert outcome.state is VMState.FAILED
    assert "disappeared" in outcome.message


def test_removal_is_verified_too() -> None:
    vm = make_vm(vtpm_device_key=11000)
    policy = make_policy(vtpm=DesiredVTPM.ABSENT, allow_removal=True)
    fake = FakeVSphere([vm])
    result = run_sync(fake, policy, frozenset())
    assert result.remediated == 1
    assert not fake.vms["vm-1"].has_vtpm
    ineffective = run_sync(FakeVSphere([vm], effective=False), policy, frozenset())
    assert ineffective.outcomes[0].state is VMState.FAILED


def test_shutdown_change_passes_power_plan_to_the_adapter() -> None:
    fake = FakeVSphere([make_vm(power_state=PowerState.ON)])
    result = run_sync(fake, make_policy(action=PowerAction.SHUTDOWN), frozenset())
    ((change,),) = fake.apply_calls
    assert change.power_off_first
    assert change.restore_power
    assert result.remediated == 1


class TestDrift:
    def test_vm_that_lost_its_vtpm_is_drift_and_repaired(self) -> None:
        vms = [make_vm(id="vm-1", name="a", vtpm_device_key=1), make_vm(id="vm-2", name="b")]
        result = run_sync(FakeVSphere(vms), make_policy(), frozenset({"vm-1", "vm-2"}))
        assert result.drifted == 1
        assert result.remediated == 1
        assert result.count(VMState.COMPLIANT) == 2

    def test_audit_reports_drift_and_changes_nothing(self) -> None:
        fake = FakeVSphere([make_vm()])
        result = run_sync(fake, make_policy(mode=Mode.AUDIT), frozenset({"vm-1"}))
        assert result.drifted == 1
        assert fake.apply_calls == []
        assert result.outcomes[0].state is VMState.NON_COMPLIANT

    def test_vm_no_longer_selected_is_not_drift(self) -> None:
        result = run_sync(FakeVSphere([]), make_policy(), frozenset({"vm-9"}))
        assert result.drifted == 0
        assert result.outcomes == ()

    def test_newly_tagged_vm_is_not_drift(self) -> None:
        result = run_sync(FakeVSphere([make_vm()]), make_policy(), frozenset())
        assert result.drifted == 0

    @FLEET
    @given(vms=fleets(), policy=policies, data=st.data())
    def test_drift_is_previously_compliant_selected_and_not_compliant_now(
        self, vms: tuple[VMFacts, ...], policy: Policy, data: st.DataObject
    ) -> None:
        previous = frozenset(
            data.draw(st.lists(st.sampled_from([vm.id for vm in vms] + ["vm-gone"]), unique=True))
        )
        wants = policy.vtpm is DesiredVTPM.PRESENT
        compliant_at_read = {vm.id for vm in vms if vm.has_vtpm is wants}
        fake = FakeVSphere(vms)
        result = run_sync(fake, policy, previous)
        assert result.drifted == len((previous - {"vm-gone"}) - compliant_at_read)


@FLEET
@given(vms=fleets(), policy=policies)
def test_sync_properties(vms: tuple[VMFacts, ...], policy: Policy) -> None:
    fake = FakeVSphere(vms)
    progress: list[SyncResult] = []
    result = run_sync(fake, policy, frozenset(), on_progress=progress.append)
    assert sorted(o.id for o in result.outcomes) == sorted(vm.id for vm in vms)
    assert result.count(VMState.PENDING) == 0
    assert not result.in_flight
    changed = [c for call in fake.apply_calls for c in call]
    assert len(fake.apply_calls) <= 1
    if policy.mode is Mode.AUDIT:
        assert changed == []
    # every change took in this fake, so every changed VM is remediated and compliant
    assert result.remediated == len(changed)
    if changed:
        (report,) = progress
        assert report.in_flight
        assert {o.id for o in report.outcomes if o.state is VMState.PENDING} == {c.vm.id for c in changed}
    else:
        assert progress == []
    # a second sync never changes anything again
    again = run_sync(fake, policy, result.compliant_ids)
    assert len(fake.apply_calls) == (1 if changed else 0)
    assert again.drifted == 0
    assert again.remediated == 0
