"""The operator's Kubernetes side without Kopf: the registry of engines, the leases, the writer.

It is started before Kopf is imported: the engines take their leases, log in and read vCenter
while Kopf and aiohttp load and Kopf starts (1 to 2 s here, a fifth of a 10k-VM first status).
Kopf's handlers then only hand it the events that follow its own listing of everything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.engine.engine import EngineSettings
from vtpm_operator.engine.registry import Registry
from vtpm_operator.kube.core import CoreApi
from vtpm_operator.kube.leases import LeaseElector, default_identity
from vtpm_operator.kube.publisher import GROUP, POLICIES, VCENTERS, VERSION, KubePublisher
from vtpm_operator.kube.records import RecordStore
from vtpm_operator.kube.secrets import SecretReader

log = logging.getLogger(__name__)

# What the API server not answering yet looks like: nothing has started, the start can be tried again.
NOT_YET = (ApiException, urllib3.exceptions.HTTPError)


@dataclass
class Runtime:
    registry: Registry
    publisher: KubePublisher
    elector: LeaseElector
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float) -> None:
        """Finish what vCenter runs already (up to `grace`), start nothing, then hand the leases
        back at once, so that the next replica takes over without waiting for them to expire."""
        self.registry.stop(grace=grace)
        self.stopping.set()
        self.elector.release_all()
        self.publisher.stop()


def start(
    operator_namespace: str,
    namespaces: list[str],
    settings: EngineSettings,
    identity: str | None = None,
) -> Runtime:
    """Seeded with everything the API server lists, its engines running. Raises one of NOT_YET
    when the API server does not answer: then nothing was started."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = client.ApiClient()
    records = RecordStore(api, operator_namespace)
    publisher = KubePublisher(api, records)
    registry = Registry(
        publisher,
        SecretReader(CoreApi(api), operator_namespace).connection,
        records.load,
        settings=settings,
    )
    elector = LeaseElector(
        api,
        operator_namespace,
        identity or default_identity(),
        can_release=registry.idle,
        on_acquired=lambda name: _acquired(registry, name),
        on_lost=lambda name: log.info("no longer holding the lease of VCenter %s", name),
    )
    registry.may_act = elector.holds
    registry.on_names = elector.set_units
    _seed(registry, api, namespaces)
    runtime = Runtime(registry, publisher, elector)
    publisher.start()
    elector.set_units(registry.names())
    threading.Thread(target=elector.run, args=(runtime.stopping,), name="leases", daemon=True).start()
    registry.start()
    return runtime


def _acquired(registry: Registry, name: str) -> None:
    log.info("holding the lease of VCenter %s", name)
    registry.wake(name)


def _seed(registry: Registry, api: client.ApiClient, namespaces: list[str]) -> None:
    custom = client.CustomObjectsApi(api)
    metas: list[Any] = [ns["metadata"] for ns in CoreApi(api).get("/api/v1/namespaces")["items"]]
    labels: dict[str, Mapping[str, str]] = {meta["name"]: meta.get("labels") or {} for meta in metas}
    pages: list[Any] = (
        [custom.list_namespaced_custom_object(GROUP, VERSION, ns, POLICIES) for ns in namespaces]
        if namespaces
        else [custom.list_cluster_custom_object(GROUP, VERSION, POLICIES)]
    )
    policies = [body for page in pages for body in page["items"]]
    vcenters: Any = custom.list_cluster_custom_object(GROUP, VERSION, VCENTERS)
    registry.seed(labels, vcenters["items"], policies)
    log.info("seeded with %d VCenters and %d policies", len(vcenters["items"]), len(policies))
