"""One change queue per vCenter: every change of every policy, at most one per VM at a time.

The queue holds what the views want, in arrival order (owed power-ons first); the flights are
the changes under way, each a workflow whose waits the live inventory answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtpm_operator.engine.workflow import TIMED_OUT, Plan, PoweredOff, TaskDone, Wait, Workflow
from vtpm_operator.facts import PowerState
from vtpm_operator.vsphere.changes import ChangeRefused
from vtpm_operator.vsphere.live import LiveInventory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """A change the views ask for, merged over every policy that selects the VM."""

    plan: Plan
    owners: tuple[str, ...]  # keys of the Enforce policies that want it
    owed: bool  # the VM waits for a power-on: it goes first


@dataclass
class Flight:
    vm_id: str
    workflow: Workflow
    owners: tuple[str, ...]
    action: str  # Add | Remove | PowerOn, for metrics
    doing: str  # for status: what is being done to the VM
    plan: Plan | None
    started: float = field(default_factory=time.monotonic)
    wait: Wait | None = None


@dataclass(frozen=True)
class Finished:
    flight: Flight
    refusal: ChangeRefused | None
    seconds: float


class LeaseGone(Exception):
    """This replica no longer holds the vCenter's lease: no change starts, no step is taken."""


class ChangeQueue:
    def __init__(self) -> None:
        self.queued: dict[str, Wanted] = {}
        self.flights: dict[str, Flight] = {}

    def want(self, wanted: dict[str, Wanted]) -> None:
        """What the views want now: VMs already queued keep their place; owed power-ons go first."""
        kept = {vm: wanted[vm] for vm in self.queued if vm in wanted and vm not in self.flights}
        fresh = {vm: w for vm, w in wanted.items() if vm not in kept and vm not in self.flights}
        merged = {**kept, **fresh}
        self.queued = dict(sorted(merged.items(), key=lambda item: not item[1].owed))

    def in_flight_for(self) -> Counter[str]:
        """Changes under way per owning policy."""
        return Counter(owner for flight in self.flights.values() for owner in flight.owners)

    def start(self, flight: Flight, holding: Callable[[], bool]) -> Finished | None:
        """Start a change, under the lease. It is marked in flight before the lease is asked: the
        elector stops holding a lease before it asks whether a change is in flight (kube/leases.py,
        _release), so one of the two always sees the other. Without the lease it stays queued."""
        self.flights[flight.vm_id] = flight
        if not holding():
            del self.flights[flight.vm_id]
            raise LeaseGone(flight.vm_id)
        self.queued.pop(flight.vm_id, None)
        return self._step(flight, None)

    def advance(self, inventory: LiveInventory, holding: Callable[[], bool]) -> list[Finished]:
        """Step every flight whose wait is answered, while the lease holds; the ones that ended.
        (A task already submitted runs on in vCenter; only the next step needs the lease.)"""
        finished = []
        now = time.time()
        for flight in list(self.flights.values()):
            answer = _answer(flight.wait, inventory, now)
            if answer is not _NOT_YET:
                if not holding():
                    break
                done = self._step(flight, answer)
                if done is not None:
                    finished.append(done)
        return finished

    def abandon(self, keep_submitted: bool) -> None:
        """Stop stepping flights: with keep_submitted, those waiting on a task vCenter runs stay
        (to be awaited, never stepped on); guest shutdown waits go at once, their markers kept."""
        self.queued.clear()
        for vm_id, flight in list(self.flights.items()):
            if not (keep_submitted and isinstance(flight.wait, TaskDone)):
                del self.flights[vm_id]

    def settle_submitted(self, inventory: LiveInventory) -> None:
        """While draining: drop each flight whose task has ended, without a next step."""
        for vm_id, flight in list(self.flights.items()):
            if _answer(flight.wait, inventory, 0.0) is not _NOT_YET:
                del self.flights[vm_id]

    def watched_tasks(self) -> set[str]:
        return {f.wait.task_id for f in self.flights.values() if isinstance(f.wait, TaskDone)}

    def _step(self, flight: Flight, value: Any) -> Finished | None:
        refusal: ChangeRefused | None = None
        try:
            flight.wait = flight.workflow.send(value)
            return None
        except StopIteration:
            pass
        except ChangeRefused as error:
            refusal = error
        except Exception as error:  # one VM's failure must not stop the others
            log.exception("change of %s failed", flight.vm_id)
            refusal = ChangeRefused(type(error).__name__, str(error))
        del self.flights[flight.vm_id]
        return Finished(flight, refusal, time.monotonic() - flight.started)


_NOT_YET = object()


def _answer(wait: Wait | None, inventory: LiveInventory, now: float) -> Any:
    if isinstance(wait, TaskDone):
        result = inventory.tasks.get(wait.task_id)
        if result is not None and result.ended:
            return result
        return TIMED_OUT if now >= wait.deadline else _NOT_YET
    if isinstance(wait, PoweredOff):
        vm = inventory.vms.get(wait.vm_id)
        if vm is not None and vm.power_state is PowerState.OFF:
            return True
        return False if now >= wait.deadline else _NOT_YET
    return _NOT_YET
