"""The vSphere adapter over the wire: live inventory, tag map, sessions, proof reads."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from testbed.fleet import CATEGORY, EXEMPT_TAG, REQUIRED_TAG, VMSpec, build_fleet
from testbed.vcsim import Simulator, connect, disconnect, retrieve_all, wait_task
from vtpm_operator.api import parse_policy
from vtpm_operator.connection import Credentials, Endpoint
from vtpm_operator.facts import KEY_NOT_READ, PowerState
from vtpm_operator.policy import Policy, TagRef
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.vsphere import inventory
from vtpm_operator.vsphere.changes import ChangeOps
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.live import Delta, LiveInventory
from vtpm_operator.vsphere.session import VCenterSession
from vtpm_operator.vsphere.tags import TagMap


def policy_for(sim: Simulator, **overrides: object) -> Policy:
    """The API's defaults (from its parser), selecting REQUIRED_TAG and exempting EXEMPT_TAG."""
    spec = {
        "vcenterRef": {"name": "sim"},
        "selector": {
            "tags": [{"category": CATEGORY, "name": REQUIRED_TAG}],
            "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
        },
    }
    return dataclasses.replace(parse_policy(spec), **overrides)  # type: ignore[arg-type]


def session_for(sim: Simulator, *, password: str | None = None, ca_pem: str | None = None) -> VCenterSession:
    endpoint = Endpoint(sim.server, ca_pem=ca_pem if ca_pem is not None else sim.ca_file.read_text())
    return VCenterSession(endpoint, Credentials(sim.username, password or sim.password))


def client_for(sim: Simulator, *, password: str | None = None, ca_pem: str | None = None) -> VSphereClient:
    return VSphereClient(session_for(sim, password=password, ca_pem=ca_pem))


def all_vm_ids(sim: Simulator) -> set[str]:
    """Every VM the simulator holds, read on a session of the test's own."""
    si = connect(sim)
    try:
        return set(retrieve_all(si, vim.VirtualMachine, ["name"]))
    finally:
        disconnect(si)


def live_for(session: VCenterSession, page_objects: int = 1000) -> LiveInventory:
    return LiveInventory(session, ChangeOps(session).marker_key, page_objects)


