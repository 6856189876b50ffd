"""Each vCenter's change record, in a ConfigMap of the operator's namespace.

What a status write must not be trusted to keep: the per-VM refusal counts and backoff, and the
policies' running totals. The engine records them before their status is written, so that a
failed status write, a restart or a failover to another replica loses none of it and counts
nothing twice: whoever holds the vCenter's lease next reads the record first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.kube.core import CoreApi, namespaced

DATA_KEY = "record.json"


def record_name(vcenter: str) -> str:
    """A ConfigMap name for the VCenter: readable, and unique even where it had to be shortened."""
    slug = re.sub(r"[^a-z0-9-]", "-", vcenter.lower()).strip("-")[:40]
    return f"vtpm-record-{slug}-{hashlib.sha256(vcenter.encode()).hexdigest()[:8]}"


class RecordStore:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = CoreApi(api)
        self.namespace = namespace

    def load(self, vcenter: str) -> dict[str, Any]:
        """The record, {} when there is none yet. Raises ApiException when it cannot be read: acting
        without it could power-cycle a VM whose refusals it counts."""
        try:
            config_map = self.core.get(namespaced(self.namespace, "configmaps", record_name(vcenter)))
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        loaded: dict[str, Any] = json.loads((config_map.get("data") or {}).get(DATA_KEY) or "{}")
        return loaded

    def save(self, vcenter: str, record: Mapping[str, Any]) -> None:
        name = record_name(vcenter)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "vtpm-operator"},
                "annotations": {"vtpm-operator.io/vcenter": vcenter},
            },
            "data": {DATA_KEY: json.dumps(record, sort_keys=True)},
        }
        try:
            self.core.replace(namespaced(self.namespace, "configmaps", name), body)
        except ApiException as error:
            if error.status != 404:
                raise
            self.core.create(namespaced(self.namespace, "configmaps"), body)
