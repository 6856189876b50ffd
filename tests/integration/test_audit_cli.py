"""`vtpm-operator audit`: a read-only verdict table against vCenter, without Kubernetes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.fleet import CATEGORY, EXEMPT_TAG, MIXED_FLEET, REQUIRED_TAG, build_fleet, specs_of
from testbed.vcsim import Simulator

CLI = Path(sys.executable).with_name("vtpm-operator")


def audit(sim: Simulator, *extra: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CLI), "audit", "--server", sim.server, "--username", sim.username,
            "--ca-file", str(sim.ca_file), "--tag", f"{CATEGORY}/{REQUIRED_TAG}",
            "--exclude-tag", f"{CATEGORY}/{EXEMPT_TAG}", *extra,
        ],
        env={**os.environ, "VTPM_PASSWORD": password or sim.password},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("simulator", [{"vms": 14, "standalone_hosts": 1}], indirect=True)
def test_audit_prints_every_verdict_and_changes_nothing(simulator: Simulator) -> None:
    build_fleet(simulator, specs_of(MIXED_FLEET))
    simulator.admin.reset_call_counts()

    table = audit(simulator)
    as_json = audit(simulator, "--json")

    assert table.returncode == 1, table.stderr  # not every VM complies
    assert as_json.returncode == 1, as_json.stderr
    rows = {row["name"]: row for row in json.loads(as_json.stdout)["vms"]}
    for spec, state, reasons in MIXED_FLEET:
        if state in ("Excluded", "NotSelected"):
            assert spec.name not in rows
        elif state == "Compliant" and not spec.vtpm:
            assert rows[spec.name]["state"] == "NonCompliant"  # audit: it would be changed
            assert spec.name in table.stdout
        else:
            assert rows[spec.name]["state"] == state
            assert set(rows[spec.name]["reasons"]) == set(reasons)
    assert "HostVersionTooOld" in table.stdout and "win10-many" in table.stdout
    assert simulator.admin.call_counts().get("ReconfigVM_Task", 0) == 0


@pytest.mark.parametrize("simulator", [{"vms": 1}], indirect=True)
def test_audit_names_a_refused_login(simulator: Simulator) -> None:
    result = audit(simulator, password="wrong")
    assert result.returncode == 2
    assert "AuthenticationFailed" in result.stderr
    assert "wrong" not in result.stderr.replace("AuthenticationFailed", "")
