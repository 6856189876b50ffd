"""A local Kubernetes control plane for tests and demos: etcd, kube-apiserver, kube-controller-manager.

Everything listens on 127.0.0.1 only, on free ports (overridable), with a fresh PKI made by openssl,
RBAC authorization on and an admin token in ``system:masters``. Processes are stopped by PID.

Run ``python -m testbed.kube`` (with ``hack`` on ``PYTHONPATH``, or ``hack/kube-up.sh``) to keep
one up in the foreground; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUBE_VERSION = "v1.20.2"
HACK_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = HACK_DIR / "build-kube.sh"
ETCD = "/usr/bin/etcd"
OPENSSL = "/usr/bin/openssl"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTROLLERS = "namespace,garbagecollector,serviceaccount,serviceaccount-token"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started."""


@dataclass(frozen=True)
class ControlPlane:
    """How to reach a running control plane, and the PIDs of its processes (empty if not ours)."""

    server: str
    kubeconfig: Path
    ca_file: Path
    token: str
    pids: tuple[int, ...]


def cache_dir() -> Path:
    """Where the kube binaries are cached (outside the repository)."""
    root = os.environ.get("VTPM_CACHE") or str(Path.home() / ".cache" / "vtpm-operator")
    return Path(root) / f"k8s-{KUBE_VERSION}"


