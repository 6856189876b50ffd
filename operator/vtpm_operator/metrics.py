"""Prometheus metrics, labelled by policy and vCenter (never by VM: per-VM detail lives in status).

Interim version by the lead, to the contract the monitoring work implements in full.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_POLICY = ["policy_namespace", "policy", "vcenter", "mode"]
_CONDITION_STATUSES = ("True", "False", "Unknown")

BUILD_INFO = Gauge("vtpm_operator_build_info", "The running operator's version.", ["version"])
VCENTER_REQUESTS = Counter(
    "vtpm_operator_vcenter_requests", "Calls to vCenter.", ["vcenter", "operation", "outcome"]
)
VCENTER_SECONDS = Histogram(
    "vtpm_operator_vcenter_request_duration_seconds", "Latency of vCenter calls.", ["vcenter", "operation"]
)
FULL_READ_SECONDS = Histogram(
    "vtpm_operator_full_read_duration_seconds",
    "Time of one full read of a vCenter's inventory.",
    ["vcenter"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CHANGE_SECONDS = Histogram(
    "vtpm_operator_change_duration_seconds",
    "Time of one VM's change, shutdown and power-on included.",
    ["vcenter", "action"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
)
CHANGES = Counter("vtpm_operator_changes", "VM changes that ended.", ["vcenter", "action", "outcome"])
IN_FLIGHT = Gauge("vtpm_operator_changes_in_flight", "Changes under way.", ["vcenter"])
QUEUED = Gauge("vtpm_operator_changes_queued", "Changes waiting to start.", ["vcenter"])
VCENTER_READY = Gauge("vtpm_operator_vcenter_ready", "1 while the vCenter is connected.", ["vcenter"])
VCENTER_VMS = Gauge("vtpm_operator_vcenter_vms", "VMs in the vCenter's live inventory.", ["vcenter"])
LEASE_HELD = Gauge("vtpm_operator_lease_held", "1 while this replica holds the vCenter's lease.", ["vcenter"])
VMS = Gauge("vtpm_operator_vms", "Selected VMs of a policy by state.", [*_POLICY, "state"])
CONDITION = Gauge(
    "vtpm_operator_policy_condition",
    "1 for the condition's current status, 0 for the others.",
    [*_POLICY, "condition", "status"],
)
LAST_SYNC = Gauge(
    "vtpm_operator_last_successful_sync_timestamp_seconds",
    "When the policy's view was last known current (0: never).",
    _POLICY,
)
DRIFT = Counter("vtpm_operator_drift", "VMs that lost compliance out of band.", _POLICY)
REMEDIATIONS = Counter("vtpm_operator_remediations", "VMs brought to the desired state.", _POLICY)
STATUS_WRITES = Counter("vtpm_operator_status_writes", "Status writes to the API server.", ["outcome"])

_PER_POLICY = (VMS, CONDITION, LAST_SYNC, DRIFT, REMEDIATIONS)
_PER_VCENTER = (
    VCENTER_REQUESTS,
    VCENTER_SECONDS,
    FULL_READ_SECONDS,
    CHANGE_SECONDS,
    CHANGES,
    IN_FLIGHT,
    QUEUED,
    VCENTER_READY,
    VCENTER_VMS,
    LEASE_HELD,
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)


def set_build_info(version: str) -> None:
    BUILD_INFO.labels(version).set(1)


def observe_vcenter_call(vcenter: str, operation: str, outcome: str, seconds: float) -> None:
    VCENTER_REQUESTS.labels(vcenter, operation, outcome).inc()
    VCENTER_SECONDS.labels(vcenter, operation).observe(seconds)


def observe_full_read(vcenter: str, seconds: float) -> None:
    FULL_READ_SECONDS.labels(vcenter).observe(seconds)


def observe_change(vcenter: str, action: str, outcome: str, seconds: float) -> None:
    CHANGES.labels(vcenter, action, outcome).inc()
    CHANGE_SECONDS.labels(vcenter, action).observe(seconds)


def set_change_queue(vcenter: str, in_flight: int, queued: int) -> None:
    IN_FLIGHT.labels(vcenter).set(in_flight)
    QUEUED.labels(vcenter).set(queued)


def set_vcenter(vcenter: str, *, ready: bool, vms: int, lease_held: bool) -> None:
    VCENTER_READY.labels(vcenter).set(1 if ready else 0)
    VCENTER_VMS.labels(vcenter).set(vms)
    LEASE_HELD.labels(vcenter).set(1 if lease_held else 0)


def publish_policy(
    namespace: str,
    name: str,
    *,
    vcenter: str,
    mode: str,
    states: Mapping[str, int],
    conditions: Mapping[str, str],
    last_sync: float | None,
) -> None:
    labels = (namespace, name, vcenter, mode)
    for state, count in states.items():
        VMS.labels(*labels, state).set(count)
    for condition, status in conditions.items():
        for candidate in _CONDITION_STATUSES:
            CONDITION.labels(*labels, condition, candidate).set(1 if candidate == status else 0)
    gauge = LAST_SYNC.labels(*labels)
    if last_sync is not None:
        gauge.set(last_sync)


def count_drift(namespace: str, name: str, vcenter: str, mode: str, vms: int) -> None:
    DRIFT.labels(namespace, name, vcenter, mode).inc(vms)


def count_remediations(namespace: str, name: str, vcenter: str, mode: str, vms: int) -> None:
    REMEDIATIONS.labels(namespace, name, vcenter, mode).inc(vms)


def count_status_write(outcome: str) -> None:
    STATUS_WRITES.labels(outcome).inc()


def forget_policy(namespace: str, name: str) -> None:
    """Drop a policy's series: it was deleted, or another replica now holds its vCenter."""
    for family in _PER_POLICY:
        for labels in list(family._metrics):  # prometheus-client has no public way to list children
            if labels[:2] == (namespace, name):
                family.remove(*labels)


def forget_vcenter(vcenter: str) -> None:
    for family in _PER_VCENTER:
        for labels in list(family._metrics):
            if labels[0] == vcenter:
                family.remove(*labels)
