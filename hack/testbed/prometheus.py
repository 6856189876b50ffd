"""A real Prometheus server (Debian's 2.42) for tests and the dashboard picture.

It listens on a free loopback port with its own TSDB directory, scrapes the targets it is given
and loads the shipped rule files; the rule evaluation interval is 1 s by default, so that an
alert's latency is its `for:` plus one scrape plus about a second. Stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.kube import free_port, stop_process

PROMETHEUS = "/usr/bin/prometheus"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API refused a request."""


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape_config: what a ServiceMonitor endpoint becomes in the Prometheus Operator."""

    job: str
    targets: tuple[str, ...]  # host:port
    path: str = "/metrics"
    interval: str = "1s"
    timeout: str | None = None  # Prometheus' default: the interval, at most 10 s
    labels: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        job: dict[str, Any] = {
            "job_name": self.job,
            "metrics_path": self.path,
            "scrape_interval": self.interval,
            "static_configs": [{"targets": list(self.targets), "labels": self.labels}],
        }
        if self.timeout:
            job["scrape_timeout"] = self.timeout
        return job


@dataclass(frozen=True)
class Prometheus:
    url: str
    pid: int
    workdir: Path

    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on an error reply."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            reply = json.loads(error.read() or b"{}")
        if reply.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant vector: [{"metric": {...labels}, "value": [t, "v"]}, ...]."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{promql!r} gave a {data['resultType']}, not an instant vector")
        return list(data["result"])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' own view: [{"labels", "annotations", "state": pending|firing, "activeAt"}]."""
        return list(self.api("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not up after {timeout} s: {targets}")
            time.sleep(0.2)


def write_config(path: Path, jobs: Sequence[ScrapeJob], rule_files: Sequence[Path], evaluation: str) -> None:
    config = {
        "global": {"evaluation_interval": evaluation, "scrape_interval": evaluation},
        "rule_files": [str(p.resolve()) for p in rule_files],
        "scrape_configs": [job.config() for job in jobs],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextlib.contextmanager
def running_prometheus(
    workdir: Path,
    jobs: Sequence[ScrapeJob],
    rule_files: Sequence[Path] = (),
    *,
    evaluation_interval: str = "1s",
    port: int | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Prometheus]:
    """Start Prometheus on 127.0.0.1 (a free port unless given), stop it by PID on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(config, jobs, rule_files, evaluation_interval)
    port = port or free_port()
    log_path = workdir / "prometheus.log"
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        server = Prometheus(f"http://127.0.0.1:{port}", proc.pid, workdir)
        _wait_ready(server, proc, log_path, start_timeout)
        yield server
    finally:
        stop_process(proc)


def _wait_ready(server: Prometheus, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as ready,
        ):
            if ready.status == 200:
                return
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus not ready after {timeout} s (log: {log_path})")
        time.sleep(0.2)
