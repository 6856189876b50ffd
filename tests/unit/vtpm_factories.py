"""Builders, hypothesis strategies and an in-memory fake of our own VSphere protocol for unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from vtpm_operator.api import parse_policy
from vtpm_operator.facts import HostFacts, Inventory, KeyProvider, PowerState, VMFacts
from vtpm_operator.planning import Change
from vtpm_operator.policy import DesiredVTPM, Mode, Policy, PowerAction
from vtpm_operator.prerequisites import Action, Reason

# Guest ids whose TPM 2.0 support is known independently of the module under test.
SUPPORTED_WINDOWS = (
    "windows9_64Guest",
    "windows11_64Guest",
    "windows2019srv_64Guest",
    "windows9Server64Guest",
)
SUPPORTED_LINUX = ("rhel8_64Guest", "ubuntu64Guest", "debian12_64Guest", "sles15_64Guest")
UNSUPPORTED = ("winXPProGuest", "windows7Guest", "dosGuest", "freebsd13_64Guest", "solaris11_64Guest")
GUEST_IDS = SUPPORTED_WINDOWS + SUPPORTED_LINUX + UNSUPPORTED

HOSTS: dict[str, HostFacts] = {
    "h-65": HostFacts("h-65", "esx-65", (6, 5, 0)),
    "h-67": HostFacts("h-67", "esx-67", (6, 7, 0)),
    "h-701": HostFacts("h-701", "esx-701", (7, 0, 1)),
    "h-702": HostFacts("h-702", "esx-702", (7, 0, 2)),
    "h-803": HostFacts("h-803", "esx-803", (8, 0, 3)),
}
GOOD_HOST = "h-803"
HOST_IDS: tuple[str | None, ...] = (*HOSTS, None, "h-unknown")

DEFAULT_PROVIDER = KeyProvider("kp-default", is_default=True, usable=True, kind="native")
NAMED_PROVIDER = KeyProvider("kp-named", is_default=False, usable=True, kind="kmip")

PRIVILEGES = ("Cryptographer.Encrypt", "Cryptographer.EncryptNew", "VirtualMachine.Config.AddRemoveDevice")


def make_vm(**overrides: Any) -> VMFacts:
    """A VM every prerequisite holds for (powered off, EFI, vmx-19, Windows 11, new host), without a vTPM."""
    values: dict[str, Any] = {
        "id": "vm-1",
        "name": "app-01",
        "power_state": PowerState.OFF,
        "firmware": "efi",
        "hardware_version": 19,
        "guest_id": "windows11_64Guest",
        "host_id": GOOD_HOST,
        "folder_id": "group-v1",
        "has_snapshots": False,
        "vtpm_device_key": None,
        "task_in_progress": False,
        "tools_running": True,
    }
    values.update(overrides)
    return VMFacts(**values)


MINIMAL_POLICY_SPEC: dict[str, Any] = {
    "vcenterRef": {"name": "vc-prod"},
    "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
}
MINIMAL_VCENTER_SPEC: dict[str, Any] = {
    "server": "vc.example.com",
    "credentialsSecretRef": {"name": "vc-prod-creds"},
}


def make_policy(
    *,
    vtpm: DesiredVTPM = DesiredVTPM.PRESENT,
    mode: Mode = Mode.ENFORCE,
    allow_removal: bool = False,
    key_provider: str | None = None,
    action: PowerAction = PowerAction.SKIP,
    force_power_off: bool = False,
    restore_power_state: bool = True,
    max_concurrent: int = 4,
) -> Policy:
    """A policy with the API's defaults (from the one parser) except what the arguments say."""
    defaults = parse_policy(MINIMAL_POLICY_SPEC)
    return dataclasses.replace(
        defaults,
        vtpm=vtpm,
        allow_removal=allow_removal,
        mode=mode,
        key_provider=key_provider,
        power=dataclasses.replace(
            defaults.power,
            action=action,
            force_power_off=force_power_off,
            restore_power_state=restore_power_state,
        ),
        max_concurrent=max_concurrent,
    )


