"""Prometheus metrics, labelled by policy (never by VM: per-VM detail lives in status and events)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from vtpm_operator.planning import VMState
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.sync import SyncResult

_POLICY = ["policy_namespace", "policy"]

RECONCILES = Counter("vtpm_operator_reconcile", "Syncs of a policy, by outcome.", [*_POLICY, "outcome"])
RECONCILE_SECONDS = Histogram(
    "vtpm_operator_reconcile_duration_seconds",
    "Wall time of one sync of a policy, changes included.",
    _POLICY,
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
VMS = Gauge("vtpm_operator_vms", "Selected VMs of a policy by state at the last sync.", [*_POLICY, "state"])
DRIFTED = Gauge(
    "vtpm_operator_vms_drifted", "VMs compliant in the previous sync that were not at the last one.", _POLICY
)
REMEDIATIONS = Counter("vtpm_operator_remediations", "VMs brought to the desired vTPM state.", _POLICY)
VCENTER_REQUESTS = Counter(
    "vtpm_operator_vcenter_requests", "Calls to vCenter by operation and outcome.", ["operation", "outcome"]
)
LAST_SUCCESS = Gauge(
    "vtpm_operator_last_successful_sync_timestamp_seconds", "Unix time of the last completed sync.", _POLICY
)
CONDITION = Gauge(
    "vtpm_operator_policy_condition",
    "1 when the policy's condition is True, else 0.",
    [*_POLICY, "condition"],
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)


def count_vcenter_request(operation: str, outcome: str) -> None:
    VCENTER_REQUESTS.labels(operation, outcome).inc()


def observe_sync(
    namespace: str,
    name: str,
    outcome: SyncResult | PolicyProblem,
    conditions: dict[str, str],
    seconds: float,
    finished_at: float,
) -> None:
    labels = (namespace, name)
    RECONCILE_SECONDS.labels(*labels).observe(seconds)
    for condition, status in conditions.items():
        CONDITION.labels(*labels, condition).set(1 if status == "True" else 0)
    if isinstance(outcome, PolicyProblem):
        RECONCILES.labels(*labels, "error").inc()
        return
    RECONCILES.labels(*labels, "success").inc()
    for state in VMState:
        VMS.labels(*labels, state.value).set(outcome.count(state))
    DRIFTED.labels(*labels).set(outcome.drifted)
    REMEDIATIONS.labels(*labels).inc(outcome.remediated)
    LAST_SUCCESS.labels(*labels).set(finished_at)


def forget_policy(namespace: str, name: str) -> None:
    """Drop a deleted policy's series so dashboards and alerts stop seeing it."""
    for family in (RECONCILES, RECONCILE_SECONDS, VMS, DRIFTED, REMEDIATIONS, LAST_SUCCESS, CONDITION):
        for labels in list(family._metrics):  # prometheus-client has no public way to list children
            if labels[:2] == (namespace, name):
                family.remove(*labels)
