"""The shipped alerts against the operator itself: a real Prometheus scrapes `vtpm-operator run`.

tests/integration/test_prometheus.py proves every alert and dashboard panel on numbers it sets;
this proves the operator exports what they query, with a drift caused in the simulator.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from testbed.fleet import VMSpec, build_fleet
from testbed.prometheus import running_prometheus
from testbed.vcsim import Simulator

from ..integration.test_prometheus import MONITORING, firing, scrape_job
from .conftest import Cluster, policy_manifest, summary
from .test_policy import reconfigure_vm, vm_properties

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("simulator", [{"vms": 4}], indirect=True)
def test_drift_pages_and_audit_does_not(
    simulator: Simulator, cluster: Cluster, run_operator: Any, tmp_path: Path
) -> None:
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b", tags=()), VMSpec("c", tags=(), powered_on=True)])
    for vm, tag in (("b", "audited"), ("c", "blocked")):
        fleet.create_tag(tag)
        fleet.tag(vm, tag)
    vcenter = cluster.vcenter(simulator)
    cluster.apply(policy_manifest("enforced", vcenter, resyncPeriod="1h"))
    audited = {"tags": [{"category": "security", "name": "audited"}]}
    cluster.apply(policy_manifest("audited", vcenter, mode="Audit", selector=audited))
    blocked = {"tags": [{"category": "security", "name": "blocked"}]}  # powered on, Skip: Blocked
    cluster.apply(policy_manifest("blocked", vcenter, selector=blocked))
    operator = run_operator()
    cluster.wait_for("enforced", lambda p: summary(p).get("compliant") == 1)
    cluster.wait_for("audited", lambda p: summary(p).get("nonCompliant") == 1)

    job = scrape_job(*operator.metrics_targets)
    rules = [MONITORING / "rules.yaml"]
    with running_prometheus(tmp_path / "prometheus", [job], rules) as prometheus:
        deadline = time.monotonic() + 60
        while not prometheus.query('vtpm_operator_drift_total{policy="enforced"}'):
            assert time.monotonic() < deadline, "the drift counter was never scraped"
            time.sleep(0.5)

        # Out of band: someone removes a's vTPM. The engine repairs it in seconds; the counter stays.
        devices = vm_properties(simulator, fleet.ids["a"])["config.hardware.device"]
        tpm = next(d for d in devices if isinstance(d, vim.vm.device.VirtualTPM))
        remove = vim.vm.device.VirtualDeviceSpec(operation="remove", device=tpm)
        reconfigure_vm(simulator, fleet.ids["a"], vim.vm.ConfigSpec(deviceChange=[remove]))
        removed = time.monotonic()
        cluster.wait_for("enforced", lambda p: summary(p).get("driftedTotal") == 1, timeout=30)

        scrape = float(job.interval.rstrip("s"))
        while not firing(prometheus, "VTPMPolicyDrift", policy="enforced"):
            assert time.monotonic() < removed + 3 * scrape + 10, prometheus.alerts()
            time.sleep(0.5)
        cluster.wait_for("enforced", lambda p: summary(p).get("compliant") == 1, timeout=60)  # repaired

        # The page-worthy expression selects the Enforce policy's series and never the Audit one.
        not_compliant = next(
            r["expr"] for g in _rules(MONITORING / "rules.yaml") for r in g["rules"]
            if r.get("alert") == "VTPMPolicyNotCompliant"
        )  # fmt: skip
        policies = {series["metric"].get("policy") for series in prometheus.query(not_compliant)}
        assert "blocked" in policies and "audited" not in policies
        assert not firing(prometheus, "VTPMPolicyNotCompliant", policy="audited")


def _rules(path: Path) -> list[dict[str, Any]]:
    import yaml

    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups
