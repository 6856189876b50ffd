"""The bad-input table's last column: what the running operator shows for what 1.20 admits.

Every row that kube-apiserver 1.20 lets in is created next to a working VCenter and policy: a bad
policy spec as a policy of its own, a bad VCenter spec or Secret as a VCenter of its own with a
policy on it. Each must end Stalled with the row's reason and a message naming the field or key
(never a byte of a Secret's value); none may crash the operator, loop as a transient error or
touch a VM, and the working policy goes on working beside them.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import pytest
import yaml

from testbed.fleet import VMSpec, build_fleet
from testbed.vcsim import Simulator

from ..integration.test_bad_input import ROWS, BadInput, _fragments
from .conftest import Cluster, condition, policy_manifest, summary

pytestmark = pytest.mark.slow

ADMITTED = [row for row in ROWS if row.operator_on_120 is not None]


def _apply_row(cluster: Cluster, sim: Simulator, row: BadInput, working: str) -> str:
    """Create the row's objects; returns the name of the policy that must show the verdict."""
    name = re.sub(r"[^a-z0-9-]", "-", row.id.lower())[:50].rstrip("-")
    if row.kind == "VTPMPolicy":
        spec = {**row.body, "vcenterRef": {"name": working}}
        cluster.apply({"apiVersion": "vtpm-operator.io/v1alpha1", "kind": "VTPMPolicy",
                       "metadata": {"name": name}, "spec": spec})  # fmt: skip
        return name
    vcenter = f"{cluster.namespace}-{name}"[:63].rstrip("-")
    spec: dict[str, Any] = {
        "server": sim.server,
        "credentialsSecretRef": {"name": "vcenter-creds"},
        "caSecretRef": {"name": "vcenter-ca"},
    }
    if row.kind == "VCenter":
        spec = {**row.body, "credentialsSecretRef": {"name": "vcenter-creds"}}
    else:
        secret = f"bad-{name}"[:63].rstrip("-")
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                       "data": {k: base64.b64encode(v).decode() for k, v in row.body.items()}})  # fmt: skip
        spec["credentialsSecretRef" if row.kind == "Secret" else "caSecretRef"] = {"name": secret}
    body = {
        "apiVersion": "vtpm-operator.io/v1alpha1",
        "kind": "VCenter",
        "metadata": {"name": vcenter},
        "spec": spec,
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
    cluster.vcenters.append(vcenter)
    cluster.apply(policy_manifest(name, vcenter))
    return name


@pytest.mark.parametrize("simulator", [{"vms": 2}], indirect=True)
def test_every_admitted_bad_input_gets_a_clear_answer_and_nothing_else_happens(
    simulator: Simulator, cluster: Cluster, run_operator: Any
) -> None:
    assert len(ADMITTED) >= 15, len(ADMITTED)
    fleet = build_fleet(simulator, [VMSpec("a"), VMSpec("b", tags=())])
    fleet.create_tag("working")  # b alone: the rows' policies select a
    fleet.tag("b", "working")
    working = cluster.vcenter(simulator)
    cluster.apply(
        policy_manifest("working", working, selector={"tags": [{"category": "security", "name": "working"}]})
    )
    policies = {row.id: _apply_row(cluster, simulator, row, working) for row in ADMITTED}
    simulator.admin.reset_call_counts()
    operator = run_operator()

    expected = {row.id: row.operator_on_120.reason for row in ADMITTED if row.operator_on_120}
    deadline = time.monotonic() + 120
    pending = dict(policies)
    seen: dict[str, dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        for row_id, name in list(pending.items()):
            policy = cluster.policy(name)
            if condition(policy, "Ready").get("reason") == expected[row_id]:
                seen[row_id] = policy
                del pending[row_id]
        time.sleep(1)
    assert not pending, {row_id: condition(cluster.policy(n), "Ready") for row_id, n in pending.items()}

    for row in ADMITTED:
        verdict = row.operator_on_120
        assert verdict is not None
        policy = seen[row.id]
        ready, stalled = condition(policy, "Ready"), condition(policy, "Stalled")
        assert stalled["status"] == ("True" if verdict.stalled else "False"), (row.id, stalled)
        assert verdict.names in ready["message"], (row.id, ready["message"])
        if row.kind in ("Secret", "CASecret"):
            for value in row.body.values():
                for fragment in _fragments(value):
                    assert fragment not in str(policy["status"]), (row.id, fragment)

    # The working policy worked beside them all; no bad row touched a VM; the operator lives.
    assert summary(cluster.wait_for("working", lambda p: summary(p).get("compliant") == 1))["compliant"] == 1
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 1
    assert operator.alive()
    # Passwords never reach the log either (user names do: "logged in as ..." is worth having).
    passwords = [row.body["password"] for row in ADMITTED if row.kind == "Secret" and "password" in row.body]
    log = operator.log_text()
    for value in passwords:
        for fragment in _fragments(value):
            assert fragment not in log, fragment
