"""A real Prometheus (Debian's 2.42) scraping real vtpm_operator.metrics output, with the shipped rules.

The scrape config is built from deploy/monitoring/servicemonitor.yaml (port name through the
Service to the container, path, interval, timeout), as the Prometheus Operator would; rules are
evaluated every second.

What drives the metrics is one fixture, `metrics_source`: today the exporter process
(hack/testbed/exporter.py) calling metrics.py's functions as the engine does; once the engine
exists it can be the operator process, with a scenario that causes the same facts in the simulator.
Everything below it only needs the metrics port.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import yaml

from testbed.exporter import Exporter, running_exporter
from testbed.kube import free_port
from testbed.prometheus import Prometheus, ScrapeJob, running_prometheus

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
EVALUATION_SECONDS = 1.0

# --- the scrape config, from the shipped ServiceMonitor ------------------------------------------


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    unit = "ms" if text.endswith("ms") else text[-1]
    return float(text[: -len(unit)]) * units[unit]


def scrape_job(*targets: str) -> ScrapeJob:
    """What the Prometheus Operator makes of the ServiceMonitor's one endpoint, for the pods at `targets`."""
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "service.yaml").read_text())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    return ScrapeJob(
        job=service["metadata"]["name"],  # the Operator's default job label: the Service's name
        targets=targets,
        path=endpoint["path"],
        interval=endpoint["interval"],
        timeout=endpoint.get("scrapeTimeout"),
    )


# --- the metrics source and the scenario ----------------------------------------------------------

VC_A, VC_B = "vc-a.example.com", "vc-b.example.com"
ENFORCE, AUDIT = "Enforce", "Audit"


@dataclass(frozen=True)
class PolicyFacts:
    namespace: str
    name: str
    vcenter: str
    mode: str
    states: dict[str, int]
    compliant: str  # the Compliant condition's status
    blocked: dict[str, int]
    synced: bool = True


POLICIES = (
    PolicyFacts(
        "prod", "windows", VC_A, ENFORCE, {"Compliant": 40, "Pending": 3, "Blocked": 5, "Failed": 2},
        "False", {"HostVersionTooOld": 3, "GuestOSUnsupported": 2},
    ),
    PolicyFacts("prod", "linux", VC_B, ENFORCE, {"Compliant": 20}, "True", {}),
    PolicyFacts(
        "audit", "preview", VC_A, AUDIT, {"Compliant": 10, "NonCompliant": 6, "Blocked": 1}, "False",
        {"FirmwareBIOS": 1},
    ),
    PolicyFacts("prod", "new", VC_B, ENFORCE, {}, "Unknown", {}, synced=False),
)  # fmt: skip
DRIFTED = 2
CHANGES_IN_FLIGHT = {VC_A: (3, 12), VC_B: (0, 0)}
# (vcenter, operation, outcome, seconds, times), after the baseline scrape
CALLS = [
    (VC_A, "RetrievePropertiesEx", "success", 0.02, 20),
    (VC_A, "RetrievePropertiesEx", "unreachable", 20.0, 3),
    (VC_A, "Login", "tls_error", 0.3, 1),
    (VC_B, "WaitForUpdatesEx", "success", 0.7, 4),
]
FULL_READS = [(VC_A, 4.0), (VC_A, 4.0), (VC_B, 0.7)]
CHANGES = [(VC_A, "Add", "success", 12.0), (VC_A, "Add", "success", 12.0), (VC_A, "PowerOn", "success", 3.0)]


@pytest.fixture(scope="module")
def metrics_source() -> Iterator[Exporter]:
    """Swap point: the process whose /metrics Prometheus scrapes (port) and that the scenario drives."""
    with running_exporter(free_port()) as exporter:
        yield exporter


