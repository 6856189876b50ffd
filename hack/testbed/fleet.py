"""A mixed fleet on the simulator: VMs that pass every prerequisite and VMs blocked for each reason.

The demo and the end-to-end tests both build their inventory here, so that what the README shows
is what the tests prove.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from pyVmomi import vim

from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, wait_task

CATEGORY = "security"
REQUIRED_TAG = "vtpm-required"
EXEMPT_TAG = "vtpm-exempt"
KEY_PROVIDER = "kp-standard"
OLD_HOST_VERSION = ("7.0.1", "16850804")  # ESXi 7.0 Update 1: too old for a Linux guest's vTPM
NO_ENCRYPT_ROLE = "VTPMNoEncrypt"


@dataclass(frozen=True)
class VMSpec:
    name: str
    guest: str = "windows11_64Guest"
    firmware: str = "efi"
    version: str = "vmx-19"
    powered_on: bool = False
    snapshot: bool = False
    vtpm: bool = False
    tags: tuple[str, ...] = (REQUIRED_TAG,)
    busy: bool = False  # a task keeps running on it
    old_host: bool = False  # placed on a host running ESXi 7.0 U1
    no_encrypt_privilege: bool = False  # the operator's account lacks Cryptographer.Encrypt on it


# What each VM shows once the operator has run: (state, reasons).
MIXED_FLEET: tuple[tuple[VMSpec, str, tuple[str, ...]], ...] = (
    (VMSpec("win11-ready"), "Compliant", ()),
    (VMSpec("rhel9-ready", guest="rhel9_64Guest"), "Compliant", ()),
    (VMSpec("win11-has-vtpm", vtpm=True), "Compliant", ()),
    (VMSpec("win11-powered-on", powered_on=True), "Blocked", ("PoweredOn",)),
    (VMSpec("win10-bios", guest="windows9_64Guest", firmware="bios"), "Blocked", ("FirmwareNotEFI",)),
    (
        VMSpec("win2019-vmx13", guest="windows2019srv_64Guest", version="vmx-13"),
        "Blocked",
        ("HardwareVersionTooOld",),
    ),
    (VMSpec("win11-snapshot", snapshot=True), "Blocked", ("HasSnapshots",)),
    (VMSpec("winxp-legacy", guest="winXPProGuest"), "Blocked", ("GuestOSUnsupported",)),
    (VMSpec("ubuntu-old-host", guest="ubuntu64Guest", old_host=True), "Blocked", ("HostVersionTooOld",)),
    (VMSpec("win11-busy", busy=True), "Pending", ()),  # waits for the running task, blocked by nothing
    (VMSpec("win11-no-privilege", no_encrypt_privilege=True), "Blocked", ("InsufficientPrivileges",)),
    (
        VMSpec(
            "win10-many",
            guest="windows9_64Guest",
            firmware="bios",
            version="vmx-13",
            powered_on=True,
            snapshot=True,
        ),
        "Blocked",
        ("PoweredOn", "HasSnapshots", "FirmwareNotEFI", "HardwareVersionTooOld"),
    ),
    (VMSpec("win11-exempt", tags=(REQUIRED_TAG, EXEMPT_TAG)), "Excluded", ()),
    (VMSpec("win11-untagged", tags=()), "NotSelected", ()),
)


@dataclass
class Fleet:
    sim: Simulator
    ids: dict[str, str] = field(default_factory=dict)  # VM name → managed object id
    tag_ids: dict[str, str] = field(default_factory=dict)  # tag name → tag id
    category_id: str = ""

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Call the simulator's REST API as the admin account."""
        with requests.Session() as http:
            login = http.post(
                f"https://{self.sim.server}/rest/com/vmware/cis/session",
                auth=(self.sim.username, self.sim.password),
                verify=str(self.sim.ca_file),
                timeout=10,
            )
            login.raise_for_status()
            response = http.request(
                method,
                f"https://{self.sim.server}{path}",
                json=body,
                headers={"vmware-api-session-id": login.json()["value"]},
                verify=str(self.sim.ca_file),
                timeout=10,
            )
            response.raise_for_status()
            return response.json().get("value") if response.content else None

    def tag(self, vm_name: str, tag: str) -> None:
        self.rest(
            "POST",
            f"/rest/com/vmware/cis/tagging/tag-association/id:{self.tag_ids[tag]}?~action=attach",
            {"object_id": {"id": self.ids[vm_name], "type": "VirtualMachine"}},
        )

    def untag(self, vm_name: str, tag: str) -> None:
        self.rest(
            "POST",
            f"/rest/com/vmware/cis/tagging/tag-association/id:{self.tag_ids[tag]}?~action=detach",
            {"object_id": {"id": self.ids[vm_name], "type": "VirtualMachine"}},
        )

    def create_tag(self, name: str) -> str:
        self.tag_ids[name] = self.rest(
            "POST",
            "/rest/com/vmware/cis/tagging/tag",
            {"create_spec": {"name": name, "description": name, "category_id": self.category_id}},
        )
        return self.tag_ids[name]


