"""Faults on demand, listener restarts, call counters, running tasks, guest tools, sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pyVmomi import vim, vmodl

from testbed.vcsim import Simulator, connect, disconnect, rest_login, retrieve_all, retrieve_one, wait_task


@pytest.fixture
def si(simulator: Simulator) -> Iterator[Any]:
    si = connect(simulator)
    yield si
    disconnect(si)


def _vm(si: Any, index: int = 0) -> Any:
    return vim.VirtualMachine(sorted(retrieve_all(si, vim.VirtualMachine, ["name"]))[index], si._stub)


def test_injected_soap_faults_apply_to_the_next_n_calls(simulator: Simulator, si: Any) -> None:
    simulator.admin.inject_fault(method="RetrievePropertiesEx", fault="NotAuthenticated", count=2)
    for _ in range(2):
        with pytest.raises(vim.fault.NotAuthenticated):
            retrieve_all(si, vim.VirtualMachine, ["name"])
    assert len(retrieve_all(si, vim.VirtualMachine, ["name"])) == 4  # third call is served

    vm = _vm(si)
    simulator.admin.inject_fault(method="ReconfigVM_Task", fault="SystemError")
    with pytest.raises(vmodl.fault.SystemError):
        vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="x"))
    simulator.admin.inject_fault(method="ReconfigVM_Task", fault="SystemError")
    simulator.admin.clear_faults()
    assert wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="x"))).state == "success"


def test_hang_and_drop(simulator: Simulator, si: Any) -> None:
    simulator.admin.inject_fault(method="RetrievePropertiesEx", hang_seconds=0.5)
    started = time.monotonic()
    assert len(retrieve_all(si, vim.VirtualMachine, ["name"])) == 4
    assert time.monotonic() - started >= 0.5

    simulator.admin.inject_fault(method="RetrievePropertiesEx", drop=True)
    with pytest.raises(Exception) as err:
        retrieve_all(si, vim.VirtualMachine, ["name"])
    assert not isinstance(err.value, vmodl.MethodFault)
    si2 = connect(simulator)
    assert len(retrieve_all(si2, vim.VirtualMachine, ["name"])) == 4
    disconnect(si2)


def test_rest_path_faults(simulator: Simulator) -> None:
    http = rest_login(simulator)
    url = f"{simulator.rest_url}/com/vmware/cis/tagging/category"
    simulator.admin.inject_fault(path="/rest/com/vmware/cis/tagging", http_status=503)
    assert http.get(url, timeout=10).status_code == 503
    assert http.get(url, timeout=10).status_code == 200
    simulator.admin.inject_fault(path="/rest/com/vmware/cis/tagging", drop=True)
    with pytest.raises(requests.ConnectionError):
        http.get(url, timeout=10)


def test_endpoint_stop_and_restart_keeps_inventory_and_port(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    assert wait_task(si, vm.Rename_Task(newName="survivor")).state == "success"
    simulator.admin.stop_endpoint()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"https://{simulator.server}/about", verify=str(simulator.ca_file), timeout=5)
    simulator.admin.start_endpoint()
    si2 = connect(simulator)
    try:
        assert retrieve_one(si2, vim.VirtualMachine(vm._moId, si2._stub), ["name"])["name"] == "survivor"
    finally:
        disconnect(si2)


def test_call_counters_and_reset(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    simulator.admin.reset_call_counts()
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0
    wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="a")))
    wait_task(si, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation="b")))
    assert simulator.admin.call_counts()["ReconfigVM_Task"] == 2
    simulator.admin.reset_call_counts()
    retrieve_all(si, vim.VirtualMachine, ["name"])
    counts = simulator.admin.call_counts()
    assert "ReconfigVM_Task" not in counts
    assert counts["RetrievePropertiesEx"] == 1


def test_running_task_shows_in_recent_task(simulator: Simulator, si: Any) -> None:
    vm = _vm(si)
    task_id = simulator.admin.start_task_on(vm._moId)
    recent = retrieve_one(si, vm, ["recentTask"])["recentTask"]
    assert [t._moId for t in recent] == [task_id]
    info = retrieve_one(si, recent[0], ["info"])["info"]
    assert info.state == "running"
    assert info.entity._moId == vm._moId

    simulator.admin.finish_task(task_id)
    assert retrieve_one(si, vm, ["recentTask"]).get("recentTask", []) == []
    assert retrieve_one(si, recent[0], ["info.state"])["info.state"] == "success"


def test_shutdown_guest_needs_running_tools(simulator: Simulator, si: Any) -> None:
    stuck, ok = _vm(si, 0), _vm(si, 1)
    simulator.admin.set_tools_running(stuck._moId, False)
    assert retrieve_one(si, stuck, ["guest.toolsRunningStatus"])["guest.toolsRunningStatus"] == (
        "guestToolsNotRunning"
    )
    with pytest.raises(vim.fault.ToolsUnavailable):
        stuck.ShutdownGuest()
    assert retrieve_one(si, stuck, ["runtime.powerState"])["runtime.powerState"] == "poweredOn"

    assert (
        retrieve_one(si, ok, ["guest.toolsRunningStatus"])["guest.toolsRunningStatus"] == "guestToolsRunning"
    )
    ok.ShutdownGuest()
    deadline = time.monotonic() + 5
    while retrieve_one(si, ok, ["runtime.powerState"])["runtime.powerState"] != "poweredOff":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_expired_sessions_get_not_authenticated(simulator: Simulator, si: Any) -> None:
    assert len(retrieve_all(si, vim.VirtualMachine, ["name"])) == 4
    assert simulator.admin.expire_sessions() >= 1
    with pytest.raises(vim.fault.NotAuthenticated):
        retrieve_all(si, vim.VirtualMachine, ["name"])
    fresh = connect(simulator)  # renewal: a new login works
    try:
        assert len(retrieve_all(fresh, vim.VirtualMachine, ["name"])) == 4
    finally:
        disconnect(fresh)


def test_a_call_refused_for_an_expired_session_is_not_counted(simulator: Simulator, si: Any) -> None:
    """The counters are the drills' witness of what vCenter executed: a call refused as
    NotAuthenticated, then made again on a fresh session, counts once."""
    simulator.admin.reset_call_counts()
    assert simulator.admin.expire_sessions() >= 1
    with pytest.raises(vim.fault.NotAuthenticated):
        retrieve_all(si, vim.VirtualMachine, ["name"])
    refused = {m: n for m, n in simulator.admin.call_counts().items() if m != "RetrieveServiceContent"}
    assert refused == {}  # the service content needs no session: that call was answered
    fresh = connect(simulator)
    try:
        retrieve_all(fresh, vim.VirtualMachine, ["name"])
    finally:
        disconnect(fresh)
    assert simulator.admin.call_counts().get("Login") == 1
