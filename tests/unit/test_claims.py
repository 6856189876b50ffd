"""Two policies never fight over one VM."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.claims import Claim, ClaimBoard
from vtpm_operator.planning import VMState, make_plan
from vtpm_operator.policy import DesiredVTPM, PowerAction

from .vtpm_factories import inventory, make_policy, make_vm

PRESENT, ABSENT = DesiredVTPM.PRESENT, DesiredVTPM.ABSENT


def test_opposite_wishes_on_the_same_vcenter_contest_the_shared_vms() -> None:
    board = ClaimBoard()
    assert board.claim("ns/add", Claim("vc", PRESENT, frozenset({"vm-1", "vm-2"}))) == {}
    assert board.claim("ns/remove", Claim("vc", ABSENT, frozenset({"vm-2", "vm-3"}))) == {"vm-2": "ns/add"}
    assert board.claim("ns/add", Claim("vc", PRESENT, frozenset({"vm-1", "vm-2"}))) == {"vm-2": "ns/remove"}


def test_same_wish_other_vcenter_or_withdrawn_policy_is_no_conflict() -> None:
    board = ClaimBoard()
    board.claim("ns/a", Claim("vc", PRESENT, frozenset({"vm-1"})))
    assert board.claim("ns/b", Claim("vc", PRESENT, frozenset({"vm-1"}))) == {}
    assert board.claim("ns/c", Claim("other-vc", ABSENT, frozenset({"vm-1"}))) == {}
    board.withdraw("ns/a")
    board.withdraw("ns/b")
    assert board.claim("ns/d", Claim("vc", ABSENT, frozenset({"vm-1"}))) == {}


@given(st.lists(st.sampled_from(["vm-1", "vm-2", "vm-3"]), min_size=1, max_size=3))
def test_of_two_racing_policies_at_most_one_sees_a_vm_uncontested(vms: list[str]) -> None:
    board = ClaimBoard()
    answers: dict[str, dict[str, str]] = {}

    def claim(name: str, desired: DesiredVTPM) -> None:
        answers[name] = board.claim(name, Claim("vc", desired, frozenset(vms)))

    threads = [threading.Thread(target=claim, args=a) for a in (("add", PRESENT), ("remove", ABSENT))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for vm in vms:
        assert (vm in answers["add"]) or (vm in answers["remove"])


def test_a_contested_vm_is_blocked_and_never_shut_down() -> None:
    vm = make_vm(id="vm-1", name="a", power_state=make_vm().power_state)
    plan = make_plan(
        inventory([vm]), make_policy(action=PowerAction.SHUTDOWN), contested={"vm-1": "ns/remove-them"}
    )
    assert plan.changes == ()
    (outcome,) = plan.outcomes
    assert outcome.state is VMState.BLOCKED
    assert "ConflictingPolicies" in outcome.reasons
    assert "ns/remove-them" in outcome.message


def test_a_compliant_vm_is_not_reported_as_contested() -> None:
    plan = make_plan(
        inventory([make_vm(id="vm-1", vtpm_device_key=11000)]), make_policy(), contested={"vm-1": "x"}
    )
    assert [o.state for o in plan.outcomes] == [VMState.COMPLIANT]
