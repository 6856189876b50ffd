"""Bulk reads through the PropertyCollector: a page of objects per round trip, never one per VM."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyVmomi import vim, vmodl

from vtpm_operator.facts import HostFacts, KeyProvider, PowerState, VMFacts
from vtpm_operator.prerequisites import ANY_CHANGE_ON_FOLDER, ANY_CHANGE_ON_VM
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.vsphere import lean
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.session import VCenterSession

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
_GRANTED = b"<isGranted>true</isGranted>"
# What every judgement of a VM reads. The live inventory adds summary.config.tpmPresent (cheap);
# a VM about to change, or just changed, is read with its device list and tasks (the proof).
VM_FACT_PATHS = (
    "name",
    "parent",
    "runtime.powerState",
    "runtime.host",
    "config.firmware",
    "config.version",
    "config.guestId",
    "config.template",
    "snapshot",
    "guest.toolsRunningStatus",
    "customValue",
)
VM_PROPERTIES = [*VM_FACT_PATHS, "config.hardware.device", "recentTask"]
_BUSY_TASK_STATES = {"queued", "running"}

Properties = dict[str, Any]


def retrieve(
    session: VCenterSession, operation: str, obj_type: type, moids: Iterable[str], paths: Sequence[str]
) -> dict[str, Properties]:
    """Properties of objects of one type, keyed by managed object id; objects that are gone are left out."""
    return retrieve_refs(session, operation, ((obj_type, moid) for moid in moids), paths)


def retrieve_refs(
    session: VCenterSession, operation: str, refs: Iterable[tuple[type, str]], paths: Sequence[str]
) -> dict[str, Properties]:
    """Like retrieve, for objects given as (type, id): subtypes such as clusters keep their own type."""
    wanted = sorted(set(refs), key=lambda ref: (ref[0].__name__, ref[1]))
    if not wanted:
        return {}

    def call(content: Any) -> dict[str, Properties]:
        collector = content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(obj=kind(moid, collector._stub))
                for kind, moid in wanted
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))
                for kind in {kind for kind, _ in wanted}
            ],
            reportMissingObjectsInResults=True,
        )
        found: dict[str, Properties] = {}
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE_SIZE)
        result = collector.RetrievePropertiesEx([spec], options)
        while result is not None:
            for obj in result.objects:
                found[obj.obj._moId] = {prop.name: prop.val for prop in obj.propSet or []}
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)
        return found

    return session.soap(operation, call)


def read_vms(session: VCenterSession, moids: Iterable[str]) -> dict[str, Properties]:
    return retrieve(session, "ReadVMs", vim.VirtualMachine, moids, VM_PROPERTIES)


def busy_vms(session: VCenterSession, vms: Mapping[str, Properties]) -> set[str]:
    """VMs with a queued or running task, from one read of all their recent tasks."""
    tasks_of = {moid: [task._moId for task in props.get("recentTask") or []] for moid, props in vms.items()}
    states = retrieve(
        session,
        "ReadTasks",
        vim.Task,
        (task for tasks in tasks_of.values() for task in tasks),
        ["info.state"],
    )
    return {
        moid
        for moid, tasks in tasks_of.items()
        if any(states.get(task, {}).get("info.state") in _BUSY_TASK_STATES for task in tasks)
    }


def read_hosts(session: VCenterSession, moids: Iterable[str]) -> dict[str, HostFacts]:
    hosts = retrieve(session, "ReadHosts", vim.HostSystem, moids, ["name", "config.product.version"])
    return {
        moid: HostFacts(moid, props.get("name", moid), parse_version(props.get("config.product.version", "")))
        for moid, props in hosts.items()
    }


def parse_version(text: str) -> tuple[int, ...]:
    """(major, minor, update) from "7.0.2"; "6.7" reads as (6, 7, 0); () when there is no version."""
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts + [0] * (3 - len(parts))) if parts else ()


def vm_facts(
    moid: str,
    props: Properties,
    *,
    busy: bool = False,
    guest_supports_tpm20: bool | None = None,
    missing_privileges: frozenset[str] = frozenset(),
    power_on_owed: bool = False,
    power_off_asked_at: float | None = None,
) -> VMFacts:
    """Facts from one VM's properties; the keywords are what the other bulk reads found."""
    devices = props.get("config.hardware.device") or []
    vtpm_key = next((device.key for device in devices if isinstance(device, vim.vm.device.VirtualTPM)), None)
    snapshot = props.get("snapshot")
    parent = props.get("parent")
    host = props.get("runtime.host")
    version = str(props.get("config.version") or "vmx-0")
    return VMFacts(
        id=moid,
        name=props.get("name", moid),
        # A VM whose power state vCenter does not report is treated as running: never changed unasked.
        power_state=PowerState(props.get("runtime.powerState", "poweredOn")),
        firmware=props.get("config.firmware") or "bios",
        hardware_version=int(version.removeprefix("vmx-") or 0),
        guest_id=props.get("config.guestId") or "",
        host_id=host._moId if host is not None else None,
        folder_id=parent._moId if isinstance(parent, vim.Folder) else None,
        has_snapshots=bool(snapshot is not None and snapshot.rootSnapshotList),
        vtpm_device_key=vtpm_key,
        task_in_progress=busy,
        tools_running=props.get("guest.toolsRunningStatus") == "guestToolsRunning",
        guest_supports_tpm20=guest_supports_tpm20,
        missing_privileges=missing_privileges,
        is_template=bool(props.get("config.template")),
        power_on_owed=power_on_owed,
        power_off_asked_at=power_off_asked_at,
    )


