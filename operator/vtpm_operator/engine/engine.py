"""One engine per VCenter object: its connection, live inventory, tag map, views and change queue.

The engine is one thread that does everything for its vCenter in a loop, so none of its state
needs a lock: it waits on its one WaitForUpdatesEx (at most `max_wait` seconds), takes in what
the Kubernetes side sent through its inbox, judges again what changed, starts and steps changes,
and hands status documents to the publisher. Nothing is tied to a policy: a policy is a view.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from vtpm_operator import claims, metrics
from vtpm_operator.background import in_background
from vtpm_operator.connection import Credentials, Endpoint, VCenterConfig
from vtpm_operator.engine.echoes import Echoes
from vtpm_operator.engine.queue import ChangeQueue, Finished, Flight, LeaseGone, Wanted
from vtpm_operator.engine.views import Fleet, PolicyView
from vtpm_operator.engine.workflow import Plan, TaskDone, pay_debt, vtpm_change
from vtpm_operator.events import Notice, notices_for
from vtpm_operator.facts import About, KeyProvider, PowerState, VMFacts
from vtpm_operator.planning import WAITING_FOR_TASK, Change, decide, pending
from vtpm_operator.policy import DesiredVTPM, Mode, Policy
from vtpm_operator.prerequisites import choose_key_provider, evaluate
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.retry import Hold, RetryBook
from vtpm_operator.status import build_status, vcenter_status
from vtpm_operator.sync import SyncResult
from vtpm_operator.vsphere import inventory as reads
from vtpm_operator.vsphere.changes import ChangeOps
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.live import LiveInventory
from vtpm_operator.vsphere.session import VCenterSession
from vtpm_operator.vsphere.tags import TagMap, tags_missing_message

log = logging.getLogger(__name__)

WAIT = "\x00wait"  # the identity hook's answer while an older VCenter's identity is not known yet


@dataclass(frozen=True)
class EngineSettings:
    tag_refresh: float = 10.0  # tags have no feed: their associations are read this often
    task_timeout: float = 900.0  # a task past it is cancelled
    # Seconds one WaitForUpdatesEx may block: the loop's pulse, and the latency of what Kubernetes
    # tells the engine. Changes, tasks and drift end the wait at once; an idle vCenter costs one
    # round trip per pulse (the issue allows one a second).
    max_wait: int = 2
    status_refresh: float = 50.0  # lastSyncTime is written at least this often (the issue asks 60 s)
    retry_base: float = 30.0
    retry_limit: int = 3
    settle: float = 5.0  # after a change ends, its VM's debts wait for the feed to catch up
    pause: float = 1.0  # the longest nap while not reading (no lease, a login backoff): wake() ends it


@dataclass(frozen=True)
class PolicyEntry:
    """A VTPMPolicy as the Kubernetes side last saw it, already parsed."""

    namespace: str
    name: str
    uid: str
    generation: int
    policy: Policy
    status: Mapping[str, Any]  # as stored: the running totals and condition times carry on
    retry: str = ""  # the vtpm-operator.io/retry annotation

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Publisher(Protocol):
    """Where status documents and events go (the Kubernetes side); never blocks the engine."""

    def policy_status(self, namespace: str, name: str, document: Mapping[str, Any]) -> None: ...
    def vcenter_status(self, name: str, document: Mapping[str, Any]) -> None: ...
    def policy_event(self, namespace: str, name: str, uid: str, notice: Notice) -> None: ...
    def record(self, vcenter: str, record: Mapping[str, Any]) -> None:
        """Written before any status submitted after it."""
        ...

    def wait_recorded(self, vcenter: str, timeout: float) -> bool:
        """Whether the last record handed over is written within `timeout` seconds."""
        ...


@dataclass
class Hooks:
    """What the engine asks of the world around it."""

    connection: Callable[[VCenterConfig], tuple[Endpoint, Credentials]]  # reads the Secret
    namespace_labels: Callable[[str], Mapping[str, str] | None]  # None: no such namespace
    # (name, instanceUuid or None when it could not be probed) → an older VCenter reaching the
    # same vCenter, WAIT while that cannot be told, or None
    identity: Callable[[str, str | None], str | None]
    may_act: Callable[[str], bool]  # this replica holds the VCenter's lease
    publisher: Publisher
    load_record: Callable[[str], Mapping[str, Any]]  # the VCenter's change record (kube/records.py)


@dataclass
class _Selection:
    selected: frozenset[str] = frozenset()
    excluded: int = 0
    problem: PolicyProblem | None = None


@dataclass
class Engine:
    name: str
    config: VCenterConfig
    generation: int
    hooks: Hooks
    settings: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        self.inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.policies: dict[str, PolicyEntry] = {}
        self.views: dict[str, PolicyView] = {}
        self.selections: dict[str, _Selection] = {}
        self.last_reports: dict[str, SyncResult | PolicyProblem] = {}
        self.written: dict[str, tuple[dict[str, Any], float]] = {}  # key → (document sans time, when)
        self.echoes: dict[str, Echoes] = {}  # key → its recent writes, to tell a foreign one
        self.synced_at: dict[str, float] = {}  # key → when its view was last known current
        self.totals: dict[str, dict[str, int]] = {}  # key → running totals, as recorded
        self.recorded: dict[str, Any] | None = None  # the change record as last handed over
        # VM → the change started on it (action, owners): recorded, so that a change that took
        # while the operator died is credited once, by whoever holds the vCenter next.
        self.intents: dict[str, dict[str, Any]] = {}
        self.problem: PolicyProblem | None = None  # why vCenter cannot be read now
        self.about: About | None = None
        self.session: VCenterSession | None = None
        self.ops: ChangeOps | None = None
        self.live: LiveInventory | None = None
        self.tags: TagMap | None = None
        self.key_providers: tuple[KeyProvider, ...] = ()
        self.guest_support: dict[tuple[str, str], bool | None] = {}
        self.queue = ChangeQueue()
        self.retry = RetryBook(base=self.settings.retry_base, limit=self.settings.retry_limit)
        self.settling: dict[str, float] = {}  # VM → until when its debts wait for the feed
        self.busy: dict[str, float] = {}  # VM → until when its change waits for another's task
        self.fleet_ready = False
        self.dirty_all = True
        self.dirty_vms: set[str] = set()
        self.next_full = 0.0
        self.next_tags = 0.0
        self.current_at: float | None = None  # the last moment the view was known current
        self.document: dict[str, Any] = {}
        self.stop_event = threading.Event()
        self.wakeup = threading.Event()  # set by wake(): a nap ends at once
        # Set once every policy has been told something (a verdict of the whole fleet, or why
        # there is none): what the process start waits for before it loads Kopf (Runtime.settle).
        self.reported = threading.Event()
        self.draining_until: float | None = None
        self.failures = 0  # connection attempts that failed in a row
        self.login_at = 0.0  # monotonic: after a failure, no login before this
        self.acting = False  # this replica held the lease at the last look
        self.judged: tuple[list[claims.Claimant], dict[str, claims.SharedVM]] = ([], {})  # → claims.judge

    # --- from the Kubernetes side (any thread) --------------------------------------------------
    def upsert_policy(self, entry: PolicyEntry) -> None:
        self._post(lambda: self._upsert(entry))

    def remove_policy(self, key: str) -> None:
        self._post(lambda: self._remove(key))

    def reconfigure(self, config: VCenterConfig, generation: int) -> None:
        self._post(lambda: self._reconfigure(config, generation))

    def namespaces_changed(self) -> None:
        self._post(self._mark_all_dirty)

    def wake(self) -> None:
        """Its lease was just taken, or a message came: a nap ends now, not at its end."""
        self.wakeup.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake()

    def _post(self, message: Callable[[], None]) -> None:
        self.inbox.put(message)
        self.wake()

    def drain(self, grace: float) -> None:
        """A graceful stop: start nothing new, await only the tasks already submitted (up to
        `grace` seconds), abandon guest shutdown waits (their markers stay, for the next holder)."""
        self.draining_until = time.time() + grace
        self.wake()

    @property
    def idle(self) -> bool:
        """No change in flight (read from other threads: a length, never the items)."""
        return not self.queue.flights

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        metrics.set_vcenter(self.name, ready=False, vms=0, lease_held=False)  # until the lease is held
        while not self.stop_event.is_set():
            try:
                if self._iteration():
                    break
            except Exception:  # a bug must not end the engine: every VM of this vCenter depends on it
                log.exception("engine %s: unexpected error; going on", self.name)
                self.stop_event.wait(1.0)
        self._close()

    def _iteration(self) -> bool:
        """One turn of the loop; True once a drain has finished."""
        self._drain()
        if self.draining_until is not None:
            return self._drained()
        try:
            acting = self._may_act()
        except _NotYet:  # a fixed wait: not a read of the record per message that wakes it
            self.stop_event.wait(1.0)
            return False
        if not acting:
            self._nap()
            return False
        if self.live is None and time.monotonic() < self.login_at:
            self._publish()  # a policy that arrives during the backoff learns the problem at once
            self._nap(self.login_at - time.monotonic())
            return False
        try:
            if self.live is None:
                self._connect()
                self.failures = 0
            self._tick()
            return False
        except PolicyProblem as problem:
            self._lost(problem)
        except Exception as error:  # a fault nothing above expected: report it, retry with backoff
            log.exception("engine %s failed", self.name)
            self._lost(PolicyProblem(ProblemReason.VCENTER_ERROR, describe(error)))
        self.failures += 1
        self._publish()
        # One login per backoff step, however many policies wait for this vCenter.
        self.login_at = time.monotonic() + min(60.0, 2.0 ** min(self.failures, 6))
        return False

    def _drain(self) -> None:
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            try:
                message()
            except Exception:  # one bad message must not lose the others
                log.exception("engine %s: a message from the Kubernetes side failed", self.name)

    def _nap(self, seconds: float | None = None) -> None:
        """Wait up to `pause` (or `seconds`, if shorter), unless woken first."""
        limit = self.settings.pause if seconds is None else min(seconds, self.settings.pause)
        self.wakeup.wait(max(0.0, limit))
        self.wakeup.clear()  # whatever woke it is handled by the turn that follows

    def _holding(self) -> bool:
        return self.hooks.may_act(self.name)

    def _may_act(self) -> bool:
        """Only the holder of this VCenter's lease reads it, changes it and reports on it."""
        acting = self.hooks.may_act(self.name)
        if acting != self.acting:
            log.info("vCenter %s: %s its lease", self.name, "holding" if acting else "not holding")
            if acting:
                self._take_over()  # raises when the record cannot be read: then it waits
            else:
                self._step_back()
            self.acting = acting
        return acting

    def _take_over(self) -> None:
        """Before anything else: what an earlier holder (or this one, before a restart) recorded."""
        try:
            record = self.hooks.load_record(self.name)
        except Exception:
            log.warning("vCenter %s: its change record cannot be read; waiting", self.name, exc_info=True)
            raise _NotYet from None
        self.retry.load_record(record.get("failures") or {})
        for vm_id, intent in (record.get("intents") or {}).items():
            self.intents.setdefault(vm_id, dict(intent))
        for key, totals in (record.get("totals") or {}).items():
            mine = self.totals.setdefault(key, {})
            for total, value in totals.items():
                mine[total] = max(int(value), mine.get(total, 0))
        self.recorded = dict(record)

    def _step_back(self) -> None:
        """Another replica is (or soon will be) the holder: no further step, no reads, no series.
        Tasks already submitted run on in vCenter; the markers tell the next holder what is owed."""
        self.queue.abandon(keep_submitted=False)
        if self.live is not None:
            self.live.close()
        self.live = None
        self.fleet_ready = False
        self.views.clear()
        self.written.clear()
        self.echoes.clear()
        self.last_reports.clear()
        for entry in self.policies.values():
            metrics.forget_policy(entry.namespace, entry.name)
        metrics.forget_vcenter(self.name)
        metrics.set_vcenter(self.name, ready=False, vms=0, lease_held=False)

    def _drained(self) -> bool:
        """Draining: True once nothing submitted is still awaited, or the grace period is over."""
        assert self.draining_until is not None
        self.queue.abandon(keep_submitted=True)
        if self.live is not None and self.queue.flights and time.time() < self.draining_until:
            try:
                self.live.poll(self.settings.max_wait)
                self.queue.settle_submitted(self.live)
            except Exception:  # vCenter gone: nothing more to await
                log.warning("vCenter %s: stopped awaiting tasks", self.name, exc_info=True)
                return True
            return False
        return True

    def _connect(self) -> None:
        try:
            self._open()
        except PolicyProblem:
            if self.about is None:
                self.hooks.identity(self.name, None)  # younger VCenters need not wait for this one
            raise

    def _open(self) -> None:
        endpoint, credentials = self.hooks.connection(self.config)
        if self.session is None or (self.session.endpoint, self.session.credentials) != (
            endpoint,
            credentials,
        ):
            if self.session is not None:
                self.session.close()
            self.session = VCenterSession(endpoint, credentials, label=self.name)
        about = self.session.probe()  # no credentials leave before this proves it is a vCenter
        while self._check_identity(about) and not self.stop_event.wait(0.5):
            pass  # an older VCenter object is still being probed: it may be this very vCenter
        self.about = about
        self.ops = ChangeOps(self.session)
        self.live = LiveInventory(self.session, self.ops.marker_key)
        self.tags = TagMap(self.session)
        self.next_full = 0.0  # the first poll fills the inventory
        self.problem = None

    def _check_identity(self, about: About) -> bool:
        """Two VCenter objects that reach one vCenter would change its VMs twice: the later one
        yields. True while that cannot be told yet."""
        earlier = self.hooks.identity(self.name, about.instance_uuid)
        if earlier == WAIT:
            return True
        if earlier is not None:
            raise PolicyProblem(
                ProblemReason.DUPLICATE_VCENTER,
                f"VCenter {earlier} already reaches this vCenter (instanceUuid {about.instance_uuid}); "
                "its policies act through that one, this one acts on nothing",
            )
        return False

    def _lost(self, problem: PolicyProblem) -> None:
        if problem.reason is not (self.problem.reason if self.problem else None):
            log.warning("vCenter %s: %s: %s", self.name, problem.reason, problem.message)
        self.problem = problem
        if self.live is not None:
            self.live.abandon()
        self.live = None
        self.fleet_ready = False  # nothing starts until vCenter answers again; flights wait

    def _close(self) -> None:
        if self.live is not None:
            self.live.close()
        if self.session is not None:
            self.session.close()
        metrics.forget_vcenter(self.name)
        for entry in self.policies.values():
            metrics.forget_policy(entry.namespace, entry.name)

    def _needs_inventory(self) -> bool:
        """A vCenter is read only for policies it admits, or to pay the power-ons owed on it: with
        neither, nothing of it is read (a policy of a namespace it does not admit reads nothing)."""
        assert self.ops is not None
        admitted = any(self._admission(e) is None for e in self.policies.values())
        return admitted or self.ops.marker_key() is not None or bool(self.queue.flights)

    def _tick(self) -> None:
        assert self.live is not None and self.about is not None
        self._check_identity(self.about)
        if not self._needs_inventory():
            self.fleet_ready = False
            self.next_full = 0.0
            self._publish()
            self._nap()
            self._drain()
            return
        now = time.time()
        if now >= self.next_full:
            self._full_read_begins(now)
        delta = self.live.poll(self.settings.max_wait)
        self.current_at = time.time()
        if delta.filled:
            self._full_read_ends(now)
        self.dirty_vms |= delta.vms | delta.removed
        self.dirty_all |= delta.hosts
        if self.fleet_ready and time.time() >= self.next_tags:
            self._refresh_tags()
        self._finish(self.queue.advance(self.live, self._holding))
        self.dirty_vms |= {
            vm for vm, f in self.queue.flights.items() if isinstance(f.wait, TaskDone) and f.wait.overdue
        }
        if self.fleet_ready:
            self._evaluate()
            if self._holding():  # the lease may have gone during the wait
                try:
                    self._pay_debts()
                    self._admit()
                except LeaseGone:  # mid-round: the next iteration steps back
                    pass
                except NotStarted as error:  # the API server does not answer, or a stop came
                    log.warning("vCenter %s: %s", self.name, error)
        self.live.watch_tasks(self.queue.watched_tasks())
        self._publish()

    # --- reading -------------------------------------------------------------------------------
    def _full_read_begins(self, now: float) -> None:
        assert self.live is not None and self.tags is not None
        self.live.restart()
        self.tags.forget_names()
        self.next_tags = 0.0
        resyncs = [e.policy.resync_period for e in self.policies.values()]
        self.next_full = now + (min(resyncs) if resyncs else 300.0)

    def _full_read_ends(self, started: float) -> None:
        """Privileges and key providers have no feed: read them at every full read, and the tags
        with them. vCenter takes longest over the fleet's privileges (0.4 s for 10k VMs on the
        project's simulator): the other reads are made meanwhile, in this thread."""
        assert self.live is not None and self.session is not None
        vms = self.live.vms
        folders = {vm.id: vm.folder_id for vm in vms.values()}
        privileges = in_background(partial(reads.fleet_privileges, self.session, folders), "privileges")
        try:
            pairs = {(vm.host_id, vm.guest_id) for vm in vms.values() if vm.host_id is not None}
            reads.guest_tpm_support(self.session, pairs, self.guest_support)
            self.key_providers = reads.key_providers(self.session)
            self._refresh_tags()
        except BaseException:
            privileges.exception()  # awaited: it must not run on into the session the next read makes
            raise
        missing = privileges.result()
        for vm in vms.values():
            vms[vm.id] = replace(
                vm,
                missing_privileges=missing.get(vm.id, frozenset()),
                guest_supports_tpm20=self.guest_support.get((vm.host_id or "", vm.guest_id)),
            )
        self.fleet_ready = True
        self.dirty_all = True
        metrics.observe_full_read(self.name, time.time() - started)

    def _refresh_tags(self) -> None:
        assert self.tags is not None and self.live is not None
        admitted = {key: e for key, e in self.policies.items() if self._admission(e) is None}
        refs = {ref for e in admitted.values() for ref in e.policy.tags + e.policy.exclude_tags}
        found, _ = self.tags.ids(refs)
        self.tags.refresh(found.values())
        self.next_tags = time.time() + self.settings.tag_refresh
        selections = {key: self._select(e, found) for key, e in admitted.items()}
        if selections != self.selections:
            self.dirty_all = True
        self.selections = selections

    def _select(self, entry: PolicyEntry, found: Mapping[Any, str]) -> _Selection:
        assert self.tags is not None and self.live is not None
        policy = entry.policy
        missing = [ref for ref in policy.tags + policy.exclude_tags if ref not in found]
        if missing:
            return _Selection(
                problem=PolicyProblem(ProblemReason.TAG_NOT_FOUND, tags_missing_message(missing))
            )
        tagged = frozenset().union(*(self.tags.vms_with(found[ref]) for ref in policy.tags))
        excluded = frozenset().union(*(self.tags.vms_with(found[ref]) for ref in policy.exclude_tags))
        vms = self.live.vms
        known = {vm for vm in tagged if vm in vms}
        chosen = frozenset(vm for vm in known - excluded if not vms[vm].is_template)
        return _Selection(chosen, len(known) - len(chosen))

    # --- judging -------------------------------------------------------------------------------
    def _admission(self, entry: PolicyEntry) -> PolicyProblem | None:
        allowed = self.config.allowed_namespaces
        if allowed is None:
            return None
        labels = self.hooks.namespace_labels(entry.namespace) or {}
        if allowed.admits(entry.namespace, labels):
            return None
        return PolicyProblem(
            ProblemReason.NAMESPACE_NOT_ALLOWED,
            f"VCenter {self.name} does not admit policies from namespace {entry.namespace}; "
            "its admin sets spec.allowedNamespaces",
        )

    def _removal_refused(self, policy: Policy) -> str | None:
        if policy.vtpm is not DesiredVTPM.ABSENT:
            return None
        if not policy.allow_removal:
            return "the policy's allowRemoval is false"
        if not self.config.allow_removal:
            return f"VCenter {self.name} has allowRemoval: false"
        return None

    def _claimants(self) -> list[claims.Claimant]:
        return [
            claims.Claimant(
                key,
                entry.namespace,
                entry.name,
                entry.policy,
                self._removal_refused(entry.policy) is None,
                self.selections[key].selected,
            )
            for key, entry in self.policies.items()
            if key in self.selections and self.selections[key].problem is None
        ]

    def _evaluate(self) -> None:
        if not (self.dirty_all or self.dirty_vms):
            return
        assert self.live is not None
        claimants = self._claimants()
        # Who shares which VM depends on the claimants only (their selections are the same
        # frozensets until a tag refresh replaces them, so comparing is cheap): judging it again
        # for every changed VM cost ~0.2 s per evaluation at 10k VMs and 20 policies.
        if claimants != self.judged[0]:
            self.judged = (claimants, claims.judge(claimants))
        fleet = Fleet(
            self.live.vms,
            self.live.hosts,
            self.key_providers,
            self.judged[1],
            {vm: f.doing for vm, f in self.queue.flights.items()},
            {
                vm: f.wait.overdue
                for vm, f in self.queue.flights.items()
                if isinstance(f.wait, TaskDone) and f.wait.overdue
            },
            dict.fromkeys(self.busy, WAITING_FOR_TASK),
            self._holds(),
        )
        for claimant in claimants:
            view = self.views.get(claimant.key)
            if view is None:
                view = self.views[claimant.key] = PolicyView(
                    claimant,
                    self._removal_refused(claimant.policy),
                    excluded=self.selections[claimant.key].excluded,
                    document=_with_totals(self.policies[claimant.key].status, self.totals.get(claimant.key)),
                )
                view.refresh(fleet)
                continue
            view.claimant = claimant
            view.removal_refused = self._removal_refused(claimant.policy)  # the VCenter's may change
            view.excluded = self.selections[claimant.key].excluded
            view.refresh(fleet, None if self.dirty_all else self.dirty_vms)
        for key in [k for k in self.views if k not in {c.key for c in claimants}]:
            del self.views[key]
        self.dirty_all, self.dirty_vms = False, set()
        self._credit_recorded_intents()
        self.queue.want(self._wanted(fleet))

    def _holds(self) -> dict[str, Hold]:
        assert self.live is not None
        now = time.time()
        holds = {}
        for vm_id in list(self.retry.failures):
            vm = self.live.vms.get(vm_id)
            hold = self.retry.hold(vm_id, _facts_key(vm), now) if vm is not None else None
            if hold is not None:
                holds[vm_id] = hold
        return holds

    def _wanted(self, fleet: Fleet) -> dict[str, Wanted]:
        owners: dict[str, list[tuple[str, Change]]] = {}
        for key, view in sorted(self.views.items()):
            if view.policy.mode is Mode.ENFORCE:
                for vm_id, change in view.wanted.items():
                    owners.setdefault(vm_id, []).append((key, change))
        wanted = {}
        for vm_id, asks in owners.items():
            key, change = asks[0]
            view = self.views[key]
            shared = fleet.shared.get(vm_id)
            policy = shared.effective(view.policy) if shared is not None else view.policy
            plan = Plan(
                change, policy.power, policy.key_provider, self.policies[key].uid, self.settings.task_timeout
            )
            wanted[vm_id] = Wanted(plan, tuple(k for k, _ in asks), change.vm.power_on_owed)
        return wanted

    # --- changing ------------------------------------------------------------------------------
    def _admit(self) -> None:
        per_owner = self.queue.in_flight_for()
        now = time.time()
        for vm_id, wanted in list(self.queue.queued.items()):
            if len(self.queue.flights) >= self.config.max_concurrent_changes:
                return
            if max(self.settling.get(vm_id, 0.0), self.busy.get(vm_id, 0.0)) > now:
                continue
            if any(
                per_owner[o] >= self.policies[o].policy.max_concurrent
                for o in wanted.owners
                if o in self.policies
            ):
                continue
            plan = self._rejudge(vm_id, wanted)
            if plan is None:
                if vm_id not in self.busy:
                    self.queue.queued.pop(vm_id, None)
                    self.dirty_vms.add(vm_id)
                continue
            self._start(vm_id, wanted, plan)
            per_owner.update(wanted.owners)
            self.dirty_vms.add(vm_id)

    def _start(self, vm_id: str, wanted: Wanted, plan: Plan) -> None:
        """Start the planned change; raises LeaseGone (nothing started) without the lease."""
        assert self.ops is not None
        message = pending(plan.change).message
        flight = Flight(
            vm_id, vtpm_change(self.ops, plan), wanted.owners, plan.change.action.value, message, plan
        )
        earlier = self.intents.get(vm_id)
        self.intents[vm_id] = {"action": plan.change.action.value, "owners": list(wanted.owners)}
        try:
            # Its intent is written before vCenter hears of the change: killed right after it,
            # this replica leaves the next holder what to credit (remediatedTotal, exactly once).
            self.recorded = None  # handed over even when it equals the record loaded at take-over
            self._record()
            if not self.hooks.publisher.wait_recorded(self.name, RECORD_WAIT):
                raise NotStarted(f"the change record is not written; {vm_id} stays queued")
            if self.draining_until is not None or self.stop_event.is_set():
                raise NotStarted(f"stopping; {vm_id} stays queued")  # asked during the wait
            done = self.queue.start(flight, self._holding)
        except (LeaseGone, NotStarted):  # not started: what was recorded before stays as it was
            if earlier is None:
                del self.intents[vm_id]
            else:
                self.intents[vm_id] = earlier
            raise
        log.info("vCenter %s: %s (%s) for %s", self.name, message, vm_id, ", ".join(wanted.owners))
        self._finish([done] if done else [])

    def _rejudge(self, vm_id: str, wanted: Wanted) -> Plan | None:
        """The change as the live facts and the live selection have it right before it starts;
        None when it must not start (excluded since, changed by a person, its policy gone)."""
        assert self.session is not None and self.ops is not None and self.live is not None
        owners = [o for o in wanted.owners if o in self.policies and vm_id in self._selected(o)]
        if not owners:
            return None
        fresh = reads.read_proof(self.session, [vm_id], self.ops.marker_key()).get(vm_id)
        if fresh is None:
            return None
        if fresh.task_in_progress:  # someone else's task: wait for it, the VM stays Pending
            if vm_id not in self.busy:
                self.dirty_vms.add(vm_id)
            self.busy[vm_id] = time.time() + self.settings.settle
            return None
        if self.busy.pop(vm_id, None) is not None:
            self.dirty_vms.add(vm_id)
        if _shutdown_under_way(fresh, wanted.plan.power.shutdown_timeout):
            self.busy[vm_id] = time.time() + self.settings.settle  # an earlier holder's shutdown
            return None
        # The proof is fresher than the feed (the device list, not tpmPresent): the fleet view takes it.
        fresh = replace(
            fresh, guest_supports_tpm20=self.guest_support.get((fresh.host_id or "", fresh.guest_id))
        )
        self.live.vms[vm_id] = fresh
        policy = replace(self.policies[owners[0]].policy, power=wanted.plan.power)
        provider = choose_key_provider(self.key_providers, policy.key_provider)
        decision = decide(
            evaluate(fresh, policy, self.live.hosts, provider),
            policy,
            removal_refused=self._removal_refused(policy),
        )
        if not isinstance(decision, Change):
            return None
        return replace(wanted.plan, change=decision)

    def _selected(self, key: str) -> frozenset[str]:
        selection = self.selections.get(key)
        return selection.selected if selection is not None else frozenset()

    def _longest_shutdown(self) -> float:
        timeouts = [e.policy.power.shutdown_timeout for e in self.policies.values()]
        return max(timeouts, default=600.0)

    def _pay_debts(self) -> None:
        assert self.live is not None and self.ops is not None and self.session is not None
        now = time.time()
        for vm in list(self.live.vms.values()):
            if not vm.power_on_owed or vm.id in self.queue.flights or vm.id in self.queue.queued:
                continue
            if max(self.settling.get(vm.id, 0.0), self.busy.get(vm.id, 0.0)) > now:
                continue
            if self.retry.hold(vm.id, _facts_key(vm), now):
                continue
            if len(self.queue.flights) >= self.config.max_concurrent_changes:
                return
            # The feed has no tasks: read the VM fresh, so that a power-on never races a task
            # still running on it (a reconfigure past its deadline, someone's backup).
            fresh = reads.read_proof(self.session, [vm.id], self.ops.marker_key()).get(vm.id)
            if fresh is None or not fresh.power_on_owed:
                continue
            if fresh.task_in_progress or _shutdown_under_way(fresh, self._longest_shutdown()):
                self.busy[vm.id] = now + self.settings.settle
                continue
            self.busy.pop(vm.id, None)
            flight = Flight(
                vm.id,
                pay_debt(self.ops, fresh, self.settings.task_timeout),
                (),
                "PowerOn",
                "powering the VM on again after an interrupted change",
                None,
            )
            self._finish([done] if (done := self.queue.start(flight, self._holding)) else [])

    def _finish(self, finished: list[Finished]) -> None:
        if not finished:
            return
        assert self.session is not None and self.ops is not None and self.live is not None
        proof = reads.read_proof(self.session, [f.flight.vm_id for f in finished], self.ops.marker_key())
        now = time.time()
        for done in finished:
            flight = done.flight
            vm_id = flight.vm_id
            self.settling[vm_id] = now + self.settings.settle
            self.dirty_vms.add(vm_id)
            self.intents.pop(vm_id, None)
            after = proof.get(vm_id)
            ok = self._verified(done, after)
            metrics.observe_change(self.name, flight.action, "success" if ok else "error", done.seconds)
            if ok:
                self.retry.succeeded(vm_id)
                self._credit(vm_id, flight)
                continue
            message = (
                done.refusal.message
                if done.refusal
                else "vCenter reported success, but the VM did not change"
            )
            fault = done.refusal.fault if done.refusal else "NoEffect"
            log.warning("change of %s on %s failed: %s", vm_id, self.name, message)
            if fault == "Disconnected":
                continue  # not a refusal: the change is judged again once vCenter answers
            self.retry.failed(vm_id, fault, message, _facts_key(self.live.vms.get(vm_id)), now)

    def _verified(self, done: Finished, after: VMFacts | None) -> bool:
        """Only a VM vCenter shows changed counts: tasks that "succeed" without effect are a known failure."""
        plan = done.flight.plan
        if plan is None:
            return done.refusal is None
        wants = plan.change.action.value == "Add"
        return after is not None and after.has_vtpm == wants and done.refusal is None

    def _credit_recorded_intents(self) -> None:
        """Changes an earlier holder started and did not see end: one that took counts now, once."""
        assert self.live is not None
        for vm_id, intent in list(self.intents.items()):
            if vm_id in self.queue.flights:
                continue  # this holder's own change: _finish credits it
            vm = self.live.vms.get(vm_id)
            if vm is None:
                del self.intents[vm_id]
            elif vm.has_vtpm == (intent["action"] == "Add"):
                del self.intents[vm_id]
                for key in intent["owners"]:
                    view = self.views.get(key)
                    if view is not None:
                        view.remediated.add(vm_id)
                        view.changed = True

    def _credit(self, vm_id: str, flight: Flight) -> None:
        if flight.plan is None:
            return
        wants = DesiredVTPM.PRESENT if flight.plan.change.action.value == "Add" else DesiredVTPM.ABSENT
        for view in self.views.values():  # every Enforce policy that wanted it: they changed it together
            if (
                vm_id in view.claimant.selected
                and view.policy.vtpm is wants
                and view.policy.mode is Mode.ENFORCE
            ):
                view.remediated.add(vm_id)

    # --- publishing -----------------------------------------------------------------------------
    def _publish(self) -> None:
        now = time.time()
        built = [(entry, o) for key, entry in self.policies.items() if (o := self._outcome(key, entry, now))]
        documents = [(entry, outcome, self._document(entry, outcome, now)) for entry, outcome in built]
        self._record()  # before the status writes below: they may fail, the record must not
        for entry, outcome, document in documents:
            self._publish_policy(entry, outcome, document, now)
        self._publish_vcenter(now)
        if not self.reported.is_set() and self.policies.keys() <= self.last_reports.keys():
            self.reported.set()
        metrics.set_change_queue(self.name, len(self.queue.flights), len(self.queue.queued))
        metrics.set_vcenter(
            self.name,
            ready=self.problem is None and self.fleet_ready,
            vms=len(self.live.vms) if self.live is not None else 0,
            lease_held=True,
        )

    def _outcome(self, key: str, entry: PolicyEntry, now: float) -> SyncResult | PolicyProblem | None:
        """What to show for the policy now, or None when nothing is worth a new status."""
        written = self.written.get(key)
        due = written is None or now - written[1] >= self.settings.status_refresh
        problem = self._problem(key, entry)
        if problem is not None:
            earlier = self.last_reports.get(key)
            same = isinstance(earlier, PolicyProblem) and earlier.message == problem.message
            return problem if due or not same else None
        view = self.views.get(key)
        if view is None or not self.fleet_ready:
            return None  # not judged yet
        in_flight = bool(view.wanted) or any(vm in self.queue.flights for vm in view.outcomes)
        earlier = self.last_reports.get(key)
        flipped = not isinstance(earlier, SyncResult) or earlier.in_flight != in_flight
        if not (due or view.changed or flipped):
            return None  # nothing new: building a status costs a sort
        return view.report(in_flight)

    def _problem(self, key: str, entry: PolicyEntry) -> PolicyProblem | None:
        admission = self._admission(entry)
        if admission is not None:
            return admission
        if self.problem is not None:
            return self.problem
        selection = self.selections.get(key)
        return selection.problem if selection is not None else None

    def _document(
        self, entry: PolicyEntry, outcome: SyncResult | PolicyProblem, now: float
    ) -> dict[str, Any]:
        """The policy's next status, on top of the last one it was given; its totals go to the record."""
        view = self.views.get(entry.key)
        previous = view.document if view is not None else dict(entry.status)
        moment = datetime.fromtimestamp(self.current_at or now, UTC)
        document = {**previous, **build_status(previous, outcome, generation=entry.generation, now=moment)}
        if view is not None:
            view.document = document
        summary = document.get("summary") or {}
        self.totals[entry.key] = {t: int(summary.get(t, 0)) for t in _TOTALS}
        return document

    def _record(self) -> None:
        record = {
            "failures": self.retry.to_record(),
            "totals": dict(sorted(self.totals.items())),
            "intents": dict(sorted(self.intents.items())),
        }
        if record != self.recorded:
            self.recorded = record
            self.hooks.publisher.record(self.name, record)

    def _publish_policy(
        self, entry: PolicyEntry, outcome: SyncResult | PolicyProblem, document: dict[str, Any], now: float
    ) -> None:
        key = entry.key
        for notice in notices_for(self.last_reports.get(key), outcome, entry.policy.vtpm):
            self.hooks.publisher.policy_event(entry.namespace, entry.name, entry.uid, notice)
        self._policy_metrics(entry, outcome, document)
        self.last_reports[key] = outcome
        timeless = {k: v for k, v in document.items() if k != "lastSyncTime"}
        written = self.written.get(key)
        if written is None or written[0] != timeless or now - written[1] >= self.settings.status_refresh:
            self.written[key] = (timeless, now)
            self.echoes.setdefault(key, Echoes()).wrote(document.get("conditions"))
            self.hooks.publisher.policy_status(entry.namespace, entry.name, document)

    def _policy_metrics(
        self, entry: PolicyEntry, outcome: SyncResult | PolicyProblem, document: Mapping[str, Any]
    ) -> None:
        labels = (entry.namespace, entry.name, self.name, entry.policy.mode.value)
        summary = document.get("summary") or {}
        if isinstance(outcome, SyncResult):
            self.synced_at[entry.key] = self.current_at or time.time()
        metrics.publish_policy(
            entry.namespace,
            entry.name,
            vcenter=self.name,
            mode=entry.policy.mode.value,
            states={state: int(summary.get(field, 0)) for state, field in _SUMMARY_FIELDS.items()},
            conditions={c["type"]: c["status"] for c in document.get("conditions") or []},
            last_sync=self.synced_at.get(entry.key),
            blocked_reasons=outcome.blocked_reasons if isinstance(outcome, SyncResult) else None,
        )
        if isinstance(outcome, SyncResult) and outcome.drifted:
            metrics.count_drift(*labels, outcome.drifted)
        if isinstance(outcome, SyncResult) and outcome.remediated:
            metrics.count_remediations(*labels, outcome.remediated)

    def _publish_vcenter(self, now: float) -> None:
        document = vcenter_status(
            self.document,
            self.problem,
            self.about,
            key_providers=self.key_providers,
            policies=len(self.policies),
            vms=len(self.live.vms) if self.live is not None else 0,
            generation=self.generation,
            now=datetime.fromtimestamp(now, UTC),
        )
        timeless = {k: v for k, v in document.items() if k != "lastInventoryTime"}
        written = self.written.get("")
        self.document = document
        if written is None or written[0] != timeless or now - written[1] >= self.settings.status_refresh:
            self.written[""] = (timeless, now)
            self.hooks.publisher.vcenter_status(self.name, document)

    # --- inbox handlers (engine thread) ---------------------------------------------------------
    def _upsert(self, entry: PolicyEntry) -> None:
        earlier = self.policies.get(entry.key)
        self.policies[entry.key] = entry
        new_spec = earlier is None or earlier.generation != entry.generation or earlier.policy != entry.policy
        if new_spec:
            view = self.views.pop(entry.key, None)  # a new spec is judged afresh: no drift from the old one
            if view is not None:
                self.policies[entry.key] = replace(entry, status=view.document)
            self.next_tags = 0.0
            if earlier is not None and earlier.policy != entry.policy:
                self.retry.forget(self.selections.get(entry.key, _Selection()).selected)
        echoes = self.echoes.get(entry.key)
        if echoes is not None and echoes.replaced_by_another(entry.status.get("conditions")):
            self.written.pop(entry.key, None)  # written again at the next publish
        retried = bool(entry.retry) and (earlier is None or earlier.retry != entry.retry)
        if retried:
            self.retry.forget(None if entry.retry == "all" else {v.strip() for v in entry.retry.split(",")})
        # The echo of this engine's own status write changes neither: judging the whole fleet again
        # for each echo cost seconds per status write at 10k VMs and 20 policies (hack/bench.py).
        self.dirty_all |= new_spec or retried

    def _remove(self, key: str) -> None:
        entry = self.policies.pop(key, None)
        self.views.pop(key, None)
        self.selections.pop(key, None)
        self.last_reports.pop(key, None)
        self.written.pop(key, None)
        self.echoes.pop(key, None)
        if entry is not None:
            metrics.forget_policy(entry.namespace, entry.name)
        self.dirty_all = True

    def _reconfigure(self, config: VCenterConfig, generation: int) -> None:
        if (config, generation) == (self.config, self.generation):
            return  # the echo of this engine's own status write: nothing changed
        reconnect = (
            config.server,
            config.credentials_secret,
            config.ca_secret,
            config.insecure_skip_verify,
        ) != (
            self.config.server,
            self.config.credentials_secret,
            self.config.ca_secret,
            self.config.insecure_skip_verify,
        )
        self.config, self.generation = config, generation
        if reconnect:
            self._lost(PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, "reconnecting with the new spec"))
            self.login_at = 0.0  # the admin's fix is tried at once, not after the backoff
        self._mark_all_dirty()

    def _mark_all_dirty(self) -> None:
        self.dirty_all = True
        self.next_tags = 0.0


