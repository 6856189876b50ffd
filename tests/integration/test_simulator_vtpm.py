"""vCenter's vTPM rules in ReconfigVM_Task and the privileges behind them, over the wire."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim

from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, retrieve_one, wait_task

STATE = ["config.hardware.device", "config.keyId", "config.firmware", "config.version", "runtime.powerState"]


@pytest.fixture
def si(simulator: Simulator) -> Iterator[Any]:
    si = connect(simulator)
    yield si
    disconnect(si)


def _vms(si: Any) -> list[Any]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    vms = sorted(retrieve_all(si, vim.VirtualMachine, ["name"]))
    view.DestroyView()
    return [vim.VirtualMachine(moid, si._stub) for moid in vms]


def _ok(si: Any, task: Any) -> None:
    info = wait_task(si, task)
    assert info.state == "success", info.error


def _prepare(
    si: Any, vm: Any, *, firmware: str = "efi", version: str = "vmx-19", power_off: bool = True
) -> None:
    """Meet every prerequisite (the simulator starts VMs powered on, BIOS, vmx-13)."""
    if power_off:
        _ok(si, vm.PowerOffVM_Task())
    _ok(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(firmware=firmware, version=version)))


def _tpm_change(op: str = "add", device: Any = None) -> vim.vm.ConfigSpec:
    dev = device or vim.vm.device.VirtualTPM(key=-1)
    return vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation=op, device=dev)])


def _tpms(state: dict[str, Any]) -> list[Any]:
    return [d for d in state["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualTPM)]


def _state(si: Any, vm: Any) -> dict[str, Any]:
    s = retrieve_one(si, vm, STATE)
    key = s.get("config.keyId")
    s["config.keyId"] = (key.keyId, key.providerId.id) if key else None  # DataObjects lack __eq__
    return s


def _refused(si: Any, vm: Any, spec: vim.vm.ConfigSpec, fault: type, key: str) -> None:
    """The reconfigure fails as a task error of type `fault` and leaves the VM unchanged."""
    before = _state(si, vm)
    info = wait_task(si, vm.ReconfigVM_Task(spec=spec))
    assert info.state == "error"
    assert isinstance(info.error, fault), info.error
    assert key in [m.key for m in info.error.faultMessage]
    after = _state(si, vm)
    assert [type(d).__name__ for d in after["config.hardware.device"]] == [
        type(d).__name__ for d in before["config.hardware.device"]
    ]
    assert after["config.keyId"] == before["config.keyId"]
    for prop in ("config.firmware", "config.version", "runtime.powerState"):
        assert after[prop] == before[prop], prop


def test_vtpm_add_succeeds_when_every_prerequisite_is_met(simulator: Simulator, si: Any) -> None:
    simulator.admin.add_key_provider("nkp", kind="native", default=True, backed_up=True)
    vm = _vms(si)[0]
    _prepare(si, vm)
    assert _tpms(_state(si, vm)) == []

    _ok(si, vm.ReconfigVM_Task(spec=_tpm_change()))

    state = _state(si, vm)
    [tpm] = _tpms(state)
    key_id, provider = state["config.keyId"]
    assert provider == "nkp"
    assert key_id

    # removal (powered off) clears the device and the key
    _ok(si, vm.ReconfigVM_Task(spec=_tpm_change("remove", tpm)))
    state = _state(si, vm)
    assert _tpms(state) == []
    assert state["config.keyId"] is None


def test_vtpm_add_uses_the_provider_named_in_the_crypto_spec(simulator: Simulator, si: Any) -> None:
    simulator.admin.add_key_provider("default-kp", kind="native", default=True, backed_up=True)
    simulator.admin.add_key_provider("named-kp", kind="kmip")
    vm = _vms(si)[0]
    _prepare(si, vm)
    spec = _tpm_change()
    spec.crypto = vim.encryption.CryptoSpecEncrypt(
        cryptoKeyId=vim.encryption.CryptoKeyId(
            keyId="", providerId=vim.encryption.KeyProviderId(id="named-kp")
        )
    )
    _ok(si, vm.ReconfigVM_Task(spec=spec))
    assert _state(si, vm)["config.keyId"][1] == "named-kp"

    other = _vms(si)[1]
    _prepare(si, other)
    spec.crypto.cryptoKeyId.providerId.id = "missing-kp"
    _refused(si, other, spec, vim.fault.GenericVmConfigFault, "msg.vtpm.add.notEncrypted")


@pytest.mark.parametrize("simulator", [{"vms": 5}], indirect=True)
def test_vtpm_add_refusals_have_vcenter_fault_types(simulator: Simulator, si: Any) -> None:
    simulator.admin.add_key_provider("nkp", kind="native", default=True, backed_up=True)
    powered_on, bios, old, snap, twice = _vms(si)

    _prepare(si, powered_on, power_off=False)
    _refused(si, powered_on, _tpm_change(), vim.fault.InvalidPowerState, "msg.vtpm.add.poweredOn")

    _prepare(si, bios, firmware="bios")
    _refused(si, bios, _tpm_change(), vim.fault.InvalidDeviceSpec, "msg.vtpm.add.firmwareNotEfi")

    _prepare(si, old, version="vmx-13")
    _refused(si, old, _tpm_change(), vim.fault.DeviceUnsupportedForVmVersion, "msg.vtpm.add.hwVersion")

    _prepare(si, snap)
    _ok(si, snap.CreateSnapshot_Task(name="s1", memory=False, quiesce=False))
    _refused(si, snap, _tpm_change(), vim.fault.InvalidVmConfig, "msg.hostd.configSpec.enc.snapshots")

    _prepare(si, twice)
    _ok(si, twice.ReconfigVM_Task(spec=_tpm_change()))
    _refused(si, twice, _tpm_change(), vim.fault.InvalidDeviceOperation, "msg.vtpm.add.alreadyPresent")


def test_vtpm_add_needs_a_usable_key_provider(simulator: Simulator, si: Any) -> None:
    vm = _vms(si)[0]
    _prepare(si, vm)
    _refused(si, vm, _tpm_change(), vim.fault.GenericVmConfigFault, "msg.vtpm.add.notEncrypted")  # none

    simulator.admin.add_key_provider("nkp", kind="native", default=False, backed_up=True)
    _refused(si, vm, _tpm_change(), vim.fault.GenericVmConfigFault, "msg.vtpm.add.notEncrypted")  # no default

    simulator.admin.remove_key_provider("nkp")
    simulator.admin.add_key_provider("nkp", kind="native", default=True, backed_up=False)
    _refused(si, vm, _tpm_change(), vim.fault.GenericVmConfigFault, "msg.vtpm.add.notEncrypted")  # no backup

    simulator.admin.mark_backed_up("nkp")
    _ok(si, vm.ReconfigVM_Task(spec=_tpm_change()))
    assert len(_tpms(_state(si, vm))) == 1


def test_vtpm_remove_is_refused_while_powered_on(simulator: Simulator, si: Any) -> None:
    simulator.admin.add_key_provider("nkp", kind="native", default=True, backed_up=True)
    vm = _vms(si)[0]
    _prepare(si, vm)
    _ok(si, vm.ReconfigVM_Task(spec=_tpm_change()))
    _ok(si, vm.PowerOnVM_Task())
    [tpm] = _tpms(_state(si, vm))
    _refused(si, vm, _tpm_change("remove", tpm), vim.fault.InvalidPowerState, "msg.vtpm.remove.poweredOn")
    assert _state(si, vm)["config.keyId"] is not None


def test_privileges_resolve_from_the_nearest_permission(simulator: Simulator, si: Any) -> None:
    content = si.RetrieveContent()
    privs = {
        p.privId for p in retrieve_one(si, content.authorizationManager, ["privilegeList"])["privilegeList"]
    }
    for name in ("Encrypt", "EncryptNew", "Decrypt", "Clone", "Migrate", "RegisterVM", "RegisterHost",
                 "ManageKeys", "ManageKeyServers", "ManageEncryptionPolicy", "Recrypt", "AddDisk",
                 "ReadKeyServersInfo", "Access"):  # fmt: skip
        assert f"Cryptographer.{name}" in privs

    # The operator account lacks Cryptographer.Encrypt on one VM folder.
    restricted_vm, free_vm = _vms(si)[:2]
    datacenter = content.rootFolder.childEntity[0]
    folder = datacenter.vmFolder.CreateFolder("restricted")
    _ok(si, folder.MoveIntoFolder_Task([restricted_vm]))
    simulator.admin.create_role(
        "NoEncrypt", sorted(set(simulator.admin.privileges()) - {"Cryptographer.Encrypt"})
    )
    simulator.admin.set_permission(folder._moId, simulator.username, "NoEncrypt", propagate=True)

    session = retrieve_one(si, content.sessionManager, ["currentSession"])["currentSession"].key
    authz = content.authorizationManager
    wanted = ["Cryptographer.Encrypt", "VirtualMachine.Config.AddRemoveDevice"]
    assert authz.HasPrivilegeOnEntity(restricted_vm, session, wanted) == [False, True]
    assert authz.HasPrivilegeOnEntity(free_vm, session, wanted) == [True, True]
    by_entity = {
        e.entity._moId: {p.privId: p.isGranted for p in e.privAvailability}
        for e in authz.HasPrivilegeOnEntities([restricted_vm, free_vm], session, wanted)
    }
    assert by_entity[restricted_vm._moId]["Cryptographer.Encrypt"] is False
    assert by_entity[free_vm._moId]["Cryptographer.Encrypt"] is True

    # and the vTPM add is refused with NoPermission naming the privilege
    simulator.admin.add_key_provider("nkp", kind="native", default=True, backed_up=True)
    _prepare(si, restricted_vm)
    before = _state(si, restricted_vm)
    with pytest.raises(vim.fault.NoPermission) as err:
        restricted_vm.ReconfigVM_Task(spec=_tpm_change())
    assert err.value.privilegeId == "Cryptographer.Encrypt"
    assert _tpms(_state(si, restricted_vm)) == _tpms(before) == []
    _prepare(si, free_vm)
    _ok(si, free_vm.ReconfigVM_Task(spec=_tpm_change()))


def test_other_users_get_only_their_permissions(simulator: Simulator) -> None:
    simulator.admin.add_user("reader@vsphere.local", "s3cret-reader")
    si = connect(simulator)
    reader = connect(simulator, username="reader@vsphere.local", password="s3cret-reader")
    try:
        content = reader.RetrieveContent()
        key = retrieve_one(reader, content.sessionManager, ["currentSession"])["currentSession"].key
        vm = _vms(si)[0]
        authz = si.RetrieveContent().authorizationManager
        assert authz.HasPrivilegeOnEntity(vm, key, ["System.Read"]) == [False]  # no permission at all
        simulator.admin.set_permission(content.rootFolder._moId, "reader@vsphere.local", "ReadOnly")
        assert authz.HasPrivilegeOnEntity(vm, key, ["System.Read", "Cryptographer.Encrypt"]) == [True, False]
    finally:
        disconnect(reader)
        disconnect(si)
