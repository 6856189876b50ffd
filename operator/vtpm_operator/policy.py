"""The domain's view of a VTPMPolicy: plain frozen values the planner and the engine work from.

These types carry no defaults and no parsing: the API models (vtpm_operator.api) are the one
place that knows the spec's shape, its defaults and its bounds, and parse_policy there builds a
Policy from a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DesiredVTPM(StrEnum):
    PRESENT = "Present"
    ABSENT = "Absent"


class Mode(StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class PowerAction(StrEnum):
    SKIP = "Skip"
    SHUTDOWN = "Shutdown"


@dataclass(frozen=True, order=True)
class TagRef:
    category: str
    name: str

    def __str__(self) -> str:
        return f"{self.category}/{self.name}"


@dataclass(frozen=True)
class PowerPolicy:
    action: PowerAction
    shutdown_timeout: float  # seconds
    force_power_off: bool
    restore_power_state: bool


@dataclass(frozen=True)
class Policy:
    vcenter: str  # the name of the cluster-scoped VCenter object (spec.vcenterRef.name)
    tags: tuple[TagRef, ...]  # sorted, no duplicates
    exclude_tags: tuple[TagRef, ...]  # sorted, no duplicates, none of them in tags
    vtpm: DesiredVTPM
    allow_removal: bool
    mode: Mode
    key_provider: str | None
    power: PowerPolicy
    max_concurrent: int
    resync_period: float  # seconds
