"""Pieces both kinds share: model bases, object references, durations and conditions.

Every field carries a description: the CRD generator copies them into the schema, where
`kubectl explain` shows them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import durationpy
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# Schema keywords a field or a model adds to its generated schema (CEL rules, list types...).
JsonDict = dict[str, Any]

# A DNS-1123 subdomain: what Kubernetes accepts as an object name.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NAME_MAX_LENGTH = 253

# Go durations limited to hours, minutes and seconds ("90s", "10m", "1h30m", "1.5h"). The CEL rule
# and the operator's own check both bound the value; the length bound keeps CEL's cost estimate low.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
DURATION_MAX_LENGTH = 32
DURATION_MIN = timedelta(seconds=10)
DURATION_MAX = timedelta(hours=24)


class SpecModel(BaseModel):
    """A spec section as users write it: camelCase keys only, unknown keys refused, no coercion."""

    model_config = ConfigDict(
        strict=True, extra="forbid", alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
    )


class StatusModel(BaseModel):
    """A status section the operator writes: built in Python by field name, dumped by alias."""

    model_config = ConfigDict(
        strict=True, extra="forbid", alias_generator=to_camel, validate_by_alias=True, validate_by_name=True
    )


ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration; ValueError when it is not one."""
    try:
        return float(durationpy.from_str(text).total_seconds())
    except durationpy.DurationError as error:
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m or 1h30m") from error


def _duration_in_bounds(text: str) -> str:
    seconds = duration_seconds(text)
    if not DURATION_MIN.total_seconds() <= seconds <= DURATION_MAX.total_seconds():
        raise ValueError(f"{text} is outside 10s to 24h")
    return text


def duration_rule(field: str) -> JsonDict:
    """The CEL rule that bounds a duration field (the same bounds as _duration_in_bounds)."""
    return {
        "rule": "duration(self) >= duration('10s') && duration(self) <= duration('24h')",
        "message": f"{field} must be between 10s and 24h",
    }


def duration_field(field: str, default: str, description: str) -> Any:
    """A Field for a bounded duration; field is its path for messages (spec.resyncPeriod)."""
    return Field(
        default=default,
        description=description,
        json_schema_extra={"x-kubernetes-validations": [duration_rule(field)]},
    )


Duration = Annotated[
    str,
    StringConstraints(min_length=2, max_length=DURATION_MAX_LENGTH, pattern=DURATION_PATTERN),
    AfterValidator(_duration_in_bounds),
]


class LocalObjectReference(SpecModel):
    """A reference to an object by name."""

    name: ObjectName = Field(description="Name of the referenced object.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, shaped like a Kubernetes metav1.Condition."""

    type: str = Field(
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type, for example Ready, Reconciling, Stalled or Compliant.",
    )
    status: ConditionStatus = Field(description="Status of the condition, one of True, False, Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the condition was set from.",
        json_schema_extra={"format": "int64"},
    )
    last_transition_time: datetime = Field(
        strict=False, description="When the condition's status last changed (RFC 3339)."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase cause of the status, for example AuthenticationFailed.",
    )
    message: str = Field(max_length=32768, description="Human-readable details; never contains credentials.")


def conditions_field(description: str) -> Any:
    return Field(
        default=None,
        max_length=16,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def count_field(description: str, *, int64: bool = False) -> Any:
    extra: JsonDict | None = {"format": "int64"} if int64 else None
    return Field(default=None, ge=0, description=description, json_schema_extra=extra)
