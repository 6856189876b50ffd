"""The domain's view of a VCenter object, and the rules for the Secrets it names. Pure.

Like vtpm_operator.policy these types carry no defaults: vtpm_operator.api builds them from a
VCenter spec. The Secret rules live here, not in kube/, so that they can be tested without an
API server and so that every reader of a Secret applies the same ones.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from vtpm_operator.problems import PolicyProblem, ProblemReason

USERNAME_KEY = "username"
PASSWORD_KEY = "password"
CA_KEY = "ca.crt"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

# A DNS name or IPv4 address, or an IPv6 address in brackets, then an optional port. The API
# schema carries the same shape as its pattern (vtpm_operator.api.vcenter.SERVER_PATTERN).
_SERVER = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")
DEFAULT_PORT = 443


def split_server(server: str) -> tuple[str, int]:
    """(host, port) of "host", "host:port" or "[IPv6]:port"; ValueError for anything else.

    A bare IPv6 address is refused: "fe80::1:443" could be an address or an address and a port.
    """
    match = _SERVER.fullmatch(server)
    if match is None and server.count(":") > 1 and "[" not in server:
        raise ValueError(f"{server!r}: an IPv6 address needs brackets, as in [{server}]:443")
    if match is None:
        raise ValueError(f"{server!r} is not host, host:port or [IPv6]:port")
    port = int(match["port"]) if match["port"] is not None else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return match["ipv6"] or match["host"], port


@dataclass(frozen=True)
class Endpoint:
    server: str  # host or host:port
    ca_pem: str | None = None  # CA that signs vCenter's certificate; None: the system's CAs
    insecure_skip_verify: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        return split_server(self.server)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never in logs, events or status


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: SelectorOperator
    values: tuple[str, ...]  # empty for Exists and DoesNotExist

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.IN:
            return labels.get(self.key) in self.values
        if self.operator is SelectorOperator.NOT_IN:
            return labels.get(self.key) not in self.values  # an absent label is "not in", as in Kubernetes
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class NamespaceSelector:
    """A metav1.LabelSelector: every label and every expression must match (an empty one matches all)."""

    match_labels: Mapping[str, str]
    match_expressions: tuple[LabelRequirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


@dataclass(frozen=True)
class AllowedNamespaces:
    names: frozenset[str]
    selector: NamespaceSelector | None

    def admits(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Named, or selected by the selector; present but empty admits no namespace."""
        if namespace in self.names:
            return True
        return self.selector is not None and self.selector.matches(labels)


@dataclass(frozen=True)
class VCenterConfig:
    server: str
    credentials_secret: str  # in the operator's namespace
    ca_secret: str | None  # in the operator's namespace
    insecure_skip_verify: bool
    allowed_namespaces: AllowedNamespaces | None  # None: every namespace
    allow_removal: bool
    max_concurrent_changes: int


def decode_secret(name: str, data: Mapping[str, str]) -> tuple[str, str]:
    """(username, password) from a Secret's base64 `data`; PolicyProblem(InvalidSecret) otherwise.

    Messages name the Secret and the key, never a byte of a value (not even the position of a bad
    byte, which UnicodeDecodeError's text would give away).
    """
    return _decode_line(name, data, USERNAME_KEY), _decode_line(name, data, PASSWORD_KEY)


def decode_ca(name: str, data: Mapping[str, str]) -> str:
    """The PEM CA bundle under ca.crt; PolicyProblem(InvalidSecret) unless it holds PEM certificates."""
    raw = _decode_bytes(name, data, CA_KEY)
    if PEM_CERTIFICATE not in raw:
        if raw[:1] == b"\x30" and not _is_utf8(raw):  # binary, an ASN.1 SEQUENCE: a DER certificate
            raise _invalid(
                name, CA_KEY, "looks like DER; convert it: openssl x509 -inform der -in ca.der -out ca.crt"
            )
        raise _invalid(name, CA_KEY, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    pem = _text(name, CA_KEY, raw)
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise _invalid(name, CA_KEY, "holds a PEM block that is not a valid certificate") from None
    return pem


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_line(name: str, data: Mapping[str, str], key: str) -> str:
    text = _text(name, key, _decode_bytes(name, data, key))
    if text != text.rstrip("\r\n"):
        raise _invalid(
            name, key, "ends with a newline (often added by echo or an editor); store the value without it"
        )
    return text


def _decode_bytes(name: str, data: Mapping[str, str], key: str) -> bytes:
    encoded = data.get(key)
    if encoded is None:
        raise _invalid(name, key, "is missing")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(name, key, "is not valid base64") from None
    if not raw:
        raise _invalid(name, key, "is empty")
    return raw


def _text(name: str, key: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(name, key, "is not valid UTF-8 text") from None


def _invalid(name: str, key: str, what: str) -> PolicyProblem:
    return PolicyProblem(ProblemReason.INVALID_SECRET, f"Secret {name}: key {key} {what}")
