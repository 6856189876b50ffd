"""The change queue and the lease: nothing starts, and no next step is taken, without it."""

from __future__ import annotations

import time
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import pytest

from vtpm_operator.engine.queue import ChangeQueue, Flight, LeaseGone
from vtpm_operator.engine.workflow import TaskDone
from vtpm_operator.vsphere.live import TaskResult


def two_steps(calls: list[str]) -> Generator[TaskDone, Any, None]:
    calls.append("reconfigure")
    yield TaskDone("task-1", deadline=time.time() + 60)
    calls.append("power on")


def flight(calls: list[str]) -> Flight:
    return Flight("vm-1", two_steps(calls), ("team/p",), "Add", "adding vTPM", None)


def test_a_change_is_in_flight_before_the_lease_is_asked() -> None:
    """The elector stops holding, then asks whether a change is in flight: the queue must do the
    reverse, or both could miss each other."""
    queue, calls = ChangeQueue(), []
    seen_in_flight = []

    def holding() -> bool:
        seen_in_flight.append("vm-1" in queue.flights)
        return True

    assert queue.start(flight(calls), holding) is None
    assert seen_in_flight == [True] and calls == ["reconfigure"]


def test_without_the_lease_nothing_starts_and_the_vm_stays_queued() -> None:
    queue, calls = ChangeQueue(), []
    queue.queued["vm-1"] = SimpleNamespace()  # type: ignore[assignment]  # only its presence matters
    with pytest.raises(LeaseGone):
        queue.start(flight(calls), lambda: False)
    assert calls == [] and not queue.flights and "vm-1" in queue.queued


def test_without_the_lease_an_answered_wait_takes_no_next_step() -> None:
    queue, calls = ChangeQueue(), []
    queue.start(flight(calls), lambda: True)
    inventory: Any = SimpleNamespace(tasks={"task-1": TaskResult("success")}, vms={})
    assert queue.advance(inventory, lambda: False) == []
    assert calls == ["reconfigure"] and "vm-1" in queue.flights  # the task ran on; nothing more
    (finished,) = queue.advance(inventory, lambda: True)
    assert calls == ["reconfigure", "power on"] and finished.refusal is None and not queue.flights
