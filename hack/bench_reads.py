# mypy: disallow-untyped-calls=False
# (pyVmomi data-object constructors are untyped, as for testbed in pyproject.toml)
"""Profiling driver: where the operator's first full read spends time and memory, call by call.

    .venv/bin/python hack/bench_reads.py --vms 10000

Not the benchmark (that runs the operator as a process, hack/bench.py): this calls the
operator's read functions directly, to split the cost of the fill (LiveInventory over
WaitForUpdatesEx) and of the fleet's privilege check (HasPrivilegeOnEntities) between the wire
and pyVmomi's decoding, and to weigh a lean decoding: the same answers fetched as raw XML over
the same session and walked with expat, keeping only what VMFacts needs.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import tracemalloc
import xml.parsers.expat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from testbed.vcsim import Simulator, running_simulator
from vtpm_operator.connection import Credentials, Endpoint
from vtpm_operator.prerequisites import ANY_CHANGE_ON_FOLDER, ANY_CHANGE_ON_VM
from vtpm_operator.vsphere import inventory
from vtpm_operator.vsphere.live import LiveInventory
from vtpm_operator.vsphere.session import VCenterSession

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{}</soapenv:Body></soapenv:Envelope>'
)


def timed(what: str, work: Callable[[], Any], *, memory: bool) -> Any:
    if memory:
        tracemalloc.start()
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if memory else 0.0
    if memory:
        tracemalloc.stop()
    print(f"{what:<58} {seconds:7.2f} s" + (f"  peak {peak:6.1f} MB (tracemalloc)" if memory else ""))
    return result


def fill(session: VCenterSession) -> LiveInventory:
    live = LiveInventory(session, lambda: None)
    while not live.poll(0).filled:
        pass
    return live


def privileges(session: VCenterSession, live: LiveInventory) -> Any:
    return inventory.fleet_privileges(session, {vm.id: vm.folder_id for vm in live.vms.values()})


class RawSoap:
    """The same SOAP calls over the pyVmomi session's cookie, answered as bytes."""

    def __init__(self, sim: Simulator, session: VCenterSession) -> None:
        stub = session.soap("ServiceContent", lambda content: content).propertyCollector._stub
        self.url = sim.url
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(sim.ca_file)
        self.headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"urn:vim25/{stub.versionId.strip(chr(34)).split("/")[-1]}"',
            "Cookie": stub.cookie,
        }

    def call(self, body: str) -> bytes:
        response = self.http.post(self.url, data=_ENVELOPE.format(body), headers=self.headers, timeout=300)
        response.raise_for_status()
        return response.content


def raw_privileges(raw: RawSoap, session: VCenterSession, live: LiveInventory) -> dict[str, set[str]]:
    content = session.soap("ServiceContent", lambda content: content)
    entities = [("VirtualMachine", vm) for vm in live.vms] + [
        ("Folder", f) for f in {vm.folder_id for vm in live.vms.values()} if f
    ]
    wanted = sorted(ANY_CHANGE_ON_VM | ANY_CHANGE_ON_FOLDER)
    body = (
        f'<HasPrivilegeOnEntities xmlns="urn:vim25"><_this type="AuthorizationManager">'
        f"{content.authorizationManager._moId}</_this>"
        + "".join(f'<entity type="{kind}">{moid}</entity>' for kind, moid in entities)
        + f"<sessionId>{content.sessionManager.currentSession.key}</sessionId>"
        + "".join(f"<privId>{p}</privId>" for p in wanted)
        + "</HasPrivilegeOnEntities>"
    )
    return _walk_privileges(raw.call(body))


def _walk_privileges(answer: bytes) -> dict[str, set[str]]:
    """Granted privileges per entity from a HasPrivilegeOnEntities answer, with expat."""
    granted: dict[str, set[str]] = {}
    state: dict[str, Any] = {"tag": "", "entity": "", "priv": "", "text": []}

    def start(name: str, attrs: Any) -> None:
        state["tag"], state["text"] = name.rsplit(" ", 1)[-1], []

    def end(name: str) -> None:
        tag, text = name.rsplit(" ", 1)[-1], "".join(state["text"])
        if tag == "entity":
            state["entity"] = text
            granted.setdefault(text, set())
        elif tag == "privId":
            state["priv"] = text
        elif tag == "isGranted" and text == "true":
            granted[state["entity"]].add(state["priv"])
        state["text"] = []

    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = lambda data: state["text"].append(data)
    parser.Parse(answer, True)
    return granted


