"""Bad input gets a clear answer, and nothing else happens: one table, every server it applies to.

Each row is one bad input with its expected outcome:
- ``on_136``: admission on apiextensions-apiserver 1.36 (CEL rules judged; no Secrets API there: None);
- ``on_120``: admission on kube-apiserver 1.20 (structural schema only, no CEL);
- ``parser``: the operator's own pure verdict (parse_policy / parse_vcenter / decode_secret /
  decode_ca), which is what the operator acts on for whatever admission let through;
- ``operator_on_120``: what the running operator must show on 1.20 for that input (a policy
  Stalled with this reason, its message naming the field or key): for the e2e suite, which creates
  the row's objects next to a working setup. None where 1.20 refuses the input at admission.
"""

from __future__ import annotations

import base64
import copy
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from vtpm_operator.api import parse_policy, parse_vcenter
from vtpm_operator.connection import decode_ca, decode_secret
from vtpm_operator.problems import PolicyProblem

GROUP, VERSION = "vtpm-operator.io", "v1alpha1"
Kind = Literal["VTPMPolicy", "VCenter", "Secret", "CASecret"]


@dataclass(frozen=True)
class Accepted:
    """Admission lets it in."""


@dataclass(frozen=True)
class Refused:
    """Admission refuses it (422), and its message holds this text (the field, or the CEL rule's message)."""

    says: str


@dataclass(frozen=True)
class Verdict:
    """The operator's answer: this reason, Stalled or not, with a message naming this field or key."""

    reason: str
    names: str
    stalled: bool = True


@dataclass(frozen=True)
class BadInput:
    id: str
    kind: Kind
    body: Mapping[str, Any]  # a spec, or for Secrets their data as raw bytes
    on_136: Accepted | Refused | None
    on_120: Accepted | Refused
    parser: Verdict | None  # None: the parser accepts it (a later stage must answer)
    operator_on_120: Verdict | None


TAG = {"category": "security", "name": "vtpm-required"}
OTHER_TAG = {"category": "security", "name": "other"}
POLICY: dict[str, Any] = {"vcenterRef": {"name": "vc-prod"}, "selector": {"tags": [TAG]}}
VCENTER: dict[str, Any] = {"server": "vc.example.com", "credentialsSecretRef": {"name": "vc-creds"}}
# Values unlike any word of a message, so that a leaked fragment is never taken for wording.
GOOD_CREDENTIALS = {"username": b"svc-vtpm@vsphere.local", "password": b"Qx7!Corr3ct-Horse"}


def changed(base: Mapping[str, Any], **paths: Any) -> dict[str, Any]:
    """A copy of base with values set by dotted path (powerPolicy__shutdownTimeout: nested)."""
    result = copy.deepcopy(dict(base))
    for path, value in paths.items():
        *parents, leaf = path.split("__")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return result


def spec_row(
    id_: str,
    kind: Kind,
    body: Mapping[str, Any],
    on_136: Accepted | Refused,
    on_120: Accepted | Refused,
    field: str,
) -> BadInput:
    """A spec the parser refuses as InvalidSpec naming field; the operator shows that when 1.20 admits it."""
    verdict = Verdict("InvalidSpec", field)
    return BadInput(
        id_, kind, body, on_136, on_120, verdict, verdict if isinstance(on_120, Accepted) else None
    )


def secret_row(id_: str, kind: Kind, data: Mapping[str, bytes], key: str) -> BadInput:
    """Secret data that any server admits, and the operator refuses as InvalidSecret naming the key."""
    verdict = Verdict("InvalidSecret", key)
    return BadInput(id_, kind, data, None, Accepted(), verdict, verdict)


CEL_DURATION = "must be between 10s and 24h"
DER_CERT = bytes.fromhex("308201e23082014ba003020102020900") + b"\x00" * 32
PEM_GARBAGE = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"