def inventory(
    vms: Sequence[VMFacts],
    providers: tuple[KeyProvider, ...] = (DEFAULT_PROVIDER,),
    excluded: int = 0,
) -> Inventory:
    return Inventory(tuple(vms), HOSTS, providers, excluded)


# Fleet-sized properties: fewer, bigger examples; no deadline (the machine is shared).
FLEET = settings(max_examples=60, deadline=None)

policies = st.builds(
    make_policy,
    vtpm=st.sampled_from(DesiredVTPM),
    mode=st.sampled_from(Mode),
    allow_removal=st.booleans(),
    key_provider=st.sampled_from([None, "kp-named", "kp-nowhere"]),
    action=st.sampled_from(PowerAction),
    force_power_off=st.booleans(),
    restore_power_state=st.booleans(),
)


@st.composite
def vm_facts(draw: st.DrawFn, vm_id: str | None = None) -> VMFacts:
    ident = vm_id or draw(st.integers(1, 10_000).map(lambda n: f"vm-{n}"))
    return make_vm(
        id=ident,
        name=draw(st.sampled_from(["app", "db", "web", "build"])) + "-" + ident,
        power_state=draw(st.sampled_from(PowerState)),
        firmware=draw(st.sampled_from(["efi", "bios"])),
        hardware_version=draw(st.integers(8, 21)),
        guest_id=draw(st.sampled_from(GUEST_IDS)),
        host_id=draw(st.sampled_from(HOST_IDS)),
        has_snapshots=draw(st.booleans()),
        vtpm_device_key=draw(st.sampled_from([None, 11000])),
        task_in_progress=draw(st.booleans()),
        tools_running=draw(st.booleans()),
        guest_supports_tpm20=draw(st.sampled_from([None, True, False])),
        missing_privileges=frozenset(draw(st.lists(st.sampled_from(PRIVILEGES), max_size=2))),
    )


@st.composite
def fleets(draw: st.DrawFn, max_size: int = 6) -> tuple[VMFacts, ...]:
    count = draw(st.integers(0, max_size))
    return tuple(draw(vm_facts(vm_id=f"vm-{i}")) for i in range(count))


key_provider_sets = st.lists(
    st.builds(
        KeyProvider,
        id=st.sampled_from(["kp-default", "kp-named", "kp-other"]),
        is_default=st.booleans(),
        usable=st.booleans(),
        kind=st.sampled_from(["native", "kmip", "trustAuthority"]),
    ),
    max_size=4,
).map(tuple)


def shutdown_possible(vm: VMFacts, policy: Policy) -> bool:
    return (
        policy.power.action is PowerAction.SHUTDOWN
        and vm.power_state is PowerState.ON
        and (vm.tools_running or policy.power.force_power_off)
    )


