"""Keeps one policy: sync, write status and events, wait for the resync period or a spec change, repeat.

One worker per VTPMPolicy, run by a Kopf daemon in its own thread: pyVmomi and the kubernetes
client block, so they stay off Kopf's event loop. The worker holds what must survive between
syncs (the vCenter session, the previous result for drift and events) in plain attributes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator import metrics
from vtpm_operator.api import parse_policy
from vtpm_operator.claims import Claim, ClaimBoard
from vtpm_operator.events import Notice, notices_for
from vtpm_operator.kube.secrets import operator_namespace, read_connection, read_vcenter
from vtpm_operator.policy import DesiredVTPM, Policy
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.retry import FailureBackoff
from vtpm_operator.status import build_status
from vtpm_operator.sync import SyncResult, run_sync
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.session import Credentials, Endpoint, VCenterSession

GROUP, VERSION, PLURAL = "vtpm-operator.io", "v1alpha1", "vtpmpolicies"
MIN_RETRY_SECONDS = 5.0
FALLBACK_RESYNC_SECONDS = 300.0

log = logging.getLogger(__name__)

CLAIMS = ClaimBoard()  # shared by every policy's worker in this operator process

Emit = Callable[[Notice], None]


class PolicyWorker:
    def __init__(self, namespace: str, name: str, body: Mapping[str, Any], emit: Emit) -> None:
        self.namespace = namespace
        self.name = name
        self.body = body  # Kopf's live view: always the latest spec and generation
        self.emit = emit
        self.core = client.CoreV1Api()
        self.custom = client.CustomObjectsApi()
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.previous: SyncResult | PolicyProblem | None = None
        self.last_sync: SyncResult | None = None
        self.backoff = FailureBackoff()
        self.failures = 0
        self._vsphere: VSphereClient | None = None
        self._connection: tuple[Endpoint, Credentials] | None = None

    def run(self, stopped: Any) -> None:
        try:
            while not stopped:
                generation = self._generation()
                try:
                    delay = self.sync_once(generation, stopped)
                except Exception:  # e.g. the API server refused a status write: keep the policy alive
                    log.exception("sync of %s/%s could not be completed", self.namespace, self.name)
                    self.failures += 1
                    delay = min(FALLBACK_RESYNC_SECONDS, MIN_RETRY_SECONDS * 2.0**self.failures)
                self._sleep(stopped, delay, generation)
        finally:
            CLAIMS.withdraw(self.key)
            if self._vsphere is not None:
                self._vsphere.close()
            metrics.forget_policy(self.namespace, self.name)

    def sync_once(self, generation: int, stopped: Any) -> float:
        """One sync; returns how long to wait before the next."""
        started = time.monotonic()
        policy: Policy | None = None
        try:
            policy = parse_policy(self.body.get("spec") or {})
            vsphere = self._client(policy)
            outcome: SyncResult | PolicyProblem = run_sync(
                vsphere,
                policy,
                self.last_sync.compliant_ids if self.last_sync else frozenset(),
                on_progress=lambda r: self._report_progress(r, generation, policy),
                held=self.backoff.held(),
                claim=lambda selected: CLAIMS.claim(self.key, Claim(policy.vcenter, policy.vtpm, selected)),
                should_continue=lambda: not stopped and self._generation() == generation,
            )
        except PolicyProblem as problem:
            outcome = problem
        except Exception as error:  # a fault no rule above expected: report it, retry with backoff
            log.exception("sync of %s/%s failed", self.namespace, self.name)
            outcome = PolicyProblem(ProblemReason.VCENTER_ERROR, describe(error))
        if isinstance(outcome, PolicyProblem) and outcome.reason in (
            ProblemReason.AUTHENTICATION_FAILED,
            ProblemReason.VCENTER_UNREACHABLE,
        ):
            self._drop_client()  # a fresh login next time, with whatever the Secret then holds
        self._publish(outcome, generation, policy)
        metrics.observe_sync(
            self.namespace,
            self.name,
            outcome,
            {c["type"]: c["status"] for c in self.status.get("conditions", [])},
            time.monotonic() - started,
            time.time(),
        )
        resync = policy.resync_period if policy else FALLBACK_RESYNC_SECONDS
        if isinstance(outcome, SyncResult):
            self.failures = 0
            self.backoff.record(outcome)
            return resync
        self.failures += 1
        return min(resync, MIN_RETRY_SECONDS * 2.0 ** (self.failures - 1))

    def _report_progress(self, result: SyncResult, generation: int, policy: Policy) -> None:
        """A failed progress report must not stop the changes it reports on."""
        try:
            self._publish(result, generation, policy)
        except ApiException as error:
            log.warning("progress of %s/%s not written: %s", self.namespace, self.name, error.reason)

    def _publish(self, outcome: SyncResult | PolicyProblem, generation: int, policy: Policy | None) -> None:
        status = build_status(self.status, outcome, generation=generation, now=datetime.now(UTC))
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status}
            )
        except ApiException as error:
            if error.status == 404:  # a deleted policy needs no status
                return
            raise  # the sync is not done until its status is written: run() retries with backoff
        self.status.update(status)
        desired = policy.vtpm if policy else DesiredVTPM.PRESENT
        for notice in notices_for(self.previous, outcome, desired, last_sync=self.last_sync):
            self.emit(notice)
        if isinstance(outcome, SyncResult) and outcome.in_flight:
            return
        self.previous = outcome
        if isinstance(outcome, SyncResult):
            self.last_sync = outcome

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 0)

    def _client(self, policy: Policy) -> VSphereClient:
        # The Secret is read every sync, so fixed credentials take effect without a restart.
        vcenter = read_vcenter(self.custom, policy.vcenter)
        connection = read_connection(self.core, operator_namespace(), vcenter)
        if self._vsphere is None or connection != self._connection:
            self._drop_client()
            self._vsphere = VSphereClient(VCenterSession(*connection))
            self._connection = connection
        return self._vsphere

    def _drop_client(self) -> None:
        if self._vsphere is not None:
            self._vsphere.close()
        self._vsphere = None
        self._connection = None

    def _sleep(self, stopped: Any, seconds: float, generation: int) -> None:
        deadline = time.monotonic() + seconds
        while not stopped and time.monotonic() < deadline:
            if self._generation() != generation:
                return  # the spec changed: sync now
            stopped.wait(min(1.0, max(0.0, deadline - time.monotonic())))
