"""The registry's routing of policies to engines, with the Publisher port recorded (no engine runs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from vtpm_operator.connection import Credentials, Endpoint, VCenterConfig
from vtpm_operator.engine.engine import EngineSettings
from vtpm_operator.engine.registry import Registry
from vtpm_operator.events import Notice
from vtpm_operator.problems import PolicyProblem, ProblemReason


class RecordingPublisher:
    def __init__(self) -> None:
        self.policy_writes: list[tuple[str, str, Mapping[str, Any]]] = []

    def policy_status(self, namespace: str, name: str, document: Mapping[str, Any]) -> None:
        self.policy_writes.append((namespace, name, document))

    def vcenter_status(self, name: str, document: Mapping[str, Any]) -> None:
        pass

    def policy_event(self, namespace: str, name: str, uid: str, notice: Notice) -> None:
        pass

    def record(self, vcenter: str, record: Mapping[str, Any]) -> None:
        pass

    def wait_recorded(self, vcenter: str, timeout: float) -> bool:
        return True


def _unreachable(config: VCenterConfig) -> tuple[Endpoint, Credentials]:
    raise AssertionError("no engine runs in these tests")


def _vcenter(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"server": "vc.example.com", "credentialsSecretRef": {"name": "creds"}},
    }


def _policy(name: str, vcenter: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": name, "uid": name, "generation": 1},
        "spec": {
            "vcenterRef": {"name": vcenter},
            "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
        },
    }


def _reasons(writes: list[tuple[str, str, Mapping[str, Any]]]) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for _, name, document in writes:
        ready = [c for c in document.get("conditions") or [] if c["type"] == "Ready"]
        reasons.setdefault(name, []).append(ready[0]["reason"])
    return reasons


def test_seeding_never_tells_a_policy_its_existing_vcenter_is_missing() -> None:
    """A restart lists policies and VCenters; on a replica that does not hold the lease, a
    VCenterNotFound written while seeding would stand in place of the holder's status."""
    publisher = RecordingPublisher()
    registry = Registry(publisher, _unreachable, lambda name: {})
    policies = [_policy(f"p{i}", "vc-a") for i in range(50)] + [_policy("orphan", "vc-gone")]
    registry.seed({"team": {}}, [_vcenter("vc-a")], policies)

    assert _reasons(publisher.policy_writes) == {"orphan": ["VCenterNotFound"]}
    assert registry.names() == {"vc-a"}


def test_seeding_again_forgets_what_was_deleted_since_the_first_listing() -> None:
    """The engines start on a listing made before Kopf runs; Kopf's own watch begins with a
    listing too, so an object deleted in between has no event left: the second seed forgets it."""
    registry = Registry(RecordingPublisher(), _unreachable, lambda name: {})
    kept, gone = [_policy("kept", "vc-a")], [_policy("deleted", "vc-a"), _policy("moved-away", "vc-b")]
    registry.seed({"team": {}, "old": {}}, [_vcenter("vc-a"), _vcenter("vc-b")], kept + gone)
    assert set(registry._routes) == {"team/kept", "team/deleted", "team/moved-away"}
    registry.seed({"team": {}}, [_vcenter("vc-a")], kept)

    assert registry.names() == {"vc-a"}
    assert set(registry._bodies) == {"team/kept"}
    assert set(registry._routes) == {"team/kept"}
    assert set(registry._namespaces) == {"team"}


def test_a_listing_that_ends_after_the_stop_starts_no_engine() -> None:
    """Kopf's startup handler may still be listing in its executor when SIGTERM's stop comes."""
    registry = Registry(RecordingPublisher(), _unreachable, lambda name: {})
    registry.start()
    registry.stop(grace=0)
    registry.seed({"team": {}}, [_vcenter("vc-a")], [_policy("p", "vc-a")])
    registry.vcenter(_vcenter("vc-b"))
    assert registry.names() == frozenset()


