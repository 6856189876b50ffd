"""parse_vcenter, split_server and AllowedNamespaces: the VCenter kind's rules, without an API server."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator.api import parse_vcenter
from vtpm_operator.api.vcenter import SERVER_PATTERN
from vtpm_operator.connection import (
    AllowedNamespaces,
    LabelRequirement,
    NamespaceSelector,
    SelectorOperator,
    VCenterConfig,
    split_server,
)
from vtpm_operator.problems import PolicyProblem, ProblemReason

from .vtpm_factories import MINIMAL_VCENTER_SPEC


def spec(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(MINIMAL_VCENTER_SPEC)
    result.update(changes)
    return result


def invalid(spec_: Any, field: str) -> PolicyProblem:
    with pytest.raises(PolicyProblem) as caught:
        parse_vcenter(spec_)
    assert caught.value.reason is ProblemReason.INVALID_SPEC
    assert caught.value.message.startswith(f"{field}: "), caught.value.message
    return caught.value


def test_defaults() -> None:
    assert parse_vcenter(MINIMAL_VCENTER_SPEC) == VCenterConfig(
        server="vc.example.com",
        credentials_secret="vc-prod-creds",
        ca_secret=None,
        insecure_skip_verify=False,
        allowed_namespaces=None,
        allow_removal=False,
        max_concurrent_changes=8,
    )


def test_full_spec() -> None:
    config = parse_vcenter(
        spec(
            server="[2001:db8::1]:8443",
            caSecretRef={"name": "vc-ca"},
            allowedNamespaces={
                "names": ["windows-team"],
                "selector": {
                    "matchLabels": {"vsphere.example.com/prod": "true"},
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}],
                },
            },
            allowRemoval=True,
            maxConcurrentChanges=64,
        )
    )
    assert config.ca_secret == "vc-ca"
    assert config.allow_removal is True and config.max_concurrent_changes == 64
    assert config.allowed_namespaces == AllowedNamespaces(
        names=frozenset({"windows-team"}),
        selector=NamespaceSelector(
            match_labels={"vsphere.example.com/prod": "true"},
            match_expressions=(LabelRequirement("tier", SelectorOperator.NOT_IN, ("dev",)),),
        ),
    )


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("vc.example.com", ("vc.example.com", 443)),
        ("vc:8443", ("vc", 8443)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fe80::1]", ("fe80::1", 443)),
    ],
)
def test_split_server(server: str, expected: tuple[str, int]) -> None:
    assert split_server(server) == expected


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ("vc:", "host, host:port"),
        ("vc:0", "1-65535"),
        ("vc:99999", "1-65535"),
        ("fe80::1", "brackets"),
        ("fe80::1:443", "brackets"),
        ("https://vc", "host, host:port"),
        ("vc/sdk", "host, host:port"),
        ("vc:port", "host, host:port"),
    ],
)
def test_bad_servers_are_refused_saying_why(server: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        split_server(server)
    assert says in invalid(spec(server=server), "spec.server").message


@given(st.text(alphabet="ab1:.[]-9f", max_size=14))
def test_split_server_accepts_what_the_schema_pattern_and_port_rule_accept(server: str) -> None:
    """The operator and the API server (pattern + CEL port rule) agree on every string."""
    match = re.fullmatch(SERVER_PATTERN.strip("^$"), server)
    port = match and match.group(2)
    schema_ok = match is not None and (not port or 1 <= int(port[1:]) <= 65535)
    try:
        split_server(server)
    except ValueError:
        assert not schema_ok
    else:
        assert schema_ok


def test_insecure_skip_verify_never_with_a_ca() -> None:
    invalid(spec(insecureSkipVerify=True, caSecretRef={"name": "ca"}), "spec.insecureSkipVerify")
    assert parse_vcenter(spec(insecureSkipVerify=True)).insecure_skip_verify is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"insecureSkipVerify": "true"}, "spec.insecureSkipVerify"),
        ({"allowRemoval": "false"}, "spec.allowRemoval"),
        ({"maxConcurrentChanges": 0}, "spec.maxConcurrentChanges"),
        ({"maxConcurrentChanges": 65}, "spec.maxConcurrentChanges"),
        ({"credentialsSecretRef": {}}, "spec.credentialsSecretRef.name"),
        ({"credentialsSecretRef": "creds"}, "spec.credentialsSecretRef"),
        ({"caSecretRef": {"name": "Not_A_Name"}}, "spec.caSecretRef.name"),
        ({"server": "v" * 256}, "spec.server"),
        ({"allowedNamespaces": {"names": ["Team"]}}, "spec.allowedNamespaces.names[0]"),
        (
            {"allowedNamespaces": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}},
            "spec.allowedNamespaces.selector.matchExpressions[0].values",
        ),
        (
            {
                "allowedNamespaces": {
                    "selector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
                }
            },
            "spec.allowedNamespaces.selector.matchExpressions[0].values",
        ),
        (
            {"allowedNamespaces": {"selector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}},
            "spec.allowedNamespaces.selector.matchExpressions[0].operator",
        ),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], field: str) -> None:
    invalid(spec(**changes), field)


def test_a_missing_server_is_named() -> None:
    invalid({"credentialsSecretRef": {"name": "c"}}, "spec.server")


def allowed(spec_: dict[str, Any]) -> AllowedNamespaces:
    config = parse_vcenter(spec(allowedNamespaces=spec_))
    assert config.allowed_namespaces is not None
    return config.allowed_namespaces


def test_present_but_empty_admits_no_namespace() -> None:
    assert not allowed({}).admits("team-a", {"any": "label"})
    assert not allowed({"names": []}).admits("team-a", {})


def test_names_and_selector_are_a_union() -> None:
    rule = allowed({"names": ["team-a"], "selector": {"matchLabels": {"prod": "true"}}})
    assert rule.admits("team-a", {})
    assert rule.admits("team-b", {"prod": "true"})
    assert not rule.admits("team-b", {"prod": "false"})
    assert not rule.admits("team-c", {})


def test_an_empty_selector_admits_every_namespace() -> None:
    assert allowed({"selector": {}}).admits("anything", {})


@pytest.mark.parametrize(
    ("operator", "values", "labels", "admitted"),
    [
        ("In", ["a", "b"], {"k": "b"}, True),
        ("In", ["a"], {"k": "c"}, False),
        ("In", ["a"], {}, False),
        ("NotIn", ["a"], {"k": "c"}, True),
        ("NotIn", ["a"], {}, True),
        ("NotIn", ["a"], {"k": "a"}, False),
        ("Exists", [], {"k": ""}, True),
        ("Exists", [], {"other": "x"}, False),
        ("DoesNotExist", [], {}, True),
        ("DoesNotExist", [], {"k": "x"}, False),
    ],
)
def test_match_expressions_follow_kubernetes_semantics(
    operator: str, values: list[str], labels: dict[str, str], admitted: bool
) -> None:
    expression = {"key": "k", "operator": operator, "values": values}
    assert allowed({"selector": {"matchExpressions": [expression]}}).admits("ns", labels) is admitted


def test_every_label_and_expression_must_match() -> None:
    rule = allowed(
        {
            "selector": {
                "matchLabels": {"a": "1", "b": "2"},
                "matchExpressions": [{"key": "c", "operator": "Exists"}],
            }
        }
    )
    assert rule.admits("ns", {"a": "1", "b": "2", "c": ""})
    assert not rule.admits("ns", {"a": "1", "b": "2"})
    assert not rule.admits("ns", {"a": "1", "c": ""})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 70000) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
VCENTER_KEYS = [
    "server",
    "credentialsSecretRef",
    "caSecretRef",
    "insecureSkipVerify",
    "allowedNamespaces",
    "allowRemoval",
    "maxConcurrentChanges",
]


@given(key=st.sampled_from(VCENTER_KEYS), value=json_values)
def test_any_spec_gives_a_config_or_invalid_spec(key: str, value: Any) -> None:
    """Whatever a user writes into one field, the result is a VCenterConfig or InvalidSpec naming it."""
    try:
        config = parse_vcenter(spec(**{key: value}))
    except PolicyProblem as problem:
        assert problem.reason is ProblemReason.INVALID_SPEC
        assert problem.message.startswith(f"spec.{key}"), problem.message
    else:
        assert 1 <= config.max_concurrent_changes <= 64
        split_server(config.server)
