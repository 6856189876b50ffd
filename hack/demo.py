"""The embedded default: a local control plane, a vCenter simulator with a mixed fleet, the operator.

Run through hack/demo.sh. Shows the policy's status and per-VM table as they change, then the
fleet as vCenter sees it; exits 0 once the policy has settled (or keeps going with --keep-running).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pyVmomi import vim

from testbed.fleet import CATEGORY, EXEMPT_TAG, MIXED_FLEET, REQUIRED_TAG, build_fleet, specs_of
from testbed.kube import free_port, running_control_plane
from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, running_simulator

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "vtpm-demo"  # the team's
OPERATOR_NAMESPACE = "vtpm-operator"  # where the VCenter's Secrets live
KUBECTL = "/usr/bin/kubectl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything up after the policy settles"
    )
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the policy to settle")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vtpm-demo-"))
    say(f"working directory {workdir}")
    with (
        running_control_plane(workdir / "kube") as plane,
        running_simulator(workdir / "vcsim", vms=14, standalone_hosts=1) as sim,
    ):
        say(f"Kubernetes API server {plane.server} ready; vCenter simulator {sim.url} ready")
        fleet = build_fleet(sim, specs_of(MIXED_FLEET))
        say(f"fleet of {len(fleet.ids)} VMs built; tag {CATEGORY}/{REQUIRED_TAG} on those the policy selects")
        show_fleet(sim, fleet.ids, "before")

        def kubectl(*argv: str, stdin: str | None = None) -> str:
            result = subprocess.run(
                [KUBECTL, f"--kubeconfig={plane.kubeconfig}", *argv],
                input=stdin, capture_output=True, text=True, check=True,
            )  # fmt: skip
            return result.stdout

        # --validate=false: this 1.20 server drops the CRDs' CEL rules, which newer servers enforce.
        kubectl("apply", "--validate=false", "-f", str(REPO / "crds"))
        for crd in ("vtpmpolicies", "vcenters"):
            kubectl("wait", "--for=condition=Established", f"crd/{crd}.vtpm-operator.io", "--timeout=60s")
        kubectl("create", "namespace", OPERATOR_NAMESPACE)
        kubectl("create", "namespace", NAMESPACE)
        kubectl("apply", "-f", "-", stdin=manifests(sim))
        say(
            f"applied VCenter 'demo-vc' (its Secrets in {OPERATOR_NAMESPACE}) and VTPMPolicy 'windows-fleet' "
            f"in namespace {NAMESPACE}"
        )

        log_path = workdir / "operator.log"
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [str(Path(sys.executable).with_name("vtpm-operator")), "run", "--all-namespaces",
                 "--operator-namespace", OPERATOR_NAMESPACE,
                 "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
            )  # fmt: skip
        say(f"operator started (pid {operator.pid}, log {log_path})")
        try:
            settled = watch(kubectl, args.timeout)
            show_fleet(sim, fleet.ids, "after")
            print(
                kubectl(
                    "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=VTPMPolicy"
                )
            )
            if args.keep_running:
                say(f"still running; export KUBECONFIG={plane.kubeconfig} to look around; Ctrl-C stops")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            operator.terminate()
            operator.wait(30)
    return 0 if settled else 1


def manifests(sim: Simulator) -> str:
    """What an admin and a team apply: the VCenter with its Secrets, and the team's policy."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": OPERATOR_NAMESPACE}}
    docs: list[dict[str, Any]] = [
        {**secret, "metadata": {**secret["metadata"], "name": "demo-vc-creds"},
         "stringData": {"username": sim.username, "password": sim.password}},
        {**secret, "metadata": {**secret["metadata"], "name": "demo-vc-ca"},
         "stringData": {"ca.crt": sim.ca_file.read_text()}},
        {
            "apiVersion": "vtpm-operator.io/v1alpha1",
            "kind": "VCenter",
            "metadata": {"name": "demo-vc"},
            "spec": {
                "server": sim.server,
                "credentialsSecretRef": {"name": "demo-vc-creds"},
                "caSecretRef": {"name": "demo-vc-ca"},
                "allowedNamespaces": {"names": [NAMESPACE]},
            },
        },
        {
            "apiVersion": "vtpm-operator.io/v1alpha1",
            "kind": "VTPMPolicy",
            "metadata": {"name": "windows-fleet", "namespace": NAMESPACE},
            "spec": {
                "vcenterRef": {"name": "demo-vc"},
                "selector": {
                    "tags": [{"category": CATEGORY, "name": REQUIRED_TAG}],
                    "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
                },
                "mode": "Enforce",
                "resyncPeriod": "1m",
            },
        },
    ]  # fmt: skip
    return yaml.safe_dump_all(docs)


def watch(kubectl: Any, timeout: float) -> bool:
    """Print the policy whenever its status changes; True once it has settled."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        policy = json.loads(kubectl("get", "vtpm", "windows-fleet", "-n", NAMESPACE, "-o", "json"))
        status = policy.get("status") or {}
        view = kubectl("get", "vtpm", "-n", NAMESPACE, "-o", "wide") + vm_table(status)
        if view != shown:
            shown = view
            say("policy status")
            print(view)
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        # Settled: nothing in flight but VMs that wait for someone else's task to end.
        waiting = [vm for vm in status.get("vms") or [] if vm["state"] == "Pending"]
        if (
            status.get("observedGeneration") == policy["metadata"]["generation"]
            and status.get("lastSyncTime")
            and all("waiting for a task" in vm["message"] for vm in waiting)
        ):
            for kind in ("Ready", "Compliant", "Stalled"):
                c = conditions[kind]
                print(f"  {kind:<10} {c['status']:<6} {c['reason']}: {c.get('message', '')}")
            say("settled")
            return True
        time.sleep(1)
    say("the policy did not settle in time")
    return False


def vm_table(status: dict[str, Any]) -> str:
    rows = [(vm["name"], vm["state"], ",".join(vm.get("reasons") or []) or "-", vm.get("message") or "")
            for vm in status.get("vms") or []]  # fmt: skip
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in [*rows, ("VM", "STATE", "REASONS", "")]) for i in range(3)]
    lines = [f"{'VM':<{widths[0]}}  {'STATE':<{widths[1]}}  {'REASONS':<{widths[2]}}  MESSAGE"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    return "\n" + "\n".join(lines) + "\n"


def show_fleet(sim: Simulator, ids: dict[str, str], when: str) -> None:
    si = connect(sim)
    try:
        found = retrieve_all(si, vim.VirtualMachine, ["runtime.powerState", "config.hardware.device"])
    finally:
        disconnect(si)
    say(f"the fleet in vCenter, {when}")
    for name, moid in ids.items():
        props = found[moid]
        vtpm = any(isinstance(d, vim.vm.device.VirtualTPM) for d in props["config.hardware.device"])
        print(f"  {name:<20} {moid:<8} {props['runtime.powerState']:<11} vTPM: {'yes' if vtpm else 'no'}")


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
