"""Fixtures for the two real peers: a Kubernetes API server and vCenter (hack/testbed).

- ``control_plane`` (session): a fresh local control plane, or the cluster ``$KUBECONFIG`` points at
  when ``VTPM_USE_EXISTING_CLUSTER=1``.
- ``kube_api`` (session): a ``kubernetes.client.ApiClient`` for it (admin).
- ``crd_installed`` (session): both CRDs (``crds/*.yaml``) created or replaced through the API client and
  Established; returns the VTPMPolicy CRD's name.
- ``namespace`` (function): a fresh namespace, deleted after the test.
- ``kubectl`` (session): runs /usr/bin/kubectl against the control plane.
- ``simulator`` (function): a fresh vCenter simulator with vCenter's vTPM rules.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from testbed.kube import ControlPlane, control_plane_from_kubeconfig, free_port, running_control_plane
from testbed.vcsim import Simulator, build_simulator, make_tls, running_simulator

REPO = Path(__file__).resolve().parent.parent
CRD_FILES = (REPO / "crds" / "vcenters.yaml", REPO / "crds" / "vtpmpolicies.yaml")
KUBECTL = "/usr/bin/kubectl"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.hookimpl(optionalhook=True)  # without xdist (-p no:xdist) the hook is unknown
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`pytest -n 2 --dist loadscope` (hack/test.sh) runs two queues side by side: the drills, which
    mostly wait (on leases, a slow or stopped vCenter, a stopped API server), one after another,
    beside the rest of the suite. Each worker has a control plane of its own, each test its own
    simulator. (Not `--dist loadgroup`: its marks have no effect with pytest 9's node ids.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class DrillsBesideTheSuite(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "drills" if nodeid.startswith("tests/e2e/test_drills.py::") else "suite"

    return DrillsBesideTheSuite(config, log)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and os.environ.get("VTPM_USE_EXISTING_CLUSTER") == "1":
        yield control_plane_from_kubeconfig(Path(kubeconfig))
        return
    ports = {"apiserver_port": free_port(), "etcd_port": free_port(), "etcd_peer_port": free_port()}
    # Its own ports, whatever $VTPM_APISERVER_PORT says: each xdist worker has a control plane.
    with running_control_plane(tmp_path_factory.mktemp("control-plane"), **ports) as cp:
        yield cp


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    """``kubectl(*args, check=True, input=None)`` with the control plane's kubeconfig; returns the result."""
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [KUBECTL, f"--kubeconfig={control_plane.kubeconfig}", f"--cache-dir={cache}", *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    return run


def _established(crd: Any) -> bool:
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def install_crd(api: client.ApiClient, body: dict[str, Any], timeout: float = 60) -> str:
    """Create or replace a CRD and wait until it is Established; returns its name.

    Through the API client, not kubectl: a 1.20 server then drops the CEL rules it does not know
    (x-kubernetes-validations), where kubectl's client-side validation would refuse the file.
    """
    name: str = body["metadata"]["name"]
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while not _established(ext.read_custom_resource_definition(name)):
        assert time.monotonic() < deadline, f"CRD {name} not Established after {timeout}s"
        time.sleep(0.2)
    return name


@pytest.fixture(scope="session")
def crd_installed(kube_api: client.ApiClient) -> str:
    """Both CRDs (VCenter, VTPMPolicy) installed and Established; returns the VTPMPolicy CRD's name."""
    names = [install_crd(kube_api, yaml.safe_load(path.read_text())) for path in CRD_FILES]
    return names[-1]


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (the namespace controller empties it)."""
    core = client.CoreV1Api(kube_api)
    prefix = (
        "t-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-") + "-"
    )
    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(generate_name=prefix)))
    name: str = ns.metadata.name
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


# --- vCenter simulator (hack/vcsim): a fresh one per test; inventory size by indirect
# parametrisation, e.g. @pytest.mark.parametrize("simulator", [{"vms": 8}], indirect=True).


@pytest.fixture(scope="session")
def _vcsim_binary() -> Path:
    return build_simulator()  # cached by source hash; a cold build takes ~30-50 s


@pytest.fixture(scope="session")
def _vcsim_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path_factory.mktemp("vcsim-tls"))


@pytest.fixture
def simulator(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    _vcsim_binary: Path,
    _vcsim_tls: tuple[Path, Path, Path],
) -> Iterator[Simulator]:
    options = getattr(request, "param", {})
    with running_simulator(tmp_path / "vcsim", binary=_vcsim_binary, tls=_vcsim_tls, **options) as sim:
        yield sim
