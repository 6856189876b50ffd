"""Reading vim25 answers as XML: the shapes vCenter sends for the values the inventory keeps."""

from __future__ import annotations

import http.client
import xml.etree.ElementTree as ET

import pytest

from vtpm_operator.facts import VMFacts
from vtpm_operator.vsphere import lean
from vtpm_operator.vsphere.live import Delta, LiveInventory, _blank_fields

_NS = 'xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'


def element(body: str) -> ET.Element:
    return ET.fromstring(f"<val {_NS}>{body}</val>")


def test_a_moref_is_read_with_its_type_and_only_of_the_type_asked() -> None:
    parent = ET.fromstring(f'<val {_NS} type="Folder" xsi:type="ManagedObjectReference">group-v3</val>')
    assert lean.moref(parent) == "group-v3"
    assert lean.moref(parent, "Folder") == "group-v3"
    assert lean.moref(parent, "VirtualApp") is None
    assert lean.moref(None) is None


def test_custom_values_keep_string_values_by_key() -> None:
    values = element(
        '<CustomFieldValue xsi:type="CustomFieldStringValue"><key>101</key><value>uid@1700000000</value>'
        '</CustomFieldValue><CustomFieldValue xsi:type="CustomFieldStringValue"><key>7</key><value/>'
        "</CustomFieldValue>"
    )
    assert lean.custom_values(values) == [lean.CustomValue(101, "uid@1700000000"), lean.CustomValue(7, "")]
    assert lean.custom_values(None) == []


def test_a_task_fault_reads_as_faults_describe_words_it() -> None:
    error = element(
        '<fault xsi:type="InvalidPowerState"><faultMessage><key>msg.vtpm.add.poweredOn</key>'
        "<message>on</message></faultMessage><requestedState>poweredOff</requestedState></fault>"
        "<localizedMessage>The VM must be powered off.</localizedMessage>"
    )
    assert lean.describe_fault(error) == (
        "InvalidPowerState",
        "InvalidPowerState [msg.vtpm.add.poweredOn]: The VM must be powered off.",
    )


def test_a_fault_without_words_is_still_named() -> None:
    assert lean.describe_fault(element('<fault xsi:type="vim25:SystemError"/>')) == (
        "SystemError",
        "SystemError",
    )
    assert lean.describe_fault(None) == ("MethodFault", "MethodFault")


def test_text_reads_a_child_or_the_element_and_is_empty_when_absent() -> None:
    update = element("<version>12</version><truncated>true</truncated>")
    assert lean.text(update, "version") == "12"
    assert lean.text(update, "missing") == ""
    assert lean.text(None) == ""
    assert [lean.text(v) for v in lean.children(update, "truncated")] == ["true"]


def envelope(returnvals: str) -> bytes:
    return (
        '<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25">{returnvals}'
        "</WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"
    ).encode()


def test_returned_hands_over_the_tags_asked_as_each_completes_and_drops_them() -> None:
    body = envelope(
        "<returnval><version>3</version><filterSet><objectSet><kind>enter</kind></objectSet>"
        "<objectSet><kind>modify</kind></objectSet></filterSet><truncated>true</truncated></returnval>"
    )
    seen = [
        (element.tag.removeprefix(lean.VIM), lean.text(element, "kind"), lean.text(element, "version"))
        for element in lean.returned(body, "objectSet", "returnval")
    ]
    assert seen == [("objectSet", "enter", ""), ("objectSet", "modify", ""), ("returnval", "", "3")]
    handed = list(lean.returned(body, "objectSet"))
    assert [len(element) for element in handed] == [0, 0]  # dropped once the caller moved on


def test_returned_keeps_what_it_has_not_handed_over_yet() -> None:
    body = envelope("<returnval><version>3</version><filterSet><objectSet/></filterSet></returnval>")
    updates = [
        (lean.text(element, "version"), [len(f) for f in lean.children(element, "filterSet")])
        for element in lean.returned(body, "objectSet", "returnval")
        if element.tag == lean.VIM + "returnval"
    ]
    assert updates == [("3", [1])]  # its version, and the emptied shell of the objectSet handed over


def test_an_answer_with_nothing_returned_yields_nothing() -> None:
    assert list(lean.returned(envelope(""), "objectSet", "returnval")) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        envelope("<returnval><version>3</version><filterSet><objectSet>")[:-60],  # cut short
        b"<html><body>a proxy's page</body></html>",
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"/>',
    ],
    ids=["empty", "cut-short", "not-soap", "no-body"],
)
def test_an_answer_that_is_not_a_whole_soap_response_raises_as_a_lost_connection(body: bytes) -> None:
    """Never an answer with nothing in it: a fill would take that for a fleet of no VMs."""
    with pytest.raises(http.client.HTTPException):
        list(lean.returned(body, "objectSet", "returnval"))


def _update_page(change_sets: str) -> bytes:
    return envelope(
        "<returnval><version>2</version><filterSet><objectSet><kind>modify</kind>"
        f'<obj type="VirtualMachine">vm-7</obj>{change_sets}</objectSet></filterSet></returnval>'
    )


class _Session:
    generation = 0


def test_a_property_change_reads_its_value_and_a_removal_as_none() -> None:
    live = LiveInventory(_Session(), lambda: None)  # type: ignore[arg-type]  # no call is made
    live.vms["vm-7"] = VMFacts(**(_blank_fields("vm-7") | {"name": "web", "firmware": "efi"}))
    page = _update_page(
        "<changeSet><name>config.firmware</name><op>assign</op><val>bios</val></changeSet>"
        "<changeSet><name>name</name><op>remove</op></changeSet>"
        "<missingSet><path>config.guestId</path></missingSet>"
    )
    live._apply(page, Delta())
    assert live.vms["vm-7"].firmware == "bios"
    assert live.vms["vm-7"].name == "vm-7"  # its name removed: known by its id


@pytest.mark.parametrize(
    "change_set",
    [
        "<changeSet><name>config.firmware</name></changeSet>",  # no op
        "<changeSet><op>assign</op><name>config.firmware</name><val>efi</val></changeSet>",  # out of order
    ],
)
def test_a_property_change_out_of_the_schema_is_an_unreadable_answer(change_set: str) -> None:
    live = LiveInventory(_Session(), lambda: None)  # type: ignore[arg-type]  # no call is made
    with pytest.raises(http.client.HTTPException, match="schema"):
        live._apply(_update_page(change_set), Delta())
