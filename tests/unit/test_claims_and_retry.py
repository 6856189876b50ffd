"""claims.judge (who may change a shared VM, and how carefully) and retry.RetryBook (tries in time)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.claims import Claimant, careful, judge
from vtpm_operator.policy import DesiredVTPM, Mode, PowerAction, PowerPolicy
from vtpm_operator.retry import RetryBook

from .vtpm_factories import make_policy

VMS = ("vm-1", "vm-2", "vm-3")


def claimant(key: str, selected: set[str], *, removal_allowed: bool = False, **policy: object) -> Claimant:
    namespace, _, name = key.partition("/")
    return Claimant(key, namespace, name, make_policy(**policy), removal_allowed, frozenset(selected))


claimants = st.lists(
    st.builds(
        lambda i, selected, vtpm, removal, provider, mode, action: claimant(
            f"ns-{i % 2}/p-{i}",
            selected,
            removal_allowed=removal,
            vtpm=vtpm,
            key_provider=provider,
            mode=mode,
            action=action,
        ),
        st.integers(0, 99),
        st.sets(st.sampled_from(VMS)),
        st.sampled_from(DesiredVTPM),
        st.booleans(),
        st.sampled_from([None, "kp-a", "kp-b"]),
        st.sampled_from(Mode),
        st.sampled_from(PowerAction),
    ),
    max_size=5,
    unique_by=lambda c: c.key,
)


@given(claimants)
def test_a_vm_conflicts_exactly_when_the_wishes_of_its_policies_differ(every: list[Claimant]) -> None:
    shared = judge(every)
    for vm in VMS:
        selecting = [c for c in every if vm in c.selected]
        if len(selecting) < 2:
            assert vm not in shared
            continue
        wishes = set()
        for c in selecting:
            if c.policy.vtpm is DesiredVTPM.PRESENT:
                wishes.add(("present", c.policy.key_provider))
            elif c.removal_allowed:
                wishes.add(("absent", None))
        assert shared[vm].conflict == (len(wishes) > 1)
        assert {c.key for c in shared[vm].claimants} == {c.key for c in selecting}


@given(claimants)
def test_the_order_policies_arrive_in_changes_nothing(every: list[Claimant]) -> None:
    """After a restart the operator sees them in another order: the verdicts must be the same."""
    assert judge(every) == judge(list(reversed(every)))


def test_present_against_a_removing_absent_is_a_conflict_and_an_absent_without_removal_is_not() -> None:
    present = claimant("a/present", {"vm-1"})
    removing = claimant("a/removing", {"vm-1"}, vtpm=DesiredVTPM.ABSENT, removal_allowed=True)
    keeping = claimant("b/keeping", {"vm-1"}, vtpm=DesiredVTPM.ABSENT, removal_allowed=False)
    assert judge([present, removing])["vm-1"].conflict
    assert not judge([present, keeping])["vm-1"].conflict


def test_the_conflict_message_names_only_policies_of_the_viewers_namespace() -> None:
    mine = claimant("team-a/present", {"vm-1"})
    neighbour = claimant("team-a/other", {"vm-1"}, key_provider="kp-b")
    stranger = claimant("team-b/secret-project", {"vm-1"}, vtpm=DesiredVTPM.ABSENT, removal_allowed=True)
    message = judge([mine, neighbour, stranger])["vm-1"].conflict_message(mine)
    assert "other" in message and "secret-project" not in message and "2 other policies" in message


def test_the_most_careful_settings_win() -> None:
    shutdown = PowerPolicy(PowerAction.SHUTDOWN, 600.0, True, False)
    longer = PowerPolicy(PowerAction.SHUTDOWN, 1200.0, False, True)
    assert careful([shutdown, longer]) == PowerPolicy(PowerAction.SHUTDOWN, 1200.0, False, True)
    skip = dataclasses.replace(shutdown, action=PowerAction.SKIP)
    assert careful([shutdown, skip]).action is PowerAction.SKIP


def test_only_enforcing_policies_set_the_shared_settings() -> None:
    enforce = claimant("a/enforce", {"vm-1"}, action=PowerAction.SHUTDOWN)
    audit = claimant("a/audit", {"vm-1"}, action=PowerAction.SKIP, mode=Mode.AUDIT)
    shared = judge([enforce, audit])["vm-1"]
    assert shared.power is not None and shared.power.action is PowerAction.SHUTDOWN


class TestRetryBook:
    def test_waits_double_and_the_limit_exhausts_the_same_fault(self) -> None:
        book = RetryBook(base=10, longest=25, limit=3)
        book.failed("vm-1", "InvalidState", "refused", "facts", now=0)
        assert book.hold("vm-1", "facts", now=9.9) is not None
        assert book.hold("vm-1", "facts", now=10.0) is None
        book.failed("vm-1", "InvalidState", "refused", "facts", now=10)
        assert book.hold("vm-1", "facts", now=29.9) is not None  # 20 s
        assert book.hold("vm-1", "facts", now=30.0) is None
        book.failed("vm-1", "InvalidState", "refused again", "facts", now=30)
        hold = book.hold("vm-1", "facts", now=10_000)
        assert hold is not None and hold.exhausted and "refused again" in hold.message

    def test_another_fault_starts_counting_again(self) -> None:
        book = RetryBook(base=10, limit=2)
        book.failed("vm-1", "InvalidState", "a", "facts", now=0)
        book.failed("vm-1", "NoPermission", "b", "facts", now=10)
        hold = book.hold("vm-1", "facts", now=15)
        assert hold is not None and not hold.exhausted

    def test_changed_facts_or_a_request_earn_a_new_try(self) -> None:
        book = RetryBook(limit=1)
        book.failed("vm-1", "F", "m", "before", now=0)
        book.failed("vm-2", "F", "m", "same", now=0)
        assert book.hold("vm-1", "after", now=1) is None
        assert book.hold("vm-2", "same", now=1) is not None
        book.forget(["vm-2"])
        assert book.hold("vm-2", "same", now=1) is None

    def test_the_record_carries_everything_to_the_next_holder(self) -> None:
        book = RetryBook(limit=2)
        book.failed("vm-1", "F", "refused", "facts", now=0)
        book.failed("vm-1", "F", "refused", "facts", now=100)
        successor = RetryBook(limit=2)
        successor.load_record(book.to_record())
        hold = successor.hold("vm-1", "facts", now=10_000)
        assert hold is not None and hold.exhausted
