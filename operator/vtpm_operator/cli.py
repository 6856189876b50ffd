"""vtpm-operator run | audit."""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import durationpy

from vtpm_operator import logs
from vtpm_operator.api import parse_policy
from vtpm_operator.connection import Credentials, Endpoint
from vtpm_operator.facts import Inventory
from vtpm_operator.planning import Plan, VMState, make_plan, pending
from vtpm_operator.policy import DesiredVTPM, Mode, Policy, TagRef
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.session import VCenterSession

if TYPE_CHECKING:  # imported where used: `audit` needs neither the engine nor the Kubernetes side
    from vtpm_operator.engine.engine import EngineSettings
    from vtpm_operator.kube.runtime import Runtime

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vtpm-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch policies in every namespace"
    )
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    run.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics-port", type=int, default=9100, help="Prometheus port; 0 turns it off")
    run.add_argument("--metrics-address", default="0.0.0.0")
    run.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE") or "vtpm-operator",
        help="where the VCenters' Secrets live (default: $POD_NAMESPACE, else vtpm-operator)",
    )
    run.add_argument("--task-timeout", type=_duration, default="15m", help="a task past it is cancelled")
    run.add_argument(
        "--tag-refresh", type=_duration, default="10s", help="how often tag associations are read"
    )
    run.add_argument(
        "--retry-base", type=_duration, default="30s", help="wait after a VM's first failed change"
    )
    run.add_argument("--retry-limit", type=int, default=3, help="refusals in a row before RetriesExhausted")
    run.add_argument("--verbose", "-v", action="store_true")
    run.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text lines, or one JSON object per line (Kopf's own lines too); default %(default)s",
    )

    _audit_arguments(
        commands.add_parser(
            "audit",
            help="a read-only report of a tag selection or of a policy's, straight from vCenter",
            description="Exit code: 0 every selected VM complies, 1 some do not, 2 nothing could be read.",
        )
    )

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _audit(args)


def _tag(text: str) -> TagRef:
    category, sep, name = text.partition("/")
    if not sep or not category or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not CATEGORY/NAME")
    return TagRef(category, name)


def _duration(text: str) -> float:
    try:
        return float(durationpy.from_str(text).total_seconds())
    except Exception as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s or 15m") from error


def _freeze_heap() -> None:
    """Leave every object that exists now out of the garbage collector's sight. Kopf, the
    Kubernetes client, pydantic and pyVmomi leave a heap of modules, classes and functions that
    live as long as the process, and each full collection walked all of it: in a 10k-VM fill
    (captured answers, these packages imported) six full collections took 0.5 s, and 0.05 s
    with them frozen. Objects dropped later are still freed by their reference counts; only a
    reference cycle among the objects frozen now would never be collected, a cost bounded by
    what exists at this moment."""
    gc.freeze()


def _run(args: argparse.Namespace) -> int:
    from vtpm_operator import metrics

    logs.configure(args.log_format, verbose=args.verbose)  # Kopf's lines and ours, in one format
    metrics.set_build_info(importlib.metadata.version("vtpm-operator"))
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    settings = _engine_settings(args)
    _freeze_heap()
    # SIGTERM waits while the runtime starts, and then, until Kopf handles it, ends the process
    # through the finally below: the same drain and lease release as Kopf's cleanup.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    memo: dict[str, Any] = {"runtime": _start_before_kopf(args, settings)}
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if memo["runtime"] is not None and not memo["runtime"].settle():
            log.info("loading Kopf before the first statuses are all written (see Runtime.settle)")
        _run_kopf(args, settings, memo)
    finally:  # Kopf's cleanup may not have run (a SIGTERM during its startup, or a failure)
        started: Runtime | None = memo["runtime"]
        if started is not None:
            started.stop()
    return 0


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    from vtpm_operator.engine.engine import EngineSettings

    return EngineSettings(
        tag_refresh=args.tag_refresh,
        task_timeout=args.task_timeout,
        retry_base=args.retry_base,
        retry_limit=args.retry_limit,
    )


def _start_before_kopf(args: argparse.Namespace, settings: EngineSettings) -> Runtime | None:
    """The engines read vCenter while Kopf loads and starts (kube/runtime.py); None when the API
    server does not answer, for Kopf's startup handler to try again with Kopf's retries."""
    from vtpm_operator.kube import runtime

    try:
        return runtime.start(args.operator_namespace, args.namespace, settings)
    except runtime.NOT_YET as error:
        log.warning("cannot list VCenters and policies yet (%s); trying again once Kopf runs", error)
        return None


