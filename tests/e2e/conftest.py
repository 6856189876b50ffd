"""End-to-end fixtures: the operator as a process, against the real API server and the simulator.

Policies and Secrets go in as YAML through kubectl, as a user would apply them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families
from pyVmomi import vim, vmodl

from testbed.fleet import CATEGORY, EXEMPT_TAG, REQUIRED_TAG, Fleet
from testbed.kube import ControlPlane, free_port
from testbed.vcsim import Simulator, connect, disconnect

OPERATOR = Path(sys.executable).with_name("vtpm-operator")
POWER_MARKER = "vtpm-operator.io/power-on-owed"  # the custom attribute the README documents


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    liveness_port: int

    def metrics(self) -> str:
        return self._get(self.metrics_port, "/metrics")

    def healthz(self) -> str:
        return self._get(self.liveness_port, "/healthz")

    @staticmethod
    def _get(port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup handler runs, as when a node dies."""
        self.process.kill()
        self.process.wait(timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels` (0 when none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    @property
    def identity(self) -> str:
        """The holder identity its leases carry (host name and process id, see kube/leases.py)."""
        return f"{socket.gethostname()}-{self.process.pid}"


# The suite runs the operator as the Deployment ships it: two replicas at once, sharing the work
# through their leases. VTPM_E2E_REPLICAS=1 runs one, to read a single log while debugging.
REPLICAS = int(os.environ.get("VTPM_E2E_REPLICAS", "2"))


@dataclass
class Replicas:
    """The operator as REPLICAS processes at once. Only the holder of a VCenter's lease reads and
    changes it and exports its per-policy series, so a metric summed over the replicas is what a
    Prometheus `sum` over the Deployment's pods shows."""

    members: list[RunningOperator]

    def metric(self, name: str, **labels: str) -> float:
        return sum(member.metric(name, **labels) for member in self.members)

    def metrics(self) -> str:
        return "\n".join(member.metrics() for member in self.members)

    def log_text(self) -> str:
        return "\n".join(member.log_text() for member in self.members)

    def kill(self) -> None:
        """SIGKILL every replica: the whole operator dies at once, as in a cluster-wide outage."""
        for member in self.members:
            member.kill()

    def alive(self) -> bool:
        return all(member.process.poll() is None for member in self.members)

    def healthz(self) -> list[str]:
        return [member.healthz() for member in self.members]

    @property
    def metrics_targets(self) -> list[str]:
        return [f"127.0.0.1:{member.metrics_port}" for member in self.members]


@pytest.fixture
def run_process(
    control_plane: ControlPlane, crd_installed: str, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., RunningOperator]]:
    """Start one `vtpm-operator run` for the test's namespace (its Secrets live there too, as in the
    operator's own namespace); stopped by PID at the end. Drills that place replicas themselves use it."""
    started: list[RunningOperator] = []

    def start(
        *extra: str, env: dict[str, str] | None = None, kubeconfig: Path | None = None
    ) -> RunningOperator:
        """`env` adds to the environment (a crash point); `kubeconfig` replaces the admin's."""
        log = tmp_path / f"operator-{len(started)}.log"
        port, liveness = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or control_plane.kubeconfig), **(env or {})}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(OPERATOR),
                    "run",
                    "--namespace",
                    namespace,
                    "--operator-namespace",
                    namespace,
                    "--tag-refresh",
                    "2s",
                    "--metrics-port",
                    str(port),
                    "--metrics-address",
                    "127.0.0.1",
                    "--liveness",
                    f"http://127.0.0.1:{liveness}/healthz",
                    "--verbose",
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        operator = RunningOperator(process, log, port, liveness)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.process.poll() is None:
            operator.process.send_signal(signal.SIGTERM)
            try:
                operator.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.process.kill()
                operator.process.wait()
        shutil.copy(operator.log, tmp_path / (operator.log.name + ".kept"))


@pytest.fixture
def run_operator(run_process: Callable[..., RunningOperator]) -> Callable[..., Replicas]:
    """Start the operator as REPLICAS processes with the same arguments."""

    def start(*extra: str, **options: Any) -> Replicas:
        return Replicas([run_process(*extra, **options) for _ in range(REPLICAS)])

    return start


@dataclass
class Cluster:
    """The test's view of Kubernetes: apply YAML, read policies, wait for status."""

    kubectl: Callable[..., subprocess.CompletedProcess[str]]
    api: client.ApiClient
    namespace: str
    vcenters: list[str] = field(default_factory=list)  # cluster-scoped: deleted after the test

    def apply(self, manifest: str | dict[str, Any]) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=text)

    def vcenter(self, sim: Simulator, *, name: str | None = None, **spec: Any) -> str:
        """Secrets in the operator's namespace and a cluster-scoped VCenter for the simulator; its name."""
        self.credentials(sim)
        name = name or f"{self.namespace}-vc"
        body: dict[str, Any] = {
            "server": sim.server,
            "credentialsSecretRef": {"name": "vcenter-creds"},
            "caSecretRef": {"name": "vcenter-ca"},
        }
        body.update(spec)
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "vtpm-operator.io/v1alpha1",
                    "kind": "VCenter",
                    "metadata": {"name": name},
                    "spec": body,
                }
            ),
        )
        self.vcenters.append(name)
        return name

    def vcenter_object(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = client.CustomObjectsApi(self.api).get_cluster_custom_object(
            "vtpm-operator.io", "v1alpha1", "vcenters", name
        )
        return result

    def credentials(
        self, sim: Simulator, *, name: str = "vcenter-creds", password: str | None = None
    ) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "stringData": {"username": sim.username, "password": password or sim.password},
            }
        )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "vcenter-ca"},
                "stringData": {"ca.crt": sim.ca_file.read_text()},
            }
        )

    def policy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "vtpm-operator.io", "v1alpha1", self.namespace, "vtpmpolicies", name
        )
        return result

    def policies(self) -> dict[str, dict[str, Any]]:
        """Every policy of the namespace, by name, in one list call."""
        listed: dict[str, Any] = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            "vtpm-operator.io", "v1alpha1", self.namespace, "vtpmpolicies"
        )
        return {item["metadata"]["name"]: item for item in listed["items"]}

    def wait_for(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        policy = self.policy(name)
        while time.monotonic() < deadline:
            policy = self.policy(name)
            if predicate(policy):
                return policy
            time.sleep(0.5)
        raise AssertionError(
            f"timed out waiting for {what or 'the condition'} on {name}; status:\n"
            + json.dumps(policy.get("status"), indent=2)
        )

    def events(self) -> list[client.CoreV1Event]:
        items: list[client.CoreV1Event] = (
            client.CoreV1Api(self.api).list_namespaced_event(self.namespace).items
        )
        return items


@pytest.fixture
def cluster(kubectl: Any, kube_api: client.ApiClient, namespace: str) -> Iterator[Cluster]:
    cluster = Cluster(kubectl, kube_api, namespace)
    yield cluster
    for name in cluster.vcenters:
        kubectl("delete", "vcenter", name, "--ignore-not-found", "--wait=false")


def policy_manifest(name: str, vcenter: str, **spec: Any) -> dict[str, Any]:
    """A VTPMPolicy for the fleet's tags on the named VCenter; keyword arguments override spec fields."""
    body: dict[str, Any] = {
        "vcenterRef": {"name": vcenter},
        "selector": {
            "tags": [{"category": CATEGORY, "name": REQUIRED_TAG}],
            "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
        },
        "resyncPeriod": "10s",
    }
    body.update(spec)
    return {
        "apiVersion": "vtpm-operator.io/v1alpha1",
        "kind": "VTPMPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def condition(policy: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in (policy.get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return dict(entry)
    return {}


def settled(policy: dict[str, Any]) -> bool:
    """The operator finished a sync of the current generation and has nothing in flight."""
    status = policy.get("status") or {}
    return (
        status.get("observedGeneration") == policy["metadata"]["generation"]
        and bool(status.get("lastSyncTime"))
        and condition(policy, "Reconciling").get("status") == "False"
    )


def summary(policy: dict[str, Any]) -> dict[str, Any]:
    return dict((policy.get("status") or {}).get("summary") or {})


def vm_rows(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in (policy.get("status") or {}).get("vms") or []}


_PC: Any = vmodl.query.PropertyCollector
_VM: Any = vim.VirtualMachine


@dataclass(frozen=True)
class SeenVM:
    """One VM as vCenter shows it to the test."""

    power: str  # poweredOn | poweredOff | suspended
    vtpm: bool
    marker: str  # the operator's power-on-owed attribute ("" when unset)


def read_vms(si: Any, ids: list[str]) -> dict[str, SeenVM]:
    """The VMs' power state, vTPM and power marker, in one PropertyCollector call."""
    content = si.RetrieveContent()
    fields = {f.key: f.name for f in content.customFieldsManager.field or []}
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=_VM(i, si._stub)) for i in ids],
        propSet=[
            _PC.PropertySpec(
                type=vim.VirtualMachine,
                pathSet=["runtime.powerState", "config.hardware.device", "customValue"],
            )
        ],
    )
    result = content.propertyCollector.RetrievePropertiesEx([spec], _PC.RetrieveOptions())
    seen: dict[str, SeenVM] = {}
    for found in result.objects if result is not None else []:
        props = {p.name: p.val for p in found.propSet}
        values = {fields.get(v.key): v.value for v in props.get("customValue") or []}
        seen[found.obj._moId] = SeenVM(
            power=str(props["runtime.powerState"]),
            vtpm=any(isinstance(d, vim.vm.device.VirtualTPM) for d in props["config.hardware.device"]),
            marker=str(values.get(POWER_MARKER) or ""),
        )
    return seen


class VMWatch:
    """Polls VMs in the simulator from a thread of its own, so that a state that lasts a moment is seen."""

    def __init__(self, sim: Simulator, ids: list[str], interval: float = 0.2) -> None:
        self.sim, self.ids, self.interval = sim, ids, interval
        self.samples: list[tuple[float, dict[str, SeenVM]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VMWatch:
        self._thread.start()
        while not self.samples and not self.errors and self._thread.is_alive():
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        si = connect(self.sim)
        try:
            while not self._stop.is_set():
                try:
                    self.samples.append((time.monotonic(), read_vms(si, self.ids)))
                except Exception as error:  # the assertion reports it; a poll must not die silently
                    self.errors.append(repr(error))
                self._stop.wait(self.interval)
        finally:
            disconnect(si)

    def ever(self, vm_id: str, predicate: Callable[[SeenVM], bool]) -> bool:
        return any(predicate(seen[vm_id]) for _, seen in self.samples if vm_id in seen)

    def latest(self, vm_id: str) -> SeenVM:
        return self.samples[-1][1][vm_id]


__all__ = [
    "Cluster",
    "Fleet",
    "Replicas",
    "RunningOperator",
    "SeenVM",
    "VMWatch",
    "condition",
    "policy_manifest",
    "read_vms",
    "settled",
    "summary",
    "vm_rows",
]
