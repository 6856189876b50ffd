"""Many policies on one engine: every one settles with the right counts, at the cost of one.

The fleet and the policies are built from small rules (below), so that what each policy must
report is computed here from the same rules, not written down by hand.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from kubernetes import client, watch

from testbed.fleet import CATEGORY, EXEMPT_TAG, VMSpec, build_fleet
from testbed.vcsim import Simulator

from .conftest import Cluster, Replicas, policy_manifest, settled, summary

pytestmark = pytest.mark.slow

GROUP, VERSION = "vtpm-operator.io", "v1alpha1"

VMS = 30
GROUPS = 10  # tags group-0 .. group-9, one per policy selection rule
POLICIES = 100
RESYNC = 10.0  # seconds: every policy's resyncPeriod, so one refresh period is the same in both phases
TAG_OPERATIONS = (
    "ListAttachedObjectsOnTags",
    "ListCategories",
    "GetCategory",
    "ListTagsForCategory",
    "GetTag",
)


def group(n: int) -> str:
    return f"group-{n % GROUPS}"


@dataclass(frozen=True)
class ModelVM:
    index: int

    @property
    def name(self) -> str:
        return f"vm-{self.index:02d}"

    @property
    def tags(self) -> frozenset[str]:
        tags = {group(self.index)}
        if self.index % 3 == 0:  # a second group: selections overlap
            tags.add(group(self.index + 4))
        if self.index in (5, 17):
            tags.add(EXEMPT_TAG)
        return frozenset(tags)

    @property
    def has_vtpm(self) -> bool:
        return self.index % 4 == 0

    @property
    def powered_on(self) -> bool:  # Skip power policy: Blocked, unless it already complies
        return self.index % 7 == 3

    @property
    def exempt(self) -> bool:
        return EXEMPT_TAG in self.tags


@dataclass(frozen=True)
class ModelPolicy:
    index: int

    @property
    def name(self) -> str:
        return f"p-{self.index:03d}"

    @property
    def groups(self) -> frozenset[str]:
        chosen = {group(self.index)}
        if self.index % 2:
            chosen.add(group(self.index + 3))
        return frozenset(chosen)

    @property
    def enforce(self) -> bool:
        return self.index % GROUPS in (0, 1, 2)

    def tagged(self, fleet: list[ModelVM]) -> list[ModelVM]:
        return [vm for vm in fleet if vm.tags & self.groups]

    def manifest(self, vcenter: str) -> dict[str, Any]:
        return policy_manifest(
            self.name,
            vcenter,
            mode="Enforce" if self.enforce else "Audit",
            resyncPeriod=f"{RESYNC:g}s",
            selector={
                "tags": [{"category": CATEGORY, "name": g} for g in sorted(self.groups)],
                "excludeTags": [{"category": CATEGORY, "name": EXEMPT_TAG}],
            },
        )


def expected_summary(
    policy: ModelPolicy, fleet: list[ModelVM], enforcers: list[ModelPolicy]
) -> dict[str, int]:
    """What the policy must count once every Enforce policy has done what it can."""

    def final_vtpm(vm: ModelVM) -> bool:
        enforced = any(vm.tags & p.groups for p in enforcers)
        return vm.has_vtpm or (enforced and not vm.exempt and not vm.powered_on)

    tagged = policy.tagged(fleet)
    selected = [vm for vm in tagged if not vm.exempt]
    compliant = sum(final_vtpm(vm) for vm in selected)
    blocked = sum(not final_vtpm(vm) and vm.powered_on for vm in selected)
    return {
        "matched": len(selected),
        "excluded": len(tagged) - len(selected),
        "compliant": compliant,
        "blocked": blocked,
        "nonCompliant": len(selected) - compliant - blocked,
        "pending": 0,
        "failed": 0,
    }


def wait_until_all(
    cluster: Cluster, wanted: dict[str, dict[str, int]], timeout: float
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Seconds until every policy reports its current generation with the wanted counts."""
    started = time.monotonic()
    wrong: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        policies = cluster.policies()
        wrong = {}
        for name, counts in wanted.items():
            body = policies.get(name) or {"metadata": {}}
            status = body.get("status") or {}
            shown = {k: summary(body).get(k) for k in counts}
            if status.get("observedGeneration") != body["metadata"].get("generation") or shown != counts:
                wrong[name] = (status.get("observedGeneration"), shown, counts)
        if not wrong:
            return time.monotonic() - started, policies
        time.sleep(1)
    raise AssertionError(f"{len(wrong)} policies never showed their counts, e.g. {list(wrong.items())[:3]}")


