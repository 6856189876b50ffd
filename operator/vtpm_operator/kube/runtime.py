"""The operator's Kubernetes side without Kopf: the registry of engines, the leases, the writer.

It is started before Kopf is imported, and Kopf only once the engines have told every policy
something (Runtime.settle, bounded): the engines take their leases, log in and read vCenter with
the interpreter to themselves. Kopf's import and start cost about 1 s of CPU here, and Python runs
one thread at a time, so loading Kopf meanwhile delayed every first status by about as much.
Kopf's handlers then only hand it the events that follow its own listing of everything.
"""

from __future__ import annotations

import logging
import threading
import time
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

# What a failed listing raises (the API server not answering, or refusing): nothing has started,
# and the start can be tried again.
NOT_YET = (ApiException, urllib3.exceptions.HTTPError)
# On SIGTERM: how long submitted tasks are awaited. With the lease release and the status flush
# after it this stays under the Deployment's terminationGracePeriodSeconds (30 s).
DRAIN_SECONDS = 20.0
# At most this long Kopf waits for the engines' first statuses (Runtime.settle): a fill slower
# than this shares the interpreter with Kopf's start, as it did before. Kopf's liveness endpoint
# is then up about 1 s after the bound, just after the Deployment's probe first asks (at 10 s):
# that probe fails, and the next two of the three it allows (20 s apart) find it up.
SETTLE_SECONDS = 10.0


@dataclass
class Runtime:
    api: client.ApiClient
    namespaces: list[str]  # the policies' namespaces it watches; all when empty
    registry: Registry
    publisher: KubePublisher
    elector: LeaseElector
    stopping: threading.Event = field(default_factory=threading.Event)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def relist(self) -> None:
        """List everything again, as Kopf is about to watch: an object deleted since the first
        listing has no event left to say so (Kopf's watch begins with a listing of its own)."""
        _seed(self.registry, self.api, self.namespaces)

    def settle(self, timeout: float = SETTLE_SECONDS) -> bool:
        """Whether, within `timeout` seconds, the first lease round was tried, every engine
        holding its lease here has told each of its policies something, and what was handed to
        the status writer then and may be written at once is written (KubePublisher.wait_written).
        Kopf is loaded after it: its import and start (about 1 s of CPU here) would
        otherwise share the interpreter, one thread at a time, with the first fill and the
        status writes, and delay every first status by as much."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        return (
            self.elector.first_round.wait(timeout)
            and all(self.registry.wait_reported(name, left()) for name in sorted(self.elector.held()))
            and self.publisher.wait_written(left())
        )

    def stop(self, grace: float = DRAIN_SECONDS) -> None:
        """Finish what vCenter runs already (up to `grace`), start nothing, then hand the leases
        back at once, so that the next replica takes over without waiting for them to expire.
        Once only: a second call waits for the first, then finds nothing left to do."""
        with self._stop_lock:
            if self.stopping.is_set():
                return
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
        SecretReader(api, operator_namespace).connection,
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
    runtime = Runtime(api, namespaces, registry, publisher, elector)
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
