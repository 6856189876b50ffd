"""A VCenter's credentials and CA from Secrets in the operator's namespace (never across namespaces)."""

from __future__ import annotations

import os
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.api import parse_vcenter
from vtpm_operator.connection import VCenterConfig, decode_ca, decode_secret
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.vsphere.session import Credentials, Endpoint

GROUP, VERSION = "vtpm-operator.io", "v1alpha1"


def operator_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "vtpm-operator"


def read_vcenter(api: client.CustomObjectsApi, name: str) -> VCenterConfig:
    """The VCenter object a policy names, parsed; PolicyProblem(VCenterNotFound) when it does not exist."""
    try:
        body = cast(dict[str, Any], api.get_cluster_custom_object(GROUP, VERSION, "vcenters", name))
    except ApiException as error:
        if error.status == 404:
            raise PolicyProblem(ProblemReason.VCENTER_NOT_FOUND, f"VCenter {name} does not exist") from None
        raise
    return parse_vcenter(body.get("spec") or {})


def read_connection(
    core: client.CoreV1Api, namespace: str, vcenter: VCenterConfig
) -> tuple[Endpoint, Credentials]:
    username, password = decode_secret(
        vcenter.credentials_secret, _secret_data(core, namespace, vcenter.credentials_secret)
    )
    ca_pem = None
    if vcenter.ca_secret:
        ca_pem = decode_ca(vcenter.ca_secret, _secret_data(core, namespace, vcenter.ca_secret))
    endpoint = Endpoint(vcenter.server, ca_pem=ca_pem, insecure_skip_verify=vcenter.insecure_skip_verify)
    return endpoint, Credentials(username, password)


def _secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise PolicyProblem(
                ProblemReason.SECRET_NOT_FOUND, f"Secret {name} not found in namespace {namespace}"
            ) from None
        if error.status == 403:
            raise PolicyProblem(
                ProblemReason.SECRET_NOT_FOUND,
                f"the operator may not read Secret {name} in namespace {namespace}",
            ) from None
        raise
    return cast(dict[str, str], secret.data or {})
