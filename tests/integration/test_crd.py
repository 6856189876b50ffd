"""Both CRDs against real API servers: kube-apiserver 1.20 (install, serve, defaults, structural
validation, status subresource, printer columns, kubectl explain) and apiextensions-apiserver 1.36
(every CEL rule refuses what it should, with its message)."""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import CRD_FILES, Kubectl
from vtpm_operator.api import VCenterStatus, VTPMPolicyStatus, parse_policy, parse_vcenter
from vtpm_operator.api.base import Condition
from vtpm_operator.api.vcenter import KeyProviderStatus
from vtpm_operator.api.vtpmpolicy import PolicySummary, VMStatus
from vtpm_operator.problems import PolicyProblem

GROUP, VERSION = "vtpm-operator.io", "v1alpha1"
POLICIES, VCENTERS = "vtpmpolicies", "vcenters"

MINIMAL_POLICY: dict[str, Any] = {
    "vcenterRef": {"name": "vc-prod"},
    "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
}
MINIMAL_VCENTER: dict[str, Any] = {"server": "vc.example.com", "credentialsSecretRef": {"name": "vc-creds"}}
FULL_POLICY: dict[str, Any] = {
    "vcenterRef": {"name": "vc-lab"},
    "selector": {
        "tags": [{"category": "security", "name": "vtpm-required"}],
        "excludeTags": [{"category": "security", "name": "no-vtpm"}],
    },
    "vtpm": "Absent",
    "allowRemoval": True,
    "mode": "Audit",
    "keyProvider": "nkp-1",
    "powerPolicy": {"action": "Shutdown", "shutdownTimeout": "90s", "forcePowerOff": True},
    "maxConcurrent": 64,
    "resyncPeriod": "1h30m",
}
FULL_VCENTER: dict[str, Any] = {
    "server": "[2001:db8::1]:8443",
    "credentialsSecretRef": {"name": "vc-creds"},
    "caSecretRef": {"name": "vc-ca"},
    "allowedNamespaces": {
        "names": ["windows-team"],
        "selector": {
            "matchLabels": {"vsphere.example.com/prod": "true"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}],
        },
    },
    "allowRemoval": True,
    "maxConcurrentChanges": 16,
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _condition(type_: str, status: str, reason: str) -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=f"{reason} here",
        last_transition_time=NOW,  # type: ignore[arg-type]
    )


