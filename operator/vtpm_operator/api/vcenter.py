"""The VCenter kind (cluster-scoped): a vCenter connection an admin owns, and who may use it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator

from vtpm_operator.api.base import (
    Condition,
    JsonDict,
    LocalObjectReference,
    SpecModel,
    StatusModel,
    conditions_field,
    count_field,
)
from vtpm_operator.connection import SelectorOperator, split_server

# host, host:port or [IPv6]:port (the same shape as connection.split_server); the port's range is a
# CEL rule, since a pattern cannot say 1-65535 legibly.
SERVER_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$"
SERVER_MAX_LENGTH = 255
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

_PORT_IN_RANGE: JsonDict = {
    "rule": "!self.matches(':[0-9]+$') || "
    "(int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && "
    "int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",
    "message": "spec.server: the port must be between 1 and 65535",
}
_NOT_INSECURE_WITH_CA: JsonDict = {
    "rule": "!(has(self.insecureSkipVerify) && self.insecureSkipVerify && has(self.caSecretRef))",
    "message": "spec.insecureSkipVerify must not be true when spec.caSecretRef is set",
}
_VALUES_MATCH_OPERATOR: JsonDict = {
    "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
    ": (!has(self.values) || size(self.values) == 0)",
    "message": "spec.allowedNamespaces.selector.matchExpressions: values must be non-empty for In and "
    "NotIn, and empty for Exists and DoesNotExist",
}

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317)]


class LabelSelectorRequirement(SpecModel):
    """A label key, an operator and values, as in a Kubernetes label selector."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_VALUES_MATCH_OPERATOR]})

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: Annotated[SelectorOperator, Field(strict=False)] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default=[],
        validate_default=True,  # In without values is as wrong as Exists with some
        max_length=64,
        description="Label values: at least one for In and NotIn, none for Exists and DoesNotExist.",
    )

    @field_validator("values")
    @classmethod
    def _values_match_operator(cls, values: list[str], info: ValidationInfo) -> list[str]:
        operator = info.data.get("operator")
        wants_values = operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if operator is not None and wants_values != bool(values):
            need = "at least one value" if wants_values else "no values"
            raise ValueError(f"operator {operator} takes {need}")
        return values


def _each_once(names: list[str]) -> list[str]:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed twice")
    return names


NamespaceName = Annotated[str, Field(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)]


class NamespaceLabelSelector(SpecModel):
    """Namespaces by their labels: every matchLabels entry and every expression must match."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default={},
        max_length=32,
        description="Labels a namespace must carry, with these values.",
        json_schema_extra={"maxProperties": 32},
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default=[], max_length=16, description="Requirements on a namespace's labels."
    )


class AllowedNamespacesSpec(SpecModel):
    """Which namespaces' VTPMPolicies may use this VCenter: the named ones and the selected ones."""

    names: Annotated[list[NamespaceName], AfterValidator(_each_once)] = Field(
        default=[],
        max_length=256,
        description="Namespaces admitted by name, each at most once.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    selector: NamespaceLabelSelector | None = Field(
        default=None,
        description="Namespaces admitted by their labels. An empty selector ({}) admits every namespace.",
    )


