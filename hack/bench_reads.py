# mypy: disallow-untyped-calls=False
# (pyVmomi data-object constructors are untyped, as for testbed in pyproject.toml)
"""Profiling driver: the two bulk reads of a full read, as the operator makes them (answers read
as XML, vsphere/lean.py) and the same calls decoded by pyVmomi, side by side in one run.

    .venv/bin/python hack/bench_reads.py --vms 10000

Not the benchmark (that runs the operator as a process, hack/bench.py): this calls the read
functions directly, to show what the XML reading saves on the fill (WaitForUpdatesEx over the
inventory's filter) and on the fleet's privilege check (HasPrivilegeOnEntities).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from testbed.vcsim import running_simulator
from vtpm_operator.connection import Credentials, Endpoint
from vtpm_operator.prerequisites import ANY_CHANGE_ON_FOLDER, ANY_CHANGE_ON_VM
from vtpm_operator.vsphere import inventory, lean
from vtpm_operator.vsphere.live import PAGE_OBJECTS, LiveInventory
from vtpm_operator.vsphere.session import VCenterSession


def timed(what: str, work: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak MB) of `work`: timed in one run, its memory traced in a second (tracemalloc
    slows Python several times over); printed."""
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    work()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"{what:<52} {seconds:7.2f} s  peak {peak:6.1f} MB (tracemalloc)", flush=True)
    return seconds, peak


def lean_fill(session: VCenterSession) -> LiveInventory:
    live = LiveInventory(session, lambda: None)
    while not live.poll(0).filled:
        pass
    live.close()
    return live


def fetched_fill(session: VCenterSession) -> int:
    """The same filter's pages, fetched and not read: the simulator's and the wire's share; bytes."""
    live = LiveInventory(session, lambda: None)
    collector = session.soap("CreateInventoryFilter", live._create)
    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0, maxObjectUpdates=PAGE_OBJECTS)
    version, size = "", 0
    while True:
        page = lean.invoke(collector, "WaitForUpdatesEx", version, options)
        size += len(page)
        version = re.search(rb"<version>([^<]*)</version>", page).group(1).decode()  # type: ignore[union-attr]
        if b"<truncated>true</truncated>" not in page:
            collector.DestroyPropertyCollector()
            return size


def pyvmomi_fill(session: VCenterSession) -> int:
    """The same filter's pages, decoded by pyVmomi into data objects; objects seen."""
    live = LiveInventory(session, lambda: None)
    collector = session.soap("CreateInventoryFilter", live._create)
    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0, maxObjectUpdates=PAGE_OBJECTS)
    version, seen = "", 0
    while True:
        update = collector.WaitForUpdatesEx(version, options)
        version = update.version
        seen += sum(len(f.objectSet) for f in update.filterSet)
        if not update.truncated:
            collector.DestroyPropertyCollector()
            return seen


def pyvmomi_privileges(session: VCenterSession, live: LiveInventory) -> int:
    """fleet_privileges' one call, decoded by pyVmomi; answers seen."""
    folders = {vm.folder_id for vm in live.vms.values() if vm.folder_id}
    wanted = sorted(ANY_CHANGE_ON_VM | ANY_CHANGE_ON_FOLDER)

    def call(content: Any) -> int:
        manager = content.authorizationManager
        entities = [vim.VirtualMachine(m, manager._stub) for m in live.vms] + [
            vim.Folder(f, manager._stub) for f in folders
        ]
        return len(
            manager.HasPrivilegeOnEntities(entities, content.sessionManager.currentSession.key, wanted)
        )

    return session.soap("HasPrivilegeOnEntities", call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=10000)
    args = parser.parse_args()
    with running_simulator(Path(tempfile.mkdtemp()), vms=args.vms, start_timeout=180) as sim:
        session = VCenterSession(
            Endpoint(sim.server, ca_pem=sim.ca_file.read_text()), Credentials(sim.username, sim.password)
        )
        session.soap("Login", lambda content: content)
        live = lean_fill(session)
        folder_of = {vm.id: vm.folder_id for vm in live.vms.values()}
        print(f"{len(live.vms)} VMs, {len(live.hosts)} hosts")
        reads: dict[str, Callable[[], Any]] = {
            "fill, fetched only (the simulator and the wire)": lambda: fetched_fill(session),
            "fill, read as XML (the operator)": lambda: lean_fill(session),
            "fill, decoded by pyVmomi": lambda: pyvmomi_fill(session),
            "privileges, read as XML (the operator)": lambda: inventory.fleet_privileges(session, folder_of),
            "privileges, decoded by pyVmomi": lambda: pyvmomi_privileges(session, live),
        }
        measured = {what: timed(what, read) for what, read in reads.items()}
        session.close()
    print(f"\n| {args.vms} VMs | s | peak MB (tracemalloc) |\n|---|---|---|")
    for what, (seconds, peak) in measured.items():
        print(f"| {what} | {seconds:.2f} | {peak:.0f} |")
    for call in ("fill", "privileges"):
        xml, pyvmomi = (
            measured[f"{call}, read as XML (the operator)"],
            measured[f"{call}, decoded by pyVmomi"],
        )
        print(f"{call}: XML {pyvmomi[0] / xml[0]:.1f} times faster than pyVmomi")


if __name__ == "__main__":
    main()