def poll_until_ended(live: LiveInventory, task_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (task_id in live.tasks and live.tasks[task_id].ended):
        assert time.monotonic() < deadline, live.tasks
        live.poll(1)


@pytest.mark.parametrize("simulator", [{"vms": 20}], indirect=True)
def test_the_fill_pages_through_a_fleet_larger_than_one_page(simulator: Simulator) -> None:
    """Pages of 7 objects (maxObjectUpdates), as vCenter answers at most a page a call: without the
    loop over `truncated`, the inventory would hold the first page only."""
    paged_simulator = simulator
    session = session_for(paged_simulator)
    live = live_for(session, page_objects=7)
    try:
        paged_simulator.admin.reset_call_counts()
        delta = live.poll(1)
    finally:
        live.close()
        session.close()
    assert delta.filled
    expected = all_vm_ids(paged_simulator)
    assert len(expected) > 7
    assert set(live.vms) == expected
    assert paged_simulator.admin.call_counts()["WaitForUpdatesEx"] >= 3  # 20 VMs + hosts in pages of 7


@pytest.mark.parametrize("simulator", [{"vms": 20}], indirect=True)
def test_each_fill_page_is_converted_while_the_next_is_asked_for(simulator: Simulator) -> None:
    """The next page is asked for as soon as a page's version is read from its first bytes: were
    the simulator's answer (written as vCenter writes it) not recognised, the fill would go on one
    page after another, right but slower."""
    session = session_for(simulator)
    live = live_for(session, page_objects=7)
    asked_ahead: list[bool] = []
    take_in = live._take_in

    def watched(page: bytes, delta: Delta) -> bool:
        asked_ahead.append(live._ahead is not None)
        return take_in(page, delta)

    live._take_in = watched  # type: ignore[method-assign]
    try:
        assert live.poll(1).filled
    finally:
        live.close()
        session.close()
    assert len(live.vms) == 20
    # Every fill page was converted with the next call under way; the last one's follower is a
    # delta with no wait, taken in by the same poll, and is itself converted with none ahead.
    assert len(asked_ahead) >= 4 and all(asked_ahead[:-1]) and not asked_ahead[-1], asked_ahead


@pytest.mark.parametrize("simulator", [{"vms": 20}], indirect=True)
def test_a_session_that_expires_between_fill_pages_costs_one_login_and_one_refill(
    simulator: Simulator,
) -> None:
    """The page asked ahead meets the expiry (or the one after it does): the inventory renews the
    session once, fills again on a fresh collector, and holds every VM, none taken for gone."""
    session = session_for(simulator)
    live = live_for(session, page_objects=7)
    take_in = live._take_in
    pages = 0

    def expiring_after_the_first(page: bytes, delta: Delta) -> bool:
        nonlocal pages
        pages += 1
        if pages == 1:
            simulator.admin.expire_sessions()
        return take_in(page, delta)

    live._take_in = expiring_after_the_first  # type: ignore[method-assign]
    try:
        simulator.admin.reset_call_counts()
        delta = live.poll(1)
    finally:
        live.close()
        session.close()
    views = simulator.admin.call_counts()["CreateContainerView"]  # before this test's own, below
    expected = all_vm_ids(simulator)
    assert delta.filled and set(live.vms) == expected and len(expected) == 20
    assert session.logins == 2
    assert views == 2  # the first fill, and one more


def test_two_calls_that_meet_one_expired_session_renew_it_once(simulator: Simulator) -> None:
    """The fleet's privileges are read beside the other reads of a full read: both calls meet the
    expiry; the second to notice must keep the session the first made, not drop it in turn."""
    session = session_for(simulator)
    session.soap("RetrieveContent", lambda content: content.about.instanceUuid)
    arrived, expired = threading.Barrier(2), threading.Barrier(2)
    first_calls = iter(range(2))  # the two calls' first attempts; a retry passes straight on

    def about_after_expiry(content: Any) -> str:
        if next(first_calls, None) is not None:
            if arrived.wait(timeout=10) == 0:  # both hold the content of one session: expire it
                simulator.admin.expire_sessions()
            expired.wait(timeout=10)
        return str(content.sessionManager.currentSession.key)

    try:
        with ThreadPoolExecutor(2) as pool:
            keys = list(pool.map(lambda _: session.soap("CurrentSession", about_after_expiry), range(2)))
    finally:
        session.close()
    assert keys[0] == keys[1]  # both answered in the one fresh session
    assert session.logins == 2


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_after_the_fill_only_changes_arrive(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("a", vtpm=True), VMSpec("b", powered_on=True)])
    session = session_for(simulator)
    live = live_for(session)
    try:
        live.poll(1)
        assert live.vms[fleet.ids["a"]].vtpm_device_key == KEY_NOT_READ  # summary.config.tpmPresent
        assert live.vms[fleet.ids["b"]].power_state is PowerState.ON
        assert live.vms[fleet.ids["b"]].vtpm_device_key is None
        si = connect(simulator)
        try:
            wait_task(si, vim.VirtualMachine(fleet.ids["b"], si._stub).PowerOffVM_Task())
        finally:
            disconnect(si)
        delta = live.poll(2)
        while fleet.ids["b"] not in delta.vms:
            delta = live.poll(2)
        assert delta.vms == {fleet.ids["b"]} and not delta.filled
        assert live.vms[fleet.ids["b"]].power_state is PowerState.OFF
        proof = inventory.read_proof(session, [fleet.ids["a"]], None)[fleet.ids["a"]]
        assert proof.vtpm_device_key not in (None, KEY_NOT_READ)  # the device list, read fresh
    finally:
        live.close()
        session.close()


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_tag_names_are_looked_up_once(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b", tags=())])
    session = session_for(simulator)
    tags = TagMap(session)
    wanted = [TagRef(CATEGORY, REQUIRED_TAG), TagRef(CATEGORY, "typo")]
    try:
        found, missing = tags.ids(wanted)
        assert missing == [TagRef(CATEGORY, "typo")]
        tags.refresh(found.values())
        assert tags.vms_with(found[TagRef(CATEGORY, REQUIRED_TAG)]) == {fleet.ids["a"]}
        simulator.admin.reset_call_counts()
        assert tags.ids(wanted) == (found, missing)  # from the cache, the missing one included
        tags.refresh(found.values())
        counts = simulator.admin.call_counts()
        assert {op: n for op, n in counts.items() if "tagging" in op} == {
            "POST tagging/tag-association:list-attached-objects-on-tags": 1
        }
    finally:
        session.close()


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_expired_session_is_renewed_once(simulator: Simulator) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vsphere = client_for(simulator)
    try:
        vsphere.read_inventory(policy_for(simulator))
        assert simulator.admin.expire_sessions() >= 1
        simulator.admin.reset_call_counts()
        inventory = vsphere.read_inventory(policy_for(simulator))
    finally:
        vsphere.close()
    assert len(inventory.vms) == 1
    assert simulator.admin.call_counts()["Login"] == 1


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_stopped_endpoint_is_unreachable_then_recovers(simulator: Simulator) -> None:
    build_fleet(simulator, [VMSpec("a")])
    vsphere = client_for(simulator)
    try:
        vsphere.read_inventory(policy_for(simulator))
        simulator.admin.stop_endpoint()
        with pytest.raises(PolicyProblem) as problem:
            vsphere.read_inventory(policy_for(simulator))
        assert problem.value.reason is ProblemReason.VCENTER_UNREACHABLE
        assert problem.value.transient
        simulator.admin.start_endpoint()
        assert len(vsphere.read_inventory(policy_for(simulator)).vms) == 1
    finally:
        vsphere.close()


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_wrong_password_and_untrusted_certificate_are_named(simulator: Simulator, tmp_path: Path) -> None:
    with pytest.raises(PolicyProblem) as refused:
        client_for(simulator, password="not-it").read_inventory(policy_for(simulator))
    assert refused.value.reason is ProblemReason.AUTHENTICATION_FAILED
    assert "not-it" not in refused.value.message
    from testbed.vcsim import make_tls

    other_ca, _, _ = make_tls(tmp_path / "other")
    with pytest.raises(PolicyProblem) as untrusted:
        client_for(simulator, ca_pem=other_ca.read_text()).read_inventory(policy_for(simulator))
    assert untrusted.value.reason is ProblemReason.CERTIFICATE_NOT_TRUSTED
    assert not untrusted.value.transient


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_a_task_watched_after_the_session_expired_costs_one_login_and_no_fault(simulator: Simulator) -> None:
    """The task filter belongs to the collector of the dead session: asking it again on the fresh
    session would fail a second time, drop the fresh session and report AuthenticationFailed."""
    fleet = build_fleet(simulator, [VMSpec("a", powered_on=True)])
    session = session_for(simulator)
    live = live_for(session)
    try:
        assert live.poll(0).filled
        task_id = ChangeOps(session).power_off(fleet.ids["a"])
        assert simulator.admin.expire_sessions() >= 1
        simulator.admin.reset_call_counts()
        live.watch_tasks({task_id})  # meets NotAuthenticated on the old collector
        poll_until_ended(live, task_id)
    finally:
        live.close()
        session.close()
    assert live.tasks[task_id].state == "success"
    assert simulator.admin.call_counts()["Login"] == 1


@pytest.mark.parametrize("simulator", [{"vms": 3}], indirect=True)
def test_fleet_privileges_name_what_is_missing_on_each_vm_and_on_its_folder(simulator: Simulator) -> None:
    """One HasPrivilegeOnEntities for the fleet, its answer read as XML: a role without
    Cryptographer.Encrypt on a folder shows on its VM, one without EncryptNew on the folder too."""
    fleet = build_fleet(simulator, [VMSpec("restricted"), VMSpec("free")])
    si = connect(simulator)
    try:
        datacenter = si.content.rootFolder.childEntity[0]
        folder = datacenter.vmFolder.CreateFolder("no-encrypt")
        vm = vim.VirtualMachine(fleet.ids["restricted"], si._stub)
        wait_task(si, folder.MoveIntoFolder_Task([vm]))
    finally:
        disconnect(si)
    session = session_for(simulator)
    live = live_for(session)
    try:
        live.poll(0)
        folder_of = {vm_id: live.vms[vm_id].folder_id for vm_id in fleet.ids.values()}
        everything = inventory.fleet_privileges(session, folder_of)  # an answer that refuses nothing
        lacking = {"Cryptographer.Encrypt", "Cryptographer.EncryptNew"}
        simulator.admin.create_role("NoEncrypt", sorted(set(simulator.admin.privileges()) - lacking))
        simulator.admin.set_permission(folder._moId, simulator.username, "NoEncrypt", propagate=True)
        missing = inventory.fleet_privileges(session, folder_of)
    finally:
        live.close()
        session.close()
    assert folder_of[fleet.ids["restricted"]] == folder._moId
    assert everything == dict.fromkeys(fleet.ids.values(), frozenset())
    assert missing == {fleet.ids["restricted"]: frozenset(lacking), fleet.ids["free"]: frozenset()}


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_tasks_forgotten_and_watched_after_the_session_expired_cost_one_login(simulator: Simulator) -> None:
    """Destroying the old task's filter meets the expiry first and renews the session; the new
    filter, on the old collector, must then not be tried on the fresh session (that failed, and
    dropped the fresh session too: two logins)."""
    fleet = build_fleet(simulator, [VMSpec("a", powered_on=True), VMSpec("b", powered_on=True)])
    session = session_for(simulator)
    live = live_for(session)
    ops = ChangeOps(session)
    try:
        assert live.poll(0).filled
        first = ops.power_off(fleet.ids["a"])
        live.watch_tasks({first})
        second = ops.power_off(fleet.ids["b"])
        assert simulator.admin.expire_sessions() >= 1
        simulator.admin.reset_call_counts()
        live.watch_tasks({second})  # forgets the first, then watches the second
        poll_until_ended(live, second)
    finally:
        live.close()
        session.close()
    assert live.tasks[second].state == "success"
    assert simulator.admin.call_counts()["Login"] == 1
