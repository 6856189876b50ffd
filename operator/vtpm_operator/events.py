"""Which Kubernetes events a sync deserves: summarised, repeated only when something changes. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from vtpm_operator.planning import VMOutcome, VMState
from vtpm_operator.policy import DesiredVTPM
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.sync import SyncResult

MAX_NAMES = 10


@dataclass(frozen=True)
class Notice:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


def notices_for(
    previous: SyncResult | PolicyProblem | None,
    current: SyncResult | PolicyProblem,
    desired: DesiredVTPM,
    *,
    last_sync: SyncResult | None = None,
) -> list[Notice]:
    """Events for `current`; `last_sync`, the last completed sync (even before a problem), decides
    which blocked and failed VMs are new, so that a vCenter outage does not repeat every warning."""
    if isinstance(current, PolicyProblem):
        if isinstance(previous, PolicyProblem) and previous.reason == current.reason:
            return []
        return [Notice("Warning", current.reason.value, current.message)]
    notices = []
    if isinstance(previous, PolicyProblem):
        notices.append(Notice("Normal", "SyncRecovered", f"vCenter read again after {previous.reason.value}"))
    if current.remediated:
        changed = [o for o in current.outcomes if o.id in current.remediated_ids]
        verb, reason = (
            ("added a vTPM to", "VTPMAdded")
            if desired is DesiredVTPM.PRESENT
            else (
                "removed the vTPM from",
                "VTPMRemoved",
            )
        )
        notices.append(Notice("Normal", reason, f"{verb} {current.remediated} VMs: {_names(changed)}"))
    if current.drifted:
        notices.append(
            Notice(
                "Warning",
                "DriftDetected",
                f"{current.drifted} VMs compliant at the previous sync no longer were",
            )
        )
    before = last_sync if last_sync is not None else previous
    for state, reason in ((VMState.BLOCKED, "VMsBlocked"), (VMState.FAILED, "VMsFailed")):
        if not current.count(state):
            continue  # no VM in it: neither walk this look's VMs nor the last's
        earlier = _ids_in(before, state)
        fresh = [o for o in current.outcomes if o.state is state and o.id not in earlier]
        if fresh:
            notices.append(
                Notice("Warning", reason, f"{len(fresh)} VMs newly {state.value.lower()}: {_details(fresh)}")
            )
    return notices


def _ids_in(result: SyncResult | PolicyProblem | None, state: VMState) -> frozenset[str]:
    if not isinstance(result, SyncResult):
        return frozenset()
    return frozenset(o.id for o in result.outcomes if o.state is state)


def _names(outcomes: list[VMOutcome]) -> str:
    names = ", ".join(o.name for o in outcomes[:MAX_NAMES])
    return names + (f" and {len(outcomes) - MAX_NAMES} more" if len(outcomes) > MAX_NAMES else "")


def _details(outcomes: list[VMOutcome]) -> str:
    shown = "; ".join(
        f"{o.name} ({', '.join(o.reasons)})" if o.reasons else f"{o.name} ({o.message})"
        for o in outcomes[:MAX_NAMES]
    )
    return shown + (f"; and {len(outcomes) - MAX_NAMES} more" if len(outcomes) > MAX_NAMES else "")
