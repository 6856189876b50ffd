"""The VTPMPolicy spec as a typed, validated value: the one place that knows the spec's shape.

The CRD schema validates and defaults at admission; this parser repeats the checks so that the
operator never acts on a spec the schema would have refused (older API servers, direct etcd
writes, the `audit` command that has no API server at all).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vtpm_operator.problems import PolicyProblem, ProblemReason


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
    action: PowerAction = PowerAction.SKIP
    shutdown_timeout: float = 600.0  # seconds
    force_power_off: bool = False
    restore_power_state: bool = True


@dataclass(frozen=True)
class Policy:
    vcenter: str  # the VCenter object's name
    tags: tuple[TagRef, ...]
    exclude_tags: tuple[TagRef, ...] = ()
    vtpm: DesiredVTPM = DesiredVTPM.PRESENT
    allow_removal: bool = False
    mode: Mode = Mode.ENFORCE
    key_provider: str | None = None
    power: PowerPolicy = PowerPolicy()
    max_concurrent: int = 4
    resync_period: float = 300.0  # seconds


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as "10m", "1h30m" or "45s"."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_policy(spec: Mapping[str, Any]) -> Policy:
    """A Policy from a VTPMPolicy spec; PolicyProblem(InvalidSpec) says what is wrong."""
    try:
        return _parse(spec)
    except (KeyError, TypeError, ValueError) as error:
        raise PolicyProblem(ProblemReason.INVALID_SPEC, f"invalid spec: {error}") from error


def _parse(spec: Mapping[str, Any]) -> Policy:
    if "vcenterRef" not in spec and "vcenter" in spec:
        raise ValueError(
            "spec.vcenter moved: the connection is a cluster-scoped VCenter now; set spec.vcenterRef.name"
        )
    vcenter = _section(spec, "vcenterRef", required=True)
    selector = _section(spec, "selector", required=True)
    power = _section(spec, "powerPolicy")
    tags = _tags(selector.get("tags") or [])
    if not tags:
        raise ValueError("selector.tags needs at least one tag")
    max_concurrent = spec.get("maxConcurrent", 4)
    if type(max_concurrent) is not int or not 1 <= max_concurrent <= 64:
        raise ValueError(f"maxConcurrent must be a whole number from 1 to 64, not {max_concurrent!r}")
    resync = parse_duration(_text(spec, "resyncPeriod", "5m"))
    if resync < 10:
        raise ValueError("resyncPeriod must be at least 10s")
    shutdown_timeout = parse_duration(_text(power, "shutdownTimeout", "10m"))
    if shutdown_timeout <= 0:
        raise ValueError("powerPolicy.shutdownTimeout must be longer than 0s")
    return Policy(
        vcenter=_text(vcenter, "name"),
        tags=tags,
        exclude_tags=_tags(selector.get("excludeTags") or []),
        vtpm=DesiredVTPM(spec.get("vtpm", DesiredVTPM.PRESENT)),
        allow_removal=_flag(spec, "allowRemoval", False),
        mode=Mode(spec.get("mode", Mode.ENFORCE)),
        key_provider=_text(spec, "keyProvider", "") or None,
        power=PowerPolicy(
            action=PowerAction(power.get("action", PowerAction.SKIP)),
            shutdown_timeout=shutdown_timeout,
            force_power_off=_flag(power, "forcePowerOff", False),
            restore_power_state=_flag(power, "restorePowerState", True),
        ),
        max_concurrent=max_concurrent,
        resync_period=resync,
    )


def _section(spec: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = spec.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be an object")
    return value


_REQUIRED = object()


def _text(mapping: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> str:
    if key not in mapping and default is not _REQUIRED:
        return str(default)
    value = mapping[key]
    if not isinstance(value, str) or (not value and default is _REQUIRED):
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _flag(mapping: Mapping[str, Any], key: str, default: bool) -> bool:
    """Only a real boolean counts: the string "false" must never switch on removal or skip TLS checks."""
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _tags(items: Any) -> tuple[TagRef, ...]:
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ValueError("tags must be a list of {category, name}")
    return tuple(
        sorted({TagRef(_text(_mapping(item), "category"), _text(_mapping(item), "name")) for item in items})
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("each tag must be an object with category and name")
    return value
