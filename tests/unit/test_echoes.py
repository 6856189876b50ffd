"""Echoes: which echoed statuses are the engine's own, and which another writer put there."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.engine.echoes import KEPT, Echoes

PENDING, READY, STALLED = ["Pending"], ["Ready"], ["VCenterNotFound"]


def test_own_echoes_in_order_are_never_foreign() -> None:
    echoes = Echoes()
    for conditions in (PENDING, READY, PENDING):
        echoes.wrote(conditions)
    assert [echoes.replaced_by_another(c) for c in (PENDING, READY, PENDING)] == [False] * 3


def test_a_state_of_someone_elses_is_foreign() -> None:
    echoes = Echoes()
    echoes.wrote(READY)
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(STALLED) is True


def test_an_older_state_shown_again_after_a_newer_echo_is_foreign() -> None:
    """A lagging replica writes back what this engine showed a moment ago."""
    echoes = Echoes()
    echoes.wrote(PENDING)
    echoes.wrote(READY)
    assert echoes.replaced_by_another(PENDING) is False
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(PENDING) is True


def test_a_state_stored_before_the_first_echo_is_not_foreign() -> None:
    """The startup listing (read before the first write) reaches the engine after that write:
    the write replaces it on the server, so it asks for no second write."""
    echoes = Echoes()
    echoes.wrote(READY)
    assert echoes.replaced_by_another([]) is False
    assert echoes.replaced_by_another(STALLED) is False
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(STALLED) is True  # stored after ours


def test_a_foreign_state_after_a_refresh_of_the_same_conditions_is_foreign() -> None:
    """A refresh writes the same conditions again: its echo is the newest write's."""
    echoes = Echoes()
    echoes.wrote(READY)
    assert echoes.replaced_by_another(READY) is False
    echoes.wrote(READY)
    assert echoes.replaced_by_another(STALLED) is False  # stored before the refresh
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(STALLED) is True


def test_a_state_stored_between_two_writes_is_replaced_by_the_later_one() -> None:
    echoes = Echoes()
    echoes.wrote(PENDING)
    echoes.wrote(READY)
    assert echoes.replaced_by_another(PENDING) is False
    assert echoes.replaced_by_another(STALLED) is False  # READY, on its way, is stored after it
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(STALLED) is True  # now stored after our newest


def test_after_a_heal_the_late_echoes_of_earlier_writes_cause_no_more() -> None:
    echoes = Echoes()
    echoes.wrote(PENDING)
    echoes.wrote(READY)
    assert echoes.replaced_by_another(PENDING) is False
    assert echoes.replaced_by_another(READY) is False
    assert echoes.replaced_by_another(STALLED) is True  # a heal: the next write goes out
    assert echoes.replaced_by_another(READY) is False  # a late echo, or the lagging writer again
    echoes.wrote(READY)
    assert echoes.replaced_by_another(STALLED) is False  # stored before the heal's write
    assert echoes.replaced_by_another(READY) is False


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=KEPT))
def test_any_run_of_writes_echoed_in_order_is_all_ours(writes: list[str]) -> None:
    echoes = Echoes()
    for conditions in writes:
        echoes.wrote(conditions)
    assert not any(echoes.replaced_by_another(c) for c in writes)
