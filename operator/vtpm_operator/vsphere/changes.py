"""Carrying out a plan: at most maxConcurrent VMs in flight, all their waits served by one collector.

Each VM's change is a small generator (shut down, reconfigure, power on) that yields what it is
waiting for. The runner keeps up to maxConcurrent of them going and waits for all their tasks and
power states at once with WaitForUpdatesEx on a private PropertyCollector, as govmomi does,
instead of one polling loop per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyVmomi import vim, vmodl

from vtpm_operator.facts import PowerState, VMFacts
from vtpm_operator.planning import Change
from vtpm_operator.policy import Policy
from vtpm_operator.prerequisites import Action
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.inventory import retrieve_refs
from vtpm_operator.vsphere.session import VCenterSession

log = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 1
TASK_TIMEOUT_SECONDS = 900.0  # a power-on waiting on a VM question must not hold the policy forever
WATCHER_REBUILDS = 3
# A custom attribute on the VM: "the operator shut this VM down and owes it a power-on".
POWER_MARKER = "vtpm-operator.io/power-on-owed"


@dataclass(frozen=True)
class TaskDone:
    """Wait until a task ends; the workflow receives None on success or the fault, described."""

    task_id: str
    deadline: float


@dataclass(frozen=True)
class PoweredOff:
    """Wait until the VM is powered off or the deadline passes; the workflow receives True or False."""

    vm_id: str
    deadline: float


Wait = TaskDone | PoweredOff
Workflow = Generator[Wait, Any, str | None]


def apply_changes(
    session: VCenterSession,
    changes: Sequence[Change],
    restores: Sequence[VMFacts],
    policy: Policy,
    should_continue: Callable[[], bool],
    marker: PowerMarker,
) -> dict[str, str | None]:
    """Per VM id started: None when every step succeeded, else what went wrong, in vCenter's words.

    Restores come first and always run. A change starts only while should_continue() holds, so a
    spec change or a stop does not let a stale plan go on changing VMs.
    """
    queue: list[tuple[str, Callable[[], Workflow]]] = [
        (vm.id, partial(_restore, session, vm, marker)) for vm in restores
    ]
    queue += [(c.vm.id, partial(_workflow, session, c, policy, marker)) for c in changes]
    restore_ids = {vm.id for vm in restores}
    queue.reverse()
    results: dict[str, str | None] = {}
    running: dict[str, tuple[Workflow, Wait]] = {}
    watcher = _Watcher(session)
    try:
        while queue or running:
            while queue and len(running) < policy.max_concurrent:
                vm_id, start = queue.pop()
                if vm_id not in restore_ids and not should_continue():
                    queue.clear()
                    break
                _advance(running, results, watcher, vm_id, start(), None)
            if not running:
                continue
            if not watcher.wait_or_rebuild(WAIT_SLICE_SECONDS, [wait for _, wait in running.values()]):
                for vm_id in running:
                    results[vm_id] = (
                        "lost contact with vCenter during the change; "
                        "a VM shut down for it gets its power back at the next sync"
                    )
                return results
            for vm_id, (workflow, wait) in list(running.items()):
                outcome = watcher.outcome(wait)
                if outcome is not _NOT_YET:
                    watcher.forget(wait)
                    _advance(running, results, watcher, vm_id, workflow, outcome)
    finally:
        watcher.close()
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
        watcher.watch(wait)
    except StopIteration as done:
        running.pop(vm_id, None)
        results[vm_id] = done.value
        return
    except Exception as error:  # one VM's failure must not stop the others
        log.exception("change of %s failed", vm_id)
        running.pop(vm_id, None)
        results[vm_id] = describe(error)
        return
    running[vm_id] = (workflow, wait)


def _workflow(session: VCenterSession, change: Change, policy: Policy, marker: PowerMarker) -> Workflow:
    vm_id = change.vm.id
    if change.power_off_first:
        if change.restore_power:
            # Recorded in vCenter before the guest goes down: whatever happens next (a timeout, a
            # crash, a lost connection), a later sync sees the debt and powers the VM on.
            error = marker.set(vm_id, owed=True)
            if error:
                return f"not shut down: the power state to restore could not be recorded: {error}"
        error = yield from _power_off(session, change, policy)
        if error:
            return error
    error = yield from _task(
        session, "ReconfigVM_Task", vm_id, lambda vm: vm.ReconfigVM_Task(spec=_spec(change, policy))
    )
    message = f"vCenter refused the change: {error}" if error else None
    if change.restore_power:
        power_error = yield from _power_on(session, vm_id, marker)
        if power_error:
            prefix = f"{message}; " if message else "the vTPM change took, but "
            message = f"{prefix}powering the VM back on failed: {power_error}"
    return message


def _restore(session: VCenterSession, vm: VMFacts, marker: PowerMarker) -> Workflow:
    """Pay a power-on owed from an earlier, interrupted change."""
    if vm.power_state is PowerState.ON:  # someone was quicker: only the marker is left to clear
        return marker.set(vm.id, owed=False)
    error = yield from _power_on(session, vm.id, marker)
    return f"powering the VM back on after an earlier change failed: {error}" if error else None


def _power_on(session: VCenterSession, vm_id: str, marker: PowerMarker) -> Generator[Wait, Any, str | None]:
    error = yield from _task(session, "PowerOnVM_Task", vm_id, lambda vm: vm.PowerOnVM_Task())
    if error:
        return error
    return marker.set(vm_id, owed=False)


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
    error: str | None = yield TaskDone(task._moId, time.monotonic() + TASK_TIMEOUT_SECONDS)
    return error


class PowerMarker:
    """The custom attribute that records a power-on the operator owes a VM.

    One per client, read once: only this client marks the VMs of its policy, so an attribute it
    did not find at first can only appear through its own _create.
    """

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self._key: int | None = None
        self._read = False

    def key(self) -> int | None:
        """The attribute's key, or None when vCenter has no such attribute yet."""
        if not self._read:
            self._key, self._read = self._read_key(), True
        return self._key

    def set(self, vm_id: str, *, owed: bool) -> str | None:
        """None on success, else what went wrong."""
        try:
            key = self.key()
            if key is None:
                key = self._key = self._create()
            self.session.soap(
                "SetField",
                lambda content: content.customFieldsManager.SetField(
                    entity=_vm(content, vm_id), key=key, value="true" if owed else ""
                ),
            )
        except vmodl.MethodFault as fault:
            return describe(fault)
        return None

    def _create(self) -> int:
        def add(content: Any) -> int:
            field = content.customFieldsManager.AddCustomFieldDef(
                name=POWER_MARKER, moType=vim.VirtualMachine
            )
            return int(field.key)

        try:
            return self.session.soap("AddCustomFieldDef", add)
        except vim.fault.DuplicateName:  # another policy's worker made it meanwhile
            key = self._read_key()
            if key is None:
                raise
            return key

    def _read_key(self) -> int | None:
        manager = self.session.soap("ReadServiceContent", lambda content: content.customFieldsManager._moId)
        props = retrieve_refs(
            self.session, "ReadCustomFields", [(vim.CustomFieldsManager, manager)], ["field"]
        )
        for field in props.get(manager, {}).get("field") or []:
            if field.name == POWER_MARKER:
                return int(field.key)
        return None


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
    """One private PropertyCollector with a filter per awaited object, made on first use.

    The collector lives in the session that made it: when vCenter drops that session or the
    connection, wait_or_rebuild makes a new collector and watches every open wait again.
    """

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self.collector: Any = None
        self.version = ""
        self.filters: dict[str, Any] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def _collector(self) -> Any:
        if self.collector is None:
            self.collector = self.session.soap(
                "CreatePropertyCollector", lambda content: content.propertyCollector.CreatePropertyCollector()
            )
        return self.collector

    def close(self) -> None:
        if self.collector is None:
            return
        try:
            self.session.soap(
                "DestroyPropertyCollector", lambda content: self.collector.DestroyPropertyCollector()
            )
        except Exception:  # the collector dies with the session anyway
            log.debug("could not destroy the property collector", exc_info=True)
        self.collector = None

    def wait_or_rebuild(self, seconds: int, waits: list[Wait]) -> bool:
        """Wait for updates; False when vCenter cannot be reached even through a new collector."""
        for attempt in range(WATCHER_REBUILDS + 1):
            try:
                if attempt:
                    self.collector, self.version, self.filters = None, "", {}
                    for wait in waits:
                        self.watch(wait)
                self.wait(seconds)
                return True
            except (PolicyProblem, vmodl.MethodFault) as error:
                log.warning("waiting on vCenter failed (%s); watching again", describe(error))
        return False

    def watch(self, wait: Wait) -> None:
        kind: type
        if isinstance(wait, TaskDone):
            key, kind, paths = wait.task_id, vim.Task, ["info.state", "info.error"]
        else:
            key, kind, paths = wait.vm_id, vim.VirtualMachine, ["runtime.powerState"]
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=kind(key, self._collector()._stub))],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        self.values.setdefault(key, {})
        self.filters[key] = self.session.soap(
            "CreateFilter",
            lambda content: self._collector().CreateFilter(spec, partialUpdates=False),
            idempotent=False,
        )

    def forget(self, wait: Wait) -> None:
        key = wait.task_id if isinstance(wait, TaskDone) else wait.vm_id
        self.values.pop(key, None)
        property_filter = self.filters.pop(key, None)
        if property_filter is not None:
            try:
                self.session.soap(
                    "DestroyPropertyFilter", lambda content: property_filter.DestroyPropertyFilter()
                )
            except (PolicyProblem, vmodl.MethodFault):  # it goes with its collector at the end anyway
                log.debug("could not destroy a property filter", exc_info=True)

    def wait(self, seconds: int) -> None:
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=seconds)
        update = self.session.soap(
            "WaitForUpdatesEx",
            lambda content: self._collector().WaitForUpdatesEx(self.version, options),
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
            if time.monotonic() >= wait.deadline:
                return f"the task did not finish within {TASK_TIMEOUT_SECONDS:g}s"
            return _NOT_YET
        if self.values.get(wait.vm_id, {}).get("runtime.powerState") == "poweredOff":
            return True
        return False if time.monotonic() >= wait.deadline else _NOT_YET