def test_a_vcenter_held_by_another_replica_is_known_by_the_identity_its_holder_wrote() -> None:
    """With two replicas each holding one of two VCenters that reach one vCenter, the younger one's
    holder never probes the older: it reads the older one's instanceUuid from its status."""
    registry = Registry(RecordingPublisher(), _unreachable, lambda name: {})
    older = {**_vcenter("vc-a"), "status": {"observedGeneration": 1, "instanceUuid": "uuid-1"}}
    younger = _vcenter("vc-b")
    younger["metadata"] = {**younger["metadata"], "creationTimestamp": "2026-01-01T00:00:01Z"}
    registry.seed({"team": {}}, [older, younger], [])
    assert registry._identity("vc-b", "uuid-1") == "vc-a"  # DuplicateVCenter, not a wait
    assert registry._identity("vc-b", "uuid-2") is None
    stale = {**_vcenter("vc-c"), "status": {"observedGeneration": 0, "instanceUuid": "uuid-0"}}
    registry.vcenter(stale)  # written for an earlier spec: not taken
    assert "vc-c" not in registry._identities


def _ready_reasons(publisher: RecordingPublisher, name: str) -> list[str]:
    return _reasons(publisher.policy_writes).get(name, [])


def test_a_policy_that_arrives_during_a_login_backoff_learns_the_problem_at_once() -> None:
    """The Secret is missing and the engine waits up to a minute before its next login; a policy
    created meanwhile is told why within its pulse, and no extra login is tried for it."""
    publisher, logins = RecordingPublisher(), []

    def secret_missing(config: VCenterConfig) -> tuple[Endpoint, Credentials]:
        logins.append(config.credentials_secret)
        raise PolicyProblem(ProblemReason.SECRET_NOT_FOUND, "Secret creds not found")

    registry = Registry(publisher, secret_missing, lambda name: {})
    registry.seed({"team": {}}, [_vcenter("vc-a")], [_policy("first", "vc-a")])
    (running,) = registry._engines.values()
    running.engine.failures = 6  # the next backoff is the longest one: 60 s
    registry.start()
    try:
        _wait(lambda: _ready_reasons(publisher, "first") == ["SecretNotFound"])
        registry.policy(_policy("second", "vc-a"))
        _wait(lambda: _ready_reasons(publisher, "second") == ["SecretNotFound"], seconds=5)
        assert logins == ["creds"]
    finally:
        registry.stop(grace=0)


def _wait(predicate: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_an_engine_acts_as_soon_as_its_lease_is_taken() -> None:
    """It naps while another replica holds the lease; taking the lease ends the nap at once."""
    publisher, holding, logins = RecordingPublisher(), threading.Event(), []

    def secret_missing(config: VCenterConfig) -> tuple[Endpoint, Credentials]:
        logins.append(config.credentials_secret)
        raise PolicyProblem(ProblemReason.SECRET_NOT_FOUND, "Secret creds not found")

    registry = Registry(
        publisher,
        secret_missing,
        lambda name: {},
        may_act=lambda name: holding.is_set(),
        settings=EngineSettings(pause=60),
    )
    registry.seed({"team": {}}, [_vcenter("vc-a")], [_policy("first", "vc-a")])
    registry.start()
    try:
        time.sleep(0.5)  # its first look found the lease held elsewhere: it naps (for up to 60 s)
        assert logins == []
        holding.set()
        registry.wake("vc-a")
        _wait(lambda: logins == ["creds"], seconds=10)
    finally:
        registry.stop(grace=0)


def test_only_a_namespace_that_changed_makes_engines_judge_again() -> None:
    """At start Kopf lists every namespace the seed already has: at 10k VMs and 20 policies each
    needless judgement of the whole fleet costs about 0.7 s while the first statuses are written."""
    registry = Registry(RecordingPublisher(), _unreachable, lambda name: {})
    registry.seed({"team": {"env": "prod"}}, [_vcenter("vc-a")], [_policy("first", "vc-a")])
    (running,) = registry._engines.values()
    queued = running.engine.inbox.qsize()  # the seeded policy
    registry.namespace("team", {"env": "prod"})
    assert running.engine.inbox.qsize() == queued
    registry.namespace("team", {"env": "dev"})
    registry.namespace("team", None)
    registry.namespace("other", {})
    assert running.engine.inbox.qsize() == queued + 3
