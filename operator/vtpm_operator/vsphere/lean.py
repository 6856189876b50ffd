"""SOAP answers read as XML, for the two calls where pyVmomi's decoding is the whole cost.

At 10,000 VMs pyVmomi spends seconds building data objects for the inventory's fill
(WaitForUpdatesEx) and for the fleet's HasPrivilegeOnEntities, only for us to reduce each VM to a
few strings at once. Here pyVmomi still serializes the request and owns the connection (its
stub: the same session cookie, TLS verification, pool and timeouts); the answer is parsed by
ElementTree's C parser, and walked for the few values wanted. A fault is decoded by pyVmomi, so
callers meet exactly the exceptions a pyVmomi call raises (NotAuthenticated, ...).
"""

from __future__ import annotations

import http.client
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

from pyVmomi.SoapAdapter import SoapResponseDeserializer

from vtpm_operator.vsphere import faults

VIM = "{urn:vim25}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_CHUNK = 1 << 16
_ENVELOPE = "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"


def invoke(mo: Any, method: str, *args: Any) -> bytes:
    """Call `method` of the managed object `mo` on its stub; the answer's body, for `returned`."""
    stub = mo._stub
    info = type(mo)._GetMethodInfo(method)
    status, body = _post(stub, stub.SerializeRequest(mo, info, args))
    if status == 500:
        fault = SoapResponseDeserializer(stub).Deserialize(io.BytesIO(body), info.result)
        raise fault
    return body


def returned(body: bytes, *tags: str) -> Iterator[ET.Element]:
    """The answer's elements of these (vim25) tags, each once complete, in document order. Each
    is dropped as soon as the caller moves on, so that a large answer is never one tree in memory;
    the tags asked must not nest inside one another's values (returnval and objectSet do not).
    An answer cut short, or that is not a SOAP response, raises HTTPException once reached: the
    caller meets it as a lost connection, never as an answer with nothing in it."""
    wanted = {VIM + tag for tag in tags}
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("end",))
    last: ET.Element | None = None  # once the answer is whole: its root, the Envelope
    try:
        for offset in range(0, len(body), _CHUNK):
            parser.feed(body[offset : offset + _CHUNK])
            for _, last in cast(Iterator[tuple[str, ET.Element]], parser.read_events()):
                if last.tag in wanted:
                    yield last
                    last.clear()
        parser.close()
    except ET.ParseError as error:
        raise http.client.HTTPException(f"an unreadable SOAP answer: {error}") from None
    if not _is_response(last):
        raise http.client.HTTPException("not a SOAP response")


def _is_response(envelope: ET.Element | None) -> bool:
    answer = envelope.find(_BODY) if envelope is not None and envelope.tag == _ENVELOPE else None
    return answer is not None and len(answer) > 0 and answer[0].tag.endswith("Response")


def _post(stub: Any, request: str | bytes) -> tuple[int, bytes]:
    """POST as pyVmomi's own InvokeMethod does, keeping its pool healthy on either outcome."""
    headers = {"Cookie": stub.cookie, "SOAPAction": stub.versionId, "Content-Type": "text/xml; charset=UTF-8"}
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        stub.DropConnections()  # the server is likely gone: pooled connections are dead too
        raise
    if response.status not in (200, 500):
        conn.close()
        raise http.client.HTTPException(f"{response.status} {response.reason}")
    stub.ReturnConnection(conn)
    return response.status, body


# --- reading the answer ---------------------------------------------------------------------


def text(element: ET.Element | None, path: str = "") -> str:
    """The text of `element` (or of its child at `path`, in vim25 tags); "" when absent."""
    if element is not None and path:
        element = element.find(VIM + path)
    return (element.text or "") if element is not None else ""


def moref(element: ET.Element | None, of_type: str | None = None) -> str | None:
    """The id a ManagedObjectReference names, when it is one (of `of_type`, when given)."""
    if element is None or not element.text:
        return None
    return element.text if of_type is None or element.get("type") == of_type else None


def children(element: ET.Element | None, tag: str) -> Iterator[ET.Element]:
    return iter(()) if element is None else iter(element.iterfind(VIM + tag))


class CustomValue(NamedTuple):
    """One custom attribute of an entity, as inventory.marker_value reads it."""

    key: int
    value: str


def custom_values(element: ET.Element | None) -> list[CustomValue]:
    """An ArrayOfCustomFieldValue: string values only (the only kind vCenter stores)."""
    return [
        CustomValue(int(key), text(item, "value"))
        for item in children(element, "CustomFieldValue")
        if (key := text(item, "key")).isdigit()
    ]


def describe_fault(element: ET.Element | None) -> tuple[str, str]:
    """(the fault's type, faults.describe's words) of a LocalizedMethodFault."""
    fault = element.find(VIM + "fault") if element is not None else None
    name = (fault.get(XSI_TYPE, "") if fault is not None else "").rpartition(":")[2] or "MethodFault"
    keys = [text(m, "key") for m in children(fault, "faultMessage") if text(m, "key")]
    return name, faults.words(name, keys, text(element, "localizedMessage"))
