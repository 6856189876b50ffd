"""From a spec mapping to the domain's values, or PolicyProblem(InvalidSpec) naming the field.

The models hold every default and every rule, the CEL rules included: the API server judges them
at admission on Kubernetes 1.25+, the models judge them here for older servers, for objects stored
before a rule existed, and for the `audit` command that has no API server at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from vtpm_operator.api.base import duration_seconds
from vtpm_operator.api.vcenter import AllowedNamespacesSpec, NamespaceLabelSelector, VCenterSpec
from vtpm_operator.api.vtpmpolicy import MOVED_MESSAGE, Tag, VTPMPolicySpec
from vtpm_operator.connection import (
    AllowedNamespaces,
    LabelRequirement,
    NamespaceSelector,
    VCenterConfig,
)
from vtpm_operator.policy import Policy, PowerPolicy, TagRef
from vtpm_operator.problems import PolicyProblem, ProblemReason

Model = TypeVar("Model", bound=BaseModel)
MAX_ERRORS_SHOWN = 3


def parse_policy(spec: Mapping[str, Any]) -> Policy:
    """A Policy from a VTPMPolicy spec; PolicyProblem(InvalidSpec, "spec.<field>: ...") otherwise."""
    if "vcenter" in spec and "vcenterRef" not in spec:  # an object stored before the VCenter kind
        raise PolicyProblem(ProblemReason.INVALID_SPEC, f"spec.vcenter: {MOVED_MESSAGE}")
    model = validate_spec(VTPMPolicySpec, spec)
    power = model.power_policy
    return Policy(
        vcenter=model.vcenter_ref.name,
        tags=_tag_refs(model.selector.tags),
        exclude_tags=_tag_refs(model.selector.exclude_tags),
        vtpm=model.vtpm,
        allow_removal=model.allow_removal,
        mode=model.mode,
        key_provider=model.key_provider or None,
        power=PowerPolicy(
            action=power.action,
            shutdown_timeout=duration_seconds(power.shutdown_timeout),
            force_power_off=power.force_power_off,
            restore_power_state=power.restore_power_state,
        ),
        max_concurrent=model.max_concurrent,
        resync_period=duration_seconds(model.resync_period),
    )


def parse_vcenter(spec: Mapping[str, Any]) -> VCenterConfig:
    """A VCenterConfig from a VCenter spec; PolicyProblem(InvalidSpec, "spec.<field>: ...") otherwise."""
    model = validate_spec(VCenterSpec, spec)
    return VCenterConfig(
        server=model.server,
        credentials_secret=model.credentials_secret_ref.name,
        ca_secret=model.ca_secret_ref.name if model.ca_secret_ref else None,
        insecure_skip_verify=model.insecure_skip_verify,
        allowed_namespaces=_allowed(model.allowed_namespaces),
        allow_removal=model.allow_removal,
        max_concurrent_changes=model.max_concurrent_changes,
    )


def validate_spec(model: type[Model], spec: Mapping[str, Any]) -> Model:
    """The model of a spec; PolicyProblem(InvalidSpec) with every error's field path, first ones first."""
    if not isinstance(spec, Mapping):
        raise PolicyProblem(ProblemReason.INVALID_SPEC, "spec: must be an object")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as error:
        raise PolicyProblem(ProblemReason.INVALID_SPEC, describe_errors(error.errors())) from None


def describe_errors(errors: Sequence[ErrorDetails]) -> str:
    shown = [f"{field_path(e['loc'])}: {_what(e)}" for e in errors[:MAX_ERRORS_SHOWN]]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def field_path(loc: Iterable[int | str]) -> str:
    """("selector", "tags", 0, "name") -> "spec.selector.tags[0].name"."""
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _what(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of this kind"
    if kind == "value_error":  # our own validators: drop pydantic's "Value error, " prefix
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    return error["msg"][:1].lower() + error["msg"][1:]


def _tag_refs(tags: Sequence[Tag]) -> tuple[TagRef, ...]:
    return tuple(sorted(TagRef(t.category, t.name) for t in tags))


def _allowed(spec: AllowedNamespacesSpec | None) -> AllowedNamespaces | None:
    if spec is None:
        return None
    return AllowedNamespaces(names=frozenset(spec.names), selector=_selector(spec.selector))


def _selector(spec: NamespaceLabelSelector | None) -> NamespaceSelector | None:
    if spec is None:
        return None
    return NamespaceSelector(
        match_labels=dict(spec.match_labels),
        match_expressions=tuple(
            LabelRequirement(r.key, r.operator, tuple(r.values)) for r in spec.match_expressions
        ),
    )
