"""Kopf handlers: they only translate watch events into calls on the engine registry.

No handler holds a thread: VCenters, policies and namespaces arrive as events and go to the
registry, whose engines (one thread per vCenter) do the work. The registry is the runtime's
(kube/runtime.py), seeded with a listing of every VCenter, policy and namespace before any event
is handled, so that engines judge conflicts against every policy that exists, whatever order
the events come in. It is normally started before Kopf is imported; it is started here when the
API server did not answer then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from vtpm_operator.engine.engine import EngineSettings
from vtpm_operator.engine.registry import Registry
from vtpm_operator.kube import runtime
from vtpm_operator.kube.publisher import GROUP, POLICIES, VCENTERS, VERSION

PREFIX = "vtpm-operator.io"
OLD_FINALIZER = f"{PREFIX}/finalizer"  # put on policies by the per-policy daemons of 0.1
# Handlers only hand events over; nothing long-running ever holds one of these threads.
EXECUTOR_THREADS = 4


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
        if memo.get("runtime") is not None:
            memo["runtime"].relist()
            return
        memo["runtime"] = runtime.start(
            memo["operator_namespace"],
            memo.get("namespaces") or [],
            memo.get("engine_settings") or EngineSettings(),
            memo.get("identity"),
        )
    except runtime.NOT_YET as error:  # tried again, with Kopf's retries
        raise kopf.TemporaryError(f"cannot list VCenters and policies: {error}", delay=5) from None


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    """SIGTERM (a rollout): see Runtime.stop."""
    if memo.get("runtime") is not None:  # it never started otherwise
        memo["runtime"].stop()


def _registry(memo: kopf.Memo) -> Registry:
    return memo["runtime"].registry  # type: ignore[no-any-return]


@kopf.on.event(GROUP, VERSION, VCENTERS)
def vcenter_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    registry = _registry(memo)
    if type == "DELETED" or body["metadata"].get("deletionTimestamp"):
        registry.forget_vcenter(body["metadata"]["name"])
    else:
        registry.vcenter(plain(body))


@kopf.on.event(GROUP, VERSION, POLICIES)
def policy_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    registry = _registry(memo)
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
    _registry(memo).namespace(body["metadata"]["name"], labels)


def plain(value: Any) -> Any:
    """A Kopf body (live mapping views) as plain dicts and lists, safe to keep in another thread."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