def marker_value(custom_values: Any, key: int | None) -> str:
    """The value of custom attribute `key` on an entity, "" when unset."""
    if key is None:
        return ""
    return next((str(v.value or "") for v in custom_values or [] if v.key == key), "")


def marker_time(value: str) -> float | None:
    """When a power marker was written: its value is "<policy uid>@<unix time>"."""
    _, _, when = value.rpartition("@")
    return float(when) if when.isdigit() else None


def has_marker(props: Properties, key: int | None) -> bool:
    """Whether the VM carries a non-empty value for the custom attribute `key`."""
    return marker_value(props.get("customValue"), key) != ""


def key_providers(session: VCenterSession) -> tuple[KeyProvider, ...]:
    """vCenter's key providers; none where the crypto manager cannot list them."""

    def call(content: Any) -> tuple[KeyProvider, ...]:
        manager = content.cryptoManager
        if not isinstance(manager, vim.encryption.CryptoManagerKmip):
            return ()
        providers = []
        for info in manager.ListKmipServers(limit=None) or []:
            kind = {"nativeProvider": "native", "trustAuthority": "trustAuthority"}.get(
                info.managementType or "", "kmip"
            )
            active = bool(manager.IsKmsClusterActive(cluster=info.clusterId))
            # A native key provider must be backed up before vCenter lets it encrypt anything.
            usable = active and (kind != "native" or bool(info.hasBackup))
            providers.append(KeyProvider(info.clusterId.id, bool(info.useAsDefault), usable, kind))
        return tuple(providers)

    try:
        return session.soap("ListKeyProviders", call)
    except vmodl.fault.MethodNotFound:
        log.warning("vCenter cannot list key providers; treating it as having none")
        return ()


def missing_privileges(
    session: VCenterSession, required: Mapping[tuple[type, str], frozenset[str]]
) -> dict[str, frozenset[str]]:
    """Per entity (type and id: VMs and folders), which required privileges the operator's session lacks."""
    if not required:
        return {}
    wanted = sorted({priv for privs in required.values() for priv in privs})

    def call(content: Any) -> dict[str, frozenset[str]]:
        manager = content.authorizationManager
        answer = lean.invoke(  # as XML: a fleet's answer is one object per VM and privilege
            manager,
            "HasPrivilegeOnEntities",
            [kind(moid, manager._stub) for kind, moid in required],
            content.sessionManager.currentSession.key,
            wanted,
        )
        if answer.count(_GRANTED) == len(required) * len(wanted):
            # Every privilege asked granted on every entity (one availability each), as in most
            # fleets: reading the answer element by element took 0.4 s at 10k VMs, only to find
            # each granted. Written otherwise, the count falls short and the answer is read.
            return {moid: frozenset() for _, moid in required}
        granted = {
            lean.text(entity, "entity"): {
                lean.text(a, "privId")
                for a in lean.children(entity, "privAvailability")
                if lean.text(a, "isGranted") == "true"
            }
            for entity in lean.returned(answer, "returnval")
        }
        return {moid: frozenset(privs - granted.get(moid, set())) for (_, moid), privs in required.items()}

    return session.soap("HasPrivilegeOnEntities", call)


