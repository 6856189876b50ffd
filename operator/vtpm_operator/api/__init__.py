"""The API of both kinds, defined once: pydantic models for spec and status, the CRDs built from them
(vtpm_operator.api.crds), and the parsers that turn a spec into the domain's values."""

from vtpm_operator.api.parse import parse_policy, parse_vcenter
from vtpm_operator.api.vcenter import VCenterSpec, VCenterStatus
from vtpm_operator.api.vtpmpolicy import VTPMPolicySpec, VTPMPolicyStatus

__all__ = [
    "VCenterSpec",
    "VCenterStatus",
    "VTPMPolicySpec",
    "VTPMPolicyStatus",
    "parse_policy",
    "parse_vcenter",
]