def raw_fill(raw: RawSoap, session: VCenterSession, *, walk: bool = True) -> int:
    """The fill over a fresh filter, as raw pages walked with expat (or, with walk=False, only
    fetched: the wire and the simulator's share); returns property values seen."""
    live = LiveInventory(session, lambda: None)
    live.restart()
    collector = live._collector._moId
    version, values = "", 0
    while True:
        body = (
            f'<WaitForUpdatesEx xmlns="urn:vim25"><_this type="PropertyCollector">{collector}</_this>'
            f"<version>{version}</version><options><maxWaitSeconds>0</maxWaitSeconds>"
            f"<maxObjectUpdates>1000</maxObjectUpdates></options></WaitForUpdatesEx>"
        )
        page = raw.call(body)
        version, truncated, seen = _walk_update_set(page) if walk else _skim(page)
        values += seen
        if not truncated:
            live.close()
            return values


def _skim(page: bytes) -> tuple[str, bool, int]:
    """Only the version and truncated flag of an UpdateSet page (a regex, no parse)."""
    version = re.search(rb"<version>([^<]*)</version>", page)  # UpdateSet.version comes first
    truncated = re.search(rb"<truncated>true</truncated>", page)
    return (version.group(1).decode() if version else ""), truncated is not None, 0


def _walk_update_set(answer: bytes) -> tuple[str, bool, int]:
    """(version, truncated, property values) of an UpdateSet page: each propSet's name and the text
    or moref of its val, as a lean decoder would keep them (per object, a dict of path → text)."""
    state: dict[str, Any] = {"path": [], "text": [], "version": "", "truncated": False, "values": 0}
    objects: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}

    def start(name: str, attrs: Any) -> None:
        state["path"].append(name.rsplit(" ", 1)[-1])
        state["text"] = []

    def end(name: str) -> None:
        nonlocal current
        path, text = state["path"], "".join(state["text"])
        tag = path.pop()
        parent = path[-1] if path else ""
        if tag == "obj" and parent == "objectSet":
            current = objects.setdefault(text, {})
        elif tag == "name" and parent == "changeSet":
            state["name"] = text
        elif parent == "changeSet" and tag == "val":
            current[state.get("name", "")] = text
            state["values"] += 1
        elif tag == "version" and parent == "returnval":
            state["version"] = text
        elif tag == "truncated" and parent == "returnval":
            state["truncated"] = text == "true"
        state["text"] = []

    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = lambda data: state["text"].append(data)
    parser.Parse(answer, True)
    return str(state["version"]), bool(state["truncated"]), int(state["values"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=10000)
    args = parser.parse_args()
    with running_simulator(Path(tempfile.mkdtemp()), vms=args.vms, start_timeout=180) as sim:
        endpoint = Endpoint(sim.server, ca_pem=sim.ca_file.read_text())
        session = VCenterSession(endpoint, Credentials(sim.username, sim.password))
        session.soap("Login", lambda content: content)  # log in
        print(f"{args.vms} VMs, privileges asked per entity: {len(ANY_CHANGE_ON_VM | ANY_CHANGE_ON_FOLDER)}")
        live = timed(
            "fill: LiveInventory over WaitForUpdatesEx (pyVmomi)", lambda: fill(session), memory=False
        )
        timed("fill again, memory", lambda: fill(session), memory=True)
        timed("privileges: fleet_privileges (pyVmomi)", lambda: privileges(session, live), memory=False)
        timed("privileges again, memory", lambda: privileges(session, live), memory=True)
        raw = RawSoap(sim, session)
        timed(
            "privileges: same call, raw XML + expat, no tracemalloc",
            lambda: raw_privileges(raw, session, live),
            memory=False,
        )
        got = timed(
            "privileges: same call, raw XML + expat", lambda: raw_privileges(raw, session, live), memory=True
        )
        assert len(got) >= len(live.vms), "the raw answer misses entities"
        timed(
            "fill: same filter, raw XML pages, fetched only",
            lambda: raw_fill(raw, session, walk=False),
            memory=False,
        )
        timed("fill: same filter, raw XML pages + expat", lambda: raw_fill(raw, session), memory=False)
        values = timed("fill: raw XML + expat again, memory", lambda: raw_fill(raw, session), memory=True)
        print(f"  ({values} property values in the raw fill; {len(live.vms)} VMs, {len(live.hosts)} hosts)")


if __name__ == "__main__":
    main()
