"""planning.make_plan: who changes, who does not and why, and the policy-level notes."""

from __future__ import annotations

from hypothesis import given

from vtpm_operator.facts import KeyProvider, PowerState, VMFacts
from vtpm_operator.planning import WAITING_FOR_TASK, NoteReason, VMState, make_plan, pending
from vtpm_operator.policy import DesiredVTPM, Mode, Policy, PowerAction
from vtpm_operator.prerequisites import Action, Reason

from .vtpm_factories import (
    DEFAULT_PROVIDER,
    FLEET,
    HOSTS,
    fleets,
    inventory,
    make_policy,
    make_vm,
    oracle,
    policies,
)


def _removal_refused(policy: Policy) -> bool:
    return policy.vtpm is DesiredVTPM.ABSENT and not policy.allow_removal


@FLEET
@given(vms=fleets(), policy=policies)
def test_every_selected_vm_appears_exactly_once(vms: tuple[VMFacts, ...], policy: Policy) -> None:
    plan = make_plan(inventory(vms), policy)
    ids = [c.vm.id for c in plan.changes] + [o.id for o in plan.outcomes]
    assert sorted(ids) == sorted(vm.id for vm in vms)
    busy = {vm.id for vm in vms if vm.task_in_progress}  # they wait for someone else's task
    assert all(o.id in busy for o in plan.outcomes if o.state is VMState.PENDING)


@FLEET
@given(vms=fleets(), policy=policies)
def test_audit_never_changes_anything(vms: tuple[VMFacts, ...], policy: Policy) -> None:
    audit = make_policy(
        vtpm=policy.vtpm,
        mode=Mode.AUDIT,
        allow_removal=policy.allow_removal,
        key_provider=policy.key_provider,
        action=policy.power.action,
        force_power_off=policy.power.force_power_off,
    )
    plan = make_plan(inventory(vms), audit)
    assert plan.changes == ()
    for outcome in plan.outcomes:
        vm = next(v for v in vms if v.id == outcome.id)
        expected = oracle(vm, audit, HOSTS, DEFAULT_PROVIDER if audit.key_provider is None else None)
        if expected is None:
            assert outcome.state is VMState.COMPLIANT
        elif expected and not _removal_refused(audit):
            assert outcome.state is VMState.BLOCKED
        else:
            assert outcome.state is VMState.NON_COMPLIANT


@FLEET
@given(vms=fleets(), policy=policies)
def test_states_follow_the_prerequisites(vms: tuple[VMFacts, ...], policy: Policy) -> None:
    """Enforce changes exactly the unblocked non-compliant VMs (unless removal is refused)."""
    provider = DEFAULT_PROVIDER if policy.key_provider is None else None
    plan = make_plan(inventory(vms, providers=(DEFAULT_PROVIDER,)), policy)
    by_id = {vm.id: vm for vm in vms}
    expected_changes = {
        vm.id
        for vm in vms
        if oracle(vm, policy, HOSTS, provider) == set()
        and policy.mode is Mode.ENFORCE
        and not _removal_refused(policy)
        and not vm.task_in_progress  # waits for someone else's task (Pending)
    }
    assert {c.vm.id for c in plan.changes} == expected_changes
    for change in plan.changes:
        vm = by_id[change.vm.id]
        assert change.action is (Action.ADD if policy.vtpm is DesiredVTPM.PRESENT else Action.REMOVE)
        assert change.power_off_first == (vm.power_state is not PowerState.OFF)
        assert change.restore_power == (
            vm.power_state is PowerState.ON and change.power_off_first and policy.power.restore_power_state
        )
    for outcome in plan.outcomes:
        expected = oracle(by_id[outcome.id], policy, HOSTS, provider)
        if expected is None:
            assert outcome.state is VMState.COMPLIANT
            assert outcome.reasons == ()
        elif expected and not _removal_refused(policy):  # a refused removal is never Blocked
            assert outcome.state is VMState.BLOCKED
            assert set(outcome.reasons) == {r.value for r in expected}
            assert outcome.message
        elif policy.mode is Mode.ENFORCE and not _removal_refused(policy):
            assert by_id[outcome.id].task_in_progress
            assert outcome.state is VMState.PENDING and outcome.message == WAITING_FOR_TASK
        else:
            assert outcome.state is VMState.NON_COMPLIANT
            assert outcome.reasons == ()
    assert plan.compliant_at_read == {vm.id for vm in vms if oracle(vm, policy, HOSTS, provider) is None}


@FLEET
@given(vms=fleets(), policy=policies)
def test_outcomes_are_ordered_by_name(vms: tuple[VMFacts, ...], policy: Policy) -> None:
    plan = make_plan(inventory(vms), policy)
    keys = [(o.name, o.id) for o in plan.outcomes]
    assert keys == sorted(keys)


