"""The VTPMPolicy kind (namespaced): which VMs of which VCenter keep, or lose, a vTPM."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator

from vtpm_operator.api.base import (
    Condition,
    Duration,
    JsonDict,
    LocalObjectReference,
    SpecModel,
    StatusModel,
    conditions_field,
    count_field,
    duration_field,
)
from vtpm_operator.policy import DesiredVTPM, Mode, PowerAction

TAG_TEXT_MAX_LENGTH = 256  # vSphere's limit for category and tag names
TAGS_MAX_ITEMS = 32
VMS_MAX_ITEMS = 100
MOVED_MESSAGE = (
    "removed: the vCenter connection moved to a cluster-scoped VCenter object that an admin creates; "
    "name it in spec.vcenterRef.name and delete spec.vcenter"
)

# CEL, judged at admission on Kubernetes 1.25+; the validators below repeat each rule for older servers.
_NO_TAG_IN_BOTH: JsonDict = {
    "rule": "!has(self.excludeTags) || !self.excludeTags.exists(e, "
    "self.tags.exists(t, t.category == e.category && t.name == e.name))",
    "message": "spec.selector.excludeTags must not hold a tag that spec.selector.tags holds",
}
_NO_INLINE_VCENTER: JsonDict = {"rule": "!has(self.vcenter)", "message": f"spec.vcenter: {MOVED_MESSAGE}"}
_TAG_LIST_EXTRA: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["category", "name"],
}


class Tag(SpecModel):
    """A vSphere tag, identified by its category and its name."""

    category: str = Field(
        min_length=1,
        max_length=TAG_TEXT_MAX_LENGTH,
        description="Name of the tag category, as shown in vSphere Client (Tags & Custom Attributes).",
    )
    name: str = Field(
        min_length=1, max_length=TAG_TEXT_MAX_LENGTH, description="Name of the tag within its category."
    )


def _no_duplicates(tags: list[Tag]) -> list[Tag]:
    seen: set[tuple[str, str]] = set()
    for tag in tags:
        key = (tag.category, tag.name)
        if key in seen:
            raise ValueError(f"tag {tag.category}/{tag.name} is listed twice")
        seen.add(key)
    return tags


TagList = Annotated[list[Tag], AfterValidator(_no_duplicates)]


class TagSelector(SpecModel):
    """Which VMs this policy applies to, by vSphere tags."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_NO_TAG_IN_BOTH]})

    tags: TagList = Field(
        min_length=1,
        max_length=TAGS_MAX_ITEMS,
        description="vSphere tags selecting the VMs; a VM matches when it carries ANY of these tags. "
        "At least one, each at most once.",
        json_schema_extra=_TAG_LIST_EXTRA,
    )
    exclude_tags: TagList = Field(
        default=[],
        max_length=TAGS_MAX_ITEMS,
        description="vSphere tags that exempt a VM: a VM carrying any of these is never touched, even "
        "when it also carries a selected tag. None of them may be in tags. Default none.",
        json_schema_extra=_TAG_LIST_EXTRA,
    )

    @field_validator("exclude_tags")
    @classmethod
    def _not_selected_too(cls, excluded: list[Tag], info: ValidationInfo) -> list[Tag]:
        selected = {(t.category, t.name) for t in info.data.get("tags", [])}
        both = [f"{t.category}/{t.name}" for t in excluded if (t.category, t.name) in selected]
        if both:
            raise ValueError(f"{', '.join(both)} is in both tags and excludeTags")
        return excluded


class PowerPolicySpec(SpecModel):
    """What to do with VMs that are powered on: a vTPM can only be added or removed while the VM is off."""

    action: Annotated[PowerAction, Field(strict=False)] = Field(
        default=PowerAction.SKIP,
        description="Skip leaves powered-on VMs alone and reports them Blocked with reason PoweredOn. "
        "Shutdown shuts the guest OS down (VMware Tools), changes the VM, then restores its power "
        "state. Default Skip.",
    )
    shutdown_timeout: Duration = duration_field(
        "spec.powerPolicy.shutdownTimeout",
        "10m",
        "How long to wait for a graceful guest shutdown, as a duration such as 90s, 10m or 1h30m, "
        "from 10s to 24h. Default 10m.",
    )
    force_power_off: bool = Field(
        default=False,
        description="When the guest has not shut down within shutdownTimeout, power the VM off hard "
        "(like pulling the plug; unsaved guest data is lost). When false the VM is left running and "
        "reported Blocked. Default false.",
    )
    restore_power_state: bool = Field(
        default=True,
        description="Power the VM back on after the change if it was powered on before. Default true.",
    )


