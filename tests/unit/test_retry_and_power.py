"""Per-VM retry backoff, power-ons owed from interrupted changes, stale plans stopped early."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.facts import PowerState
from vtpm_operator.planning import VMOutcome, VMState, make_plan
from vtpm_operator.policy import Mode, PowerAction
from vtpm_operator.retry import MAX_SKIPPED, FailureBackoff
from vtpm_operator.status import MAX_VM_MESSAGE, vm_entries
from vtpm_operator.sync import SyncResult, run_sync

from .vtpm_factories import FakeVSphere, inventory, make_policy, make_vm


def failed(vm_id: str = "vm-1") -> SyncResult:
    return SyncResult(
        (VMOutcome(vm_id, "a", VMState.FAILED, message="SystemError"),), attempted=frozenset({vm_id})
    )


def test_a_failing_vm_sits_out_more_syncs_each_time() -> None:
    backoff = FailureBackoff()
    attempts = []
    for sync in range(30):
        if "vm-1" not in backoff.held():
            attempts.append(sync)
            backoff.record(failed())
        else:  # held: reported Failed again, but not attempted
            backoff.record(SyncResult((VMOutcome("vm-1", "a", VMState.FAILED, message="held"),)))
    assert attempts[:5] == [0, 1, 3, 7, 15]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert max(gaps) == MAX_SKIPPED + 1


def test_success_or_leaving_the_selection_forgets_the_failures() -> None:
    backoff = FailureBackoff()
    backoff.record(failed())
    backoff.record(failed())
    assert "vm-1" in backoff.held()
    backoff.record(SyncResult((VMOutcome("vm-1", "a", VMState.COMPLIANT),)))
    assert backoff.held() == {}
    backoff.record(failed())
    backoff.record(failed())
    backoff.record(SyncResult(()))  # the VM lost its tag
    assert backoff.failures == {}


def test_held_vm_is_reported_failed_and_not_changed() -> None:
    plan = make_plan(inventory([make_vm(id="vm-1", name="a")]), make_policy(), held={"vm-1": "SystemError"})
    assert plan.changes == ()
    (outcome,) = plan.outcomes
    assert outcome.state is VMState.FAILED
    assert "SystemError" in outcome.message and "later sync" in outcome.message


@given(mode=st.sampled_from(Mode), compliant=st.booleans(), blocked=st.booleans())
def test_a_power_on_owed_is_paid_whatever_else_happens(mode: Mode, compliant: bool, blocked: bool) -> None:
    vm = make_vm(
        power_state=PowerState.OFF,
        power_on_owed=True,
        vtpm_device_key=11000 if compliant else None,
        has_snapshots=blocked,
    )
    plan = make_plan(inventory([vm]), make_policy(mode=mode, action=PowerAction.SHUTDOWN))
    if plan.changes:  # the change itself powers it on afterwards
        (change,) = plan.changes
        assert change.restore_power and not change.power_off_first
        assert plan.power_restores == ()
    else:
        assert [r.id for r in plan.power_restores] == [vm.id]


def test_run_sync_pays_restores_and_keeps_the_vms_verdict() -> None:
    owed = make_vm(id="vm-1", name="a", vtpm_device_key=11000, power_state=PowerState.OFF, power_on_owed=True)
    fake = FakeVSphere([owed])
    result = run_sync(fake, make_policy(), frozenset())
    assert fake.restore_calls == [("vm-1",)]
    assert [o.state for o in result.outcomes] == [VMState.COMPLIANT]
    assert fake.vms["vm-1"].power_state is PowerState.ON


def test_changes_stop_starting_once_the_policy_changed() -> None:
    fake = FakeVSphere([make_vm(id=f"vm-{i}", name=f"v{i}") for i in range(3)])
    result = run_sync(fake, make_policy(), frozenset(), should_continue=lambda: False)
    assert {o.state for o in result.outcomes} == {VMState.PENDING}
    assert all("not started" in o.message for o in result.outcomes)
    assert result.remediated == 0 and result.attempted == frozenset()
    assert all(not vm.has_vtpm for vm in fake.vms.values())


def test_long_messages_are_clipped_to_the_crds_bounds() -> None:
    (entry,) = vm_entries([VMOutcome("vm-1", "a" * 300, VMState.FAILED, tuple("R" * 20), "x" * 5000)])
    assert len(entry["message"]) == MAX_VM_MESSAGE
    assert len(entry["name"]) == 255
    assert len(entry["reasons"]) == 16
