"""vCenter faults in words an admin can act on."""

from __future__ import annotations

from pyVmomi import vmodl


def describe(error: BaseException) -> str:
    """The fault's type, vCenter's message keys (stable across locales) and its text."""
    if not isinstance(error, vmodl.MethodFault):
        return f"{type(error).__name__}: {error}"
    name = type(error).__name__.split(".")[-1]
    keys = [m.key for m in getattr(error, "faultMessage", None) or [] if getattr(m, "key", None)]
    text = getattr(error, "msg", None) or ""
    return name + (f" [{', '.join(keys)}]" if keys else "") + (f": {text}" if text else "")
