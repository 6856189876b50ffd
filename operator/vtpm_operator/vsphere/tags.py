"""Tag lookups over vCenter's REST API (/rest paths: served by vCenter 6.5 to 8 and the simulator)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

from vtpm_operator.policy import TagRef
from vtpm_operator.problems import PolicyProblem, ProblemReason
from vtpm_operator.vsphere.session import VCenterSession

_TAGGING = "/rest/com/vmware/cis/tagging"


def resolve_tags(session: VCenterSession, refs: Iterable[TagRef]) -> dict[TagRef, str]:
    """Tag ids for category/name pairs; PolicyProblem(TagNotFound) names every one that is missing.

    A missing exclude tag is as fatal as a missing selector tag: ignoring it would change VMs
    the policy's author meant to protect.
    """
    wanted = set(refs)
    categories: dict[str, str] = {}
    for category_id in session.rest("ListCategories", "GET", f"{_TAGGING}/category") or []:
        info = session.rest("GetCategory", "GET", f"{_TAGGING}/category/id:{quote(category_id)}")
        if info["name"] in {ref.category for ref in wanted}:
            categories[info["name"]] = category_id
    found: dict[TagRef, str] = {}
    for category_name, category_id in categories.items():
        tag_ids = session.rest(
            "ListTagsForCategory",
            "POST",
            f"{_TAGGING}/tag/id:{quote(category_id)}?~action=list-tags-for-category",
        )
        for tag_id in tag_ids or []:
            info = session.rest("GetTag", "GET", f"{_TAGGING}/tag/id:{quote(tag_id)}")
            ref = TagRef(category_name, info["name"])
            if ref in wanted:
                found[ref] = tag_id
    missing = sorted(wanted - found.keys())
    if missing:
        names = ", ".join(str(ref) for ref in missing)
        raise PolicyProblem(ProblemReason.TAG_NOT_FOUND, f"vCenter has no tag {names} (category/name)")
    return found


def vms_by_tag(session: VCenterSession, tag_ids: Iterable[str]) -> Mapping[str, frozenset[str]]:
    """Per tag id, the ids of the VMs that carry it: one call for all tags."""
    ids = sorted(set(tag_ids))
    if not ids:
        return {}
    value = session.rest(
        "ListAttachedObjectsOnTags",
        "POST",
        f"{_TAGGING}/tag-association?~action=list-attached-objects-on-tags",
        {"tag_ids": ids},
    )
    attached: dict[str, frozenset[str]] = dict.fromkeys(ids, frozenset())
    for entry in value or []:
        attached[entry["tag_id"]] = frozenset(
            obj["id"] for obj in entry.get("object_ids") or [] if obj.get("type") == "VirtualMachine"
        )
    return attached