def _interrupted(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the drain short
    raise SystemExit(128 + signum)


def _run_kopf(args: argparse.Namespace, settings: EngineSettings, memo: dict[str, Any]) -> None:
    """Kopf's handlers hand events to memo["runtime"]; its startup handler starts one when there
    is none yet, and it is handed back in `memo`, whatever ends Kopf."""
    import kopf

    import vtpm_operator.kube.handlers  # noqa: F401  (registers the handlers)

    _freeze_heap()  # Kopf's and aiohttp's modules too
    shared = kopf.Memo(
        runtime=memo["runtime"],
        operator_namespace=args.operator_namespace,
        namespaces=args.namespace,
        engine_settings=settings,
    )
    try:
        kopf.run(
            memo=shared,
            standalone=True,
            clusterwide=args.all_namespaces or not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
        )
    finally:
        memo["runtime"] = shared.get("runtime")


# --- audit ---------------------------------------------------------------------------------------
# A full report needs no storage and no cluster rights beyond `get` on one policy: the verdicts are
# computed here, straight from vCenter, with the caller's own vCenter credentials.

POLICY_API = ("vtpm-operator.io", "v1alpha1", "vtpmpolicies")  # group, version, plural
CSV_COLUMNS = (
    "vcenter", "vm_name", "vm_id", "state", "reasons", "message",
    "host", "guest_os", "hardware_version", "firmware", "power_state",
)  # fmt: skip
PROGRESS_SECONDS = 1.0


def _audit_arguments(audit: argparse.ArgumentParser) -> None:
    audit.add_argument("--server", required=True, help="vCenter host or host:port")
    audit.add_argument("--username", required=True)
    audit.add_argument(
        "--password-env",
        default="VTPM_PASSWORD",
        help="environment variable holding the password (default %(default)s)",
    )
    audit.add_argument("--ca-file", type=Path, help="CA that signs vCenter's certificate")
    audit.add_argument("--insecure-skip-verify", action="store_true")
    audit.add_argument(
        "--from-policy",
        metavar="NAMESPACE/NAME",
        help="take the selector, vtpm, keyProvider and allowRemoval from this VTPMPolicy (needs only get)",
    )
    audit.add_argument("--kubeconfig", type=Path, help="for --from-policy; default $KUBECONFIG or in-cluster")
    audit.add_argument("--tag", action="append", default=[], metavar="CATEGORY/NAME", type=_tag)
    audit.add_argument("--exclude-tag", action="append", default=[], metavar="CATEGORY/NAME", type=_tag)
    audit.add_argument("--vtpm", choices=[d.value for d in DesiredVTPM], default=None)
    audit.add_argument("--key-provider", default=None)
    audit.add_argument("--allow-removal", action="store_true", default=None)
    audit.add_argument("--output", "-o", choices=("table", "json", "csv"), default="table")
    audit.add_argument("--json", action="store_const", const="json", dest="output", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class AuditSelection:
    tags: tuple[TagRef, ...]
    exclude_tags: tuple[TagRef, ...]
    vtpm: DesiredVTPM
    key_provider: str | None
    allow_removal: bool


@dataclass(frozen=True)
class ReportRow:
    vcenter: str
    vm_name: str
    vm_id: str
    state: str
    reasons: tuple[str, ...]
    message: str
    host: str
    guest_os: str
    hardware_version: str
    firmware: str
    power_state: str


class AuditError(Exception):
    """The selection could not be had: a bad flag combination or an unreadable policy (exit 2)."""


def _audit(args: argparse.Namespace) -> int:
    """Exit 0 when every selected VM complies, 1 when some do not, 2 when vCenter could not be read."""
    password = os.environ.get(args.password_env)
    if not password:
        print(f"set the password in ${args.password_env}", file=sys.stderr)
        return 2
    try:
        selection = _selection_from_policy(args) if args.from_policy else _selection_from_flags(args)
        policy = _audit_policy(selection)
    except AuditError as error:
        print(f"audit: {error}", file=sys.stderr)
        return 2
    endpoint = Endpoint(
        args.server,
        ca_pem=args.ca_file.read_text() if args.ca_file else None,
        insecure_skip_verify=args.insecure_skip_verify,
    )
    vsphere = VSphereClient(VCenterSession(endpoint, Credentials(args.username, password)))
    started = time.monotonic()
    try:
        with _progress(f"reading the inventory of {args.server}", sys.stderr):
            inventory = vsphere.read_inventory(policy)
        plan = make_plan(inventory, policy)
    except PolicyProblem as problem:
        print(f"{problem.reason}: {problem.message}", file=sys.stderr)
        return 2
    except Exception as error:  # a vCenter fault or refusal: still "could not be read", not "not compliant"
        print(f"VCenterError: {describe(error)}", file=sys.stderr)
        return 2
    finally:
        vsphere.close()
    rows = _report_rows(args.server, inventory, plan)
    print(
        f"audit: {len(rows)} VMs selected, {inventory.excluded} excluded,"
        f" read in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    _print_report(args.output, rows, plan, sys.stdout)
    return 0 if all(row.state == VMState.COMPLIANT for row in rows) else 1


def _audit_policy(selection: AuditSelection) -> Policy:
    """Audit mode whatever the policy says: the report changes nothing. Built through the API's
    parser, so that its defaults and rules are a VTPMPolicy's (the flags are the connection)."""
    spec: dict[str, Any] = {
        "vcenterRef": {"name": "audit"},
        "selector": {
            "tags": [{"category": t.category, "name": t.name} for t in selection.tags],
            "excludeTags": [{"category": t.category, "name": t.name} for t in selection.exclude_tags],
        },
        "vtpm": selection.vtpm.value,
        "allowRemoval": selection.allow_removal,
        "mode": Mode.AUDIT.value,
    }
    if selection.key_provider:
        spec["keyProvider"] = selection.key_provider
    try:
        return parse_policy(spec)
    except PolicyProblem as problem:
        raise AuditError(f"{problem.reason}: {problem.message}") from None


def _selection_from_flags(args: argparse.Namespace) -> AuditSelection:
    if not args.tag:
        raise AuditError("give --tag (at least one) or --from-policy NAMESPACE/NAME")
    return AuditSelection(
        tags=tuple(sorted(set(args.tag))),
        exclude_tags=tuple(sorted(set(args.exclude_tag))),
        vtpm=DesiredVTPM(args.vtpm or DesiredVTPM.PRESENT),
        key_provider=args.key_provider,
        allow_removal=bool(args.allow_removal),
    )


def _selection_from_policy(args: argparse.Namespace) -> AuditSelection:
    clashing = [
        flag
        for flag, value in (
            ("--tag", args.tag),
            ("--exclude-tag", args.exclude_tag),
            ("--vtpm", args.vtpm),
            ("--key-provider", args.key_provider),
            ("--allow-removal", args.allow_removal),
        )
        if value
    ]
    if clashing:
        raise AuditError(f"--from-policy takes the selection from the policy; drop {', '.join(clashing)}")
    namespace, _, name = args.from_policy.partition("/")
    if not namespace or not name or "/" in name:
        raise AuditError(f"--from-policy {args.from_policy!r} is not NAMESPACE/NAME")
    spec = _read_policy_spec(namespace, name, args.kubeconfig)
    try:
        return _selection_from_spec(spec)
    except (TypeError, ValueError) as error:
        raise AuditError(f"policy {namespace}/{name}: {error}") from None


def _read_policy_spec(namespace: str, name: str, kubeconfig: Path | None) -> Mapping[str, Any]:
    """One `get` on the policy, as whoever the kubeconfig (or the pod's ServiceAccount) names."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        # The kubernetes client is untyped; these two calls only load a configuration.
        api = config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    group, version, plural = POLICY_API
    try:
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, namespace, plural, name
        )
    except ApiException as error:
        what = {403: "may not be read with these credentials", 404: "was not found"}.get(
            error.status, f"could not be read ({error.status} {error.reason})"
        )
        raise AuditError(f"VTPMPolicy {namespace}/{name} {what}") from None
    finally:
        api.close()
    spec = body.get("spec") if isinstance(body, Mapping) else None
    if not isinstance(spec, Mapping):
        raise AuditError(f"VTPMPolicy {namespace}/{name} has no spec")
    return spec


def _selection_from_spec(spec: Mapping[str, Any]) -> AuditSelection:
    """Only the fields a verdict needs, read defensively: the rest of the spec (where the vCenter
    connection lives, power settings) may change shape without touching the report."""
    selector = spec.get("selector")
    if not isinstance(selector, Mapping):
        raise ValueError("spec.selector is missing")
    tags = _spec_tags(selector.get("tags"), "spec.selector.tags")
    if not tags:
        raise ValueError("spec.selector.tags is empty")
    key_provider = spec.get("keyProvider")
    allow_removal = spec.get("allowRemoval", False)
    if not isinstance(allow_removal, bool):
        raise ValueError(f"spec.allowRemoval must be true or false, not {allow_removal!r}")
    return AuditSelection(
        tags=tags,
        exclude_tags=_spec_tags(selector.get("excludeTags"), "spec.selector.excludeTags"),
        vtpm=DesiredVTPM(spec.get("vtpm", DesiredVTPM.PRESENT)),
        key_provider=key_provider if isinstance(key_provider, str) and key_provider else None,
        allow_removal=allow_removal,
    )


def _spec_tags(items: Any, where: str) -> tuple[TagRef, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list")
    tags = set()
    for item in items:
        if not isinstance(item, Mapping) or not item.get("category") or not item.get("name"):
            raise ValueError(f"{where} holds {item!r}, not {{category, name}}")
        tags.add(TagRef(str(item["category"]), str(item["name"])))
    return tuple(sorted(tags))


@contextmanager
def _progress(what: str, stream: TextIO) -> Iterator[None]:
    """A line on `stream` now and every second until the block ends (in place on a terminal)."""
    in_place = stream.isatty()
    started = time.monotonic()
    done = threading.Event()

    def say(text: str) -> None:
        print(f"\raudit: {text}" if in_place else f"audit: {text}", end="" if in_place else "\n", file=stream)
        stream.flush()

    def tick() -> None:
        while not done.wait(PROGRESS_SECONDS):
            say(f"{what}... {time.monotonic() - started:.0f} s")

    say(f"{what}...")
    ticker = threading.Thread(target=tick, name="audit-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        if in_place:
            print(file=stream)


def _report_rows(server: str, inventory: Inventory, plan: Plan) -> list[ReportRow]:
    facts = {vm.id: vm for vm in inventory.vms}
    outcomes = [*plan.outcomes, *(pending(change) for change in plan.changes)]
    rows = []
    for outcome in sorted(outcomes, key=lambda o: (o.name, o.id)):
        vm = facts.get(outcome.id)
        host = inventory.hosts.get(vm.host_id) if vm and vm.host_id else None
        rows.append(
            ReportRow(
                vcenter=server,
                vm_name=outcome.name,
                vm_id=outcome.id,
                state=outcome.state.value,
                reasons=tuple(outcome.reasons),
                message=outcome.message,
                host=host.name if host else "",
                guest_os=vm.guest_id if vm else "",
                hardware_version=f"vmx-{vm.hardware_version}" if vm else "",
                firmware=vm.firmware if vm else "",
                power_state=vm.power_state.value if vm else "",
            )
        )
    return rows


def _print_report(output: str, rows: list[ReportRow], plan: Plan, stream: TextIO) -> None:
    if output == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [";".join(value) if isinstance(value, tuple) else value for value in _fields(row)]
            )
    elif output == "json":
        report = {
            "vms": [{"name": r.vm_name, "id": r.vm_id, **_json_fields(r)} for r in rows],
            "notes": [{"reason": n.reason.value, "message": n.message} for n in plan.notes],
        }
        print(json.dumps(report, indent=2), file=stream)
    else:
        header = ["NAME", "ID", "STATE", "REASONS", "MESSAGE"]
        cells = [[r.vm_name, r.vm_id, r.state, ",".join(r.reasons) or "-", r.message or "-"] for r in rows]
        print(_table(header, cells), file=stream)
        for note in plan.notes:
            print(f"\n{note.reason}: {note.message}", file=stream)


def _fields(row: ReportRow) -> list[Any]:
    return [getattr(row, column) for column in CSV_COLUMNS]


def _json_fields(row: ReportRow) -> dict[str, Any]:
    fields = dict(zip(CSV_COLUMNS, _fields(row), strict=True))
    del fields["vm_name"], fields["vm_id"]
    fields["reasons"] = list(row.reasons)
    return fields


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