def build_fleet(
    sim: Simulator, specs: Iterable[VMSpec], *, key_provider: bool = True, extra_tags: Iterable[str] = ()
) -> Fleet:
    """Shape the simulator's VMs after `specs` (it needs as many), tag them, add a key provider.
    `extra_tags`: more tags of the same category, made before the VMs are tagged (specs may use them)."""
    specs = list(specs)
    fleet = Fleet(sim)
    if key_provider:
        sim.admin.add_key_provider(KEY_PROVIDER, kind="kmip", default=True, backed_up=True)
    si = connect(sim)
    try:
        vms = _vms_by_host(si)
        old_host = _standalone_host(si)
        if any(spec.old_host for spec in specs):
            sim.admin.set_host_product(old_host, *OLD_HOST_VERSION)
        for spec in specs:
            fleet.ids[spec.name] = _take_vm(vms, old_host if spec.old_host else None, exclude=old_host)
        for spec in specs:
            _shape(si, vim.VirtualMachine(fleet.ids[spec.name], si._stub), spec)
        if any(spec.no_encrypt_privilege for spec in specs):
            privileges = [p for p in sim.admin.privileges() if p != "Cryptographer.Encrypt"]
            sim.admin.create_role(NO_ENCRYPT_ROLE, privileges)
            for spec in specs:
                if spec.no_encrypt_privilege:
                    sim.admin.set_permission(
                        fleet.ids[spec.name], sim.username, NO_ENCRYPT_ROLE, propagate=True
                    )
    finally:
        disconnect(si)
    for spec in specs:
        if spec.busy:
            sim.admin.start_task_on(fleet.ids[spec.name])
    fleet.category_id = fleet.rest(
        "POST",
        "/rest/com/vmware/cis/tagging/category",
        {
            "create_spec": {
                "name": CATEGORY,
                "description": "security requirements",
                "cardinality": "MULTIPLE",
                "associable_types": ["VirtualMachine"],
            }
        },
    )
    for tag in (REQUIRED_TAG, EXEMPT_TAG, *extra_tags):
        fleet.create_tag(tag)
    for spec in specs:
        for tag in spec.tags:
            fleet.tag(spec.name, tag)
    return fleet


def _vms_by_host(si: Any) -> dict[str, list[str]]:
    by_host: dict[str, list[str]] = {}
    for moid, props in sorted(retrieve_all(si, vim.VirtualMachine, ["runtime.host"]).items()):
        by_host.setdefault(props["runtime.host"]._moId, []).append(moid)
    return by_host


def _standalone_host(si: Any) -> str:
    """A host outside any cluster (the fleet puts its old-ESXi VMs there), or "" when there is none."""
    for moid, props in sorted(retrieve_all(si, vim.HostSystem, ["parent"]).items()):
        if not isinstance(props["parent"], vim.ClusterComputeResource):
            return moid
    return ""


def _take_vm(vms: dict[str, list[str]], host: str | None, *, exclude: str) -> str:
    for candidate, ids in vms.items():
        if ids and (candidate == host if host else candidate != exclude):
            return ids.pop(0)
    raise RuntimeError(f"the simulator has too few VMs {'on host ' + host if host else 'in its clusters'}")


def _shape(si: Any, vm: Any, spec: VMSpec) -> None:
    def _wait(task: Any) -> None:
        info = wait_task(si, task)
        if info.error is not None:
            raise info.error

    _wait(vm.PowerOffVM_Task())  # the simulator starts every VM powered on
    _wait(vm.Rename_Task(newName=spec.name))
    _wait(
        vm.ReconfigVM_Task(
            spec=vim.vm.ConfigSpec(firmware=spec.firmware, version=spec.version, guestId=spec.guest)
        )
    )
    if spec.vtpm:
        tpm = vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualTPM(key=-1))
        _wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[tpm])))
    if spec.snapshot:
        _wait(vm.CreateSnapshot_Task(name="before-upgrade", memory=False, quiesce=False))
    if spec.powered_on:
        _wait(vm.PowerOnVM_Task())


def specs_of(fleet: Sequence[tuple[VMSpec, str, tuple[str, ...]]]) -> list[VMSpec]:
    return [spec for spec, _, _ in fleet]
