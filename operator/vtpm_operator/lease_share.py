"""Which unit leases a replica takes, renews and releases. Pure: no clock, no I/O.

Every replica runs the same decision each round, from what it has just listed: the unit leases
(one per VCenter object), the membership leases (one per replica), and the wall clock. With R live
members and V units, each replica aims at ``fair_share(V, R) = ceil(V / R)`` units:

- it renews every unit lease it holds, as long as the unit still exists;
- it takes free units (no lease, released, or expired) until it holds its share, trying first
  those nobody holds, last the expired leases of live members (likely being renewed right now);
- above its share, it hands the excess over, except the units the engine must keep
  (``can_release`` False: a change in flight).

A unit lease held unexpired by anyone else is never taken. A handed-over unit always has a live
member with room to take it: with k units kept by me, f free and o held by others outside the
members, the other R - 1 members hold V - k - f - o units, so their room is at least
(R - 1) * share - (V - k - f - o) >= (k - share) + f + o, since V <= R * share. Their room covers
my excess and every free unit at once; this is what makes the plan converge without flapping.

Replicas prefer units by rendezvous hashing (a stable per-member order), so two replicas taking
free units in the same round mostly reach for different ones and seldom collide on a write.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

UNIT_LEASE_PREFIX = "vtpm-vcenter-"
MEMBER_LEASE_PREFIX = "vtpm-member-"
MAX_NAME = 253  # a Lease's name is a DNS subdomain
_NOT_IN_NAME = re.compile(r"[^a-z0-9.-]+")


def unit_lease_name(unit: str) -> str:
    """The Lease object of a unit (a VCenter object name): ``vtpm-vcenter-<name>``."""
    return _object_name(UNIT_LEASE_PREFIX, unit)


def member_lease_name(identity: str) -> str:
    """The membership Lease of a replica; any identity maps to a valid, distinct name."""
    return _object_name(MEMBER_LEASE_PREFIX, identity)


def _object_name(prefix: str, key: str) -> str:
    """``prefix + key`` when that is a valid name, else a cleaned, shortened one with a hash of ``key``."""
    cleaned = _NOT_IN_NAME.sub("-", key.lower()).strip(".-")
    name = prefix + cleaned
    if cleaned == key and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11].rstrip('.-')}-{digest}"


@dataclass(frozen=True)
class LeaseSeen:
    """What a Lease says about its holder, as listed from the API server.

    ``renewed_at`` is the Lease's renewTime in Unix seconds, written by the holder with the holder's
    clock and judged here against the reader's clock. Clock skew between replicas shifts expiry by
    that skew: a holder stops acting on its own after renew_deadline (10 s), 5 s before the others
    may take over (15 s), so up to 5 s of skew cannot give two replicas the same unit at once.
    """

    holder: str | None
    renewed_at: float | None
    duration: float

    def held_at(self, now: float) -> bool:
        """Whether someone holds it at ``now``: a holder, a renew time, and not yet expired."""
        if not self.holder or self.renewed_at is None:
            return False
        return now < self.renewed_at + self.duration


@dataclass(frozen=True)
class SharePlan:
    """One round's writes: renew, then release, then take up to ``room`` of ``candidates``.

    The candidates come in the order to try them, and there may be more than ``room``: a write that
    loses to another replica moves on to the next, so replicas that reach for the same unit do not
    starve the units nobody reached for.
    """

    share: int
    renew: frozenset[str]
    release: frozenset[str]
    candidates: tuple[str, ...]
    room: int


def fair_share(units: int, members: int) -> int:
    """The most units one of ``members`` live replicas may hold once stable: ceil(V / R)."""
    return math.ceil(units / max(members, 1))


def live_members(me: str, memberships: Mapping[str, LeaseSeen], now: float) -> frozenset[str]:
    """The replicas whose membership lease is unexpired, always including ``me``."""
    alive = {lease.holder for lease in memberships.values() if lease.held_at(now) and lease.holder}
    return frozenset({*alive, me})


def preference(member: str, unit: str) -> int:
    """Rendezvous score: a stable, per-member pseudo-random rank of a unit (higher is preferred)."""
    digest = hashlib.sha256(f"{member}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def by_preference(member: str, units: Iterable[str]) -> list[str]:
    """``units`` from the most to the least preferred by ``member``."""
    return sorted(units, key=lambda unit: (-preference(member, unit), unit))


def plan_leases(
    me: str,
    units: Set[str],
    leases: Mapping[str, LeaseSeen],
    members: Set[str],
    now: float,
    can_release: Callable[[str], bool],
) -> SharePlan:
    """Decide this round's writes for replica ``me``.

    ``units``: the unit names that exist; ``leases``: unit name -> its lease, for the units that
    have one (also leases of units that no longer exist); ``members``: the live replicas (see
    ``live_members``); ``can_release(unit)``: False while the engine must keep the unit (a change
    in flight). A unit whose lease names ``me`` is mine even if it has expired: nobody took it,
    so renewing it is safe, and the optimistic write loses if someone takes it meanwhile.
    """
    live = frozenset({*members, me})
    share = fair_share(len(units), len(live))
    mine = {unit for unit, lease in leases.items() if lease.holder == me}
    gone = frozenset(unit for unit in mine - units if can_release(unit))
    kept = mine & units
    handed_over = _hand_over(me, kept, share, can_release)
    kept -= handed_over
    room = max(share - len(kept), 0)
    free = [unit for unit in units - mine if not _held(leases.get(unit), now)] if room else []
    return SharePlan(
        share=share,
        renew=frozenset(kept),
        release=gone | handed_over,
        candidates=tuple(sorted(free, key=lambda unit: _take_order(me, unit, leases.get(unit), live))),
        room=room,
    )


def _take_order(me: str, unit: str, lease: LeaseSeen | None, live: Set[str]) -> tuple[bool, int, str]:
    """Units nobody holds first; a live member's expired lease last (it is likely renewing it just now)."""
    contested = lease is not None and lease.holder in live
    return contested, -preference(me, unit), unit


def stale(leases: Mapping[str, LeaseSeen], keep: Set[str], now: float, grace: float) -> frozenset[str]:
    """The leases not in ``keep`` that nobody has held for ``grace`` seconds: safe to delete.

    For membership leases of replicas that were killed, and unit leases of VCenter objects that are
    gone; the caller deletes them only if unchanged since it listed them.
    """
    return frozenset(
        key
        for key, lease in leases.items()
        if key not in keep
        and not lease.held_at(now)
        and (lease.renewed_at or 0) + lease.duration + grace < now
    )


def _held(lease: LeaseSeen | None, now: float) -> bool:
    return lease is not None and lease.held_at(now)


def _hand_over(me: str, kept: Set[str], share: int, can_release: Callable[[str], bool]) -> frozenset[str]:
    """The units above ``me``'s share, least preferred first, that the engine lets go.

    The other live members always have room for them (see the module's docstring), so this needs
    no count of what the others hold.
    """
    excess = len(kept) - share
    if excess <= 0:
        return frozenset()
    least_preferred = list(reversed(by_preference(me, kept)))
    return frozenset([unit for unit in least_preferred if can_release(unit)][:excess])
