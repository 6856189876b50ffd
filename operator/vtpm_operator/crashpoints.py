"""For tests only: stop the process dead at a named point, so that drills can reach the worst moments.

VTPM_TEST_CRASH_AT names the point; unset (always, outside the drills) nothing happens. It is read
here and nowhere else.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum

ENVIRONMENT_VARIABLE = "VTPM_TEST_CRASH_AT"


class CrashPoint(StrEnum):
    AFTER_SHUTDOWN = "after-shutdown"  # the guest is off for its change, the marker is set
    AFTER_RECONFIGURE = "after-reconfigure"  # the vTPM change took, power not yet restored
    BEFORE_STATUS_WRITE = "before-status-write"  # a status document is about to be written


_ARMED = os.environ.get(ENVIRONMENT_VARIABLE, "")


def reached(point: CrashPoint) -> None:
    if point.value == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