# Built from the status models: proves the operator's models and the CRD's status schema agree.
POLICY_STATUS = VTPMPolicyStatus(
    observed_generation=1,
    last_sync_time=NOW,
    conditions=[_condition("Ready", "False", "VMsBlocked"), _condition("Stalled", "True", "VMsBlocked")],
    summary=PolicySummary(
        matched=7,
        compliant=4,
        non_compliant=0,
        pending=0,
        blocked=2,
        failed=1,
        excluded=3,
        drifted=1,
        drifted_total=5,
        remediated_total=3,
    ),
    vms=[
        VMStatus(name="app-01", id="vm-42", state="Blocked", reasons=["PoweredOn", "HasSnapshots"]),
        VMStatus(name="db-01", id="vm-44", state="Failed", message="A general system error occurred"),
    ],
).model_dump(mode="json", by_alias=True, exclude_none=True)
VCENTER_STATUS = VCenterStatus(
    observed_generation=1,
    conditions=[_condition("Ready", "True", "Connected")],
    instance_uuid=str(uuid.uuid4()),
    version="8.0.2",
    build="22385739",
    api_type="VirtualCenter",
    key_providers=[KeyProviderStatus(id="kp-standard", type="Standard", is_default=True, backed_up=True)],
    policies=3,
    vms=10234,
    last_inventory_time=NOW,
).model_dump(mode="json", by_alias=True, exclude_none=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Objects:
    """Create, read and status-patch both kinds; deletes the cluster-scoped VCenters it made."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.vcenters: list[str] = []

    def create_policy(self, name: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VTPMPolicy", "metadata": {"name": name}}
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, POLICIES, {**body, "spec": copy.deepcopy(spec), **extra}
        )
        return result

    def create_vcenter(self, name: str, spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VCenter", "metadata": {"name": name}}
        result: dict[str, Any] = self.api.create_cluster_custom_object(
            GROUP, VERSION, VCENTERS, {**body, "spec": copy.deepcopy(spec), **extra}
        )
        self.vcenters.append(name)
        return result

    def get_policy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, POLICIES, name
        )
        return result

    def get_vcenter(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_cluster_custom_object(GROUP, VERSION, VCENTERS, name)
        return result

    def cleanup(self) -> None:
        for name in self.vcenters:
            try:
                self.api.delete_cluster_custom_object(GROUP, VERSION, VCENTERS, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def objects(kube_api: client.ApiClient, crd_installed: str, namespace: str) -> Iterator[Objects]:
    made = Objects(client.CustomObjectsApi(kube_api), namespace)
    yield made
    made.cleanup()


def _undescribed(schema: dict[str, Any], where: str) -> Iterator[str]:
    if where == ".metadata":  # the API server forbids anything there, descriptions included
        return
    if not schema.get("description"):
        yield where
    for key, sub in schema.get("properties", {}).items():
        yield from _undescribed(sub, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict) and schema[key].get("type") == "object":
            yield from _undescribed(schema[key], f"{where}[]")


def test_every_schema_field_has_a_description() -> None:
    for path in CRD_FILES:
        crd = yaml.safe_load(path.read_text())
        assert list(_undescribed(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")) == [], path


def test_both_kinds_are_served_with_their_scope_names_and_category(
    crd_installed: str, kubectl: Kubectl
) -> None:
    rows = {
        line.split()[0]: line.split()
        for line in kubectl("api-resources", f"--api-group={GROUP}", "--no-headers").stdout.splitlines()
    }
    assert rows["vcenters"][1:] == ["vc", f"{GROUP}/{VERSION}", "false", "VCenter"]
    assert rows["vtpmpolicies"][1:] == ["vtpm", f"{GROUP}/{VERSION}", "true", "VTPMPolicy"]


def test_the_1_20_server_drops_cel_rules_and_keeps_the_rest(
    kube_api: client.ApiClient, crd_installed: str
) -> None:
    """The same file installs there: only x-kubernetes-validations, which 1.20 does not know, is gone."""
    stored = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(f"{VCENTERS}.{GROUP}")
    server = stored.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties["server"]
    assert server.pattern and server.max_length == 255
    assert "x-kubernetes-validations" not in str(stored.to_dict())


def test_status_subresource_keeps_generation(objects: Objects) -> None:
    created = objects.create_policy("p1", MINIMAL_POLICY, status={"observedGeneration": 99})
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # ignored on create: status is a subresource
    api, ns = objects.api, objects.namespace
    patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, POLICIES, "p1", {"status": POLICY_STATUS}
    )
    assert patched["metadata"]["generation"] == 1
    stored = objects.get_policy("p1")
    assert stored["status"] == POLICY_STATUS

    # A spec write bumps generation and leaves status alone, even if the body carries a status.
    stored["spec"]["mode"] = "Audit"
    stored["status"] = {"observedGeneration": 42}
    replaced = api.replace_namespaced_custom_object(GROUP, VERSION, ns, POLICIES, "p1", stored)
    assert replaced["metadata"]["generation"] == 2
    after = objects.get_policy("p1")
    assert after["spec"]["mode"] == "Audit"
    assert after["status"] == POLICY_STATUS


def test_vcenter_status_subresource(objects: Objects) -> None:
    name = unique("vc-status")
    assert "status" not in objects.create_vcenter(name, MINIMAL_VCENTER, status=VCENTER_STATUS)
    patched = objects.api.patch_cluster_custom_object_status(
        GROUP, VERSION, VCENTERS, name, {"status": VCENTER_STATUS}
    )
    assert patched["metadata"]["generation"] == 1
    assert objects.get_vcenter(name)["status"] == VCENTER_STATUS


def test_server_defaults_are_the_models_defaults(objects: Objects) -> None:
    """What the API server fills in parses to exactly what the parser makes of the bare spec."""
    objects.create_policy("defaults", MINIMAL_POLICY)
    stored = objects.get_policy("defaults")["spec"]
    assert stored["powerPolicy"] == {
        "action": "Skip",
        "shutdownTimeout": "10m",
        "forcePowerOff": False,
        "restorePowerState": True,
    }
    assert (stored["vtpm"], stored["mode"], stored["resyncPeriod"], stored["maxConcurrent"]) == (
        "Present",
        "Enforce",
        "5m",
        4,
    )
    assert stored["selector"]["excludeTags"] == [] and stored["allowRemoval"] is False
    assert parse_policy(stored) == parse_policy(MINIMAL_POLICY)

    name = unique("vc-defaults")
    objects.create_vcenter(name, MINIMAL_VCENTER)
    stored_vc = objects.get_vcenter(name)["spec"]
    assert (
        stored_vc["insecureSkipVerify"],
        stored_vc["allowRemoval"],
        stored_vc["maxConcurrentChanges"],
    ) == (
        False,
        False,
        8,
    )
    assert "allowedNamespaces" not in stored_vc  # absent stays absent: every namespace
    assert parse_vcenter(stored_vc) == parse_vcenter(MINIMAL_VCENTER)


def test_explicit_values_are_kept(objects: Objects) -> None:
    objects.create_policy("explicit", FULL_POLICY)
    assert parse_policy(objects.get_policy("explicit")["spec"]) == parse_policy(FULL_POLICY)
    name = unique("vc-full")
    objects.create_vcenter(name, FULL_VCENTER)
    stored = objects.get_vcenter(name)["spec"]
    assert stored["allowedNamespaces"]["selector"]["matchLabels"] == {"vsphere.example.com/prod": "true"}
    assert parse_vcenter(stored) == parse_vcenter(FULL_VCENTER)


def test_a_stored_inline_vcenter_is_kept_for_the_operator_to_name(objects: Objects) -> None:
    """1.20 has no CEL: a policy with both fields is stored, and the schema keeps spec.vcenter
    (instead of pruning it) so that the parser can say where the connection moved."""
    spec = {**MINIMAL_POLICY, "vcenter": {"server": "vc", "credentialsSecret": "c"}}
    objects.create_policy("legacy", spec)
    assert objects.get_policy("legacy")["spec"]["vcenter"] == {"server": "vc", "credentialsSecret": "c"}


CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "R",
    "message": "",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}
INVALID_STATUSES: dict[str, dict[str, Any]] = {
    "vm-state-enum": {"vms": [{"name": "a", "state": "Broken"}]},
    "too-many-vms": {"vms": [{"name": f"vm{i}", "state": "Pending"} for i in range(101)]},
    "condition-status-enum": {"conditions": [{**CONDITION, "status": "Yes"}]},
    "condition-without-reason": {"conditions": [{k: v for k, v in CONDITION.items() if k != "reason"}]},
    "duplicate-condition-type": {"conditions": [CONDITION, {**CONDITION, "status": "False"}]},
    "negative-count": {"summary": {"blocked": -1}},
}


@pytest.mark.parametrize("case", sorted(INVALID_STATUSES))
def test_invalid_status_is_refused(objects: Objects, case: str) -> None:
    objects.create_policy("st", MINIMAL_POLICY)
    with pytest.raises(ApiException) as info:
        objects.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, objects.namespace, POLICIES, "st", {"status": INVALID_STATUSES[case]}
        )
    assert info.value.status == 422, info.value.body


def _columns(text: str) -> dict[str, str]:
    header, row = (line.split() for line in text.strip().splitlines())
    return dict(zip(header, row, strict=True))


def test_kubectl_get_shows_printer_columns(objects: Objects, kubectl: Kubectl) -> None:
    objects.create_policy("shown", MINIMAL_POLICY)
    objects.api.patch_namespaced_custom_object_status(
        GROUP, VERSION, objects.namespace, POLICIES, "shown", {"status": POLICY_STATUS}
    )
    values = _columns(kubectl("get", "vtpm", "-n", objects.namespace).stdout)
    expected = {
        "NAME": "shown", "VCENTER": "vc-prod", "MODE": "Enforce", "DESIRED": "Present", "READY": "False",
        "MATCHED": "7", "COMPLIANT": "4", "BLOCKED": "2", "FAILED": "1",
    }  # fmt: skip
    assert {column: values.get(column) for column in expected} == expected
    assert "REASON" not in values  # priority 1: only with -o wide
    assert re.fullmatch(r"\d+s", values["AGE"]), values["AGE"]
    wide = kubectl("get", "vtpmpolicies.vtpm-operator.io", "shown", "-n", objects.namespace, "-o", "wide")
    assert _columns(wide.stdout)["REASON"] == "VMsBlocked"
    # The category lets `kubectl get vsphere` list both kinds.
    assert "shown" in kubectl("get", "vsphere", "-n", objects.namespace, "-o", "name").stdout


def test_kubectl_get_vc_shows_printer_columns(objects: Objects, kubectl: Kubectl) -> None:
    name = unique("vc-shown")
    objects.create_vcenter(name, MINIMAL_VCENTER)
    objects.api.patch_cluster_custom_object_status(GROUP, VERSION, VCENTERS, name, {"status": VCENTER_STATUS})
    values = _columns(kubectl("get", "vc", name).stdout)
    expected = {
        "NAME": name,
        "SERVER": "vc.example.com",
        "READY": "True",
        "VERSION": "8.0.2",
        "POLICIES": "3",
        "VMS": "10234",
    }
    assert {column: values.get(column) for column in expected} == expected
    assert "AGE" in values and "REASON" not in values
    assert _columns(kubectl("get", "vc", name, "-o", "wide").stdout)["REASON"] == "Connected"
    assert f"vcenter.{GROUP}/{name}" in kubectl("get", "vsphere", "-o", "name").stdout


def _explain(kubectl: Kubectl, field: str) -> str:
    # A CRD's schema reaches the published OpenAPI a moment after Established.
    deadline = time.monotonic() + 60
    while True:
        result = kubectl("explain", field, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_kubectl_explain_shows_descriptions(crd_installed: str, kubectl: Kubectl) -> None:
    text = _explain(kubectl, "vtpmpolicy.spec.powerPolicy")
    assert "a vTPM can only be added or removed while the VM is powered off" in text
    for field in ("action", "shutdownTimeout", "forcePowerOff", "restorePowerState"):
        assert field in text
    assert "whose vCenter Server holds the VMs" in _explain(kubectl, "vtpmpolicy.spec.vcenterRef")
    assert "an IPv6 address needs brackets" in _explain(kubectl, "vcenter.spec.server")
    assert "present but empty: none" in _explain(kubectl, "vc.spec.allowedNamespaces")


# --- apiextensions-apiserver 1.36: CEL rules -------------------------------------------------------


def _with(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(spec), **changes}


TAG = {"category": "security", "name": "vtpm-required"}
# Every CEL rule in the CRDs, by its message, with a spec that breaks only that rule.
CEL_VIOLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "spec.resyncPeriod must be between 10s and 24h": ("VTPMPolicy", _with(MINIMAL_POLICY, resyncPeriod="9s")),
    "spec.powerPolicy.shutdownTimeout must be between 10s and 24h": (
        "VTPMPolicy",
        _with(MINIMAL_POLICY, powerPolicy={"shutdownTimeout": "24h1s"}),
    ),
    "spec.selector.excludeTags must not hold a tag that spec.selector.tags holds": (
        "VTPMPolicy",
        _with(MINIMAL_POLICY, selector={"tags": [TAG], "excludeTags": [TAG]}),
    ),
    "spec.vcenter: removed": ("VTPMPolicy", _with(MINIMAL_POLICY, vcenter={"server": "vc"})),
    "spec.server: the port must be between 1 and 65535": (
        "VCenter",
        _with(MINIMAL_VCENTER, server="vc:65536"),
    ),
    "spec.insecureSkipVerify must not be true when spec.caSecretRef is set": (
        "VCenter",
        _with(MINIMAL_VCENTER, insecureSkipVerify=True, caSecretRef={"name": "ca"}),
    ),
    "spec.allowedNamespaces.selector.matchExpressions: values must be non-empty for In and NotIn": (
        "VCenter",
        _with(
            MINIMAL_VCENTER,
            allowedNamespaces={"selector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
        ),
    ),
}


def _cel_messages(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            yield rule["message"]
        for value in schema.values():
            yield from _cel_messages(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _cel_messages(value)


def test_every_cel_rule_has_a_violation_below() -> None:
    messages = {m for path in CRD_FILES for m in _cel_messages(yaml.safe_load(path.read_text()))}
    assert len(messages) == len(CEL_VIOLATIONS)
    for message in messages:
        assert any(message.startswith(key) for key in CEL_VIOLATIONS), message


def create_on(api: client.CustomObjectsApi, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Create one object of kind on that server (policies in "default": 1.36 has no Namespace API)."""
    name = unique(kind.lower())
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    result: dict[str, Any]
    if kind == "VCenter":
        result = api.create_cluster_custom_object(GROUP, VERSION, VCENTERS, body)
    else:
        result = api.create_namespaced_custom_object(GROUP, VERSION, "default", POLICIES, body)
    return result


@pytest.mark.parametrize("message", sorted(CEL_VIOLATIONS))
def test_each_cel_rule_refuses_with_its_message_on_1_36(
    apiext_crds: client.CustomObjectsApi, message: str
) -> None:
    kind, spec = CEL_VIOLATIONS[message]
    with pytest.raises(ApiException) as info:
        create_on(apiext_crds, kind, spec)
    assert info.value.status == 422, info.value.body
    assert message in info.value.body


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("VTPMPolicy", MINIMAL_POLICY),
        ("VTPMPolicy", FULL_POLICY),
        ("VTPMPolicy", _with(MINIMAL_POLICY, resyncPeriod="10s", powerPolicy={"shutdownTimeout": "24h"})),
        ("VCenter", MINIMAL_VCENTER),
        ("VCenter", FULL_VCENTER),
        ("VCenter", _with(MINIMAL_VCENTER, server="vc:65535", insecureSkipVerify=True)),
        ("VCenter", _with(MINIMAL_VCENTER, server="[::1]")),
    ],
)
def test_valid_objects_pass_every_cel_rule_on_1_36(
    apiext_crds: client.CustomObjectsApi, kind: str, spec: dict[str, Any]
) -> None:
    created = create_on(apiext_crds, kind, spec)
    parse = parse_vcenter if kind == "VCenter" else parse_policy
    assert parse(created["spec"]) == parse(spec)  # 1.36's defaults agree with the models' too


