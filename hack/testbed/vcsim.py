"""Build, start and drive the project's vCenter simulator (hack/vcsim) for tests.

The simulator is govmomi's vcsim library plus the vTPM-related vCenter behaviours the
operator needs (key providers, vTPM rules in ReconfigVM, privileges, tagging checks, fault
injection). Tests talk to it over the wire with pyvmomi/requests, verifying TLS against a CA
made here; `SimulatorAdmin` wraps its JSON admin endpoint (`/_sim/...`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-vcsim.sh"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class SimulatorError(RuntimeError):
    """The simulator could not be built or started, or an admin call failed."""


def build_simulator() -> Path:
    """Build the launcher (cached by source hash) and return the binary path."""
    proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimulatorError(f"build-vcsim.sh failed ({proc.returncode}):\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise SimulatorError("build-vcsim.sh printed no binary path")
    path = Path(lines[-1])
    if not path.is_file():
        raise SimulatorError(f"build-vcsim.sh printed {path}, which does not exist")
    return path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimulatorError(f"openssl {args[0]} failed: {proc.stderr}")


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """Create a CA and a 2048-bit server cert for 127.0.0.1/localhost; return (ca, cert, key).

    The CA's key stays next to it (``ca.key``), so `issue_server_cert` can sign more certs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca = workdir / "ca.key", workdir / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "2", "-subj", "/CN=vtpm-operator test CA")  # fmt: skip
    cert, key = issue_server_cert(ca, ca_key, workdir, "server")
    return ca, cert, key


def issue_server_cert(ca: Path, ca_key: Path, workdir: Path, name: str) -> tuple[Path, Path]:
    """Sign a 2048-bit server cert for 127.0.0.1/localhost with the CA; return (cert, key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key, csr, cert = workdir / f"{name}.key", workdir / f"{name}.csr", workdir / f"{name}.crt"
    ext = workdir / f"{name}.ext"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=localhost")  # fmt: skip
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-sha256", "-extfile", str(ext))  # fmt: skip
    return cert, key


def copy_tls(src: tuple[Path, Path, Path], workdir: Path) -> tuple[Path, Path, Path]:
    """Copy TLS material made once by make_tls (2048-bit keys take time) into workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = tuple(Path(shutil.copy(p, workdir / p.name)) for p in src)
    return out[0], out[1], out[2]


CancelMode = Literal["allow", "refuse", "ignore"]


@dataclass(frozen=True)
class AuthCounters:
    """What the simulator saw of logins and credentials since start (or the last reset)."""

    soap_login_attempts: int  # Login, LoginByToken, LoginExtensionByCertificate, CloneSession calls
    soap_logins: int  # successful Login calls
    rest_login_attempts: int  # POST /rest/com/vmware/cis/session or /api/session
    rest_logins: int  # REST sessions created
    active_soap_sessions: int  # live now (not expired, not logged out)
    active_rest_sessions: int
    password_seen: int  # requests that carried the configured password anywhere
    password_seen_in: tuple[str, ...]  # "METHOD /path" of the first 20 of them


@dataclass(frozen=True)
class WatchStats:
    """Work the simulator's WaitForUpdates* did since start, summed over every collector."""

    objects_read: int  # objects whose properties were read for enter/modify updates
    membership_scans: int  # filter traversals: first fills and membership changes


class SimulatorAdmin:
    """Typed client of the simulator's admin endpoint (plain HTTP on loopback)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = requests.Session()
        self._http.trust_env = False  # never route loopback admin calls through a proxy

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._http.request(method, f"{self.base_url}/_sim/{path}", json=body, timeout=30)
        if resp.status_code >= 300:
            raise SimulatorError(f"{method} /_sim/{path}: {resp.status_code} {resp.text.strip()}")
        return resp.json()

    def health(self) -> bool:
        return bool(self._call("GET", "health")["ok"])

    # key providers (content.cryptoManager)
    def add_key_provider(
        self,
        provider_id: str,
        *,
        kind: Literal["kmip", "native"] = "native",
        default: bool = False,
        backed_up: bool = False,
    ) -> None:
        self._call(
            "POST",
            "key-providers",
            {"id": provider_id, "type": kind, "default": default, "backedUp": backed_up},
        )

    def remove_key_provider(self, provider_id: str) -> None:
        self._call("DELETE", f"key-providers/{provider_id}")

    def mark_backed_up(self, provider_id: str, backed_up: bool = True) -> None:
        self._call("POST", f"key-providers/{provider_id}/backup", {"backedUp": backed_up})

    def key_providers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "key-providers")
        return result

    # hosts
    def set_host_product(self, host_moid: str, version: str, build: str) -> None:
        self._call("POST", f"hosts/{host_moid}/product", {"version": version, "build": build})

    # users, roles, permissions
    def create_role(self, name: str, privileges: list[str]) -> None:
        self._call("POST", "roles", {"name": name, "privileges": privileges})

    def privileges(self) -> list[str]:
        """Every privilege id the simulator knows (the Admin role)."""
        result: list[str] = self._call("GET", "privileges")
        return result

    def add_user(self, username: str, password: str) -> None:
        self._call("POST", "users", {"username": username, "password": password})

    def set_permission(self, entity_moid: str, principal: str, role: str, propagate: bool = True) -> None:
        self._call(
            "POST",
            "permissions",
            {"entity": entity_moid, "principal": principal, "role": role, "propagate": propagate},
        )

    # faults on demand
    def inject_fault(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        count: int = 1,
        fault: str | None = None,
        http_status: int | None = None,
        hang_seconds: float | None = None,
        drop: bool = False,
    ) -> None:
        """Make the next `count` calls of a SOAP method (or REST path prefix) misbehave."""
        body: dict[str, Any] = {"count": count, "drop": drop}
        for key, value in (
            ("method", method),
            ("path", path),
            ("fault", fault),
            ("http_status", http_status),
            ("hang_seconds", hang_seconds),
        ):
            if value is not None:
                body[key] = value
        self._call("POST", "faults", body)

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def stop_endpoint(self) -> None:
        self._call("POST", "endpoint/stop")

    def start_endpoint(self) -> None:
        self._call("POST", "endpoint/start")

    def call_counts(self) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", "calls")
        return result

    def reset_call_counts(self) -> None:
        self._call("DELETE", "calls")

    # VM state
    def start_task_on(self, vm_moid: str) -> str:
        """Put a running Task on the VM (listed in its recentTask); returns the task moid."""
        return str(self._call("POST", f"vms/{vm_moid}/tasks")["task"])

    def finish_task(self, task_moid: str) -> None:
        self._call("POST", f"tasks/{task_moid}/finish")

    def set_tools_running(self, vm_moid: str, running: bool) -> None:
        self._call("POST", f"vms/{vm_moid}/tools", {"running": running})

    def set_shutdown_delay(self, vm_moid: str, seconds: float) -> None:
        """After ShutdownGuest, the VM powers off `seconds` later instead of at once."""
        self._call("POST", f"vms/{vm_moid}/shutdown-delay", {"seconds": seconds})

    # sessions
    def expire_sessions(self) -> int:
        """Invalidate every SOAP session; returns how many there were."""
        return int(self._call("POST", "sessions/expire")["expired"])

    def expire_rest_sessions(self) -> int:
        """Invalidate every REST session token (the next call with one gets 401); returns how many."""
        return int(self._call("POST", "sessions/expire-rest")["expired"])

    def auth_counters(self) -> AuthCounters:
        raw = self._call("GET", "auth")
        return AuthCounters(
            soap_login_attempts=int(raw["soapLoginAttempts"]),
            soap_logins=int(raw["soapLogins"]),
            rest_login_attempts=int(raw["restLoginAttempts"]),
            rest_logins=int(raw["restLogins"]),
            active_soap_sessions=int(raw["activeSoapSessions"]),
            active_rest_sessions=int(raw["activeRestSessions"]),
            password_seen=int(raw["passwordSeen"]),
            password_seen_in=tuple(str(x) for x in raw["passwordSeenIn"]),
        )

    def watch_stats(self) -> WatchStats:
        raw = self._call("GET", "watch")
        return WatchStats(objects_read=int(raw["objectsRead"]), membership_scans=int(raw["membershipScans"]))

    def reset_auth_counters(self) -> None:
        """Zero the login and password counters (active session counts are live, not reset)."""
        self._call("DELETE", "auth")

    # latency and tasks that never end
    def set_latency(self, *, soap_seconds: float = 0.0, rest_seconds: float = 0.0) -> None:
        """Add this much time to every SOAP call / REST call from now on (0 turns it off)."""
        self._call("POST", "latency", {"soap": soap_seconds, "rest": rest_seconds})

    def hang_next_reconfigure(self, vm_moid: str, *, cancel: CancelMode = "allow") -> None:
        """The VM's next ReconfigVM_Task returns a task that stays running and never applies the spec.

        cancel: "allow" - CancelTask ends it (error RequestCanceled); "refuse" - info.cancelable
        is false and CancelTask faults NotSupported; "ignore" - CancelTask is accepted
        (info.cancelled true) but the task runs on. `finish_task` ends it as success.
        """
        self._call("POST", f"vms/{vm_moid}/hang-reconfigure", {"cancel": cancel})


@dataclass(frozen=True)
class Simulator:
    url: str  # https://127.0.0.1:PORT/sdk
    server: str  # "127.0.0.1:PORT" (what a policy's spec.vcenter.server holds)
    ca_file: Path  # CA that signs the TLS cert
    username: str
    password: str
    admin: SimulatorAdmin
    pid: int
    esx: bool = False  # started as a standalone ESXi host (about.apiType HostAgent)

    @property
    def host(self) -> str:
        return self.server.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    @property
    def rest_url(self) -> str:
        return f"https://{self.server}/rest"


def _read_first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        box.append(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def running_simulator(
    workdir: Path,
    *,
    clusters: int = 1,
    hosts: int = 2,
    vms: int = 4,
    standalone_hosts: int = 0,
    username: str = "operator@vsphere.local",
    password: str | None = None,
    binary: Path | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    esx: bool = False,
    page_size: int | None = None,
    update_page_size: int | None = None,
    instance_uuid: str | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Simulator]:
    """Start a fresh simulator; stop it by PID at exit and wait for it to exit.

    `vms` is the number of VMs per resource pool (vcsim's -vm): with one cluster and no
    standalone hosts, the inventory holds exactly `vms` VMs. `esx` serves govmomi's ESX model
    (one standalone host, `vms` VMs, no REST) instead of vCenter. `page_size` (default 100, as
    vCenter) caps a RetrievePropertiesEx page when the client sets no maxObjects;
    `update_page_size` (default 1000) caps a WaitForUpdatesEx answer when it sets no
    maxObjectUpdates. Every simulator has its own random `about.instanceUuid` unless
    `instance_uuid` is given.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    binary = binary or build_simulator()
    ca, cert, key = copy_tls(tls, workdir) if tls else make_tls(workdir)
    password = password or secrets.token_urlsafe(16)
    args = [
        str(binary),
        "-listen", "127.0.0.1:0",
        "-admin-listen", "127.0.0.1:0",
        "-cluster", str(clusters),
        "-host", str(hosts),
        "-vm", str(vms),
        "-standalone-host", str(standalone_hosts),
        "-tls-cert", str(cert),
        "-tls-key", str(key),
        "-username", username,
        "-password", password,
    ]  # fmt: skip
    if esx:
        args.append("-esx")
    if page_size is not None:
        args += ["-page-size", str(page_size)]
    if update_page_size is not None:
        args += ["-update-page-size", str(update_page_size)]
    if instance_uuid is not None:
        args += ["-instance-uuid", instance_uuid]
    log = (workdir / "vcsim.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCSIM_")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=workdir)
    try:
        line = _read_first_line(proc, start_timeout)
        if not line:
            _stop(proc)
            log.flush()
            raise SimulatorError(f"simulator did not start: {(workdir / 'vcsim.log').read_text()[-2000:]}")
        info = json.loads(line)
        url: str = info["url"]
        server = url.split("//", 1)[1].split("/", 1)[0]
        yield Simulator(
            url=url,
            server=server,
            ca_file=ca,
            username=username,
            password=password,
            admin=SimulatorAdmin(info["admin"]),
            pid=proc.pid,
            esx=esx,
        )
    finally:
        _stop(proc)
        log.close()


