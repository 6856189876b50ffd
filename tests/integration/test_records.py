"""The change record on a real API server: a change starts only once its intent is written."""

from __future__ import annotations

import json

from kubernetes import client

from vtpm_operator.kube.publisher import GROUP, POLICIES, VERSION, KubePublisher
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


def test_wait_written_returns_once_every_status_handed_over_is_in_the_api_server(
    kube_api: client.ApiClient, namespace: str, crd_installed: str
) -> None:
    """What `run` waits for before it loads Kopf (Runtime.settle): 50 policies' first statuses."""
    custom = client.CustomObjectsApi(kube_api)
    names = [f"p{i:02d}" for i in range(50)]
    for name in names:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            POLICIES,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "VTPMPolicy",
                "metadata": {"name": name},
                "spec": {
                    "vcenterRef": {"name": "vc"},
                    "selector": {"tags": [{"category": "c", "name": "t"}]},
                },
            },
        )
    publisher = KubePublisher(kube_api, RecordStore(kube_api, namespace))
    assert publisher.wait_written(0) is True  # nothing handed over: nothing owed
    for name in names:
        publisher.policy_status(namespace, name, {"observedGeneration": 7})
    assert publisher.wait_written(0.5) is False  # no writer yet: it returns, it does not wait
    publisher.start()
    try:
        assert publisher.wait_written(30) is True
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, POLICIES)["items"]
        assert {
            p["metadata"]["name"]: (p.get("status") or {}).get("observedGeneration") for p in listed
        } == dict.fromkeys(names, 7)
    finally:
        publisher.stop()
    publisher.policy_status(namespace, "not-written-yet", {"observedGeneration": 8})
    assert publisher.wait_written(5) is False  # stopped: nothing more is written