@pytest.fixture(scope="module")
def prometheus(metrics_source: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    job = scrape_job(f"127.0.0.1:{metrics_source.port}")
    with running_prometheus(
        tmp_path_factory.mktemp("prometheus"), [job], [RULES], evaluation_interval=f"{EVALUATION_SECONDS:g}s"
    ) as server:
        server.wait_for_targets_up()
        yield server


def publish_baseline(engine: Exporter) -> None:
    engine.call("set_build_info", "0.0.0-test")
    for vcenter in (VC_A, VC_B):
        engine.call("set_vcenter", vcenter, ready=True, vms=100, lease_held=True)
        engine.call("set_change_queue", vcenter, *CHANGES_IN_FLIGHT[vcenter])
        engine.call("observe_vcenter_call", vcenter, "Login", "success", 0.2)
    for vcenter, operation, _, seconds, _ in CALLS:
        engine.call("observe_vcenter_call", vcenter, operation, "success", seconds)
    for p in POLICIES:
        engine.call(
            "publish_policy", p.namespace, p.name, vcenter=p.vcenter, mode=p.mode, states=p.states,
            conditions={"Ready": "True" if p.compliant == "True" else "False", "Compliant": p.compliant},
            last_sync=time.time() if p.synced else None, blocked_reasons=p.blocked,
        )  # fmt: skip
    engine.call("count_status_write", "success")


def cause_events(engine: Exporter) -> None:
    for vcenter, operation, outcome, seconds, times in CALLS:
        for _ in range(times):
            engine.call("observe_vcenter_call", vcenter, operation, outcome, seconds)
    for vcenter, seconds in FULL_READS:
        engine.call("observe_full_read", vcenter, seconds)
    for vcenter, action, outcome, seconds in CHANGES:
        engine.call("observe_change", vcenter, action, outcome, seconds)


def wait_for_scrape_after(prometheus: Prometheus, moment: float, timeout: float) -> float:
    """Until the job is scraped after ``moment``; returns that scrape's timestamp."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query('max(timestamp(up{job="vtpm-operator"}))')
        if result and float(result[0]["value"][1]) > moment:
            return float(result[0]["value"][1])
        assert time.monotonic() < deadline, f"no scrape after {moment} within {timeout} s"
        time.sleep(0.1)


@dataclass(frozen=True)
class Scenario:
    prometheus: Prometheus
    scrape_seconds: float
    drift_fired_after: float  # seconds from count_drift to VTPMPolicyDrift firing in /api/v1/alerts
    drift_active_after: float  # seconds from count_drift to the alert's own activeAt (an evaluation)
    # A scrape's own timestamp: increase() and rate() evaluated there do not extrapolate to the
    # window's end, and counters born at 0 not to its start, so they read the true counts.
    scraped_at: float


def firing(prometheus: Prometheus, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in prometheus.alerts()
        if alert["labels"]["alertname"] == alertname
        and alert["state"] == "firing"
        and labels.items() <= alert["labels"].items()
    ]


@pytest.fixture(scope="module")
def scenario(prometheus: Prometheus, metrics_source: Exporter) -> Scenario:
    scrape = duration_seconds(scrape_job("-").interval)
    publish_baseline(metrics_source)
    wait_for_scrape_after(prometheus, time.time(), timeout=3 * scrape)  # counters seen at 0 first
    cause_events(metrics_source)
    metrics_source.call("count_drift", "prod", "windows", VC_A, ENFORCE, DRIFTED)  # last: one scrape sees all
    drifted_at, drifted_wall = time.monotonic(), time.time()
    deadline = drifted_at + 3 * scrape
    while not (alerts := firing(prometheus, "VTPMPolicyDrift", policy="windows")):
        assert time.monotonic() < deadline, prometheus.alerts()
        time.sleep(0.05)
    fired_after = time.monotonic() - drifted_at
    active_after = rfc3339(alerts[0]["activeAt"]) - drifted_wall
    scraped_at = wait_for_scrape_after(prometheus, time.time(), timeout=3 * scrape)
    return Scenario(prometheus, scrape, fired_after, active_after, scraped_at)


def rfc3339(text: str) -> float:
    """Prometheus' nanosecond timestamps, e.g. 2026-12-01T09:30:01.123456789Z, as unix time."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


# --- alerts ---------------------------------------------------------------------------------------


def rule(alertname: str) -> dict[str, Any]:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    (found,) = [r for r in rules if r["alert"] == alertname]
    return found


def test_drift_fires_within_for_plus_one_scrape_and_one_evaluation(scenario: Scenario) -> None:
    hold = duration_seconds(rule("VTPMPolicyDrift").get("for", "0s"))
    bound = hold + scenario.scrape_seconds + EVALUATION_SECONDS
    print(
        f"VTPMPolicyDrift active {scenario.drift_active_after:.2f} s and seen firing"
        f" {scenario.drift_fired_after:.2f} s after count_drift (bound {bound:g} s)"
    )
    # The drift is counted just after a scrape, so this is the worst case: a whole scrape interval,
    # then up to one evaluation interval. 0.25 s for the scrape's own duration and ingestion.
    assert 0 < scenario.drift_active_after <= bound + 0.25  # Prometheus' own evaluation time
    # Seen through the API: 0.5 s more for this test's polling and the HTTP answer.
    assert scenario.drift_fired_after <= bound + 0.75
    (alert,) = firing(scenario.prometheus, "VTPMPolicyDrift")
    assert alert["labels"] == {
        "alertname": "VTPMPolicyDrift", "severity": "warning",
        "policy_namespace": "prod", "policy": "windows", "vcenter": VC_A, "mode": ENFORCE,
    }  # fmt: skip


def series_of(prometheus: Prometheus, expr: str) -> set[tuple[str, str]]:
    return {(r["metric"]["policy_namespace"], r["metric"]["policy"]) for r in prometheus.query(expr)}


def test_not_compliant_selects_enforce_policies_only(scenario: Scenario) -> None:
    not_compliant = series_of(scenario.prometheus, rule("VTPMPolicyNotCompliant")["expr"])
    assert not_compliant == {("prod", "windows")}
    assert series_of(scenario.prometheus, rule("VTPMPolicyAuditFindings")["expr"]) == {("audit", "preview")}


def test_audit_findings_are_info_and_never_a_page(scenario: Scenario) -> None:
    active = scenario.prometheus.alerts()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for alert in active:
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    (audit,) = by_name["VTPMPolicyAuditFindings"]
    assert audit["labels"]["severity"] == "info" and audit["labels"]["policy"] == "preview"
    assert audit["state"] == "pending"  # for: 15m
    assert {a["labels"]["policy"] for a in by_name["VTPMPolicyNotCompliant"]} == {"windows"}
    paging = [a for a in active if a["labels"]["severity"] != "info"]
    assert all(a["labels"].get("mode") != AUDIT for a in paging), paging


def test_a_policy_that_never_synced_is_pending_sync_stale(scenario: Scenario) -> None:
    stale = [a for a in scenario.prometheus.alerts() if a["labels"]["alertname"] == "VTPMPolicySyncStale"]
    assert [(a["labels"]["policy"], a["labels"]["sync"], a["state"]) for a in stale] == [
        ("new", "never", "pending")
    ]


# --- dashboard: every panel's query returns the series it plots, with the values caused above -------

Labels = frozenset[tuple[str, str]]


def labels(**pairs: str) -> Labels:
    return frozenset(pairs.items())


@dataclass(frozen=True)
class Exact:
    value: float

    def holds(self, got: float) -> bool:
        return math.isclose(got, self.value, rel_tol=1e-9, abs_tol=1e-9)


@dataclass(frozen=True)
class Between:
    """histogram_quantile() interpolates within the bucket that holds the quantile."""

    low: float
    high: float

    def holds(self, got: float) -> bool:
        return self.low <= got <= self.high


BUCKETS = {
    "vcenter_request": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    "full_read": (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    "change": (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
}


def p95(observations: list[float], family: str) -> Between:
    """The bucket histogram_quantile(0.95) lands in for these observations."""
    bounds = (0.0, *BUCKETS[family])
    ranked = sorted(observations)
    rank = math.ceil(0.95 * len(ranked)) - 1
    upper = bisect.bisect_left(bounds, ranked[rank])
    return Between(bounds[upper - 1], bounds[upper])


def expected_panels() -> dict[tuple[str, str], dict[Labels, Exact | Between]]:
    total: dict[str, dict[str, int]] = {}
    for p in POLICIES:
        for state, n in p.states.items():
            total.setdefault(p.vcenter, {}).setdefault(state, 0)
            total[p.vcenter][state] += n
    states = {s: sum(p.states.get(s, 0) for p in POLICIES) for s in ("Compliant", "NonCompliant")}
    states |= {s: sum(p.states.get(s, 0) for p in POLICIES) for s in ("Pending", "Blocked", "Failed")}
    reasons: dict[str, int] = {}
    for p in POLICIES:
        for reason, n in p.blocked.items():
            reasons[reason] = reasons.get(reason, 0) + n
    calls = [(vc, op, out, s) for vc, op, out, s, times in CALLS for _ in range(times)]
    return {
        ("Fleet compliance", "A"): {
            labels(vcenter=vc): Exact(by_state.get("Compliant", 0) / sum(by_state.values()))
            for vc, by_state in total.items()
        },
        ("VMs by state", "A"): {labels(state=s): Exact(n) for s, n in states.items()},
        ("Blocked VMs by reason", "A"): {labels(reason=r): Exact(n) for r, n in reasons.items()},
        ("Changes in flight", "A"): {labels(vcenter=vc): Exact(q[0]) for vc, q in CHANGES_IN_FLIGHT.items()},
        ("Changes in flight", "B"): {labels(vcenter=vc): Exact(q[1]) for vc, q in CHANGES_IN_FLIGHT.items()},
        ("Drift events", "A"): {
            labels(policy_namespace=p.namespace, policy=p.name): Exact(DRIFTED)
            if p.name == "windows"
            else Exact(0)
            for p in POLICIES
        },
        ("vCenter call errors", "A"): {
            labels(vcenter=vc, operation=op, outcome=out): Exact(times)
            for vc, op, out, _, times in CALLS
            if out != "success"
        },
        ("Full-read duration", "A"): {
            labels(vcenter=vc): Exact(mean([s for v, s in FULL_READS if v == vc]))
            for vc in {v for v, _ in FULL_READS}
        },
        ("Full-read duration", "B"): {
            labels(vcenter=vc): p95([s for v, s in FULL_READS if v == vc], "full_read")
            for vc in {v for v, _ in FULL_READS}
        },
        ("Change duration", "A"): {
            labels(vcenter=vc, action=a): Exact(mean([s for v, b, _, s in CHANGES if (v, b) == (vc, a)]))
            for vc, a in {(v, b) for v, b, _, _ in CHANGES}
        },
        ("Change duration", "B"): {
            labels(vcenter=vc, action=a): p95([s for v, b, _, s in CHANGES if (v, b) == (vc, a)], "change")
            for vc, a in {(v, b) for v, b, _, _ in CHANGES}
        },
        ("vCenter call latency", "A"): {
            labels(vcenter=vc, operation=op): p95(
                [s for v, o, _, s in calls if (v, o) == (vc, op)], "vcenter_request"
            )
            for vc, op in {(v, o) for v, o, _, _ in calls}
        },
    }  # fmt: skip


def dashboard_targets() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], t["refId"], t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]
    ]


