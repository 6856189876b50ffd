# mypy: disallow-untyped-calls=False
# (pyVmomi data-object constructors are untyped, as for testbed in pyproject.toml)
"""Measure the simulator at fleet size: start time, memory, a paged read and the watch.

    .venv/bin/python hack/vcsim/bench_watch.py --vms 10000 [--binary PATH]

One run prints: start seconds, RSS after start, a ContainerView RetrievePropertiesEx of every
VM in pages of 1000 (seconds, pages), the watch's first fill (seconds, answers), and how long
49 power-offs take to arrive through WaitForUpdatesEx, with the peak RSS. `--binary` runs an
older build (only the flags every build knows are passed), for before/after figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyVmomi import vim, vmodl

from testbed.vcsim import connect, disconnect, running_simulator

PC = vmodl.query.PropertyCollector
CHANGES = 49


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _view_spec(si: Any, paths: list[str]) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    traverse = PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
    )


def paged_read(si: Any) -> tuple[float, int, list[str]]:
    collector = si.RetrieveContent().propertyCollector
    spec = _view_spec(si, ["name", "runtime.powerState", "summary.config.tpmPresent"])
    started = time.monotonic()
    result = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=1000))
    pages, moids = 1, [o.obj._moId for o in result.objects]
    while result.token:
        result = collector.ContinueRetrievePropertiesEx(result.token)
        pages += 1
        moids += [o.obj._moId for o in result.objects]
    return time.monotonic() - started, pages, moids


class Watch:
    """WaitForUpdatesEx in a loop on its own session; records when each VM's change arrives."""

    def __init__(self, si: Any) -> None:
        self.collector = si.RetrieveContent().propertyCollector.CreatePropertyCollector()
        self.collector.CreateFilter(_view_spec(si, ["runtime.powerState"]), partialUpdates=False)
        self.version = ""
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()

    def fill(self) -> tuple[float, int]:
        started, answers = time.monotonic(), 0
        while True:
            update = self.collector.WaitForUpdatesEx(self.version, PC.WaitOptions(maxWaitSeconds=60))
            answers += 1
            self.version = update.version
            if not update.truncated:
                return time.monotonic() - started, answers

    def run(self) -> None:
        while not self.stop.is_set():
            update = self.collector.WaitForUpdatesEx(self.version, PC.WaitOptions(maxWaitSeconds=1))
            if update is None:
                continue
            self.version = update.version
            for fu in update.filterSet or []:
                for ou in fu.objectSet or []:
                    if ou.kind == "modify":
                        self.arrived.setdefault(ou.obj._moId, time.monotonic())


def power_offs(si: Any, watch: Watch, moids: list[str]) -> None:
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    submitted = time.monotonic()
    for moid in moids[:CHANGES]:
        vim.VirtualMachine(moid, si._stub).PowerOffVM_Task()
    sent = time.monotonic() - submitted
    deadline = time.monotonic() + 300
    while len(watch.arrived) < CHANGES and time.monotonic() < deadline:
        time.sleep(0.05)
    last = max(watch.arrived.values(), default=submitted) - submitted
    print(f"{CHANGES} power-offs: submitted in {sent:.2f} s,", end=" ")
    print(f"{len(watch.arrived)} arrived through the watch, the last {last:.2f} s after the first was sent")
    watch.stop.set()
    thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--binary", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        with running_simulator(Path(tmp), vms=args.vms, binary=args.binary, start_timeout=600) as sim:
            print(f"start: {time.monotonic() - started:.1f} s, RSS {_rss_mb(sim.pid, 'VmRSS'):.0f} MB")
            si, watcher_si = connect(sim), connect(sim)
            seconds, pages, moids = paged_read(si)
            print(f"paged read of {len(moids)} VMs: {seconds:.2f} s in {pages} pages")
            watch = Watch(watcher_si)
            seconds, answers = watch.fill()
            print(f"watch fill: {seconds:.2f} s in {answers} answers")
            power_offs(si, watch, moids)
            print(f"peak RSS {_rss_mb(sim.pid, 'VmHWM'):.0f} MB")
            disconnect(si)
            disconnect(watcher_si)


if __name__ == "__main__":
    main()
