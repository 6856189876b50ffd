"""One sync of one policy: read vCenter, plan, apply, verify. Knows the adapter's interface, not Kopf."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vtpm_operator.facts import Inventory, VMFacts
from vtpm_operator.planning import Change, PolicyNote, VMOutcome, VMState, make_plan, pending
from vtpm_operator.policy import DesiredVTPM, Policy


class VSphere(Protocol):
    """What a sync needs from vCenter; the vSphere adapter implements it."""

    def read_inventory(self, policy: Policy) -> Inventory: ...

    def read_vms(self, vm_ids: Sequence[str]) -> Mapping[str, VMFacts]:
        """Fresh devices and power state of these VMs, to verify changes."""
        ...

    def apply(
        self,
        changes: Sequence[Change],
        restores: Sequence[VMFacts],
        policy: Policy,
        should_continue: Callable[[], bool],
    ) -> Mapping[str, str | None]:
        """Give the restores their power back, then carry out the changes, starting each only
        while should_continue() holds; per VM id started, None on success or what went wrong."""
        ...


@dataclass(frozen=True)
class SyncResult:
    outcomes: tuple[VMOutcome, ...]  # one per selected VM
    notes: tuple[PolicyNote, ...] = ()
    remediated_ids: frozenset[str] = frozenset()  # VMs this sync brought to the desired state, verified
    drifted: int = 0  # VMs compliant in the previous sync that were not at this sync's read
    excluded: int = 0
    in_flight: bool = False  # a progress report: changes are still running
    attempted: frozenset[str] = frozenset()  # VMs whose change this sync started

    @property
    def remediated(self) -> int:
        return len(self.remediated_ids)

    @property
    def compliant_ids(self) -> frozenset[str]:
        return frozenset(o.id for o in self.outcomes if o.state is VMState.COMPLIANT)

    def count(self, state: VMState) -> int:
        return sum(1 for o in self.outcomes if o.state is state)


def run_sync(
    vsphere: VSphere,
    policy: Policy,
    previously_compliant: frozenset[str],
    on_progress: Callable[[SyncResult], None] = lambda result: None,
    *,
    held: Mapping[str, str] | None = None,
    should_continue: Callable[[], bool] = lambda: True,
    claim: Callable[[frozenset[str]], Mapping[str, str]] = lambda selected: {},
) -> SyncResult:
    """`claim(selected)` records this policy's selection and answers which VMs another policy
    wants the opposite for (claims.ClaimBoard)."""
    inventory = vsphere.read_inventory(policy)
    selected = frozenset(vm.id for vm in inventory.vms)
    plan = make_plan(inventory, policy, held, claim(selected))
    drifted = len((previously_compliant & selected) - plan.compliant_at_read)
    outcomes = plan.outcomes
    if not plan.changes and not plan.power_restores:
        return SyncResult(outcomes, plan.notes, drifted=drifted, excluded=inventory.excluded)

    if plan.changes:
        queued = tuple(pending(change) for change in plan.changes)
        on_progress(
            SyncResult(
                _by_name(outcomes + queued),
                plan.notes,
                drifted=drifted,
                excluded=inventory.excluded,
                in_flight=True,
            )
        )
    errors = vsphere.apply(plan.changes, plan.power_restores, policy, should_continue)
    outcomes = tuple(_after_restore(o, errors) for o in outcomes)
    started = [change for change in plan.changes if change.vm.id in errors]
    # Count a VM compliant only once vCenter shows the change: tasks that "succeed" without
    # effect are a known failure of other tools.
    after = vsphere.read_vms([change.vm.id for change in started]) if started else {}
    verified = tuple(
        _verify(change, errors[change.vm.id], after.get(change.vm.id), policy) for change in started
    )
    not_started = tuple(
        VMOutcome(
            c.vm.id,
            c.vm.name,
            VMState.PENDING,
            message="not started: the policy changed or the operator stops",
        )
        for c in plan.changes
        if c.vm.id not in errors
    )
    return SyncResult(
        _by_name(outcomes + verified + not_started),
        plan.notes,
        remediated_ids=frozenset(o.id for o in verified if o.state is VMState.COMPLIANT),
        drifted=drifted,
        excluded=inventory.excluded,
        attempted=frozenset(change.vm.id for change in started),
    )


def _after_restore(outcome: VMOutcome, errors: Mapping[str, str | None]) -> VMOutcome:
    error = errors.get(outcome.id)
    if error is None:
        return outcome
    return VMOutcome(outcome.id, outcome.name, VMState.FAILED, outcome.reasons, error)


def _verify(change: Change, error: str | None, after: VMFacts | None, policy: Policy) -> VMOutcome:
    vm = change.vm
    if after is None:
        return VMOutcome(
            vm.id, vm.name, VMState.FAILED, message=error or "the VM disappeared during the change"
        )
    if after.has_vtpm != (policy.vtpm is DesiredVTPM.PRESENT):
        message = error or "vCenter reported success, but the VM's devices did not change"
        return VMOutcome(vm.id, vm.name, VMState.FAILED, message=message)
    if error:
        # The vTPM change took, but a step around it (restoring power) did not.
        return VMOutcome(vm.id, vm.name, VMState.FAILED, message=error)
    return VMOutcome(vm.id, vm.name, VMState.COMPLIANT)


def _by_name(outcomes: tuple[VMOutcome, ...]) -> tuple[VMOutcome, ...]:
    return tuple(sorted(outcomes, key=lambda o: (o.name, o.id)))
