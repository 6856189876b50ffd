"""Policies as views over one vCenter's live inventory.

A view owns nothing but what it showed last: its VMs' outcomes (for drift and for events that
are new) and the status document it built (for running totals and condition times). Every
decision in it is the pure core's: claims.judge, prerequisites.evaluate, planning.decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from vtpm_operator.claims import Claimant, SharedVM
from vtpm_operator.facts import HostFacts, KeyProvider, VMFacts
from vtpm_operator.planning import (
    Change,
    VMOutcome,
    VMState,
    decide,
    pending,
    policy_notes,
    with_conflict,
)
from vtpm_operator.policy import Policy
from vtpm_operator.prerequisites import Reason, choose_key_provider, evaluate
from vtpm_operator.retry import Hold
from vtpm_operator.sync import SyncResult

_BY_NAME = attrgetter("name", "id")  # the order of a status's VMs: a key in C, not a lambda per VM


@dataclass(frozen=True)
class Fleet:
    """What every view of one vCenter reads at one moment."""

    vms: Mapping[str, VMFacts]
    hosts: Mapping[str, HostFacts]
    key_providers: tuple[KeyProvider, ...]
    shared: Mapping[str, SharedVM]
    in_flight: Mapping[str, str]  # VM id → what is being done to it
    overdue: Mapping[str, str]  # VM id → why its change is Failed while its task still runs
    waiting: Mapping[str, str]  # VM id → why its change waits (a task of someone else's running)
    holds: Mapping[str, Hold]
    # Views that judge a VM alike share one judgement, and one outcome object: 20 policies over
    # 10k VMs are 57k judgements but only 10k distinct ones (hack/bench.py's policies).
    judged: dict[tuple[str, int], tuple[VMOutcome, Change | None]] = field(
        default_factory=dict, compare=False
    )
    bases: dict[tuple[Policy, KeyProvider | None, str | None], int] = field(
        default_factory=dict, compare=False
    )

    def basis(self, policy: Policy, provider: KeyProvider | None, removal_refused: str | None) -> int:
        """A small number for everything of a view that its judgements depend on; its selection
        (tags) is not part of it: the VMs a view judges are its own, the verdicts are not."""
        judging = replace(policy, vcenter="", tags=(), exclude_tags=())
        return self.bases.setdefault((judging, provider, removal_refused), len(self.bases))


@dataclass
class PolicyView:
    claimant: Claimant
    removal_refused: str | None
    excluded: int = 0
    outcomes: dict[str, VMOutcome] = field(default_factory=dict)
    wanted: dict[str, Change] = field(default_factory=dict)  # VM id → the change this policy asks for
    document: dict[str, Any] = field(default_factory=dict)  # the status it built last
    remediated: set[str] = field(default_factory=set)  # since its last report
    drifted: set[str] = field(default_factory=set)  # since its last report
    changed: bool = True  # something to show since the last report

    @property
    def policy(self) -> Policy:
        return self.claimant.policy

    def refresh(self, fleet: Fleet, vm_ids: Iterable[str] | None = None) -> None:
        """Judge again the given VMs (all it selects when None); note drift as it goes."""
        selected = self.claimant.selected
        if vm_ids is None:
            for vm_id in set(self.outcomes) - selected:  # no longer selected: gone from the view
                del self.outcomes[vm_id]
                self.wanted.pop(vm_id, None)
                self.changed = True
        todo = selected if vm_ids is None else (set(vm_ids) & selected) | (set(vm_ids) & self.outcomes.keys())
        provider = choose_key_provider(fleet.key_providers, self.policy.key_provider)
        basis = fleet.basis(self.policy, provider, self.removal_refused)
        for vm_id in todo:
            facts = fleet.vms.get(vm_id)
            earlier = self.outcomes.get(vm_id)
            if facts is None or vm_id not in selected:
                self.changed |= self.outcomes.pop(vm_id, None) is not None
                self.wanted.pop(vm_id, None)
                continue
            outcome, change = self._judge(facts, fleet, provider, basis)
            if _drifted(earlier, outcome):
                self.drifted.add(vm_id)
            self.changed |= outcome != earlier
            self.outcomes[vm_id] = outcome
            if change is None:
                self.wanted.pop(vm_id, None)
            else:
                self.wanted[vm_id] = change

    def _judge(
        self, vm: VMFacts, fleet: Fleet, provider: KeyProvider | None, basis: int
    ) -> tuple[VMOutcome, Change | None]:
        overdue = fleet.overdue.get(vm.id)
        if overdue is not None:
            return VMOutcome(vm.id, vm.name, VMState.FAILED, message=overdue), None
        doing = fleet.in_flight.get(vm.id)
        if doing is not None:
            return VMOutcome(vm.id, vm.name, VMState.PENDING, message=doing), None
        shared = fleet.shared.get(vm.id)
        policy = shared.effective(self.policy) if shared is not None else self.policy
        conflict = shared.conflict_message(self.claimant) if shared is not None and shared.conflict else None
        if conflict is not None:  # its words name the viewer's neighbours: its own judgement
            return self._decide(vm, policy, fleet, provider, conflict)
        key = (vm.id, basis)  # all else it depends on is the VM's: its holds, sharing, waits
        known = fleet.judged.get(key)  # a Fleet lives for one round: its VMs' facts stay as they are
        if known is None:
            known = fleet.judged[key] = self._decide(vm, policy, fleet, provider, None)
        return known

    def _decide(
        self, vm: VMFacts, policy: Policy, fleet: Fleet, provider: KeyProvider | None, conflict: str | None
    ) -> tuple[VMOutcome, Change | None]:
        verdict = with_conflict(evaluate(vm, policy, fleet.hosts, provider), conflict)
        if conflict is not None and verdict.compliant:  # every policy involved says so, the content one too
            return VMOutcome(
                vm.id, vm.name, VMState.BLOCKED, (Reason.CONFLICTING_POLICIES.value,), conflict
            ), None
        decision = decide(verdict, policy, removal_refused=self.removal_refused, held=fleet.holds.get(vm.id))
        if isinstance(decision, Change):
            waits = fleet.waiting.get(vm.id)
            if waits is None:
                return pending(decision), decision
            return VMOutcome(vm.id, vm.name, VMState.PENDING, message=waits), decision
        return decision, None

    def report(self, in_flight: bool) -> SyncResult:
        """What to show now; the remediated and drifted VMs since the last report are handed over."""
        outcomes = tuple(sorted(self.outcomes.values(), key=_BY_NAME))
        result = SyncResult(
            outcomes,
            policy_notes(outcomes, self.policy, self.removal_refused),
            remediated_ids=frozenset(self.remediated),
            drifted=len(self.drifted),
            excluded=self.excluded,
            in_flight=in_flight,
        )
        self.remediated.clear()
        self.drifted.clear()
        self.changed = False
        return result


def _drifted(earlier: VMOutcome | None, now: VMOutcome) -> bool:
    """Compliant before, not now, and not because another policy came to disagree: the VM itself
    lost its state."""
    if earlier is None or earlier.state is not VMState.COMPLIANT or now.state is VMState.COMPLIANT:
        return False
    return Reason.CONFLICTING_POLICIES.value not in now.reasons