def test_enforce_changes_the_unblocked_vm_only() -> None:
    ready = make_vm(id="vm-1", name="ready")
    blocked = make_vm(id="vm-2", name="blocked", has_snapshots=True)
    done = make_vm(id="vm-3", name="done", vtpm_device_key=11000)
    plan = make_plan(inventory([ready, blocked, done]), make_policy())
    assert [c.vm.id for c in plan.changes] == ["vm-1"]
    assert plan.changes[0].action is Action.ADD
    states = {o.id: o.state for o in plan.outcomes}
    assert states == {"vm-2": VMState.BLOCKED, "vm-3": VMState.COMPLIANT}
    assert plan.compliant_at_read == {"vm-3"}
    assert plan.notes == ()


def test_audit_reports_non_compliant_with_what_it_would_do() -> None:
    vm = make_vm(power_state=PowerState.ON)
    plan = make_plan(inventory([vm]), make_policy(mode=Mode.AUDIT, action=PowerAction.SHUTDOWN))
    (outcome,) = plan.outcomes
    assert plan.changes == ()
    assert outcome.state is VMState.NON_COMPLIANT
    assert "would add" in outcome.message
    assert "shutting it down" in outcome.message


class TestRemoval:
    def test_absent_without_allow_removal_changes_nothing(self) -> None:
        vms = [make_vm(id=f"vm-{i}", name=f"app-{i}", vtpm_device_key=11000) for i in range(3)]
        plan = make_plan(inventory(vms), make_policy(vtpm=DesiredVTPM.ABSENT, allow_removal=False))
        assert plan.changes == ()
        assert [o.state for o in plan.outcomes] == [VMState.NON_COMPLIANT] * 3
        assert all("allowRemoval" in o.message for o in plan.outcomes)
        (note,) = plan.notes
        assert note.reason is NoteReason.REMOVAL_NOT_ALLOWED
        assert note.message.startswith("3 VMs")

    def test_absent_with_allow_removal_removes(self) -> None:
        vm = make_vm(vtpm_device_key=11000)
        plan = make_plan(inventory([vm]), make_policy(vtpm=DesiredVTPM.ABSENT, allow_removal=True))
        (change,) = plan.changes
        assert change.action is Action.REMOVE
        assert plan.notes == ()

    def test_no_note_when_nothing_has_a_vtpm(self) -> None:
        plan = make_plan(inventory([make_vm()]), make_policy(vtpm=DesiredVTPM.ABSENT))
        assert plan.notes == ()
        assert plan.outcomes[0].state is VMState.COMPLIANT


class TestKeyProviderNote:
    def test_note_when_vms_wait_for_a_provider(self) -> None:
        vms = [make_vm(id="vm-1", name="a"), make_vm(id="vm-2", name="b"), make_vm(id="vm-3", name="c")]
        unusable = KeyProvider("kp-default", is_default=True, usable=False, kind="native")
        plan = make_plan(inventory(vms, providers=(unusable,)), make_policy())
        assert plan.changes == ()
        assert all(o.reasons == (Reason.KEY_PROVIDER_MISSING.value,) for o in plan.outcomes)
        (note,) = plan.notes
        assert note.reason is NoteReason.KEY_PROVIDER_MISSING
        assert "3 VMs" in note.message
        assert "default key provider" in note.message

    def test_note_names_the_wanted_provider(self) -> None:
        plan = make_plan(inventory([make_vm()]), make_policy(key_provider="kp-gone"))
        (note,) = plan.notes
        assert "kp-gone" in note.message

    def test_no_note_when_everything_is_compliant(self) -> None:
        plan = make_plan(inventory([make_vm(vtpm_device_key=1)], providers=()), make_policy())
        assert plan.notes == ()

    def test_named_provider_is_used(self) -> None:
        named = KeyProvider("kp-named", is_default=False, usable=True, kind="kmip")
        plan = make_plan(inventory([make_vm()], providers=(named,)), make_policy(key_provider="kp-named"))
        assert len(plan.changes) == 1
        assert plan.notes == ()


class TestRestorePower:
    def test_restored_when_it_was_on(self) -> None:
        vm = make_vm(power_state=PowerState.ON)
        (change,) = make_plan(inventory([vm]), make_policy(action=PowerAction.SHUTDOWN)).changes
        assert change.power_off_first
        assert change.restore_power

    def test_not_restored_when_restore_power_state_is_false(self) -> None:
        vm = make_vm(power_state=PowerState.ON)
        policy = make_policy(action=PowerAction.SHUTDOWN, restore_power_state=False)
        (change,) = make_plan(inventory([vm]), policy).changes
        assert change.power_off_first
        assert not change.restore_power

    def test_not_restored_when_it_was_off(self) -> None:
        (change,) = make_plan(inventory([make_vm()]), make_policy(action=PowerAction.SHUTDOWN)).changes
        assert not change.power_off_first
        assert not change.restore_power


def test_pending_outcome_says_what_is_happening() -> None:
    vm = make_vm(power_state=PowerState.ON)
    (change,) = make_plan(inventory([vm]), make_policy(action=PowerAction.SHUTDOWN)).changes
    outcome = pending(change)
    assert outcome.state is VMState.PENDING
    assert outcome.id == vm.id
    assert outcome.message == "adding vTPM after shutting it down"
