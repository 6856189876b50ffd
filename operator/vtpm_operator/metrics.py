"""Prometheus metrics: labelled by vCenter and policy, never by VM (per-VM detail lives in status and events).

The engine calls the functions below; nothing else touches the families. Every series a function
creates is remembered under its policy or vCenter, so that `forget_policy` / `forget_vcenter` can
drop exactly those (prometheus-client has no public way to list a family's children).

With replicas, only the holder of a vCenter's lease publishes that vCenter's policies: a replica
that loses the lease calls `forget_policy` for them, so two replicas never export the same policy
for long, and the alerts aggregate with `max by`/`sum by` over replicas.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from collections.abc import Iterable, Mapping
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from vtpm_operator.planning import VMState

M = TypeVar("M", bound=MetricWrapperBase)

PREFIX = "vtpm_operator"
POLICY_LABELS = ("policy_namespace", "policy", "vcenter", "mode")
CONDITION_STATUSES = ("True", "False", "Unknown")
VCENTER_OUTCOMES = ("success", "fault", "unreachable", "session_expired", "tls_error")
CHANGE_ACTIONS = ("Add", "Remove", "PowerOn")

# vCenter answers most calls in milliseconds; a full PropertyCollector page of thousands of VMs or
# a task wait can take tens of seconds.
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FULL_READ_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# A change includes a guest shutdown (up to powerPolicy.shutdownTimeout, 10 minutes by default).
_CHANGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)

BUILD_INFO = Gauge(
    f"{PREFIX}_build_info", "Always 1; the labels say which build runs.", ["version", "python"]
)
VCENTER_REQUESTS = Counter(
    f"{PREFIX}_vcenter_requests",
    "Calls to vCenter (SOAP and REST) by operation and outcome "
    "(success, fault, unreachable, session_expired, tls_error).",
    ["vcenter", "operation", "outcome"],
)
VCENTER_REQUEST_SECONDS = Histogram(
    f"{PREFIX}_vcenter_request_duration_seconds",
    "Wall time of one call to vCenter, by operation, whatever its outcome.",
    ["vcenter", "operation"],
    buckets=_CALL_BUCKETS,
)
FULL_READ_SECONDS = Histogram(
    f"{PREFIX}_full_read_duration_seconds",
    "Wall time of one full read of a vCenter's inventory (the live inventory's fill or re-read).",
    ["vcenter"],
    buckets=_FULL_READ_BUCKETS,
)
CHANGE_SECONDS = Histogram(
    f"{PREFIX}_change_duration_seconds",
    "Wall time of one change to one VM (Add, Remove, PowerOn), guest shutdown and power-on included.",
    ["vcenter", "action"],
    buckets=_CHANGE_BUCKETS,
)
CHANGES = Counter(
    f"{PREFIX}_changes", "Changes to VMs by action and outcome.", ["vcenter", "action", "outcome"]
)
CHANGES_IN_FLIGHT = Gauge(f"{PREFIX}_changes_in_flight", "Changes started and not yet finished.", ["vcenter"])
CHANGES_QUEUED = Gauge(f"{PREFIX}_changes_queued", "Changes waiting in the vCenter's queue.", ["vcenter"])
VCENTER_READY = Gauge(
    f"{PREFIX}_vcenter_ready", "1 when the vCenter's engine has a current view.", ["vcenter"]
)
VCENTER_VMS = Gauge(f"{PREFIX}_vcenter_vms", "VMs in the vCenter's live inventory.", ["vcenter"])
LEASE_HELD = Gauge(f"{PREFIX}_lease_held", "1 while this replica holds the vCenter's lease.", ["vcenter"])
VMS = Gauge(f"{PREFIX}_vms", "VMs a policy selects, by state.", [*POLICY_LABELS, "state"])
VMS_BLOCKED = Gauge(
    f"{PREFIX}_vms_blocked",
    "Blocked VMs of a policy by reason (a VM with two reasons counts under both).",
    [*POLICY_LABELS, "reason"],
)
POLICY_CONDITION = Gauge(
    f"{PREFIX}_policy_condition",
    "1 for the status a policy's condition has now, 0 for the other two (True, False, Unknown).",
    [*POLICY_LABELS, "condition", "status"],
)
LAST_SYNC = Gauge(
    f"{PREFIX}_last_successful_sync_timestamp_seconds",
    "Unix time the policy's view of vCenter was last known current; 0 if it never was.",
    list(POLICY_LABELS),
)
DRIFT = Counter(
    f"{PREFIX}_drift",
    "VMs that were compliant and lost it out of band (a vTPM removed or added outside the operator).",
    list(POLICY_LABELS),
)
REMEDIATIONS = Counter(
    f"{PREFIX}_remediations", "VMs the operator brought to the desired vTPM state.", list(POLICY_LABELS)
)
STATUS_WRITES = Counter(f"{PREFIX}_status_writes", "Status writes to the API server by outcome.", ["outcome"])
for _outcome in ("success", "error"):  # both at 0 from the start: the error ratio needs a baseline
    STATUS_WRITES.labels(_outcome)

_PER_POLICY: tuple[MetricWrapperBase, ...] = (
    VMS,
    VMS_BLOCKED,
    POLICY_CONDITION,
    LAST_SYNC,
    DRIFT,
    REMEDIATIONS,
)
_PER_VCENTER: tuple[MetricWrapperBase, ...] = (
    VCENTER_REQUESTS,
    VCENTER_REQUEST_SECONDS,
    FULL_READ_SECONDS,
    CHANGE_SECONDS,
    CHANGES,
    CHANGES_IN_FLIGHT,
    CHANGES_QUEUED,
    VCENTER_READY,
    VCENTER_VMS,
    LEASE_HELD,
)


class _Children:
    """Which label values each family has been given, per policy and per vCenter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_policy: dict[tuple[str, str], set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        self.by_vcenter: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}

    def policy_child(self, family: M, labels: tuple[str, ...]) -> M:
        with self.lock:
            self.by_policy.setdefault((labels[0], labels[1]), set()).add((family, labels))
        return family.labels(*labels)

    def vcenter_child(self, family: M, labels: tuple[str, ...]) -> M:
        with self.lock:
            self.by_vcenter.setdefault(labels[0], set()).add((family, labels))
        return family.labels(*labels)

    def policy_labels(self, namespace: str, name: str) -> set[tuple[MetricWrapperBase, tuple[str, ...]]]:
        with self.lock:
            return set(self.by_policy.get((namespace, name), ()))

    def drop(self, children: Iterable[tuple[MetricWrapperBase, tuple[str, ...]]]) -> None:
        with self.lock:
            for family, labels in children:
                with contextlib.suppress(KeyError):  # already gone
                    family.remove(*labels)
                if family in _PER_VCENTER:
                    self.by_vcenter.get(labels[0], set()).discard((family, labels))
                else:
                    self.by_policy.get((labels[0], labels[1]), set()).discard((family, labels))


