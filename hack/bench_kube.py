# mypy: disallow-untyped-calls=False
# (the kubernetes client is untyped, as for testbed in pyproject.toml)
"""The Kubernetes side of hack/bench.py: objects applied through the API, the operator as a process.

The operator runs as users run it (`vtpm-operator run`), with its defaults (tag refresh 10 s,
the policy's resyncPeriod 5 m), against the local control plane of hack/testbed/kube.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from testbed.kube import ControlPlane, free_port
from testbed.vcsim import Simulator

REPO = Path(__file__).resolve().parents[1]
CRD_FILES = (REPO / "crds" / "vcenters.yaml", REPO / "crds" / "vtpmpolicies.yaml")
OPERATOR = Path(sys.executable).with_name("vtpm-operator")
GROUP, VERSION = "vtpm-operator.io", "v1alpha1"

Status = dict[str, Any]


def api_client(plane: ControlPlane) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=str(plane.kubeconfig))
    return api


def install_crds(api: client.ApiClient) -> None:
    """Create both CRDs through the API (a 1.20 server drops the CEL rules it does not know)."""
    ext = client.ApiextensionsV1Api(api)
    for path in CRD_FILES:
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as error:
            if error.status != 409:
                raise
        deadline = time.monotonic() + 60
        while not _established(ext.read_custom_resource_definition(body["metadata"]["name"])):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {body['metadata']['name']} not Established")
            time.sleep(0.2)


def _established(crd: Any) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


@dataclass
class Kube:
    api: client.ApiClient
    namespace: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_namespace(self) -> None:
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace))
        )

    def vcenter(self, sim: Simulator, name: str) -> None:
        """The Secrets in the operator's namespace and a cluster-scoped VCenter for the simulator."""
        core = client.CoreV1Api(self.api)
        for secret, data in (
            ("vcenter-creds", {"username": sim.username, "password": sim.password}),
            ("vcenter-ca", {"ca.crt": sim.ca_file.read_text()}),
        ):
            core.create_namespaced_secret(
                self.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data=data)
            )
        spec = {
            "server": sim.server,
            "credentialsSecretRef": {"name": "vcenter-creds"},
            "caSecretRef": {"name": "vcenter-ca"},
        }
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VCenter", "metadata": {"name": name}}
        self.custom.create_cluster_custom_object(GROUP, VERSION, "vcenters", {**body, "spec": spec})

    def policy(self, name: str, vcenter: str, category: str, tags: list[str]) -> None:
        spec: dict[str, Any] = {
            "vcenterRef": {"name": vcenter},
            "selector": {"tags": [{"category": category, "name": tag} for tag in tags]},
            "mode": "Audit",  # the benchmark measures reading and judging, not changing VMs
        }
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VTPMPolicy", "metadata": {"name": name}}
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "vtpmpolicies", {**body, "spec": spec}
        )

    def policies(self) -> dict[str, dict[str, Any]]:
        listed: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "vtpmpolicies"
        )
        return {item["metadata"]["name"]: item for item in listed["items"]}

    def delete_policies(self) -> None:
        self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, self.namespace, "vtpmpolicies")
        while self.policies():
            time.sleep(0.2)

    def wait(self, done: Callable[[Mapping[str, dict[str, Any]]], bool], timeout: float, what: str) -> float:
        """Follow the policies through a watch until done(policies); time.monotonic() at the event
        that made it so. A watch, not a list every few ms: listing 20 statuses of 100 VM rows each
        20 times a second kept the API server busy on the cores the operator was measured on."""
        deadline = time.monotonic() + timeout
        while True:
            listed: Any = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "vtpmpolicies"
            )
            policies = {item["metadata"]["name"]: item for item in listed["items"]}
            if done(policies):
                return time.monotonic()
            if self._follow(policies, listed["metadata"]["resourceVersion"], done, deadline):
                return time.monotonic()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def _follow(
        self,
        policies: dict[str, dict[str, Any]],
        version: str,
        done: Callable[[Mapping[str, dict[str, Any]]], bool],
        deadline: float,
    ) -> bool:
        """Apply the watch's events to `policies` until done (True), the deadline, or an expired
        version (False: list again)."""
        while time.monotonic() < deadline:
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, "vtpmpolicies",
                resource_version=version, timeout_seconds=max(1, int(deadline - time.monotonic())),
            )  # fmt: skip
            for event in stream:
                if event["type"] == "ERROR":  # 410 Gone: the version is too old to watch from
                    return False
                body = event["object"]
                version = body["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    policies.pop(body["metadata"]["name"], None)
                else:
                    policies[body["metadata"]["name"]] = body
                if done(policies):
                    return True
        return False


def summary(policy: Mapping[str, Any]) -> dict[str, Any]:
    return dict((policy.get("status") or {}).get("summary") or {})


def complete(policy: Mapping[str, Any], matched: int) -> bool:
    """The first complete status: the current generation judged, and every VM it selects counted."""
    status = policy.get("status") or {}
    return status.get("observedGeneration") == policy["metadata"]["generation"] and (
        summary(policy).get("matched") == matched
    )


def drifted_total(policy: Mapping[str, Any]) -> int:
    return int(summary(policy).get("driftedTotal") or 0)


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic() right before the process was started
    log: Path
    profile: Path | None = None  # where py-spy writes, when profiled
    profiler: subprocess.Popen[bytes] | None = None

    def profile_phase(self, phase: str) -> None:
        """End py-spy's recording of the phase before (SIGINT makes it write its output) and,
        unless `phase` is empty, start recording the next into PROFILE-phase.txt."""
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(timeout=60)
        self.profiler = None
        if self.profile is None or not phase:
            return
        out = self.profile.with_name(f"{self.profile.stem}-{phase}.txt")
        spy = [str(OPERATOR.with_name("py-spy")), "record", "--pid", str(self.process.pid), "--rate", "100",
               "--nonblocking", "--format", "raw", "--threads", "--idle", "-o", str(out)]  # fmt: skip
        self.profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def peak_rss_mb(self) -> float:
        """VmHWM of the operator process (its peak resident set since start), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def cpu_seconds(self) -> float:
        """User and system CPU time of the operator process so far (every thread), in seconds."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _compile(source: Path) -> None:
    """Compile the operator's modules before it starts, as the image has them (the Dockerfile's
    compileall): an editable install under PYTHONDONTWRITEBYTECODE (this machine sets it) would
    compile every one of them from source at each start, 0.15-0.2 s of CPU here. compileall
    writes the bytecode whatever that variable says, and the operator reads it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source)], check=True)


def start_operator(
    plane: ControlPlane, namespace: str, log: Path, profile: Path | None = None, source: Path | None = None
) -> Operator:
    """Start `vtpm-operator run`; with `profile`, py-spy records it (raw folded stacks, 100 Hz,
    not pausing it) from its first instant, phase by phase (Operator.profile_phase). `source`: a
    directory holding another vtpm_operator package (an export of an older commit) to run instead."""
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the editable install's path entry
    _compile(source or REPO / "operator")
    argv = [
        str(OPERATOR), "run",
        "--namespace", namespace,
        "--operator-namespace", namespace,
        "--metrics-port", str(free_port()),
        "--metrics-address", "127.0.0.1",
    ]  # fmt: skip
    with log.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    operator = Operator(process, started, log, profile)
    operator.profile_phase("start")
    return operator
