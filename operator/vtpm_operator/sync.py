"""What one look at a policy found: the outcome of every VM it selects. Plain data, pure.

The engine builds one whenever a policy's view changes; status.py and events.py turn it into
the status document and the events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

from vtpm_operator.planning import PolicyNote, VMOutcome, VMState


@dataclass(frozen=True)
class SyncResult:
    outcomes: tuple[VMOutcome, ...]  # one per selected VM
    notes: tuple[PolicyNote, ...] = ()
    remediated_ids: frozenset[str] = frozenset()  # VMs brought to the desired state since the last look
    drifted: int = 0  # VMs that were compliant at the last look and are not now
    excluded: int = 0
    in_flight: bool = False  # changes are still running

    @property
    def remediated(self) -> int:
        return len(self.remediated_ids)

    @property
    def compliant_ids(self) -> frozenset[str]:
        return frozenset(o.id for o in self.outcomes if o.state is VMState.COMPLIANT)

    # Counted once: the status, its conditions and the metrics all ask, per policy, over up to
    # every VM of the fleet.
    @cached_property
    def states(self) -> Counter[VMState]:
        return Counter(o.state for o in self.outcomes)

    @cached_property
    def blocked_reasons(self) -> Counter[str]:
        """How many blocked VMs each reason blocks."""
        return Counter(chain.from_iterable(o.reasons for o in self.outcomes if o.state is VMState.BLOCKED))

    def count(self, state: VMState) -> int:
        return self.states[state]