ROWS: list[BadInput] = [
    # --- VCenter.spec.server
    spec_row(
        "server-empty-port",
        "VCenter",
        changed(VCENTER, server="vc:"),
        Refused("spec.server"),
        Refused("spec.server"),
        "spec.server",
    ),
    spec_row(
        "server-port-99999",
        "VCenter",
        changed(VCENTER, server="vc:99999"),
        Refused("spec.server: the port must be between 1 and 65535"),
        Accepted(),
        "spec.server",
    ),
    spec_row(
        "server-port-0",
        "VCenter",
        changed(VCENTER, server="vc:0"),
        Refused("spec.server: the port must be between 1 and 65535"),
        Accepted(),
        "spec.server",
    ),
    spec_row(
        "server-bare-ipv6",
        "VCenter",
        changed(VCENTER, server="fe80::1"),
        Refused("spec.server"),
        Refused("spec.server"),
        "spec.server",
    ),
    spec_row(
        "server-bare-ipv6-port",
        "VCenter",
        changed(VCENTER, server="2001:db8::1:443"),
        Refused("spec.server"),
        Refused("spec.server"),
        "spec.server",
    ),
    spec_row(
        "server-url",
        "VCenter",
        changed(VCENTER, server="https://vc.example.com/sdk"),
        Refused("spec.server"),
        Refused("spec.server"),
        "spec.server",
    ),
    spec_row(
        "server-too-long",
        "VCenter",
        changed(VCENTER, server="v" * 256),
        Refused("spec.server"),
        Refused("spec.server"),
        "spec.server",
    ),
    # --- VCenter: TLS, references, switches, bounds
    spec_row(
        "insecure-with-ca",
        "VCenter",
        changed(VCENTER, insecureSkipVerify=True, caSecretRef={"name": "vc-ca"}),
        Refused("spec.insecureSkipVerify must not be true when spec.caSecretRef is set"),
        Accepted(),
        "spec.insecureSkipVerify",
    ),
    spec_row(
        "insecure-string",
        "VCenter",
        changed(VCENTER, insecureSkipVerify="true"),
        Refused("spec.insecureSkipVerify"),
        Refused("spec.insecureSkipVerify"),
        "spec.insecureSkipVerify",
    ),
    spec_row(
        "vc-allow-removal-string",
        "VCenter",
        changed(VCENTER, allowRemoval="false"),
        Refused("spec.allowRemoval"),
        Refused("spec.allowRemoval"),
        "spec.allowRemoval",
    ),
    spec_row(
        "credentials-ref-missing",
        "VCenter",
        {"server": "vc.example.com"},
        Refused("spec.credentialsSecretRef"),
        Refused("spec.credentialsSecretRef"),
        "spec.credentialsSecretRef",
    ),
    spec_row(
        "ca-ref-bad-name",
        "VCenter",
        changed(VCENTER, caSecretRef={"name": "Vc_CA"}),
        Refused("spec.caSecretRef.name"),
        Refused("spec.caSecretRef.name"),
        "spec.caSecretRef.name",
    ),
    spec_row(
        "max-changes-0",
        "VCenter",
        changed(VCENTER, maxConcurrentChanges=0),
        Refused("spec.maxConcurrentChanges"),
        Refused("spec.maxConcurrentChanges"),
        "spec.maxConcurrentChanges",
    ),
    spec_row(
        "max-changes-65",
        "VCenter",
        changed(VCENTER, maxConcurrentChanges=65),
        Refused("spec.maxConcurrentChanges"),
        Refused("spec.maxConcurrentChanges"),
        "spec.maxConcurrentChanges",
    ),
    spec_row(
        "namespace-name-invalid",
        "VCenter",
        changed(VCENTER, allowedNamespaces={"names": ["Team_A"]}),
        Refused("spec.allowedNamespaces.names[0]"),
        Refused("spec.allowedNamespaces.names"),  # 1.20 names no list index
        "spec.allowedNamespaces.names[0]",
    ),
    spec_row(
        "selector-in-without-values",
        "VCenter",
        changed(
            VCENTER, allowedNamespaces={"selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}
        ),
        Refused("values must be non-empty for In and NotIn"),
        Accepted(),
        "spec.allowedNamespaces.selector.matchExpressions[0].values",
    ),
    spec_row(
        "selector-operator-unknown",
        "VCenter",
        changed(
            VCENTER,
            allowedNamespaces={"selector": {"matchExpressions": [{"key": "tier", "operator": "Has"}]}},
        ),
        Refused("spec.allowedNamespaces.selector.matchExpressions[0].operator"),
        Refused("spec.allowedNamespaces.selector.matchExpressions.operator"),  # 1.20 names no list index
        "spec.allowedNamespaces.selector.matchExpressions[0].operator",
    ),
    # --- VTPMPolicy: the connection that moved
    spec_row(
        "old-inline-vcenter",
        "VTPMPolicy",
        {"vcenter": {"server": "vc", "credentialsSecret": "c"}, "selector": {"tags": [TAG]}},
        Refused("spec.vcenterRef"),
        Refused("spec.vcenterRef"),
        "spec.vcenter",
    ),
    spec_row(
        "old-inline-vcenter-and-ref",
        "VTPMPolicy",
        changed(POLICY, vcenter={"server": "vc"}),
        Refused("spec.vcenter: removed"),
        Accepted(),
        "spec.vcenter",
    ),
    spec_row(
        "vcenter-ref-bad-name",
        "VTPMPolicy",
        changed(POLICY, vcenterRef={"name": "VC Prod"}),
        Refused("spec.vcenterRef.name"),
        Refused("spec.vcenterRef.name"),
        "spec.vcenterRef.name",
    ),
    spec_row(
        "vcenter-ref-empty",
        "VTPMPolicy",
        changed(POLICY, vcenterRef={}),
        Refused("spec.vcenterRef.name"),
        Refused("spec.vcenterRef.name"),
        "spec.vcenterRef.name",
    ),
    # --- VTPMPolicy: durations
    spec_row(
        "resync-0s",
        "VTPMPolicy",
        changed(POLICY, resyncPeriod="0s"),
        Refused(f"spec.resyncPeriod {CEL_DURATION}"),
        Accepted(),
        "spec.resyncPeriod",
    ),
    spec_row(
        "resync-9s",
        "VTPMPolicy",
        changed(POLICY, resyncPeriod="9s"),
        Refused(f"spec.resyncPeriod {CEL_DURATION}"),
        Accepted(),
        "spec.resyncPeriod",
    ),
    spec_row(
        "resync-1000h",
        "VTPMPolicy",
        changed(POLICY, resyncPeriod="1000h"),
        Refused(f"spec.resyncPeriod {CEL_DURATION}"),
        Accepted(),
        "spec.resyncPeriod",
    ),
    spec_row(
        "resync-no-unit",
        "VTPMPolicy",
        changed(POLICY, resyncPeriod="300"),
        Refused("spec.resyncPeriod"),
        Refused("spec.resyncPeriod"),
        "spec.resyncPeriod",
    ),
    spec_row(
        "resync-words",
        "VTPMPolicy",
        changed(POLICY, resyncPeriod="5 minutes"),
        Refused("spec.resyncPeriod"),
        Refused("spec.resyncPeriod"),
        "spec.resyncPeriod",
    ),
    spec_row(
        "shutdown-100000h",
        "VTPMPolicy",
        changed(POLICY, powerPolicy__shutdownTimeout="100000h"),
        Refused(f"spec.powerPolicy.shutdownTimeout {CEL_DURATION}"),
        Accepted(),
        "spec.powerPolicy.shutdownTimeout",
    ),
    spec_row(
        "shutdown-0s",
        "VTPMPolicy",
        changed(POLICY, powerPolicy__shutdownTimeout="0s"),
        Refused(f"spec.powerPolicy.shutdownTimeout {CEL_DURATION}"),
        Accepted(),
        "spec.powerPolicy.shutdownTimeout",
    ),
    spec_row(
        "shutdown-overflow",
        "VTPMPolicy",
        changed(POLICY, powerPolicy__shutdownTimeout="99999999999999999999h"),
        Refused("spec.powerPolicy.shutdownTimeout"),
        Accepted(),
        "spec.powerPolicy.shutdownTimeout",
    ),
    # --- VTPMPolicy: tags
    spec_row(
        "tag-in-both",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [TAG], "excludeTags": [TAG]}),
        Refused("spec.selector.excludeTags must not hold a tag that spec.selector.tags holds"),
        Accepted(),
        "spec.selector.excludeTags",
    ),
    spec_row(
        "tags-duplicate",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [TAG, TAG]}),
        Refused("spec.selector.tags[1]: Duplicate value"),
        Refused("spec.selector.tags[1]: Duplicate value"),
        "spec.selector.tags",
    ),
    spec_row(
        "exclude-tags-duplicate",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [TAG], "excludeTags": [OTHER_TAG, OTHER_TAG]}),
        Refused("spec.selector.excludeTags[1]: Duplicate value"),
        Refused("spec.selector.excludeTags[1]: Duplicate value"),
        "spec.selector.excludeTags",
    ),
    spec_row(
        "tags-empty",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": []}),
        Refused("spec.selector.tags"),
        Refused("spec.selector.tags"),
        "spec.selector.tags",
    ),
    spec_row(
        "tags-33",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [{"category": "c", "name": f"t{i}"} for i in range(33)]}),
        Refused("spec.selector.tags"),
        Refused("spec.selector.tags"),
        "spec.selector.tags",
    ),
    spec_row(
        "tag-without-name",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [{"category": "security"}]}),
        Refused("spec.selector.tags[0].name"),
        Refused("spec.selector.tags.name"),  # 1.20 names no list index
        "spec.selector.tags[0].name",
    ),
    spec_row(
        "tag-category-257",
        "VTPMPolicy",
        changed(POLICY, selector={"tags": [{"category": "c" * 257, "name": "t"}]}),
        Refused("spec.selector.tags[0].category"),
        Refused("spec.selector.tags.category"),  # 1.20 names no list index
        "spec.selector.tags[0].category",
    ),
    # --- VTPMPolicy: enums, booleans, bounds
    spec_row(
        "vtpm-lowercase",
        "VTPMPolicy",
        changed(POLICY, vtpm="present"),
        Refused("spec.vtpm"),
        Refused("spec.vtpm"),
        "spec.vtpm",
    ),
    spec_row(
        "mode-unknown",
        "VTPMPolicy",
        changed(POLICY, mode="DryRun"),
        Refused("spec.mode"),
        Refused("spec.mode"),
        "spec.mode",
    ),
    spec_row(
        "power-action-unknown",
        "VTPMPolicy",
        changed(POLICY, powerPolicy__action="Reboot"),
        Refused("spec.powerPolicy.action"),
        Refused("spec.powerPolicy.action"),
        "spec.powerPolicy.action",
    ),
    spec_row(
        "allow-removal-string",
        "VTPMPolicy",
        changed(POLICY, allowRemoval="false"),
        Refused("spec.allowRemoval"),
        Refused("spec.allowRemoval"),
        "spec.allowRemoval",
    ),
    spec_row(
        "force-power-off-string",
        "VTPMPolicy",
        changed(POLICY, powerPolicy__forcePowerOff="false"),
        Refused("spec.powerPolicy.forcePowerOff"),
        Refused("spec.powerPolicy.forcePowerOff"),
        "spec.powerPolicy.forcePowerOff",
    ),
    spec_row(
        "max-concurrent-0",
        "VTPMPolicy",
        changed(POLICY, maxConcurrent=0),
        Refused("spec.maxConcurrent"),
        Refused("spec.maxConcurrent"),
        "spec.maxConcurrent",
    ),
    spec_row(
        "max-concurrent-string",
        "VTPMPolicy",
        changed(POLICY, maxConcurrent="4"),
        Refused("spec.maxConcurrent"),
        Refused("spec.maxConcurrent"),
        "spec.maxConcurrent",
    ),
    spec_row(
        "key-provider-256",
        "VTPMPolicy",
        changed(POLICY, keyProvider="k" * 256),
        Refused("spec.keyProvider"),
        Refused("spec.keyProvider"),
        "spec.keyProvider",
    ),
    # Well-formed, but no such key provider in vCenter: only the engine can tell (KeyProviderMissing).
    BadInput(
        "key-provider-unknown",
        "VTPMPolicy",
        changed(POLICY, keyProvider="kp-nowhere"),
        Accepted(),
        Accepted(),
        None,
        Verdict("KeyProviderMissing", "kp-nowhere"),
    ),
    # --- Secrets (operator's namespace): any server admits the bytes; the operator must answer
    secret_row("password-missing", "Secret", {"username": GOOD_CREDENTIALS["username"]}, "password"),
    secret_row("username-missing", "Secret", {"password": GOOD_CREDENTIALS["password"]}, "username"),
    secret_row("password-empty", "Secret", {**GOOD_CREDENTIALS, "password": b""}, "password"),
    secret_row(
        "password-not-utf8",
        "Secret",
        {**GOOD_CREDENTIALS, "password": b"Qx7!Corr3ct-\xff\xfeHorse"},
        "password",
    ),
    secret_row(
        "password-trailing-newline",
        "Secret",
        {**GOOD_CREDENTIALS, "password": b"Qx7!Corr3ct-Horse\n"},
        "password",
    ),
    secret_row(
        "username-trailing-newline",
        "Secret",
        {**GOOD_CREDENTIALS, "username": b"svc-vtpm@vsphere.local\r\n"},
        "username",
    ),
    secret_row("ca-missing-key", "CASecret", {"ca.pem": b"-----BEGIN CERTIFICATE-----"}, "ca.crt"),
    secret_row("ca-garbage", "CASecret", {"ca.crt": b"zq9-GARBAGE-xy7 !!"}, "ca.crt"),
    secret_row("ca-der", "CASecret", {"ca.crt": DER_CERT}, "ca.crt"),
    secret_row("ca-pem-garbage", "CASecret", {"ca.crt": PEM_GARBAGE}, "ca.crt"),
]
# What the messages must say beyond the key, where the row's fault has a name of its own.
SECRET_WORDING = {
    "password-trailing-newline": "newline",
    "username-trailing-newline": "newline",
    "password-not-utf8": "UTF-8",
    "password-empty": "empty",
    "password-missing": "missing",
    "ca-der": "DER",
}
BY_ID = {row.id: row for row in ROWS}


