"""The operator's few calls to the core (v1) API, as plain JSON over the client's ApiClient.

Why not the client's CoreV1Api: its first use builds some 250 pydantic models, 0.6 s of every
start on this machine (1.4 s under load), before an engine may read its change record or its
Secret. These calls go through the same ApiClient (its configuration, TLS, credentials and
pool), raise the same ApiException for any refusal, and answer dicts.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote

from kubernetes import client

_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


class CoreApi:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path)

    def create(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self._call("POST", path, body, timeout)

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", path, body)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        request = self.api.param_serialize(
            method, path, header_params=dict(_JSON), body=body, auth_settings=["BearerToken"]
        )
        response = self.api.call_api(*request, _request_timeout=timeout)
        response.read()
        return cast(dict[str, Any], self.api.response_deserialize(response, {"2XX": "object"}).data)


def namespaced(namespace: str, plural: str, name: str | None = None) -> str:
    """The path of a core object in a namespace, or of their collection when no name is given."""
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"