def test_status_from_the_models_is_accepted_on_1_36(apiext_crds: client.CustomObjectsApi) -> None:
    name = create_on(apiext_crds, "VCenter", MINIMAL_VCENTER)["metadata"]["name"]
    patched = apiext_crds.patch_cluster_custom_object_status(
        GROUP, VERSION, VCENTERS, name, {"status": VCENTER_STATUS}
    )
    assert patched["status"] == VCENTER_STATUS


# --- The parser and the 1.36 server agree on every spec drawn from these values -----------------

OTHER_TAG = {"category": "security", "name": "other"}
DURATIONS = ["5m", "10s", "9s", "24h", "24h1s", "0s", "1h30m", "1.5h", "300", "soon", 5]
POLICY_VALUES: dict[str, list[Any]] = {
    "vcenterRef": [{"name": "vc"}, {"name": "VC"}, {}, "vc"],
    "vcenter": [{"server": "vc"}],
    "selector.tags": [
        [TAG],
        [],
        [TAG, TAG],
        [TAG, OTHER_TAG],
        [{"category": "c", "name": f"t{i}"} for i in range(33)],
    ],
    "selector.excludeTags": [[], [TAG], [OTHER_TAG], [OTHER_TAG, OTHER_TAG], [{"category": "", "name": "x"}]],
    "vtpm": ["Present", "Absent", "present"],
    "mode": ["Enforce", "Audit", "DryRun"],
    "allowRemoval": [True, False, "true", 1],
    "keyProvider": ["", "kp-1", "k" * 256],
    "powerPolicy.action": ["Skip", "Shutdown", "Reboot"],
    "powerPolicy.shutdownTimeout": DURATIONS,
    "powerPolicy.forcePowerOff": [True, "false"],
    "maxConcurrent": [1, 64, 0, 65, "4"],
    "resyncPeriod": DURATIONS,
}
VCENTER_VALUES: dict[str, list[Any]] = {
    "server": ["vc", "vc:443", "vc:", "vc:0", "vc:65535", "vc:65536", "vc:99999", "[::1]", "[::1]:443",
               "fe80::1", "https://vc", "v" * 256, "10.0.0.1:8443"],
    "credentialsSecretRef": [{"name": "c"}, {"name": "C"}, {}],
    "caSecretRef": [{"name": "ca"}, {"name": "Ca"}],
    "insecureSkipVerify": [True, False, "true"],
    "allowedNamespaces": [
        {}, {"names": ["team-a"]}, {"names": ["Team"]}, {"names": ["a", "a"]}, {"selector": {}},
        {"selector": {"matchLabels": {"prod": "true"}}},
        {"selector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
        {"selector": {"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["x"]}]}},
        {"selector": {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["x"]}]}},
        {"selector": {"matchExpressions": [{"key": "k", "operator": "Has"}]}},
    ],
    "allowRemoval": [True, "false"],
    "maxConcurrentChanges": [1, 8, 64, 0, 65],
}  # fmt: skip


def _drawn_spec(draw: st.DrawFn, base: dict[str, Any], values: dict[str, list[Any]]) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True)):
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(draw(st.sampled_from(values[path])))
    return spec


