"""Fixtures for the image and the node: the shipped Dockerfile built here, and a real node to run it.

- ``operator_image`` (session): hack/build-image.sh's build of the unmodified Dockerfile.
- ``node`` (package): containerd + kubelet + kube-scheduler on the test control plane, with the
  image imported (testbed.node).
- ``deployed_operator`` (package): ``kubectl kustomize`` of deploy/ with tests/node/overlay,
  applied server-side; yields once the operator's pod is Running and Ready, deletes it all after.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.image import build_operator_image
from testbed.kube import ControlPlane
from testbed.node import Node, running_node

from ..conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
OVERLAY = Path(__file__).resolve().parent / "overlay"
NAMESPACE = "vtpm-operator"  # deploy/kustomization.yaml's namespace
SELECTOR = "app.kubernetes.io/name=vtpm-operator"
POD_READY_TIMEOUT = 180.0
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


@pytest.fixture(scope="session")
def operator_image() -> str:
    return build_operator_image()


@pytest.fixture(scope="package")
def node(
    control_plane: ControlPlane, operator_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("node"), control_plane, images=[operator_image]) as running:
        yield running


@dataclass(frozen=True)
class DeployedOperator:
    """The shipped Deployment running on the node: what was applied and the pod it made."""

    manifests: list[dict[str, Any]]
    pod: client.V1Pod
    node: Node

    @property
    def deployment(self) -> dict[str, Any]:
        return next(m for m in self.manifests if m["kind"] == "Deployment")

    def container_log(self) -> str:
        """The operator container's output, from the log file kubelet writes (what `kubectl logs` reads)."""
        meta = self.pod.metadata
        pod_dir = Path("/var/log/pods") / f"{meta.namespace}_{meta.name}_{meta.uid}" / "operator"
        return "".join(p.read_text(errors="replace") for p in sorted(pod_dir.glob("*.log")))


def runtime_overlay(workdir: Path, control_plane: ControlPlane) -> Path:
    """A kustomization over tests/node/overlay adding what is only known at run time.

    The API server's port (free per run), and ``host: 127.0.0.1`` on each HTTP probe the shipped
    Deployment has (with hostNetwork the pod IP is the machine's interface address; tests here
    talk to loopback only). Paths, ports and timings of the probes stay the shipped ones.
    """
    shipped = yaml.safe_load((REPO / "deploy" / "deployment.yaml").read_text())
    container = shipped["spec"]["template"]["spec"]["containers"][0]
    port = control_plane.server.rsplit(":", 1)[1]
    base = "/spec/template/spec/containers/0"
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": f"{base}/env/-", "value": {"name": "KUBERNETES_SERVICE_PORT", "value": port}}
    ]
    for probe in PROBES:
        if "httpGet" in container.get(probe, {}):
            ops.append({"op": "add", "path": f"{base}/{probe}/httpGet/host", "value": "127.0.0.1"})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, workdir)],
        "patches": [{"target": {"kind": "Deployment", "name": "vtpm-operator"}, "patch": json.dumps(ops)}],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return workdir


def _running_and_ready(core: client.CoreV1Api) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
    for pod in pods:
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        if pod.status.phase == "Running" and conditions.get("Ready") == "True":
            return pod
    return None


def _describe(core: client.CoreV1Api) -> str:
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
    events = core.list_namespaced_event(NAMESPACE).items
    return (
        "pods: "
        + json.dumps([{"name": p.metadata.name, "status": p.status.to_dict()} for p in pods], default=str)
        + "\nevents: "
        + "\n".join(f"{e.reason}: {e.message}" for e in events)
    )


@pytest.fixture(scope="package")
def deployed_operator(
    node: Node,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    kube_api: client.ApiClient,
    crd_installed: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DeployedOperator]:
    overlay = runtime_overlay(tmp_path_factory.mktemp("overlay"), control_plane)
    rendered = kubectl("kustomize", str(overlay)).stdout
    manifests = [m for m in yaml.safe_load_all(rendered) if m]
    kubectl("apply", "--server-side", "-f", "-", input=rendered)
    core = client.CoreV1Api(kube_api)
    try:
        deadline = time.monotonic() + POD_READY_TIMEOUT
        while (pod := _running_and_ready(core)) is None:
            assert time.monotonic() < deadline, "the pod is not Running and Ready\n" + _describe(core)
            time.sleep(1)
        yield DeployedOperator(manifests, pod, node)
    finally:
        # While the node still runs, so that kubelet confirms the pod's end and the namespace goes.
        kubectl("delete", "--wait=true", "--timeout=120s", "--ignore-not-found", "-f", "-", input=rendered)
