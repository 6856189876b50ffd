"""A live inventory of one vCenter: one PropertyCollector filter over a ContainerView of VMs and hosts.

The filter's first WaitForUpdatesEx is the fill, paged with maxObjectUpdates and `truncated`;
every later call brings only what changed. There is one full read, not a read and then a watch.
The same private collector also watches the tasks of changes in flight, so one WaitForUpdatesEx
serves the inventory and every change. What is kept is compact facts, never pyVmomi objects:
each update is converted as it arrives and the update itself is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pyVmomi import vim, vmodl

from vtpm_operator.facts import KEY_NOT_READ, HostFacts, PowerState, VMFacts
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.inventory import VM_FACT_PATHS, marker_time, marker_value, parse_version
from vtpm_operator.vsphere.session import SessionRenewed, VCenterSession

log = logging.getLogger(__name__)

PAGE_OBJECTS = 1000
VM_PATHS = (*VM_FACT_PATHS, "summary.config.tpmPresent")
HOST_PATHS = ("name", "config.product.version", "parent")


@dataclass(frozen=True)
class TaskResult:
    state: str  # queued | running | success | error
    fault: str = ""  # the fault's type, when it failed
    error: str = ""  # vCenter's words, when it failed

    @property
    def ended(self) -> bool:
        return self.state in ("success", "error")


@dataclass
class Delta:
    """What one poll changed."""

    vms: set[str] = field(default_factory=set)  # entered or modified
    removed: set[str] = field(default_factory=set)
    hosts: bool = False
    tasks: set[str] = field(default_factory=set)
    filled: bool = False  # this poll completed a (re)fill: the inventory is whole


def _blank_vm(moid: str) -> VMFacts:
    return VMFacts(
        id=moid,
        name=moid,
        power_state=PowerState.ON,  # until vCenter says otherwise: never changed unasked
        firmware="bios",
        hardware_version=0,
        guest_id="",
        host_id=None,
        folder_id=None,
        has_snapshots=False,
        vtpm_device_key=None,
        task_in_progress=False,
        tools_running=False,
    )


def _moid(value: Any) -> str | None:
    return value._moId if value is not None else None


def _version(value: Any) -> int:
    text = str(value or "vmx-0").removeprefix("vmx-")
    return int(text) if text.isdigit() else 0


# How each watched VM property lands in the facts; values come already decoded by pyVmomi.
_VM_FIELDS: dict[str, Callable[[VMFacts, Any, int | None], VMFacts]] = {
    "name": lambda f, v, _: replace(f, name=str(v or f.id)),
    "parent": lambda f, v, _: replace(f, folder_id=v._moId if isinstance(v, vim.Folder) else None),
    "runtime.powerState": lambda f, v, _: replace(f, power_state=PowerState(v or "poweredOn")),
    "runtime.host": lambda f, v, _: replace(f, host_id=_moid(v)),
    "config.firmware": lambda f, v, _: replace(f, firmware=str(v or "bios")),
    "config.version": lambda f, v, _: replace(f, hardware_version=_version(v)),
    "config.guestId": lambda f, v, _: replace(f, guest_id=str(v or "")),
    "config.template": lambda f, v, _: replace(f, is_template=bool(v)),
    "summary.config.tpmPresent": lambda f, v, _: replace(f, vtpm_device_key=KEY_NOT_READ if v else None),
    "snapshot": lambda f, v, _: replace(f, has_snapshots=bool(v is not None and v.rootSnapshotList)),
    "guest.toolsRunningStatus": lambda f, v, _: replace(f, tools_running=v == "guestToolsRunning"),
    "customValue": lambda f, v, key: replace(
        f, power_on_owed=marker_value(v, key) != "", power_off_asked_at=marker_time(marker_value(v, key))
    ),
}


class LiveInventory:
    """Facts of every VM and host of one vCenter, kept current by WaitForUpdatesEx."""

    def __init__(
        self, session: VCenterSession, marker_key: Callable[[], int | None], page_objects: int = PAGE_OBJECTS
    ) -> None:
        self.session = session
        self.page_objects = page_objects
        self.marker_key = marker_key
        self.vms: dict[str, VMFacts] = {}
        self.hosts: dict[str, HostFacts] = {}
        self.host_parents: dict[str, str] = {}  # host → its compute resource
        self.tasks: dict[str, TaskResult] = {}
        self._collector: Any = None
        self._version = ""
        self._task_filters: dict[str, Any] = {}
        self._filling = False
        self._seen_in_fill: set[str] = set()
        self._generation = 0
        self._wanted_tasks: set[str] = set()

    @property
    def whole(self) -> bool:
        """The fill has completed: the inventory holds every VM."""
        return self._collector is not None and not self._filling

    def restart(self) -> None:
        """A new collector and filter: the next poll refills everything (a full read)."""
        tasks = self._wanted_tasks
        if self._generation == self.session.generation:
            self.close()
        else:
            self.abandon()  # made in a session that is gone: it went with it
        self._collector = self.session.soap("CreateInventoryFilter", self._create, idempotent=False)
        self._generation = self.session.generation
        self._version = ""
        self._filling = True
        self._seen_in_fill = set()
        self.watch_tasks(tasks)

    def _create(self, content: Any) -> Any:
        collector = content.propertyCollector.CreatePropertyCollector()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine, vim.HostSystem], True
        )
        traverse = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", type=vim.view.ContainerView, path="view", skip=False
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PATHS)),
                vmodl.query.PropertyCollector.PropertySpec(type=vim.HostSystem, pathSet=list(HOST_PATHS)),
            ],
        )
        collector.CreateFilter(spec, partialUpdates=True)
        return collector

    def abandon(self) -> None:
        """Forget the collector without a call: the connection is gone, and so is the collector."""
        self._collector = None
        self._task_filters.clear()

    def close(self) -> None:
        collector, self._collector = self._collector, None
        self._task_filters.clear()
        if collector is None:
            return
        try:
            self.session.soap(
                "DestroyPropertyCollector", lambda content: collector.DestroyPropertyCollector()
            )
        except Exception:  # it dies with the session anyway
            log.debug("could not destroy the inventory collector", exc_info=True)

    def poll(self, max_wait: int) -> Delta:
        """One WaitForUpdatesEx (more while a fill is truncated); what changed."""
        if self._collector is None or self._generation != self.session.generation:
            self.restart()  # a renewed session has none of the old session's collectors
        delta = Delta()
        while True:
            wait = 0 if self._filling else max_wait
            options = vmodl.query.PropertyCollector.WaitOptions(
                maxWaitSeconds=wait, maxObjectUpdates=self.page_objects
            )
            try:
                update = self._wait(options)
            except (SessionRenewed, vmodl.fault.ManagedObjectNotFound):  # the collector died with its session
                self.restart()
                continue
            if update is not None:
                self._version = update.version
                self._apply(update, delta)
            if not (update is not None and update.truncated):
                break
        if self._filling:
            self._finish_fill(delta)
        return delta

    def _wait(self, options: Any) -> Any:
        collector, version = self._collector, self._version
        return self.session.soap(
            "WaitForUpdatesEx",
            lambda content: collector.WaitForUpdatesEx(version, options),
            idempotent=False,
            session_bound=True,
        )

    def _finish_fill(self, delta: Delta) -> None:
        gone = set(self.vms) - self._seen_in_fill
        for moid in gone:
            del self.vms[moid]
        delta.removed |= gone
        self._filling = False
        delta.filled = True

    def _apply(self, update: Any, delta: Delta) -> None:
        key = self.marker_key()
        for filter_update in update.filterSet or []:
            for change in filter_update.objectSet or []:
                obj = change.obj
                if isinstance(obj, vim.Task):
                    self._apply_task(obj._moId, change.changeSet or [], delta)
                elif isinstance(obj, vim.VirtualMachine):
                    self._apply_vm(obj._moId, change, key, delta)
                elif isinstance(obj, vim.HostSystem):
                    self._apply_host(obj._moId, change)
                    delta.hosts = True

    def _apply_vm(self, moid: str, change: Any, key: int | None, delta: Delta) -> None:
        if change.kind == "leave":
            if self.vms.pop(moid, None) is not None:
                delta.removed.add(moid)
            return
        if self._filling:
            self._seen_in_fill.add(moid)
        facts = self.vms.get(moid) or _blank_vm(moid)
        for prop in change.changeSet or []:
            apply = _VM_FIELDS.get(prop.name)
            if apply is not None:
                facts = apply(facts, None if prop.op == "remove" else prop.val, key)
        self.vms[moid] = facts
        delta.vms.add(moid)

    def _apply_host(self, moid: str, change: Any) -> None:
        if change.kind == "leave":
            self.hosts.pop(moid, None)
            return
        host = self.hosts.get(moid) or HostFacts(moid, moid, ())
        for prop in change.changeSet or []:
            if prop.name == "name":
                host = replace(host, name=str(prop.val))
            elif prop.name == "config.product.version":
                host = replace(host, version=parse_version(str(prop.val or "")))
            elif prop.name == "parent" and prop.val is not None:
                self.host_parents[moid] = prop.val._moId
        self.hosts[moid] = host

    # --- tasks of changes in flight ---------------------------------------------------------
    def watch_tasks(self, task_ids: set[str]) -> None:
        """Watch exactly these tasks (again after a restart: filters die with their collector)."""
        self._wanted_tasks = set(task_ids)
        if self._generation != self.session.generation:  # its filters died with the old session: none to
            return self.abandon()  # destroy through the fresh one; the next poll watches anew
        for task_id in set(self._task_filters) - task_ids:
            self.forget_task(task_id)
        try:
            for task_id in task_ids - set(self._task_filters):
                self.watch_task(task_id)
        except SessionRenewed:
            self._collector = None  # the next poll makes everything anew

    def watch_task(self, task_id: str) -> None:
        collector = self._collector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vim.Task(task_id, collector._stub))],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=["info.state", "info.error"]
                )
            ],
        )
        self._task_filters[task_id] = self.session.soap(
            "CreateFilter",
            lambda content: collector.CreateFilter(spec, partialUpdates=False),
            idempotent=False,
        )

    def forget_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        task_filter = self._task_filters.pop(task_id, None)
        if task_filter is None:
            return
        try:
            self.session.soap(
                "DestroyPropertyFilter",
                lambda content: task_filter.DestroyPropertyFilter(),
                session_bound=True,
            )
        except Exception:  # it goes with its collector anyway
            log.debug("could not destroy a task filter", exc_info=True)

    def _apply_task(self, task_id: str, changes: list[Any], delta: Delta) -> None:
        values = {prop.name: prop.val for prop in changes}
        earlier = self.tasks.get(task_id, TaskResult("queued"))
        state = str(values.get("info.state", earlier.state))
        error = values.get("info.error")
        if error is None:
            self.tasks[task_id] = TaskResult(state, earlier.fault, earlier.error)
        else:
            self.tasks[task_id] = TaskResult(state, type(error).__name__.split(".")[-1], describe(error))
        delta.tasks.add(task_id)