def test_the_table_has_at_least_30_rows_with_unique_ids() -> None:
    assert len(ROWS) >= 30
    assert len(BY_ID) == len(ROWS)


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


def operator_parse(row: BadInput) -> None:
    """What the operator does with the row's input, from the spec or the Secret's data."""
    if row.kind == "VTPMPolicy":
        parse_policy(row.body)
    elif row.kind == "VCenter":
        parse_vcenter(row.body)
    elif row.kind == "Secret":
        decode_secret("vc-creds", _b64(row.body))
    else:
        decode_ca("vc-ca", _b64(row.body))


def _fragments(value: bytes, width: int = 6) -> set[str]:
    """Every run of `width` printable characters of a value: none may appear in a message."""
    runs = re.findall(r"[!-~][ -~]*", value.decode("latin-1"))
    return {run[i : i + width] for run in runs for i in range(len(run) - width + 1)}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_the_operators_parser_gives_the_rows_verdict(row: BadInput) -> None:
    if row.parser is None:
        operator_parse(row)  # accepted here: a later stage answers (see operator_on_120)
        return
    with pytest.raises(PolicyProblem) as caught:
        operator_parse(row)
    problem = caught.value
    assert (problem.reason, problem.transient) == (row.parser.reason, False)
    if row.kind in ("VTPMPolicy", "VCenter"):
        assert problem.message.startswith(f"{row.parser.names}: "), problem.message
        return
    assert f"key {row.parser.names} " in problem.message, problem.message
    assert SECRET_WORDING.get(row.id, "") in problem.message
    for value in row.body.values():  # never a byte of a value, nor where a bad byte sits
        for fragment in _fragments(value):
            assert fragment not in problem.message, (fragment, problem.message)
    assert not re.search(r"0x|\\x|position|byte", problem.message), problem.message


