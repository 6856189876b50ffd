"""parse_policy and parse_duration."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.policy import (
    DesiredVTPM,
    Mode,
    Policy,
    PowerAction,
    TagRef,
    parse_duration,
    parse_policy,
)
from vtpm_operator.problems import PolicyProblem, ProblemReason

MINIMAL: dict[str, Any] = {
    "vcenter": {"server": "vc.example.com", "credentialsSecret": "vcenter-creds"},
    "selector": {"tags": [{"category": "security", "name": "vtpm-required"}]},
}


def spec(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(MINIMAL)
    result.update(changes)
    return result


def invalid(spec_: Any) -> PolicyProblem:
    with pytest.raises(PolicyProblem) as caught:
        parse_policy(spec_)
    assert caught.value.reason is ProblemReason.INVALID_SPEC
    assert not caught.value.transient
    assert caught.value.message.startswith("invalid spec")
    return caught.value


def test_defaults() -> None:
    policy = parse_policy(MINIMAL)
    assert policy.vcenter.server == "vc.example.com"
    assert policy.vcenter.credentials_secret == "vcenter-creds"
    assert policy.vcenter.ca_secret is None
    assert policy.vcenter.insecure_skip_verify is False
    assert policy.tags == (TagRef("security", "vtpm-required"),)
    assert policy.exclude_tags == ()
    assert policy.vtpm is DesiredVTPM.PRESENT
    assert policy.allow_removal is False
    assert policy.mode is Mode.ENFORCE
    assert policy.key_provider is None
    assert policy.power.action is PowerAction.SKIP
    assert policy.power.shutdown_timeout == 600.0
    assert policy.power.force_power_off is False
    assert policy.power.restore_power_state is True
    assert policy.max_concurrent == 4
    assert policy.resync_period == 300.0


def test_full_spec() -> None:
    policy = parse_policy(
        spec(
            vcenter={
                "server": "vc:8443",
                "credentialsSecret": "c",
                "caSecret": "ca",
                "insecureSkipVerify": True,
            },
            selector={
                "tags": [{"category": "b", "name": "x"}, {"category": "a", "name": "y"}],
                "excludeTags": [{"category": "security", "name": "exempt"}],
            },
            vtpm="Absent",
            allowRemoval=True,
            mode="Audit",
            keyProvider="kp-1",
            powerPolicy={
                "action": "Shutdown",
                "shutdownTimeout": "1h30m",
                "forcePowerOff": True,
                "restorePowerState": False,
            },
            maxConcurrent=64,
            resyncPeriod="45s",
        )
    )
    assert policy.vcenter.ca_secret == "ca"
    assert policy.vcenter.insecure_skip_verify is True
    assert policy.tags == (TagRef("a", "y"), TagRef("b", "x"))
    assert policy.exclude_tags == (TagRef("security", "exempt"),)
    assert policy.vtpm is DesiredVTPM.ABSENT
    assert policy.allow_removal is True
    assert policy.mode is Mode.AUDIT
    assert policy.key_provider == "kp-1"
    assert policy.power.action is PowerAction.SHUTDOWN
    assert policy.power.shutdown_timeout == 5400.0
    assert policy.power.force_power_off is True
    assert policy.power.restore_power_state is False
    assert policy.max_concurrent == 64
    assert policy.resync_period == 45.0


def test_empty_strings_mean_unset() -> None:
    policy = parse_policy(spec(keyProvider="", vcenter={**MINIMAL["vcenter"], "caSecret": ""}))
    assert policy.key_provider is None
    assert policy.vcenter.ca_secret is None


def test_duplicate_tags_are_merged() -> None:
    tag = {"category": "security", "name": "vtpm-required"}
    assert len(parse_policy(spec(selector={"tags": [tag, dict(tag)]})).tags) == 1


@given(st.integers(-1000, 1000))
def test_max_concurrent_bounds(n: int) -> None:
    if 1 <= n <= 64:
        assert parse_policy(spec(maxConcurrent=n)).max_concurrent == n
    else:
        assert "maxConcurrent" in invalid(spec(maxConcurrent=n)).message


@pytest.mark.parametrize(
    "text,seconds",
    [("10m", 600.0), ("1h30m", 5400.0), ("45s", 45.0), ("2h", 7200.0), ("1.5h", 5400.0), ("1m30s", 90.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "-5m", "10 m", "1d", "10ms", " 10m", "10m ", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


parts = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from("hms")), min_size=1, max_size=5)


@given(parts)
def test_parse_duration_is_the_sum_of_its_parts(items: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in items)
    assert parse_duration(text) == sum(n * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in items)


@pytest.mark.parametrize("field", ["resyncPeriod"])
@pytest.mark.parametrize("value", ["soon", "5", "", 300])
def test_bad_resync_period_is_invalid(field: str, value: Any) -> None:
    invalid(spec(**{field: value}))


@pytest.mark.parametrize("value", ["soon", "5", 600])
def test_bad_shutdown_timeout_is_invalid(value: Any) -> None:
    invalid(spec(powerPolicy={"action": "Shutdown", "shutdownTimeout": value}))


def test_resync_period_has_a_floor() -> None:
    assert "resyncPeriod" in invalid(spec(resyncPeriod="9s")).message
    assert parse_policy(spec(resyncPeriod="10s")).resync_period == 10.0


@pytest.mark.parametrize(
    "selector",
    [
        {},
        {"tags": []},
        {"tags": None},
        {"excludeTags": [{"category": "a", "name": "b"}]},
        {"tags": [{"category": "security"}]},
        {"tags": [{"name": "vtpm-required"}]},
        {"tags": [{"category": "", "name": "x"}]},
        {"tags": [{"category": "a", "name": 5}]},
    ],
)
def test_tags_are_required_and_complete(selector: dict[str, Any]) -> None:
    invalid(spec(selector=selector))


@pytest.mark.parametrize(
    "changes",
    [
        {"vcenter": {"credentialsSecret": "c"}},
        {"vcenter": {"server": "vc"}},
        {"vcenter": {"server": "", "credentialsSecret": "c"}},
        {"vcenter": {"server": 42, "credentialsSecret": "c"}},
        {"vcenter": None},
        {"vtpm": "present"},
        {"mode": "DryRun"},
        {"powerPolicy": {"action": "Reboot"}},
        {"maxConcurrent": "many"},
        {"maxConcurrent": None},
    ],
)
def test_invalid_specs(changes: dict[str, Any]) -> None:
    invalid(spec(**changes))


def test_missing_top_level_keys() -> None:
    invalid({})
    invalid({"vcenter": MINIMAL["vcenter"]})
    invalid({"selector": MINIMAL["selector"]})


# --- Found bugs: the parser promises InvalidSpec for anything the CRD schema would refuse. ---


@pytest.mark.parametrize(
    "changes",
    [
        {"selector": None},
        {"selector": ["security/vtpm-required"]},
        {"selector": "security/vtpm-required"},
        {"powerPolicy": "Shutdown"},
        {"powerPolicy": ["Shutdown"]},
        {"powerPolicy": True},
    ],
)
def test_non_mapping_sections_are_invalid_spec(changes: dict[str, Any]) -> None:
    """BUG: policy._parse calls .get on selector/powerPolicy; null (selector) or a non-mapping raises
    AttributeError, which parse_policy does not turn into PolicyProblem(InvalidSpec); the worker
    then reports it as a transient VCenterError instead of a Stalled InvalidSpec."""
    invalid(spec(**changes))


@pytest.mark.parametrize("field", ["allowRemoval", "insecureSkipVerify", "forcePowerOff"])
def test_string_false_never_enables_a_dangerous_switch(field: str) -> None:
    """BUG: bool("false") is True, so a quoted "false" turns on removal, skipping TLS verification
    or hard power-off. Only an explicit boolean true may enable them."""
    if field == "insecureSkipVerify":
        changed = spec(vcenter={**MINIMAL["vcenter"], field: "false"})
    elif field == "forcePowerOff":
        changed = spec(powerPolicy={"action": "Shutdown", field: "false"})
    else:
        changed = spec(**{field: "false"})
    try:
        policy = parse_policy(changed)
    except PolicyProblem as problem:
        assert problem.reason is ProblemReason.INVALID_SPEC
        return
    assert not policy.allow_removal
    assert not policy.vcenter.insecure_skip_verify
    assert not policy.power.force_power_off


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
SPEC_KEYS = [
    "vcenter",
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
    """Whatever a user writes into one field, the result is a Policy or PolicyProblem(InvalidSpec)."""
    try:
        result = parse_policy(spec(**{key: value}))
    except PolicyProblem as problem:
        assert problem.reason is ProblemReason.INVALID_SPEC
    else:
        assert isinstance(result, Policy)
        assert 1 <= result.max_concurrent <= 64
        assert result.tags
