"""Which unit leases a replica takes, renews and releases (vtpm_operator.lease_share)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from vtpm_operator.lease_share import (
    MAX_NAME,
    LeaseSeen,
    SharePlan,
    fair_share,
    live_members,
    member_lease_name,
    plan_leases,
    stale,
    unit_lease_name,
)

NOW = 1_000_000.0
DURATION = 15.0
UNITS = [f"vc-{i}" for i in range(8)]
MEMBERS = ["a", "b", "c", "d"]
OUTSIDERS = ["ghost", ""]  # a replica that died (or never had a membership lease), and a released lease


def always(_: str) -> bool:
    return True


def fresh(holder: str | None) -> LeaseSeen:
    return LeaseSeen(holder=holder, renewed_at=NOW - 1, duration=DURATION)


def expired(holder: str | None) -> LeaseSeen:
    return LeaseSeen(holder=holder, renewed_at=NOW - DURATION - 0.001, duration=DURATION)


lease_seen = st.builds(
    LeaseSeen,
    holder=st.sampled_from([*MEMBERS, *OUTSIDERS]) | st.none(),
    renewed_at=st.none() | st.floats(NOW - 40, NOW + 5),
    duration=st.sampled_from([1.0, DURATION]),
)


Situation = tuple[str, frozenset[str], dict[str, LeaseSeen], frozenset[str]]


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    """(me, units that exist, leases seen, live members), leases possibly of units already gone."""
    units = frozenset(draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=8)))
    leased = draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=8))
    leases = {unit: draw(lease_seen) for unit in leased}
    members = frozenset(draw(st.lists(st.sampled_from(MEMBERS), min_size=1, unique=True)))
    me = draw(st.sampled_from(sorted(members)))
    return me, units, leases, members


def plan_for(situation: Situation, pinned: frozenset[str]) -> SharePlan:
    me, units, leases, members = situation
    return plan_leases(me, units, leases, members, NOW, lambda unit: unit not in pinned)


@settings(deadline=None)
@given(situations(), st.frozensets(st.sampled_from(UNITS)))
def test_a_plan_never_takes_a_lease_someone_else_holds_unexpired(
    situation: Situation, pinned: frozenset[str]
) -> None:
    me, _, leases, _ = situation
    plan = plan_for(situation, pinned)
    for unit in plan.candidates:
        lease = leases.get(unit)
        assert lease is None or lease.holder == me or not lease.held_at(NOW), (unit, lease)


@settings(deadline=None)
@given(situations(), st.frozensets(st.sampled_from(UNITS)))
def test_a_plan_only_renews_and_releases_its_own_and_never_a_pinned_one(
    situation: Situation, pinned: frozenset[str]
) -> None:
    me, units, leases, _ = situation
    plan = plan_for(situation, pinned)
    mine = {unit for unit, lease in leases.items() if lease.holder == me}
    assert plan.renew <= mine & units
    assert plan.release <= mine
    assert not plan.release & pinned
    assert not plan.renew & plan.release
    assert set(plan.candidates) <= units - mine
    assert len(set(plan.candidates)) == len(plan.candidates)


@settings(deadline=None)
@given(situations(), st.frozensets(st.sampled_from(UNITS)))
def test_a_plan_never_grows_a_replica_beyond_its_share(situation: Situation, pinned: frozenset[str]) -> None:
    _, units, _, members = situation
    plan = plan_for(situation, pinned)
    share = fair_share(len(units), len(members))
    assert plan.share == share
    assert len(plan.renew) + plan.room <= max(share, len(plan.renew))


@settings(deadline=None)
@given(situations())
def test_a_replica_over_its_share_hands_over_only_what_other_members_can_take(situation: Situation) -> None:
    me, units, leases, members = situation
    plan = plan_for(situation, frozenset())
    handed_over = plan.release & units
    if not handed_over:
        return
    holders = Counter(lease.holder for u, lease in leases.items() if u in units and lease.held_at(NOW))
    room = sum(max(plan.share - holders[m], 0) for m in members - {me})
    free = [
        u
        for u in units
        if not (u in leases and leases[u].held_at(NOW)) and leases.get(u, fresh(None)).holder != me
    ]
    assert len(handed_over) <= room - len(free)
    assert len(plan.renew) >= plan.share


def test_a_replica_over_its_share_hands_over_the_excess_but_keeps_pinned_units() -> None:
    leases = {unit: fresh("a") for unit in UNITS[:4]}
    members = frozenset({"a", "b"})
    plan = plan_leases("a", frozenset(leases), leases, members, NOW, always)
    assert (len(plan.release), len(plan.renew), plan.room) == (2, 2, 0)
    pinned = set(UNITS[:3])
    plan = plan_leases("a", frozenset(leases), leases, members, NOW, lambda unit: unit not in pinned)
    assert plan.release == {UNITS[3]}
    assert plan.renew == pinned


def test_units_that_no_longer_exist_are_released_unless_pinned() -> None:
    leases = {"vc-0": fresh("a"), "vc-1": fresh("a")}
    plan = plan_leases("a", frozenset({"vc-0"}), leases, frozenset({"a"}), NOW, always)
    assert plan == SharePlan(
        share=1, renew=frozenset({"vc-0"}), release=frozenset({"vc-1"}), candidates=(), room=0
    )
    plan = plan_leases("a", frozenset(), leases, frozenset({"a"}), NOW, lambda unit: unit != "vc-1")
    assert plan.release == frozenset({"vc-0"})


def test_an_expired_lease_of_mine_is_renewed_and_one_of_another_is_taken() -> None:
    leases = {"vc-0": expired("a"), "vc-1": expired("ghost"), "vc-2": fresh("ghost")}
    plan = plan_leases("a", frozenset(leases), leases, frozenset({"a"}), NOW, always)
    assert plan.renew == frozenset({"vc-0"})
    assert (plan.candidates, plan.room) == (("vc-1",), 2)  # vc-2 waits for its expiry


def test_live_members_are_the_unexpired_memberships_and_me() -> None:
    memberships = {"m-a": fresh("a"), "m-b": expired("b"), "m-c": fresh(None), "m-d": fresh("d")}
    assert live_members("me", memberships, NOW) == frozenset({"me", "a", "d"})


def test_leases_nobody_held_for_the_grace_period_are_stale_unless_kept() -> None:
    leases = {
        "old": LeaseSeen("ghost", NOW - 100, DURATION),
        "released-long-ago": LeaseSeen(None, NOW - 62, 1),
        "released-just-now": LeaseSeen(None, NOW - 1, 1),
        "never-renewed": LeaseSeen(None, None, 1),
        "held": fresh("a"),
        "kept": LeaseSeen("ghost", NOW - 100, DURATION),
    }
    assert stale(leases, {"kept"}, NOW, grace=60) == {"old", "released-long-ago", "never-renewed"}


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


@settings(deadline=None)
@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_any_identity_or_unit_gets_a_valid_lease_name_of_its_own(first: str, second: str) -> None:
    for name in (member_lease_name(first), unit_lease_name(first)):
        assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= MAX_NAME, name
    if first != second:
        assert member_lease_name(first) != member_lease_name(second)
    assert unit_lease_name("vc-1") == "vtpm-vcenter-vc-1"
    assert member_lease_name("operator-7d9f-x2") == "vtpm-member-operator-7d9f-x2"


# --- Many replicas over many rounds: each round every member plans from the same listing, then
# they write in some order, each write succeeding only if the lease is unchanged since the listing
# (the resourceVersion check of the API server).


@dataclass
class Cluster:
    leases: dict[str, tuple[int, LeaseSeen]]  # unit -> (version, lease)

    def snapshot(self) -> dict[str, LeaseSeen]:
        return {unit: lease for unit, (_, lease) in self.leases.items()}

    def write(self, unit: str, seen_version: int, lease: LeaseSeen) -> bool:
        version = self.leases.get(unit, (0, None))[0]
        if version != seen_version:
            return False
        self.leases[unit] = (version + 1, lease)
        return True


def one_round(cluster: Cluster, units: frozenset[str], order: list[str]) -> bool:
    """Every member in ``order`` plans from one listing, then writes; returns whether anything changed."""
    listing = dict(cluster.leases)
    seen = {unit: lease for unit, (_, lease) in listing.items()}
    plans = {m: plan_leases(m, units, seen, frozenset(order), NOW, always) for m in order}
    changed = False
    for member in order:
        plan = plans[member]
        for unit in plan.renew:
            cluster.write(unit, listing[unit][0], fresh(member))
        for unit in plan.release:
            changed |= cluster.write(unit, listing[unit][0], fresh(None))
        taken = 0
        for unit in plan.candidates:
            if taken == plan.room:
                break
            if cluster.write(unit, listing.get(unit, (0, None))[0], fresh(member)):
                taken += 1
                changed = True
    return changed


Case = tuple[Cluster, frozenset[str], list[str], list[list[int]]]


@st.composite
def clusters(draw: st.DrawFn) -> Case:
    units = frozenset(draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=8)))
    members = draw(st.lists(st.sampled_from(MEMBERS), min_size=1, unique=True))
    holders = st.sampled_from([*members, "ghost", ""])
    start = {u: (1, draw(st.builds(expired, holders) | st.builds(fresh, holders))) for u in units}
    orders = draw(st.lists(st.permutations(range(len(members))), min_size=1, max_size=5))
    return Cluster(start), units, members, orders


@settings(max_examples=300, deadline=None)
@given(clusters())
# Two members reaching for the one unit a third is renewing must still find the unit nobody holds.
@example(
    (
        Cluster({"vc-2": (1, expired("ghost")), "vc-0": (1, expired("c"))}),
        frozenset({"vc-0", "vc-2"}),
        ["a", "b", "c"],
        [[2, 1, 0]],
    )
)
def test_replicas_converge_to_every_unit_held_within_the_share_and_then_stay_still(case: Case) -> None:
    cluster, units, members, orders = case
    ghost_held = {
        u for u, (_, lease) in cluster.leases.items() if lease.holder == "ghost" and lease.held_at(NOW)
    }
    rounds = 0
    while True:
        order = [members[i] for i in orders[rounds % len(orders)]]
        if not one_round(cluster, units, order):
            break
        rounds += 1
        assert rounds <= 2 * len(units) + 4, cluster.leases
    held = cluster.snapshot()
    share = fair_share(len(units), len(members))
    assert all(held[u].held_at(NOW) for u in units)
    assert {u for u in units if held[u].holder == "ghost"} == ghost_held  # the dead one's live leases wait
    counts = Counter(held[u].holder for u in units if held[u].holder in members)
    assert max(counts.values(), default=0) <= share, counts
    for permutation in orders:  # stable: no member wants to change anything any more, in any order
        assert not one_round(cluster, units, [members[i] for i in permutation])
