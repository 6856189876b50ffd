"""Drills: the operator as a process (two where a drill says so) against the real peers, with
faults a production run meets: kills, rollouts, an API server that stops, refused writes, a slow
or restarting vCenter, tasks that never end, VMs vCenter always refuses.

Every drill power-cycles running VMs (powerPolicy Shutdown), because a power cycle is what a
fault must never repeat or leave half done. The simulator's call counters are the witness: they
count what reached vCenter, whatever the operator believes it did.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pyVmomi import vim

from testbed.fleet import VMSpec, build_fleet
from testbed.kube import ControlPlane
from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, retrieve_one
from vtpm_operator.lease_share import unit_lease_name

from .conftest import Cluster, RunningOperator, condition, policy_manifest, settled, summary, vm_rows

pytestmark = pytest.mark.slow

LEASE_TAKEOVER = 17.0  # seconds: lease duration 15 s + one retry period of 2 s (issue 10)
GRACE = 30.0  # the Deployment's terminationGracePeriodSeconds
FAST = ("--retry-base", "2s", "--task-timeout", "10s")  # short waits the issue allows in drills


# --- what vCenter shows ---------------------------------------------------------------------------
def fleet_state(sim: Simulator, ids: dict[str, str]) -> dict[str, tuple[str, int]]:
    """name → (power state, number of vTPM devices), read in one call."""
    si = connect(sim)
    try:
        props = retrieve_all(si, vim.VirtualMachine, ["runtime.powerState", "config.hardware.device"])
    finally:
        disconnect(si)
    return {
        name: (
            str(props[moid]["runtime.powerState"]),
            sum(isinstance(d, vim.vm.device.VirtualTPM) for d in props[moid]["config.hardware.device"]),
        )
        for name, moid in ids.items()
    }


def all_on_with_one_vtpm(sim: Simulator, ids: dict[str, str]) -> None:
    state = fleet_state(sim, ids)
    assert state == dict.fromkeys(ids, ("poweredOn", 1)), state


def running_task(sim: Simulator, vm_id: str) -> str:
    """The moid of the task that runs on the VM now (its recentTask)."""
    si = connect(sim)
    try:
        vm: Any = vim.VirtualMachine(vm_id, si._stub)  # type: ignore[no-untyped-call]
        tasks: list[Any] = retrieve_one(si, vm, ["recentTask"]).get("recentTask") or []
        running = [
            t._moId
            for t in tasks
            if retrieve_one(si, t, ["info.state"])["info.state"] in ("running", "queued")
        ]
    finally:
        disconnect(si)
    assert len(running) == 1, running
    return str(running[0])


def calls(sim: Simulator, *methods: str) -> dict[str, int]:
    counts = sim.admin.call_counts()
    return {m: counts.get(m, 0) for m in methods}


CYCLE = ("ShutdownGuest", "ReconfigVM_Task", "PowerOnVM_Task")


def wait_calls(sim: Simulator, method: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sim.admin.call_counts().get(method, 0) < at_least:
        assert time.monotonic() < deadline, f"{method} not called {at_least} times: {sim.admin.call_counts()}"
        time.sleep(0.1)


# --- the Kubernetes side ----------------------------------------------------------------------------
def lease_holder(cluster: Cluster, vcenter: str) -> str:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            unit_lease_name(vcenter), cluster.namespace
        )
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str((lease.spec and lease.spec.holder_identity) or "")


def wait_holder(
    cluster: Cluster, vcenter: str, among: list[RunningOperator], timeout: float
) -> RunningOperator:
    deadline = time.monotonic() + timeout
    while True:
        holder = lease_holder(cluster, vcenter)
        for operator in among:
            if holder == operator.identity:
                return operator
        assert time.monotonic() < deadline, f"none of {[o.identity for o in among]} holds it: {holder!r}"
        time.sleep(0.2)


def wait_vms(sim: Simulator, ids: dict[str, str], state: tuple[str, int], timeout: float) -> None:
    """Until every VM shows `state` (power, vTPM count) in vCenter."""
    deadline = time.monotonic() + timeout
    while (seen := fleet_state(sim, ids)) != dict.fromkeys(ids, state):
        assert time.monotonic() < deadline, f"VMs {seen}, vCenter counted {sim.admin.call_counts()}"
        time.sleep(0.5)


def settled_in(cluster: Cluster, name: str, seconds: float) -> dict[str, Any]:
    """Once vCenter shows the work done, status says so within seconds (Reconciling False)."""
    return cluster.wait_for(name, settled, timeout=seconds, what="Reconciling False once vCenter is done")


def cycling_fleet(sim: Simulator, count: int, shutdown_delay: float) -> dict[str, str]:
    """`count` running VMs ready for a vTPM, whose guests take `shutdown_delay` s to shut down."""
    fleet = build_fleet(sim, [VMSpec(f"vm-{i}", powered_on=True) for i in range(count)])
    for moid in fleet.ids.values():
        sim.admin.set_shutdown_delay(moid, shutdown_delay)
    sim.admin.reset_call_counts()
    sim.admin.reset_auth_counters()
    return fleet.ids


def cycling_policy(name: str, vcenter: str, **spec: Any) -> dict[str, Any]:
    power = {"action": "Shutdown", "shutdownTimeout": "60s"}
    return policy_manifest(name, vcenter, powerPolicy=power, **spec)


def compliant(count: int) -> Callable[[dict[str, Any]], bool]:
    return lambda p: settled(p) and summary(p).get("compliant") == count


def settle(
    cluster: Cluster, sim: Simulator, ids: dict[str, str], name: str, *, timeout: float, what: str
) -> dict[str, Any]:
    """The policy once every VM is compliant and vCenter shows them on with one vTPM each; on
    timeout, what vCenter saw. (Not Reconciling False: after a last power-on owed, that can lag
    by the status refresh; the crash drills check it on their own.)"""
    try:
        policy = cluster.wait_for(
            name, lambda p: summary(p).get("compliant") == len(ids), timeout=timeout, what=what
        )
    except AssertionError as error:
        seen = sim.admin.call_counts()
        vms, auth = fleet_state(sim, ids), sim.admin.auth_counters()
        raise AssertionError(f"{error}\nvCenter counted {seen}\nVMs: {vms}\nauth: {auth}") from None
    wait_vms(sim, ids, ("poweredOn", 1), timeout=20)
    return policy


# --- drills -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("simulator", [{"vms": 6}], indirect=True)
def test_drill_holder_sigkilled_mid_batch(simulator: Simulator, cluster: Cluster, run_process: Any) -> None:
    """Two replicas; the holder dies mid-batch: the other takes over within 17 s and finishes."""
    ids = cycling_fleet(simulator, 6, shutdown_delay=2)
    vcenter = cluster.vcenter(simulator)
    replicas = [run_process(*FAST), run_process(*FAST)]
    cluster.apply(cycling_policy("batch", vcenter, maxConcurrent=2))
    holder = wait_holder(cluster, vcenter, replicas, timeout=30)
    wait_calls(simulator, "ReconfigVM_Task", 2)
    assert calls(simulator, "ReconfigVM_Task")["ReconfigVM_Task"] < 6, "the batch ended before the kill"

    holder.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = next(r for r in replicas if r is not holder)
    wait_holder(cluster, vcenter, [survivor], timeout=LEASE_TAKEOVER + 5)
    takeover = time.monotonic() - killed
    assert takeover <= LEASE_TAKEOVER, f"lease taken over after {takeover:.1f}s"

    policy = settle(cluster, simulator, ids, "batch", timeout=90, what="the batch finished")
    all_on_with_one_vtpm(simulator, ids)
    assert calls(simulator, "ReconfigVM_Task") == {"ReconfigVM_Task": 6}
    assert summary(policy).get("failed", 0) == 0
    print(f"takeover {takeover:.1f}s")


@pytest.mark.parametrize("point", ["after-shutdown", "after-reconfigure", "before-status-write"])
@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_drill_sigkill_at_crash_point(
    simulator: Simulator, cluster: Cluster, run_process: Any, point: str
) -> None:
    """Killed at the worst moments: after a restart the vTPM is there once, the VM on again, and
    remediatedTotal counts it exactly once."""
    ids = cycling_fleet(simulator, 1, shutdown_delay=0)
    vcenter = cluster.vcenter(simulator)
    cluster.apply(cycling_policy("crash", vcenter))
    crashing = run_process(*FAST, env={"VTPM_TEST_CRASH_AT": point})
    assert crashing.process.wait(timeout=60) == -signal.SIGKILL
    reached = calls(simulator, *CYCLE)

    run_process(*FAST)
    wait_vms(simulator, ids, ("poweredOn", 1), timeout=60)
    counts = calls(simulator, *CYCLE)
    assert counts["ShutdownGuest"] == 1 and counts["ReconfigVM_Task"] == 1, (reached, counts)
    policy = cluster.wait_for("crash", lambda p: summary(p).get("compliant") == 1, timeout=20)
    assert summary(policy).get("remediatedTotal") == 1, (reached, summary(policy))
    settled_in(cluster, "crash", 10)


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_drill_sigterm_mid_batch_as_in_a_rollout(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """The old pod gets SIGTERM while the new one waits: it exits within the grace period and the
    new holder leaves nothing off that was on, with no VM power-cycled twice."""
    ids = cycling_fleet(simulator, 4, shutdown_delay=6)  # guests still going down at the handover
    vcenter = cluster.vcenter(simulator)
    old = run_process(*FAST)
    cluster.apply(cycling_policy("rollout", vcenter, maxConcurrent=2))
    wait_holder(cluster, vcenter, [old], timeout=30)
    new = run_process(*FAST)
    wait_calls(simulator, "ShutdownGuest", 3)  # the second wave is shutting down

    old.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    code = old.process.wait(timeout=GRACE + 10)
    exited = time.monotonic() - stopped
    assert exited <= GRACE, f"exited after {exited:.1f}s"
    assert code == 0, code
    wait_holder(cluster, vcenter, [new], timeout=LEASE_TAKEOVER)
    takeover = time.monotonic() - stopped
    assert takeover <= exited + 5, f"handed over {takeover:.1f}s after SIGTERM: was the lease released?"

    settle(cluster, simulator, ids, "rollout", timeout=60, what="the batch finished under the new holder")
    all_on_with_one_vtpm(simulator, ids)
    assert calls(simulator, *CYCLE) == dict.fromkeys(CYCLE, 4)
    print(f"exit {exited:.1f}s, takeover {takeover:.1f}s")


@pytest.mark.parametrize("simulator", [{"vms": 5}], indirect=True)
def test_drill_api_server_stopped_for_30s_mid_batch(
    simulator: Simulator, cluster: Cluster, run_process: Any, control_plane: ControlPlane
) -> None:
    """The API server stops answering (SIGSTOP, as a partition looks to the operator) for 30 s:
    no change starts once the lease could not be renewed, the batch resumes under a lease, and no
    VM is power-cycled twice."""
    assert control_plane.pids, "needs the test's own control plane (its API server is paused)"
    apiserver = control_plane.pids[1]  # etcd, kube-apiserver, kube-controller-manager
    ids = cycling_fleet(simulator, 5, shutdown_delay=4)
    vcenter = cluster.vcenter(simulator)
    operator = run_process(*FAST)
    cluster.apply(cycling_policy("partition", vcenter, maxConcurrent=1))
    wait_holder(cluster, vcenter, [operator], timeout=30)
    wait_calls(simulator, "ShutdownGuest", 1)

    os.kill(apiserver, signal.SIGSTOP)
    try:
        time.sleep(10.5)  # the renew deadline (10 s) has passed since the last renewal for sure
        lost = calls(simulator, "ShutdownGuest", "ReconfigVM_Task", "PowerOffVM_Task")
        time.sleep(19.5)
        assert calls(simulator, "ShutdownGuest", "ReconfigVM_Task", "PowerOffVM_Task") == lost
    finally:
        os.kill(apiserver, signal.SIGCONT)
    assert lost["ShutdownGuest"] < 5, "the batch ended before the lease was lost"

    wait_holder(cluster, vcenter, [operator], timeout=30)
    settle(cluster, simulator, ids, "partition", timeout=120, what="the batch resumed")
    all_on_with_one_vtpm(simulator, ids)
    assert calls(simulator, *CYCLE) == dict.fromkeys(CYCLE, 5)


def _status_rbac(cluster: Cluster, kubectl: Any, repo: Path) -> tuple[str, dict[str, Any]]:
    """The shipped RBAC bound to a ServiceAccount of the test's namespace, its ClusterRole named
    after the namespace (deleted by the caller); returns that name and the ClusterRole."""
    unique = f"vtpm-operator-{cluster.namespace}"
    docs = [d for d in yaml.safe_load_all(kubectl("kustomize", str(repo / "deploy")).stdout) if d]
    role: dict[str, Any] = {}
    for doc in docs:
        if doc["kind"] not in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}:
            continue
        if doc["metadata"]["name"] != "vtpm-operator":
            continue
        doc["metadata"].pop("namespace", None)
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] = unique
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = unique
        if doc["kind"] == "ClusterRole":
            role = doc
        for subject in doc.get("subjects") or []:
            subject["namespace"] = cluster.namespace
        kubectl("apply", "-n", cluster.namespace, "-f", "-", input=yaml.safe_dump(doc))
    return unique, role


def _without_policy_status(role: dict[str, Any]) -> dict[str, Any]:
    rules = []
    for rule in role["rules"]:
        resources = [r for r in rule["resources"] if r != "vtpmpolicies/status"]
        if resources:
            rules.append({**rule, "resources": resources})
    assert rules != role["rules"], "the shipped ClusterRole grants no vtpmpolicies/status"
    return {**role, "rules": rules}


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_drill_status_write_refused(
    simulator: Simulator,
    cluster: Cluster,
    run_process: Any,
    kubectl: Any,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """RBAC for vtpmpolicies/status revoked while VMs are changed and one is refused once: the
    backoff holds (no extra power cycle), and the counts and events come out once it is restored."""
    from .test_vcenter import _service_account_kubeconfig

    repo = Path(__file__).resolve().parents[2]
    unique, role = _status_rbac(cluster, kubectl, repo)
    try:
        ids = cycling_fleet(simulator, 3, shutdown_delay=0)
        vcenter = cluster.vcenter(simulator)
        kubectl("apply", "-f", "-", input=yaml.safe_dump(_without_policy_status(role)))
        kubeconfig = _service_account_kubeconfig(cluster, control_plane, tmp_path / "sa.kubeconfig")
        operator = run_process("--retry-base", "4s", kubeconfig=kubeconfig)
        simulator.admin.inject_fault(method="ReconfigVM_Task", count=1, fault="GenericVmConfigFault")
        cluster.apply(cycling_policy("refused", vcenter, maxConcurrent=1))

        deadline = time.monotonic() + 60
        while fleet_state(simulator, ids) != dict.fromkeys(ids, ("poweredOn", 1)):
            assert time.monotonic() < deadline, fleet_state(simulator, ids)
            time.sleep(0.5)
        time.sleep(8)  # longer than two backoff steps: a retry that was not owed would show
        # The refused VM got its power back, and was cycled once more for the retry: 4 cycles.
        cycles = {"ShutdownGuest": 4, "ReconfigVM_Task": 4, "PowerOnVM_Task": 4}
        assert calls(simulator, *CYCLE) == cycles
        assert "remediatedTotal" not in summary(cluster.policy("refused")), "status was written"
        assert "403" in operator.log_text() or "Forbidden" in operator.log_text()

        kubectl("apply", "-f", "-", input=yaml.safe_dump(role))
        policy = settle(cluster, simulator, ids, "refused", timeout=60, what="status written again")
        assert summary(policy)["remediatedTotal"] == 3
        added = [e for e in cluster.events() if e.reason == "VTPMAdded"]
        assert added, [e.reason for e in cluster.events()]
        assert calls(simulator, *CYCLE) == cycles
    finally:
        kubectl("delete", "clusterrolebinding", unique, "--ignore-not-found")
        kubectl("delete", "clusterrole", unique, "--ignore-not-found")


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_drill_every_soap_call_2s_slower(simulator: Simulator, cluster: Cluster, run_process: Any) -> None:
    """A slow vCenter: the batch completes with no new login, nothing Failed, the lease held."""
    ids = cycling_fleet(simulator, 2, shutdown_delay=0)
    vcenter = cluster.vcenter(simulator)
    operator = run_process(*FAST)
    deadline = time.monotonic() + 60
    while simulator.admin.auth_counters().soap_logins == 0:  # logged in, before any policy
        assert time.monotonic() < deadline, cluster.vcenter_object(vcenter).get("status")
        time.sleep(0.5)
    simulator.admin.reset_auth_counters()
    simulator.admin.set_latency(soap_seconds=2)
    started = time.monotonic()
    cluster.apply(cycling_policy("slow", vcenter, maxConcurrent=2))

    seen_failed = 0
    deadline = time.monotonic() + 240
    while not compliant(2)(policy := cluster.policy("slow")):
        assert time.monotonic() < deadline, policy.get("status")
        seen_failed = max(seen_failed, summary(policy).get("failed", 0))
        assert lease_holder(cluster, vcenter) == operator.identity
        time.sleep(1)
    took = time.monotonic() - started
    simulator.admin.set_latency(soap_seconds=0)
    auth = simulator.admin.auth_counters()  # before the test's own logins to check the VMs
    all_on_with_one_vtpm(simulator, ids)
    assert seen_failed == 0
    # At most the first REST login (tags are read only once a policy wants them); no SOAP one.
    assert auth.soap_login_attempts == 0 and auth.rest_login_attempts <= 1, auth
    assert "not holding its lease" not in operator.log_text()
    print(f"batch under 2 s latency: {took:.1f}s")


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_drill_soap_and_rest_sessions_expired_mid_batch(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """Both sessions expire mid-batch: each is renewed once, nothing Failed."""
    ids = cycling_fleet(simulator, 4, shutdown_delay=2)
    vcenter = cluster.vcenter(simulator)
    run_process(*FAST)
    cluster.apply(cycling_policy("expiry", vcenter, maxConcurrent=1))
    wait_calls(simulator, "ReconfigVM_Task", 1)
    simulator.admin.reset_auth_counters()
    assert simulator.admin.expire_sessions() >= 1
    assert simulator.admin.expire_rest_sessions() >= 1

    seen_failed = 0
    deadline = time.monotonic() + 90
    while not compliant(4)(policy := cluster.policy("expiry")):
        assert time.monotonic() < deadline, policy.get("status")
        seen_failed = max(seen_failed, summary(policy).get("failed", 0))
        time.sleep(0.5)
    auth = simulator.admin.auth_counters()  # before the test's own logins to check the VMs
    all_on_with_one_vtpm(simulator, ids)
    assert seen_failed == 0
    assert (auth.soap_logins, auth.rest_logins) == (1, 1), auth
    assert calls(simulator, *CYCLE) == dict.fromkeys(CYCLE, 4)


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_drill_reconfigure_task_that_never_ends(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """vCenter accepts the cancel but the task runs on: cancelled at the deadline, the VM Failed
    with a message saying so, and no power-on until the task really ends."""
    ids = cycling_fleet(simulator, 1, shutdown_delay=0)
    vm = ids["vm-0"]
    simulator.admin.hang_next_reconfigure(vm, cancel="ignore")
    vcenter = cluster.vcenter(simulator)
    run_process("--task-timeout", "6s", "--retry-base", "2s")
    cluster.apply(cycling_policy("hang", vcenter))
    wait_calls(simulator, "ReconfigVM_Task", 1)
    submitted = time.monotonic()
    wait_calls(simulator, "CancelTask", 1, timeout=20)
    cancelled_after = time.monotonic() - submitted
    assert 5 <= cancelled_after <= 9, f"cancelled after {cancelled_after:.1f}s"

    failed = cluster.wait_for(
        "hang", lambda p: vm_rows(p).get("vm-0", {}).get("state") == "Failed", timeout=15, what="Failed"
    )
    message = vm_rows(failed)["vm-0"]["message"]
    assert "task" in message and "6s" in message, message
    time.sleep(4)  # longer than the retry base: still nothing while the task runs
    assert calls(simulator, "PowerOnVM_Task", "ReconfigVM_Task") == {
        "PowerOnVM_Task": 0,
        "ReconfigVM_Task": 1,
    }
    assert fleet_state(simulator, ids)["vm-0"] == ("poweredOff", 0)

    simulator.admin.finish_task(running_task(simulator, vm))
    settle(cluster, simulator, ids, "hang", timeout=60, what="the retry after the task ended")
    all_on_with_one_vtpm(simulator, ids)
    assert calls(simulator, "ReconfigVM_Task") == {"ReconfigVM_Task": 2}
    print(f"cancelled after {cancelled_after:.1f}s")


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_drill_vm_vcenter_refuses_every_time(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """A refusal the checks do not model: power-cycled exactly K (3) times, then Failed with
    RetriesExhausted and vCenter's message; the retry annotation earns it another try."""
    ids = cycling_fleet(simulator, 1, shutdown_delay=0)
    simulator.admin.inject_fault(method="ReconfigVM_Task", count=1000, fault="GenericVmConfigFault")
    vcenter = cluster.vcenter(simulator)
    run_process("--retry-base", "1s", "--retry-limit", "3")
    cluster.apply(cycling_policy("refused", vcenter))

    exhausted = cluster.wait_for(
        "refused",
        lambda p: vm_rows(p).get("vm-0", {}).get("reasons") == ["RetriesExhausted"],
        timeout=60,
        what="RetriesExhausted",
    )
    row = vm_rows(exhausted)["vm-0"]
    assert row["state"] == "Failed" and "3 times" in row["message"], row
    time.sleep(6)  # past the next backoff step (4 s): no fourth try
    assert calls(simulator, *CYCLE) == dict.fromkeys(CYCLE, 3)
    assert fleet_state(simulator, ids)["vm-0"] == ("poweredOn", 0)

    simulator.admin.clear_faults()
    cluster.kubectl("annotate", "vtpm", "refused", "-n", cluster.namespace, "vtpm-operator.io/retry=all")
    settle(cluster, simulator, ids, "refused", timeout=60, what="the try the annotation asked for")
    all_on_with_one_vtpm(simulator, ids)
    assert calls(simulator, *CYCLE) == dict.fromkeys(CYCLE, 4)


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_drill_vcenter_restarts_for_60s_mid_batch(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """The endpoint stops for 60 s and its sessions die with it: no queued VM turns Failed, at most
    one login per backoff step, and afterwards every queued VM is changed exactly once, none left off."""
    ids = cycling_fleet(simulator, 4, shutdown_delay=2)
    vcenter = cluster.vcenter(simulator)
    run_process(*FAST)
    cluster.apply(cycling_policy("restart", vcenter, maxConcurrent=1))
    wait_calls(simulator, "ReconfigVM_Task", 1)
    simulator.admin.stop_endpoint()
    simulator.admin.expire_sessions()
    simulator.admin.expire_rest_sessions()
    simulator.admin.reset_auth_counters()
    before = calls(simulator, *CYCLE)

    down = time.monotonic()
    while time.monotonic() - down < 60:
        rows = vm_rows(cluster.policy("restart"))
        assert not [n for n, r in rows.items() if r["state"] == "Failed"], rows
        time.sleep(1)
    during = simulator.admin.auth_counters()
    simulator.admin.start_endpoint()

    cluster.wait_for("restart", compliant(4), timeout=90, what="the batch after vCenter returned")
    auth = simulator.admin.auth_counters()  # before the test's own logins to check the VMs
    all_on_with_one_vtpm(simulator, ids)
    assert during.soap_login_attempts == 0, during  # nothing got through while it was down
    assert (auth.soap_logins, auth.rest_logins) == (1, 1), auth
    assert calls(simulator, "ReconfigVM_Task") == {"ReconfigVM_Task": 4}, before


@pytest.mark.parametrize("simulator", [{"vms": 40}], indirect=True)
def test_drill_a_replica_starting_leaves_the_holders_statuses_alone(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """A replica that starts (a scale-up, a rollout's new pod) lists everything before it acts. Of
    20 policies, none may flap while it does; and a status that someone else replaced is written
    again by the holder within seconds, not at the next refresh (it tells a foreign write by the
    conditions: operator/vtpm_operator/engine/echoes.py)."""
    build_fleet(simulator, [VMSpec(f"vm-{i}") for i in range(40)])
    vcenter = cluster.vcenter(simulator)
    names = [f"audit-{i:02}" for i in range(20)]
    for name in names:
        cluster.apply(policy_manifest(name, vcenter, mode="Audit"))
    holder = run_process()
    for name in names:
        cluster.wait_for(name, lambda p: settled(p) and summary(p).get("nonCompliant") == 40, timeout=90)
    ready = {name: condition(policy, "Ready") for name, policy in cluster.policies().items()}
    # Audit: every VM lacks a vTPM, so Ready is False with NotCompliant (what the holder says).
    assert {(c["status"], c["reason"]) for c in ready.values()} == {("False", "NotCompliant")}, ready

    second = run_process()
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + 60
    while "seeded with" not in second.log_text():
        assert time.monotonic() < deadline, "the second replica never seeded"
        seen |= {(n, *_ready_of(p)) for n, p in cluster.policies().items()}
        time.sleep(0.1)
    for _ in range(25):  # its first writes would follow the seed at once; watch well past them
        seen |= {(n, *_ready_of(p)) for n, p in cluster.policies().items()}
        time.sleep(0.2)
    assert seen == {(n, "False", "NotCompliant") for n in names}, sorted(seen)
    # The witness that sees every write, however short the flap it made: the second wrote none.
    assert second.metric("vtpm_operator_status_writes_total") == 0
    assert holder.metric("vtpm_operator_status_writes_total", outcome="success") > 0
    assert lease_holder(cluster, vcenter) == holder.identity

    # Replaced just after the holder's own refresh of it (every 50 s): only the heal can write it
    # again within the 10 s below.
    synced = cluster.policy("audit-07")["status"]["lastSyncTime"]
    cluster.wait_for("audit-07", lambda p: p["status"]["lastSyncTime"] != synced, timeout=70)
    replaced = {**ready["audit-07"], "reason": "VCenterNotFound", "message": "not ours"}
    patched: Any = client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
        "vtpm-operator.io",
        "v1alpha1",
        cluster.namespace,
        "vtpmpolicies",
        "audit-07",
        {"status": {"conditions": [replaced]}},
    )
    assert _ready_of(patched) == ("False", "VCenterNotFound")
    cluster.wait_for(
        "audit-07",
        lambda p: _ready_of(p) == ("False", "NotCompliant"),
        timeout=10,
        what="the holder's status written again",
    )


def _ready_of(policy: dict[str, Any]) -> tuple[str, str]:
    ready = condition(policy, "Ready")
    return str(ready.get("status")), str(ready.get("reason"))
