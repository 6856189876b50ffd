"""Which guest operating systems can use a TPM 2.0, when vCenter itself gives no answer.

vCenter's GuestOsDescriptor.supportsTPM20 is the authority; this table is the fallback for
vCenters (or hosts) whose config option query fails. It follows VMware's vTPM guidance:
64-bit Windows 7 / Server 2008 R2 and later, and current 64-bit Linux distributions.
"""

from __future__ import annotations

import re

_WINDOWS_TPM20 = re.compile(
    r"^windows(7|7Server|8|8Server|9|9Server|11|12|2019srv|2019srvNext|2022srvNext)_?64Guest$"
)
_LINUX_TPM20 = re.compile(
    r"^(rhel(7|8|9|10)|centos(7|8|9)|oracleLinux(7|8|9)|rockylinux|almalinux|sles(12|15|16)"
    r"|debian(10|11|12|13)|ubuntu|other(4|5|6)xLinux|amazonlinux(2|3)|vmwarePhoton|fedora|opensuse)_?64Guest$"
)

# ESXi versions that can give a vTPM to a guest: 6.7 for Windows, 7.0 Update 2 for Linux.
MIN_HOST_VERSION_WINDOWS = (6, 7, 0)
MIN_HOST_VERSION_OTHER = (7, 0, 2)


def is_windows(guest_id: str) -> bool:
    return guest_id.startswith("win")


def supports_tpm20_by_table(guest_id: str) -> bool:
    return bool(_WINDOWS_TPM20.match(guest_id) or _LINUX_TPM20.match(guest_id))


def min_host_version(guest_id: str) -> tuple[int, int, int]:
    return MIN_HOST_VERSION_WINDOWS if is_windows(guest_id) else MIN_HOST_VERSION_OTHER
