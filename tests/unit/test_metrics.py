"""metrics.py against the real prometheus-client registry: what a scrape would read."""

from __future__ import annotations

import itertools
import urllib.request

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from testbed.kube import free_port
from vtpm_operator import metrics
from vtpm_operator.planning import VMState

_names = (f"p{i}" for i in itertools.count())


def unique_policy() -> tuple[str, str]:
    """A policy no other test touches: the registry is process-wide."""
    return "ns", next(_names)


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def policy_series(namespace: str, name: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for family in text_string_to_metric_families(generate_latest().decode()):
        for s in family.samples:
            if s.labels.get("policy_namespace") == namespace and s.labels.get("policy") == name:
                found.append((s.name, s.labels, s.value))
    return found


def publish(namespace: str, name: str, **overrides: object) -> None:
    arguments: dict[str, object] = {
        "vcenter": "vc1",
        "mode": "Enforce",
        "states": {"Compliant": 3, "Blocked": 1},
        "conditions": {"Ready": "False", "Compliant": "Unknown"},
        "last_sync": 1700000000.0,
        "blocked_reasons": {"HostVersionTooOld": 1},
        **overrides,
    }
    metrics.publish_policy(namespace, name, **arguments)  # type: ignore[arg-type]


def test_every_state_is_exported_with_the_policy_labels() -> None:
    ns, name = unique_policy()
    publish(ns, name)
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": "Enforce"}
    for state in VMState:
        expected = {"Compliant": 3.0, "Blocked": 1.0}.get(state.value, 0.0)
        assert sample("vtpm_operator_vms", **labels, state=state.value) == expected
    assert sample("vtpm_operator_vms_blocked", **labels, reason="HostVersionTooOld") == 1.0


def test_unknown_is_its_own_status_not_false() -> None:
    ns, name = unique_policy()
    publish(ns, name)
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": "Enforce"}
    compliant = {
        status: sample("vtpm_operator_policy_condition", **labels, condition="Compliant", status=status)
        for status in ("True", "False", "Unknown")
    }
    assert compliant == {"True": 0.0, "False": 0.0, "Unknown": 1.0}
    assert sample("vtpm_operator_policy_condition", **labels, condition="Ready", status="False") == 1.0


def test_a_policy_that_never_synced_exports_last_sync_zero() -> None:
    ns, name = unique_policy()
    publish(ns, name, last_sync=None)
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": "Enforce"}
    assert sample("vtpm_operator_last_successful_sync_timestamp_seconds", **labels) == 0.0
    publish(ns, name, last_sync=1700000123.5)
    assert sample("vtpm_operator_last_successful_sync_timestamp_seconds", **labels) == 1700000123.5


def test_drift_and_remediation_counters_exist_at_zero_before_the_first_event() -> None:
    # increase() needs a sample before the first event, or the first drift is invisible to alerts.
    ns, name = unique_policy()
    publish(ns, name)
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": "Enforce"}
    assert sample("vtpm_operator_drift_total", **labels) == 0.0
    assert sample("vtpm_operator_remediations_total", **labels) == 0.0
    metrics.count_drift(ns, name, "vc1", "Enforce", 2)
    metrics.count_drift(ns, name, "vc1", "Enforce", 1)
    metrics.count_remediations(ns, name, "vc1", "Enforce", 3)
    assert sample("vtpm_operator_drift_total", **labels) == 3.0
    assert sample("vtpm_operator_remediations_total", **labels) == 3.0


def test_a_mode_or_vcenter_change_leaves_no_series_under_the_old_labels() -> None:
    ns, name = unique_policy()
    publish(ns, name)
    metrics.count_drift(ns, name, "vc1", "Enforce", 1)
    publish(ns, name, mode="Audit", vcenter="vc2")
    modes = {(labels["mode"], labels["vcenter"]) for _, labels, _ in policy_series(ns, name)}
    assert modes == {("Audit", "vc2")}


def test_a_blocked_reason_that_went_away_drops_to_zero() -> None:
    ns, name = unique_policy()
    publish(ns, name, blocked_reasons={"HostVersionTooOld": 2, "GuestOSUnsupported": 1})
    publish(ns, name, blocked_reasons={"GuestOSUnsupported": 4})
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": "Enforce"}
    assert sample("vtpm_operator_vms_blocked", **labels, reason="HostVersionTooOld") == 0.0
    assert sample("vtpm_operator_vms_blocked", **labels, reason="GuestOSUnsupported") == 4.0


def test_forget_policy_drops_exactly_that_policy() -> None:
    ns, gone = unique_policy()
    _, kept = unique_policy()
    publish(ns, gone)
    publish(ns, kept)
    metrics.count_drift(ns, gone, "vc1", "Enforce", 1)
    metrics.forget_policy(ns, gone)
    assert policy_series(ns, gone) == []
    assert policy_series(ns, kept)
    publish(ns, gone)  # the next holder of the lease publishes it again from scratch
    labels = {"policy_namespace": ns, "policy": gone, "vcenter": "vc1", "mode": "Enforce"}
    assert sample("vtpm_operator_drift_total", **labels) == 0.0


def test_vcenter_calls_count_and_time_by_operation() -> None:
    metrics.observe_vcenter_call("vc-calls", "RetrievePropertiesEx", "success", 0.02)
    metrics.observe_vcenter_call("vc-calls", "RetrievePropertiesEx", "success", 3.0)
    metrics.observe_vcenter_call("vc-calls", "RetrievePropertiesEx", "unreachable", 60.0)
    op = {"vcenter": "vc-calls", "operation": "RetrievePropertiesEx"}
    assert sample("vtpm_operator_vcenter_requests_total", **op, outcome="success") == 2.0
    assert sample("vtpm_operator_vcenter_requests_total", **op, outcome="unreachable") == 1.0
    assert sample("vtpm_operator_vcenter_request_duration_seconds_count", **op) == 3.0
    assert sample("vtpm_operator_vcenter_request_duration_seconds_sum", **op) == 63.02
    assert sample("vtpm_operator_vcenter_request_duration_seconds_bucket", **op, le="0.025") == 1.0
    assert sample("vtpm_operator_vcenter_request_duration_seconds_bucket", **op, le="5.0") == 2.0


def test_error_counters_and_histograms_start_at_zero_so_rates_see_their_first_event() -> None:
    vc = "vc-zero"
    metrics.set_vcenter(vc, ready=True, vms=1, lease_held=True)
    metrics.observe_vcenter_call(vc, "Login", "success", 0.1)
    for outcome in ("fault", "unreachable", "session_expired", "tls_error"):
        assert (
            sample("vtpm_operator_vcenter_requests_total", vcenter=vc, operation="Login", outcome=outcome)
            == 0
        )
    assert sample("vtpm_operator_full_read_duration_seconds_count", vcenter=vc) == 0
    for action in ("Add", "Remove", "PowerOn"):
        assert sample("vtpm_operator_change_duration_seconds_count", vcenter=vc, action=action) == 0
    assert sample("vtpm_operator_status_writes_total", outcome="error") is not None


def test_vcenter_gauges_changes_and_full_reads() -> None:
    vc = "vc-gauges"
    metrics.set_vcenter(vc, ready=True, vms=120, lease_held=False)
    metrics.set_change_queue(vc, in_flight=3, queued=40)
    metrics.observe_change(vc, "Add", "success", 12.0)
    metrics.observe_change(vc, "Add", "failed", 1.0)
    metrics.observe_full_read(vc, 4.0)
    assert sample("vtpm_operator_vcenter_ready", vcenter=vc) == 1.0
    assert sample("vtpm_operator_vcenter_vms", vcenter=vc) == 120.0
    assert sample("vtpm_operator_lease_held", vcenter=vc) == 0.0
    assert sample("vtpm_operator_changes_in_flight", vcenter=vc) == 3.0
    assert sample("vtpm_operator_changes_queued", vcenter=vc) == 40.0
    assert sample("vtpm_operator_changes_total", vcenter=vc, action="Add", outcome="failed") == 1.0
    assert sample("vtpm_operator_change_duration_seconds_count", vcenter=vc, action="Add") == 2.0
    assert sample("vtpm_operator_full_read_duration_seconds_sum", vcenter=vc) == 4.0


def test_forget_vcenter_drops_its_series_and_its_policies() -> None:
    vc = "vc-deleted"
    ns, on_it = unique_policy()
    _, elsewhere = unique_policy()
    metrics.set_vcenter(vc, ready=True, vms=1, lease_held=True)
    metrics.observe_vcenter_call(vc, "Login", "success", 0.1)
    publish(ns, on_it, vcenter=vc)
    publish(ns, elsewhere, vcenter="vc-kept")
    metrics.forget_vcenter(vc)
    exported = generate_latest().decode()
    assert f'vcenter="{vc}"' not in exported
    assert policy_series(ns, on_it) == []
    assert policy_series(ns, elsewhere)


def test_build_info_and_status_writes() -> None:
    metrics.set_build_info("1.2.3")
    metrics.set_build_info("1.2.4")  # one build runs: the older labels go
    builds = [
        s.labels["version"]
        for family in text_string_to_metric_families(generate_latest().decode())
        if family.name == "vtpm_operator_build_info"
        for s in family.samples
    ]
    assert builds == ["1.2.4"]
    before = sample("vtpm_operator_status_writes_total", outcome="error") or 0.0
    metrics.count_status_write("error")
    assert sample("vtpm_operator_status_writes_total", outcome="error") == before + 1


def test_no_series_carries_a_vm_label() -> None:
    ns, name = unique_policy()
    publish(ns, name)
    allowed = {
        *metrics.POLICY_LABELS,
        *("state", "reason", "condition", "status", "operation", "outcome", "action", "le"),
        *("version", "python"),
    }
    for family in text_string_to_metric_families(generate_latest().decode()):
        if family.name.startswith("vtpm_operator_"):
            for s in family.samples:
                assert set(s.labels) <= allowed, (s.name, s.labels)


def test_serve_exposes_the_registry_over_http() -> None:
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    ns, name = unique_policy()
    publish(ns, name)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    served = {
        (s.labels["policy_namespace"], s.labels["policy"], s.labels["state"], s.value)
        for family in text_string_to_metric_families(body)
        if family.name == "vtpm_operator_vms"
        for s in family.samples
    }
    assert (ns, name, "Compliant", 3.0) in served


_state_counts = st.dictionaries(st.sampled_from([s.value for s in VMState]), st.integers(0, 10_000))
_condition_map = st.dictionaries(
    st.sampled_from(["Ready", "Compliant", "Stalled", "Reconciling"]),
    st.sampled_from(["True", "False", "Unknown"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_state_counts, _condition_map, st.sampled_from(["Enforce", "Audit"])), min_size=1))
def test_the_exported_picture_is_the_last_one_published(
    calls: list[tuple[dict[str, int], dict[str, str], str]],
) -> None:
    ns, name = unique_policy()
    seen_conditions: dict[str, str] = {}
    last_mode = ""
    for states, conditions, mode in calls:
        publish(ns, name, states=states, conditions=conditions, mode=mode, blocked_reasons={})
        seen_conditions = conditions if mode != last_mode else {**seen_conditions, **conditions}
        last_mode = mode
    states, _, mode = calls[-1]
    labels = {"policy_namespace": ns, "policy": name, "vcenter": "vc1", "mode": mode}
    assert {s.value: sample("vtpm_operator_vms", **labels, state=s.value) for s in VMState} == {
        s.value: float(states.get(s.value, 0)) for s in VMState
    }
    for condition, current in seen_conditions.items():
        ones = [
            status
            for status in ("True", "False", "Unknown")
            if sample("vtpm_operator_policy_condition", **labels, condition=condition, status=status) == 1.0
        ]
        assert ones == [current]
    assert {labels["mode"] for _, labels, _ in policy_series(ns, name)} == {mode}
    metrics.forget_policy(ns, name)  # keeps the registry, and so the next example, small
