"""Every prerequisite vCenter imposes on a vTPM change, judged for one VM at a time. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from vtpm_operator import guest_os
from vtpm_operator.facts import HostFacts, KeyProvider, PowerState, VMFacts
from vtpm_operator.policy import DesiredVTPM, Policy, PowerAction

MIN_HARDWARE_VERSION = 14


class Reason(StrEnum):
    """Why a VM cannot be changed now; documented in the CRD and the README."""

    POWERED_ON = "PoweredOn"
    FIRMWARE_NOT_EFI = "FirmwareNotEFI"
    HARDWARE_VERSION_TOO_OLD = "HardwareVersionTooOld"
    HAS_SNAPSHOTS = "HasSnapshots"
    GUEST_OS_UNSUPPORTED = "GuestOSUnsupported"
    HOST_VERSION_TOO_OLD = "HostVersionTooOld"
    KEY_PROVIDER_MISSING = "KeyProviderMissing"
    INSUFFICIENT_PRIVILEGES = "InsufficientPrivileges"
    CONFLICTING_POLICIES = "ConflictingPolicies"  # another policy wants the opposite (claims.py)


class Action(StrEnum):
    NONE = "None"
    ADD = "Add"
    REMOVE = "Remove"


# VMware's documented privileges for encrypting a VM (a vTPM encrypts the VM home), and for
# removing one again. Folder privileges are checked on the VM's parent folder.
ADD_PRIVILEGES_ON_VM = frozenset(
    {
        "Cryptographer.Encrypt",
        "Cryptographer.Clone",
        "Cryptographer.Migrate",
        "Cryptographer.RegisterVM",
        "VirtualMachine.Config.AddRemoveDevice",
    }
)
ADD_PRIVILEGES_ON_FOLDER = frozenset({"Cryptographer.EncryptNew"})
REMOVE_PRIVILEGES_ON_VM = frozenset({"Cryptographer.Decrypt", "VirtualMachine.Config.AddRemoveDevice"})
# Shutting a VM down also records the power-on the operator then owes it, in a custom attribute.
POWER_PRIVILEGES_ON_VM = frozenset(
    {"VirtualMachine.Interact.PowerOff", "VirtualMachine.Interact.PowerOn", "Global.SetCustomField"}
)


# What any policy may need: read once for the whole fleet, judged per policy.
ANY_CHANGE_ON_VM = ADD_PRIVILEGES_ON_VM | REMOVE_PRIVILEGES_ON_VM | POWER_PRIVILEGES_ON_VM
ANY_CHANGE_ON_FOLDER = ADD_PRIVILEGES_ON_FOLDER


def required_privileges(policy: Policy) -> tuple[frozenset[str], frozenset[str]]:
    """(on the VM, on its folder): what the operator's account needs to carry out this policy."""
    on_vm = ADD_PRIVILEGES_ON_VM if policy.vtpm is DesiredVTPM.PRESENT else REMOVE_PRIVILEGES_ON_VM
    on_folder = ADD_PRIVILEGES_ON_FOLDER if policy.vtpm is DesiredVTPM.PRESENT else frozenset()
    if policy.power.action is PowerAction.SHUTDOWN:
        on_vm = on_vm | POWER_PRIVILEGES_ON_VM
    return on_vm, on_folder


@dataclass(frozen=True, slots=True)
class Blocker:
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    vm: VMFacts
    action: Action  # what brings the VM to the desired state; NONE when it is there
    blockers: tuple[Blocker, ...] = ()  # every unmet prerequisite, not just the first
    power_off_first: bool = False  # powered on, and the power policy allows shutting it down

    @property
    def compliant(self) -> bool:
        return self.action is Action.NONE


def choose_key_provider(providers: tuple[KeyProvider, ...], wanted: str | None) -> KeyProvider | None:
    """The usable provider a vTPM would be encrypted with: the named one, else vCenter's default."""
    for provider in providers:
        if provider.usable and (provider.id == wanted if wanted else provider.is_default):
            return provider
    return None


def evaluate(
    vm: VMFacts, policy: Policy, hosts: Mapping[str, HostFacts], provider: KeyProvider | None
) -> Verdict:
    wants_vtpm = policy.vtpm is DesiredVTPM.PRESENT
    if vm.has_vtpm == wants_vtpm:
        return Verdict(vm, Action.NONE)
    action = Action.ADD if wants_vtpm else Action.REMOVE
    blockers: list[Blocker] = []
    power_off_first = False
    if vm.power_state is not PowerState.OFF:
        power_off_first, detail = _power_off_plan(vm, policy)
        if not power_off_first:
            blockers.append(Blocker(Reason.POWERED_ON, detail))
    if vm.has_snapshots:
        blockers.append(Blocker(Reason.HAS_SNAPSHOTS, "has snapshots; delete or consolidate them first"))
    on_vm, on_folder = required_privileges(policy)
    lacking = vm.missing_privileges & (on_vm | on_folder)
    if lacking:
        missing = ", ".join(sorted(lacking))
        blockers.append(
            Blocker(Reason.INSUFFICIENT_PRIVILEGES, f"the operator's vCenter account lacks {missing}")
        )
    if action is Action.ADD:
        blockers.extend(_add_blockers(vm, policy, hosts, provider))
    return Verdict(vm, action, tuple(blockers), power_off_first and not blockers)


def _power_off_plan(vm: VMFacts, policy: Policy) -> tuple[bool, str]:
    if policy.power.action is PowerAction.SKIP:
        return False, f"VM is {vm.power_state}; power it off, or set powerPolicy.action: Shutdown"
    if vm.power_state is PowerState.SUSPENDED:
        return False, "VM is suspended; resume and shut it down, or power it off"
    if not vm.tools_running and not policy.power.force_power_off:
        return False, "VMware Tools are not running, so the guest cannot be shut down gracefully"
    return True, ""


def _add_blockers(
    vm: VMFacts, policy: Policy, hosts: Mapping[str, HostFacts], provider: KeyProvider | None
) -> list[Blocker]:
    blockers = []
    if vm.firmware != "efi":
        blockers.append(
            Blocker(
                Reason.FIRMWARE_NOT_EFI,
                f"firmware is {vm.firmware}; a vTPM needs EFI, never switched for you (the OS may not boot)",
            )
        )
    if vm.hardware_version < MIN_HARDWARE_VERSION:
        blockers.append(
            Blocker(
                Reason.HARDWARE_VERSION_TOO_OLD,
                f"virtual hardware vmx-{vm.hardware_version}; upgrade to vmx-{MIN_HARDWARE_VERSION} or later",
            )
        )
    supported = vm.guest_supports_tpm20
    if supported is None:
        supported = guest_os.supports_tpm20_by_table(vm.guest_id)
    if not supported:
        blockers.append(
            Blocker(Reason.GUEST_OS_UNSUPPORTED, f"guest OS {vm.guest_id} does not support TPM 2.0")
        )
    host = hosts.get(vm.host_id) if vm.host_id else None
    if host is not None and host.version:  # a host that reports no version is not judged on it
        needed = guest_os.min_host_version(vm.guest_id)
        if host.version < needed:
            blockers.append(
                Blocker(
                    Reason.HOST_VERSION_TOO_OLD,
                    f"host {host.name} runs ESXi {_version(host.version)}; "
                    f"this guest needs {_version(needed)} or later",
                )
            )
    if provider is None:
        wanted = f"key provider {policy.key_provider}" if policy.key_provider else "a default key provider"
        blockers.append(Blocker(Reason.KEY_PROVIDER_MISSING, f"vCenter has no usable {wanted}"))
    return blockers


def _version(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)
