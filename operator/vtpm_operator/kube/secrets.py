"""vCenter credentials and CA from Secrets in the policy's own namespace (never across namespaces)."""

from __future__ import annotations

import base64

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.policy import VCenterRef
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.vsphere.session import Credentials, Endpoint


def read_connection(
    core: client.CoreV1Api, namespace: str, vcenter: VCenterRef
) -> tuple[Endpoint, Credentials]:
    data = _secret_data(core, namespace, vcenter.credentials_secret, ("username", "password"))
    ca_pem = None
    if vcenter.ca_secret:
        ca_pem = _secret_data(core, namespace, vcenter.ca_secret, ("ca.crt",))["ca.crt"]
    endpoint = Endpoint(vcenter.server, ca_pem=ca_pem, insecure_skip_verify=vcenter.insecure_skip_verify)
    return endpoint, Credentials(data["username"], data["password"])


def _secret_data(core: client.CoreV1Api, namespace: str, name: str, keys: tuple[str, ...]) -> dict[str, str]:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise PolicyProblem(
                ProblemReason.SECRET_NOT_FOUND,
                f"Secret {name} not found in namespace {namespace}; create it with keys {', '.join(keys)}",
            ) from None
        if error.status == 403:
            raise PolicyProblem(
                ProblemReason.SECRET_NOT_FOUND,
                f"the operator may not read Secret {name} in namespace {namespace}",
            ) from None
        raise
    data = secret.data or {}
    missing = [key for key in keys if not data.get(key)]
    if missing:
        raise PolicyProblem(
            ProblemReason.SECRET_NOT_FOUND,
            f"Secret {name} in namespace {namespace} lacks key {', '.join(missing)}",
        )
    return {key: base64.b64decode(data[key]).decode() for key in keys}