def ssl_context(sim: Simulator) -> ssl.SSLContext:
    """A verifying client context that trusts only the simulator's CA."""
    return ssl.create_default_context(cafile=str(sim.ca_file))


def connect(
    sim: Simulator, *, username: str | None = None, password: str | None = None
) -> vim.ServiceInstance:
    """Log in over verified TLS; returns a vim.ServiceInstance."""
    si: vim.ServiceInstance = SmartConnect(
        host=sim.host,
        port=sim.port,
        user=username or sim.username,
        pwd=password if password is not None else sim.password,
        sslContext=ssl_context(sim),
    )
    return si


def disconnect(si: Any) -> None:
    Disconnect(si)


def rest_login(
    sim: Simulator, *, username: str | None = None, password: str | None = None
) -> requests.Session:
    """A requests session logged in to the simulator's /rest API (raises on HTTP errors)."""
    http = requests.Session()
    http.trust_env = False
    http.verify = str(sim.ca_file)
    resp = http.post(
        f"{sim.rest_url}/com/vmware/cis/session",
        auth=(username or sim.username, password if password is not None else sim.password),
        timeout=30,
    )
    resp.raise_for_status()
    http.headers["vmware-api-session-id"] = resp.json()["value"]
    return http


# --- PropertyCollector helpers (never read unset properties lazily: it panics vcsim) ---