_children = _Children()


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)


def set_build_info(version: str) -> None:
    BUILD_INFO.clear()
    BUILD_INFO.labels(version, platform.python_version()).set(1)


# --- per vCenter ---------------------------------------------------------------------------------


def observe_vcenter_call(vcenter: str, operation: str, outcome: str, seconds: float) -> None:
    """outcome: success | fault | unreachable | session_expired | tls_error."""
    for known in VCENTER_OUTCOMES:  # at 0 from the first call on, so that increase() sees the first error
        _children.vcenter_child(VCENTER_REQUESTS, (vcenter, operation, known))
    _children.vcenter_child(VCENTER_REQUESTS, (vcenter, operation, outcome)).inc()
    _children.vcenter_child(VCENTER_REQUEST_SECONDS, (vcenter, operation)).observe(seconds)


def observe_full_read(vcenter: str, seconds: float) -> None:
    _children.vcenter_child(FULL_READ_SECONDS, (vcenter,)).observe(seconds)


def observe_change(vcenter: str, action: str, outcome: str, seconds: float) -> None:
    """action: Add | Remove | PowerOn."""
    _children.vcenter_child(CHANGES, (vcenter, action, outcome)).inc()
    _children.vcenter_child(CHANGE_SECONDS, (vcenter, action)).observe(seconds)


