"""A vCenter connection as admins declare it (a cluster-scoped VCenter), as plain values. Pure.

Placeholder by the lead; the "api" work replaces it with the full version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


def split_server(server: str) -> tuple[str, int]:
    """(host, port) from host, host:port or [IPv6]:port; ValueError otherwise."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.removeprefix(":") if rest else "443"
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    elif ":" in server:
        raise ValueError(f"{server!r}: write an IPv6 address as [address]:port")
    else:
        host, port = server, "443"
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{server!r} is not host, host:port or [IPv6]:port with a port from 1 to 65535")
    return host, int(port)


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.IN:
            return labels.get(self.key) in self.values
        if self.operator is SelectorOperator.NOT_IN:
            return labels.get(self.key) not in self.values
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class NamespaceSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True)
class AllowedNamespaces:
    names: frozenset[str]
    selector: NamespaceSelector | None

    def admits(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace in self.names or (self.selector is not None and self.selector.matches(labels))


@dataclass(frozen=True)
class VCenterConfig:
    server: str
    credentials_secret: str
    ca_secret: str | None
    insecure_skip_verify: bool
    allowed_namespaces: AllowedNamespaces | None  # None: every namespace
    allow_removal: bool
    max_concurrent_changes: int


def decode_secret(name: str, data: Mapping[str, str]) -> tuple[str, str]:
    """(username, password) from a Secret's base64 data; placeholder for the api work's version."""
    import base64

    try:
        return base64.b64decode(data["username"]).decode(), base64.b64decode(data["password"]).decode()
    except (KeyError, ValueError) as error:
        from vtpm_operator.problems import PolicyProblem, ProblemReason

        raise PolicyProblem(ProblemReason.INVALID_SECRET, f"Secret {name}: {type(error).__name__}") from None


def decode_ca(name: str, data: Mapping[str, str]) -> str:
    import base64

    try:
        return base64.b64decode(data["ca.crt"]).decode()
    except (KeyError, ValueError) as error:
        from vtpm_operator.problems import PolicyProblem, ProblemReason

        raise PolicyProblem(ProblemReason.INVALID_SECRET, f"Secret {name}: {type(error).__name__}") from None
