"""What the fault drills and the NotVCenter checks need from the simulator, over the wire:
ESX mode, the decoy server, login/credential counters, REST session expiry, CancelTask, a
reconfigure task that never ends, and added latency per call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyVmomi import SoapStubAdapter, vim, vmodl

from testbed.decoy import running_decoy
from testbed.vcsim import (
    Simulator,
    connect,
    disconnect,
    rest_login,
    retrieve_all,
    retrieve_one,
    running_simulator,
)


@pytest.fixture
def si(simulator: Simulator) -> Iterator[Any]:
    si = connect(simulator)
    yield si
    disconnect(si)


def _anonymous_about(host: str, port: int, ca: Path) -> Any:
    """RetrieveServiceContent without logging in, over verified TLS (what the operator does first)."""
    import ssl

    stub = SoapStubAdapter(host=host, port=port, sslContext=ssl.create_default_context(cafile=str(ca)))
    return vim.ServiceInstance("ServiceInstance", stub).RetrieveContent().about


def _vm(si: Any) -> Any:
    return vim.VirtualMachine(sorted(retrieve_all(si, vim.VirtualMachine, ["name"]))[0], si._stub)


def _task_info(si: Any, task_moid: str) -> Any:
    return retrieve_one(si, vim.Task(task_moid, si._stub), ["info"])["info"]


@pytest.mark.parametrize("simulator", [{"esx": True, "vms": 2}], indirect=True)
def test_esx_mode_is_a_host_agent_that_counts_what_it_receives(simulator: Simulator) -> None:
    about = _anonymous_about(simulator.host, simulator.port, simulator.ca_file)
    assert (about.apiType, about.productLineId) == ("HostAgent", "embeddedEsx")
    assert simulator.admin.auth_counters().password_seen == 0
    assert simulator.admin.auth_counters().soap_login_attempts == 0

    http = requests.Session()
    http.trust_env = False
    resp = http.post(f"{simulator.rest_url}/com/vmware/cis/session", verify=str(simulator.ca_file),
                     auth=(simulator.username, simulator.password), timeout=10)  # fmt: skip
    assert resp.status_code == 404  # no vAPI endpoint on a host
    si = connect(simulator)  # a host does accept a SOAP login
    try:
        assert len(retrieve_all(si, vim.VirtualMachine, ["name"])) == 2
    finally:
        disconnect(si)
    counters = simulator.admin.auth_counters()
    assert (counters.rest_login_attempts, counters.rest_logins) == (1, 0)
    assert (counters.soap_login_attempts, counters.soap_logins) == (1, 1)
    assert counters.password_seen == 2
    assert counters.password_seen_in == ("POST /rest/com/vmware/cis/session", "POST /sdk")


def test_login_and_session_counters_and_rest_expiry(simulator: Simulator) -> None:
    first, second = connect(simulator), connect(simulator)
    try:
        counters = simulator.admin.auth_counters()
        assert (counters.soap_logins, counters.active_soap_sessions) == (2, 2)
        disconnect(second)
        assert simulator.admin.auth_counters().active_soap_sessions == 1

        http = rest_login(simulator)
        url = f"{simulator.rest_url}/com/vmware/cis/tagging/category"
        assert http.get(url, timeout=10).status_code == 200
        assert simulator.admin.auth_counters().active_rest_sessions == 1
        assert simulator.admin.expire_rest_sessions() == 1
        resp = http.get(url, timeout=10)
        assert resp.status_code == 401
        assert resp.json()["type"] == "com.vmware.vapi.std.errors.unauthenticated"
        assert http.post(f"{simulator.rest_url}/com/vmware/cis/session", timeout=10).status_code == 401
        assert rest_login(simulator).get(url, timeout=10).status_code == 200  # renewal works
        counters = simulator.admin.auth_counters()
        rest = (counters.rest_login_attempts, counters.rest_logins, counters.active_rest_sessions)
        assert rest == (3, 2, 1)  # the refused POST with an expired token was an attempt too
        assert counters.password_seen == 4  # two SOAP logins, two REST logins

        simulator.admin.reset_auth_counters()
        assert simulator.admin.auth_counters().soap_logins == 0
        assert simulator.admin.auth_counters().active_soap_sessions == 1
    finally:
        disconnect(first)


def test_decoy_answers_404_html_and_records_everything(
    tmp_path: Path, _vcsim_tls: tuple[Path, Path, Path]
) -> None:
    ca = _vcsim_tls[0]
    with running_decoy(tmp_path / "decoy", ca=ca, ca_key=ca.with_name("ca.key")) as decoy:
        resp = requests.get(decoy.url + "about?x=1", verify=str(ca), timeout=10)  # TLS verifies
        assert resp.status_code == 404 and resp.headers["Content-Type"].startswith("text/html")
        with pytest.raises(Exception) as err:  # not vSphere: the anonymous probe fails
            _anonymous_about("127.0.0.1", decoy.port, ca)
        assert not isinstance(err.value, vmodl.MethodFault)
        assert not decoy.received("s3cret-never-sent")
        requests.post(
            decoy.url + "rest/com/vmware/cis/session", auth=("u", "s3cret-sent"), verify=str(ca), timeout=10
        )

        got = decoy.requests()
        assert [(r.method, r.path) for r in got] == [
            ("GET", "/about?x=1"),
            ("POST", "/sdk"),
            ("POST", "/rest/com/vmware/cis/session"),
        ]
        assert b"RetrieveServiceContent" in got[1].body and got[1].header("Authorization") is None
        assert got[2].header("Authorization") is not None
        assert decoy.received("Basic ")  # headers are searched
        assert not decoy.received("s3cret-never-sent")


def test_cancel_task(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    task_id = simulator.admin.start_task_on(vm._moId)
    vim.Task(task_id, si._stub).CancelTask()
    info = _task_info(si, task_id)
    assert (info.state, info.cancelled, type(info.error)) == ("error", True, vmodl.fault.RequestCanceled)
    assert retrieve_one(si, vm, ["recentTask"]).get("recentTask", []) == []
    with pytest.raises(vim.fault.InvalidState):
        vim.Task(task_id, si._stub).CancelTask()


def _hung_reconfigure(simulator: Simulator, si: Any, vm: Any, cancel: Any) -> str:
    simulator.admin.hang_next_reconfigure(vm._moId, cancel=cancel)
    task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="never applied"))
    time.sleep(0.5)
    info = _task_info(si, task._moId)
    assert info.state == "running"
    assert task._moId in [t._moId for t in retrieve_one(si, vm, ["recentTask"])["recentTask"]]
    return str(task._moId)


def test_reconfigure_that_never_ends_until_cancelled(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    task_id = _hung_reconfigure(simulator, si, vm, "allow")
    assert _task_info(si, task_id).cancelable is True
    vim.Task(task_id, si._stub).CancelTask()
    assert _task_info(si, task_id).state == "error"
    assert retrieve_one(si, vm, ["config.annotation"]).get("config.annotation", "") != "never applied"

    # the knob was for one reconfigure only
    done = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="applied"))
    deadline = time.monotonic() + 10
    while _task_info(si, done._moId).state != "success":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert retrieve_one(si, vm, ["config.annotation"])["config.annotation"] == "applied"


def test_reconfigure_whose_cancel_is_refused_or_ignored_runs_on(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    refused = _hung_reconfigure(simulator, si, vm, "refuse")
    assert _task_info(si, refused).cancelable is False
    with pytest.raises(vmodl.fault.NotSupported):
        vim.Task(refused, si._stub).CancelTask()
    time.sleep(0.3)
    assert _task_info(si, refused).state == "running"
    simulator.admin.finish_task(refused)
    assert _task_info(si, refused).state == "success"

    ignored = _hung_reconfigure(simulator, si, vm, "ignore")
    vim.Task(ignored, si._stub).CancelTask()
    time.sleep(0.3)
    info = _task_info(si, ignored)
    assert (info.state, info.cancelled) == ("running", True)


def test_added_latency_on_every_soap_call(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)

    def one_call() -> float:
        started = time.monotonic()
        assert retrieve_one(si, vm, ["name"])  # one RetrievePropertiesEx
        return time.monotonic() - started

    fast = one_call()
    simulator.admin.set_latency(soap_seconds=0.6)
    assert one_call() >= 0.6
    http = rest_login(simulator)  # REST is not slowed by the SOAP knob
    started = time.monotonic()
    assert http.get(f"{simulator.rest_url}/com/vmware/cis/tagging/category", timeout=10).status_code == 200
    assert time.monotonic() - started < 0.5
    simulator.admin.set_latency(rest_seconds=0.6)
    started = time.monotonic()
    assert http.get(f"{simulator.rest_url}/com/vmware/cis/tagging/category", timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.6
    assert one_call() < fast + 0.5  # setting REST latency turned the SOAP latency off


def test_every_simulator_has_its_own_instance_uuid(
    simulator: Simulator, tmp_path: Path, _vcsim_binary: Path, _vcsim_tls: tuple[Path, Path, Path]
) -> None:
    mine = _anonymous_about(simulator.host, simulator.port, simulator.ca_file).instanceUuid
    chosen = "5e1f0c9a-0000-4000-8000-000000000042"
    with running_simulator(tmp_path / "b", binary=_vcsim_binary, tls=_vcsim_tls, vms=1) as other:
        assert _anonymous_about(other.host, other.port, other.ca_file).instanceUuid not in ("", mine)
    with running_simulator(
        tmp_path / "c", binary=_vcsim_binary, tls=_vcsim_tls, vms=1, instance_uuid=chosen
    ) as fixed:
        assert _anonymous_about(fixed.host, fixed.port, fixed.ca_file).instanceUuid == chosen