class VTPMPolicySpec(SpecModel):
    """Desired state: what the operator should do to which VMs of which VCenter."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_NO_INLINE_VCENTER]})

    vcenter: dict[str, Any] | None = Field(
        default=None,
        description="Removed. The connection moved to a cluster-scoped VCenter object; use vcenterRef. "
        "Kept in the schema only so that the operator can name the problem in objects that still "
        "carry it.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    vcenter_ref: LocalObjectReference = Field(
        alias="vcenterRef",
        description="The cluster-scoped VCenter object (kubectl get vcenters) whose vCenter Server holds "
        "the VMs. Its allowedNamespaces must admit this policy's namespace.",
    )
    selector: TagSelector = Field(description="Which VMs this policy applies to, by vSphere tags.")
    vtpm: Annotated[DesiredVTPM, Field(strict=False)] = Field(
        default=DesiredVTPM.PRESENT,
        description="Present adds a vTPM to every selected VM that lacks one; Absent removes the vTPM "
        "from every selected VM that has one (only when allowRemoval is true here and on the "
        "VCenter). Default Present.",
    )
    allow_removal: bool = Field(
        default=False,
        description="Must be true for vtpm Absent to remove anything (and the VCenter's allowRemoval "
        "too). Removing a vTPM destroys the secrets sealed to it (BitLocker keys, Windows Hello, "
        "Credential Guard, measured boot): make sure guests have recovery keys first. Default false.",
    )
    mode: Annotated[Mode, Field(strict=False)] = Field(
        default=Mode.ENFORCE,
        description="Enforce changes VMs to match the policy; Audit never changes a VM and only reports "
        "which VMs would be changed (state NonCompliant). Default Enforce.",
    )
    key_provider: str | None = Field(
        default=None,
        max_length=255,
        description="ID of the vCenter key provider (Native Key Provider or standard KMS cluster) that "
        "encrypts the VM files when a vTPM is added. Empty or omitted: vCenter's default key provider.",
    )
    power_policy: PowerPolicySpec = Field(
        default=PowerPolicySpec(),
        description="What to do with VMs that are powered on: a vTPM can only be added or removed while "
        "the VM is powered off.",
    )
    max_concurrent: int = Field(
        default=4,
        ge=1,
        le=64,
        description="How many VMs this policy changes at the same time (reconfigure tasks and shutdowns "
        "in flight), 1 to 64; the VCenter's maxConcurrentChanges bounds all its policies together. "
        "Default 4.",
    )
    resync_period: Duration = duration_field(
        "spec.resyncPeriod",
        "5m",
        "How often vCenter is read again in full to catch anything the live feed missed, as a "
        "duration such as 30s, 5m or 1h, from 10s to 24h. Default 5m.",
    )

    @field_validator("vcenter")
    @classmethod
    def _inline_vcenter_moved(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise ValueError(MOVED_MESSAGE)
        return None


VMStateName = Literal["Compliant", "NonCompliant", "Pending", "Blocked", "Failed"]


class VMStatus(StatusModel):
    """A VM that is not in the desired state, and why."""

    name: str = Field(max_length=255, description="The VM's name in the vCenter inventory.")
    id: str | None = Field(
        default=None, max_length=64, description="The VM's managed object ID in vCenter (for example vm-42)."
    )
    state: VMStateName = Field(
        description="Compliant (desired state), NonCompliant (Audit mode: would be changed), Pending "
        "(queued or being changed), Blocked (prerequisites unmet, see reasons) or Failed (vCenter "
        "refused the change or the task failed)."
    )
    reasons: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None,
        max_length=16,
        description="Every unmet prerequisite of a Blocked VM, each a CamelCase reason: PoweredOn, "
        "FirmwareNotEFI, HardwareVersionTooOld, HasSnapshots, GuestOSUnsupported, HostVersionTooOld, "
        "KeyProviderMissing, InsufficientPrivileges, ConflictingPolicies.",
    )
    message: str | None = Field(
        default=None, max_length=1024, description="Human-readable details, for Failed VMs what vCenter said."
    )


class PolicySummary(StatusModel):
    """VM counts of the policy's current view."""

    matched: int | None = count_field("VMs carrying a selected tag and no excluded tag.")
    compliant: int | None = count_field("Matched VMs already in the desired state.")
    non_compliant: int | None = count_field(
        "Matched VMs not in the desired state that Audit mode would change."
    )
    pending: int | None = count_field("Matched VMs queued for a change or being changed.")
    blocked: int | None = count_field("Matched VMs with unmet prerequisites (see vms[].reasons).")
    failed: int | None = count_field("Matched VMs whose last change vCenter refused or that failed.")
    excluded: int | None = count_field("VMs carrying a selected tag and an excluded tag: never touched.")
    drifted: int | None = count_field("Matched VMs that were compliant and are not any more.")
    drifted_total: int | None = count_field(
        "Times a compliant VM was seen leaving the desired state since the operator started.", int64=True
    )
    remediated_total: int | None = count_field(
        "VMs this policy has changed successfully since it was created.", int64=True
    )


class VTPMPolicyStatus(StatusModel):
    """Observed state, written by the operator only."""

    observed_generation: int | None = count_field(
        "The metadata.generation of the spec the current view was computed from.", int64=True
    )
    last_sync_time: datetime | None = Field(
        default=None,
        strict=False,
        description="The last moment the operator's view of the vCenter was known current (RFC 3339).",
    )
    conditions: list[Condition] | None = conditions_field(
        "Ready (every matched VM is in the desired state, nothing in flight), Reconciling (changes are "
        "in flight), Stalled (nothing more can happen until a person acts, for example InvalidSpec, "
        "VCenterNotFound, NamespaceNotAllowed, AuthenticationFailed, TagNotFound, RemovalNotAllowed, "
        "or VMs Blocked) and Compliant (every matched VM is in the desired state)."
    )
    summary: PolicySummary | None = Field(default=None, description="VM counts of the current view.")
    vms: list[VMStatus] | None = Field(
        default=None,
        max_length=VMS_MAX_ITEMS,
        description=f"Every matched VM that is not Compliant, most actionable first, at most "
        f"{VMS_MAX_ITEMS} entries (the summary counts all of them).",
    )
