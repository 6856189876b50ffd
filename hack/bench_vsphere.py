# mypy: disallow-untyped-calls=False
# (pyVmomi data-object constructors are untyped, as for testbed in pyproject.toml)
"""The vSphere side of hack/bench.py: a fleet shaped at scale, out-of-band drift, the per-VM loop.

Everything here talks to the simulator over the wire, as a vSphere admin or another tool would;
nothing calls into the operator. Tags go on in bulk (attach-tag-to-multiple-objects), so that
tagging 10,000 VMs takes seconds, not one login and one call per VM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from pyVmomi import vim, vmodl

from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, retrieve_one, wait_task
from vtpm_operator.prerequisites import ANY_CHANGE_ON_VM
from vtpm_operator.vsphere.live import VM_PATHS

CATEGORY = "bench"
ALL_TAG = "all"  # on every VM
SLICES = 20  # VM number i carries slice-(i mod SLICES)
SLICES_PER_POLICY = 5  # policy k (k >= 1) selects slices k .. k+4 (mod SLICES): they overlap
KEY_PROVIDER = "kp-bench"
_TAGGING = "/rest/com/vmware/cis/tagging"
_PC = vmodl.query.PropertyCollector


def slice_tag(index: int) -> str:
    return f"slice-{index % SLICES:02d}"


def policy_tags(policy: int) -> list[str]:
    """Tags policy number `policy` selects: policy 0 the whole fleet, the others 5 slices each."""
    if policy == 0:
        return [ALL_TAG]
    return [slice_tag(policy + k) for k in range(SLICES_PER_POLICY)]


@dataclass
class BenchFleet:
    """The simulator's VMs in a stable order, their tags, and the VMs that carry a vTPM."""

    sim: Simulator
    vm_ids: list[str] = field(default_factory=list)  # index i is VM number i
    tags_of: dict[str, set[str]] = field(default_factory=dict)  # VM id → tag names
    with_vtpm: list[str] = field(default_factory=list)  # unused drift candidates, popped as used

    def expected_matched(self, policy: int) -> int:
        wanted = set(policy_tags(policy))
        return sum(1 for tags in self.tags_of.values() if tags & wanted)

    def policies_selecting(self, vm_id: str, policies: int) -> list[int]:
        return [p for p in range(policies) if self.tags_of[vm_id] & set(policy_tags(p))]


class Rest:
    """One logged-in REST session to the simulator (as an admin tagging VMs)."""

    def __init__(self, sim: Simulator) -> None:
        self.base = f"https://{sim.server}"
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(sim.ca_file)
        login = self.http.post(f"{self.base}/rest/com/vmware/cis/session", auth=(sim.username, sim.password))
        login.raise_for_status()
        self.http.headers["vmware-api-session-id"] = login.json()["value"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.base}{path}", json=body, timeout=120)
        response.raise_for_status()
        return response.json().get("value") if response.content else None


def build(sim: Simulator, vtpm_vms: int) -> BenchFleet:
    """Tag every VM (all + one slice), and give `vtpm_vms` of them a vTPM (powered off, EFI, vmx-19)."""
    sim.admin.add_key_provider(KEY_PROVIDER, kind="native", default=True, backed_up=True)
    si = connect(sim)
    try:
        fleet = BenchFleet(sim, sorted(retrieve_all(si, vim.VirtualMachine, ["name"]), key=_moid_number))
        for vm_id in fleet.vm_ids[:vtpm_vms]:
            _give_vtpm(si, vim.VirtualMachine(vm_id, si._stub))
            fleet.with_vtpm.append(vm_id)
    finally:
        disconnect(si)
    _tag_all(fleet)
    return fleet


def _moid_number(moid: str) -> tuple[int, str]:
    digits = moid.rsplit("-", 1)[-1]
    return (int(digits), moid) if digits.isdigit() else (0, moid)


def _give_vtpm(si: Any, vm: Any) -> None:
    for task in (
        vm.PowerOffVM_Task(),
        vm.ReconfigVM_Task(
            spec=vim.vm.ConfigSpec(firmware="efi", version="vmx-19", guestId="windows11_64Guest")
        ),
        vm.ReconfigVM_Task(spec=_add_tpm()),
    ):
        info = wait_task(si, task)
        if info.error is not None:
            raise RuntimeError(f"shaping {vm._moId}: {info.error.msg}")


def _add_tpm() -> Any:
    device = vim.vm.device.VirtualTPM(key=-1)
    return vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=device)])