def oracle(
    vm: VMFacts, policy: Policy, hosts: Mapping[str, HostFacts], provider: KeyProvider | None
) -> set[Reason] | None:
    """None when the VM is already in the desired state, else the set of unmet prerequisites."""
    wants = policy.vtpm is DesiredVTPM.PRESENT
    if (vm.vtpm_device_key is not None) is wants:
        return None
    unmet: set[Reason] = set()
    if vm.power_state is not PowerState.OFF and not shutdown_possible(vm, policy):
        unmet.add(Reason.POWERED_ON)
    if vm.has_snapshots:
        unmet.add(Reason.HAS_SNAPSHOTS)
    # Only what this policy's change needs counts: VMware's list for encrypting (add) or
    # decrypting (remove), plus power and the custom attribute when it shuts guests down.
    needed = (
        {
            "Cryptographer.Encrypt",
            "Cryptographer.Clone",
            "Cryptographer.Migrate",
            "Cryptographer.RegisterVM",
            "Cryptographer.EncryptNew",
        }
        if wants
        else {"Cryptographer.Decrypt"}
    ) | {"VirtualMachine.Config.AddRemoveDevice"}
    if policy.power.action is PowerAction.SHUTDOWN:
        needed |= {
            "VirtualMachine.Interact.PowerOff",
            "VirtualMachine.Interact.PowerOn",
            "Global.SetCustomField",
        }
    if vm.missing_privileges & needed:
        unmet.add(Reason.INSUFFICIENT_PRIVILEGES)
    if wants:
        if vm.firmware != "efi":
            unmet.add(Reason.FIRMWARE_NOT_EFI)
        if vm.hardware_version < 14:
            unmet.add(Reason.HARDWARE_VERSION_TOO_OLD)
        if vm.guest_supports_tpm20 is not None:
            supported = vm.guest_supports_tpm20
        else:
            supported = vm.guest_id in SUPPORTED_WINDOWS + SUPPORTED_LINUX
        if not supported:
            unmet.add(Reason.GUEST_OS_UNSUPPORTED)
        host = hosts.get(vm.host_id or "")
        if host is not None:
            windows = vm.guest_id.startswith("win")
            needed = (6, 7, 0) if windows else (7, 0, 2)
            if host.version < needed:
                unmet.add(Reason.HOST_VERSION_TOO_OLD)
        if provider is None:
            unmet.add(Reason.KEY_PROVIDER_MISSING)
    return unmet


class FakeVSphere:
    """An in-memory implementation of vtpm_operator.sync.VSphere.

    ``effective``: whether apply really changes the VMs; ``errors``: what apply reports per VM id;
    ``vanish``: VM ids that are gone when read again after apply.
    """

    def __init__(
        self,
        vms: Sequence[VMFacts],
        providers: tuple[KeyProvider, ...] = (DEFAULT_PROVIDER,),
        *,
        excluded: int = 0,
        effective: bool = True,
        errors: Mapping[str, str] | None = None,
        vanish: frozenset[str] = frozenset(),
    ) -> None:
        self.vms = {vm.id: vm for vm in vms}
        self.providers = providers
        self.excluded = excluded
        self.effective = effective
        self.errors = dict(errors or {})
        self.vanish = vanish
        self.apply_calls: list[tuple[Change, ...]] = []
        self.read_vms_calls: list[tuple[str, ...]] = []
        self.restore_calls: list[tuple[str, ...]] = []

    def read_inventory(self, policy: Policy) -> Inventory:
        return Inventory(tuple(self.vms.values()), HOSTS, self.providers, self.excluded)

    def read_vms(self, vm_ids: Sequence[str]) -> Mapping[str, VMFacts]:
        self.read_vms_calls.append(tuple(vm_ids))
        return {i: self.vms[i] for i in vm_ids if i in self.vms}

    def apply(
        self,
        changes: Sequence[Change],
        restores: Sequence[VMFacts],
        policy: Policy,
        should_continue: Callable[[], bool],
    ) -> Mapping[str, str | None]:
        self.apply_calls.append(tuple(changes))
        self.restore_calls.append(tuple(vm.id for vm in restores))
        for vm in restores:
            self.vms[vm.id] = dataclasses.replace(
                self.vms[vm.id], power_state=PowerState.ON, power_on_owed=False
            )
        started = []
        for change in changes:
            if not should_continue():
                break
            started.append(change)
        changes = started
        for change in changes:
            if self.effective:
                key = 11000 if change.action is Action.ADD else None
                power = PowerState.ON if change.restore_power else self.vms[change.vm.id].power_state
                if change.power_off_first and not change.restore_power:
                    power = PowerState.OFF
                self.vms[change.vm.id] = dataclasses.replace(
                    self.vms[change.vm.id], vtpm_device_key=key, power_state=power
                )
        for vm_id in self.vanish:
            self.vms.pop(vm_id, None)
        results = {vm.id: None for vm in restores}
        results.update({change.vm.id: self.errors.get(change.vm.id) for change in changes})
        return results
