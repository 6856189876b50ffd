"""vtpm-operator run | audit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import durationpy

from vtpm_operator.api import parse_policy
from vtpm_operator.planning import VMState, make_plan
from vtpm_operator.policy import DesiredVTPM, Mode, TagRef
from vtpm_operator.problems import PolicyProblem
from vtpm_operator.vsphere.client import VSphereClient
from vtpm_operator.vsphere.faults import describe
from vtpm_operator.vsphere.session import Credentials, Endpoint, VCenterSession


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

    audit = commands.add_parser("audit", help="one read-only check of a tag selection, without Kubernetes")
    audit.add_argument("--server", required=True, help="vCenter host or host:port")
    audit.add_argument("--username", required=True)
    audit.add_argument(
        "--password-env",
        default="VTPM_PASSWORD",
        help="environment variable holding the password (default %(default)s)",
    )
    audit.add_argument("--ca-file", type=Path, help="CA that signs vCenter's certificate")
    audit.add_argument("--insecure-skip-verify", action="store_true")
    audit.add_argument("--tag", action="append", required=True, metavar="CATEGORY/NAME", type=_tag)
    audit.add_argument("--exclude-tag", action="append", default=[], metavar="CATEGORY/NAME", type=_tag)
    audit.add_argument("--vtpm", choices=[d.value for d in DesiredVTPM], default=DesiredVTPM.PRESENT.value)
    audit.add_argument("--key-provider", default=None)
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")

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


def _run(args: argparse.Namespace) -> int:
    import kopf

    import vtpm_operator.kube.handlers  # noqa: F401  (registers the handlers)
    from vtpm_operator import metrics
    from vtpm_operator.engine.engine import EngineSettings

    kopf.configure(verbose=args.verbose)  # sets up the root logger for our modules too
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    settings = EngineSettings(
        tag_refresh=args.tag_refresh,
        task_timeout=args.task_timeout,
        retry_base=args.retry_base,
        retry_limit=args.retry_limit,
    )
    kopf.run(
        memo=kopf.Memo(
            operator_namespace=args.operator_namespace,
            namespaces=args.namespace,
            engine_settings=settings,
        ),
        standalone=True,
        clusterwide=args.all_namespaces or not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


def _audit_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The VTPMPolicy spec the audit flags stand for (no VCenter object: the flags are the connection)."""
    spec: dict[str, Any] = {
        "vcenterRef": {"name": "audit"},
        "selector": {
            "tags": [{"category": t.category, "name": t.name} for t in args.tag],
            "excludeTags": [{"category": t.category, "name": t.name} for t in args.exclude_tag],
        },
        "vtpm": args.vtpm,
        "mode": Mode.AUDIT.value,
    }
    if args.key_provider:
        spec["keyProvider"] = args.key_provider
    return spec


def _audit(args: argparse.Namespace) -> int:
    """Exit 0 when every selected VM complies, 1 when some do not, 2 when vCenter could not be read."""
    password = os.environ.get(args.password_env)
    if not password:
        print(f"set the password in ${args.password_env}", file=sys.stderr)
        return 2
    try:  # through the API's parser: the same defaults and rules as a VTPMPolicy
        policy = parse_policy(_audit_spec(args))
    except PolicyProblem as problem:
        print(f"{problem.reason}: {problem.message}", file=sys.stderr)
        return 2
    endpoint = Endpoint(
        args.server,
        ca_pem=args.ca_file.read_text() if args.ca_file else None,
        insecure_skip_verify=args.insecure_skip_verify,
    )
    vsphere = VSphereClient(VCenterSession(endpoint, Credentials(args.username, password)))
    try:
        plan = make_plan(vsphere.read_inventory(policy), policy)
    except PolicyProblem as problem:
        print(f"{problem.reason}: {problem.message}", file=sys.stderr)
        return 2
    except Exception as error:  # a vCenter fault or refusal: still "could not be read", not "not compliant"
        print(f"VCenterError: {describe(error)}", file=sys.stderr)
        return 2
    finally:
        vsphere.close()
    rows = sorted(plan.outcomes, key=lambda o: (o.name, o.id))
    if args.json:
        print(
            json.dumps(
                {
                    "vms": [
                        {
                            "name": o.name,
                            "id": o.id,
                            "state": o.state.value,
                            "reasons": list(o.reasons),
                            "message": o.message,
                        }
                        for o in rows
                    ],
                    "notes": [{"reason": n.reason.value, "message": n.message} for n in plan.notes],
                },
                indent=2,
            )
        )
    else:
        print(
            _table(
                ["NAME", "ID", "STATE", "REASONS", "MESSAGE"],
                [[o.name, o.id, o.state.value, ",".join(o.reasons) or "-", o.message or "-"] for o in rows],
            )
        )
        for note in plan.notes:
            print(f"\n{note.reason}: {note.message}")
    return 0 if all(o.state is VMState.COMPLIANT for o in rows) else 1


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
