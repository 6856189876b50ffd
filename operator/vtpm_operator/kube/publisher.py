"""Writes what the engines publish: status documents coalesced per object, and events.

One writer thread for all objects. A status document is whole (running totals included), so the latest
one per object is all that needs writing: at most one write per object per `interval`. A write
the API server refuses stays pending and is tried again with backoff; it is never dropped.
The documents due in one round go out `WRITERS` at a time: one object's writes stay in order,
since each round holds one document per object and waits for all of its writes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vtpm_operator import crashpoints, metrics
from vtpm_operator.crashpoints import CrashPoint
from vtpm_operator.events import Notice
from vtpm_operator.kube.core import CoreApi, namespaced
from vtpm_operator.kube.records import RecordStore

log = logging.getLogger(__name__)

GROUP, VERSION = "vtpm-operator.io", "v1alpha1"
POLICIES, VCENTERS = "vtpmpolicies", "vcenters"
MAX_EVENT_MESSAGE = 1000
# Status writes in flight at once. Each is a round trip the API server spends most of (about 60 ms
# here): 20 policies' first statuses took 1.3 s one after another (hack/bench.py).
WRITERS = 4
REQUEST_TIMEOUT = 10.0  # seconds: a write the API server leaves unanswered fails, to be tried again

_Key = tuple[str, str]  # (namespace or "" for a VCenter, name)


class KubePublisher:
    def __init__(self, api: client.ApiClient, records: RecordStore, interval: float = 1.0) -> None:
        self.records = records
        self._records: dict[str, tuple[int, Mapping[str, Any]]] = {}  # vCenter → (number, record) to write
        self._handed = 0  # records handed over so far, numbered
        self._saved: dict[str, int] = {}  # vCenter → the number of its record last written
        self._latest: dict[str, int] = {}  # vCenter → the number of its record last handed over
        self._failing: set[str] = set()  # vCenters whose last record write failed
        self.custom = client.CustomObjectsApi(api)
        self.core = CoreApi(api)
        self.interval = interval
        self._lock = threading.Condition()
        self._pending: dict[_Key, Mapping[str, Any]] = {}
        self._due: dict[_Key, float] = {}  # earliest next write per object
        self._failures: dict[_Key, int] = {}
        self._events: deque[tuple[str, str, str, Notice]] = deque()
        self._stopping = False
        self._rounds_taken = 0  # rounds of writes the writer took, and of those, written
        self._rounds_done = 0
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="status-write")

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_seconds: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=flush_seconds)
        if not self._thread.is_alive():  # else it may still hand the pool a round
            self._writers.shutdown(wait=False)

    # --- engine.Publisher --------------------------------------------------------------------
    def policy_status(self, namespace: str, name: str, document: Mapping[str, Any]) -> None:
        self._submit((namespace, name), document)

    def vcenter_status(self, name: str, document: Mapping[str, Any]) -> None:
        self._submit(("", name), document)

    def policy_event(self, namespace: str, name: str, uid: str, notice: Notice) -> None:
        with self._lock:
            self._events.append((namespace, name, uid, notice))
            self._lock.notify_all()

    def record(self, vcenter: str, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._handed += 1
            self._records[vcenter] = (self._handed, record)
            self._latest[vcenter] = self._handed
            self._lock.notify_all()

    def wait_recorded(self, vcenter: str, timeout: float) -> bool:
        """Whether the last record handed over for `vcenter` is written within `timeout` seconds;
        False at once while its writes fail (the API server down: no change waits on it)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._saved.get(vcenter, 0) < self._latest.get(vcenter, 0):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping or vcenter in self._failing:
                    return False
                self._lock.wait(left)
            return True

    def wait_written(self, timeout: float) -> bool:
        """Whether what was handed over before this call, and may be written now, is written within
        `timeout` seconds: by the round being written, or by the next one when more waits. A
        status write that failed counts as done (it is tried again later); a change record that
        fails, or a writer that is gone, ends the wait with False at once."""
        deadline = time.monotonic() + timeout
        with self._lock:
            waiting = bool(self._records or self._events or self._due_now())
            last = self._rounds_taken + 1 if waiting else self._rounds_taken
            while self._rounds_done < last:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping or self._failing or not self._thread.is_alive():
                    return False
                self._lock.wait(left)
            return not self._failing

    def _submit(self, key: _Key, document: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending[key] = document
            self._lock.notify_all()

    # --- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                if self._rounds_done < self._rounds_taken:  # the last round is written: tell wait_written
                    self._rounds_done = self._rounds_taken
                    self._lock.notify_all()
                if self._stopping and not self._pending and not self._events and not self._records:
                    return
                due = self._due_now()
                if not (self._records or self._events or due):
                    self._lock.wait(timeout=0.2)
                    due = self._due_now()
                records, self._records = self._records, {}
                for key in due:
                    del self._pending[key]
                events = list(self._events)
                self._events.clear()
                self._rounds_taken += bool(records or due or events)
                if self._stopping:
                    self._pending.clear()  # last chance was this round
            if not self._write_records(records):
                with self._lock:  # statuses wait for the record: it holds what they must not lose
                    for key, document in due.items():
                        self._pending.setdefault(key, document)
                continue
            for _ in self._writers.map(self._write, due, due.values()):
                pass  # each write counts and retries itself
            for event in events:
                self._post(*event)

    def _due_now(self) -> dict[_Key, Mapping[str, Any]]:
        """The pending documents whose object may be written now (under the lock)."""
        now = time.monotonic()
        return {k: d for k, d in self._pending.items() if self._due.get(k, 0.0) <= now}

    def _write_records(self, records: dict[str, tuple[int, Mapping[str, Any]]]) -> bool:
        """Write each record; False when any failed (those are kept, to be tried again). One
        vCenter's record that keeps failing never holds back another's."""
        failed = False
        for vcenter, (number, record) in records.items():
            try:
                self.records.save(vcenter, record)
            except Exception as error:
                log.warning("change record of %s not written (%s); retrying", vcenter, error)
                failed = True
                with self._lock:
                    self._records.setdefault(vcenter, (number, record))  # unless a newer came
                    self._failing.add(vcenter)
                    self._lock.notify_all()
                continue
            with self._lock:
                self._saved[vcenter] = max(number, self._saved.get(vcenter, 0))
                self._failing.discard(vcenter)
                self._lock.notify_all()
        if failed:
            time.sleep(min(5.0, self.interval))
        return not failed

    def _write(self, key: _Key, document: Mapping[str, Any]) -> None:
        namespace, name = key
        if namespace and (document.get("summary") or {}).get("remediatedTotal"):
            crashpoints.reached(CrashPoint.BEFORE_STATUS_WRITE)  # a count is about to be reported
        try:
            if namespace:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    POLICIES,
                    name,
                    {"status": document},
                    _request_timeout=REQUEST_TIMEOUT,
                )
            else:
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, VCENTERS, name, {"status": document}, _request_timeout=REQUEST_TIMEOUT
                )
        except ApiException as error:
            if error.status == 404:  # deleted meanwhile: nothing to report on
                return
            self._retry_later(key, document, error.status, error.reason)
            return
        except Exception as error:  # the API server unreachable
            self._retry_later(key, document, 0, str(error))
            return
        metrics.count_status_write("success")
        with self._lock:
            self._failures.pop(key, None)
            self._due[key] = time.monotonic() + self.interval

    def _retry_later(self, key: _Key, document: Mapping[str, Any], status: int, reason: Any) -> None:
        metrics.count_status_write("error")
        log.warning("status of %s not written (%s %s); retrying", "/".join(key), status, reason)
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            self._pending.setdefault(key, document)  # a newer document may have come meanwhile
            self._due[key] = time.monotonic() + min(30.0, self.interval * 2**failures)

    def _post(self, namespace: str, name: str, uid: str, notice: Notice) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "VTPMPolicy",
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": notice.reason,
            "message": notice.message[:MAX_EVENT_MESSAGE],
            "type": notice.type,
            "source": {"component": "vtpm-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create(namespaced(namespace, "events"), event, timeout=REQUEST_TIMEOUT)
        except Exception as error:  # an event is worth less than the status: never retried
            log.warning("event %s for %s/%s not posted: %s", notice.reason, namespace, name, error)
