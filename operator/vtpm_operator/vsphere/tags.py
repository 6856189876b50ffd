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
    found = lookup_tags(session, wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        raise PolicyProblem(ProblemReason.TAG_NOT_FOUND, tags_missing_message(missing))
    return found


def tags_missing_message(missing: Iterable[TagRef]) -> str:
    return f"vCenter has no tag {', '.join(str(ref) for ref in missing)} (category/name)"


def lookup_tags(session: VCenterSession, wanted: set[TagRef]) -> dict[TagRef, str]:
    """Ids of the tags of `wanted` that exist: one call per category, plus one per tag in theirs."""
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


class TagMap:
    """Which VMs carry which of the watched tags, for every policy of one vCenter.

    Tags have no property feed, so the associations are refreshed by one list-attached-objects
    call for all watched tags at once. Category and tag ids are cached and looked up again only
    when a name is missing from the cache, or after a full re-read (a tag may have been renamed).
    """

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self._ids: dict[TagRef, str] = {}
        self._missing: set[TagRef] = set()  # looked up and not found: again only after a full read
        self.attached: dict[str, frozenset[str]] = {}  # tag id → VM ids

    def forget_names(self) -> None:
        self._ids.clear()
        self._missing.clear()

    def ids(self, refs: Iterable[TagRef]) -> tuple[dict[TagRef, str], list[TagRef]]:
        """(found, missing): ids for these names, looking vCenter up once for whatever the cache lacks."""
        wanted = set(refs)
        unknown = wanted - self._ids.keys() - self._missing
        if unknown:
            found = lookup_tags(self.session, unknown)
            self._ids.update(found)
            self._missing |= unknown - found.keys()
        found = {ref: self._ids[ref] for ref in wanted if ref in self._ids}
        return found, sorted(wanted - found.keys())

    def refresh(self, tag_ids: Iterable[str]) -> None:
        """Read the associations of these tags again: one call."""
        self.attached = dict(vms_by_tag(self.session, tag_ids))

    def vms_with(self, tag_id: str) -> frozenset[str]:
        return self.attached.get(tag_id, frozenset())
