"""Carrying out a plan: at most maxConcurrent VMs in flight, all their waits served by one collector.

Each VM's change is a small generator (shut down, reconfigure, power on) that yields what it is
waiting for. The runner keeps up to maxConcurrent of them going and waits for all their tasks and
power states at once with WaitForUpdatesEx on a private PropertyCollector, as govmomi does,
instead of one polling loop per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vtpm_operator.planning import Change
from vtpm_operator.policy import Policy
from vtpm_operator.prerequisites import Action
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.session import VCenterSession

log = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 1


@dataclass(frozen=True)
class TaskDone:
    """Wait until a task ends; the workflow receives None on success or the fault, described."""

    task_id: str


@dataclass(frozen=True)
class PoweredOff:
    """Wait until the VM is powered off or the deadline passes; the workflow receives True or False."""

    vm_id: str
    deadline: float


Wait = TaskDone | PoweredOff
Workflow = Generator[Wait, Any, str | None]


def apply_changes(
    session: VCenterSession, changes: Sequence[Change], policy: Policy
) -> dict[str, str | None]:
    """Per VM id: None when every step succeeded, else what went wrong, in vCenter's words."""
    results: dict[str, str | None] = {}
    queue = list(reversed(changes))
    running: dict[str, tuple[Workflow, Wait]] = {}
    with _Watcher(session) as watcher:
        while queue or running:
            while queue and len(running) < policy.max_concurrent:
                change = queue.pop()
                _advance(running, results, watcher, change.vm.id, _workflow(session, change, policy), None)
            watcher.wait(WAIT_SLICE_SECONDS)
            for vm_id, (workflow, wait) in list(running.items()):
                outcome = watcher.outcome(wait)
                if outcome is not _NOT_YET:
                    watcher.forget(wait)
                    _advance(running, results, watcher, vm_id, workflow, outcome)
    return results


def _advance(
    running: dict[str, tuple[Workflow, Wait]],
    results: dict[str, str | None],
    watcher: _Watcher,
    vm_id: str,
    workflow: Workflow,
    value: Any,
) -> None:
    try:
        wait = workflow.send(value)
    except StopIteration as done:
        running.pop(vm_id, None)
        results[vm_id] = done.value
        return
    except Exception as error:  # one VM's failure must not stop the others
        log.exception("change of %s failed", vm_id)
        running.pop(vm_id, None)
        results[vm_id] = describe(error)
        return
    watcher.watch(wait)
    running[vm_id] = (workflow, wait)


def _workflow(session: VCenterSession, change: Change, policy: Policy) -> Workflow:
    vm_id = change.vm.id
    if change.power_off_first:
        error = yield from _power_off(session, change, policy)
        if error:
            return error
    error = yield from _task(
        session, "ReconfigVM_Task", vm_id, lambda vm: vm.ReconfigVM_Task(spec=_spec(change, policy))
    )
    message = f"vCenter refused the change: {error}" if error else None
    if change.restore_power:
        power_error = yield from _task(session, "PowerOnVM_Task", vm_id, lambda vm: vm.PowerOnVM_Task())
        if power_error:
            prefix = f"{message}; " if message else "the vTPM change took, but "
            message = f"{prefix}powering the VM back on failed: {power_error}"
    return message


def _power_off(session: VCenterSession, change: Change, policy: Policy) -> Generator[Wait, Any, str | None]:
    vm_id = change.vm.id
    timeout = policy.power.shutdown_timeout
    if change.vm.tools_running:
        try:
            session.soap(
                "ShutdownGuest", lambda content: _vm(content, vm_id).ShutdownGuest(), idempotent=False
            )
        except vmodl.MethodFault as fault:
            if not policy.power.force_power_off:
                return f"the guest could not be shut down: {describe(fault)}"
        else:
            if (yield PoweredOff(vm_id, time.monotonic() + timeout)):
                return None
            if not policy.power.force_power_off:
                return f"the guest did not shut down within {timeout:g}s and forcePowerOff is false"
    error = yield from _task(session, "PowerOffVM_Task", vm_id, lambda vm: vm.PowerOffVM_Task())
    return f"powering off failed: {error}" if error else None


