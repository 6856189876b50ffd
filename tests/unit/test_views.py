"""Policies as views: judgements shared between views change nothing any view shows."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator import claims
from vtpm_operator.claims import Claimant
from vtpm_operator.engine.views import Fleet, PolicyView
from vtpm_operator.facts import KeyProvider, VMFacts
from vtpm_operator.planning import VMOutcome
from vtpm_operator.policy import Policy, TagRef
from vtpm_operator.retry import Hold

from .vtpm_factories import FLEET, HOSTS, fleets, key_provider_sets, make_policy, make_vm, policies

NAMESPACE = "team"


def _claimant(index: int, policy: Policy, selected: frozenset[str]) -> Claimant:
    tagged = dataclasses.replace(policy, tags=(TagRef("security", f"slice-{index}"),))
    return Claimant(f"{NAMESPACE}/p{index}", NAMESPACE, f"p{index}", tagged, policy.allow_removal, selected)


def _fleet(
    vms: tuple[VMFacts, ...],
    providers: tuple[KeyProvider, ...],
    claimants: list[Claimant],
    holds: dict[str, Hold],
) -> Fleet:
    return Fleet({vm.id: vm for vm in vms}, HOSTS, providers, claims.judge(claimants), {}, {}, {}, holds)


def _outcomes(claimants: list[Claimant], fleet_of: Any) -> dict[str, dict[str, VMOutcome]]:
    shown = {}
    for claimant in claimants:
        view = PolicyView(claimant, None if claimant.removal_allowed else "removal is not allowed")
        view.refresh(fleet_of())
        shown[claimant.key] = dict(view.outcomes)
    return shown


@FLEET
@given(
    vms=fleets(max_size=8),
    providers=key_provider_sets,
    wanted=st.lists(policies, min_size=1, max_size=4),
    picks=st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=4, max_size=4),
    held=st.sets(st.integers(0, 7)),
)
def test_views_sharing_one_fleet_show_what_each_shows_alone(
    vms: tuple[VMFacts, ...],
    providers: tuple[KeyProvider, ...],
    wanted: list[Policy],
    picks: list[list[bool]],
    held: set[int],
) -> None:
    claimants = [
        _claimant(i, policy, frozenset(vm.id for vm, pick in zip(vms, picks[i], strict=False) if pick))
        for i, policy in enumerate(wanted)
    ]
    holds = {f"vm-{i}": Hold("refused 3 times", exhausted=True) for i in held}
    shared = _fleet(vms, providers, claimants, holds)
    assert _outcomes(claimants, lambda: shared) == _outcomes(
        claimants, lambda: _fleet(vms, providers, claimants, holds)
    )


def test_views_that_judge_alike_share_one_outcome_object() -> None:
    """Twenty policies over the same VMs hold one outcome per VM between them, not twenty."""
    # blocked twice over (BIOS, a snapshot): each outcome carries a message of its own
    vms = tuple(
        make_vm(id=f"vm-{i}", name=f"app-{i}", firmware="bios", has_snapshots=True) for i in range(100)
    )
    policy = make_policy()
    claimants = [_claimant(i, policy, frozenset(vm.id for vm in vms)) for i in range(20)]
    fleet = _fleet(vms, (), claimants, {})
    views = [PolicyView(c, None) for c in claimants]
    for view in views:
        view.refresh(fleet)
    assert len({id(o) for view in views for o in view.outcomes.values()}) == 100
    assert {o.state.value for o in views[0].outcomes.values()} == {"Blocked"}
