"""vCenter faults in words an admin can act on."""

from __future__ import annotations

from collections.abc import Sequence

from pyVmomi import vmodl


def describe(error: BaseException) -> str:
    """The fault's type, vCenter's message keys (stable across locales) and its text."""
    if not isinstance(error, vmodl.MethodFault):
        return f"{type(error).__name__}: {error}"
    name = type(error).__name__.split(".")[-1]
    keys = [m.key for m in getattr(error, "faultMessage", None) or [] if getattr(m, "key", None)]
    return words(name, keys, getattr(error, "msg", None) or "")


def words(name: str, keys: Sequence[str], text: str) -> str:
    """How a fault reads, however it was decoded (pyVmomi's objects here, XML in vsphere/lean.py)."""
    return name + (f" [{', '.join(keys)}]" if keys else "") + (f": {text}" if text else "")
