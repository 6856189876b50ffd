"""The vCenter simulator over the wire: TLS, login, inventory reads, tags, guest OS, hosts."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pyVim.connect import SmartConnect
from pyVmomi import vim

from testbed.vcsim import Simulator, connect, disconnect, rest_login, retrieve_all, retrieve_one

VM_PROPS = ["config.firmware", "config.version", "config.guestId", "runtime.powerState"]
TAGGING = "/com/vmware/cis/tagging"


@pytest.fixture
def si(simulator: Simulator) -> Iterator[Any]:
    si = connect(simulator)
    yield si
    disconnect(si)


def test_reads_all_vms_in_one_property_collector_call_over_verified_tls(simulator: Simulator) -> None:
    si = connect(simulator)
    try:
        content = si.RetrieveContent()
        assert content.about.apiType == "VirtualCenter"
        assert content.about.apiVersion == "8.0.2.0"
        assert isinstance(content.cryptoManager, vim.encryption.CryptoManagerKmip)
        before = simulator.admin.call_counts().get("RetrievePropertiesEx", 0)

        vms = retrieve_all(si, vim.VirtualMachine, VM_PROPS)

        after = simulator.admin.call_counts().get("RetrievePropertiesEx", 0)
        assert after - before == 1
        assert len(vms) == 4
        for props in vms.values():
            assert set(props) == set(VM_PROPS)
            assert props["config.version"].startswith("vmx-")
            assert props["runtime.powerState"] in ("poweredOn", "poweredOff")
    finally:
        disconnect(si)


def test_tls_is_verified_against_the_simulator_ca(simulator: Simulator) -> None:
    # A context that does not trust the simulator's CA must refuse the server.
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(
            host=simulator.host,
            port=simulator.port,
            user=simulator.username,
            pwd=simulator.password,
            sslContext=ssl.create_default_context(cafile=None, capath="/nonexistent"),
        )


def test_wrong_password_is_refused_on_soap_and_rest(simulator: Simulator) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        connect(simulator, password=simulator.password + "x")
    with pytest.raises(vim.fault.InvalidLogin):
        connect(simulator, username="nobody@vsphere.local")
    resp = requests.post(
        f"{simulator.rest_url}/com/vmware/cis/session",
        auth=(simulator.username, simulator.password + "x"),
        verify=str(simulator.ca_file),
        timeout=10,
    )
    assert resp.status_code == 401
    # the right password works on both
    disconnect(connect(simulator))
    assert rest_login(simulator).headers["vmware-api-session-id"]


def _create_category(http: requests.Session, sim: Simulator, name: str, cardinality: str) -> str:
    spec = {"name": name, "description": "", "cardinality": cardinality, "associable_types": []}
    resp = http.post(f"{sim.rest_url}{TAGGING}/category", json={"create_spec": spec}, timeout=10)
    resp.raise_for_status()
    return str(resp.json()["value"])


def _create_tag(http: requests.Session, sim: Simulator, category: str, name: str) -> str:
    spec = {"name": name, "description": "", "category_id": category}
    resp = http.post(f"{sim.rest_url}{TAGGING}/tag", json={"create_spec": spec}, timeout=10)
    resp.raise_for_status()
    return str(resp.json()["value"])


def _attach(http: requests.Session, sim: Simulator, tag: str, vm: str) -> requests.Response:
    return http.post(
        f"{sim.rest_url}{TAGGING}/tag-association/id:{tag}?~action=attach",
        json={"object_id": {"type": "VirtualMachine", "id": vm}},
        timeout=10,
    )


def _attached(http: requests.Session, sim: Simulator, tag: str) -> list[str]:
    resp = http.post(
        f"{sim.rest_url}{TAGGING}/tag-association/id:{tag}?~action=list-attached-objects",
        json={},
        timeout=10,
    )
    resp.raise_for_status()
    return sorted(o["id"] for o in resp.json()["value"] or [])


def test_tags_attach_and_list_over_rest(simulator: Simulator, si: Any) -> None:
    vms = sorted(retrieve_all(si, vim.VirtualMachine, ["name"]))
    http = rest_login(simulator)
    category = _create_category(http, simulator, "vtpm", "MULTIPLE")
    tag = _create_tag(http, simulator, category, "required")
    unused = _create_tag(http, simulator, category, "unused")

    for vm in vms[:2]:
        assert _attach(http, simulator, tag, vm).status_code == 200

    assert _attached(http, simulator, tag) == sorted(vms[:2])
    assert _attached(http, simulator, unused) == []  # the simulator answers null for empty lists


def test_tag_cardinality_and_object_existence_are_enforced(simulator: Simulator, si: Any) -> None:
    vm = sorted(retrieve_all(si, vim.VirtualMachine, ["name"]))[0]
    http = rest_login(simulator)
    single = _create_category(http, simulator, "policy", "SINGLE")
    first = _create_tag(http, simulator, single, "a")
    second = _create_tag(http, simulator, single, "b")
    multi = _create_category(http, simulator, "labels", "MULTIPLE")
    label1 = _create_tag(http, simulator, multi, "x")
    label2 = _create_tag(http, simulator, multi, "y")

    assert _attach(http, simulator, first, vm).status_code == 200
    refused = _attach(http, simulator, second, vm)
    assert refused.status_code == 400
    assert refused.json()["type"] == "com.vmware.vapi.std.errors.invalid_argument"
    assert _attached(http, simulator, second) == []
    assert _attach(http, simulator, first, vm).status_code == 200  # same tag again is idempotent

    assert _attach(http, simulator, label1, vm).status_code == 200
    assert _attach(http, simulator, label2, vm).status_code == 200  # MULTIPLE allows both

    missing = _attach(http, simulator, label1, "vm-999999")
    assert missing.status_code == 403
    assert "vm-999999" not in _attached(http, simulator, label1)


TPM_GUESTS = [
    "windows9_64Guest",
    "windows11_64Guest",
    "windows2019srv_64Guest",
    "windows2019srvNext_64Guest",
    "windows2022srvNext_64Guest",
    "rhel8_64Guest",
    "rhel9_64Guest",
    "ubuntu64Guest",
    "sles15_64Guest",
    "centos8_64Guest",
    "other5xLinux64Guest",
]
NO_TPM_GUESTS = ["winXPProGuest", "otherGuest", "otherGuest64", "rhel6Guest", "ubuntuGuest", "dosGuest"]


def test_query_config_option_ex_reports_tpm20_support_per_guest(si: Any) -> None:
    vm = next(iter(retrieve_all(si, vim.VirtualMachine, ["environmentBrowser"]).values()))
    browser = vm["environmentBrowser"]
    answers = {}
    for guest in TPM_GUESTS + NO_TPM_GUESTS:
        option = browser.QueryConfigOptionEx(
            spec=vim.EnvironmentBrowser.ConfigOptionQuerySpec(guestId=[guest])
        )
        matching = [d for d in option.guestOSDescriptor if d.id == guest]
        assert len(matching) == 1, guest
        answers[guest] = matching[0].supportsTPM20
    assert answers == {g: True for g in TPM_GUESTS} | {g: False for g in NO_TPM_GUESTS}


@pytest.mark.parametrize("simulator", [{"hosts": 2, "standalone_hosts": 2}], indirect=True)
def test_host_product_versions_are_settable_per_host(simulator: Simulator, si: Any) -> None:
    hosts = sorted(retrieve_all(si, vim.HostSystem, ["name"]))
    assert len(hosts) == 4
    defaults = retrieve_all(si, vim.HostSystem, ["config.product", "summary.config.product"])
    assert {h["config.product"].version for h in defaults.values()} == {"8.0.2"}
    assert {h["summary.config.product"].build for h in defaults.values()} == {"22380479"}

    wanted = dict(zip(hosts, [("6.5.0", "4564106"), ("6.7.0", "8169922"), ("7.0.1", "16850804"),
                              ("7.0.2", "17630552")], strict=True))  # fmt: skip
    for moid, (version, build) in wanted.items():
        simulator.admin.set_host_product(moid, version, build)

    got = retrieve_all(si, vim.HostSystem, ["config.product", "summary.config.product"])
    for moid, (version, build) in wanted.items():
        assert (got[moid]["config.product"].version, got[moid]["config.product"].build) == (version, build)
        summary = got[moid]["summary.config.product"]
        assert (summary.version, summary.build) == (version, build)
    one = retrieve_one(si, vim.HostSystem(hosts[3], si._stub), ["config.product.version"])
    assert one["config.product.version"] == "7.0.2"
