"""What every policy of one vCenter wants of each VM it selects, judged together. Pure.

Claims are computed from the whole index of that vCenter's policies each time they are needed,
never kept in a side table filled by whichever policy looked first: so an operator restart
cannot change who wins. Two rules follow from what a vTPM is:
- A Present policy and a removing Absent policy (or two Present policies with different key
  providers) over one VM would undo each other, destroying BitLocker keys each time: the VM is
  changed by nobody and every policy involved reports ConflictingPolicies.
- Policies that want the same state change the VM once, under the most careful settings among
  those that act (Enforce): Skip beats Shutdown, forcePowerOff only if every one allows it, the
  longest shutdownTimeout, power restored if any asks for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from vtpm_operator.policy import DesiredVTPM, Mode, Policy, PowerAction, PowerPolicy


@dataclass(frozen=True)
class Claimant:
    key: str  # "namespace/name"
    namespace: str
    name: str
    policy: Policy
    removal_allowed: bool  # the policy's allowRemoval and its VCenter's
    selected: frozenset[str]  # VM ids

    @property
    def wish(self) -> tuple[DesiredVTPM, str | None] | None:
        """What this policy would do to a VM that is not as it wants; None: it would change nothing."""
        if self.policy.vtpm is DesiredVTPM.ABSENT:
            return (DesiredVTPM.ABSENT, None) if self.removal_allowed else None
        return DesiredVTPM.PRESENT, self.policy.key_provider


@dataclass(frozen=True)
class SharedVM:
    """A VM that more than one policy selects."""

    claimants: tuple[Claimant, ...]
    conflict: bool  # the claimants' wishes disagree: nobody changes the VM
    power: PowerPolicy | None  # the most careful settings of those that act, if any act

    def conflict_message(self, viewer: Claimant) -> str:
        """Names another policy only when it is in the viewer's namespace: others are not its business."""
        others = [c for c in self.claimants if c.key != viewer.key]
        visible = sorted(c.name for c in others if c.namespace == viewer.namespace)
        named = f" (policy {', '.join(visible)} among them)" if visible else ""
        return (
            f"{len(others)} other policies select this VM and want a different vTPM state or key "
            f"provider{named}; nobody changes it until the selections are made disjoint"
        )

    def effective(self, policy: Policy) -> Policy:
        """The policy as it applies to this VM: with the shared, most careful power settings."""
        return policy if self.power is None else replace(policy, power=self.power)


def judge(claimants: Iterable[Claimant]) -> dict[str, SharedVM]:
    """Per VM id selected by two or more policies: who selects it, whether they conflict, the settings."""
    by_vm: dict[str, list[Claimant]] = defaultdict(list)
    for claimant in claimants:
        for vm_id in claimant.selected:
            by_vm[vm_id].append(claimant)
    # VMs selected by the same policies share one judgement: a fleet has far fewer such sets than
    # VMs (hack/bench.py's 20 policies: 20 sets over 10k VMs).
    judged: dict[tuple[str, ...], SharedVM] = {}
    shared: dict[str, SharedVM] = {}
    for vm_id, those in by_vm.items():
        if len(those) < 2:
            continue
        keys = tuple(c.key for c in those)
        entry = judged.get(keys)
        if entry is None:
            entry = judged[keys] = _shared(those)
        shared[vm_id] = entry
    return shared


def _shared(those: list[Claimant]) -> SharedVM:
    wishes = {c.wish for c in those if c.wish is not None}
    acting = [c.policy.power for c in those if c.policy.mode is Mode.ENFORCE]
    return SharedVM(
        tuple(sorted(those, key=lambda c: c.key)), len(wishes) > 1, careful(acting) if acting else None
    )


def careful(settings: Iterable[PowerPolicy]) -> PowerPolicy:
    """The most careful combination of power settings."""
    listed = list(settings)
    return PowerPolicy(
        action=PowerAction.SKIP
        if any(p.action is PowerAction.SKIP for p in listed)
        else PowerAction.SHUTDOWN,
        shutdown_timeout=max(p.shutdown_timeout for p in listed),
        force_power_off=all(p.force_power_off for p in listed),
        restore_power_state=any(p.restore_power_state for p in listed),
    )


def selecting(shared: Mapping[str, SharedVM], vm_id: str, claimant: Claimant) -> tuple[Claimant, ...]:
    """Every policy that selects the VM (the claimant itself when it is the only one)."""
    entry = shared.get(vm_id)
    return entry.claimants if entry is not None else (claimant,)