def guest_tpm_support(
    session: VCenterSession, pairs: Iterable[tuple[str, str]], cache: dict[tuple[str, str], bool | None]
) -> None:
    """Fill cache[(host id, guest id)] with vCenter's supportsTPM20; None where it gives no answer.

    One QueryConfigOptionEx per compute resource for all its guest ids, once per session: the
    answer never changes.
    """
    todo = sorted(set(pairs) - cache.keys())
    if not todo:
        return
    hosts = retrieve(session, "ReadHostParents", vim.HostSystem, {h for h, _ in todo}, ["parent"])
    compute = retrieve_refs(
        session,
        "ReadComputeResources",
        {(type(p["parent"]), p["parent"]._moId) for p in hosts.values() if p.get("parent") is not None},
        ["environmentBrowser"],
    )
    browser_of: dict[str, str] = {}  # host → environment browser of its compute resource
    for host_id, props in hosts.items():
        parent = props.get("parent")
        browser = compute.get(parent._moId, {}).get("environmentBrowser") if parent is not None else None
        if browser is not None:
            browser_of[host_id] = browser._moId
    guests_of: dict[str, set[str]] = {}
    for host_id, guest_id in todo:
        if host_id in browser_of:
            guests_of.setdefault(browser_of[host_id], set()).add(guest_id)
    answers = {
        (browser_id, guest_id): supported
        for browser_id, guest_ids in guests_of.items()
        for guest_id, supported in _query_guests(session, browser_id, sorted(guest_ids)).items()
    }
    for host_id, guest_id in todo:
        cache[(host_id, guest_id)] = answers.get((browser_of.get(host_id, ""), guest_id))


def _query_guests(session: VCenterSession, browser_id: str, guest_ids: list[str]) -> dict[str, bool]:
    """supportsTPM20 per guest id that vCenter describes; empty where it cannot answer."""

    def call(content: Any) -> dict[str, bool]:
        browser = vim.EnvironmentBrowser(browser_id, content.propertyCollector._stub)
        option = browser.QueryConfigOptionEx(
            spec=vim.EnvironmentBrowser.ConfigOptionQuerySpec(guestId=guest_ids)
        )
        return {
            descriptor.id: bool(descriptor.supportsTPM20)
            for descriptor in (option.guestOSDescriptor if option else None) or []
            if descriptor.id in guest_ids
        }

    try:
        return session.soap("QueryConfigOptionEx", call)
    except PolicyProblem:
        raise
    except Exception as error:  # a fault, or a reply this pyVmomi cannot decode: fall back to the table
        log.info("vCenter gave no guest OS descriptors (%s); using the built-in table", describe(error))
        return {}


def read_proof(session: VCenterSession, vm_ids: Sequence[str], marker_key: int | None) -> dict[str, VMFacts]:
    """The full facts of VMs about to change (or just changed): devices, tasks and privileges read
    fresh, in three bulk calls. The fleet view's cheap tpmPresent is never the proof."""
    props = read_vms(session, vm_ids)
    if not props:
        return {}
    busy = busy_vms(session, props)
    missing = fleet_privileges(session, {moid: _folder_id(p.get("parent")) for moid, p in props.items()})
    return {
        moid: vm_facts(
            moid,
            p,
            busy=moid in busy,
            missing_privileges=missing.get(moid, frozenset()),
            power_on_owed=has_marker(p, marker_key),
            power_off_asked_at=marker_time(marker_value(p.get("customValue"), marker_key)),
        )
        for moid, p in props.items()
    }


def fleet_privileges(
    session: VCenterSession, folder_of: Mapping[str, str | None]
) -> dict[str, frozenset[str]]:
    """Per VM, which privileges any policy may need the operator's session lacks on the VM or on
    its folder (one HasPrivilegeOnEntities for every VM and folder)."""
    required: dict[tuple[type, str], frozenset[str]] = {
        (vim.VirtualMachine, vm): ANY_CHANGE_ON_VM for vm in folder_of
    }
    for folder in set(folder_of.values()):
        if folder:
            required[(vim.Folder, folder)] = ANY_CHANGE_ON_FOLDER
    missing = missing_privileges(session, required)
    return {
        vm: missing.get(vm, frozenset()) | (missing.get(folder, frozenset()) if folder else frozenset())
        for vm, folder in folder_of.items()
    }


def _folder_id(parent: Any) -> str | None:
    return parent._moId if isinstance(parent, vim.Folder) else None
