"""A one-shot read of the VMs one policy selects (the `audit` command): bulk reads, no watch."""

from __future__ import annotations

from collections.abc import Mapping

from pyVmomi import vim

from vtpm_operator.facts import Inventory, VMFacts
from vtpm_operator.policy import DesiredVTPM, Policy
from vtpm_operator.prerequisites import required_privileges
from vtpm_operator.vsphere import inventory
from vtpm_operator.vsphere.changes import ChangeOps
from vtpm_operator.vsphere.session import VCenterSession
from vtpm_operator.vsphere.tags import resolve_tags, vms_by_tag


class VSphereClient:
    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self._guest_support: dict[tuple[str, str], bool | None] = {}
        self._ops = ChangeOps(session)

    def read_inventory(self, policy: Policy) -> Inventory:
        tag_ids = resolve_tags(self.session, policy.tags + policy.exclude_tags)
        attached = vms_by_tag(self.session, tag_ids.values())
        selected = frozenset().union(*(attached[tag_ids[tag]] for tag in policy.tags))
        excluded = frozenset().union(*(attached[tag_ids[tag]] for tag in policy.exclude_tags)) & selected
        props = inventory.read_vms(self.session, selected - excluded)
        # Templates cannot be powered on or carry a running guest; they are counted as excluded.
        templates = {moid for moid, p in props.items() if p.get("config.template")}
        vms = self._facts({m: p for m, p in props.items() if m not in templates}, policy)
        host_ids = {vm.host_id for vm in vms if vm.host_id}
        return Inventory(
            vms=tuple(vms),
            hosts=inventory.read_hosts(self.session, host_ids),
            key_providers=inventory.key_providers(self.session) if policy.vtpm is DesiredVTPM.PRESENT else (),
            excluded=len(excluded) + len(templates),
        )

    def _facts(self, props: Mapping[str, inventory.Properties], policy: Policy) -> list[VMFacts]:
        if not props:
            return []
        busy = inventory.busy_vms(self.session, props)
        on_vm, on_folder = required_privileges(policy)
        required: dict[tuple[type, str], frozenset[str]] = {
            (vim.VirtualMachine, moid): on_vm for moid in props
        }
        for p in props.values():
            parent = p.get("parent")
            if isinstance(parent, vim.Folder) and on_folder:
                required[(vim.Folder, parent._moId)] = on_folder
        missing = inventory.missing_privileges(self.session, required)
        owed_key = self._ops.marker_key()
        guest_of = {  # VM → (host, guest id): vCenter answers TPM support per compute resource
            moid: (p["runtime.host"]._moId, p.get("config.guestId") or "")
            for moid, p in props.items()
            if p.get("runtime.host") is not None
        }
        inventory.guest_tpm_support(self.session, guest_of.values(), self._guest_support)
        facts = []
        for moid, p in props.items():
            parent = p.get("parent")
            folder_missing = (
                missing.get(parent._moId, frozenset()) if isinstance(parent, vim.Folder) else frozenset()
            )
            facts.append(
                inventory.vm_facts(
                    moid,
                    p,
                    busy=moid in busy,
                    guest_supports_tpm20=self._guest_support.get(guest_of[moid])
                    if moid in guest_of
                    else None,
                    missing_privileges=missing.get(moid, frozenset()) | folder_missing,
                    power_on_owed=inventory.has_marker(p, owed_key),
                )
            )
        return facts

    def close(self) -> None:
        self.session.close()
