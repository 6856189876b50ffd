"""`vtpm-operator audit`: a read-only report against the real simulator (and the real API server for
--from-policy), as table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pyVmomi import vim

from testbed.fleet import CATEGORY, EXEMPT_TAG, MIXED_FLEET, REQUIRED_TAG, Fleet, build_fleet, specs_of
from testbed.kube import ControlPlane
from testbed.vcsim import Simulator, connect, disconnect, retrieve_all
from vtpm_operator import cli

CLI = Path(sys.executable).with_name("vtpm-operator")
SELECTION = ("--tag", f"{CATEGORY}/{REQUIRED_TAG}", "--exclude-tag", f"{CATEGORY}/{EXEMPT_TAG}")
CSV_HEADER = [
    "vcenter", "vm_name", "vm_id", "state", "reasons", "message",
    "host", "guest_os", "hardware_version", "firmware", "power_state",
]  # fmt: skip


def audit(
    sim: Simulator, *extra: str, password: str | None = None, selection: tuple[str, ...] = SELECTION
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CLI), "audit", "--server", sim.server, "--username", sim.username,
            "--ca-file", str(sim.ca_file), *selection, *extra,
        ],
        env={**os.environ, "VTPM_PASSWORD": password or sim.password},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def expected_state(state: str, has_vtpm: bool) -> str:
    """Audit changes nothing: a VM the operator would change (now, or once another's task ends) is
    NonCompliant."""
    return "NonCompliant" if (state == "Compliant" and not has_vtpm) or state == "Pending" else state


@pytest.mark.parametrize("simulator", [{"vms": 14, "standalone_hosts": 1}], indirect=True)
def test_audit_prints_every_verdict_and_changes_nothing(simulator: Simulator) -> None:
    build_fleet(simulator, specs_of(MIXED_FLEET))
    simulator.admin.reset_call_counts()

    table = audit(simulator)
    as_json = audit(simulator, "--output", "json")

    assert table.returncode == 1, table.stderr  # not every VM complies
    assert as_json.returncode == 1, as_json.stderr
    rows = {row["name"]: row for row in json.loads(as_json.stdout)["vms"]}
    for spec, state, reasons in MIXED_FLEET:
        if state in ("Excluded", "NotSelected"):
            assert spec.name not in rows
        else:
            assert rows[spec.name]["state"] == expected_state(state, spec.vtpm)
            assert set(rows[spec.name]["reasons"]) == set(reasons)
            assert spec.name in table.stdout
            assert rows[spec.name]["vcenter"] == simulator.server
            assert rows[spec.name]["guest_os"] == spec.guest
    assert "HostVersionTooOld" in table.stdout and "win10-many" in table.stdout
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_audit_names_a_refused_login(simulator: Simulator) -> None:
    result = audit(simulator, password="wrong")
    assert result.returncode == 2
    assert "AuthenticationFailed" in result.stderr
    assert "wrong" not in result.stderr.replace("AuthenticationFailed", "")


# --- the full report of a large inventory, as CSV --------------------------------------------------

LARGE = 1000


def tag_all_others(sim: Simulator, fleet: Fleet) -> set[str]:
    """Tag every VM the fleet did not shape with the required tag, in one REST call; their names."""
    si = connect(sim)
    try:
        names = {moid: p["name"] for moid, p in retrieve_all(si, vim.VirtualMachine, ["name"]).items()}
    finally:
        disconnect(si)
    others = {moid for moid in names if moid not in fleet.ids.values()}
    fleet.rest(
        "POST",
        f"/rest/com/vmware/cis/tagging/tag-association/id:{fleet.tag_ids[REQUIRED_TAG]}"
        "?~action=attach-tag-to-multiple-objects",
        {"object_ids": [{"id": moid, "type": "VirtualMachine"} for moid in sorted(others)]},
    )
    return {names[moid] for moid in others}


@pytest.mark.parametrize("simulator", [{"vms": LARGE, "standalone_hosts": 1}], indirect=True)
def test_audit_csv_reports_every_vm_of_a_large_inventory_with_progress(simulator: Simulator) -> None:
    fleet = build_fleet(simulator, specs_of(MIXED_FLEET))
    others = tag_all_others(simulator, fleet)
    # vCenter answers the bulk read slowly, as a big one does: the progress line must show meanwhile.
    simulator.admin.inject_fault(method="RetrievePropertiesEx", hang_seconds=2.5, count=1)

    result = audit(simulator, "--output", "csv")

    assert result.returncode == 1, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == CSV_HEADER
    rows = {row[1]: dict(zip(CSV_HEADER, row, strict=True)) for row in table[1:]}
    selected = {spec.name for spec, state, _ in MIXED_FLEET if state not in ("Excluded", "NotSelected")}
    assert set(rows) == selected | others
    assert len(table) - 1 == len(rows)  # one row per VM, none twice
    for spec, state, reasons in MIXED_FLEET:
        if spec.name not in selected:
            continue
        row = rows[spec.name]
        assert row["vcenter"] == simulator.server and row["vm_id"] == fleet.ids[spec.name]
        assert row["state"] == expected_state(state, spec.vtpm)
        assert set(filter(None, row["reasons"].split(";"))) == set(reasons)
        assert (row["guest_os"], row["hardware_version"], row["firmware"]) == (
            spec.guest, spec.version, spec.firmware,
        )  # fmt: skip
        assert row["power_state"] == ("poweredOn" if spec.powered_on else "poweredOff")
        assert row["host"]  # the host's name, not its id
        assert not row["host"].startswith("host-")
    assert all(rows[name]["state"] and rows[name]["host"] for name in others)

    progress = [line for line in result.stderr.splitlines() if "reading the inventory of" in line]
    assert progress[0] == f"audit: reading the inventory of {simulator.server}..."
    assert len(progress) >= 3, result.stderr  # the first line, then one a second during the 2.5 s hang
    assert f"audit: {len(rows)} VMs selected, 1 excluded" in result.stderr


# --- --from-policy: the selection from a VTPMPolicy, with nothing but `get` on it ---------------------

GROUP, VERSION, PLURAL = "vtpm-operator.io", "v1alpha1", "vtpmpolicies"


def policy_body(name: str) -> dict[str, Any]:
    # Both spellings of the connection, so that this body fits the CRD before and after the move to a
    # cluster-scoped VCenter (issue 7): each schema prunes the field it does not know.
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VTPMPolicy",
        "metadata": {"name": name},
        "spec": {
            "vcenterRef": {"name": "lab"},
            "vcenter": {"server": "elsewhere.example.com", "credentialsSecret": "unused"},
            "selector": {
                "tags": [{"category": CATEGORY, "name": REQUIRED_TAG}],
                "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
            },
            "vtpm": "Present",
            "mode": "Enforce",
        },
    }


@pytest.fixture
def reader_kubeconfig(
    kube_api: client.ApiClient, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[tuple[Path, str]]:
    """A ServiceAccount allowed only `get` on VTPMPolicies in ``namespace``; its kubeconfig and name."""
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "auditor"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "vtpm-policy-reader"},
            "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "auditor"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "vtpm-policy-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": namespace}],
        },
    )
    token = service_account_token(core, namespace, "auditor")
    kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": "admin", "user": {"token": token}}]  # same context, the SA's token
    path = tmp_path / "auditor.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    yield path, "auditor"


def service_account_token(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """1.20's token controller puts a token Secret beside each ServiceAccount."""
    import base64

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for secret in core.list_namespaced_secret(namespace).items:
            annotations = secret.metadata.annotations or {}
            if (
                secret.type == "kubernetes.io/service-account-token"
                and annotations.get("kubernetes.io/service-account.name") == name
                and secret.data
            ):
                return base64.b64decode(secret.data["token"]).decode()
        time.sleep(0.2)
    raise AssertionError(f"no token Secret for ServiceAccount {namespace}/{name}")


@pytest.mark.parametrize("simulator", [{"vms": 14, "standalone_hosts": 1}], indirect=True)
def test_audit_from_policy_reads_the_selection_with_only_get(
    simulator: Simulator,
    kube_api: client.ApiClient,
    crd_installed: str,
    namespace: str,
    reader_kubeconfig: tuple[Path, str],
) -> None:
    build_fleet(simulator, specs_of(MIXED_FLEET))
    objects = client.CustomObjectsApi(kube_api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, policy_body("fleet"))
    kubeconfig, _ = reader_kubeconfig
    simulator.admin.reset_call_counts()

    from_policy = audit(
        simulator, "--output", "json", "--kubeconfig", str(kubeconfig),
        selection=("--from-policy", f"{namespace}/fleet"),
    )  # fmt: skip
    from_flags = audit(simulator, "--output", "json")

    assert from_policy.returncode == 1, from_policy.stderr
    assert json.loads(from_policy.stdout) == json.loads(from_flags.stdout)
    names = {row["name"] for row in json.loads(from_policy.stdout)["vms"]}
    assert "win11-exempt" not in names and "win11-untagged" not in names and "win10-many" in names
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0  # an Enforce policy, audited

    # The same identity may not list policies, nor get one in another namespace.
    missing = audit(simulator, "--kubeconfig", str(kubeconfig), selection=("--from-policy", "default/fleet"))
    assert missing.returncode == 2
    assert "VTPMPolicy default/fleet may not be read with these credentials" in missing.stderr


def test_audit_from_policy_refuses_selection_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTPM_PASSWORD", "x")
    code = cli.main(
        [
            "audit",
            "--server",
            "vc",
            "--username",
            "u",
            "--from-policy",
            "ns/p",
            "--tag",
            "a/b",
            "--vtpm",
            "Absent",
        ]
    )
    assert code == 2
    assert "drop --tag, --vtpm" in capsys.readouterr().err


def test_audit_needs_a_tag_or_a_policy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTPM_PASSWORD", "x")
    assert cli.main(["audit", "--server", "vc", "--username", "u"]) == 2
    assert "give --tag" in capsys.readouterr().err