def _after_next_full_read(sim: Simulator) -> None:
    """Wait for the next full read (a new container view) to begin, then for its calls to end."""
    deadline = time.monotonic() + RESYNC * 3
    while sim.admin.call_counts().get("CreateContainerView", 0) == 0:
        assert time.monotonic() < deadline, "no full read within three resync periods"
        time.sleep(0.2)
    time.sleep(3)  # the read's privilege, guest OS and key provider calls follow it


def one_refresh_period(sim: Simulator, operator: Replicas) -> tuple[dict[str, int], dict[str, float]]:
    """The simulator's SOAP call counts and the operator's tag (REST) calls over one refresh period:
    from just after one full read to just after the next, so that the window holds exactly one.
    (The simulator counts SOAP calls only; the REST calls come from the operator's own counter.)"""

    def tag_calls() -> dict[str, float]:
        return {
            op: operator.metric("vtpm_operator_vcenter_requests_total", operation=op) for op in TAG_OPERATIONS
        }

    sim.admin.reset_call_counts()
    _after_next_full_read(sim)
    sim.admin.reset_call_counts()
    rest_before = tag_calls()
    _after_next_full_read(sim)
    counts = sim.admin.call_counts()
    rest_after = tag_calls()
    return counts, {op: rest_after[op] - rest_before[op] for op in TAG_OPERATIONS}


@pytest.mark.parametrize("simulator", [{"vms": VMS}], indirect=True)
def test_hundred_policies_share_one_engine(simulator: Simulator, cluster: Cluster, run_operator: Any) -> None:
    fleet = [ModelVM(i) for i in range(VMS)]
    build_fleet(
        simulator,
        [
            VMSpec(vm.name, vtpm=vm.has_vtpm, powered_on=vm.powered_on, tags=tuple(sorted(vm.tags)))
            for vm in fleet
        ],
        extra_tags=[group(n) for n in range(GROUPS)],
    )
    policies = [ModelPolicy(k) for k in range(POLICIES)]
    vcenter = cluster.vcenter(simulator)
    simulator.admin.reset_auth_counters()

    # One policy first: what one refresh period costs with it alone.
    first = policies[0]
    cluster.apply(first.manifest(vcenter))
    operator: Replicas = run_operator()
    wait_until_all(cluster, {first.name: expected_summary(first, fleet, [first])}, timeout=60)
    soap_one, rest_one = one_refresh_period(simulator, operator)

    # Then all hundred, in one apply as a GitOps sync would bring them.
    cluster.apply({"apiVersion": "v1", "kind": "List", "items": [p.manifest(vcenter) for p in policies]})
    enforcers = [p for p in policies if p.enforce]
    wanted = {p.name: expected_summary(p, fleet, enforcers) for p in policies}
    seconds, _ = wait_until_all(cluster, wanted, timeout=150)
    print(f"100 policies showed their counts {seconds:.1f} s after the apply")
    soap_hundred, rest_hundred = one_refresh_period(simulator, operator)
    print(f"one refresh period, SOAP: 1 policy {soap_one}, 100 policies {soap_hundred}")
    print(f"one refresh period, tag calls: 1 policy {rest_one}, 100 policies {rest_hundred}")

    # The cost of a refresh period does not grow with the policies. WaitForUpdatesEx is the
    # engine's pulse: its count follows the wall clock, not the policies.
    pulse = "WaitForUpdatesEx"
    assert {m: n for m, n in soap_hundred.items() if m != pulse} == {
        m: n for m, n in soap_one.items() if m != pulse
    }
    assert abs(soap_hundred.get(pulse, 0) - soap_one.get(pulse, 0)) <= 3
    # Tag associations: one call for every watched tag, per tag refresh; the id lookups after a
    # full read walk the whole category whichever tags are wanted.
    assert abs(rest_hundred["ListAttachedObjectsOnTags"] - rest_one["ListAttachedObjectsOnTags"]) <= 1
    assert {op: rest_hundred[op] for op in TAG_OPERATIONS[1:]} == {
        op: rest_one[op] for op in TAG_OPERATIONS[1:]
    }

    # One SOAP session (and one REST session) served them all, from the first policy on.
    auth = simulator.admin.auth_counters()
    assert (auth.soap_logins, auth.rest_logins) == (1, 1), auth
    assert auth.active_soap_sessions == 1, auth


