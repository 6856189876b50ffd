"""The VTPMPolicy CRD against a real kube-apiserver: status subresource, defaults, validation, kubectl."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "vtpm-operator.io", "v1alpha1", "vtpmpolicies"
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "vtpmpolicies.yaml"

MINIMAL_SPEC: dict[str, Any] = {
    "vcenter": {"server": "vc.example.com", "credentialsSecret": "vcenter-creds"},
    "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
}

STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "lastSyncTime": "2026-01-01T00:00:00Z",
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "VMsBlocked",
            "message": "2 VMs are blocked",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
        },
        {
            "type": "Stalled",
            "status": "True",
            "reason": "VMsBlocked",
            "message": "2 VMs are blocked",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
    ],
    "summary": {
        "matched": 7,
        "compliant": 4,
        "nonCompliant": 0,
        "pending": 0,
        "blocked": 2,
        "failed": 1,
        "drifted": 0,
        "remediatedTotal": 3,
    },
    "vms": [
        {"name": "app-01", "id": "vm-42", "state": "Blocked", "reasons": ["PoweredOn", "HasSnapshots"]},
        {"name": "app-02", "id": "vm-43", "state": "Blocked", "reasons": ["FirmwareNotEFI"]},
        {"name": "db-01", "id": "vm-44", "state": "Failed", "message": "A general system error occurred"},
    ],
}


def policy(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VTPMPolicy",
        "metadata": {"name": name},
        "spec": copy.deepcopy(MINIMAL_SPEC if spec is None else spec),
    }


@pytest.fixture
def objects(kube_api: client.ApiClient, crd_installed: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def create(api: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    return result


def get(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return result


def test_every_schema_field_has_a_description() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    missing: list[str] = []

    def walk(schema: dict[str, Any], path: str) -> None:
        if path == ".metadata":  # the API server forbids anything there, descriptions included
            return
        if not schema.get("description"):
            missing.append(path)
        for key, sub in schema.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if "items" in schema:
            walk(schema["items"], f"{path}[]")

    walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")
    assert missing == []


def test_status_subresource_keeps_generation(objects: client.CustomObjectsApi, namespace: str) -> None:
    body = policy("p1")
    body["status"] = {"observedGeneration": 99}  # ignored on create: status is a subresource
    created = create(objects, namespace, body)
    assert created["metadata"]["generation"] == 1
    assert "status" not in created

    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "p1", {"status": STATUS}
    )
    assert patched["metadata"]["generation"] == 1

    stored = get(objects, namespace, "p1")
    assert stored["metadata"]["generation"] == 1
    assert stored["status"]["summary"] == STATUS["summary"]
    assert [c["type"] for c in stored["status"]["conditions"]] == ["Ready", "Stalled"]
    assert stored["status"]["vms"][0]["reasons"] == ["PoweredOn", "HasSnapshots"]

    # A spec write bumps generation and leaves status alone, even if the body carries a status.
    stored["spec"]["mode"] = "Audit"
    stored["status"] = {"observedGeneration": 42}
    replaced = objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "p1", stored)
    assert replaced["metadata"]["generation"] == 2
    after = get(objects, namespace, "p1")
    assert after["spec"]["mode"] == "Audit"
    assert after["status"]["observedGeneration"] == 1
    assert after["status"]["summary"]["matched"] == 7

    # Status writes never bump generation, also not a second one.
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "p1", {"status": {"observedGeneration": 2}}
    )
    assert get(objects, namespace, "p1")["metadata"]["generation"] == 2


def test_server_applies_defaults(objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, policy("defaults"))
    spec = get(objects, namespace, "defaults")["spec"]
    assert spec["vtpm"] == "Present"
    assert spec["mode"] == "Enforce"
    assert spec["allowRemoval"] is False
    assert spec["vcenter"]["insecureSkipVerify"] is False
    assert "caSecret" not in spec["vcenter"]
    assert spec["powerPolicy"] == {
        "action": "Skip",
        "shutdownTimeout": "10m",
        "forcePowerOff": False,
        "restorePowerState": True,
    }
    assert spec["maxConcurrent"] == 4
    assert spec["resyncPeriod"] == "5m"
    assert spec["selector"]["excludeTags"] == []


def test_explicit_values_are_kept(objects: client.CustomObjectsApi, namespace: str) -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(
        vtpm="Absent",
        allowRemoval=True,
        mode="Audit",
        keyProvider="nkp-1",
        maxConcurrent=64,
        resyncPeriod="1h30m",
        powerPolicy={"action": "Shutdown", "shutdownTimeout": "90s"},
    )
    spec["vcenter"].update(caSecret="vcenter-ca", server="10.0.0.5:443")
    spec["selector"]["excludeTags"] = [{"category": "security", "name": "no-vtpm"}]
    create(objects, namespace, policy("explicit", spec))
    stored = get(objects, namespace, "explicit")["spec"]
    assert stored["vtpm"] == "Absent" and stored["mode"] == "Audit" and stored["maxConcurrent"] == 64
    assert stored["powerPolicy"] == {
        "action": "Shutdown",
        "shutdownTimeout": "90s",
        "forcePowerOff": False,
        "restorePowerState": True,
    }
    assert stored["vcenter"]["caSecret"] == "vcenter-ca"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


INVALID_SPECS: dict[str, Callable[[dict[str, Any]], None]] = {
    "vtpm-enum": _set("vtpm", "Maybe"),
    "mode-enum-case": _set("mode", "enforce"),
    "power-action-enum": _set("powerPolicy.action", "Reboot"),
    "max-concurrent-0": _set("maxConcurrent", 0),
    "max-concurrent-65": _set("maxConcurrent", 65),
    "tags-empty": _set("selector.tags", []),
    "tags-too-many": _set("selector.tags", [{"category": "c", "name": f"t{i}"} for i in range(33)]),
    "tag-without-name": _set("selector.tags", [{"category": "security"}]),
    "resync-bad-duration": _set("resyncPeriod", "5 minutes"),
    "resync-no-unit": _set("resyncPeriod", "300"),
    "shutdown-bad-duration": _set("powerPolicy.shutdownTimeout", "10min"),
    "server-empty": _set("vcenter.server", ""),
    "server-with-scheme": _set("vcenter.server", "https://vc.example.com/sdk"),
    "server-missing": _delete("vcenter.server"),
    "credentials-missing": _delete("vcenter.credentialsSecret"),
    "selector-missing": _delete("selector"),
}


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_spec_is_refused(objects: client.CustomObjectsApi, namespace: str, case: str) -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    INVALID_SPECS[case](spec)
    with pytest.raises(ApiException) as info:
        create(objects, namespace, policy("bad", spec))
    assert info.value.status == 422, info.value.body


INVALID_STATUSES: dict[str, dict[str, Any]] = {
    "vm-state-enum": {"vms": [{"name": "a", "state": "Broken"}]},
    "too-many-vms": {"vms": [{"name": f"vm{i}", "state": "Pending"} for i in range(101)]},
    "condition-status-enum": {
        "conditions": [
            {
                "type": "Ready",
                "status": "Yes",
                "reason": "R",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    },
    "duplicate-condition-type": {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "R",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "R",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ]
    },
    "negative-count": {"summary": {"blocked": -1}},
}


@pytest.mark.parametrize("case", sorted(INVALID_STATUSES))
def test_invalid_status_is_refused(objects: client.CustomObjectsApi, namespace: str, case: str) -> None:
    create(objects, namespace, policy("st"))
    with pytest.raises(ApiException) as info:
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "st", {"status": INVALID_STATUSES[case]}
        )
    assert info.value.status == 422, info.value.body


def test_kubectl_get_shows_printer_columns(
    objects: client.CustomObjectsApi, namespace: str, kubectl: Any
) -> None:
    create(objects, namespace, policy("shown"))
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "shown", {"status": STATUS}
    )

    out = kubectl("get", "vtpm", "-n", namespace).stdout
    header, row = (line.split() for line in out.strip().splitlines())
    for column in ("MODE", "DESIRED", "READY", "MATCHED", "COMPLIANT", "BLOCKED", "FAILED", "AGE"):
        assert column in header, out
    assert "REASON" not in header  # priority 1: only with -o wide
    values = dict(zip(header, row, strict=True))
    expected = {
        "NAME": "shown",
        "MODE": "Enforce",
        "DESIRED": "Present",
        "READY": "False",
        "MATCHED": "7",
        "COMPLIANT": "4",
        "BLOCKED": "2",
        "FAILED": "1",
    }
    assert {column: values[column] for column in expected} == expected
    assert re.fullmatch(r"\d+s", values["AGE"]), values["AGE"]

    wide = kubectl("get", "vtpmpolicies.vtpm-operator.io", "-n", namespace, "-o", "wide").stdout
    header, row = (line.split() for line in wide.strip().splitlines())
    assert dict(zip(header, row, strict=True))["REASON"] == "VMsBlocked"

    # The category lets `kubectl get vsphere` list policies too.
    assert "shown" in kubectl("get", "vsphere", "-n", namespace, "-o", "name").stdout


def test_kubectl_explain_shows_descriptions(crd_installed: str, kubectl: Any) -> None:
    # The CRD's schema reaches the published OpenAPI a moment after Established.
    deadline = time.monotonic() + 60
    while True:
        result = kubectl("explain", "vtpmpolicy.spec.powerPolicy", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "a vTPM can only be added or removed while the VM is powered off" in text
    for field in ("action", "shutdownTimeout", "forcePowerOff", "restorePowerState"):
        assert field in text
    spec = " ".join(kubectl("explain", "vtpmpolicy.spec.vcenter.credentialsSecret").stdout.split())
    assert 'keys "username" and "password"' in spec