def _task(
    session: VCenterSession, operation: str, vm_id: str, start: Any
) -> Generator[Wait, Any, str | None]:
    try:
        task = session.soap(operation, lambda content: start(_vm(content, vm_id)), idempotent=False)
    except vmodl.MethodFault as fault:
        return describe(fault)
    error: str | None = yield TaskDone(task._moId)
    return error


def _spec(change: Change, policy: Policy) -> Any:
    if change.action is Action.ADD:
        device_change = vim.vm.device.VirtualDeviceSpec(
            operation="add", device=vim.vm.device.VirtualTPM(key=-1)
        )
        spec = vim.vm.ConfigSpec(deviceChange=[device_change])
        if policy.key_provider:
            spec.crypto = vim.encryption.CryptoSpecEncrypt(
                cryptoKeyId=vim.encryption.CryptoKeyId(
                    providerId=vim.encryption.KeyProviderId(id=policy.key_provider)
                )
            )
        return spec
    device = vim.vm.device.VirtualTPM(key=change.vm.vtpm_device_key)
    return vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=device)]
    )


def _vm(content: Any, vm_id: str) -> Any:
    return vim.VirtualMachine(vm_id, content.propertyCollector._stub)


_NOT_YET = object()


class _Watcher:
    """One private PropertyCollector with a filter per awaited object."""

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self.collector: Any = None
        self.version = ""
        self.filters: dict[str, Any] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> _Watcher:
        self.collector = self.session.soap(
            "CreatePropertyCollector", lambda content: content.propertyCollector.CreatePropertyCollector()
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.session.soap(
                "DestroyPropertyCollector", lambda content: self.collector.DestroyPropertyCollector()
            )
        except Exception:  # the collector dies with the session anyway
            log.debug("could not destroy the property collector", exc_info=True)

    def watch(self, wait: Wait) -> None:
        kind: type
        if isinstance(wait, TaskDone):
            key, kind, paths = wait.task_id, vim.Task, ["info.state", "info.error"]
        else:
            key, kind, paths = wait.vm_id, vim.VirtualMachine, ["runtime.powerState"]
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=kind(key, self.collector._stub))],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        self.values[key] = {}
        self.filters[key] = self.session.soap(
            "CreateFilter",
            lambda content: self.collector.CreateFilter(spec, partialUpdates=False),
            idempotent=False,
        )

    def forget(self, wait: Wait) -> None:
        key = wait.task_id if isinstance(wait, TaskDone) else wait.vm_id
        self.values.pop(key, None)
        property_filter = self.filters.pop(key, None)
        if property_filter is not None:
            self.session.soap(
                "DestroyPropertyFilter", lambda content: property_filter.DestroyPropertyFilter()
            )

    def wait(self, seconds: int) -> None:
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=seconds)
        update = self.session.soap(
            "WaitForUpdatesEx",
            lambda content: self.collector.WaitForUpdatesEx(self.version, options),
            idempotent=False,  # the collector lives in this session: a new one would not know it
        )
        if update is None:
            return
        self.version = update.version
        for filter_update in update.filterSet or []:
            for change in filter_update.objectSet or []:
                values = self.values.setdefault(change.obj._moId, {})
                for prop in change.changeSet or []:
                    values[prop.name] = prop.val

    def outcome(self, wait: Wait) -> Any:
        if isinstance(wait, TaskDone):
            values = self.values.get(wait.task_id, {})
            state = values.get("info.state")
            if state == "success":
                return None
            if state == "error":
                fault = values.get("info.error")
                return describe(fault) if fault is not None else "the task failed without a fault"
            return _NOT_YET
        if self.values.get(wait.vm_id, {}).get("runtime.powerState") == "poweredOff":
            return True
        return False if time.monotonic() >= wait.deadline else _NOT_YET