def test_every_dashboard_query_has_an_expectation_and_no_padding() -> None:
    targets = dashboard_targets()
    assert {(title, ref) for title, ref, _ in targets} == set(expected_panels())
    for title, _, expr in targets:
        assert "vector(" not in expr and "absent(" not in expr, title  # no series made up to look filled


@pytest.mark.parametrize(("title", "ref", "expr"), dashboard_targets(), ids=lambda v: str(v)[:40])
def test_dashboard_panel_plots_what_the_engine_reported(
    scenario: Scenario, title: str, ref: str, expr: str
) -> None:
    result = scenario.prometheus.query(expr.replace("$vcenter", ".*"), at=scenario.scraped_at)  # "All"
    got = {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}
    expected = expected_panels()[(title, ref)]
    assert set(got) == set(expected), f"{title}/{ref}: series {sorted(map(sorted, got))}"
    wrong = {tuple(sorted(k)): v for k, v in got.items() if not expected[k].holds(v)}
    assert not wrong, f"{title}/{ref}: {wrong} expected {[expected[frozenset(k)] for k in wrong]}"


def test_dashboard_vcenter_variable_lists_the_vcenters(scenario: Scenario) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "vcenter"]
    assert variable["definition"] == "label_values(vtpm_operator_vcenter_vms, vcenter)"
    values = scenario.prometheus.api("label/vcenter/values", **{"match[]": "vtpm_operator_vcenter_vms"})
    assert set(values) == {VC_A, VC_B}