# --- admission on the two API servers ------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Server:
    """Creates a row's object on one API server, and cleans up what it made."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.objects, self.core, self.namespace = (
            client.CustomObjectsApi(api),
            client.CoreV1Api(api),
            namespace,
        )
        self.vcenters: list[str] = []

    def create(self, row: BadInput) -> None:
        name = unique(row.id)[:63]
        meta = {"name": name}
        if row.kind == "VCenter":
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VCenter", "metadata": meta, "spec": row.body}
            self.objects.create_cluster_custom_object(GROUP, VERSION, "vcenters", body)
            self.vcenters.append(name)
        elif row.kind == "VTPMPolicy":
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "VTPMPolicy",
                "metadata": meta,
                "spec": row.body,
            }
            self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "vtpmpolicies", body)
        else:
            secret = client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=_b64(row.body))
            self.core.create_namespaced_secret(self.namespace, secret)

    def cleanup(self) -> None:
        for name in self.vcenters:
            try:
                self.objects.delete_cluster_custom_object(GROUP, VERSION, "vcenters", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def judge(server: Server, row: BadInput, expected: Accepted | Refused) -> None:
    if isinstance(expected, Accepted):
        server.create(row)
        return
    with pytest.raises(ApiException) as caught:
        server.create(row)
    assert caught.value.status == 422, caught.value.body
    assert expected.says in caught.value.body, caught.value.body


@pytest.fixture(scope="module")
def on_120(kube_api: client.ApiClient, crd_installed: str) -> Iterator[Server]:
    core = client.CoreV1Api(kube_api)
    namespace = core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(generate_name="bad-input-"))
    )
    server = Server(kube_api, namespace.metadata.name)
    yield server
    server.cleanup()
    core.delete_namespace(namespace.metadata.name)


@pytest.fixture(scope="module")
def on_136(apiext_api: client.ApiClient, apiext_crds: client.CustomObjectsApi) -> Iterator[Server]:
    server = Server(apiext_api, "default")  # no Namespace API there, and no namespace lifecycle either
    yield server
    server.cleanup()


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_admission_on_1_20(on_120: Server, row: BadInput) -> None:
    judge(on_120, row, row.on_120)


CRD_ROWS = [row for row in ROWS if row.on_136 is not None]


@pytest.mark.parametrize("row", CRD_ROWS, ids=[row.id for row in CRD_ROWS])
def test_admission_on_1_36(on_136: Server, row: BadInput) -> None:
    assert row.on_136 is not None
    judge(on_136, row, row.on_136)


def test_what_1_20_admits_the_operator_must_answer() -> None:
    """Rows 1.20 lets in are exactly the rows with an operator outcome on 1.20, and that outcome is
    never a transient one: nothing bad may loop as VCenterUnreachable or VCenterError."""
    for row in ROWS:
        assert (row.operator_on_120 is not None) == isinstance(row.on_120, Accepted), row.id
        if row.operator_on_120 is not None:
            assert row.operator_on_120.reason not in ("VCenterUnreachable", "VCenterError"), row.id
            assert row.operator_on_120.stalled, row.id
