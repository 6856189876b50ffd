"""events.notices_for: summarised events, repeated only when something changes."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.events import MAX_NAMES, Notice, notices_for
from vtpm_operator.planning import VMOutcome, VMState
from vtpm_operator.policy import DesiredVTPM
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.sync import SyncResult

PRESENT = DesiredVTPM.PRESENT


def out(i: int, state: VMState, *reasons: str) -> VMOutcome:
    return VMOutcome(f"vm-{i}", f"app-{i:02d}", state, tuple(reasons), f"message {i}")


def result(
    *outcomes: VMOutcome, remediated: int = 0, drifted: int = 0, in_flight: bool = False
) -> SyncResult:
    compliant = [o.id for o in outcomes if o.state is VMState.COMPLIANT]
    return SyncResult(
        tuple(outcomes),
        remediated_ids=frozenset(compliant[:remediated]),
        drifted=drifted,
        in_flight=in_flight,
    )


def reasons(notices: list[Notice]) -> list[str]:
    return [n.reason for n in notices]


class TestProblems:
    def test_first_problem_warns(self) -> None:
        problem = PolicyProblem(ProblemReason.SECRET_NOT_FOUND, "secret vcenter-creds not found")
        (notice,) = notices_for(None, problem, PRESENT)
        assert notice.type == "Warning"
        assert notice.reason == "SecretNotFound"
        assert notice.message == "secret vcenter-creds not found"

    def test_same_problem_is_not_repeated(self) -> None:
        first = PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timeout")
        again = PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timeout again")
        assert notices_for(first, again, PRESENT) == []

    def test_different_problem_warns(self) -> None:
        first = PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timeout")
        then = PolicyProblem(ProblemReason.AUTHENTICATION_FAILED, "wrong password")
        assert reasons(notices_for(first, then, PRESENT)) == ["AuthenticationFailed"]

    def test_problem_after_a_good_sync_warns(self) -> None:
        problem = PolicyProblem(ProblemReason.TAG_NOT_FOUND, "no tag security/x")
        assert reasons(notices_for(result(out(1, VMState.COMPLIANT)), problem, PRESENT)) == ["TagNotFound"]

    def test_recovery_is_announced(self) -> None:
        problem = PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timeout")
        notices = notices_for(problem, result(), PRESENT)
        assert [(n.type, n.reason) for n in notices] == [("Normal", "SyncRecovered")]
        assert "VCenterUnreachable" in notices[0].message


def test_reports_while_changes_run_announce_as_they_go() -> None:
    """The engine reports while changes are still running: what was done, drift and new blockers
    are announced then, once each; a VM still pending is no event."""
    before = result(out(1, VMState.PENDING), out(2, VMState.PENDING), in_flight=True)
    current = result(
        out(1, VMState.COMPLIANT), out(2, VMState.PENDING), out(3, VMState.BLOCKED, "PoweredOn"),
        remediated=1, in_flight=True,
    )  # fmt: skip
    assert reasons(notices_for(before, current, PRESENT)) == ["VTPMAdded", "VMsBlocked"]
    assert notices_for(current, result(*current.outcomes, in_flight=True), PRESENT) == []


def test_quiet_sync_makes_no_events() -> None:
    steady = result(out(1, VMState.COMPLIANT), out(2, VMState.NON_COMPLIANT))
    assert notices_for(steady, steady, PRESENT) == []


@pytest.mark.parametrize(
    "desired,reason,verb",
    [(DesiredVTPM.PRESENT, "VTPMAdded", "added"), (DesiredVTPM.ABSENT, "VTPMRemoved", "removed")],
)
def test_one_normal_event_for_all_changed_vms(desired: DesiredVTPM, reason: str, verb: str) -> None:
    previous = result(out(1, VMState.NON_COMPLIANT), out(2, VMState.NON_COMPLIANT), out(3, VMState.COMPLIANT))
    current = result(
        out(1, VMState.COMPLIANT), out(2, VMState.COMPLIANT), out(3, VMState.COMPLIANT), remediated=2
    )
    (notice,) = notices_for(previous, current, desired)
    assert notice.type == "Normal"
    assert notice.reason == reason
    assert notice.message.startswith(f"{verb} ")
    assert "2 VMs" in notice.message
    assert "app-01" in notice.message
    assert "app-02" in notice.message
    assert "app-03" not in notice.message


def test_drift_warns() -> None:
    previous = result(out(1, VMState.COMPLIANT))
    current = result(out(1, VMState.COMPLIANT), remediated=1, drifted=1)
    assert reasons(notices_for(previous, current, PRESENT)) == ["VTPMAdded", "DriftDetected"]


class TestBlockedAndFailed:
    def test_one_summarised_warning_for_newly_blocked_vms(self) -> None:
        current = result(
            out(1, VMState.BLOCKED, "PoweredOn"), out(2, VMState.BLOCKED, "HasSnapshots", "FirmwareNotEFI")
        )
        (notice,) = notices_for(None, current, PRESENT)
        assert notice.type == "Warning"
        assert notice.reason == "VMsBlocked"
        assert notice.message.startswith("2 VMs newly blocked")
        assert "app-01 (PoweredOn)" in notice.message
        assert "app-02 (HasSnapshots, FirmwareNotEFI)" in notice.message

    def test_still_blocked_vms_are_not_repeated(self) -> None:
        blocked = result(out(1, VMState.BLOCKED, "PoweredOn"), out(2, VMState.FAILED))
        assert notices_for(blocked, blocked, PRESENT) == []

    def test_only_the_newly_blocked_vm_is_named(self) -> None:
        previous = result(out(1, VMState.BLOCKED, "PoweredOn"), out(2, VMState.COMPLIANT))
        current = result(out(1, VMState.BLOCKED, "PoweredOn"), out(2, VMState.BLOCKED, "HasSnapshots"))
        (notice,) = notices_for(previous, current, PRESENT)
        assert notice.message.startswith("1 VMs newly blocked")
        assert "app-02" in notice.message
        assert "app-01" not in notice.message

    def test_failed_vms_warn_with_vcenters_message(self) -> None:
        current = result(out(1, VMState.FAILED), out(2, VMState.BLOCKED, "PoweredOn"))
        notices = notices_for(None, current, PRESENT)
        assert reasons(notices) == ["VMsBlocked", "VMsFailed"]
        assert "app-01 (message 1)" in notices[1].message

    def test_many_vms_are_summarised(self) -> None:
        current = result(*(out(i, VMState.BLOCKED, "PoweredOn") for i in range(MAX_NAMES + 5)))
        (notice,) = notices_for(None, current, PRESENT)
        assert notice.message.startswith(f"{MAX_NAMES + 5} VMs newly blocked")
        assert notice.message.endswith("and 5 more")
        assert notice.message.count("(PoweredOn)") == MAX_NAMES


sync_results = st.lists(st.sampled_from(VMState), max_size=12).map(
    lambda states: result(*(out(i, s, "PoweredOn") for i, s in enumerate(states)))
)
problems = st.builds(PolicyProblem, st.sampled_from(ProblemReason), st.just("m"))


@given(previous=st.none() | sync_results | problems, current=sync_results | problems)
def test_at_most_one_event_per_reason(
    previous: SyncResult | PolicyProblem | None, current: SyncResult | PolicyProblem
) -> None:
    notices = notices_for(previous, current, PRESENT)
    assert all(count == 1 for count in Counter(reasons(notices)).values())
    assert all(n.type in ("Normal", "Warning") for n in notices)
    # repeating the very same sync result never says anything new about VMs
    if isinstance(current, SyncResult):
        assert notices_for(current, current, PRESENT) == []


# --- Found bug ---


@pytest.mark.parametrize("previous", [None, PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "timeout")])
def test_added_event_names_only_the_remediated_vms(previous: SyncResult | PolicyProblem | None) -> None:
    """BUG: events.notices_for names every Compliant VM that was not Compliant in `previous`
    as changed. With no previous SyncResult (first sync after the operator starts, or the
    first sync after a PolicyProblem) every already-compliant VM is listed as changed.
    Here 1 VM was remediated, yet the message reads "added a vTPM to 1 VMs: app-01, app-02, app-03"."""
    current = result(
        out(1, VMState.COMPLIANT), out(2, VMState.COMPLIANT), out(3, VMState.COMPLIANT), remediated=1
    )
    added = [n for n in notices_for(previous, current, PRESENT) if n.reason == "VTPMAdded"]
    (notice,) = added
    named = [name for name in ("app-01", "app-02", "app-03") if name in notice.message]
    assert len(named) == current.remediated, notice.message
