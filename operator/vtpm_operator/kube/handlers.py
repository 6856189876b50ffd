"""Kopf handlers: they only translate between Kopf and the worker."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import kubernetes

from vtpm_operator import metrics
from vtpm_operator.events import Notice
from vtpm_operator.kube.worker import GROUP, PLURAL, VERSION, PolicyWorker

PREFIX = "vtpm-operator.io"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # events come from the worker's summaries, not from log lines
    settings.watching.server_timeout = 300
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    if memo.get("metrics_port"):
        metrics.serve(memo["metrics_port"], memo.get("metrics_address", "0.0.0.0"))


# On deletion or shutdown the worker is first asked to stop (it looks every second, and starts no
# further VM); only after the backoff is the thread given up on. Without a backoff, Kopf cancels
# at once and then waits the whole timeout before it lets the finalizer go.
@kopf.daemon(GROUP, VERSION, PLURAL, id="keep-policy", cancellation_backoff=5.0, cancellation_timeout=55.0)
def keep_policy(
    stopped: kopf.DaemonStopped, name: str, namespace: str | None, body: kopf.Body, **_: Any
) -> None:
    def emit(notice: Notice) -> None:
        kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message[:1000])

    PolicyWorker(namespace or "", name, body, emit).run(stopped)
