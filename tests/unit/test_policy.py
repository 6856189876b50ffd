"""parse_policy: a VTPMPolicy spec becomes a Policy, or InvalidSpec naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.api import parse_policy
from vtpm_operator.api.base import duration_seconds
from vtpm_operator.policy import DesiredVTPM, Mode, Policy, PowerAction, PowerPolicy, TagRef
from vtpm_operator.problems import PolicyProblem, ProblemReason

from .vtpm_factories import MINIMAL_POLICY_SPEC

TAG = {"category": "security", "name": "vtpm-required"}


def spec(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(MINIMAL_POLICY_SPEC)
    result.update(changes)
    return result


def invalid(spec_: Any, field: str) -> PolicyProblem:
    """Asserts InvalidSpec whose message starts with the field's path."""
    with pytest.raises(PolicyProblem) as caught:
        parse_policy(spec_)
    assert caught.value.reason is ProblemReason.INVALID_SPEC
    assert caught.value.message.startswith(f"{field}: "), caught.value.message
    return caught.value


def test_defaults() -> None:
    assert parse_policy(MINIMAL_POLICY_SPEC) == Policy(
        vcenter="vc-prod",
        tags=(TagRef("security", "vtpm-required"),),
        exclude_tags=(),
        vtpm=DesiredVTPM.PRESENT,
        allow_removal=False,
        mode=Mode.ENFORCE,
        key_provider=None,
        power=PowerPolicy(
            action=PowerAction.SKIP, shutdown_timeout=600.0, force_power_off=False, restore_power_state=True
        ),
        max_concurrent=4,
        resync_period=300.0,
    )


def test_full_spec() -> None:
    policy = parse_policy(
        {
            "vcenterRef": {"name": "vc-lab"},
            "selector": {
                "tags": [{"category": "b", "name": "2"}, {"category": "a", "name": "1"}],
                "excludeTags": [{"category": "security", "name": "exempt"}],
            },
            "vtpm": "Absent",
            "allowRemoval": True,
            "mode": "Audit",
            "keyProvider": "kp-1",
            "powerPolicy": {
                "action": "Shutdown",
                "shutdownTimeout": "1h30m",
                "forcePowerOff": True,
                "restorePowerState": False,
            },
            "maxConcurrent": 64,
            "resyncPeriod": "24h",
        }
    )
    assert policy.vcenter == "vc-lab"
    assert policy.tags == (TagRef("a", "1"), TagRef("b", "2"))  # sorted
    assert policy.exclude_tags == (TagRef("security", "exempt"),)
    assert (policy.vtpm, policy.allow_removal, policy.mode) == (DesiredVTPM.ABSENT, True, Mode.AUDIT)
    assert policy.key_provider == "kp-1"
    assert policy.power == PowerPolicy(PowerAction.SHUTDOWN, 5400.0, True, False)
    assert (policy.max_concurrent, policy.resync_period) == (64, 86400.0)


@pytest.mark.parametrize("value", ["", None])
def test_empty_key_provider_means_the_default_one(value: Any) -> None:
    assert parse_policy(spec(keyProvider=value)).key_provider is None


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1.5h", 5400), ("1h30m", 5400), ("24h", 86400)])
def test_duration_bounds_are_inclusive(text: str, seconds: float) -> None:
    assert parse_policy(spec(resyncPeriod=text)).resync_period == seconds
    assert parse_policy(spec(powerPolicy={"shutdownTimeout": text})).power.shutdown_timeout == seconds


@pytest.mark.parametrize("text", ["9s", "9.9s", "24h0m1s", "1000h", "0s"])
def test_durations_outside_10s_to_24h_are_refused(text: str) -> None:
    invalid(spec(resyncPeriod=text), "spec.resyncPeriod")
    invalid(spec(powerPolicy={"shutdownTimeout": text}), "spec.powerPolicy.shutdownTimeout")


@pytest.mark.parametrize("text", ["soon", "5", "", "5 m", "-5m", "100ms", "1e3s", 300])
def test_what_is_no_duration_is_refused(text: Any) -> None:
    invalid(spec(resyncPeriod=text), "spec.resyncPeriod")


parts = st.lists(st.tuples(st.integers(0, 500), st.sampled_from("hms")), min_size=1, max_size=4)


@given(parts)
def test_a_duration_is_the_sum_of_its_parts(items: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in items)
    assert duration_seconds(text) == sum(n * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in items)


def test_the_inline_vcenter_of_old_objects_says_where_the_connection_moved() -> None:
    old = {"vcenter": {"server": "vc", "credentialsSecret": "c"}, "selector": {"tags": [TAG]}}
    problem = invalid(old, "spec.vcenter")
    assert "cluster-scoped VCenter" in problem.message
    assert "spec.vcenterRef" in problem.message
    invalid(spec(vcenter={"server": "vc"}), "spec.vcenter")  # both: still refused