def kube_binaries() -> Path:
    """Return the directory holding kube-apiserver and kube-controller-manager, building them once."""
    cache = cache_dir()
    wanted = [cache / "kube-apiserver", cache / "kube-controller-manager"]
    if all(os.access(p, os.X_OK) for p in wanted):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Serialise concurrent callers: the build takes minutes and ~1.4 GB of memory.
    with open(cache.parent / ".build-kube.lock", "w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    missing = [str(p) for p in wanted if not os.access(p, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"build-kube.sh finished but these are missing: {missing}")
    return cache


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, below the kernel's ephemeral range: a port
    the kernel hands out itself may go to any outgoing connection before the server binds it (in
    CI an operator's liveness port was taken so, and Kopf stopped at start)."""
    for _ in range(1000):
        port = random.randrange(20000, _ephemeral_low())  # above the fixed ports of Kubernetes (10250, ...)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ControlPlaneError("no free port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def make_pki(pki: Path) -> str:
    """CA, apiserver serving certificate, service-account key pair and token file; returns the token."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3650", "-subj", "/CN=vtpm-testbed-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=pki,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=kube-apiserver",
        cwd=pki,
    )  # fmt: skip
    (pki / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.0.0.1\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "3650", "-extfile", "server.ext",
        cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    token = secrets.token_hex(24)
    tokens = pki / "tokens.csv"
    tokens.write_text(f'{token},admin,1000,"system:masters"\n')
    for secret in ("ca.key", "server.key", "sa.key", "tokens.csv"):
        (pki / secret).chmod(0o600)
    return token


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "vtpm-testbed", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "vtpm-testbed", "context": {"cluster": "vtpm-testbed", "user": "admin"}}],
        "current-context": "vtpm-testbed",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG: the child gets SIGTERM if the process that started it dies without cleaning up.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class _Procs:
    """The processes started so far, in start order, with their log files."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C in a terminal reaches only us; we stop them in order
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc, log_path))
        return proc

    def check_alive(self) -> None:
        for name, proc, log_path in self.procs:
            if proc.poll() is not None:
                tail = _tail(log_path)
                print(
                    f"--- {name} exited with {proc.returncode}; last lines of {log_path}:\n{tail}",
                    file=sys.stderr,
                )
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode} during start (log: {log_path})"
                )

    def pids(self) -> tuple[int, ...]:
        return tuple(proc.pid for _, proc, _ in self.procs)

    def stop_all(self, timeout: float = 15.0) -> None:
        for _, proc, _ in reversed(self.procs):
            stop_process(proc, timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM by PID, SIGKILL after ``timeout`` seconds, then reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _get(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3, context=context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


def _wait_for(what: str, probe: Callable[[], bool], procs: _Procs, deadline: float) -> None:
    while True:
        procs.check_alive()
        if probe():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out waiting for {what}")
        time.sleep(0.25)


@contextlib.contextmanager
def running_control_plane(
    workdir: Path,
    *,
    apiserver_port: int | None = None,
    etcd_port: int | None = None,
    etcd_peer_port: int | None = None,
    binaries: Path | None = None,
    start_timeout: float = 90.0,
) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver and kube-controller-manager; stop all of them by PID on exit.

    Ports default to ``$VTPM_APISERVER_PORT``, ``$VTPM_ETCD_PORT``, ``$VTPM_ETCD_PEER_PORT``, else free ones.
    Logs, PKI, etcd data and the kubeconfig live in ``workdir``.
    """
    binaries = binaries or kube_binaries()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    apiserver_port = apiserver_port or _env_port("VTPM_APISERVER_PORT") or free_port()
    etcd_port = etcd_port or _env_port("VTPM_ETCD_PORT") or free_port()
    etcd_peer_port = etcd_peer_port or _env_port("VTPM_ETCD_PEER_PORT") or free_port()

    pki = workdir / "pki"
    token = make_pki(pki)
    ca_file = pki / "ca.crt"
    server = f"https://127.0.0.1:{apiserver_port}"
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, server, ca_file, token)

    deadline = time.monotonic() + start_timeout
    procs = _Procs(workdir)
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        procs.start(
            "etcd",
            [
                ETCD,
                "--name=default",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--log-level=warn",
            ],
        )
        _wait_for("etcd /health", lambda: _get(f"{etcd_url}/health")[0] == 200, procs, deadline)

        procs.start(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={apiserver_port}",
                "--insecure-port=0",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={ca_file}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--profiling=false",
            ],
        )
        context = ssl.create_default_context(cafile=str(ca_file))
        _wait_for(
            "kube-apiserver /readyz",
            lambda: _get(f"{server}/readyz", context, token)[0] == 200,
            procs,
            deadline,
        )

        procs.start(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca_file}",
                "--use-service-account-credentials=false",
            ],
        )
        # The serviceaccount controller creating "default" proves the controller manager works.
        _wait_for(
            "the controller manager (default ServiceAccount)",
            lambda: (
                _get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", context, token)[0] == 200
            ),
            procs,
            deadline,
        )
        yield ControlPlane(
            server=server, kubeconfig=kubeconfig, ca_file=ca_file, token=token, pids=procs.pids()
        )
    finally:
        procs.stop_all()


def control_plane_from_kubeconfig(path: Path) -> ControlPlane:
    """Describe an already running cluster from its kubeconfig (current context); pids is empty."""
    config = yaml.safe_load(path.read_text())
    current = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user: dict[str, Any] = next(
        (u["user"] for u in config.get("users", []) if u["name"] == context.get("user")), {}
    )
    if "certificate-authority" in cluster:
        ca_file = (path.parent / cluster["certificate-authority"]).resolve()
    elif "certificate-authority-data" in cluster:
        import base64

        fd, name = tempfile.mkstemp(prefix="vtpm-ca-", suffix=".crt")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(cluster["certificate-authority-data"]))
        ca_file = Path(name)
    else:
        raise ControlPlaneError(f"{path}: the current cluster has no certificate authority")
    return ControlPlane(
        server=str(cluster["server"]),
        kubeconfig=path.resolve(),
        ca_file=ca_file,
        token=str(user.get("token", "")),
        pids=(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a local control plane in the foreground (Ctrl-C stops it)."
    )
    parser.add_argument("--workdir", type=Path, help="PKI, logs, etcd data (default: a fresh temporary dir)")
    parser.add_argument("--apiserver-port", type=int)
    parser.add_argument("--etcd-port", type=int)
    parser.add_argument("--etcd-peer-port", type=int)
    args = parser.parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="vtpm-kube-"))
    # Ctrl-C and SIGTERM unwind through the context manager, which stops every process. (SIGINT is
    # installed explicitly: a shell's background job would otherwise inherit it ignored.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with running_control_plane(
        workdir,
        apiserver_port=args.apiserver_port,
        etcd_port=args.etcd_port,
        etcd_peer_port=args.etcd_peer_port,
    ) as cp:
        print(f"control plane ready in {time.monotonic() - started:.1f}s at {cp.server} (logs in {workdir})")
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping the control plane", flush=True)
    print("control plane stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
