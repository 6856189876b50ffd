"""prerequisites.evaluate, choose_key_provider and required_privileges, against an independent oracle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm_operator import guest_os
from vtpm_operator.facts import KeyProvider, PowerState, VMFacts
from vtpm_operator.policy import DesiredVTPM, Policy, PowerAction
from vtpm_operator.prerequisites import (
    ADD_PRIVILEGES_ON_FOLDER,
    ADD_PRIVILEGES_ON_VM,
    POWER_PRIVILEGES_ON_VM,
    REMOVE_PRIVILEGES_ON_VM,
    Action,
    Reason,
    choose_key_provider,
    evaluate,
    required_privileges,
)

from .vtpm_factories import (
    DEFAULT_PROVIDER,
    HOSTS,
    NAMED_PROVIDER,
    SUPPORTED_LINUX,
    SUPPORTED_WINDOWS,
    UNSUPPORTED,
    key_provider_sets,
    make_policy,
    make_vm,
    oracle,
    policies,
    shutdown_possible,
    vm_facts,
)

ADD_ONLY = {
    Reason.FIRMWARE_NOT_EFI,
    Reason.HARDWARE_VERSION_TOO_OLD,
    Reason.GUEST_OS_UNSUPPORTED,
    Reason.HOST_VERSION_TOO_OLD,
    Reason.KEY_PROVIDER_MISSING,
}


providers_or_none = st.sampled_from([None, DEFAULT_PROVIDER])


@given(vm=vm_facts(), policy=policies, provider=providers_or_none)
def test_reasons_are_exactly_the_unmet_prerequisites(
    vm: VMFacts, policy: Policy, provider: KeyProvider | None
) -> None:
    verdict = evaluate(vm, policy, HOSTS, provider)
    expected = oracle(vm, policy, HOSTS, provider)
    reasons = [b.reason for b in verdict.blockers]
    assert len(reasons) == len(set(reasons)), "a reason listed twice"
    if expected is None:
        assert verdict.compliant
        assert verdict.action is Action.NONE
        assert verdict.blockers == ()
        assert not verdict.power_off_first
        return
    assert not verdict.compliant
    assert verdict.action is (Action.ADD if policy.vtpm is DesiredVTPM.PRESENT else Action.REMOVE)
    assert set(reasons) == expected
    assert all(b.detail for b in verdict.blockers), "every blocker says why"
    assert verdict.power_off_first == (not expected and vm.power_state is not PowerState.OFF)
    if verdict.power_off_first:
        assert shutdown_possible(vm, policy)


@given(vm=vm_facts(), policy=policies, provider=providers_or_none)
def test_add_only_checks_never_block_a_removal(
    vm: VMFacts, policy: Policy, provider: KeyProvider | None
) -> None:
    removal = make_policy(vtpm=DesiredVTPM.ABSENT, action=policy.power.action)
    verdict = evaluate(vm, removal, HOSTS, provider)
    assert not ({b.reason for b in verdict.blockers} & ADD_ONLY)


def test_compliant_vm_with_every_problem_is_left_alone() -> None:
    vm = make_vm(
        vtpm_device_key=11000,
        power_state=PowerState.ON,
        firmware="bios",
        hardware_version=10,
        has_snapshots=True,
        task_in_progress=True,
    )
    verdict = evaluate(vm, make_policy(), HOSTS, None)
    assert verdict.action is Action.NONE
    assert verdict.blockers == ()
    assert verdict.compliant


def test_ready_vm_gets_add_and_nothing_blocks_it() -> None:
    verdict = evaluate(make_vm(), make_policy(), HOSTS, DEFAULT_PROVIDER)
    assert verdict.action is Action.ADD
    assert verdict.blockers == ()
    assert not verdict.power_off_first


def test_several_problems_give_several_reasons() -> None:
    vm = make_vm(
        power_state=PowerState.ON,
        firmware="bios",
        hardware_version=13,
        has_snapshots=True,
        guest_id="dosGuest",
        host_id="h-65",
        task_in_progress=True,
        missing_privileges=frozenset({"Cryptographer.Encrypt"}),
    )
    verdict = evaluate(vm, make_policy(), HOSTS, None)
    # every reason a VM's own facts can give; ConflictingPolicies comes from planning (claims.py)
    assert {b.reason for b in verdict.blockers} == set(Reason) - {Reason.CONFLICTING_POLICIES}


@pytest.mark.parametrize("field,value,reason", [
    ("firmware", "bios", Reason.FIRMWARE_NOT_EFI),
    ("hardware_version", 13, Reason.HARDWARE_VERSION_TOO_OLD),
    ("has_snapshots", True, Reason.HAS_SNAPSHOTS),
    ("power_state", PowerState.ON, Reason.POWERED_ON),
    ("power_state", PowerState.SUSPENDED, Reason.POWERED_ON),
    ("guest_id", "winXPProGuest", Reason.GUEST_OS_UNSUPPORTED),
    ("host_id", "h-65", Reason.HOST_VERSION_TOO_OLD),
    ("missing_privileges", frozenset({"Cryptographer.Encrypt"}), Reason.INSUFFICIENT_PRIVILEGES),
])  # fmt: skip
def test_each_single_problem_gives_its_reason(field: str, value: object, reason: Reason) -> None:
    verdict = evaluate(make_vm(**{field: value}), make_policy(), HOSTS, DEFAULT_PROVIDER)
    assert [b.reason for b in verdict.blockers] == [reason]


def test_hardware_version_14_is_enough() -> None:
    verdict = evaluate(make_vm(hardware_version=14), make_policy(), HOSTS, DEFAULT_PROVIDER)
    assert verdict.blockers == ()


def test_missing_key_provider_blocks_add_and_names_the_wanted_one() -> None:
    verdict = evaluate(make_vm(), make_policy(key_provider="kp-x"), HOSTS, None)
    assert [b.reason for b in verdict.blockers] == [Reason.KEY_PROVIDER_MISSING]
    assert "kp-x" in verdict.blockers[0].detail


def test_removal_needs_no_key_provider() -> None:
    vm = make_vm(vtpm_device_key=11000, firmware="bios", hardware_version=10, guest_id="dosGuest")
    verdict = evaluate(vm, make_policy(vtpm=DesiredVTPM.ABSENT), HOSTS, None)
    assert verdict.action is Action.REMOVE
    assert verdict.blockers == ()


def test_removal_still_needs_power_off_and_no_snapshots() -> None:
    vm = make_vm(vtpm_device_key=11000, power_state=PowerState.ON, has_snapshots=True)
    verdict = evaluate(vm, make_policy(vtpm=DesiredVTPM.ABSENT), HOSTS, None)
    assert {b.reason for b in verdict.blockers} == {Reason.POWERED_ON, Reason.HAS_SNAPSHOTS}


class TestPowerPolicy:
    def test_skip_blocks_powered_on_vm(self) -> None:
        verdict = evaluate(make_vm(power_state=PowerState.ON), make_policy(), HOSTS, DEFAULT_PROVIDER)
        assert [b.reason for b in verdict.blockers] == [Reason.POWERED_ON]
        assert "powerPolicy.action: Shutdown" in verdict.blockers[0].detail
        assert not verdict.power_off_first

    def test_shutdown_with_tools_running_plans_power_off(self) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN)
        vm = make_vm(power_state=PowerState.ON, tools_running=True)
        verdict = evaluate(vm, policy, HOSTS, DEFAULT_PROVIDER)
        assert verdict.blockers == ()
        assert verdict.power_off_first
        assert verdict.action is Action.ADD

    def test_shutdown_without_tools_and_without_force_is_blocked(self) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN, force_power_off=False)
        vm = make_vm(power_state=PowerState.ON, tools_running=False)
        verdict = evaluate(vm, policy, HOSTS, DEFAULT_PROVIDER)
        assert [b.reason for b in verdict.blockers] == [Reason.POWERED_ON]
        assert "Tools" in verdict.blockers[0].detail
        assert not verdict.power_off_first

    def test_shutdown_without_tools_but_with_force_plans_power_off(self) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN, force_power_off=True)
        vm = make_vm(power_state=PowerState.ON, tools_running=False)
        verdict = evaluate(vm, policy, HOSTS, DEFAULT_PROVIDER)
        assert verdict.blockers == ()
        assert verdict.power_off_first

    @pytest.mark.parametrize("force", [False, True])
    def test_suspended_is_blocked_even_with_shutdown(self, force: bool) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN, force_power_off=force)
        vm = make_vm(power_state=PowerState.SUSPENDED, tools_running=True)
        verdict = evaluate(vm, policy, HOSTS, DEFAULT_PROVIDER)
        assert [b.reason for b in verdict.blockers] == [Reason.POWERED_ON]
        assert "suspended" in verdict.blockers[0].detail
        assert not verdict.power_off_first

    def test_no_power_off_when_another_prerequisite_blocks(self) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN)
        vm = make_vm(power_state=PowerState.ON, has_snapshots=True)
        verdict = evaluate(vm, policy, HOSTS, DEFAULT_PROVIDER)
        assert [b.reason for b in verdict.blockers] == [Reason.HAS_SNAPSHOTS]
        assert not verdict.power_off_first

    def test_powered_off_vm_needs_no_power_off(self) -> None:
        policy = make_policy(action=PowerAction.SHUTDOWN)
        verdict = evaluate(make_vm(), policy, HOSTS, DEFAULT_PROVIDER)
        assert not verdict.power_off_first


class TestHostVersion:
    @pytest.mark.parametrize("guest", SUPPORTED_WINDOWS)
    @pytest.mark.parametrize("host,blocked", [("h-65", True), ("h-67", False), ("h-701", False)])
    def test_windows_needs_67(self, guest: str, host: str, blocked: bool) -> None:
        verdict = evaluate(make_vm(guest_id=guest, host_id=host), make_policy(), HOSTS, DEFAULT_PROVIDER)
        assert (Reason.HOST_VERSION_TOO_OLD in {b.reason for b in verdict.blockers}) is blocked

    @pytest.mark.parametrize("guest", SUPPORTED_LINUX)
    @pytest.mark.parametrize(
        "host,blocked", [("h-65", True), ("h-67", True), ("h-701", True), ("h-702", False), ("h-803", False)]
    )
    def test_linux_needs_70u2(self, guest: str, host: str, blocked: bool) -> None:
        verdict = evaluate(make_vm(guest_id=guest, host_id=host), make_policy(), HOSTS, DEFAULT_PROVIDER)
        assert (Reason.HOST_VERSION_TOO_OLD in {b.reason for b in verdict.blockers}) is blocked

    def test_message_names_host_and_versions(self) -> None:
        vm = make_vm(guest_id="ubuntu64Guest", host_id="h-701")
        (blocker,) = evaluate(vm, make_policy(), HOSTS, DEFAULT_PROVIDER).blockers
        assert "esx-701" in blocker.detail
        assert "7.0.1" in blocker.detail
        assert "7.0.2" in blocker.detail


class TestGuestSupport:
    @pytest.mark.parametrize("guest", UNSUPPORTED)
    def test_vcenter_yes_overrides_table_no(self, guest: str) -> None:
        vm = make_vm(guest_id=guest, guest_supports_tpm20=True)
        reasons = {b.reason for b in evaluate(vm, make_policy(), HOSTS, DEFAULT_PROVIDER).blockers}
        assert Reason.GUEST_OS_UNSUPPORTED not in reasons

    @pytest.mark.parametrize("guest", SUPPORTED_WINDOWS + SUPPORTED_LINUX)
    def test_vcenter_no_overrides_table_yes(self, guest: str) -> None:
        vm = make_vm(guest_id=guest, guest_supports_tpm20=False)
        reasons = {b.reason for b in evaluate(vm, make_policy(), HOSTS, DEFAULT_PROVIDER).blockers}
        assert Reason.GUEST_OS_UNSUPPORTED in reasons

    @pytest.mark.parametrize(
        "guest,supported",
        [(g, True) for g in SUPPORTED_WINDOWS + SUPPORTED_LINUX] + [(g, False) for g in UNSUPPORTED],
    )
    def test_none_falls_back_to_table(self, guest: str, supported: bool) -> None:
        assert guest_os.supports_tpm20_by_table(guest) is supported
        vm = make_vm(guest_id=guest, guest_supports_tpm20=None, host_id=None)
        reasons = {b.reason for b in evaluate(vm, make_policy(), HOSTS, DEFAULT_PROVIDER).blockers}
        assert (Reason.GUEST_OS_UNSUPPORTED in reasons) is not supported

    def test_windows_and_linux_minimum_host_versions(self) -> None:
        assert guest_os.min_host_version("windows11_64Guest") == (6, 7, 0)
        assert guest_os.min_host_version("rhel9_64Guest") == (7, 0, 2)
        assert guest_os.is_windows("winXPProGuest")
        assert not guest_os.is_windows("ubuntu64Guest")


class TestChooseKeyProvider:
    def test_default_when_none_named(self) -> None:
        assert choose_key_provider((NAMED_PROVIDER, DEFAULT_PROVIDER), None) == DEFAULT_PROVIDER

    def test_named_when_named(self) -> None:
        assert choose_key_provider((DEFAULT_PROVIDER, NAMED_PROVIDER), "kp-named") == NAMED_PROVIDER

    def test_named_but_missing_gives_none_not_the_default(self) -> None:
        assert choose_key_provider((DEFAULT_PROVIDER,), "kp-named") is None

    def test_unusable_default_is_ignored(self) -> None:
        unusable = KeyProvider("kp-default", is_default=True, usable=False, kind="native")
        assert choose_key_provider((unusable, NAMED_PROVIDER), None) is None

    def test_unusable_named_is_ignored(self) -> None:
        unusable = KeyProvider("kp-named", is_default=False, usable=False, kind="kmip")
        assert choose_key_provider((unusable, DEFAULT_PROVIDER), "kp-named") is None

    def test_no_providers(self) -> None:
        assert choose_key_provider((), None) is None
        assert choose_key_provider((), "kp-named") is None

    @given(providers=key_provider_sets, wanted=st.sampled_from([None, "kp-named", "kp-default"]))
    def test_choice_is_usable_and_matches(
        self, providers: tuple[KeyProvider, ...], wanted: str | None
    ) -> None:
        chosen = choose_key_provider(providers, wanted)
        candidates = [p for p in providers if p.usable and (p.id == wanted if wanted else p.is_default)]
        if candidates:
            assert chosen is not None
            assert chosen in candidates
        else:
            assert chosen is None


class TestRequiredPrivileges:
    def test_add(self) -> None:
        on_vm, on_folder = required_privileges(make_policy())
        assert on_vm == ADD_PRIVILEGES_ON_VM
        assert on_folder == {"Cryptographer.EncryptNew"} == ADD_PRIVILEGES_ON_FOLDER
        assert "Cryptographer.Encrypt" in on_vm

    def test_remove(self) -> None:
        on_vm, on_folder = required_privileges(make_policy(vtpm=DesiredVTPM.ABSENT))
        assert on_vm == REMOVE_PRIVILEGES_ON_VM
        assert on_folder == frozenset()

    @pytest.mark.parametrize("vtpm", list(DesiredVTPM))
    def test_shutdown_adds_power_privileges(self, vtpm: DesiredVTPM) -> None:
        skip_vm, skip_folder = required_privileges(make_policy(vtpm=vtpm))
        shut_vm, shut_folder = required_privileges(make_policy(vtpm=vtpm, action=PowerAction.SHUTDOWN))
        assert shut_vm == skip_vm | POWER_PRIVILEGES_ON_VM
        assert not (skip_vm & POWER_PRIVILEGES_ON_VM)
        assert shut_folder == skip_folder
