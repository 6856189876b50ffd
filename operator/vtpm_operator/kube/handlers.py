"""Kopf handlers: they only translate watch events into calls on the engine registry.

No handler holds a thread: VCenters, policies and namespaces arrive as events and go to the
registry, whose engines (one thread per vCenter) do the work. Before any event is handled, the
startup handler lists every VCenter, policy and namespace once, so that engines judge conflicts
against every policy that exists, whatever order the events come in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.engine.engine import EngineSettings
from vtpm_operator.engine.registry import Registry
from vtpm_operator.kube.leases import LeaseElector, default_identity
from vtpm_operator.kube.publisher import GROUP, POLICIES, VCENTERS, VERSION, KubePublisher
from vtpm_operator.kube.records import RecordStore
from vtpm_operator.kube.secrets import SecretReader

log = logging.getLogger(__name__)

PREFIX = "vtpm-operator.io"
OLD_FINALIZER = f"{PREFIX}/finalizer"  # put on policies by the per-policy daemons of 0.1
# Handlers only hand events over; nothing long-running ever holds one of these threads.
EXECUTOR_THREADS = 4
# On SIGTERM: how long submitted tasks are awaited. With the lease release and the status flush
# after it this stays under the Deployment's terminationGracePeriodSeconds (30 s).
DRAIN_SECONDS = 20.0


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.execution.max_workers = EXECUTOR_THREADS
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # events come from the engines' summaries, not from log lines
    settings.watching.server_timeout = 300
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = client.ApiClient()
    records = RecordStore(api, memo["operator_namespace"])
    publisher = KubePublisher(api, records)
    registry = Registry(
        publisher,
        SecretReader(client.CoreV1Api(api), memo["operator_namespace"]).connection,
        records.load,
        settings=memo.get("engine_settings") or EngineSettings(),
    )
    elector = LeaseElector(
        api,
        memo["operator_namespace"],
        memo.get("identity") or default_identity(),
        can_release=registry.idle,
        on_acquired=lambda name: _acquired(registry, name),
        on_lost=lambda name: log.info("no longer holding the lease of VCenter %s", name),
    )
    registry.may_act = elector.holds
    registry.on_names = elector.set_units
    try:
        _seed(registry, api, memo.get("namespaces") or [])
    except (ApiException, urllib3.exceptions.HTTPError) as error:  # nothing started yet: try again
        raise kopf.TemporaryError(f"cannot list VCenters and policies yet: {error}", delay=5) from None
    publisher.start()
    elector.set_units(registry.names())
    stopping = threading.Event()
    threading.Thread(target=elector.run, args=(stopping,), name="leases", daemon=True).start()
    registry.start()
    memo.update(registry=registry, publisher=publisher, elector=elector, stopping=stopping)


def _acquired(registry: Registry, name: str) -> None:
    log.info("holding the lease of VCenter %s", name)
    registry.wake(name)


def _seed(registry: Registry, api: client.ApiClient, namespaces: list[str]) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    metas: list[Any] = [ns.metadata for ns in core.list_namespace().items]
    labels: dict[str, Mapping[str, str]] = {meta.name: meta.labels or {} for meta in metas}
    pages: list[Any] = (
        [custom.list_namespaced_custom_object(GROUP, VERSION, ns, POLICIES) for ns in namespaces]
        if namespaces
        else [custom.list_cluster_custom_object(GROUP, VERSION, POLICIES)]
    )
    policies = [body for page in pages for body in page["items"]]
    vcenters: Any = custom.list_cluster_custom_object(GROUP, VERSION, VCENTERS)
    registry.seed(labels, vcenters["items"], policies)
    log.info("seeded with %d VCenters and %d policies", len(vcenters["items"]), len(policies))


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    """SIGTERM (a rollout): finish what vCenter runs already (up to DRAIN_SECONDS), start nothing,
    then hand the leases back at once so that the next replica takes over without waiting."""
    if "registry" not in memo:  # it never started
        return
    memo["registry"].stop(grace=DRAIN_SECONDS)
    memo["stopping"].set()
    memo["elector"].release_all()
    memo["publisher"].stop()


@kopf.on.event(GROUP, VERSION, VCENTERS)
def vcenter_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    registry: Registry = memo["registry"]
    if type == "DELETED" or body["metadata"].get("deletionTimestamp"):
        registry.forget_vcenter(body["metadata"]["name"])
    else:
        registry.vcenter(plain(body))


@kopf.on.event(GROUP, VERSION, POLICIES)
def policy_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    registry: Registry = memo["registry"]
    meta = body["metadata"]
    if type == "DELETED" or meta.get("deletionTimestamp"):
        registry.forget_policy(meta["namespace"], meta["name"])
        if OLD_FINALIZER in (meta.get("finalizers") or []):  # nothing waits on deletion any more
            patch.metadata["finalizers"] = [f for f in meta["finalizers"] if f != OLD_FINALIZER]
        return
    registry.policy(plain(body))


@kopf.on.event("", "v1", "namespaces")
def namespace_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    labels = None if type == "DELETED" else dict(body["metadata"].get("labels") or {})
    memo["registry"].namespace(body["metadata"]["name"], labels)


def plain(value: Any) -> Any:
    """A Kopf body (live mapping views) as plain dicts and lists, safe to keep in another thread."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
