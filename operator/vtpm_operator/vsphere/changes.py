"""The vCenter calls a change is made of: each starts one thing and returns at once.

Waiting is not done here: the engine's one WaitForUpdatesEx (vsphere/live.py) watches every task
and power state in flight. A refusal becomes a ChangeRefused with vCenter's words and the fault's
type, so that retries can tell one fault from another.
"""

from __future__ import annotations

import logging
from typing import Any

from pyVmomi import vim, vmodl

from vtpm_operator.facts import KEY_NOT_READ
from vtpm_operator.prerequisites import Action
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.inventory import retrieve_refs
from vtpm_operator.vsphere.session import VCenterSession

log = logging.getLogger(__name__)

# A custom attribute on the VM: "the operator shut this VM down and owes it a power-on"; its value
# is the uid of the policy that asked for the change.
POWER_MARKER = "vtpm-operator.io/power-on-owed"


class ChangeRefused(Exception):
    def __init__(self, fault: str, message: str) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message


class ChangeOps:
    """Starts the steps of vTPM changes on one vCenter."""

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self._marker_key: int | None = None
        self._marker_read = False

    def reconfigure(
        self, vm_id: str, action: Action, device_key: int | None, key_provider: str | None
    ) -> str:
        spec = _add_spec(key_provider) if action is Action.ADD else _remove_spec(device_key)
        return self._task("ReconfigVM_Task", vm_id, lambda vm: vm.ReconfigVM_Task(spec=spec))

    def power_on(self, vm_id: str) -> str:
        return self._task("PowerOnVM_Task", vm_id, lambda vm: vm.PowerOnVM_Task())

    def power_off(self, vm_id: str) -> str:
        return self._task("PowerOffVM_Task", vm_id, lambda vm: vm.PowerOffVM_Task())

    def shutdown_guest(self, vm_id: str) -> None:
        self._call("ShutdownGuest", lambda content: _vm(content, vm_id).ShutdownGuest())

    def cancel(self, task_id: str) -> None:
        self._call(
            "CancelTask", lambda content: vim.Task(task_id, content.propertyCollector._stub).CancelTask()
        )

    def _task(self, operation: str, vm_id: str, start: Any) -> str:
        task = self._call(operation, lambda content: start(_vm(content, vm_id)))
        return str(task._moId)

    def _call(self, operation: str, call: Any) -> Any:
        try:
            return self.session.soap(operation, call, idempotent=False)
        except vmodl.MethodFault as fault:
            raise ChangeRefused(type(fault).__name__.split(".")[-1], describe(fault)) from None

    # --- the power marker ----------------------------------------------------------------------
    def marker_key(self) -> int | None:
        """The attribute's key, or None while vCenter has no such attribute (then no VM carries it)."""
        if not self._marker_read:
            self._marker_key, self._marker_read = self._read_marker_key(), True
        return self._marker_key

    def set_marker(self, vm_id: str, owner: str) -> None:
        """Record (owner: a policy uid) or clear ("") the power-on owed to a VM."""
        key = self.marker_key()
        if key is None:
            key = self._marker_key = self._create_marker()
        self._call(
            "SetField",
            lambda content: content.customFieldsManager.SetField(
                entity=_vm(content, vm_id), key=key, value=owner
            ),
        )

    def _create_marker(self) -> int:
        def add(content: Any) -> int:
            return int(
                content.customFieldsManager.AddCustomFieldDef(
                    name=POWER_MARKER, moType=vim.VirtualMachine
                ).key
            )

        try:
            return int(self.session.soap("AddCustomFieldDef", add, idempotent=False))
        except vim.fault.DuplicateName:  # another replica made it meanwhile
            key = self._read_marker_key()
            if key is None:
                raise
            return key

    def _read_marker_key(self) -> int | None:
        manager = self.session.soap("ReadServiceContent", lambda content: content.customFieldsManager._moId)
        props = retrieve_refs(
            self.session, "ReadCustomFields", [(vim.CustomFieldsManager, manager)], ["field"]
        )
        for definition in props.get(manager, {}).get("field") or []:
            if definition.name == POWER_MARKER:
                return int(definition.key)
        return None


def _add_spec(key_provider: str | None) -> Any:
    device_change = vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualTPM(key=-1))
    spec = vim.vm.ConfigSpec(deviceChange=[device_change])
    if key_provider:
        spec.crypto = vim.encryption.CryptoSpecEncrypt(
            cryptoKeyId=vim.encryption.CryptoKeyId(providerId=vim.encryption.KeyProviderId(id=key_provider))
        )
    return spec


def _remove_spec(device_key: int | None) -> Any:
    if device_key is None or device_key == KEY_NOT_READ:
        raise ChangeRefused("NoDevice", "the VM's vTPM device was not read before its removal")
    device = vim.vm.device.VirtualTPM(key=device_key)
    return vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=device)]
    )


def _vm(content: Any, vm_id: str) -> Any:
    return vim.VirtualMachine(vm_id, content.propertyCollector._stub)
