"""Per-VM backoff after failed changes. Pure.

A VM that vCenter refuses would otherwise be retried at every resync, and with
powerPolicy.action Shutdown that means a guest shut down and started again every five minutes.
After its n-th failure in a row a VM sits out 2**(n-1) - 1 syncs (at most MAX_SKIPPED).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtpm_operator.planning import VMState
from vtpm_operator.sync import SyncResult

MAX_SKIPPED = 7


@dataclass
class FailureBackoff:
    sync_number: int = 0
    # VM id → (failures in a row, sync number of its next attempt, what went wrong last time)
    failures: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def held(self) -> dict[str, str]:
        """VMs the coming sync must not change, with their last failure."""
        return {
            vm: message for vm, (_, next_try, message) in self.failures.items() if next_try > self.sync_number
        }

    def record(self, result: SyncResult) -> None:
        """After a completed sync: count its failed changes, forget VMs that succeeded or left."""
        self.sync_number += 1
        selected = {o.id: o for o in result.outcomes}
        for vm in list(self.failures):
            if vm not in selected or selected[vm].state is VMState.COMPLIANT:
                del self.failures[vm]
        for vm in result.attempted:
            outcome = selected.get(vm)
            if outcome is None or outcome.state is not VMState.FAILED:
                continue
            count = self.failures.get(vm, (0, 0, ""))[0] + 1
            skipped = min(MAX_SKIPPED, 2 ** (count - 1) - 1)
            self.failures[vm] = (count, self.sync_number + skipped, outcome.message)
