"""The operator's Kubernetes side started on its own, as `vtpm-operator run` starts it before Kopf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from kubernetes import client

from testbed.kube import ControlPlane
from vtpm_operator.kube import runtime
from vtpm_operator.kube.publisher import GROUP, VERSION

TAG = {"category": "c", "name": "t"}
# Run in a process of its own: this one has Kopf and the client's CoreV1Api loaded already.
START = """
import json, logging, sys, time
from kubernetes import client
from vtpm_operator.engine.engine import EngineSettings
from vtpm_operator.kube import runtime
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
namespace, vcenter = sys.argv[1:]
running = runtime.start(namespace, [namespace], EngineSettings())
began = time.monotonic()
settled = running.settle(timeout=30)  # as `run` waits before it imports Kopf
settled_after = time.monotonic() - began
# Read once, not waited for: settled means written. By then the engine has read its change record
# and its Secret through kube/core.py.
custom = client.CustomObjectsApi(running.api)
written = {
    "vcenter": json.dumps(custom.get_cluster_custom_object(
        "vtpm-operator.io", "v1alpha1", "vcenters", vcenter).get("status") or {}),
    **{name: json.dumps(custom.get_namespaced_custom_object(
        "vtpm-operator.io", "v1alpha1", namespace, "vtpmpolicies", name).get("status") or {})
       for name in ("a", "b")},
}
loaded = {"kopf": "kopf" in sys.modules, "CoreV1Api": "kubernetes.client.api.core_v1_api" in sys.modules}
reports = running.registry._engines[vcenter].engine.last_reports
told = {key: type(report).__name__ for key, report in reports.items()}
print(json.dumps({"vcenters": sorted(running.registry.names()), "settled": settled,
                  "settled_after": settled_after, "held": sorted(running.elector.held()), "told": told,
                  "written": written, **loaded}))
running.stop(grace=0)
"""


def test_the_runtime_starts_without_kopf_or_core_v1_api_and_settles_once_every_policy_is_told(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str, crd_installed: str
) -> None:
    """The engines must be able to start before Kopf is imported, and the core calls must not load
    CoreV1Api: its first use builds some 250 pydantic models, 0.6 s of every start. Kopf is
    imported once the runtime settles: its lease taken, both policies told why vCenter cannot
    be read (its Secret is missing) and those statuses written, well before the bound."""
    custom = client.CustomObjectsApi(kube_api)
    vcenter = f"vc-{uuid.uuid4().hex[:8]}"
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "vcenters",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VCenter",
            "metadata": {"name": vcenter},
            "spec": {"server": "127.0.0.1:9", "credentialsSecretRef": {"name": "absent"}},
        },
    )
    try:
        for name in ("a", "b"):
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "vtpmpolicies",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "VTPMPolicy",
                    "metadata": {"name": name},
                    "spec": {
                        "vcenterRef": {"name": vcenter},
                        "selector": {"tags": [{"category": "c", "name": "t"}]},
                    },
                },
            )
        env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
        done = subprocess.run(
            [sys.executable, "-c", START, namespace, vcenter],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        started = json.loads(done.stdout)
        assert vcenter in started["vcenters"]
        assert "seeded with" in done.stderr and "and 2 policies" in done.stderr  # its namespace's only
        assert started["kopf"] is False
        assert started["CoreV1Api"] is False
        assert started["settled"] is True
        assert started["settled_after"] < runtime.SETTLE_SECONDS  # not by running out the bound
        assert started["held"] == [vcenter]  # its lease taken: its engine was waited for
        assert started["told"] == {f"{namespace}/a": "PolicyProblem", f"{namespace}/b": "PolicyProblem"}
        assert "SecretNotFound" in started["written"]["vcenter"]
        assert all("SecretNotFound" in started["written"][name] for name in ("a", "b")), started["written"]
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "vcenters", vcenter)
