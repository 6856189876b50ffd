"""The VTPMPolicy status as a pure function of the previous status and what a sync found.

Conditions follow metav1.Condition and kstatus: one top-level Ready, the abnormal-true
Reconciling and Stalled, and Compliant. lastTransitionTime moves only when a status flips.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vtpm_operator.facts import About, KeyProvider
from vtpm_operator.planning import VMOutcome, VMState
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.sync import SyncResult

MAX_VMS_IN_STATUS = 100  # keeps the object far below etcd's size limit at any fleet size
# The CRD's bounds: one entry over them and the API server refuses the whole status.
MAX_VM_MESSAGE = 1024
MAX_VM_NAME = 255
MAX_REASONS = 16
MAX_CONDITION_MESSAGE = 32768
# Most actionable first: what failed, then what needs a person, then what would change.
_ATTENTION = {VMState.FAILED: 0, VMState.BLOCKED: 1, VMState.NON_COMPLIANT: 2, VMState.PENDING: 3}


_IDLE = "no changes in flight"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str  # never empty: the CRD, like metav1.Condition, requires one


def conditions_for(outcome: SyncResult | PolicyProblem) -> tuple[Condition, ...]:
    if isinstance(outcome, PolicyProblem):
        return (
            Condition("Ready", "False", outcome.reason, outcome.message),
            Condition("Reconciling", "False", "Idle", _IDLE),
            Condition("Stalled", "False" if outcome.transient else "True", outcome.reason, outcome.message),
            Condition("Compliant", "Unknown", outcome.reason, "vCenter could not be read"),
        )
    stalled = _stalled(outcome)
    compliant = _compliant(outcome)
    if outcome.in_flight:
        pending = outcome.count(VMState.PENDING)
        reconciling = Condition(
            "Reconciling",
            "True",
            "ApplyingChanges",
            f"{pending} VMs pending: queued, being changed, or waiting for a task of someone else",
        )
        ready = Condition("Ready", "False", "Reconciling", reconciling.message)
    else:
        reconciling = Condition("Reconciling", "False", "Idle", _IDLE)
        if compliant.status == "True":
            ready = Condition("Ready", "True", "Compliant", compliant.message)
        elif stalled.status == "True":
            ready = Condition("Ready", "False", stalled.reason, stalled.message)
        elif outcome.count(VMState.FAILED):
            ready = Condition("Ready", "False", "VMsFailed", compliant.message)
        else:
            ready = Condition("Ready", "False", "NotCompliant", compliant.message)
    return ready, reconciling, stalled, compliant


def _compliant(result: SyncResult) -> Condition:
    matched = len(result.outcomes)
    if matched == 0:
        return Condition("Compliant", "True", "NoVMsMatched", "no VM carries the selected tags")
    by_state = result.states
    off = matched - by_state[VMState.COMPLIANT]
    if off == 0:
        return Condition("Compliant", "True", "AllCompliant", f"all {matched} VMs are compliant")
    parts = ", ".join(f"{by_state[state]} {state.value}" for state in _ATTENTION if by_state[state])
    return Condition(
        "Compliant", "False", "VMsNotCompliant", f"{off} of {matched} VMs are not compliant: {parts}"
    )


def _stalled(result: SyncResult) -> Condition:
    blocked = result.count(VMState.BLOCKED)
    blocked_text = ""
    if blocked:
        listed = ", ".join(f"{reason} {count}" for reason, count in sorted(result.blocked_reasons.items()))
        blocked_text = f"{blocked} VMs are blocked ({listed}); see status.vms"
    if result.notes:
        messages = [note.message for note in result.notes] + ([blocked_text] if blocked_text else [])
        return Condition("Stalled", "True", result.notes[0].reason.value, "; ".join(messages))
    if blocked:
        return Condition("Stalled", "True", "VMsBlocked", blocked_text)
    return Condition("Stalled", "False", "NotStalled", "nothing waits for a person")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], generation: int, now: datetime
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    merged = []
    for condition in new:
        old = before.get(condition.type)
        flipped = old is None or old.get("status") != condition.status
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": _clip(condition.message, MAX_CONDITION_MESSAGE),
                "observedGeneration": generation,
                "lastTransitionTime": _timestamp(now)
                if flipped or old is None
                else old["lastTransitionTime"],
            }
        )
    return merged


def build_status(
    previous: Mapping[str, Any] | None,
    outcome: SyncResult | PolicyProblem,
    *,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """The status to write, built on the previous one (totals and condition times carry on).
    After a PolicyProblem, summary, vms and lastSyncTime keep their earlier values."""
    previous = previous or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            previous.get("conditions") or [], conditions_for(outcome), generation, now
        ),
    }
    if isinstance(outcome, SyncResult):
        status["summary"] = summary(outcome, previous.get("summary") or {})
        status["vms"] = vm_entries(outcome.outcomes)
        status["lastSyncTime"] = _timestamp(now)
    return status


def summary(result: SyncResult, earlier: Mapping[str, Any]) -> dict[str, int]:
    """Counts of this look, and the running totals carried on from the earlier summary."""
    return {
        "matched": len(result.outcomes),
        "compliant": result.count(VMState.COMPLIANT),
        "nonCompliant": result.count(VMState.NON_COMPLIANT),
        "pending": result.count(VMState.PENDING),
        "blocked": result.count(VMState.BLOCKED),
        "failed": result.count(VMState.FAILED),
        "excluded": result.excluded,
        "drifted": result.drifted,
        "driftedTotal": int(earlier.get("driftedTotal", 0)) + result.drifted,
        "remediatedTotal": int(earlier.get("remediatedTotal", 0)) + result.remediated,
    }


def vm_entries(outcomes: Sequence[VMOutcome]) -> list[dict[str, Any]]:
    attention = heapq.nsmallest(  # the first rows of the sorted list, without sorting 10k VMs
        MAX_VMS_IN_STATUS,
        (o for o in outcomes if o.state is not VMState.COMPLIANT),
        key=lambda o: (_ATTENTION[o.state], o.name, o.id),
    )
    return [
        {
            "name": _clip(o.name, MAX_VM_NAME),
            "id": o.id,
            "state": o.state.value,
            "reasons": list(o.reasons[:MAX_REASONS]),
            "message": _clip(o.message, MAX_VM_MESSAGE),
        }
        for o in attention
    ]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Reasons a person must act on: the VCenter (and its policies) are Stalled on them.
_NEEDS_A_PERSON = {
    ProblemReason.SECRET_NOT_FOUND,
    ProblemReason.INVALID_SECRET,
    ProblemReason.AUTHENTICATION_FAILED,
    ProblemReason.CERTIFICATE_NOT_TRUSTED,
    ProblemReason.NOT_VCENTER,
    ProblemReason.DUPLICATE_VCENTER,
    ProblemReason.INVALID_SPEC,
}


def vcenter_status(
    previous: Mapping[str, Any],
    problem: PolicyProblem | None,
    about: About | None,
    *,
    key_providers: Sequence[KeyProvider],
    policies: int,
    vms: int,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """The VCenter's status: Ready when logged in to a vCenter, else the reason why not."""
    if problem is None and about is None:
        ready = Condition("Ready", "Unknown", "Connecting", "connecting to vCenter")
    elif problem is not None:
        ready = Condition("Ready", "False", problem.reason.value, problem.message)
    else:
        ready = Condition("Ready", "True", "Connected", f"watching {vms} VMs for {policies} policies")
    stalled = problem is not None and problem.reason in _NEEDS_A_PERSON
    conditions = [
        ready,
        Condition(
            "Stalled",
            "True" if stalled else "False",
            problem.reason.value if stalled and problem else "NotStalled",
            problem.message if stalled and problem else "nothing waits for a person",
        ),
    ]
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions") or [], conditions, generation, now),
        "policies": policies,
        "vms": vms,
    }
    if about is not None:
        status.update(
            instanceUuid=about.instance_uuid, version=about.version, build=about.build, apiType=about.api_type
        )
        status["keyProviders"] = [
            {
                "id": p.id,
                "type": _PROVIDER_TYPES.get(p.kind, p.kind),
                "default": p.is_default,
                "backedUp": p.usable,
            }
            for p in key_providers
        ]
    if problem is None and about is not None:
        status["lastInventoryTime"] = _timestamp(now)
    return {**previous, **status}


_PROVIDER_TYPES = {"kmip": "Standard", "native": "Native", "trustAuthority": "TrustAuthority"}
