"""A modern API server for CRD validation: apiextensions-apiserver 1.36 with its own etcd.

kube-apiserver 1.20 (testbed.kube) cannot judge CEL rules (x-kubernetes-validations, 1.25+). This
server serves CRDs and custom resources only (no Secrets, Namespaces or RBAC), which is what
judging a CRD at admission needs. It is built once by hack/build-apiext.sh from Debian sid's
packages and cached. Everything listens on 127.0.0.1, on free ports; clients authenticate with a
client certificate in system:masters; processes are stopped by PID.

Run ``python -m testbed.apiext`` (with ``hack`` on ``PYTHONPATH``) to keep one up in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.kube import (
    ETCD,
    ControlPlaneError,
    _get,
    _openssl,
    _Procs,
    _wait_for,
    free_port,
    make_pki,
)

APIEXT_VERSION = "1.36"
HACK_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = HACK_DIR / "build-apiext.sh"


@dataclass(frozen=True)
class ApiExtServer:
    """How to reach a running apiextensions-apiserver, and the PIDs of its processes."""

    server: str
    kubeconfig: Path
    ca_file: Path
    pids: tuple[int, ...]


def cache_dir() -> Path:
    root = os.environ.get("VTPM_CACHE") or str(Path.home() / ".cache" / "vtpm-operator")
    return Path(root) / f"apiext-{APIEXT_VERSION}"


def apiext_binary() -> Path:
    """The cached apiextensions-apiserver, built once (serialised: the build takes minutes and 1.5 GB)."""
    binary = cache_dir() / "apiextensions-apiserver"
    if os.access(binary, os.X_OK):
        return binary
    binary.parent.parent.mkdir(parents=True, exist_ok=True)
    with open(binary.parent.parent / ".build-apiext.lock", "w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    if not os.access(binary, os.X_OK):
        raise ControlPlaneError(f"build-apiext.sh finished but {binary} is missing")
    return binary


def make_client_cert(pki: Path) -> tuple[Path, Path]:
    """A client certificate in system:masters, signed by the testbed CA: (cert, key)."""
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "admin.key", "-out", "admin.csr",
        "-subj", "/O=system:masters/CN=admin",
        cwd=pki,
    )  # fmt: skip
    (pki / "admin.ext").write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _openssl(
        "x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "admin.crt", "-days", "3650", "-extfile", "admin.ext",
        cwd=pki,
    )  # fmt: skip
    (pki / "admin.key").chmod(0o600)
    return pki / "admin.crt", pki / "admin.key"


def _kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str]) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "apiext", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "apiext", "context": {"cluster": "apiext", "user": "admin"}}],
        "current-context": "apiext",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _etcd_argv(workdir: Path, client_url: str, peer_url: str) -> list[str]:
    return [
        ETCD,
        "--name=default",
        f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        "--log-level=warn",
    ]


def _apiext_argv(binary: Path, workdir: Path, etcd_url: str, port: int, dummy: Path) -> list[str]:
    pki = workdir / "pki"
    # It wants kubeconfigs for delegated authn/authz and for its own informers; a kubeconfig that
    # points at a closed port satisfies it, and system:masters client certs need no delegation.
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'apiext-certs'}",
        f"--tls-cert-file={pki / 'server.crt'}",
        f"--tls-private-key-file={pki / 'server.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--kubeconfig={dummy}",
        f"--authentication-kubeconfig={dummy}",
        "--authentication-skip-lookup",
        f"--authorization-kubeconfig={dummy}",
        "--disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,"
        "ValidatingAdmissionPolicy,ValidatingAdmissionWebhook",
        "--enable-priority-and-fairness=false",
    ]


@contextlib.contextmanager
def running_apiext(
    workdir: Path, *, binary: Path | None = None, start_timeout: float = 90.0
) -> Iterator[ApiExtServer]:
    """Start etcd and apiextensions-apiserver on free loopback ports; stop both by PID on exit."""
    binary = binary or apiext_binary()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    make_pki(pki)
    cert, key = make_client_cert(pki)
    port = free_port()
    server = f"https://127.0.0.1:{port}"
    kubeconfig = workdir / "kubeconfig"
    _kubeconfig(kubeconfig, server, pki / "ca.crt", {"client-certificate": str(cert), "client-key": str(key)})
    dummy = workdir / "dummy.kubeconfig"
    _kubeconfig(dummy, f"https://127.0.0.1:{free_port()}", pki / "ca.crt", {"token": "unused"})

    deadline = time.monotonic() + start_timeout
    procs = _Procs(workdir)
    try:
        etcd_url, peer_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        procs.start("etcd", _etcd_argv(workdir, etcd_url, peer_url))
        _wait_for("etcd /health", lambda: _get(f"{etcd_url}/health")[0] == 200, procs, deadline)
        procs.start("apiextensions-apiserver", _apiext_argv(binary, workdir, etcd_url, port, dummy))
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(cert), str(key))
        # /readyz never turns ready here (there is no core API to reach); serving the CRD API is the proof.
        _wait_for(
            "apiextensions-apiserver serving CRDs",
            lambda: (
                _get(f"{server}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", context)[0] == 200
            ),
            procs,
            deadline,
        )
        yield ApiExtServer(server=server, kubeconfig=kubeconfig, ca_file=pki / "ca.crt", pids=procs.pids())
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run apiextensions-apiserver 1.36 in the foreground.")
    parser.add_argument("--workdir", type=Path, help="PKI, logs, etcd data (default: a fresh temporary dir)")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="vtpm-apiext-"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with running_apiext(workdir) as apiext:
        print(f"apiextensions-apiserver {APIEXT_VERSION} ready in {time.monotonic() - started:.1f}s")
        print(f"export KUBECONFIG={apiext.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
