"""Benchmark: one sync's reads in bulk (as the operator does) against one round trip per VM.

Runs both against the same simulator in one process, alternating, and prints round trips and
wall time side by side with their ratio. These machines are noisy: read the ratios, not the
absolute times. Usage: .venv/bin/python hack/bench.py [--sizes 100 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pyVmomi import vim

from testbed.fleet import VMSpec, build_fleet
from testbed.vcsim import Simulator, running_simulator
from vtpm_operator.api import parse_policy
from vtpm_operator.vsphere import inventory
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.session import Credentials, Endpoint, VCenterSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    header = ("VMs", "bulk calls", "per-VM calls", "bulk s", "per-VM s", "time ratio")
    print("{:>6} {:>10} {:>12} {:>8} {:>9} {:>10}".format(*header))
    for size in args.sizes:
        with running_simulator(Path(tempfile.mkdtemp()), vms=size) as sim:
            bench(sim, size, args.repeat)


def bench(sim: Simulator, size: int, repeat: int) -> None:
    build_fleet(sim, [VMSpec(f"vm-{i:05d}") for i in range(size)])
    endpoint = Endpoint(sim.server, ca_pem=sim.ca_file.read_text())
    client = VSphereClient(VCenterSession(endpoint, Credentials(sim.username, sim.password)))
    policy = parse_policy(
        {
            "vcenterRef": {"name": "sim"},
            "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
        }
    )
    ids = [vm.id for vm in client.read_inventory(policy).vms]  # logs in, learns guest OS support once
    bulk_times, naive_times = [], []
    bulk_calls = naive_calls = 0
    for _ in range(repeat):  # alternate, so that drift in the machine's speed hits both alike
        bulk_calls, seconds = measure(sim, lambda: client.read_inventory(policy))
        bulk_times.append(seconds)
        naive_calls, seconds = measure(sim, lambda: per_vm_reads(client.session, ids))
        naive_times.append(seconds)
    client.close()
    bulk, naive = statistics.median(bulk_times), statistics.median(naive_times)
    print(f"{size:>6} {bulk_calls:>10} {naive_calls:>12} {bulk:>8.3f} {naive:>9.3f} {naive / bulk:>9.1f}x")


def measure(sim: Simulator, work: Any) -> tuple[int, float]:
    sim.admin.reset_call_counts()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return sum(sim.admin.call_counts().values()), seconds


def per_vm_reads(session: VCenterSession, ids: list[str]) -> None:
    """The anti-pattern: the same properties, one RetrievePropertiesEx per VM."""
    for moid in ids:
        inventory.retrieve(session, "ReadVM", vim.VirtualMachine, [moid], inventory.VM_PROPERTIES)


if __name__ == "__main__":
    main()