class VCenterSpec(SpecModel):
    """How to reach one vCenter Server, with which credentials, and which namespaces may act on it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_NOT_INSECURE_WITH_CA]})

    server: str = Field(
        min_length=1,
        max_length=SERVER_MAX_LENGTH,
        description="Host name or IP address of the vCenter Server, optionally with a port: "
        "vc.example.com, vc.example.com:443 or [2001:db8::1]:443. No scheme and no path; an IPv6 "
        "address needs brackets.",
        # The pattern is for the API server only: split_server says more precisely what is wrong.
        json_schema_extra={"pattern": SERVER_PATTERN, "x-kubernetes-validations": [_PORT_IN_RANGE]},
    )
    credentials_secret_ref: LocalObjectReference = Field(
        description="A Secret in the operator's namespace with the keys username and password of a "
        "vCenter account holding the privileges to reconfigure the selected VMs (Cryptographer.* for "
        "vTPM, VirtualMachine.Config.*, and power operations for powerPolicy Shutdown). They are sent "
        "only to a server that proved to be a vCenter, over verified TLS."
    )
    ca_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A Secret in the operator's namespace whose key ca.crt holds the PEM CA "
        "certificate(s) that sign the vCenter Server's certificate (for example the VMCA root). Omit "
        "it when a publicly trusted CA signs it.",
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="Skip verification of vCenter's TLS certificate. Only for labs: anyone in the "
        "network path could capture the credentials. Never together with caSecretRef. Default false.",
    )
    allowed_namespaces: AllowedNamespacesSpec | None = Field(
        default=None,
        description="Which namespaces' VTPMPolicies may use this VCenter. Absent: every namespace. "
        "Present: the named ones and the selected ones; present but empty: none.",
    )
    allow_removal: bool = Field(
        default=False,
        description="No policy removes a vTPM on this vCenter unless this is true as well as the "
        "policy's own allowRemoval. Default false.",
    )
    max_concurrent_changes: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Changes (reconfigures and shutdowns) in flight at once across every policy on "
        "this vCenter, 1 to 64. Default 8.",
    )

    @field_validator("server")
    @classmethod
    def _server_splits(cls, server: str) -> str:
        split_server(server)
        return server

    @field_validator("insecure_skip_verify")
    @classmethod
    def _not_insecure_with_ca(cls, insecure: bool, info: ValidationInfo) -> bool:
        if insecure and info.data.get("ca_secret_ref") is not None:
            raise ValueError("must not be true when spec.caSecretRef is set")
        return insecure


class KeyProviderStatus(StatusModel):
    """A key provider vCenter offers for encrypting VM files (a vTPM needs one)."""

    id: str = Field(
        max_length=255, description="The key provider's ID, as spec.keyProvider of a policy names it."
    )
    type: str | None = Field(
        default=None,
        max_length=64,
        description="Its kind, for example Native, Standard (KMIP) or TrustAuthority.",
    )
    is_default: bool | None = Field(
        default=None, alias="default", description="Whether it is vCenter's default key provider."
    )
    backed_up: bool | None = Field(
        default=None,
        description="For a Native Key Provider: whether it has been backed up (vCenter needs that).",
    )


class VCenterStatus(StatusModel):
    """Observed state, written by the operator only."""

    observed_generation: int | None = count_field(
        "The metadata.generation of the spec the operator last acted on.", int64=True
    )
    conditions: list[Condition] | None = conditions_field(
        "Ready: logged in, and the server is a vCenter. Reasons when not: SecretNotFound, InvalidSecret, "
        "AuthenticationFailed, CertificateNotTrusted, VCenterUnreachable, NotVCenter, DuplicateVCenter."
    )
    instance_uuid: str | None = Field(
        default=None, max_length=64, description="vCenter's about.instanceUuid: what identifies the vCenter."
    )
    version: str | None = Field(
        default=None, max_length=32, description="vCenter's version, for example 8.0.2."
    )
    build: str | None = Field(default=None, max_length=32, description="vCenter's build number.")
    api_type: str | None = Field(
        default=None,
        max_length=32,
        description="about.apiType: VirtualCenter for a vCenter, HostAgent for ESXi.",
    )
    key_providers: list[KeyProviderStatus] | None = Field(
        default=None, max_length=64, description="The key providers vCenter offers."
    )
    policies: int | None = count_field("VTPMPolicies that name this VCenter.")
    vms: int | None = count_field("VMs the operator watches on this vCenter.")
    last_inventory_time: datetime | None = Field(
        default=None,
        strict=False,
        description="When the operator last read the inventory in full (RFC 3339).",
    )
