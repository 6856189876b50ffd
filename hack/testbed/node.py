"""A real node for the local control plane (testbed.kube): containerd, kubelet and kube-scheduler.

With it, Deployments run: a second kube-controller-manager runs the controllers the control plane
leaves out (deployment, replicaset, and nodelifecycle, which lifts the node's not-ready taint),
the scheduler binds pods, and kubelet runs them through containerd and runc. Images come from
podman's storage (``podman save`` into ``ctr images import``); pods use ``imagePullPolicy: Never``.

State lives in ``workdir``; every process is stopped by PID. kubelet serves on 127.0.0.1; the Node
reports the machine's interface address (kubelet refuses a loopback node IP), and nothing here
connects to it. There is no pod network and no kube-proxy: pods that must reach the API server
use ``hostNetwork`` and ``KUBERNETES_SERVICE_HOST``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testbed.image import PAUSE_IMAGE, build_pause_image, save_image
from testbed.kube import (
    KUBE_VERSION,
    ControlPlane,
    ControlPlaneError,
    _Procs,
    cache_dir,
    free_port,
    kube_binaries,
)

HACK_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = HACK_DIR / "build-node.sh"
RUNC_WRAPPER = Path(__file__).resolve().with_name("runc_wrapper.py")
CTR = "/usr/bin/ctr"
CONTAINERD = "/usr/bin/containerd"
CNI_BIN_DIR = "/usr/lib/cni"
NODE_NAME = "node1"
EXTRA_CONTROLLERS = "deployment,replicaset,nodelifecycle"
POD_LOGS = Path("/var/log/pods")  # fixed in kubelet 1.20; containers' logs land here


@dataclass(frozen=True)
class Node:
    """A running node: its name, containerd's socket, kubelet's port, and the PIDs we started."""

    name: str
    workdir: Path
    containerd_socket: Path
    kubelet_port: int
    pids: tuple[int, ...]

    def ctr(self, *args: str) -> str:
        """``ctr -n k8s.io ARGS`` against this node's containerd; returns stdout."""
        return _ctr(self.containerd_socket, *args)


def node_cache_dir() -> Path:
    """Where build-node.sh caches the node's binaries, beside the control plane's."""
    return cache_dir().parent / f"k8s-{KUBE_VERSION}-node"