_TOTALS = ("remediatedTotal", "driftedTotal")


RECORD_WAIT = 5.0  # seconds a change waits for its intent to be written before it stays queued


class NotStarted(Exception):
    """A change did not start: its intent could not be written, or a stop came meanwhile."""


class _NotYet(Exception):
    """The lease is held, but the change record could not be read yet."""


def _with_totals(status: Mapping[str, Any], totals: Mapping[str, int] | None) -> dict[str, Any]:
    """The stored status, its running totals raised to what the record says (a status write may
    have been lost): a total counts every VM once, never twice, never forgetting one."""
    summary = dict(status.get("summary") or {})
    for total, value in (totals or {}).items():
        summary[total] = max(int(summary.get(total, 0)), int(value))
    return {**status, "summary": summary} if summary else dict(status)


_SUMMARY_FIELDS = {
    "Compliant": "compliant",
    "NonCompliant": "nonCompliant",
    "Pending": "pending",
    "Blocked": "blocked",
    "Failed": "failed",
}


def _shutdown_under_way(vm: VMFacts, timeout: float) -> bool:
    """Marked for a power-on and still on, within the shutdown's timeout: a guest shutdown asked
    by an earlier holder (a restart, a rollout) may still be running. Starting another, or taking
    the marker away, would power-cycle the VM twice or leave it off."""
    asked = vm.power_off_asked_at
    return (
        vm.power_on_owed
        and vm.power_state is PowerState.ON
        and asked is not None
        and time.time() < asked + timeout
    )


def _facts_key(vm: VMFacts | None) -> str:
    """The prerequisite facts of a VM, as text that the change record keeps: a change among them
    earns a failed VM a new try. Power state and the operator's own marker do not count."""
    if vm is None:
        return ""
    return json.dumps(
        [vm.firmware, vm.hardware_version, vm.has_snapshots, vm.guest_id, vm.host_id,
         sorted(vm.missing_privileges), vm.tools_running, vm.has_vtpm]
    )  # fmt: skip
