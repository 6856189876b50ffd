"""Per-VM retries after failed changes, measured in time. Pure.

A VM that vCenter refuses would otherwise be retried at every look, and with powerPolicy.action
Shutdown each retry is a guest shut down and started again. After its n-th failure in a row a VM
waits base * 2**(n-1) (at most `longest`). After `limit` refusals in a row for the same fault it
is not tried again (RetriesExhausted) until its prerequisite facts change, its policy's spec
changes, or a person asks for another try.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Failure:
    count: int  # refusals in a row for `fault`
    fault: str  # what kind of refusal: the fault type, so that a different fault starts again at 1
    message: str  # vCenter's words, for status
    next_try: float  # unix time
    facts: str  # the VM's prerequisite facts when it failed: a change of them earns a new try


@dataclass(frozen=True)
class Hold:
    message: str
    exhausted: bool


@dataclass
class RetryBook:
    base: float = 30.0
    longest: float = 1800.0
    limit: int = 3
    failures: dict[str, Failure] = field(default_factory=dict)

    def failed(self, vm_id: str, fault: str, message: str, facts: str, now: float) -> Failure:
        earlier = self.failures.get(vm_id)
        count = earlier.count + 1 if earlier is not None and earlier.fault == fault else 1
        wait = min(self.longest, self.base * 2 ** (count - 1))
        failure = Failure(count, fault, message, now + wait, facts)
        self.failures[vm_id] = failure
        return failure

    def succeeded(self, vm_id: str) -> None:
        self.failures.pop(vm_id, None)

    def forget(self, vm_ids: Iterable[str] | None = None) -> None:
        """A person asked for another try (all VMs when None), or the spec changed."""
        if vm_ids is None:
            self.failures.clear()
        for vm_id in vm_ids or ():
            self.failures.pop(vm_id, None)

    def hold(self, vm_id: str, facts: str, now: float) -> Hold | None:
        """Why the VM must not be changed now, or None when it may."""
        failure = self.failures.get(vm_id)
        if failure is None:
            return None
        if failure.facts != facts:  # something a person fixed: try again at once
            del self.failures[vm_id]
            return None
        if failure.count >= self.limit:
            return Hold(
                f"vCenter refused {failure.count} times in a row: {failure.message}; fix the cause, "
                "or annotate the policy with vtpm-operator.io/retry to try again",
                exhausted=True,
            )
        if now < failure.next_try:
            after = datetime.fromtimestamp(failure.next_try, UTC).strftime("%H:%M:%SZ")
            return Hold(
                f"{failure.message} (attempt {failure.count} of {self.limit} failed; next try after {after})",
                exhausted=False,
            )
        return None

    def to_record(self) -> dict[str, dict[str, Any]]:
        """Plain data for the change record (kube/records.py)."""
        return {vm_id: asdict(failure) for vm_id, failure in sorted(self.failures.items())}

    def load_record(self, record: Mapping[str, Mapping[str, Any]]) -> None:
        """Take over what an earlier holder recorded (this replica's own memory wins where it has any)."""
        for vm_id, fields in record.items():
            self.failures.setdefault(vm_id, Failure(**fields))
