"""Key providers on the simulator's CryptoManagerKmip, as vCenter 7.0.2+/8.0 answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from testbed.vcsim import Simulator, SimulatorError, connect, disconnect, retrieve_one


@pytest.fixture
def cm(simulator: Simulator) -> Iterator[Any]:
    si = connect(simulator)
    yield si.RetrieveContent().cryptoManager
    disconnect(si)


def _pid(name: str) -> vim.encryption.KeyProviderId:
    return vim.encryption.KeyProviderId(id=name)


def test_no_key_provider(cm: Any) -> None:
    assert list(cm.ListKmipServers()) == []
    assert list(cm.ListKmsClusters(includeKmsServers=True)) == []
    assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True) is None


def test_one_non_default_native_provider_until_backed_up(simulator: Simulator, cm: Any) -> None:
    simulator.admin.add_key_provider("nkp", kind="native", default=False, backed_up=False)

    [info] = cm.ListKmipServers()
    assert (info.clusterId.id, info.managementType, info.useAsDefault) == ("nkp", "nativeProvider", False)
    assert info.hasBackup is False
    assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True) is None
    assert cm.IsKmsClusterActive(cluster=_pid("nkp")) is False

    simulator.admin.mark_backed_up("nkp")
    assert cm.IsKmsClusterActive(cluster=_pid("nkp")) is True
    assert cm.ListKmipServers()[0].hasBackup is True


def test_one_default_standard_provider_visible_through_property_collector(simulator: Simulator) -> None:
    simulator.admin.add_key_provider("kmip-1", kind="kmip", default=True)
    simulator.admin.add_key_provider("nkp", kind="native", backed_up=True)
    si = connect(simulator)
    try:
        cm = si.RetrieveContent().cryptoManager
        assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True).id == "kmip-1"
        assert cm.IsKmsClusterActive(cluster=_pid("kmip-1")) is True

        servers = {c.clusterId.id: c for c in retrieve_one(si, cm, ["kmipServers"])["kmipServers"]}
        assert set(servers) == {"kmip-1", "nkp"}
        assert servers["kmip-1"].useAsDefault is True
        assert servers["kmip-1"].managementType == "vCenter"
        assert servers["kmip-1"].servers[0].port == 5696
        assert servers["nkp"].useAsDefault is False
        assert servers["nkp"].managementType == "nativeProvider"
        assert servers["nkp"].hasBackup is True

        filtered = cm.ListKmsClusters(
            includeKmsServers=False, managementTypeFilter=8
        )  # bit 3: nativeProvider
        assert [c.clusterId.id for c in filtered] == ["nkp"]
    finally:
        disconnect(si)


def test_register_mark_default_and_unregister_over_soap(simulator: Simulator, cm: Any) -> None:
    cm.RegisterKmsCluster(clusterId=_pid("a"), managementType="nativeProvider")
    cm.RegisterKmsCluster(clusterId=_pid("b"), managementType="vCenter")
    with pytest.raises(vim.fault.AlreadyExists):
        cm.RegisterKmsCluster(clusterId=_pid("a"), managementType="nativeProvider")
    assert [c.clusterId.id for c in cm.ListKmipServers()] == ["a", "b"]
    assert cm.IsKmsClusterActive(cluster=_pid("b")) is False  # a KMIP cluster without servers

    cm.MarkDefault(clusterId=_pid("a"))
    assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True).id == "a"
    cm.SetDefaultKmsCluster(entity=None, clusterId=_pid("b"))
    assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True).id == "b"
    assert [p["id"] for p in simulator.admin.key_providers() if p["default"]] == ["b"]

    cm.UnregisterKmsCluster(clusterId=_pid("b"))
    assert cm.GetDefaultKmsCluster(entity=None, defaultsToParent=True) is None
    with pytest.raises(vmodl.fault.InvalidArgument):
        cm.MarkDefault(clusterId=_pid("b"))
    simulator.admin.remove_key_provider("a")
    assert list(cm.ListKmipServers()) == []
    with pytest.raises(SimulatorError):
        simulator.admin.remove_key_provider("a")
