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
from vtpm_operator.vsphere import inventory
from vtpm_operator.vsphere.live import PAGE_OBJECTS, LiveInventory
from vtpm_operator.vsphere.session import VCenterSession


def timed(what: str, work: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak MB under tracemalloc) of one run of `work`; printed."""
    tracemalloc.start()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
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
        rows = [
            ("fill", timed("fill, read as XML (the operator)", lambda: lean_fill(session)),
             timed("fill, decoded by pyVmomi", lambda: pyvmomi_fill(session))),
            ("privileges", timed("privileges, read as XML (the operator)",
                                 lambda: inventory.fleet_privileges(session, folder_of)),
             timed("privileges, decoded by pyVmomi", lambda: pyvmomi_privileges(session, live))),
        ]  # fmt: skip
        session.close()
    print(f"\n| {args.vms} VMs | XML s | pyVmomi s | times faster | XML peak MB | pyVmomi peak MB |")
    print("|---|---|---|---|---|---|")
    for what, (lean_s, lean_mb), (pv_s, pv_mb) in rows:
        print(f"| {what} | {lean_s:.2f} | {pv_s:.2f} | {pv_s / lean_s:.1f} | {lean_mb:.0f} | {pv_mb:.0f} |")


if __name__ == "__main__":
    main()
