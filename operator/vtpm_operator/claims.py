"""Which policies select which VMs, so that two policies never fight over one VM.

A Present policy and an Absent one (with allowRemoval) that both select a VM would add and
remove its vTPM in turn, destroying whatever BitLocker sealed to it each time. Each worker
claims the VMs it selected before it plans; a VM that another policy on the same vCenter claims
with the opposite wish is Blocked (ConflictingPolicies) in both, until a person settles it.
Claim and check happen under one lock, so at most one of two racing policies acts on a VM.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from vtpm_operator.policy import DesiredVTPM


@dataclass(frozen=True)
class Claim:
    server: str
    desired: DesiredVTPM
    vm_ids: frozenset[str]


@dataclass
class ClaimBoard:
    _claims: dict[str, Claim] = field(default_factory=dict)  # policy "namespace/name" → its claim
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, policy: str, claim: Claim) -> dict[str, str]:
        """Record the policy's selection; per contested VM id, the other policy that wants the opposite."""
        with self._lock:
            self._claims[policy] = claim
            contested: dict[str, str] = {}
            for other, theirs in sorted(self._claims.items()):
                if other == policy or theirs.server != claim.server or theirs.desired == claim.desired:
                    continue
                for vm_id in claim.vm_ids & theirs.vm_ids:
                    contested.setdefault(vm_id, other)
            return contested

    def withdraw(self, policy: str) -> None:
        with self._lock:
            self._claims.pop(policy, None)