_PC = vmodl.query.PropertyCollector


def retrieve_all(si: vim.ServiceInstance, obj_type: Any, props: list[str]) -> dict[str, dict[str, Any]]:
    """One RetrievePropertiesEx over a ContainerView: {moid: {prop: value}} for every object."""
    content = si.RetrieveContent()
    assert content.viewManager is not None and content.propertyCollector is not None
    view = content.viewManager.CreateContainerView(content.rootFolder, [obj_type], True)
    try:
        spec = _PC.FilterSpec(
            objectSet=[
                _PC.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        _PC.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
                    ],
                )
            ],
            propSet=[_PC.PropertySpec(type=obj_type, pathSet=props)],
        )
        out: dict[str, dict[str, Any]] = {}
        result = content.propertyCollector.RetrievePropertiesEx([spec], _PC.RetrieveOptions())
        while result is not None:
            for oc in result.objects:
                out[oc.obj._moId] = {p.name: p.val for p in oc.propSet}
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return out
    finally:
        view.DestroyView()


def retrieve_one(si: vim.ServiceInstance, obj: Any, props: list[str]) -> dict[str, Any]:
    """Properties of one managed object ({prop: value}; unset properties are absent)."""
    content = si.RetrieveContent()
    assert content.propertyCollector is not None
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=obj, skip=False)],
        propSet=[_PC.PropertySpec(type=type(obj), pathSet=props)],
    )
    result = content.propertyCollector.RetrievePropertiesEx([spec], _PC.RetrieveOptions())
    if result is None or not result.objects:
        return {}
    return {p.name: p.val for p in result.objects[0].propSet}


def wait_task(si: vim.ServiceInstance, task: Any, timeout: float = 30.0) -> Any:
    """Wait until a task leaves queued/running; returns its TaskInfo (read via the PropertyCollector)."""
    deadline = time.monotonic() + timeout
    while True:
        info = retrieve_one(si, task, ["info"])["info"]
        if info.state in (vim.TaskInfo.State.success, vim.TaskInfo.State.error):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task._moId} still {info.state}")
        time.sleep(0.02)


__all__ = [
    "AuthCounters",
    "CancelMode",
    "Simulator",
    "SimulatorAdmin",
    "SimulatorError",
    "WatchStats",
    "build_simulator",
    "connect",
    "copy_tls",
    "disconnect",
    "issue_server_cert",
    "make_tls",
    "rest_login",
    "retrieve_all",
    "retrieve_one",
    "running_simulator",
    "ssl_context",
    "wait_task",
]
