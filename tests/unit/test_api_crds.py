"""The committed CRDs are what the models generate, and what they generate is a structural schema."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtpm_operator.api.crds import CRD_FILES, render, write_crds
from vtpm_operator.api.vtpmpolicy import VMStateName
from vtpm_operator.planning import VMState

CRDS = Path(__file__).resolve().parents[2] / "crds"
# Keywords a structural schema (apiextensions.k8s.io/v1) may not use, or that pydantic would leave
# behind when the conversion misses a case.
FORBIDDEN = {
    "$ref",
    "$defs",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "title",
    "const",
    "uniqueItems",
    "propertyNames",
}


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_committed_crds_are_what_the_models_generate(name: str) -> None:
    committed = (CRDS / name).read_text()
    assert committed == render(CRD_FILES[name]()), f"crds/{name} is stale: run hack/gen-crds.py"


def test_write_crds_writes_both_files(tmp_path: Path) -> None:
    written = write_crds(tmp_path)
    assert sorted(p.name for p in written) == ["vcenters.yaml", "vtpmpolicies.yaml"]
    for path in written:
        assert path.read_text() == (CRDS / path.name).read_text()


def schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under an openAPIV3Schema, with its path."""
    if not isinstance(node, dict):
        return
    yield where, node
    for name, sub in node.get("properties", {}).items():
        yield from schemas(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schemas(node[key], f"{where}[]")


def crd(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render(CRD_FILES[name]()))
    return loaded


def root(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_schemas_are_structural(name: str) -> None:
    for where, node in schemas(root(name)):
        assert not FORBIDDEN & set(node), (where, FORBIDDEN & set(node))
        assert "type" in node, where  # structural: every node says its type
        assert not ("properties" in node and "additionalProperties" in node), where
        if node.get("type") == "object" and isinstance(node.get("default"), dict) and "properties" in node:
            assert node["default"] == {}, where  # nested defaults come from the nested schemas


@pytest.mark.parametrize("name", sorted(CRD_FILES))
def test_cel_rules_name_their_field_and_bound_their_cost(name: str) -> None:
    rules = [rule for _, node in schemas(root(name)) for rule in node.get("x-kubernetes-validations", [])]
    assert rules
    for rule in rules:
        assert rule["message"].startswith("spec."), rule
        assert set(rule) == {"rule", "message"}, rule
    # CEL's cost estimate needs every list and string the rules walk to be bounded.
    for where, node in schemas(root(name)):
        if where.startswith(".spec"):
            if node["type"] == "array":
                assert "maxItems" in node, where
            if node["type"] == "string" and "enum" not in node:
                assert "maxLength" in node, where


def test_tag_lists_are_list_maps_and_conditions_are_keyed_by_type() -> None:
    nodes = dict(schemas(root("vtpmpolicies.yaml")))
    for field in (".spec.selector.tags", ".spec.selector.excludeTags"):
        assert nodes[field]["x-kubernetes-list-type"] == "map"
        assert nodes[field]["x-kubernetes-list-map-keys"] == ["category", "name"]
        assert nodes[f"{field}[]"]["required"] == ["category", "name"]  # list-map keys must be required
    for name in CRD_FILES:
        conditions = dict(schemas(root(name)))[".status.conditions"]
        assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == (
            "map",
            ["type"],
        )


@pytest.mark.parametrize(
    ("name", "kind", "scope", "short", "columns"),
    [
        (
            "vcenters.yaml",
            "VCenter",
            "Cluster",
            "vc",
            ["Server", "Ready", "Version", "Policies", "VMs", "Reason", "Age"],
        ),
        (
            "vtpmpolicies.yaml",
            "VTPMPolicy",
            "Namespaced",
            "vtpm",
            [
                "VCenter",
                "Mode",
                "Desired",
                "Ready",
                "Matched",
                "Compliant",
                "Blocked",
                "Failed",
                "Reason",
                "Age",
            ],
        ),
    ],
)
def test_names_scope_columns_and_argo_wave(
    name: str, kind: str, scope: str, short: str, columns: list[str]
) -> None:
    body = crd(name)
    spec = body["spec"]
    assert (spec["names"]["kind"], spec["scope"], spec["names"]["shortNames"]) == (kind, scope, [short])
    assert spec["names"]["categories"] == ["vsphere"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == columns
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority") == 1] == ["Reason"]
    assert body["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-10"


def test_status_vm_states_are_the_planners_states() -> None:
    assert set(typing.get_args(VMStateName)) == {state.value for state in VMState}
