"""From the facts of one sync to a plan: which VMs change, how, and what every other VM's state is. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from vtpm_operator.facts import Inventory, PowerState, VMFacts
from vtpm_operator.policy import DesiredVTPM, Mode, Policy
from vtpm_operator.prerequisites import Action, Blocker, Reason, Verdict, choose_key_provider, evaluate
from vtpm_operator.retry import Hold


class VMState(StrEnum):
    COMPLIANT = "Compliant"
    NON_COMPLIANT = "NonCompliant"  # would be changed, but the policy does not allow it now (Audit)
    PENDING = "Pending"  # queued or being changed
    BLOCKED = "Blocked"  # prerequisites unmet: needs a person
    FAILED = "Failed"  # vCenter refused, or the change did not take


WAITING_FOR_TASK = "waiting for a task that is running on the VM"


class FailReason(StrEnum):
    """Why a Failed VM is not tried again by itself."""

    RETRIES_EXHAUSTED = "RetriesExhausted"


class NoteReason(StrEnum):
    """Policy-level reasons nothing more can happen for some VMs without a person."""

    REMOVAL_NOT_ALLOWED = "RemovalNotAllowed"
    KEY_PROVIDER_MISSING = "KeyProviderMissing"


@dataclass(frozen=True, slots=True)  # one per VM and policy: 200k at 10k VMs and 20 policies
class VMOutcome:
    id: str
    name: str
    state: VMState
    reasons: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class PolicyNote:
    reason: NoteReason
    message: str


@dataclass(frozen=True, slots=True)
class Change:
    vm: VMFacts
    action: Action
    power_off_first: bool
    restore_power: bool  # power the VM on again afterwards


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    outcomes: tuple[VMOutcome, ...]  # every selected VM that is not in changes
    notes: tuple[PolicyNote, ...]
    compliant_at_read: frozenset[str]  # VM ids already compliant before any change
    # VMs among `outcomes` that an earlier, interrupted change left owed a power-on. They get it
    # back whatever this sync decides for them, in Audit mode too: it undoes the operator's own act.
    power_restores: tuple[VMFacts, ...] = ()


def make_plan(
    inventory: Inventory,
    policy: Policy,
    held: Mapping[str, Hold | str] | None = None,
    contested: Mapping[str, str] | None = None,
    *,
    removal_refused: str | None = None,
) -> Plan:
    """`held`: VMs whose recent changes failed, with what went wrong; they wait for a later try,
    so that a VM vCenter keeps refusing is not power-cycled at every look.
    `contested`: VMs other policies want otherwise, with a message saying so (claims.py).
    `removal_refused`: why removal is not allowed, when it is not (default: the policy's switch)."""
    held = held or {}
    contested = contested or {}
    if removal_refused is None:
        removal_refused = default_removal_refusal(policy)
    provider = choose_key_provider(inventory.key_providers, policy.key_provider)
    changes: list[Change] = []
    outcomes: list[VMOutcome] = []
    verdicts = []
    for vm in sorted(inventory.vms, key=lambda v: (v.name, v.id)):
        verdict = with_conflict(evaluate(vm, policy, inventory.hosts, provider), contested.get(vm.id))
        verdicts.append(verdict)
        decision = decide(verdict, policy, removal_refused=removal_refused, held=held.get(vm.id))
        (changes if isinstance(decision, Change) else outcomes).append(decision)  # type: ignore[arg-type]
    changing = {change.vm.id for change in changes}
    return Plan(
        changes=tuple(changes),
        outcomes=tuple(outcomes),
        notes=policy_notes(outcomes, policy, removal_refused),
        compliant_at_read=frozenset(v.vm.id for v in verdicts if v.compliant),
        power_restores=tuple(
            v.vm
            for v in sorted(verdicts, key=lambda v: v.vm.id)
            if v.vm.power_on_owed and v.vm.id not in changing
        ),
    )


def default_removal_refusal(policy: Policy) -> str | None:
    """Why this policy may not remove a vTPM, or None when it may."""
    if policy.vtpm is DesiredVTPM.ABSENT and not policy.allow_removal:
        return "allowRemoval is false"
    return None


def decide(
    verdict: Verdict, policy: Policy, *, removal_refused: str | None, held: Hold | str | None = None
) -> VMOutcome | Change:
    """One VM's state under one policy, or the change that brings it there. The one place that decides."""
    vm = verdict.vm
    if verdict.compliant:
        return VMOutcome(vm.id, vm.name, VMState.COMPLIANT)
    if verdict.action is Action.REMOVE and removal_refused:
        # Before blockers: nobody should clear a blocker for a change never made.
        return VMOutcome(vm.id, vm.name, VMState.NON_COMPLIANT, message=f"has a vTPM; {removal_refused}")
    if verdict.blockers:
        return _blocked(verdict)
    if policy.mode is Mode.AUDIT:
        return _audited(verdict)
    if isinstance(held, Hold):
        reasons = (FailReason.RETRIES_EXHAUSTED.value,) if held.exhausted else ()
        return VMOutcome(vm.id, vm.name, VMState.FAILED, reasons, held.message)
    if held is not None:
        return VMOutcome(vm.id, vm.name, VMState.FAILED, message=f"{held} (retried later)")
    if vm.task_in_progress:  # someone else's task: not a blocker, the change waits for its end
        return VMOutcome(vm.id, vm.name, VMState.PENDING, message=WAITING_FOR_TASK)
    return Change(
        vm,
        verdict.action,
        power_off_first=verdict.power_off_first,
        restore_power=vm.power_on_owed
        or (verdict.power_off_first and policy.power.restore_power_state and vm.power_state is PowerState.ON),
    )


def with_conflict(verdict: Verdict, conflict_message: str | None) -> Verdict:
    if conflict_message is None or verdict.compliant:
        return verdict
    conflict = Blocker(Reason.CONFLICTING_POLICIES, conflict_message)
    return replace(verdict, blockers=(*verdict.blockers, conflict), power_off_first=False)


def pending(change: Change) -> VMOutcome:
    verb = "adding" if change.action is Action.ADD else "removing"
    how = " after shutting it down" if change.power_off_first else ""
    return VMOutcome(change.vm.id, change.vm.name, VMState.PENDING, message=f"{verb} vTPM{how}")


def _blocked(verdict: Verdict) -> VMOutcome:
    return VMOutcome(
        verdict.vm.id,
        verdict.vm.name,
        VMState.BLOCKED,
        reasons=tuple(b.reason.value for b in verdict.blockers),
        message="; ".join(b.detail for b in verdict.blockers),
    )


def _audited(verdict: Verdict) -> VMOutcome:
    verb = "add" if verdict.action is Action.ADD else "remove"
    how = " (after shutting it down)" if verdict.power_off_first else ""
    return VMOutcome(
        verdict.vm.id, verdict.vm.name, VMState.NON_COMPLIANT, message=f"Audit mode: would {verb} vTPM{how}"
    )


def policy_notes(
    outcomes: Iterable[VMOutcome], policy: Policy, removal_refused: str | None
) -> tuple[PolicyNote, ...]:
    """Policy-level notes, from the VMs' outcomes: what waits for a person beyond single VMs."""
    to_remove = missing_provider = 0
    refused = bool(removal_refused) and policy.vtpm is DesiredVTPM.ABSENT
    no_provider = Reason.KEY_PROVIDER_MISSING.value  # once: an enum's .value is a property call
    for outcome in outcomes:
        if refused and outcome.state is VMState.NON_COMPLIANT:
            to_remove += 1
        if no_provider in outcome.reasons:
            missing_provider += 1
    notes = []
    if to_remove:
        notes.append(
            PolicyNote(
                NoteReason.REMOVAL_NOT_ALLOWED,
                f"{to_remove} VMs have a vTPM, but {removal_refused}; removing a vTPM destroys "
                "BitLocker keys and other secrets sealed to it, so allow removal only on purpose",
            )
        )
    if missing_provider:
        wanted = f"key provider {policy.key_provider!r}" if policy.key_provider else "a default key provider"
        notes.append(
            PolicyNote(
                NoteReason.KEY_PROVIDER_MISSING,
                f"vCenter has no usable {wanted} (a native key provider must be backed up first); "
                f"{missing_provider} VMs wait for it",
            )
        )
    return tuple(notes)
