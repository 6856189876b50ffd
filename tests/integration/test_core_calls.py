"""The core (v1) calls made as plain JSON (kube/core.py), through their users, on a real API server."""

from __future__ import annotations

import base64
import time

import pytest
from kubernetes import client

from vtpm_operator.api import parse_vcenter
from vtpm_operator.connection import VCenterConfig
from vtpm_operator.events import Notice
from vtpm_operator.kube.publisher import KubePublisher
from vtpm_operator.kube.records import RecordStore
from vtpm_operator.kube.secrets import SecretReader
from vtpm_operator.problems import PolicyProblem, ProblemReason


def test_a_change_record_is_empty_until_saved_and_then_replaced(
    kube_api: client.ApiClient, namespace: str
) -> None:
    records = RecordStore(kube_api, namespace)
    assert records.load("vc-a") == {}  # 404: no record yet
    records.save("vc-a", {"totals": {"team/p": {"remediatedTotal": 1}}})
    records.save("vc-a", {"totals": {"team/p": {"remediatedTotal": 2}}})  # the replace path
    assert records.load("vc-a") == {"totals": {"team/p": {"remediatedTotal": 2}}}


def _config(secret: str) -> VCenterConfig:
    return parse_vcenter({"server": "vc.example.com", "credentialsSecretRef": {"name": secret}})


def test_credentials_come_from_the_secret_and_a_missing_one_is_named(
    kube_api: client.ApiClient, namespace: str
) -> None:
    encoded = {
        k: base64.b64encode(v.encode()).decode() for k, v in {"username": "op", "password": "pw"}.items()
    }
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), data=encoded)
    )
    reader = SecretReader(kube_api, namespace)
    _, credentials = reader.connection(_config("creds"))
    assert (credentials.username, credentials.password) == ("op", "pw")
    with pytest.raises(PolicyProblem) as missing:
        reader.connection(_config("absent"))
    assert missing.value.reason is ProblemReason.SECRET_NOT_FOUND
    assert "absent" in missing.value.message


def test_an_event_is_accepted_by_the_api_server(kube_api: client.ApiClient, namespace: str) -> None:
    """_post swallows a refusal (an event is worth less than a status): the event must be there."""
    publisher = KubePublisher(kube_api, RecordStore(kube_api, namespace))
    publisher.start()
    try:
        publisher.policy_event(
            namespace, "p", "uid-1", Notice("Warning", "VMsBlocked", "2 VMs newly blocked")
        )
        deadline = time.monotonic() + 20
        while not (events := client.CoreV1Api(kube_api).list_namespaced_event(namespace).items):
            assert time.monotonic() < deadline, "no event within 20 s"
            time.sleep(0.2)
    finally:
        publisher.stop()
    (event,) = events
    assert (event.reason, event.type, event.message) == ("VMsBlocked", "Warning", "2 VMs newly blocked")
    assert (event.involved_object.kind, event.involved_object.name, event.involved_object.uid) == (
        "VTPMPolicy",
        "p",
        "uid-1",
    )
    assert event.source.component == "vtpm-operator" and event.count == 1 and event.last_timestamp is not None
