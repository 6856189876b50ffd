"""Leases that spread the VCenter objects over the operator's replicas (coordination.k8s.io/v1).

One Lease per unit (a VCenter object name), ``vtpm-vcenter-<name>``, and one membership Lease per
replica, ``vtpm-member-<identity>``, all in the operator's namespace. Every ``retry_period`` the
elector lists them (one call), renews its membership, then renews, releases and takes unit leases
as ``lease_share.plan_leases`` decides, so each of R live replicas holds at most ceil(V / R) of
the V units once stable.

Each write is a create, or a replace carrying the resourceVersion it was planned from: when two
replicas reach for one lease, the API server lets one write through and answers 409 to the
other. Nothing is ever overwritten blindly.

The fields are used as Kubernetes' own leader election uses them: holderIdentity,
leaseDurationSeconds, acquireTime and renewTime (MicroTime, RFC 3339 with microseconds), and
leaseTransitions, incremented when a lease changes hands. A lease has expired when renewTime +
leaseDurationSeconds is past on the reader's clock (see ``lease_share.LeaseSeen`` on skew).

Hand-written on the official client because the client's own ``leaderelection`` module elects a
single leader per lock, with no notion of members or a share of many leases.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator.lease_share import (
    LeaseSeen,
    live_members,
    member_lease_name,
    plan_leases,
    stale,
    unit_lease_name,
)

KIND_LABEL = "vtpm-operator.io/lease"  # "vcenter" or "member": what the elector lists
UNIT_ANNOTATION = "vtpm-operator.io/vcenter"  # the unit's own name (a label value is too short for it)
MANAGED_BY = {"app.kubernetes.io/managed-by": "vtpm-operator"}
RELEASED_DURATION = 1  # seconds; a released lease also looks expired to other readers
EXPIRY_MARGIN = 0.05  # seconds past another's expiry before trying to take its lease
STALE_AFTER = 60.0  # seconds nobody held a lease before it is deleted
LOST_RACE = {404, 409}  # the lease changed or vanished since it was listed: skip it this round

log = logging.getLogger(__name__)

UnitCallback = Callable[[str], None]


def default_identity() -> str:
    """Host name and process id: the pod name inside a cluster, unique per process outside one."""
    return f"{socket.gethostname()}-{os.getpid()}"


def micro_time(unix: float) -> str:
    """A MicroTime as the API server parses it: RFC 3339, UTC, always six fraction digits.

    (The client's own datetime serialisation drops the fraction when it is zero, which the API
    server then refuses.)
    """
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Lease:
    """One listed Lease: what the elector needs to rewrite it."""

    name: str
    resource_version: str
    seen: LeaseSeen
    acquire_time: str | None
    transitions: int


@dataclass
class _Listing:
    units: dict[str, _Lease] = field(default_factory=dict)  # unit name -> its lease
    members: dict[str, _Lease] = field(default_factory=dict)  # lease name -> membership lease


class _Unreachable(Exception):
    """The API server did not answer as it should: abandon this round."""


class LeaseElector:
    """Takes, renews and releases this replica's share of the unit leases.

    Thread model: ``run(stop)`` is the only loop and runs in a thread of its own; ``set_units``,
    ``holds`` and ``held`` may be called from any thread. ``on_acquired``, ``on_lost`` and
    ``can_release`` are called on the elector's thread (or on the thread calling
    ``release_all``); keep them quick, and do not call ``release_all`` from them.

    ``holds(name)`` is True only while the last successful write of that lease was *sent* less
    than ``renew_deadline`` ago (monotonic clock), so a replica that cannot reach the API server
    stops acting by itself, ``lease_duration - renew_deadline`` seconds before anyone may take over.
    ``on_lost`` may come up to one request timeout after ``holds`` turned False: check ``holds``
    right before each change. ``can_release(name)`` False keeps a unit this replica would hand
    over to another (a change in flight); it never keeps a lease that cannot be renewed. To start a
    change safely, the engine marks it in flight first and checks ``holds`` second (see _release).
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        lease_duration: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
        on_acquired: UnitCallback | None = None,
        on_lost: UnitCallback | None = None,
        can_release: Callable[[str], bool] | None = None,
        request_timeout: float | None = None,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = math.ceil(lease_duration)  # leaseDurationSeconds is whole seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = request_timeout if request_timeout is not None else renew_deadline / 4
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._can_release = can_release or (lambda _: True)
        self._api = _private_client(api)
        self._coordination = client.CoordinationV1Api(self._api)
        self._lock = threading.Lock()  # guards the state below, read by holds() from any thread
        self._units: frozenset[str] = frozenset()
        self._renewed: dict[str, float] = {}  # unit -> monotonic time its last good write was sent
        self._closing = False
        self._writing = threading.Lock()  # one round or release_all at a time
        self._leases: dict[str, _Lease] = {}  # unit -> its lease as last listed or written
        self._reported: set[str] = set()  # units announced by on_acquired and not yet by on_lost
        self._takeover_at = math.inf  # monotonic time the first lease held by another expires
        self._failing = False  # the last round was abandoned
        self.first_round = threading.Event()  # set once a round was tried: held() means something

    # --- what the engine calls

    def set_units(self, names: Iterable[str]) -> None:
        """The VCenter object names that exist now; leases of others are released."""
        with self._lock:
            self._units = frozenset(names)

    def holds(self, name: str) -> bool:
        with self._lock:
            return self._holds_locked(name, time.monotonic())

    def held(self) -> frozenset[str]:
        with self._lock:
            now = time.monotonic()
            return frozenset(unit for unit in self._renewed if self._holds_locked(unit, now))

    def run(self, stop: threading.Event) -> None:
        """Renew and rebalance every ``retry_period`` until ``stop`` is set or ``release_all`` ran."""
        due = time.monotonic()
        while not stop.is_set() and not self._closing:
            if time.monotonic() >= due:
                started = time.monotonic()
                self._round()
                self.first_round.set()
                # Also wake when another holder's lease runs out, rather than up to one retry
                # period later: a dead replica's units move about lease_duration after its last renew.
                due = min(started + self.retry_period, self._takeover_at)
            self._report()
            stop.wait(max(0.0, min(due, self._next_expiry()) - time.monotonic()))
        self._report()

    def release_all(self) -> None:
        """On a graceful stop: hand every held lease back at once and leave the membership.

        Another replica takes the units at its next round instead of after lease_duration. Stops
        ``run``; the elector cannot be used afterwards.
        """
        with self._lock:
            self._closing = True
        with self._writing:
            try:
                for unit in sorted(self._renewed):
                    self._release(unit, self._leases.get(unit), ask=False)
                self._leave()
            except _Unreachable as exc:
                log.warning("could not release leases (others take them when they expire): %s", exc)
            finally:
                with self._lock:
                    self._renewed.clear()
                self._report()
                self._api.close()

    # --- one round

    def _round(self) -> None:
        with self._writing:
            if self._closing:
                return
            try:
                self._round_locked()
            except _Unreachable as exc:
                # Once per outage, not every retry period.
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "lease round abandoned, %d unit(s) still held: %s",
                    len(self.held()),
                    exc,
                )
                self._failing = True
                return
            if self._failing:
                log.info("lease rounds succeed again")
                self._failing = False

    def _round_locked(self) -> None:
        listing = self._list()
        now = time.time()
        members = live_members(self.identity, {k: v.seen for k, v in listing.members.items()}, now)
        units = self._units
        leases = {unit: lease.seen for unit, lease in listing.units.items()}
        plan = plan_leases(self.identity, units, leases, members, now, self._can_release)
        self._forget_taken(listing)
        self._write_membership(listing.members.get(member_lease_name(self.identity)))
        for unit in sorted(plan.renew):
            self._renew(unit, listing.units[unit])
        for unit in sorted(plan.release):
            self._release(unit, listing.units[unit], ask=True)
        taken = 0
        for unit in plan.candidates:
            if taken == plan.room:
                break
            taken += self._take(unit, listing.units.get(unit))
        self._delete_stale(listing, units, now)
        self._takeover_at = _first_expiry(self.identity, leases, units, now)

    def _forget_taken(self, listing: _Listing) -> None:
        """Units this replica held whose lease now names someone else, or is gone: lost at once."""
        with self._lock:
            for unit in list(self._renewed):
                lease = listing.units.get(unit)
                if lease is None or lease.seen.holder != self.identity:
                    del self._renewed[unit]

    # --- writes

    def _write_membership(self, current: _Lease | None) -> None:
        name = member_lease_name(self.identity)
        now = time.time()
        spec = self._spec(self.identity, now, current.acquire_time if current else None, 0)
        self._put(name, {KIND_LABEL: "member"}, {}, spec, current)

    def _renew(self, unit: str, current: _Lease) -> None:
        sent = time.monotonic()
        spec = self._spec(self.identity, time.time(), current.acquire_time, current.transitions)
        written = self._put_unit(unit, spec, current)
        with self._lock:
            if written is None:
                self._renewed.pop(unit, None)
            else:
                self._renewed[unit] = sent

    def _take(self, unit: str, current: _Lease | None) -> int:
        """Try to take a free unit; 1 if this replica now holds it, else 0."""
        sent = time.monotonic()
        now = time.time()
        transitions = current.transitions + 1 if current is not None else 0
        if (
            self._put_unit(unit, self._spec(self.identity, now, micro_time(now), transitions), current)
            is None
        ):
            return 0
        with self._lock:
            self._renewed[unit] = sent
        log.info("took the lease of %s", unit)
        return 1

    def _release(self, unit: str, current: _Lease | None, *, ask: bool) -> None:
        """Hand a lease back. With ``ask``, only if ``can_release`` still agrees once holds() is False.

        Stop holding first, then ask: an engine that marks a change in flight and then checks
        holds() either is seen by that second question or sees holds() False, never neither.
        """
        with self._lock:
            sent = self._renewed.pop(unit, None)
        if ask and not self._can_release(unit):  # a change started after the plan was made
            if sent is not None:
                with self._lock:
                    self._renewed[unit] = sent
            return
        if current is None:
            return
        spec = self._spec(None, time.time(), current.acquire_time, current.transitions)
        spec["leaseDurationSeconds"] = RELEASED_DURATION
        if self._put_unit(unit, spec, current) is not None:
            log.info("released the lease of %s", unit)

    def _leave(self) -> None:
        """Delete this replica's membership lease, so the others count one member fewer at once."""
        try:
            self._coordination.delete_namespaced_lease(
                member_lease_name(self.identity), self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _Unreachable(f"delete membership: {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Unreachable(f"delete membership: {exc}") from exc

    def _spec(self, holder: str | None, now: float, acquired: str | None, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": acquired or micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    def _put_unit(self, unit: str, spec: dict[str, Any], current: _Lease | None) -> _Lease | None:
        name = unit_lease_name(unit)
        written = self._put(name, {KIND_LABEL: "vcenter"}, {UNIT_ANNOTATION: unit}, spec, current)
        if written is not None:
            self._leases[unit] = written
        return written

    def _put(
        self,
        name: str,
        labels: dict[str, str],
        annotations: dict[str, str],
        spec: dict[str, Any],
        current: _Lease | None,
    ) -> _Lease | None:
        """Create the lease, or replace the version listed; None if another write came first."""
        metadata: dict[str, Any] = {"name": name, "labels": {**MANAGED_BY, **labels}}
        if annotations:
            metadata["annotations"] = annotations
        if current is not None:
            metadata["resourceVersion"] = current.resource_version
        # A plain dict, not a V1Lease: the client would write a whole-second datetime without the
        # fraction a MicroTime must have; micro_time() writes the strings itself.
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }
        try:
            if current is None:
                answer = self._coordination.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.request_timeout
                )
            else:
                answer = self._coordination.replace_namespaced_lease(
                    name, self.namespace, body, _request_timeout=self.request_timeout
                )
        except ApiException as exc:
            if exc.status in LOST_RACE:
                return None
            raise _Unreachable(f"write {name}: {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Unreachable(f"write {name}: {exc}") from exc
        return _parse(answer)

    def _delete_stale(self, listing: _Listing, units: frozenset[str], now: float) -> None:
        """Delete leases nobody has held for a while, only if unchanged since they were listed."""
        grace = max(STALE_AFTER, 4.0 * self.lease_duration)
        members = {name: lease.seen for name, lease in listing.members.items()}
        leases = {unit: lease.seen for unit, lease in listing.units.items()}
        doomed = [listing.members[n] for n in stale(members, set(), now, grace)]
        doomed += [listing.units[u] for u in stale(leases, units, now, grace)]
        for lease in doomed:
            try:
                self._coordination.delete_namespaced_lease(
                    lease.name,
                    self.namespace,
                    body=client.V1DeleteOptions(
                        preconditions=client.V1Preconditions(resource_version=lease.resource_version)
                    ),
                    _request_timeout=self.request_timeout,
                )
                log.info("deleted the stale lease %s", lease.name)
            except ApiException as exc:
                if exc.status not in LOST_RACE:
                    raise _Unreachable(f"delete {lease.name}: {exc.status} {exc.reason}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Unreachable(f"delete {lease.name}: {exc}") from exc

    # --- reading

    def _list(self) -> _Listing:
        try:
            answer = self._coordination.list_namespaced_lease(
                self.namespace, label_selector=KIND_LABEL, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            raise _Unreachable(f"list leases: {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Unreachable(f"list leases: {exc}") from exc
        listing = _Listing()
        for item in answer.items:
            lease = _parse(item)
            labels = item.metadata.labels or {}  # type: ignore[union-attr]  # the server always sends it
            unit = (item.metadata.annotations or {}).get(UNIT_ANNOTATION)  # type: ignore[union-attr]
            if labels.get(KIND_LABEL) == "member":
                listing.members[lease.name] = lease
            elif labels.get(KIND_LABEL) == "vcenter" and unit and unit_lease_name(unit) == lease.name:
                listing.units[unit] = lease
        self._leases = dict(listing.units)
        return listing

    # --- local state

    def _holds_locked(self, unit: str, now: float) -> bool:
        sent = self._renewed.get(unit)
        return not self._closing and sent is not None and now - sent < self.renew_deadline

    def _next_expiry(self) -> float:
        """When the next held unit runs past its renew deadline, so on_lost is not late.

        Deadlines already past do not count: they were reported, and would make the loop spin.
        """
        now = time.monotonic()
        with self._lock:
            deadlines = (sent + self.renew_deadline for sent in self._renewed.values())
            return min((deadline for deadline in deadlines if deadline > now), default=math.inf)

    def _report(self) -> None:
        """Call on_acquired / on_lost for what changed since the last report."""
        held = self.held()
        with self._lock:
            gained, lost = held - self._reported, self._reported - held
            self._reported = set(held)
        for unit in sorted(lost):
            _call(self._on_lost, unit, "on_lost")
        for unit in sorted(gained):
            _call(self._on_acquired, unit, "on_acquired")


def _first_expiry(me: str, leases: Mapping[str, LeaseSeen], units: frozenset[str], now: float) -> float:
    """The monotonic time, shortly after it, when the first unit lease another replica holds expires."""
    expiries = [
        lease.renewed_at + lease.duration
        for unit, lease in leases.items()
        if unit in units and lease.holder != me and lease.held_at(now) and lease.renewed_at is not None
    ]
    if not expiries:
        return math.inf
    return time.monotonic() + min(expiries) - now + EXPIRY_MARGIN


def _call(callback: UnitCallback | None, unit: str, what: str) -> None:
    if callback is None:
        return
    try:
        callback(unit)
    except Exception:  # a failing callback must not stop the renewals of every other unit
        log.exception("%s(%s) failed", what, unit)


def _parse(item: Any) -> _Lease:
    spec = item.spec
    renewed = spec.renew_time.timestamp() if spec.renew_time is not None else None
    acquired = micro_time(spec.acquire_time.timestamp()) if spec.acquire_time is not None else None
    return _Lease(
        name=item.metadata.name,
        resource_version=item.metadata.resource_version,
        seen=LeaseSeen(
            holder=spec.holder_identity, renewed_at=renewed, duration=spec.lease_duration_seconds or 0
        ),
        acquire_time=acquired,
        transitions=spec.lease_transitions or 0,
    )


def _private_client(api: client.ApiClient) -> client.ApiClient:
    """A client of its own for the elector, with the caller's settings but no transparent retries.

    Its own connection pool keeps renewals from queueing behind the operator's other calls, and
    without urllib3's retries a request that times out fails after one ``request_timeout``.
    """
    configuration = copy.deepcopy(api.configuration)
    configuration.retries = False
    private = client.ApiClient(configuration=configuration)
    for header, value in api.default_headers.items():  # e.g. Impersonate-User, User-Agent
        private.set_default_header(header, value)
    return private
