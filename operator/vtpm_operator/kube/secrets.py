"""vCenter credentials and CA from Secrets in the operator's own namespace, and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.connection import Credentials, Endpoint, VCenterConfig, decode_ca, decode_secret
from vtpm_operator.kube.core import CoreApi, namespaced
from vtpm_operator.problems import PolicyProblem, ProblemReason


class SecretReader:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = CoreApi(api)
        self.namespace = namespace

    def connection(self, config: VCenterConfig) -> tuple[Endpoint, Credentials]:
        username, password = decode_secret(config.credentials_secret, self._data(config.credentials_secret))
        ca_pem = decode_ca(config.ca_secret, self._data(config.ca_secret)) if config.ca_secret else None
        endpoint = Endpoint(config.server, ca_pem=ca_pem, insecure_skip_verify=config.insecure_skip_verify)
        return endpoint, Credentials(username, password)

    def _data(self, name: str) -> Mapping[str, str]:
        try:
            secret = self.core.get(namespaced(self.namespace, "secrets", name))
        except ApiException as error:
            if error.status in (403, 404):
                raise PolicyProblem(
                    ProblemReason.SECRET_NOT_FOUND,
                    f"Secret {name} not found in the operator's namespace {self.namespace}"
                    + (" (the operator may not read it)" if error.status == 403 else ""),
                ) from None
            raise
        return {str(k): str(v) for k, v in (secret.get("data") or {}).items()}
