"""Benchmark: the operator as a process, at fleet size, against the per-VM loop other tools run.

One run, one simulator per fleet size, one table. For each size and policy count it starts
`vtpm-operator run` against a local control plane (hack/testbed/kube.py) where a VCenter and
the policies were created through the API, and measures from the outside:
- seconds from the operator's start to the first complete status of every policy
  (observedGeneration == generation and summary.matched == the VMs its tags select), and the
  SOAP and REST round trips the simulator counted until then;
- round trips per minute over a quiet window (nothing changes);
- drift latency: a vTPM removed out of band (ReconfigVM through pyVmomi) until every policy that
  selects the VM shows driftedTotal incremented, idle (median and worst of --drift-repeats) and
  under a burst of --burst removals started back to back (until all are counted);
- the operator's CPU seconds (every thread) at that first complete status: close to the seconds
  beside it, the start is bound by the operator's own CPU, not by waiting;
- the operator's peak RSS (VmHWM at the end).
Then the per-VM loop on the same simulator: per VM one RetrievePropertiesEx of the operator's
properties, one HasPrivilegeOnEntity, one read of its recent tasks; with the ratios.

Policies: policy 0 selects every VM (tag bench/all); policies 1..19 select 5 of 20 slices each,
overlapping (each VM sits in 5 of them). Mode Audit: nothing is changed by the operator.

    .venv/bin/python hack/bench.py                      # 1k and 10k VMs, 1 and 20 policies
    .venv/bin/python hack/bench.py --sizes 1000 --quiet 20   # quick iteration

Not part of CI. Loopback and a shared 2-core machine: absolute times are noisy, read ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_kube as kube
import bench_vsphere as vs
from testbed.kube import ControlPlane, running_control_plane
from testbed.vcsim import Simulator, make_tls, running_simulator


@dataclass
class Row:
    vms: int
    policies: int
    seconds: float = 0.0  # operator start → every policy complete
    soap: int = 0
    rest: int = 0
    rss_complete: float = 0.0
    cpu_complete: float = 0.0  # the operator's CPU seconds until then: near `seconds`, it is CPU-bound
    idle_per_min: float = 0.0
    idle_detail: str = ""
    drift_idle: list[float] = field(default_factory=list)
    drift_burst: float = 0.0
    drift_burst_first: float = 0.0
    rss_peak: float = 0.0
    loop_seconds: float = 0.0
    loop_calls: int = 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--policies", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--quiet", type=float, default=60.0, help="seconds of the idle window")
    parser.add_argument("--drift-repeats", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--no-loop", action="store_true", help="skip the per-VM loop")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--operator-src",
        type=Path,
        default=None,
        help="run the vtpm_operator package in this directory (e.g. `git archive REV operator | tar -x`)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy records each operator: to its first complete status, then the rest",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vtpm-bench-"))
    print(f"workdir {workdir}", flush=True)
    rows: list[Row] = []
    with running_control_plane(workdir / "control-plane") as plane:
        api = kube.api_client(plane)
        kube.install_crds(api)
        tls = make_tls(workdir / "tls")
        for size in args.sizes:
            rows += bench_size(plane, api, size, args, workdir, tls)
    print_table(rows, args)


def bench_size(
    plane: ControlPlane, api: Any, size: int, args: argparse.Namespace, workdir: Path, tls: Any
) -> list[Row]:
    started = time.monotonic()
    with running_simulator(workdir / f"sim-{size}", vms=size, tls=tls, start_timeout=120) as sim:
        note(f"{size} VMs: simulator up in {time.monotonic() - started:.1f} s")
        fleet = vs.build(sim, len(args.policies) * (args.drift_repeats + args.burst))
        note(f"{size} VMs: fleet tagged and shaped at {time.monotonic() - started:.1f} s")
        rows = [bench_operator(plane, api, sim, fleet, count, args, workdir) for count in args.policies]
        if not args.no_loop:
            sim.admin.reset_call_counts()
            seconds = vs.per_vm_loop(sim)
            calls = sum(sim.admin.call_counts().values())
            note(f"{size} VMs: per-VM loop {calls} calls in {seconds:.1f} s")
            for row in rows:
                row.loop_seconds, row.loop_calls = seconds, calls
    return rows


def bench_operator(
    plane: ControlPlane,
    api: Any,
    sim: Simulator,
    fleet: vs.BenchFleet,
    count: int,
    args: argparse.Namespace,
    workdir: Path,
) -> Row:
    size = len(fleet.vm_ids)
    name = f"bench-{size}-{count}"
    k8s = kube.Kube(api, name)
    k8s.create_namespace()
    k8s.vcenter(sim, name)
    expected = {f"p{k:02d}": fleet.expected_matched(k) for k in range(count)}
    for k in range(count):
        k8s.policy(f"p{k:02d}", name, vs.CATEGORY, vs.policy_tags(k))
    row = Row(size, count)
    sim.admin.reset_call_counts()
    profile = workdir / f"profile-{name}.txt" if args.profile else None
    operator = kube.start_operator(plane, name, workdir / f"operator-{name}.log", profile, args.operator_src)
    try:
        measure_first_status(k8s, sim, operator, expected, row)
        operator.profile_phase("steady")
        measure_idle(sim, args.quiet, row)
        measure_drift(k8s, sim, fleet, count, args, row)
        row.rss_peak = operator.peak_rss_mb()
    finally:
        operator.profile_phase("")
        operator.stop()
        k8s.custom.delete_cluster_custom_object(kube.GROUP, kube.VERSION, "vcenters", name)
    return row


def measure_first_status(
    k8s: kube.Kube, sim: Simulator, operator: kube.Operator, expected: Mapping[str, int], row: Row
) -> None:
    def done(policies: Mapping[str, dict[str, Any]]) -> bool:
        if operator.process.poll() is not None:
            raise RuntimeError(f"the operator exited {operator.process.returncode}; see {operator.log}")
        return all(kube.complete(policies[p], matched) for p, matched in expected.items())

    finished = k8s.wait(done, timeout=600, what="the first complete status of every policy")
    row.seconds = finished - operator.started
    row.soap, row.rest = split_calls(sim.admin.call_counts())
    row.rss_complete = operator.peak_rss_mb()
    row.cpu_complete = operator.cpu_seconds()
    note(f"{row.vms} VMs, {row.policies} policies: complete in {row.seconds:.2f} s "
         f"({row.cpu_complete:.2f} s CPU), {row.soap} SOAP + {row.rest} REST, "
         f"{row.rss_complete:.0f} MB")  # fmt: skip


def split_calls(counts: Mapping[str, int]) -> tuple[int, int]:
    """(SOAP, REST) round trips: the simulator names REST calls "METHOD path", SOAP calls by method."""
    rest = sum(n for name, n in counts.items() if " " in name)
    return sum(counts.values()) - rest, rest


def measure_idle(sim: Simulator, quiet: float, row: Row) -> None:
    time.sleep(1.0)  # the status writes of the first judgement are Kubernetes calls, not vCenter's
    sim.admin.reset_call_counts()
    time.sleep(quiet)
    counts = sim.admin.call_counts()
    row.idle_per_min = sum(counts.values()) * 60.0 / quiet
    row.idle_detail = ", ".join(f"{name} {n * 60.0 / quiet:.0f}" for name, n in sorted(counts.items()))
    note(f"{row.vms} VMs, {row.policies} policies: idle per minute: {row.idle_detail}")


def measure_drift(
    k8s: kube.Kube, sim: Simulator, fleet: vs.BenchFleet, count: int, args: argparse.Namespace, row: Row
) -> None:
    oob = vs.OutOfBand(sim)
    try:
        for _ in range(args.drift_repeats):
            _, last = drift(k8s, oob, fleet, [fleet.with_vtpm.pop()], count)
            row.drift_idle.append(last)
            time.sleep(1.0)
        burst = [fleet.with_vtpm.pop() for _ in range(args.burst)]
        row.drift_burst_first, row.drift_burst = drift(k8s, oob, fleet, burst, count)
    finally:
        oob.close()
    burst_text = f"first {row.drift_burst_first:.2f} s, all {row.drift_burst:.2f} s"
    note(
        f"{row.vms} VMs, {row.policies} policies: drift idle {fmt_list(row.drift_idle)} s, burst {burst_text}"
    )


def drift(
    k8s: kube.Kube, oob: vs.OutOfBand, fleet: vs.BenchFleet, vm_ids: Sequence[str], count: int
) -> tuple[float, float]:
    """Remove the vTPMs of vm_ids out of band; seconds until the first, and until every, drift
    shows in driftedTotal of every policy that selects them (from the first ReconfigVM call)."""
    before = {name: kube.drifted_total(p) for name, p in k8s.policies().items()}
    owed = {name: 0 for name in before}
    for vm_id in vm_ids:
        for k in fleet.policies_selecting(vm_id, count):
            owed[f"p{k:02d}"] += 1
    seen_first: list[float] = []

    def done(policies: Mapping[str, dict[str, Any]]) -> bool:
        grown = {name: kube.drifted_total(p) - before[name] for name, p in policies.items()}
        if not seen_first and any(n > 0 for n in grown.values()):
            seen_first.append(time.monotonic())
        return all(grown[name] >= n for name, n in owed.items())

    removals = oob.removals(vm_ids)
    started = time.monotonic()
    tasks = oob.start(removals)
    finished = k8s.wait(done, timeout=120, what=f"driftedTotal to count {len(vm_ids)} removals")
    oob.wait(tasks)
    return (seen_first[0] if seen_first else finished) - started, finished - started


def note(text: str) -> None:
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    print(f"  [{time.strftime('%H:%M:%S')} load {load:.1f}] {text}", flush=True)


def fmt_list(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def print_table(rows: Sequence[Row], args: argparse.Namespace) -> None:
    header = (
        "VMs", "pol", "first status s", "CPU s", "SOAP", "REST", "RSS@status MB", "idle rt/min",
        "drift idle s (med/max)", f"drift burst {args.burst} s (first/all)", "peak RSS MB",
        "per-VM loop s", "per-VM loop rt", "x faster", "x fewer rt",
    )  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        idle = statistics.median(r.drift_idle) if r.drift_idle else 0.0
        worst = max(r.drift_idle) if r.drift_idle else 0.0
        loop = r.loop_seconds > 0
        cells = (
            f"{r.vms:,}", str(r.policies), f"{r.seconds:.2f}", f"{r.cpu_complete:.2f}", str(r.soap),
            str(r.rest), f"{r.rss_complete:.0f}", f"{r.idle_per_min:.0f}", f"{idle:.2f} / {worst:.2f}",
            f"{r.drift_burst_first:.2f} / {r.drift_burst:.2f}", f"{r.rss_peak:.0f}",
            f"{r.loop_seconds:.1f}" if loop else "-", f"{r.loop_calls:,}" if loop else "-",
            f"{r.loop_seconds / r.seconds:.1f}" if loop else "-",
            f"{r.loop_calls / max(1, r.soap + r.rest):.0f}" if loop else "-",
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print("\nidle round trips per minute, by call:")
    for r in rows:
        print(f"  {r.vms:,} VMs, {r.policies} policies: {r.idle_detail}")


if __name__ == "__main__":
    main()