def test_a_tag_in_both_tags_and_exclude_tags_is_refused() -> None:
    problem = invalid(spec(selector={"tags": [TAG], "excludeTags": [TAG]}), "spec.selector.excludeTags")
    assert "security/vtpm-required" in problem.message


@pytest.mark.parametrize("field", ["tags", "excludeTags"])
def test_duplicate_tags_are_refused(field: str) -> None:
    other = {"category": "security", "name": "other"}
    selector = {"tags": [other], field: [TAG, dict(TAG)]} if field == "excludeTags" else {field: [TAG, TAG]}
    invalid(spec(selector=selector), f"spec.selector.{field}")


@pytest.mark.parametrize(("n", "ok"), [(0, False), (1, True), (64, True), (65, False), (True, False)])
def test_max_concurrent_bounds(n: Any, ok: bool) -> None:
    if ok:
        assert parse_policy(spec(maxConcurrent=n)).max_concurrent == n
    else:
        invalid(spec(maxConcurrent=n), "spec.maxConcurrent")


def test_tag_counts_and_lengths_are_bounded() -> None:
    many = [{"category": "c", "name": f"t{i}"} for i in range(33)]
    invalid(spec(selector={"tags": many}), "spec.selector.tags")
    invalid(spec(selector={"tags": [{"category": "c" * 257, "name": "t"}]}), "spec.selector.tags[0].category")
    invalid(spec(keyProvider="k" * 256), "spec.keyProvider")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"selector": {}}, "spec.selector.tags"),
        ({"selector": {"tags": []}}, "spec.selector.tags"),
        ({"selector": {"tags": None}}, "spec.selector.tags"),
        ({"selector": {"tags": [{"category": "security"}]}}, "spec.selector.tags[0].name"),
        ({"selector": {"tags": [{"category": "", "name": "x"}]}}, "spec.selector.tags[0].category"),
        ({"selector": {"tags": [{"category": "a", "name": 5}]}}, "spec.selector.tags[0].name"),
        ({"selector": None}, "spec.selector"),
        ({"selector": "security/vtpm-required"}, "spec.selector"),
        ({"vcenterRef": None}, "spec.vcenterRef"),
        ({"vcenterRef": {"name": "VC_Prod"}}, "spec.vcenterRef.name"),
        ({"vtpm": "present"}, "spec.vtpm"),
        ({"mode": "DryRun"}, "spec.mode"),
        ({"powerPolicy": {"action": "Reboot"}}, "spec.powerPolicy.action"),
        ({"powerPolicy": "Shutdown"}, "spec.powerPolicy"),
        ({"maxConcurrent": "4"}, "spec.maxConcurrent"),
        ({"maxConcurrent": 4.0}, "spec.maxConcurrent"),
        ({"resyncPeriods": "5m"}, "spec.resyncPeriods"),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], field: str) -> None:
    invalid(spec(**changes), field)


def test_a_missing_vcenter_ref_is_named() -> None:
    invalid({"selector": {"tags": [TAG]}}, "spec.vcenterRef")


@pytest.mark.parametrize(
    ("field", "section"),
    [("allowRemoval", None), ("forcePowerOff", "powerPolicy"), ("restorePowerState", "powerPolicy")],
)
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_only_real_booleans_are_booleans(field: str, section: str | None, value: Any) -> None:
    """bool("false") is True: a quoted "false" must never turn on removal or a hard power-off."""
    changed = spec(**({section: {field: value}} if section else {field: value}))
    path = f"spec.{section}.{field}" if section else f"spec.{field}"
    invalid(changed, path)


def test_several_errors_are_all_named() -> None:
    problem = invalid(spec(mode="X", maxConcurrent=0), "spec.mode")
    assert "spec.maxConcurrent: " in problem.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
SPEC_KEYS = [
    "vcenter",
    "vcenterRef",
    "selector",
    "vtpm",
    "allowRemoval",
    "mode",
    "keyProvider",
    "powerPolicy",
    "maxConcurrent",
    "resyncPeriod",
]


@given(key=st.sampled_from(SPEC_KEYS), value=json_values)
def test_any_spec_gives_a_policy_or_invalid_spec(key: str, value: Any) -> None:
    """Whatever a user writes into one field, the result is a Policy or InvalidSpec naming that field."""
    try:
        result = parse_policy(spec(**{key: value}))
    except PolicyProblem as problem:
        assert problem.reason is ProblemReason.INVALID_SPEC
        assert problem.message.startswith(f"spec.{key}"), problem.message
    else:
        assert isinstance(result, Policy)
        assert 1 <= result.max_concurrent <= 64
        assert 10 <= result.resync_period <= 86400
        assert result.tags
