"""The change record on a real API server: a change starts only once its intent is written."""

from __future__ import annotations

import json

from kubernetes import client

from vtpm_operator.kube.publisher import KubePublisher
from vtpm_operator.kube.records import DATA_KEY, RecordStore, record_name


def test_wait_recorded_returns_once_the_record_is_in_the_api_server(
    kube_api: client.ApiClient, namespace: str
) -> None:
    publisher = KubePublisher(kube_api, RecordStore(kube_api, namespace))
    intents = {"intents": {f"vm-{i}": {"action": "Add", "owners": ["team/p"]} for i in range(200)}}
    publisher.record("vc-a", {"intents": {}})
    assert publisher.wait_recorded("vc-a", 0.5) is False  # the writer has not started: nothing written
    publisher.start()
    try:
        publisher.record("vc-a", intents)
        assert publisher.wait_recorded("vc-a", 20) is True
        stored = client.CoreV1Api(kube_api).read_namespaced_config_map(record_name("vc-a"), namespace)
        assert json.loads(stored.data[DATA_KEY]) == intents  # the latest, not the first, handed over
        assert publisher.wait_recorded("vc-b", 0) is True  # nothing handed over for it: nothing owed
    finally:
        publisher.stop()


def test_a_record_that_cannot_be_written_holds_back_no_other_vcenter(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """A ConfigMap holds at most 1 MiB: that record is refused every time, the other still goes."""
    publisher = KubePublisher(kube_api, RecordStore(kube_api, namespace))
    publisher.start()
    try:
        publisher.record("vc-huge", {"intents": {"vm-1": {"note": "x" * 1_100_000}}})
        publisher.record("vc-ok", {"intents": {"vm-2": {"action": "Add", "owners": ["team/p"]}}})
        assert publisher.wait_recorded("vc-ok", 20) is True
        assert publisher.wait_recorded("vc-huge", 5) is False
    finally:
        publisher.stop()