def node_binaries() -> Path:
    """The directory with kubelet, kube-scheduler and pause, built once by hack/build-node.sh."""
    cache = node_cache_dir()
    wanted = [cache / "kubelet", cache / "kube-scheduler", cache / "pause"]
    if not all(os.access(p, os.X_OK) for p in wanted):
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)  # takes its own lock
    missing = [str(p) for p in wanted if not os.access(p, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"build-node.sh finished but these are missing: {missing}")
    return cache


def _ctr(socket: Path, *args: str) -> str:
    proc = subprocess.run(
        [CTR, "--address", str(socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"ctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def containerd_config(workdir: Path, runc: Path) -> str:
    """containerd's defaults plus what this machine needs: cgroupfs, a local pause image, our runc."""
    return f"""version = 2
root = "{workdir / "root"}"
state = "{workdir / "state"}"

[grpc]
  address = "{workdir / "containerd.sock"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{workdir / "cni"}"
"""


def _write_runc_wrapper(workdir: Path) -> Path:
    """containerd needs an executable for BinaryName; this one runs runc_wrapper.py (sandbox only)."""
    wrapper = workdir / "runc"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{RUNC_WRAPPER}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _wait_until(what: str, ready: Callable[[], bool], procs: Sequence[_Procs], deadline: float) -> None:
    while True:
        for group in procs:
            group.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out waiting for {what}")
        time.sleep(0.5)


# containerd reports the node's network NotReady until it has loaded one CNI network. Pods here
# all use hostNetwork, so CNI is never called for them; a loopback-only network satisfies the
# check without creating any interface or address on the machine.
CNI_LOOPBACK_ONLY = '{"cniVersion": "0.4.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}\n'


def _start_containerd(procs: _Procs, workdir: Path) -> Path:
    state = workdir / "containerd"
    (state / "cni").mkdir(parents=True, exist_ok=True)
    (state / "cni" / "10-loopback-only.conflist").write_text(CNI_LOOPBACK_ONLY)
    conf = state / "config.toml"
    conf.write_text(containerd_config(state, _write_runc_wrapper(state)))
    procs.start("containerd", [CONTAINERD, "--config", str(conf)])
    return state / "containerd.sock"


def _containerd_serving(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        _ctr(socket, "version")
    except ControlPlaneError:
        return False
    return True


def _import_images(socket: Path, images: Sequence[str], workdir: Path) -> None:
    for image in images:
        archive = save_image(image, workdir / "image.tar")
        _ctr(socket, "images", "import", str(archive))
        archive.unlink()


def _kubelet_argv(binaries: Path, cp: ControlPlane, socket: Path, root: Path, port: int) -> list[str]:
    return [
        str(binaries / "kubelet"),
        f"--kubeconfig={cp.kubeconfig}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{socket}",
        "--cgroup-driver=cgroupfs",  # cgroup v1 (hybrid) and no systemd here
        "--fail-swap-on=false",
        f"--root-dir={root}",
        f"--cert-dir={root / 'pki'}",
        f"--volume-plugin-dir={root / 'volume-plugins'}",
        f"--hostname-override={NODE_NAME}",
        "--address=127.0.0.1",
        f"--port={port}",
        "--read-only-port=0",
        "--healthz-port=0",
        # No QoS cgroup tree, no node allocatable and no evictions: the sandbox cannot enforce them
        # and a shared test machine must not evict anything for disk or memory pressure.
        "--cgroups-per-qos=false",
        "--enforce-node-allocatable=",
        "--eviction-hard=",
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold=99",
    ]


def _scheduler_argv(binaries: Path, cp: ControlPlane) -> list[str]:
    return [
        str(binaries / "kube-scheduler"),
        f"--kubeconfig={cp.kubeconfig}",
        "--leader-elect=false",
        "--port=0",
        "--secure-port=0",
    ]


def _controllers_argv(cp: ControlPlane, controller_manager: Path) -> list[str]:
    """A second controller manager with only what the control plane leaves out, so kube.py stays as is."""
    return [
        str(controller_manager),
        f"--kubeconfig={cp.kubeconfig}",
        "--leader-elect=false",
        "--port=0",
        "--secure-port=0",
        f"--controllers={EXTRA_CONTROLLERS}",
        "--use-service-account-credentials=false",
    ]


def _node_schedulable(core: client.CoreV1Api, name: str) -> bool:
    """Ready, and the not-ready taint gone (the nodelifecycle controller lifts it)."""
    try:
        node = core.read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    conditions = (node.status and node.status.conditions) or []
    taints = (node.spec and node.spec.taints) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    blocked = any(t.effect in ("NoSchedule", "NoExecute") for t in taints)
    return ready and not blocked


def _remove_containers(socket: Path) -> None:
    """Kill and delete every container kubelet started, so their shims exit with them."""
    for task in _ctr(socket, "tasks", "ls", "--quiet").split():
        with contextlib.suppress(ControlPlaneError):
            _ctr(socket, "tasks", "delete", "--force", task)
    for container in _ctr(socket, "containers", "ls", "--quiet").split():
        with contextlib.suppress(ControlPlaneError):
            _ctr(socket, "containers", "delete", container)


def _unmount_under(path: Path) -> None:
    """Lazily unmount what kubelet and containerd left in ``path`` (volumes, rootfs), deepest first."""
    prefix = str(path) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _pod_log_dirs() -> set[Path]:
    return set(POD_LOGS.iterdir()) if POD_LOGS.is_dir() else set()


@contextlib.contextmanager
def running_node(
    workdir: Path,
    control_plane: ControlPlane,
    *,
    images: Sequence[str] = (),
    binaries: Path | None = None,
    controller_manager: Path | None = None,
    start_timeout: float = 180.0,
) -> Iterator[Node]:
    """Start containerd (with ``images`` imported), kubelet, kube-scheduler and the extra controllers.

    Yields once the node is Ready and schedulable. On exit everything is stopped by PID, the
    containers kubelet left are deleted, their mounts undone, the pod logs kubelet wrote during
    the run removed, and the Node object deleted.
    """
    binaries = binaries or node_binaries()
    controller_manager = controller_manager or kube_binaries() / "kube-controller-manager"
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pause = build_pause_image(binaries / "pause")
    runtime, daemons = _Procs(workdir), _Procs(workdir)
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + start_timeout
    socket = workdir / "containerd" / "containerd.sock"
    logs_before = _pod_log_dirs()
    try:
        _start_containerd(runtime, workdir)
        _wait_until("containerd", lambda: _containerd_serving(socket), [runtime], deadline)
        _import_images(socket, [pause, *images], workdir)
        port = free_port()
        daemons.start("kubelet", _kubelet_argv(binaries, control_plane, socket, workdir / "kubelet", port))
        daemons.start("kube-scheduler", _scheduler_argv(binaries, control_plane))
        daemons.start("kube-controller-manager-node", _controllers_argv(control_plane, controller_manager))
        _wait_until(
            f"node {NODE_NAME} Ready and schedulable",
            lambda: _node_schedulable(core, NODE_NAME),
            [runtime, daemons],
            deadline,
        )
        yield Node(NODE_NAME, workdir, socket, port, (*runtime.pids(), *daemons.pids()))
    finally:
        daemons.stop_all()
        if runtime.procs and runtime.procs[0][1].poll() is None:
            with contextlib.suppress(ControlPlaneError):
                _remove_containers(socket)
        runtime.stop_all()
        _unmount_under(workdir)
        for pod_logs in _pod_log_dirs() - logs_before:
            shutil.rmtree(pod_logs, ignore_errors=True)
        with contextlib.suppress(ApiException):
            core.delete_node(NODE_NAME)
        api.close()