class StatusWitness:
    """Counts the MODIFIED events of the namespace's policies and of one VCenter, from watches
    opened at once: each status write that changes an object is one event."""

    def __init__(self, cluster: Cluster, vcenter: str) -> None:
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        custom = client.CustomObjectsApi(cluster.api)
        policies = partial(
            custom.list_namespaced_custom_object, GROUP, VERSION, cluster.namespace, "vtpmpolicies"
        )
        vcenters = partial(custom.list_cluster_custom_object, GROUP, VERSION, "vcenters")
        feeds: list[tuple[Callable[..., Any], Callable[[str], bool]]] = [
            (policies, lambda name: True),
            (vcenters, lambda name: name == vcenter),  # the other tests' VCenters are no concern
        ]
        self._threads = [
            threading.Thread(
                target=self._follow, args=(lister, counted, lister()["metadata"]["resourceVersion"])
            )
            for lister, counted in feeds
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> StatusWitness:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _follow(self, lister: Callable[..., Any], counted: Callable[[str], bool], version: str) -> None:
        while not self._stop.is_set():
            for event in watch.Watch().stream(lister, resource_version=version, timeout_seconds=1):
                body = event["object"]
                version = body["metadata"]["resourceVersion"]
                if event["type"] == "MODIFIED" and counted(body["metadata"]["name"]):
                    self.counts[body["metadata"]["name"]] += 1


@pytest.mark.parametrize("simulator", [{"vms": 40}], indirect=True)
def test_at_start_each_status_is_written_once(
    simulator: Simulator, cluster: Cluster, run_process: Any
) -> None:
    """The startup listing of the policies reaches the engine after its first status writes. Read
    as another writer's status it would make the holder write every policy a second time, at
    every start (operator/vtpm_operator/engine/echoes.py). The operator's own count of its writes
    must equal the changes the API server shows: 20 policies, one write each."""
    build_fleet(simulator, [VMSpec(f"vm-{i}") for i in range(40)])
    vcenter = cluster.vcenter(simulator)
    names = [f"audit-{i:02}" for i in range(20)]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [policy_manifest(n, vcenter, mode="Audit") for n in names],
        }
    )
    with StatusWitness(cluster, vcenter) as witness:
        started = time.monotonic()
        operator = run_process()
        for name in names:
            cluster.wait_for(name, lambda p: settled(p) and summary(p).get("nonCompliant") == 40, timeout=40)
        time.sleep(5)  # a second write would follow within the engine's next turns (a 1 s pulse)
    # The witness has stopped, and nothing is due before the refresh of every status (50 s after
    # its first write): the operator's count and the API server's are of the same writes.
    writes = operator.metric("vtpm_operator_status_writes_total", outcome="success")
    assert time.monotonic() - started < 50, "too slow to tell a second write from the refresh"
    assert {n: witness.counts[n] for n in names} == dict.fromkeys(names, 1)
    assert writes == sum(witness.counts.values()), (writes, witness.counts)
