"""A stand-in for the engine: a process that serves vtpm_operator.metrics and calls its functions
as the engine would, on request. Real prometheus-client output over real HTTP, so that a real
Prometheus can scrape it before the engine exists (and the dashboard can be drawn from it).

`python -m testbed.exporter --port P` prints "ready" once it serves /metrics on 127.0.0.1:P, then
reads one JSON object per line on stdin, {"call": "count_drift", "args": [...], "kwargs": {...}},
calls that public function of vtpm_operator.metrics and answers "ok" or "error: ..." on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtpm_operator import metrics

CALLS = {
    "set_build_info",
    "observe_vcenter_call",
    "observe_full_read",
    "observe_change",
    "set_change_queue",
    "set_vcenter",
    "publish_policy",
    "count_drift",
    "count_remediations",
    "count_status_write",
    "forget_policy",
    "forget_vcenter",
}


def handle(line: str) -> str:
    try:
        request = json.loads(line)
        name = request["call"]
        if name not in CALLS:
            return f"error: {name!r} is not one of {sorted(CALLS)}"
        getattr(metrics, name)(*request.get("args", []), **request.get("kwargs", {}))
    except Exception as error:  # report any bad request to the driver and keep serving
        return f"error: {type(error).__name__}: {error}"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    metrics.serve(args.port, args.address)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(handle(line), flush=True)
    return 0


@dataclass
class Exporter:
    """The driver's side: `call("count_drift", "ns", "p", "vc1", "Enforce", 2)`."""

    port: int
    process: subprocess.Popen[str]

    def call(self, name: str, *args: Any, **kwargs: Any) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"call": name, "args": args, "kwargs": kwargs}) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"{name}{args}{kwargs}: {answer or 'the exporter exited'}")


@contextlib.contextmanager
def running_exporter(port: int) -> Iterator[Exporter]:
    """Start the exporter on 127.0.0.1:port; it exits when its stdin closes, else it is stopped by PID."""
    hack = str(Path(__file__).resolve().parent.parent)  # where `testbed` lives
    path = os.pathsep.join(p for p in (hack, os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "testbed.exporter", "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the exporter did not start (exit code {process.wait(timeout=10)})")
        yield Exporter(port, process)
    finally:
        with contextlib.suppress(BrokenPipeError):
            if process.stdin:
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
