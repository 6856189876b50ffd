"""Policy-level problems: conditions that stop a whole sync, each with a documented reason."""

from __future__ import annotations

from enum import StrEnum


class ProblemReason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    CERTIFICATE_NOT_TRUSTED = "CertificateNotTrusted"
    VCENTER_UNREACHABLE = "VCenterUnreachable"
    NOT_VCENTER = "NotVCenter"
    TAG_NOT_FOUND = "TagNotFound"
    VCENTER_ERROR = "VCenterError"
    INVALID_SECRET = "InvalidSecret"
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
    VCENTER_NOT_FOUND = "VCenterNotFound"
    DUPLICATE_VCENTER = "DuplicateVCenter"


# Problems a retry can cure without anyone changing anything: not Stalled, retried with backoff.
TRANSIENT = frozenset({ProblemReason.VCENTER_UNREACHABLE, ProblemReason.VCENTER_ERROR})


class PolicyProblem(Exception):
    """A sync could not look at the VMs at all. The message is safe to show: it never holds secrets."""

    def __init__(self, reason: ProblemReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT
