"""deploy/: alert rules (promtool), Argo CD health script (Lua), RBAC and manifests (real API server)."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lupa.lua51  # Argo CD runs health scripts with gopher-lua, a Lua 5.1
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MONITORING = DEPLOY / "monitoring"
ARGOCD = DEPLOY / "argocd"
PROMTOOL = "/usr/bin/promtool"
GROUP, VERSION, PLURAL = "vtpm-operator.io", "v1alpha1", "vtpmpolicies"

ALERTS = {
    "VTPMPolicyNotCompliant",
    "VTPMPolicyAuditFindings",
    "VTPMPolicyStalled",
    "VTPMPolicySyncStale",
    "VTPMPolicyDrift",
    "VTPMOperatorVCenterErrors",
    "VTPMOperatorStatusWriteErrors",
    "VTPMVCenterUnmanaged",
    "VTPMOperatorDown",
}
RULES = 10  # VTPMPolicySyncStale has two: stale, and never synced
RUNBOOK = REPO / "docs" / "runbook.md"


def exported_metrics() -> set[str]:
    """Every sample name vtpm_operator.metrics can export (counters' _total, histograms' parts)."""
    from prometheus_client import REGISTRY

    from vtpm_operator import metrics  # noqa: F401  (registers the families)

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("vtpm_operator_"):
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
            }.get(family.type, [""])
            names |= {family.name + suffix for suffix in suffixes}
    return names


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- Prometheus rules ---------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {RULES} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", "rules_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(MONITORING / "rules.yaml")["groups"] for rule in group["rules"]]


def test_rules_define_exactly_the_alerts() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    assert len(rules) == RULES
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    hold = {rule["alert"]: rule.get("for") for rule in rules}
    assert hold["VTPMPolicyNotCompliant"] == "15m"
    assert hold["VTPMPolicyStalled"] == "1h"  # a backup snapshot lives an hour: no page
    assert hold["VTPMPolicyDrift"] is None  # from a counter: at once
    assert next(r for r in rules if r["alert"] == "VTPMPolicyAuditFindings")["labels"]["severity"] == "info"


def runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings: lower case, spaces to dashes, punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_its_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    used: set[str] = set()
    for rule in alert_rules():
        used |= set(re.findall(r"\bvtpm_operator_[a-z_]+", rule["expr"]))
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bvtpm_operator_[a-z_]+", target["expr"]))
    assert len(used) > 10, used
    assert used <= exported, used - exported


def test_rule_unit_tests_cover_every_alert_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load(MONITORING / "rules_test.yaml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == ALERTS
    assert silent == ALERTS


def test_no_policy_alert_looks_for_missing_series() -> None:
    # With replicas a standby exports no policy series: only the whole job may be absent().
    for rule in alert_rules():
        if "absent(" in rule["expr"]:
            assert rule["alert"] == "VTPMOperatorDown" and 'up{job="vtpm-operator"}' in rule["expr"]


def test_prometheusrule_matches_plain_rules_file() -> None:
    rule = load(MONITORING / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load(MONITORING / "rules.yaml")["groups"]


def test_servicemonitor_scrapes_the_metrics_service() -> None:
    monitor = load(MONITORING / "servicemonitor.yaml")
    service = load(DEPLOY / "service.yaml")
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The job label the Prometheus Operator gives is the Service's name; VTPMOperatorDown needs it.
    assert service["metadata"]["name"] == "vtpm-operator"


def test_monitoring_kustomization_renders(kubectl: Any) -> None:
    result = kubectl("kustomize", str(MONITORING))
    assert result.stderr == ""
    docs = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout) if d}
    assert docs == {
        ("PrometheusRule", "vtpm-operator"),
        ("ServiceMonitor", "vtpm-operator"),
        ("ConfigMap", "vtpm-operator-dashboard"),
    }
    dashboard = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ConfigMap")
    assert dashboard["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(dashboard["data"]["grafana-dashboard.json"])["uid"] == "vtpm-operator"


# --- Argo CD health -------------------------------------------------------------------------------

HEALTH_SCRIPT = (ARGOCD / "health-vtpmpolicy.lua").read_text()


def condition(ctype: str, status: str, reason: str = "Reason", message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def vtpm_obj(generation: int = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VTPMPolicy",
        "metadata": {"name": "p", "namespace": "prod", "generation": generation},
        "spec": {"vtpm": "Present"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status(*conditions: dict[str, Any], observed: int = 2) -> dict[str, Any]:
    return {"observedGeneration": observed, "conditions": list(conditions), "summary": {"matched": 3}}


def run_health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_SCRIPT)
    return str(result["status"]), str(result["message"])


HEALTH_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status yet", vtpm_obj(1), "Progressing", "generation 1"),
    ("status without observedGeneration", vtpm_obj(1, {"conditions": []}), "Progressing", "generation 1"),
    (
        "status older than spec",
        vtpm_obj(3, status(condition("Ready", "True"), observed=2)),
        "Progressing",
        "generation 3",
    ),
    (
        "ready",
        vtpm_obj(2, status(condition("Ready", "True", "Compliant", "3 of 3 VMs compliant"))),
        "Healthy",
        "3 of 3 VMs compliant",
    ),
    (
        "reconciling",
        vtpm_obj(2, status(condition("Ready", "False", "Reconciling"), condition("Reconciling", "True"))),
        "Progressing",
        "Reason",
    ),
    (
        "stalled wins over reconciling",
        vtpm_obj(
            2,
            status(
                condition("Ready", "False", "SecretNotFound", "Secret prod/vcenter-creds not found"),
                condition("Stalled", "True", "SecretNotFound", "Secret prod/vcenter-creds not found"),
                condition("Reconciling", "True"),
            ),
        ),
        "Degraded",
        "Secret prod/vcenter-creds not found",
    ),
    (
        "vcenter unreachable while retrying",
        vtpm_obj(
            2,
            status(
                condition("Ready", "False", "VCenterUnreachable", "connection refused"),
                condition("Reconciling", "True", "Retrying"),
                condition("Stalled", "False"),
            ),
        ),
        "Degraded",
        "connection refused",
    ),
    (
        "authentication failed",
        vtpm_obj(2, status(condition("Ready", "False", "AuthenticationFailed"))),
        "Degraded",
        "AuthenticationFailed",
    ),
    (
        "failed VMs, nothing in flight",
        vtpm_obj(
            2,
            status(
                condition("Ready", "False", "VMsFailed", "1 VM failed"),
                condition("Reconciling", "False"),
                condition("Stalled", "False"),
            ),
        ),
        "Degraded",
        "1 VM failed",
    ),
    ("ready unknown", vtpm_obj(2, status(condition("Ready", "Unknown"))), "Progressing", "first sync"),
    ("no conditions yet", vtpm_obj(2, {"observedGeneration": 2}), "Progressing", "first sync"),
]


@pytest.mark.parametrize(
    ("obj", "expected", "message"), [c[1:] for c in HEALTH_CASES], ids=[c[0] for c in HEALTH_CASES]
)
def test_argocd_health(obj: dict[str, Any], expected: str, message: str) -> None:
    health, text = run_health(obj)
    assert health == expected
    assert message in text


def test_argocd_cm_patch_embeds_the_same_script() -> None:
    patch = load(ARGOCD / "argocd-cm-patch.yaml")
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"]["resource.customizations.health.vtpm-operator.io_VTPMPolicy"] == HEALTH_SCRIPT


# --- Manifests ------------------------------------------------------------------------------------


def kustomization_resources() -> list[dict[str, Any]]:
    kustomization = load(DEPLOY / "kustomization.yaml")
    return [doc for name in kustomization["resources"] for doc in load_all(DEPLOY / name)]


def find(kind: str) -> dict[str, Any]:
    return next(doc for doc in kustomization_resources() if doc["kind"] == kind)


def test_manifests_are_namespace_agnostic() -> None:
    docs = kustomization_resources()
    assert {d["kind"] for d in docs} >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for doc in docs:
        assert "namespace" not in doc["metadata"], doc["metadata"]
    assert all("namespace" not in s for s in find("ClusterRoleBinding")["subjects"])


def test_deployment_is_locked_down() -> None:
    deployment = find("Deployment")
    spec = deployment["spec"]
    # Two replicas, safe only because each VCenter has a Lease (the drills prove the hand-over).
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "vtpm-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The drain (20 s) and the lease release fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] == 30
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (container,) = pod["containers"]
    assert container["args"] == ["run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert {p["containerPort"] for p in container["ports"]} == {8080, 9100}
    assert container["livenessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert find("Service")["spec"]["ports"][0]["port"] == 9100


def test_disruption_budget_keeps_one_replica() -> None:
    """Schema-checked only: there is no kubelet or eviction here to exercise it."""
    pdb = find("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == find("Deployment")["spec"]["selector"]["matchLabels"]


def test_dockerfile_runs_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", dockerfile, re.M)
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert 'ENTRYPOINT ["vtpm-operator"]' in dockerfile
    assert 'CMD ["run", "--all-namespaces"]' in dockerfile


# --- Against the real API server ---------------------------------------------------------------


def overlay(tmp_path: Path, namespace: str, base: Path) -> Path:
    """A kustomize overlay putting ``base`` into ``namespace`` (what a user's overlay does). It drops
    the PodDisruptionBudget: policy/v1 is GA from 1.21, and the test API server is 1.20."""
    (tmp_path / "drop-pdb.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "vtpm-operator"},
                "$patch": "delete",
            }
        )
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "resources": [os.path.relpath(base, tmp_path)],
                "patchesStrategicMerge": ["drop-pdb.yaml"],
            }
        )
    )
    return tmp_path


def test_kustomization_applies_with_server_dry_run(kubectl: Any, namespace: str, tmp_path: Path) -> None:
    # The namespace must exist for a dry run of the namespaced objects: use the test's namespace.
    result = kubectl("apply", "--dry-run=server", "-k", str(overlay(tmp_path, namespace, DEPLOY)))
    out = result.stdout
    for obj in (
        "serviceaccount/vtpm-operator",
        "clusterrole.rbac.authorization.k8s.io/vtpm-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/vtpm-operator",
        "role.rbac.authorization.k8s.io/vtpm-operator",
        "rolebinding.rbac.authorization.k8s.io/vtpm-operator",
        "deployment.apps/vtpm-operator",
        "service/vtpm-operator",
        "networkpolicy.networking.k8s.io/vtpm-operator",
    ):
        assert re.search(
            rf"^{re.escape(obj)} (created|configured|unchanged) \(server dry run\)$", out, re.M
        ), out
    rendered = kubectl("kustomize", str(tmp_path)).stdout
    binding = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace


def test_example_applies(crd_installed: str, kubectl: Any) -> None:
    """The example as it is: a VCenter, its Secret in the operator's namespace, two teams' policies."""
    kubectl("create", "namespace", "vtpm-operator", check=False)
    try:
        out = kubectl("apply", "-k", str(DEPLOY / "example")).stdout
        for obj in (
            "vcenter.vtpm-operator.io/vc-prod",
            "secret/vc-prod-creds",
            "vtpmpolicy.vtpm-operator.io/windows-11-fleet",
            "vtpmpolicy.vtpm-operator.io/attestation-audit",
        ):
            assert re.search(rf"^{re.escape(obj)} (created|configured|unchanged)$", out, re.M), out
    finally:
        kubectl("delete", "-k", str(DEPLOY / "example"), "--wait=false", check=False)


def test_deploy_renders_cleanly_and_applies_server_side(kubectl: Any, namespace: str, tmp_path: Path) -> None:
    rendered = kubectl("kustomize", str(DEPLOY))
    assert rendered.stderr == ""  # no deprecation or other warnings
    # The PodDisruptionBudget is policy/v1 (1.21+): the 1.20 test server cannot take it.
    objects = [
        (d["kind"], d["metadata"]["name"])
        for d in yaml.safe_load_all(rendered.stdout)
        if d and d["kind"] != "PodDisruptionBudget"
    ]
    # A suffix keeps the cluster-scoped objects apart from other tests' on the same API server.
    suffix = f"-{namespace}"
    (tmp_path / "drop-pdb.yaml").write_text(
        yaml.safe_dump(
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "vtpm-operator"},
             "$patch": "delete"}
        )
    )  # fmt: skip
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "nameSuffix": suffix,
                "resources": [os.path.relpath(DEPLOY, tmp_path)],
                "patchesStrategicMerge": ["drop-pdb.yaml"],
            }
        )
    )
    try:
        applied = kubectl("apply", "--server-side", "--field-manager=vtpm-test", "-k", str(tmp_path))
        lines = applied.stdout.splitlines()
        assert len(lines) == len(objects) and all(line.endswith(" serverside-applied") for line in lines)
        for kind, name in objects:
            if kind == "Namespace":
                continue
            got = kubectl(
                "get", kind.lower(), f"{name}{suffix}", "-n", namespace, "-o", "yaml", "--show-managed-fields"
            ).stdout
            managers = [m["manager"] for m in yaml.safe_load(got)["metadata"]["managedFields"]]
            assert "vtpm-test" in managers, (kind, managers)
    finally:
        for kind, name in objects:
            if kind.startswith("Cluster"):
                kubectl("delete", kind.lower(), f"{name}{suffix}", "--ignore-not-found", check=False)


# --- NetworkPolicy: nothing here enforces it, so the stored rules are checked against the needs ---------


def resolve_port(port: int | str, named: dict[str, int]) -> int:
    return named[port] if isinstance(port, str) else port


def peer_matches(peers: list[dict[str, Any]] | None, address: str) -> bool:
    """No peers: anywhere. Only ipBlocks can name the addresses outside the cluster we ask about."""
    if not peers:
        return True
    ip = ipaddress.ip_address(address)
    blocks = [peer["ipBlock"] for peer in peers if peer.get("ipBlock")]
    return any(
        ip in ipaddress.ip_network(block["cidr"])
        and not any(ip in ipaddress.ip_network(c) for c in block.get("except") or [])
        for block in blocks
    )


def allows(
    rules: list[dict[str, Any]], port: int, protocol: str, named: dict[str, int], peer_key: str, address: str
) -> bool:
    """Whether any rule of a NetworkPolicy direction admits this port, protocol and peer address."""
    for rule in rules:
        if not peer_matches(rule.get(peer_key), address):
            continue
        ports = rule.get("ports") or [{"port": port, "protocol": protocol}]  # no ports: every port
        for entry in ports:
            first = resolve_port(entry["port"], named)
            if entry.get("protocol", "TCP") == protocol and first <= port <= entry.get("endPort", first):
                return True
    return False


def container_ports() -> dict[str, int]:
    (container,) = find("Deployment")["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


# (direction, port, protocol): what the operator needs; a vCenter at 192.0.2.10 (documentation range).
NEEDS = [
    ("egress", 53, "UDP"), ("egress", 53, "TCP"),  # DNS
    ("egress", 443, "TCP"), ("egress", 6443, "TCP"),  # API server: Service port, common endpoint port
    ("ingress", 9100, "TCP"), ("ingress", 8080, "TCP"),  # metrics, probes
]  # fmt: skip
NOT_NEEDED = [("egress", 22, "TCP"), ("egress", 80, "TCP"), ("egress", 5432, "TCP"), ("ingress", 22, "TCP")]
VCENTER = "192.0.2.10"


def stored_networkpolicy(kube_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    stored = client.NetworkingV1Api(kube_api).read_namespaced_network_policy(name, namespace)
    spec: dict[str, Any] = kube_api.sanitize_for_serialization(stored)["spec"]
    return spec


def verdicts(spec: dict[str, Any], cases: list[tuple[str, int, str]], address: str) -> list[bool]:
    named = container_ports()
    return [
        allows(
            spec.get(direction) or [],
            port,
            protocol,
            named,
            "to" if direction == "egress" else "from",
            address,
        )
        for direction, port, protocol in cases
    ]


def test_networkpolicy_applies_server_side_and_covers_the_operators_needs(
    kubectl: Any, kube_api: client.ApiClient, namespace: str
) -> None:
    out = kubectl("apply", "--server-side", "-n", namespace, "-f", str(DEPLOY / "networkpolicy.yaml")).stdout
    assert "networkpolicy.networking.k8s.io/vtpm-operator serverside-applied" in out
    spec = stored_networkpolicy(kube_api, namespace, "vtpm-operator")
    assert (
        spec["podSelector"]["matchLabels"].items()
        <= find("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert all(verdicts(spec, NEEDS, VCENTER)), list(zip(NEEDS, verdicts(spec, NEEDS, VCENTER), strict=True))
    assert not any(verdicts(spec, NOT_NEEDED, VCENTER))


def test_networkpolicy_vcenter_ports_are_a_kustomize_knob(
    kubectl: Any, kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    # The overlay of the manifest's own comment: vCenters on 10.20.0.0/24, ports 443 and 8443.
    # (kustomize reads single files only from inside the overlay, so the manifest is copied there.)
    (tmp_path / "networkpolicy.yaml").write_text((DEPLOY / "networkpolicy.yaml").read_text())
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "resources": ["networkpolicy.yaml"],
                "patches": [
                    {
                        "target": {"kind": "NetworkPolicy", "name": "vtpm-operator"},
                        "patch": yaml.safe_dump(
                            [
                                {
                                    "op": "replace",
                                    "path": "/spec/egress/2",
                                    "value": {
                                        "to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}],
                                        "ports": [
                                            {"port": 443, "protocol": "TCP"},
                                            {"port": 8443, "protocol": "TCP"},
                                        ],
                                    },
                                }
                            ]
                        ),
                    }
                ],
            }
        )
    )
    kubectl("apply", "--server-side", "-k", str(tmp_path))
    spec = stored_networkpolicy(kube_api, namespace, "vtpm-operator")
    assert verdicts(spec, [("egress", 8443, "TCP")], "10.20.0.7") == [True]
    assert verdicts(spec, [("egress", 8443, "TCP")], VCENTER) == [False]  # not one of the vCenters
    assert all(verdicts(spec, NEEDS, VCENTER))  # DNS, the API server and the probes untouched


# RBAC: the ClusterRole bound to the ServiceAccount in a test namespace, then real requests made while
# impersonating the ServiceAccount, and SubjectAccessReviews for the verbs without a cheap real request.


@pytest.fixture
def operator_identity(kube_api: client.ApiClient, namespace: str) -> Iterator[str]:
    """Apply deploy/'s ServiceAccount, ClusterRole, Role and bindings with ``namespace`` as the
    operator's namespace; yield the ServiceAccount's user name."""
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = copy.deepcopy(find("ClusterRole"))
    binding = copy.deepcopy(find("ClusterRoleBinding"))
    sa = find("ServiceAccount")
    unique = f"vtpm-operator-{namespace}"  # cluster-scoped names must not collide across tests
    role["metadata"]["name"] = unique
    binding["metadata"]["name"] = unique
    binding["roleRef"]["name"] = unique
    binding["subjects"][0]["namespace"] = namespace
    local_binding = copy.deepcopy(find("RoleBinding"))
    local_binding["subjects"][0]["namespace"] = namespace
    core.create_namespaced_service_account(namespace, sa)
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(binding)
    rbac.create_namespaced_role(namespace, find("Role"))
    rbac.create_namespaced_role_binding(namespace, local_binding)
    try:
        yield f"system:serviceaccount:{namespace}:{sa['metadata']['name']}"
    finally:
        rbac.delete_cluster_role_binding(unique)
        rbac.delete_cluster_role(unique)


@pytest.fixture
def other_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(generate_name="t-other-")))
    try:
        yield str(ns.metadata.name)
    finally:
        core.delete_namespace(ns.metadata.name)


@pytest.fixture
def as_operator(control_plane: Any, operator_identity: str) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    api.set_default_header("Impersonate-User", operator_identity)
    try:
        yield api
    finally:
        api.close()


# (verb, "group/resource[/subresource]") — group "" for the core API.
NEEDED_CLUSTER_WIDE = [
    *[(v, "vtpm-operator.io/vtpmpolicies") for v in ("get", "list", "watch", "patch")],
    *[(v, "vtpm-operator.io/vcenters") for v in ("get", "list", "watch")],
    ("patch", "vtpm-operator.io/vtpmpolicies/status"),
    ("patch", "vtpm-operator.io/vcenters/status"),
    ("create", "/events"),
    *[(v, "/namespaces") for v in ("list", "watch")],
    *[(v, "apiextensions.k8s.io/customresourcedefinitions") for v in ("list", "watch")],
]
NEEDED_IN_OWN_NAMESPACE = [
    ("get", "/secrets"),
    *[(v, "/configmaps") for v in ("get", "create", "update")],
    *[(v, "coordination.k8s.io/leases") for v in ("list", "create", "update", "delete")],
]
FORBIDDEN = [
    *[(v, "vtpm-operator.io/vtpmpolicies") for v in ("create", "update", "delete", "deletecollection")],
    *[(v, "vtpm-operator.io/vcenters") for v in ("create", "update", "patch", "delete")],
    ("update", "vtpm-operator.io/vtpmpolicies/status"),
    *[(v, "/secrets") for v in ("list", "watch", "create", "update", "patch", "delete")],
    *[(v, "/namespaces") for v in ("get", "create", "delete")],
    *[(v, "apiextensions.k8s.io/customresourcedefinitions") for v in ("get", "create", "update", "delete")],
    ("list", "/configmaps"),
    ("delete", "/configmaps"),
    ("list", "/pods"),
    ("delete", "/events"),
    ("create", "rbac.authorization.k8s.io/clusterrolebindings"),
]
FORBIDDEN_ELSEWHERE = [("get", "/secrets"), ("list", "coordination.k8s.io/leases"), ("get", "/configmaps")]


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (verb, f"{group}/{resource}")
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_roles_grant_exactly_the_needed_rules() -> None:
    assert _granted(find("ClusterRole")["rules"]) == set(NEEDED_CLUSTER_WIDE)
    assert _granted(find("Role")["rules"]) == set(NEEDED_IN_OWN_NAMESPACE)
    for kind in ("ClusterRole", "Role"):
        assert all("*" not in str(rule) and "resourceNames" not in rule for rule in find(kind)["rules"])
    assert not any("secrets" in rule["resources"] for rule in find("ClusterRole")["rules"])


def sar(kube_api: client.ApiClient, user: str, namespace: str, verb: str, resource: str) -> bool:
    group, _, rest = resource.partition("/")
    plural, _, subresource = rest.partition("/")
    cluster_scoped = plural in {"namespaces", "customresourcedefinitions", "clusterrolebindings", "vcenters"}
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                group=group,
                resource=plural,
                subresource=subresource or None,
                verb=verb,
                namespace=None if cluster_scoped else namespace,
            ),
        )
    )
    return bool(client.AuthorizationV1Api(kube_api).create_subject_access_review(review).status.allowed)


def test_roles_grant_what_the_operator_needs_and_no_more(
    kube_api: client.ApiClient, operator_identity: str, namespace: str, other_namespace: str
) -> None:
    needed = NEEDED_CLUSTER_WIDE + NEEDED_IN_OWN_NAMESPACE
    assert [n for n in needed if not sar(kube_api, operator_identity, namespace, *n)] == []
    assert [n for n in NEEDED_CLUSTER_WIDE if not sar(kube_api, operator_identity, other_namespace, *n)] == []
    assert [f for f in FORBIDDEN if sar(kube_api, operator_identity, namespace, *f)] == []
    assert [f for f in FORBIDDEN_ELSEWHERE if sar(kube_api, operator_identity, other_namespace, *f)] == []


def test_impersonated_operator_requests(
    kube_api: client.ApiClient,
    as_operator: client.ApiClient,
    crd_installed: str,
    namespace: str,
    other_namespace: str,
) -> None:
    admin_objects = client.CustomObjectsApi(kube_api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VTPMPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "vcenterRef": {"name": "vc"},
            "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
        },
    }
    admin_objects.create_namespaced_custom_object(GROUP, VERSION, other_namespace, PLURAL, body)
    admin_core = client.CoreV1Api(kube_api)
    for ns in (namespace, other_namespace):
        admin_core.create_namespaced_secret(
            ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="vcenter-creds"), string_data={"username": "u"}
            ),
        )

    objects = client.CustomObjectsApi(as_operator)
    core = client.CoreV1Api(as_operator)

    # Allowed: what the handlers, the engines and the status writer do.
    listed = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert any(item["metadata"]["name"] == "p" for item in listed["items"])
    objects.list_cluster_custom_object(GROUP, VERSION, "vcenters")
    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, other_namespace, PLURAL, "p", {"status": {"observedGeneration": 1}}
    )
    assert patched["status"]["observedGeneration"] == 1
    assert core.read_namespaced_secret("vcenter-creds", namespace).data["username"]
    core.create_namespaced_event(
        other_namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="p."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="VTPMPolicy", name="p", namespace=other_namespace
            ),
            reason="Test",
            message="event from the operator's identity",
            type="Normal",
        ),
    )
    assert core.list_namespace().items

    # Denied: everything else, the Secrets of every other namespace above all.
    def refused(call: Any, *args: Any) -> int:
        with pytest.raises(ApiException) as info:
            call(*args)
        return int(info.value.status)

    assert refused(core.read_namespaced_secret, "vcenter-creds", other_namespace) == 403
    assert refused(core.list_namespaced_secret, namespace) == 403
    current = admin_objects.get_namespaced_custom_object(GROUP, VERSION, other_namespace, PLURAL, "p")
    current["spec"]["mode"] = "Audit"
    assert (
        refused(
            objects.replace_namespaced_custom_object, GROUP, VERSION, other_namespace, PLURAL, "p", current
        )
        == 403
    )
    assert (
        refused(objects.delete_namespaced_custom_object, GROUP, VERSION, other_namespace, PLURAL, "p") == 403
    )
    assert (
        refused(objects.create_namespaced_custom_object, GROUP, VERSION, other_namespace, PLURAL, body) == 403
    )
    assert refused(core.list_namespaced_config_map, namespace) == 403
