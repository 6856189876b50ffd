"""Every engine of this operator, and the policies routed to them. No Kopf: the Kubernetes side
calls in with plain mappings as the API server lists and watches the objects.

The registry is seeded with everything the API server lists before any engine acts, so that a
policy's conflicts are judged against every policy that exists, never against whichever was
seen first after a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vtpm_operator.api import parse_policy, parse_vcenter
from vtpm_operator.connection import Credentials, Endpoint, VCenterConfig
from vtpm_operator.engine.engine import WAIT, Engine, EngineSettings, Hooks, PolicyEntry, Publisher
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.status import build_status, vcenter_status

log = logging.getLogger(__name__)

RETRY_ANNOTATION = "vtpm-operator.io/retry"


@dataclass
class _Running:
    engine: Engine
    thread: threading.Thread
    created: str  # creationTimestamp: of two VCenters that reach one vCenter, the older one acts


@dataclass
class Registry:
    publisher: Publisher
    connection: Callable[[VCenterConfig], tuple[Endpoint, Credentials]]
    load_record: Callable[[str], Mapping[str, Any]]
    may_act: Callable[[str], bool] = lambda name: True  # holds the VCenter's lease
    on_names: Callable[[frozenset[str]], None] = lambda names: None  # the VCenters that exist
    settings: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, _Running] = {}
        self._routes: dict[str, str] = {}  # policy key → VCenter name it was routed to
        self._bodies: dict[str, Mapping[str, Any]] = {}  # policy key → as last seen
        self._namespaces: dict[str, Mapping[str, str]] = {}
        self._identities: dict[str, str] = {}  # VCenter name → instanceUuid
        self._started = False  # engines start once the registry has been seeded with everything
        self._invalid: dict[str, PolicyProblem] = {}  # VCenter name → why its spec is refused
        self._stopped = False  # no engine is made after stop()

    # --- VCenters -------------------------------------------------------------------------------
    def vcenter(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        name, generation = meta["name"], int(meta.get("generation") or 0)
        try:
            config = parse_vcenter(body.get("spec") or {})
        except PolicyProblem as problem:
            self.forget_vcenter(name, tell_policies=False)
            with self._lock:
                self._invalid[name] = problem
            self._vcenter_problem(name, body, problem, generation)
            for policy in self._bodies_of(name):
                self.policy(policy)
            return
        status = body.get("status") or {}
        with self._lock:
            self._invalid.pop(name, None)
            if status.get("instanceUuid") and status.get("observedGeneration") == generation:
                # Probed by its holder, maybe another replica: a younger VCenter held here learns
                # from it whether both reach one vCenter, instead of waiting for a probe never made here.
                self._identities.setdefault(name, str(status["instanceUuid"]))
        with self._lock:
            running = self._engines.get(name)
            if running is None and self._stopped:
                return
            if running is None:
                engine = Engine(name, config, generation, self._hooks(), self.settings)
                engine.document = dict(body.get("status") or {})
                thread = threading.Thread(target=engine.run, name=f"engine-{name}", daemon=True)
                self._engines[name] = _Running(engine, thread, str(meta.get("creationTimestamp") or ""))
                waiting = [
                    b for k, b in self._bodies.items() if _vcenter_ref(b) == name and k not in self._routes
                ]
            else:
                running.engine.reconfigure(config, generation)
                waiting = []
        for policy in waiting:
            self.policy(policy)
        if running is None:
            self.on_names(self.names())
            if self._started:
                thread.start()

    def seed(
        self,
        namespaces: Mapping[str, Mapping[str, str]],
        vcenters: list[Mapping[str, Any]],
        policies: list[Mapping[str, Any]],
    ) -> None:
        """Everything the API server listed, before any engine acts. VCenters go in before the
        policies that name them: a policy seen first would be told VCenterNotFound, and on a
        second replica that write would replace the holder's status with a false one.
        Seeded again (Kopf's start, after the engines began on an earlier listing): what the new
        listing lacks was deleted in between, with no event to say so, and is forgotten. (What is
        deleted between this listing and Kopf's own, milliseconds later, is missed, as it was
        before the engines started ahead of Kopf.)"""
        if self._stopped:  # a relist still under way in Kopf's executor when the stop came
            return
        listed = {f"{b['metadata']['namespace']}/{b['metadata']['name']}" for b in policies}
        named = {b["metadata"]["name"] for b in vcenters}
        with self._lock:
            gone_policies = [key for key in self._bodies if key not in listed]
            gone_vcenters = (set(self._engines) | set(self._invalid)) - named
            gone_namespaces = [name for name in self._namespaces if name not in namespaces]
        for key in gone_policies:
            self.forget_policy(*key.split("/", 1))
        for name in gone_vcenters:
            self.forget_vcenter(name, tell_policies=False)  # every listed policy is judged below
        for name in gone_namespaces:
            self.namespace(name, None)
        for name, labels in namespaces.items():
            self.namespace(name, labels)
        for body in vcenters:
            self.vcenter(body)
        for body in policies:
            self.policy(body)

    def start(self) -> None:
        """Seeded: let the engines act."""
        with self._lock:
            self._started = True
            threads = [r.thread for r in self._engines.values()]
        for thread in threads:
            thread.start()

    def _bodies_of(self, vcenter: str) -> list[Mapping[str, Any]]:
        with self._lock:
            return [b for b in self._bodies.values() if _vcenter_ref(b) == vcenter]

    def forget_vcenter(self, name: str, *, tell_policies: bool = True) -> None:
        with self._lock:
            running = self._engines.pop(name, None)
            self._identities.pop(name, None)
            self._invalid.pop(name, None)
            for key in [k for k, routed in self._routes.items() if routed == name]:
                del self._routes[key]
        if running is not None:
            running.engine.stop()
            self.on_names(self.names())
        if tell_policies:
            for body in self._bodies_of(name):
                self.policy(body)  # now VCenterNotFound

    def _vcenter_problem(
        self, name: str, body: Mapping[str, Any], problem: PolicyProblem, generation: int
    ) -> None:
        document = vcenter_status(
            body.get("status") or {},
            problem,
            None,
            key_providers=(),
            policies=0,
            vms=0,
            generation=generation,
            now=datetime.now(UTC),
        )
        self.publisher.vcenter_status(name, document)

    def _hooks(self) -> Hooks:
        return Hooks(
            connection=self.connection,
            namespace_labels=self._namespaces.get,
            identity=self._identity,
            may_act=lambda name: self.may_act(name),  # set once the lease elector exists
            publisher=self.publisher,
            load_record=self.load_record,
        )

    def _identity(self, name: str, instance_uuid: str | None) -> str | None:
        """The VCenter created before `name` that reaches the same vCenter, if any; WAIT while an
        older VCenter has not been probed yet (its identity decides who acts). None: `name` acts.
        instance_uuid None: `name` could not be probed (it then blocks nobody)."""
        with self._lock:
            self._identities[name] = instance_uuid or ""
            mine = self._engines.get(name)
            created = (mine.created if mine else "", name)
            older = [
                (running.created, other)
                for other, running in self._engines.items()
                if other != name and (running.created, other) < created
            ]
            if instance_uuid is None:
                return None
            if any(other not in self._identities for _, other in older):
                return WAIT
            same = sorted(o for o in older if self._identities.get(o[1]) == instance_uuid)
        return same[0][1] if same else None

    # --- policies -------------------------------------------------------------------------------
    def policy(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        try:
            policy = parse_policy(body.get("spec") or {})
        except PolicyProblem as problem:
            with self._lock:
                self._bodies[key] = body
            self._route(key, None)
            self._policy_problem(body, problem)
            return
        entry = PolicyEntry(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
            policy=policy,
            status=dict(body.get("status") or {}),
            retry=str((meta.get("annotations") or {}).get(RETRY_ANNOTATION, "")),
        )
        with self._lock:
            self._bodies[key] = body
            running = self._engines.get(policy.vcenter)
            invalid = self._invalid.get(policy.vcenter)
        self._route(key, policy.vcenter if running else None)
        if invalid is not None:  # the VCenter's own reason: the admin's to fix, not the team's
            self._policy_problem(
                body, PolicyProblem(invalid.reason, f"VCenter {policy.vcenter}: {invalid.message}")
            )
            return
        if running is None:
            self._policy_problem(
                body,
                PolicyProblem(
                    ProblemReason.VCENTER_NOT_FOUND,
                    f"VCenter {policy.vcenter} does not exist; an admin creates it (kubectl get vcenters)",
                ),
            )
            return
        running.engine.upsert_policy(entry)

    def forget_policy(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        with self._lock:
            self._bodies.pop(key, None)
        self._route(key, None)

    def _route(self, key: str, vcenter: str | None) -> None:
        """Send the policy to one engine only: a policy that moved leaves its old engine."""
        with self._lock:
            earlier = self._routes.pop(key, None)
            if vcenter is not None:
                self._routes[key] = vcenter
            old = self._engines.get(earlier) if earlier and earlier != vcenter else None
        if old is not None:
            old.engine.remove_policy(key)

    def _policy_problem(self, body: Mapping[str, Any], problem: PolicyProblem) -> None:
        meta = body["metadata"]
        previous = body.get("status") or {}
        status = build_status(
            previous, problem, generation=int(meta.get("generation") or 0), now=datetime.now(UTC)
        )
        self.publisher.policy_status(meta["namespace"], meta["name"], {**previous, **status})

    # --- namespaces -----------------------------------------------------------------------------
    def namespace(self, name: str, labels: Mapping[str, str] | None) -> None:
        with self._lock:
            known = self._namespaces.get(name)
            if labels is None:
                self._namespaces.pop(name, None)
            else:
                self._namespaces[name] = dict(labels)
            if known == (None if labels is None else dict(labels)):
                return  # as seeded (Kopf lists every namespace at start): nothing to judge again
            engines = [r.engine for r in self._engines.values()]
        for engine in engines:
            engine.namespaces_changed()

    def wake(self, name: str) -> None:
        """The VCenter's lease was just taken here: its engine acts now, not after its nap."""
        with self._lock:
            running = self._engines.get(name)
        if running is not None:
            running.engine.wake()

    def wait_reported(self, name: str, timeout: float) -> bool:
        """Whether the VCenter's engine has told each of its policies something (Engine.reported)
        within `timeout` seconds; True at once when it has no engine."""
        with self._lock:
            running = self._engines.get(name)
        return running is None or running.engine.reported.wait(timeout)

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._engines)

    def idle(self, name: str) -> bool:
        """No change in flight on that vCenter here: its lease may be handed over."""
        with self._lock:
            running = self._engines.get(name)
        return running is None or running.engine.idle

    def stop(self, grace: float) -> None:
        """Drain every engine (see Engine.drain), then let them go."""
        with self._lock:
            self._stopped = True
            running = list(self._engines.values())
            self._engines.clear()
        for r in running:
            r.engine.drain(grace)
        for r in running:
            r.thread.join(timeout=grace + 5)


def _vcenter_ref(body: Mapping[str, Any]) -> str:
    return str(((body.get("spec") or {}).get("vcenterRef") or {}).get("name") or "")
