"""The API's typed models (placeholder by the lead; the "api" work replaces it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vtpm_operator.connection import AllowedNamespaces, NamespaceSelector, VCenterConfig, split_server
from vtpm_operator.policy import Policy
from vtpm_operator.policy import parse_policy as _parse_policy
from vtpm_operator.problems import PolicyProblem, ProblemReason


def parse_policy(spec: Mapping[str, Any]) -> Policy:
    return _parse_policy(spec)


def parse_vcenter(spec: Mapping[str, Any]) -> VCenterConfig:
    try:
        split_server(spec["server"])
        allowed = spec.get("allowedNamespaces")
        selector = (allowed or {}).get("selector")
        return VCenterConfig(
            server=spec["server"],
            credentials_secret=spec["credentialsSecretRef"]["name"],
            ca_secret=(spec.get("caSecretRef") or {}).get("name"),
            insecure_skip_verify=bool(spec.get("insecureSkipVerify", False)),
            allowed_namespaces=None
            if allowed is None
            else AllowedNamespaces(
                frozenset(allowed.get("names") or []),
                NamespaceSelector(dict(selector.get("matchLabels") or {})) if selector else None,
            ),
            allow_removal=bool(spec.get("allowRemoval", False)),
            max_concurrent_changes=int(spec.get("maxConcurrentChanges", 8)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise PolicyProblem(ProblemReason.INVALID_SPEC, f"invalid spec: {error}") from error
