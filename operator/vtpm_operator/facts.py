"""What one sync learned about vCenter, as plain immutable data.

The vSphere adapter produces these; nothing past the adapter sees a pyVmomi object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class PowerState(StrEnum):
    ON = "poweredOn"
    OFF = "poweredOff"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class About:
    """Who a server says it is, before anyone logs in."""

    api_type: str  # "VirtualCenter" for vCenter, "HostAgent" for a standalone ESXi host
    instance_uuid: str
    version: str
    build: str


@dataclass(frozen=True)
class HostFacts:
    id: str
    name: str
    version: tuple[int, ...]  # ESXi product version, e.g. (7, 0, 2) for 7.0 Update 2


@dataclass(frozen=True)
class KeyProvider:
    id: str
    is_default: bool
    usable: bool  # active; a native key provider only once it has been backed up
    kind: str  # "kmip", "native", "trustAuthority"


# The fleet view reads only summary.config.tpmPresent; the device list (and with it the device's
# key) is read for a VM about to change. This key stands for "present, key not read".
KEY_NOT_READ = -1


@dataclass(frozen=True, slots=True)
class VMFacts:
    id: str  # managed object id, e.g. "vm-42"
    name: str
    power_state: PowerState
    firmware: str  # "efi" or "bios"
    hardware_version: int  # 19 for "vmx-19"
    guest_id: str
    host_id: str | None
    folder_id: str | None
    has_snapshots: bool
    vtpm_device_key: int | None  # the VirtualTPM device's key (or KEY_NOT_READ), None when it has none
    task_in_progress: bool
    tools_running: bool
    # vCenter's own answer for this guest id (GuestOsDescriptor.supportsTPM20); None when it gave none.
    guest_supports_tpm20: bool | None = None
    # Privileges the operator's account lacks on this VM or its folder, among all it may need;
    # each policy judges only those its own change needs (prerequisites.required_privileges).
    missing_privileges: frozenset[str] = field(default_factory=frozenset)
    is_template: bool = False
    # The operator shut this VM down for a change and still owes it a power-on (a marker kept in
    # vCenter, so that the debt survives an interrupted change or an operator restart).
    power_on_owed: bool = False
    # When the marker was written: with the VM still on, a guest shutdown may still be under way
    # (asked by an earlier holder), and a second one must not be started on top of it.
    power_off_asked_at: float | None = None

    @property
    def has_vtpm(self) -> bool:
        return self.vtpm_device_key is not None


@dataclass(frozen=True)
class Inventory:
    """Everything one sync reads before deciding: the selected VMs and what they depend on."""

    vms: tuple[VMFacts, ...]
    hosts: Mapping[str, HostFacts]
    key_providers: tuple[KeyProvider, ...]
    excluded: int = 0  # VMs that matched the selector but carry an excluded tag
