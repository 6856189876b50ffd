"""From the facts of one sync to a plan: which VMs change, how, and what every other VM's state is. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from vtpm_operator.facts import Inventory, PowerState, VMFacts
from vtpm_operator.policy import DesiredVTPM, Mode, Policy
from vtpm_operator.prerequisites import Action, Blocker, Reason, Verdict, choose_key_provider, evaluate


class VMState(StrEnum):
    COMPLIANT = "Compliant"
    NON_COMPLIANT = "NonCompliant"  # would be changed, but the policy does not allow it now (Audit)
    PENDING = "Pending"  # queued or being changed
    BLOCKED = "Blocked"  # prerequisites unmet: needs a person
    FAILED = "Failed"  # vCenter refused, or the change did not take


class NoteReason(StrEnum):
    """Policy-level reasons nothing more can happen for some VMs without a person."""

    REMOVAL_NOT_ALLOWED = "RemovalNotAllowed"
    KEY_PROVIDER_MISSING = "KeyProviderMissing"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    held: Mapping[str, str] | None = None,
    contested: Mapping[str, str] | None = None,
) -> Plan:
    """`held`: VMs whose recent changes failed, with what went wrong; they wait for a later sync
    (see retry.py), so that a VM vCenter keeps refusing is not power-cycled at every resync.
    `contested`: VMs another policy wants the opposite for, with that policy (see claims.py)."""
    held = held or {}
    contested = contested or {}
    provider = choose_key_provider(inventory.key_providers, policy.key_provider)
    verdicts = [
        _with_conflict(evaluate(vm, policy, inventory.hosts, provider), contested.get(vm.id))
        for vm in inventory.vms
    ]
    removal_refused = policy.vtpm is DesiredVTPM.ABSENT and not policy.allow_removal
    changes: list[Change] = []
    outcomes: list[VMOutcome] = []
    for verdict in sorted(verdicts, key=lambda v: (v.vm.name, v.vm.id)):
        vm = verdict.vm
        if verdict.compliant:
            outcomes.append(VMOutcome(vm.id, vm.name, VMState.COMPLIANT))
        elif removal_refused:  # before blockers: nobody should clear a blocker for a change never made
            outcomes.append(
                VMOutcome(vm.id, vm.name, VMState.NON_COMPLIANT, message="has a vTPM; allowRemoval is false")
            )
        elif verdict.blockers:
            outcomes.append(_blocked(verdict))
        elif policy.mode is Mode.AUDIT:
            outcomes.append(_audited(verdict))
        elif vm.id in held:
            outcomes.append(
                VMOutcome(vm.id, vm.name, VMState.FAILED, message=f"{held[vm.id]} (retried at a later sync)")
            )
        else:
            changes.append(
                Change(
                    vm,
                    verdict.action,
                    power_off_first=verdict.power_off_first,
                    restore_power=vm.power_on_owed
                    or (
                        verdict.power_off_first
                        and policy.power.restore_power_state
                        and vm.power_state is PowerState.ON
                    ),
                )
            )
    changing = {change.vm.id for change in changes}
    return Plan(
        changes=tuple(changes),
        outcomes=tuple(outcomes),
        notes=_notes(verdicts, removal_refused, policy),
        compliant_at_read=frozenset(v.vm.id for v in verdicts if v.compliant),
        power_restores=tuple(
            v.vm
            for v in sorted(verdicts, key=lambda v: v.vm.id)
            if v.vm.power_on_owed and v.vm.id not in changing
        ),
    )


def _with_conflict(verdict: Verdict, other_policy: str | None) -> Verdict:
    if other_policy is None or verdict.compliant:
        return verdict
    conflict = Blocker(
        Reason.CONFLICTING_POLICIES,
        f"policy {other_policy} selects this VM too and wants the opposite; make the selections disjoint",
    )
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


def _notes(verdicts: list[Verdict], removal_refused: bool, policy: Policy) -> tuple[PolicyNote, ...]:
    notes = []
    to_remove = sum(1 for v in verdicts if v.action is Action.REMOVE)
    if removal_refused and to_remove:
        notes.append(
            PolicyNote(
                NoteReason.REMOVAL_NOT_ALLOWED,
                f"{to_remove} VMs have a vTPM, but allowRemoval is false; removing a vTPM destroys "
                "BitLocker keys and other secrets sealed to it, so set allowRemoval: true only on purpose",
            )
        )
    missing_provider = sum(
        1 for v in verdicts if any(b.reason is Reason.KEY_PROVIDER_MISSING for b in v.blockers)
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
