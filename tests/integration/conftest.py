"""Fixtures for the modern API server (apiextensions-apiserver 1.36, testbed.apiext).

- ``apiext_api`` (session): a ``kubernetes.client.ApiClient`` for a fresh apiextensions-apiserver
  1.36 with its own etcd, client-certificate admin; both processes stopped by PID afterwards.
- ``apiext_crds`` (session): both CRDs installed there and Established, CEL rules included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client, config

from testbed.apiext import running_apiext
from tests.conftest import CRD_FILES, install_crd


@pytest.fixture(scope="session")
def apiext_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    with running_apiext(tmp_path_factory.mktemp("apiext")) as server:
        api = config.new_client_from_config(config_file=str(server.kubeconfig))
        try:
            yield api
        finally:
            api.close()


@pytest.fixture(scope="session")
def apiext_crds(apiext_api: client.ApiClient) -> client.CustomObjectsApi:
    for path in CRD_FILES:
        install_crd(apiext_api, yaml.safe_load(path.read_text()))
    return client.CustomObjectsApi(apiext_api)
