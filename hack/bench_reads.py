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


def fill_pages(session: VCenterSession, page: Callable[[Any, str, Any], tuple[str, bool]]) -> None:
    """The inventory's filter anew, its pages taken by `page(collector, version, options)` →
    (next version, truncated) until the last; then the filter goes (in `finally`: never leaked)."""
    live = LiveInventory(session, lambda: None)
    collector = session.soap("CreateInventoryFilter", live._create)
    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0, maxObjectUpdates=PAGE_OBJECTS)
    try:
        version, truncated = page(collector, "", options)
        while truncated:
            version, truncated = page(collector, version, options)
    finally:
        collector.DestroyPropertyCollector()


def fetched_page(collector: Any, version: str, options: Any) -> tuple[str, bool]:
    """A page fetched and not read (a regex for its version): the simulator's and the wire's share."""
    page = lean.invoke(collector, "WaitForUpdatesEx", version, options)
    found = re.search(rb"<version>([^<]*)</version>", page)  # UpdateSet.version comes first
    return (found.group(1).decode() if found else ""), b"<truncated>true</truncated>" in page


def pyvmomi_page(collector: Any, version: str, options: Any) -> tuple[str, bool]:
    """A page decoded by pyVmomi into data objects (and then dropped: no facts are built)."""
    update = collector.WaitForUpdatesEx(version, options)
    return update.version, bool(update.truncated)


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
            "fill, fetched only (the simulator and the wire)": lambda: fill_pages(session, fetched_page),
            "fill, read as XML (the operator)": lambda: lean_fill(session),
            "fill, decoded by pyVmomi (no facts built)": lambda: fill_pages(session, pyvmomi_page),
            "privileges, read as XML (the operator)": lambda: inventory.fleet_privileges(session, folder_of),
            "privileges, decoded by pyVmomi": lambda: pyvmomi_privileges(session, live),
        }
        measured = {what: timed(what, read) for what, read in reads.items()}
        session.close()
    print(f"\n| {args.vms} VMs | s | peak MB (tracemalloc) |\n|---|---|---|")
    for what, (seconds, peak) in measured.items():
        print(f"| {what} | {seconds:.2f} | {peak:.0f} |")
    for call, pyvmomi in (("fill", "fill, decoded by pyVmomi (no facts built)"),
                          ("privileges", "privileges, decoded by pyVmomi")):  # fmt: skip
        ratio = measured[pyvmomi][0] / measured[f"{call}, read as XML (the operator)"][0]
        print(f"{call}: XML {ratio:.1f} times faster than pyVmomi")


if __name__ == "__main__":
    main()