@st.composite
def policy_specs(draw: st.DrawFn) -> dict[str, Any]:
    return _drawn_spec(draw, MINIMAL_POLICY, POLICY_VALUES)


@st.composite
def vcenter_specs(draw: st.DrawFn) -> dict[str, Any]:
    return _drawn_spec(draw, MINIMAL_VCENTER, VCENTER_VALUES)


def _server_admits(api: client.CustomObjectsApi, kind: str, spec: dict[str, Any]) -> bool:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "probe"}, "spec": spec}
    options = {
        "dry_run": "All",
        "field_validation": "Strict",
    }  # Strict: unknown fields refused, as the models do
    try:
        if kind == "VCenter":
            api.create_cluster_custom_object(GROUP, VERSION, VCENTERS, body, **options)
        else:
            api.create_namespaced_custom_object(GROUP, VERSION, "default", POLICIES, body, **options)
    except ApiException as exc:
        assert exc.status in (400, 422), exc.body
        return False
    return True


def _parser_admits(kind: str, spec: dict[str, Any]) -> bool:
    try:
        (parse_vcenter if kind == "VCenter" else parse_policy)(spec)
    except PolicyProblem:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=policy_specs())
def test_parser_and_1_36_agree_on_policies(
    apiext_crds: client.CustomObjectsApi, spec: dict[str, Any]
) -> None:
    assert _server_admits(apiext_crds, "VTPMPolicy", spec) == _parser_admits("VTPMPolicy", spec), spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=vcenter_specs())
def test_parser_and_1_36_agree_on_vcenters(
    apiext_crds: client.CustomObjectsApi, spec: dict[str, Any]
) -> None:
    assert _server_admits(apiext_crds, "VCenter", spec) == _parser_admits("VCenter", spec), spec
