"""runc for the test node in THIS SANDBOX ONLY: drop a negative oomScoreAdj, then exec the real runc.

kubelet asks for oom_score_adj -998 on every pod sandbox. This sandbox refuses to lower it (no
CAP_SYS_RESOURCE), so runc dies with "failed to update /proc/self/oom_score_adj: Permission
denied", which kubelet reports only as "can't get final child's PID from pipe: EOF". A real node
needs none of this; containerd's config for the test node (hack/testbed/node.py) names this file
as the runc runtime's BinaryName, through a one-line shell wrapper.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

RUNC = "/usr/bin/runc"


def _option(args: list[str], long: str, short: str) -> str | None:
    """The value of ``--long X``, ``--long=X`` or ``-s X`` in runc's arguments, if any."""
    for i, arg in enumerate(args):
        if arg in (long, short) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def _drop_negative_oom_score(process: dict[str, Any]) -> bool:
    score = process.get("oomScoreAdj")
    if isinstance(score, int) and score < 0:
        del process["oomScoreAdj"]
        return True
    return False


def _rewrite(path: Path, spec_of: str | None) -> None:
    """Rewrite a runtime spec (``process`` inside it) or a bare process spec in place."""
    document: dict[str, Any] = json.loads(path.read_text())
    process = document.get(spec_of, {}) if spec_of else document
    if _drop_negative_oom_score(process):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document))
        tmp.replace(path)


def main(args: list[str]) -> None:
    if "create" in args or "run" in args:
        bundle = _option(args, "--bundle", "-b") or "."
        _rewrite(Path(bundle) / "config.json", "process")
    if "exec" in args:
        process_file = _option(args, "--process", "-p")
        if process_file:
            _rewrite(Path(process_file), None)
    os.execv(RUNC, [RUNC, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