def set_change_queue(vcenter: str, in_flight: int, queued: int) -> None:
    _children.vcenter_child(CHANGES_IN_FLIGHT, (vcenter,)).set(in_flight)
    _children.vcenter_child(CHANGES_QUEUED, (vcenter,)).set(queued)


def set_vcenter(vcenter: str, *, ready: bool, vms: int, lease_held: bool) -> None:
    # Histograms at 0 before the first observation: rate() needs a sample before it to count it.
    _children.vcenter_child(FULL_READ_SECONDS, (vcenter,))
    for action in CHANGE_ACTIONS:
        _children.vcenter_child(CHANGE_SECONDS, (vcenter, action))
    _children.vcenter_child(VCENTER_READY, (vcenter,)).set(1 if ready else 0)
    _children.vcenter_child(VCENTER_VMS, (vcenter,)).set(vms)
    _children.vcenter_child(LEASE_HELD, (vcenter,)).set(1 if lease_held else 0)


def forget_vcenter(vcenter: str) -> None:
    """Drop a deleted VCenter's series, its policies' included."""
    with _children.lock:
        own = set(_children.by_vcenter.pop(vcenter, ()))
        policies = {
            key
            for key, children in _children.by_policy.items()
            if any(labels[2] == vcenter for _, labels in children)
        }
    _children.drop(own)
    for namespace, name in policies:
        forget_policy(namespace, name)


# --- per policy ----------------------------------------------------------------------------------


def publish_policy(
    namespace: str,
    name: str,
    *,
    vcenter: str,
    mode: str,
    states: Mapping[str, int],
    conditions: Mapping[str, str],
    last_sync: float | None,
    blocked_reasons: Mapping[str, int] | None = None,
) -> None:
    """The policy's current picture. `states`: VMState value -> count (missing states are 0);
    `conditions`: type -> "True" | "False" | "Unknown"; `last_sync`: unix time, None if never synced
    (exported as 0, so that a stale-sync alert sees it); `blocked_reasons`: reason -> Blocked VMs."""
    policy = (namespace, name, vcenter, mode)
    _forget_other_identities(policy)
    for state in {*(s.value for s in VMState), *states}:
        _children.policy_child(VMS, (*policy, state)).set(states.get(state, 0))
    _set_blocked_reasons(policy, blocked_reasons or {})
    for condition, current in conditions.items():
        for status in CONDITION_STATUSES:
            child = _children.policy_child(POLICY_CONDITION, (*policy, condition, status))
            child.set(1 if status == current else 0)
    _children.policy_child(LAST_SYNC, policy).set(last_sync or 0)
    # Counters start at 0, so the first drift is an increase() Prometheus can see.
    _children.policy_child(DRIFT, policy)
    _children.policy_child(REMEDIATIONS, policy)


def _set_blocked_reasons(policy: tuple[str, ...], reasons: Mapping[str, int]) -> None:
    """Reasons published before and gone now drop to 0: a panel shows them leave, not vanish."""
    known = {
        labels[-1]
        for family, labels in _children.policy_labels(policy[0], policy[1])
        if family is VMS_BLOCKED and labels[:4] == policy
    }
    for reason in known | set(reasons):
        _children.policy_child(VMS_BLOCKED, (*policy, reason)).set(reasons.get(reason, 0))


def _forget_other_identities(policy: tuple[str, str, str, str]) -> None:
    """A policy that moved to another vCenter or mode keeps no series under its old labels."""
    stale = {child for child in _children.policy_labels(policy[0], policy[1]) if child[1][:4] != policy}
    _children.drop(stale)


def count_drift(namespace: str, name: str, vcenter: str, mode: str, vms: int) -> None:
    _children.policy_child(DRIFT, (namespace, name, vcenter, mode)).inc(vms)


def count_remediations(namespace: str, name: str, vcenter: str, mode: str, vms: int) -> None:
    _children.policy_child(REMEDIATIONS, (namespace, name, vcenter, mode)).inc(vms)


def forget_policy(namespace: str, name: str) -> None:
    """Drop a policy's series: it was deleted, or this replica lost its vCenter's lease."""
    _children.drop(_children.policy_labels(namespace, name))


# --- operator ------------------------------------------------------------------------------------


def count_status_write(outcome: str) -> None:
    """outcome: success | error."""
    STATUS_WRITES.labels(outcome).inc()
