#!/usr/bin/env python3
"""Draw deploy/monitoring/grafana-dashboard.json's panels from a real Prometheus' data, as a PNG.

A real Prometheus (Debian's, hack/testbed/prometheus.py) scrapes the exporter process
(hack/testbed/exporter.py), which calls vtpm_operator.metrics as the engine would while a scripted
rollout plays: changes drain a queue, snapshots block VMs and are then removed, two drifts, a vCenter
blip. Each panel's own PromQL is then read back over the run with query_range and drawn with
matplotlib. The run is short, so the panels' range windows are shortened by the same factor (printed
on the picture); nothing else about the queries changes.

    .venv/bin/python hack/render-dashboard.py [--seconds 150] [--out docs/dashboard.png]

Needs matplotlib (`pip install matplotlib`); it is not a dependency of the operator.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))

from testbed.exporter import Exporter, running_exporter  # noqa: E402
from testbed.kube import free_port  # noqa: E402
from testbed.prometheus import Prometheus, ScrapeJob, running_prometheus  # noqa: E402

DASHBOARD = REPO / "deploy" / "monitoring" / "grafana-dashboard.json"
PROD, LAB = "vc-prod", "vc-lab"


@dataclass
class Policy:
    namespace: str
    name: str
    vcenter: str
    mode: str
    compliant: int
    queued: int
    blocked: dict[str, int]
    failed: int = 0
    non_compliant: int = 0  # Audit: what it would change
    in_flight: int = 0

    def publish(self, engine: Exporter) -> None:
        states = {
            "Compliant": self.compliant,
            "Pending": self.queued + self.in_flight,
            "Blocked": sum(self.blocked.values()),
            "Failed": self.failed,
            "NonCompliant": self.non_compliant,
        }
        off = states["Pending"] + states["Blocked"] + self.failed + self.non_compliant
        engine.call(
            "publish_policy", self.namespace, self.name, vcenter=self.vcenter, mode=self.mode, states=states,
            conditions={"Compliant": "False" if off else "True", "Ready": "False" if off else "True"},
            last_sync=time.time(), blocked_reasons=self.blocked,
        )  # fmt: skip


@dataclass
class Rollout:
    """The story the picture tells, one step a second."""

    engine: Exporter
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    policies: list[Policy] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policies = [
            Policy(
                "prod", "windows", PROD, "Enforce", 140, 150, {"HostVersionTooOld": 12, "HasSnapshots": 18}
            ),
            Policy("prod", "linux", PROD, "Enforce", 60, 40, {"GuestOSUnsupported": 4}, failed=1),
            Policy("lab", "preview", LAB, "Audit", 80, 0, {"FirmwareNotEFI": 6}, non_compliant=34),
        ]
        for vcenter, vms in ((PROD, 420), (LAB, 120)):
            self.engine.call("set_vcenter", vcenter, ready=True, vms=vms, lease_held=True)
            self.engine.call("observe_vcenter_call", vcenter, "Login", "success", 0.2)
        self.publish()

    def publish(self) -> None:
        for policy in self.policies:
            policy.publish(self.engine)
        prod = [p for p in self.policies if p.vcenter == PROD]
        self.engine.call(
            "set_change_queue", PROD, sum(p.in_flight for p in prod), sum(p.queued for p in prod)
        )
        self.engine.call("set_change_queue", LAB, 0, 0)

    def step(self, tick: int) -> None:
        self.calls(tick)
        if tick % 30 == 5:
            self.engine.call("observe_full_read", PROD, self.rng.uniform(3.5, 5.5))
            self.engine.call("observe_full_read", LAB, self.rng.uniform(0.6, 1.0))
        blip = 70 <= tick < 80  # vCenter stops answering for a while: nothing new starts
        for policy in self.policies:
            if policy.mode == "Enforce" and not blip:
                self.advance(policy)
        windows, linux = self.policies[0], self.policies[1]
        if tick == 60:  # someone removes vTPMs out of band; Enforce queues them again
            self.drift(windows, 3)
        if tick == 110:
            self.drift(linux, 1)
        if tick == 90:  # the backup snapshots are consolidated: those VMs join the queue
            windows.queued += windows.blocked.pop("HasSnapshots")
        self.publish()

    def advance(self, policy: Policy) -> None:
        finished = min(policy.in_flight, self.rng.randint(0, 3))
        for _ in range(finished):
            self.engine.call("observe_change", policy.vcenter, "Add", "success", self.rng.uniform(25, 70))
            self.engine.call("observe_change", policy.vcenter, "PowerOn", "success", self.rng.uniform(4, 9))
        policy.in_flight -= finished
        policy.compliant += finished
        starting = min(policy.queued, 4 - policy.in_flight)
        policy.queued -= starting
        policy.in_flight += starting

    def drift(self, policy: Policy, vms: int) -> None:
        self.engine.call("count_drift", policy.namespace, policy.name, policy.vcenter, policy.mode, vms)
        policy.compliant -= vms
        policy.queued += vms

    def calls(self, tick: int) -> None:
        call = self.engine.call
        for vcenter in (PROD, LAB):
            call("observe_vcenter_call", vcenter, "WaitForUpdatesEx", "success", self.rng.uniform(0.2, 1.0))
            call(
                "observe_vcenter_call",
                vcenter,
                "RetrievePropertiesEx",
                "success",
                self.rng.uniform(0.02, 0.09),
            )
        call("observe_vcenter_call", PROD, "ReconfigVM_Task", "success", self.rng.uniform(0.4, 1.8))
        if 70 <= tick < 80:
            call("observe_vcenter_call", PROD, "RetrievePropertiesEx", "unreachable", 30.0)
            if tick % 2:
                call("observe_vcenter_call", PROD, "WaitForUpdatesEx", "unreachable", 30.0)
        if tick == 100:
            call("observe_vcenter_call", PROD, "RetrievePropertiesEx", "session_expired", 0.01)


# --- drawing ---------------------------------------------------------------------------------------

# As a reader expects them: compliant green, failed red; the rest by matplotlib's cycle.
STATE_COLOURS = {
    "Compliant": "#56a64b", "Pending": "#3274d9", "Blocked": "#ff9830", "Failed": "#e02f44",
    "NonCompliant": "#a352cc",
}  # fmt: skip
WINDOW = re.compile(r"\[(\d+)([smh])\]")
UNITS = {"s": 1, "m": 60, "h": 3600}


def scaled(expr: str, factor: float) -> str:
    def shorten(match: re.Match[str]) -> str:
        seconds = int(match.group(1)) * UNITS[match.group(2)]
        return f"[{max(2, round(seconds / factor))}s]"

    return WINDOW.sub(shorten, expr.replace("$vcenter", ".*"))


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def draw(prometheus: Prometheus, start: float, end: float, factor: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = (len(panels) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(15, 4.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        defaults = panel["fieldConfig"]["defaults"]
        custom = defaults.get("custom", {})
        series = []
        for target in panel["targets"]:
            for result in prometheus.query_range(scaled(target["expr"], factor), start, end, 1):
                xs = [float(t) - start for t, _ in result["values"]]
                ys = [float(v) for _, v in result["values"]]
                series.append((legend(target["legendFormat"], result["metric"]), xs, ys))
        series.sort(key=lambda s: s[0])
        if custom.get("stacking", {}).get("mode") == "normal" and series:
            common = sorted(set().union(*(s[1] for s in series)))
            stacks = [[dict(zip(s[1], s[2], strict=True)).get(x, 0.0) for x in common] for s in series]
            colours = [STATE_COLOURS.get(s[0]) for s in series]
            ax.stackplot(common, stacks, labels=[s[0] for s in series], alpha=0.85, colors=colours)
        elif custom.get("drawStyle") == "bars":
            for name, xs, ys in series:
                ax.bar(xs, ys, width=1.0, label=name, alpha=0.8)
        else:
            for name, xs, ys in series:
                ax.plot(xs, ys, label=name, linewidth=1.6)
        ax.set_title(panel["title"], loc="left", fontsize=11, fontweight="bold")
        if defaults.get("unit") == "percentunit":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        elif defaults.get("unit") == "s":
            ax.set_ylabel("seconds")
        if "min" in defaults:
            ax.set_ylim(bottom=defaults["min"])
        ax.set_xlim(0, end - start)
        ax.grid(alpha=0.3)
        # Below the plot, as Grafana places it, so that no line hides behind it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.1), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("vtpm-operator — Grafana dashboard panels, drawn from a real Prometheus", fontsize=13)
    figure.text(
        0.5, 0.005,
        f"A {end - start:.0f} s scripted rollout (x: seconds); the panels' range windows shortened "
        f"{factor:g}x to fit it. Data: Prometheus 2.42 scraping vtpm_operator.metrics every second.",
        ha="center", fontsize=8, color="dimgray",
    )  # fmt: skip
    # Fixed spacing (not tight_layout): the legends below the plots must not squeeze the columns.
    figure.subplots_adjust(left=0.05, right=0.98, top=0.95, bottom=0.05, hspace=0.75, wspace=0.14)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=150, help="length of the scripted rollout")
    parser.add_argument("--window-factor", type=float, default=15.0, help="shorten range windows by this")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="render-dashboard-") as work,
        running_exporter(free_port()) as engine,
    ):
        job = ScrapeJob("vtpm-operator", (f"127.0.0.1:{engine.port}",), interval="1s")
        with running_prometheus(Path(work), [job]) as prometheus:
            prometheus.wait_for_targets_up()
            start = time.time()
            rollout = Rollout(engine)
            for tick in range(args.seconds):
                rollout.step(tick)
                time.sleep(max(0.0, start + tick + 1 - time.time()))
            time.sleep(2)  # the last scrape
            draw(prometheus, start, time.time(), args.window_factor, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
