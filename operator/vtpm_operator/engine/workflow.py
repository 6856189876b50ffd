"""The steps of one VM's change, as a generator that yields what it waits for.

The engine keeps many of them going and answers every wait from its one WaitForUpdatesEx, instead
of one polling loop per task. A step vCenter refuses raises ChangeRefused, which ends the change.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from vtpm_operator import crashpoints
from vtpm_operator.crashpoints import CrashPoint
from vtpm_operator.facts import PowerState, VMFacts
from vtpm_operator.planning import Change
from vtpm_operator.policy import PowerPolicy
from vtpm_operator.vsphere.changes import ChangeOps, ChangeRefused
from vtpm_operator.vsphere.live import TaskResult


@dataclass(frozen=True)
class TaskDone:
    """Wait until a task ends; the workflow receives its TaskResult, or TIMED_OUT after the deadline."""

    task_id: str
    deadline: float
    overdue: str = ""  # set while a task past its deadline is awaited: what the VM's status says


@dataclass(frozen=True)
class PoweredOff:
    """Wait until the VM is powered off; the workflow receives True, or False after the deadline."""

    vm_id: str
    deadline: float


TIMED_OUT = "timed out"
Wait = TaskDone | PoweredOff
Workflow = Generator[Wait, Any, None]


@dataclass(frozen=True)
class Plan:
    """A change as the engine carries it out: the settings are the most careful of its owners'."""

    change: Change
    power: PowerPolicy
    key_provider: str | None
    owner_uid: str  # recorded in the power marker: which policy's change shut the VM down
    task_timeout: float


def vtpm_change(ops: ChangeOps, plan: Plan) -> Workflow:
    """Shut down (if asked), reconfigure, power on again (if owed); ChangeRefused on a refusal."""
    change, vm_id = plan.change, plan.change.vm.id
    if change.power_off_first:
        if change.restore_power:
            # Recorded in vCenter before the guest goes down: whatever happens next (a timeout, a
            # crash, a lost connection), the engine finds the debt and powers the VM on.
            ops.set_marker(vm_id, f"{plan.owner_uid}@{int(time.time())}")
        yield from shut_down(ops, change.vm, plan.power, plan.task_timeout)
        crashpoints.reached(CrashPoint.AFTER_SHUTDOWN)
    try:
        task = ops.reconfigure(vm_id, change.action, change.vm.vtpm_device_key, plan.key_provider)
    except ChangeRefused as refused:  # refused before any task: the VM still gets its power back
        refusal: ChangeRefused | None = refused
    else:
        refusal = yield from await_task(ops, task, plan.task_timeout)
        if refusal is None:
            crashpoints.reached(CrashPoint.AFTER_RECONFIGURE)
    if change.restore_power:
        yield from power_on(ops, vm_id, plan.task_timeout)
    if refusal is not None:
        raise refusal


def pay_debt(ops: ChangeOps, vm: VMFacts, task_timeout: float) -> Workflow:
    """Give a VM the power-on an interrupted change owes it."""
    if vm.power_state is not PowerState.ON:
        yield from power_on(ops, vm.id, task_timeout)
    else:  # someone was quicker: only the marker is left to clear
        ops.set_marker(vm.id, "")


def power_on(ops: ChangeOps, vm_id: str, task_timeout: float) -> Generator[Wait, Any, None]:
    refusal = yield from await_task(ops, ops.power_on(vm_id), task_timeout)
    if refusal is not None:
        raise ChangeRefused(refusal.fault, f"powering the VM back on failed: {refusal.message}")
    ops.set_marker(vm_id, "")


def shut_down(
    ops: ChangeOps, vm: VMFacts, power: PowerPolicy, task_timeout: float
) -> Generator[Wait, Any, None]:
    if vm.tools_running:
        try:
            ops.shutdown_guest(vm.id)
        except ChangeRefused as refusal:
            if not power.force_power_off:
                raise ChangeRefused(
                    refusal.fault, f"the guest could not be shut down: {refusal.message}"
                ) from None
        else:
            if (yield PoweredOff(vm.id, time.time() + power.shutdown_timeout)):
                return
            if not power.force_power_off:
                raise ChangeRefused(
                    "ShutdownTimeout",
                    f"the guest did not shut down within {power.shutdown_timeout:g}s; forcePowerOff is false",
                )
    stopped = yield from await_task(ops, ops.power_off(vm.id), task_timeout)
    if stopped is not None:
        raise ChangeRefused(stopped.fault, f"powering off failed: {stopped.message}")


def await_task(ops: ChangeOps, task_id: str, timeout: float) -> Generator[Wait, Any, ChangeRefused | None]:
    """The task's refusal, or None on success. A task past its deadline is cancelled, and then
    awaited until it really ends: nothing else may happen to the VM while it runs."""
    outcome = yield TaskDone(task_id, time.time() + timeout)
    if isinstance(outcome, TaskResult):
        return None if outcome.state == "success" else ChangeRefused(outcome.fault, outcome.error)
    cancelled = "cancelled"
    try:
        ops.cancel(task_id)
    except ChangeRefused as refusal:
        cancelled = f"vCenter refused to cancel it ({refusal.message})"
    overdue = f"the task did not finish within {timeout:g}s; {cancelled}"
    yield TaskDone(task_id, float("inf"), f"{overdue}; nothing else happens to the VM until it ends")
    return ChangeRefused("TaskTimeout", overdue)
