"""status: conditions, their transitions, and the status document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.planning import NoteReason, PolicyNote, VMOutcome, VMState
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.status import (
    MAX_VMS_IN_STATUS,
    Condition,
    build_status,
    conditions_for,
    merge_conditions,
    vm_entries,
)
from vtpm_operator.sync import SyncResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def out(i: int, state: VMState, *reasons: str, name: str | None = None) -> VMOutcome:
    return VMOutcome(f"vm-{i}", name or f"app-{i:03d}", state, tuple(reasons), f"{state.value} message")


def by_type(conditions: tuple[Condition, ...]) -> dict[str, Condition]:
    assert [c.type for c in conditions] == ["Ready", "Reconciling", "Stalled", "Compliant"]
    return {c.type: c for c in conditions}


def statuses(conditions: tuple[Condition, ...]) -> dict[str, str]:
    return {t: c.status for t, c in by_type(conditions).items()}


class TestConditionsFor:
    def test_all_compliant_is_ready(self) -> None:
        result = SyncResult((out(1, VMState.COMPLIANT), out(2, VMState.COMPLIANT)))
        c = by_type(conditions_for(result))
        assert statuses(conditions_for(result)) == {
            "Ready": "True",
            "Reconciling": "False",
            "Stalled": "False",
            "Compliant": "True",
        }
        assert c["Compliant"].reason == "AllCompliant"
        assert "2" in c["Compliant"].message

    def test_no_vms_matched_is_compliant_and_ready(self) -> None:
        c = by_type(conditions_for(SyncResult(())))
        assert c["Ready"].status == "True"
        assert c["Compliant"].reason == "NoVMsMatched"

    def test_blocked_is_stalled_and_not_ready(self) -> None:
        result = SyncResult(
            (
                out(1, VMState.COMPLIANT),
                out(2, VMState.BLOCKED, "PoweredOn", "HasSnapshots"),
                out(3, VMState.BLOCKED, "PoweredOn"),
                out(4, VMState.FAILED, "PoweredOn"),  # not blocked: not counted among them
            )
        )
        c = by_type(conditions_for(result))
        assert c["Stalled"].status == "True"
        assert c["Stalled"].reason == "VMsBlocked"
        assert "2 VMs are blocked" in c["Stalled"].message
        assert "PoweredOn 2" in c["Stalled"].message
        assert "HasSnapshots 1" in c["Stalled"].message
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == "VMsBlocked"
        assert c["Compliant"].status == "False"
        assert c["Compliant"].reason == "VMsNotCompliant"
        assert c["Reconciling"].status == "False"

    @pytest.mark.parametrize("reason", list(NoteReason))
    def test_note_is_stalled_with_the_notes_reason(self, reason: NoteReason) -> None:
        result = SyncResult(
            (out(1, VMState.NON_COMPLIANT), out(2, VMState.BLOCKED, "KeyProviderMissing")),
            notes=(PolicyNote(reason, "the note's words"),),
        )
        c = by_type(conditions_for(result))
        assert c["Stalled"].status == "True"
        assert c["Stalled"].reason == reason.value
        assert "the note's words" in c["Stalled"].message
        assert "1 VMs are blocked" in c["Stalled"].message
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == reason.value

    def test_failed_is_not_ready_with_vms_failed(self) -> None:
        result = SyncResult((out(1, VMState.COMPLIANT), out(2, VMState.FAILED)))
        c = by_type(conditions_for(result))
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == "VMsFailed"
        assert c["Stalled"].status == "False"
        assert c["Compliant"].status == "False"
        assert "1 Failed" in c["Compliant"].message

    def test_audit_non_compliant_is_not_ready_and_not_stalled(self) -> None:
        c = by_type(conditions_for(SyncResult((out(1, VMState.NON_COMPLIANT),))))
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == "NotCompliant"
        assert c["Stalled"].status == "False"

    def test_in_flight_is_reconciling_and_not_ready(self) -> None:
        result = SyncResult(
            (out(1, VMState.PENDING), out(2, VMState.PENDING), out(3, VMState.COMPLIANT)), in_flight=True
        )
        c = by_type(conditions_for(result))
        assert c["Reconciling"].status == "True"
        assert c["Reconciling"].reason == "ApplyingChanges"
        assert "2" in c["Reconciling"].message
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == "Reconciling"
        assert c["Compliant"].status == "False"

    @pytest.mark.parametrize("reason", [ProblemReason.VCENTER_UNREACHABLE, ProblemReason.VCENTER_ERROR])
    def test_transient_problem_is_not_stalled(self, reason: ProblemReason) -> None:
        c = by_type(conditions_for(PolicyProblem(reason, "connection refused")))
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == reason.value
        assert c["Ready"].message == "connection refused"
        assert c["Stalled"].status == "False"
        assert c["Reconciling"].status == "False"
        assert c["Compliant"].status == "Unknown"

    @pytest.mark.parametrize(
        "reason",
        [
            ProblemReason.SECRET_NOT_FOUND,
            ProblemReason.AUTHENTICATION_FAILED,
            ProblemReason.TAG_NOT_FOUND,
            ProblemReason.NOT_VCENTER,
            ProblemReason.INVALID_SPEC,
            ProblemReason.CERTIFICATE_NOT_TRUSTED,
        ],
    )
    def test_other_problems_are_stalled(self, reason: ProblemReason) -> None:
        c = by_type(conditions_for(PolicyProblem(reason, "what went wrong")))
        assert c["Stalled"].status == "True"
        assert c["Stalled"].reason == reason.value
        assert c["Stalled"].message == "what went wrong"
        assert c["Ready"].status == "False"
        assert c["Ready"].reason == reason.value


vm_states = st.sampled_from(VMState)
results = st.builds(
    lambda states, in_flight, note: SyncResult(
        tuple(out(i, s, "PoweredOn") if s is VMState.BLOCKED else out(i, s) for i, s in enumerate(states)),
        notes=(PolicyNote(NoteReason.REMOVAL_NOT_ALLOWED, "n"),) if note else (),
        in_flight=in_flight and VMState.PENDING in states,
    ),
    st.lists(vm_states, max_size=6),
    st.booleans(),
    st.booleans(),
)
problems = st.builds(PolicyProblem, st.sampled_from(ProblemReason), st.text(max_size=5))
outcomes = st.one_of(results, problems)


@given(outcomes)
def test_ready_is_true_exactly_when_compliant_and_idle(outcome: SyncResult | PolicyProblem) -> None:
    s = statuses(conditions_for(outcome))
    assert set(s.values()) <= {"True", "False", "Unknown"}
    if isinstance(outcome, PolicyProblem):
        assert s["Ready"] == "False"
        assert s["Stalled"] == ("False" if outcome.transient else "True")
        return
    all_compliant = all(o.state is VMState.COMPLIANT for o in outcome.outcomes)
    assert s["Compliant"] == ("True" if all_compliant else "False")
    assert s["Reconciling"] == ("True" if outcome.in_flight else "False")
    assert s["Ready"] == ("True" if all_compliant and not outcome.in_flight else "False")
    blocked = any(o.state is VMState.BLOCKED for o in outcome.outcomes)
    assert s["Stalled"] == ("True" if blocked or outcome.notes else "False")


@given(st.lists(outcomes, min_size=1, max_size=8))
def test_last_transition_time_moves_only_when_status_flips(
    sequence: list[SyncResult | PolicyProblem],
) -> None:
    previous: list[dict[str, Any]] = []
    flipped_at: dict[str, str] = {}
    last_status: dict[str, str] = {}
    for step, outcome in enumerate(sequence):
        now = T0 + timedelta(minutes=step)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        merged = merge_conditions(previous, conditions_for(outcome), generation=step + 1, now=now)
        for condition in merged:
            kind = condition["type"]
            if last_status.get(kind) != condition["status"]:
                flipped_at[kind] = stamp
                last_status[kind] = condition["status"]
            assert condition["lastTransitionTime"] == flipped_at[kind]
            assert condition["observedGeneration"] == step + 1
        previous = merged


def test_merge_keeps_time_when_only_reason_changes() -> None:
    first = merge_conditions([], [Condition("Ready", "False", "VMsBlocked", "b")], 1, T0)
    later = T0 + timedelta(hours=1)
    second = merge_conditions(first, [Condition("Ready", "False", "VMsFailed", "m")], 2, later)
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second[0]["reason"] == "VMsFailed"
    assert second[0]["message"] == "m"
    third = merge_conditions(second, [Condition("Ready", "True", "Compliant", "c")], 3, later)
    assert third[0]["lastTransitionTime"] == "2026-01-01T01:00:00Z"


class TestBuildStatus:
    def test_first_status(self) -> None:
        result = SyncResult(
            (out(1, VMState.COMPLIANT), out(2, VMState.BLOCKED, "PoweredOn")),
            remediated_ids=frozenset({"vm-1"}),
        )
        status = build_status(None, result, generation=7, now=T0)
        assert status["observedGeneration"] == 7
        assert all(c["observedGeneration"] == 7 for c in status["conditions"])
        assert {c["type"] for c in status["conditions"]} == {"Ready", "Reconciling", "Stalled", "Compliant"}
        assert status["lastSyncTime"] == "2026-01-01T00:00:00Z"
        assert status["summary"] == {
            "matched": 2,
            "compliant": 1,
            "nonCompliant": 0,
            "pending": 0,
            "blocked": 1,
            "failed": 0,
            "drifted": 0,
            "excluded": 0,
            "driftedTotal": 0,
            "remediatedTotal": 1,
        }
        assert status["vms"] == [
            {
                "name": "app-002",
                "id": "vm-2",
                "state": "Blocked",
                "reasons": ["PoweredOn"],
                "message": "Blocked message",
            }
        ]

    def test_remediated_total_accumulates(self) -> None:
        status: dict[str, Any] = {}
        total = 0
        for step, remediated in enumerate([3, 0, 2, 5]):
            ids = frozenset(f"vm-{i}" for i in range(remediated))
            result = SyncResult((out(1, VMState.COMPLIANT),), remediated_ids=ids, drifted=step)
            status = {**status, **build_status(status, result, generation=1, now=T0)}
            total += remediated
            assert status["summary"]["remediatedTotal"] == total
            assert status["summary"]["drifted"] == step

    def test_a_report_while_changes_run_is_current_and_keeps_the_totals(self) -> None:
        """lastSyncTime says when the view was known current, changes in flight or not."""
        status = build_status(
            {"summary": {"remediatedTotal": 4, "driftedTotal": 2}},
            SyncResult((out(1, VMState.PENDING),), in_flight=True, drifted=1),
            generation=1,
            now=T0,
        )
        assert status["lastSyncTime"] == "2026-01-01T00:00:00Z"
        assert status["summary"]["pending"] == 1
        assert status["summary"]["remediatedTotal"] == 4
        assert status["summary"]["driftedTotal"] == 3

    def test_problem_keeps_summary_and_vms_from_before(self) -> None:
        before = build_status(
            None, SyncResult((out(1, VMState.BLOCKED, "HasSnapshots"),)), generation=1, now=T0
        )
        problem = PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timed out")
        patch = build_status(before, problem, generation=2, now=T0 + timedelta(minutes=1))
        assert "summary" not in patch
        assert "vms" not in patch
        assert "lastSyncTime" not in patch
        assert patch["observedGeneration"] == 2
        ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "VCenterUnreachable"
        assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # was already False
        merged = {**before, **patch}
        assert merged["summary"] == before["summary"]
        assert merged["vms"] == before["vms"]
        after = build_status(
            merged,
            SyncResult((out(1, VMState.COMPLIANT),), remediated_ids=frozenset({"vm-1"})),
            generation=2,
            now=T0,
        )
        assert after["summary"]["remediatedTotal"] == 1


class TestVMEntries:
    def test_order_is_failed_blocked_non_compliant_pending(self) -> None:
        outcomes = [
            out(1, VMState.PENDING, name="a"),
            out(2, VMState.NON_COMPLIANT, name="b"),
            out(3, VMState.COMPLIANT, name="c"),
            out(4, VMState.BLOCKED, "PoweredOn", name="d"),
            out(5, VMState.FAILED, name="e"),
            out(6, VMState.BLOCKED, "HasSnapshots", name="aa"),
        ]
        entries = vm_entries(outcomes)
        assert [e["state"] for e in entries] == ["Failed", "Blocked", "Blocked", "NonCompliant", "Pending"]
        assert [e["name"] for e in entries] == ["e", "aa", "d", "b", "a"]

    @given(st.lists(vm_states, max_size=250))
    def test_bounded_and_most_actionable_first(self, states: list[VMState]) -> None:
        outcomes = [out(i, s) for i, s in enumerate(states)]
        entries = vm_entries(outcomes)
        not_compliant = [o for o in outcomes if o.state is not VMState.COMPLIANT]
        assert len(entries) == min(MAX_VMS_IN_STATUS, len(not_compliant))
        rank = {"Failed": 0, "Blocked": 1, "NonCompliant": 2, "Pending": 3}
        keys = [(rank[e["state"]], e["name"]) for e in entries]
        assert keys == sorted(keys)
        if len(not_compliant) > MAX_VMS_IN_STATUS:
            kept = {e["id"] for e in entries}
            worst_dropped = min(rank[o.state.value] for o in not_compliant if o.id not in kept)
            assert keys[-1][0] <= worst_dropped