def _tag_all(fleet: BenchFleet) -> None:
    rest = Rest(fleet.sim)
    category = rest.call(
        "POST",
        f"{_TAGGING}/category",
        {
            "create_spec": {
                "name": CATEGORY,
                "description": "benchmark slices",
                "cardinality": "MULTIPLE",
                "associable_types": ["VirtualMachine"],
            }
        },
    )
    members: dict[str, list[str]] = {ALL_TAG: list(fleet.vm_ids)}
    for i, vm_id in enumerate(fleet.vm_ids):
        members.setdefault(slice_tag(i), []).append(vm_id)
        fleet.tags_of[vm_id] = {ALL_TAG, slice_tag(i)}
    for name, vm_ids in members.items():
        tag_id = rest.call(
            "POST",
            f"{_TAGGING}/tag",
            {"create_spec": {"name": name, "description": name, "category_id": category}},
        )
        for start in range(0, len(vm_ids), 2000):
            objects = [{"id": vm_id, "type": "VirtualMachine"} for vm_id in vm_ids[start : start + 2000]]
            rest.call(
                "POST",
                f"{_TAGGING}/tag-association/id:{tag_id}?~action=attach-tag-to-multiple-objects",
                {"object_ids": objects},
            )


class OutOfBand:
    """Someone else's pyVmomi session: removes vTPMs behind the operator's back."""

    def __init__(self, sim: Simulator) -> None:
        self.si = connect(sim)

    def close(self) -> None:
        disconnect(self.si)

    def removals(self, vm_ids: Sequence[str]) -> list[tuple[Any, Any]]:
        """(VM, ConfigSpec removing its vTPM) for each VM: read before the clock starts."""
        out = []
        for vm_id in vm_ids:
            vm = vim.VirtualMachine(vm_id, self.si._stub)
            remove = vim.vm.device.VirtualDeviceSpec(operation="remove", device=self._tpm_of(vm))
            out.append((vm, vim.vm.ConfigSpec(deviceChange=[remove])))
        return out

    @staticmethod
    def start(removals: Sequence[tuple[Any, Any]]) -> list[Any]:
        """Start every ReconfigVM_Task back to back (each returns at once); returns the tasks."""
        return [vm.ReconfigVM_Task(spec=spec) for vm, spec in removals]

    def _tpm_of(self, vm: Any) -> Any:
        devices = retrieve_one(self.si, vm, ["config.hardware.device"])["config.hardware.device"]
        for device in devices:
            if isinstance(device, vim.vm.device.VirtualTPM):
                return device
        raise RuntimeError(f"{vm._moId} has no vTPM to remove")

    def wait(self, tasks: Sequence[Any]) -> None:
        for task in tasks:
            info = wait_task(self.si, task)
            if info.error is not None:
                raise RuntimeError(f"out-of-band change failed: {info.error.msg}")


def per_vm_loop(sim: Simulator) -> float:
    """What per-VM tools do: list the VMs, then per VM one RetrievePropertiesEx of the same
    properties the operator's feed reads, one HasPrivilegeOnEntity and one read of its recent
    tasks (plus each task's state, when it has any). Returns seconds."""
    started = time.perf_counter()
    si = connect(sim)
    try:
        content: Any = si.RetrieveContent()  # once: the loop pays for its reads, not for this
        session_key = content.sessionManager.currentSession.key
        ids = list(retrieve_all(si, vim.VirtualMachine, ["name"]))
        privileges = sorted(ANY_CHANGE_ON_VM)
        for vm_id in ids:
            vm = vim.VirtualMachine(vm_id, si._stub)
            _read(content, vm, list(VM_PATHS))
            content.authorizationManager.HasPrivilegeOnEntity(vm, session_key, privileges)
            for task in _read(content, vm, ["recentTask"]).get("recentTask") or []:
                _read(content, task, ["info.state"])
    finally:
        disconnect(si)
    return time.perf_counter() - started


def _read(content: Any, obj: Any, paths: list[str]) -> dict[str, Any]:
    """One RetrievePropertiesEx of one object."""
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=obj, skip=False)],
        propSet=[_PC.PropertySpec(type=type(obj), pathSet=paths)],
    )
    result = content.propertyCollector.RetrievePropertiesEx([spec], _PC.RetrieveOptions())
    if result is None or not result.objects:
        return {}
    return {p.name: p.val for p in result.objects[0].propSet}
