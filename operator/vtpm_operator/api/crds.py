"""The CRDs of both kinds, generated from the models: `python -m vtpm_operator.api.crds DIR` writes them.

pydantic writes JSON Schema; a CRD needs a structural OpenAPI v3 schema. The conversion inlines
every $ref, turns the anyOf of an optional field into its non-null branch, drops titles and null
defaults, and leaves object defaults as {} so that the API server fills nested defaults itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from vtpm_operator.api.vcenter import VCenterSpec, VCenterStatus
from vtpm_operator.api.vtpmpolicy import VTPMPolicySpec, VTPMPolicyStatus

GROUP = "vtpm-operator.io"
VERSION = "v1alpha1"
CATEGORY = "vsphere"
_READY = '.status.conditions[?(@.type=="Ready")]'
_DROPPED = frozenset({"title", "$defs"})


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation JSON Schema (by alias) as a structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _ordered(_convert(schema, schema.get("$defs", {})))


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    node = _inline(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, Mapping)):
            out[key] = _convert(value, defs)
        elif key in ("additionalProperties", "propertyNames"):
            continue  # structural schemas allow neither false nor key constraints; true is said below
        else:
            out[key] = value
    if node.get("additionalProperties") is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and isinstance(out.get("default"), Mapping) and "properties" in out:
        out["default"] = {}
    return out


def _inline(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve $ref and optional anyOf, merging the field's own keys over the target's."""
    merged = dict(node)
    if "anyOf" in merged:
        branches = [b for b in merged.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"a CRD schema cannot say anyOf {branches}")
        merged = _merge(branches[0], merged)
    if "$ref" in merged:
        target = defs[merged.pop("$ref").rsplit("/", 1)[-1]]
        merged = _merge(target, merged)
        return _inline(merged, defs)
    return merged


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**base, **over}
    rules = [*base.get("x-kubernetes-validations", []), *over.get("x-kubernetes-validations", [])]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _top_schema(
    kind: str, description: str, spec: type[BaseModel], status: type[BaseModel]
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"APIVersion of this representation of an object: always {GROUP}/{VERSION}.",
            },
            "kind": {
                "type": "string",
                "description": f"The REST resource this object represents: always {kind}.",
            },
            # The API server allows nothing on metadata but name/generateName rules, not even a description.
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
    }


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "description": description, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    *, kind: str, plural: str, short: str, scope: str, columns: list[dict[str, Any]], schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "vtpm-operator",
                "app.kubernetes.io/part-of": "vtpm-operator",
            },
            # Argo CD: install the CRDs before anything that uses them.
            "annotations": {"argocd.argoproj.io/sync-wave": "-10"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [*columns, _AGE],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def vcenter_crd() -> dict[str, Any]:
    return _crd(
        kind="VCenter",
        plural="vcenters",
        short="vc",
        scope="Cluster",
        columns=[
            _column("Server", "string", ".spec.server", "The vCenter Server's host and port."),
            _column("Ready", "string", f"{_READY}.status", "Logged in, and the server is a vCenter."),
            _column("Version", "string", ".status.version", "vCenter's version."),
            _column("Policies", "integer", ".status.policies", "VTPMPolicies that name this VCenter."),
            _column("VMs", "integer", ".status.vms", "VMs the operator watches on this vCenter."),
            _column("Reason", "string", f"{_READY}.reason", "Reason of the Ready condition.", priority=1),
        ],
        schema=_top_schema(
            "VCenter",
            "VCenter is a connection to one vCenter Server that a cluster admin owns: the server, the "
            "Secrets holding its credentials and CA (in the operator's namespace), and which namespaces' "
            "VTPMPolicies may act on its VMs.",
            VCenterSpec,
            VCenterStatus,
        ),
    )


def vtpmpolicy_crd() -> dict[str, Any]:
    summary = ".status.summary"
    return _crd(
        kind="VTPMPolicy",
        plural="vtpmpolicies",
        short="vtpm",
        scope="Namespaced",
        columns=[
            _column("VCenter", "string", ".spec.vcenterRef.name", "The VCenter object this policy acts on."),
            _column("Mode", "string", ".spec.mode", "Enforce changes VMs; Audit only reports."),
            _column("Desired", "string", ".spec.vtpm", "Whether the selected VMs should have a vTPM."),
            _column("Ready", "string", f"{_READY}.status", "Ready condition status."),
            _column("Matched", "integer", f"{summary}.matched", "VMs the tag selector matches."),
            _column("Compliant", "integer", f"{summary}.compliant", "Matched VMs in the desired state."),
            _column("Blocked", "integer", f"{summary}.blocked", "Matched VMs waiting for a person to act."),
            _column("Failed", "integer", f"{summary}.failed", "Matched VMs whose last change failed."),
            _column("Reason", "string", f"{_READY}.reason", "Reason of the Ready condition.", priority=1),
        ],
        schema=_top_schema(
            "VTPMPolicy",
            "VTPMPolicy keeps a virtual TPM (vTPM) on every VM of a VCenter that carries one of the "
            "selected vSphere tags, or removes it. The operator checks every vTPM prerequisite (EFI "
            "firmware, hardware version, power state, snapshots, guest OS, host version, key provider) "
            "before changing a VM and reports per-VM results in status.",
            VTPMPolicySpec,
            VTPMPolicyStatus,
        ),
    )


CRD_FILES = {"vcenters.yaml": vcenter_crd, "vtpmpolicies.yaml": vtpmpolicy_crd}
HEADER = "# Generated from vtpm_operator.api by hack/gen-crds.py; do not edit by hand.\n"


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no &anchors for the lists pydantic shares between schemas."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# Schema keys in reading order (what it is, what it means, then its bounds); the rest after these.
_KEY_ORDER = {
    key: rank
    for rank, key in enumerate(
        (
            "type",
            "format",
            "description",
            "required",
            "default",
            "enum",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "pattern",
            "minItems",
            "maxItems",
            "maxProperties",
            "properties",
            "additionalProperties",
            "items",
        )
    )
}


def _ordered(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with its keys in reading order; property names keep the models' order."""
    out: dict[str, Any] = {}
    for key in sorted(schema, key=lambda k: (_KEY_ORDER.get(k, len(_KEY_ORDER)), k)):
        value = schema[key]
        if key == "properties":
            value = {name: _ordered(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, Mapping)):
            value = _ordered(value)
        out[key] = value
    return out


def render(crd: Mapping[str, Any]) -> str:
    body = yaml.dump(dict(crd), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in CRD_FILES.items():
        path = directory / name
        path.write_text(render(build()))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else Path("crds")
    for path in write_crds(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
