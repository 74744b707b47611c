"""Peer-to-peer DMA (Linux 7.3.4 include/linux/pci-p2pdma.h, drivers/pci/p2pdma.c, block/blk-mq-dma.c,
drivers/nvme/host/pci.c): the ``nvme-p2p-read-bar`` preset under both map types, and the p2pdma model."""

from __future__ import annotations

import copy

import pytest

from iovalab.drivers import load_preset, run_workload
from iovalab.drivers.nvme_pci import NvmeError
from iovalab.kernel.dma_iommu import DMA_ATTR_MMIO
from iovalab.kernel.iommu import IOMMU_CACHE, IOMMU_MMIO
from iovalab.kernel.p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_NOT_SUPPORTED, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
    P2pdmaPages, P2pdmaProvider, PciP2pdmaMapState, calc_map_type_and_dist, p2pdma_from_params,
    pci_p2pdma_bus_addr_map, pci_p2pdma_state,
)

PRESET = "nvme-p2p-read-bar"
BAR = 0x38_0000_0000


def preset(topology: str = "switch", bus_offset: int = 0, **kw) -> dict:
    p = copy.deepcopy(load_preset(PRESET))
    p["parameters"]["p2p"]["topology"] = topology
    p["parameters"]["p2p"]["bus_offset"] = hex(bus_offset)
    p["parameters"].update(kw)
    return p


def of_kind(res, kind: str) -> list:
    return [e for e in res.log.events if e.kind == kind]


@pytest.mark.parametrize("api", ["iova", "page", "direct"])
def test_bus_addr_no_iommu_map_and_device_sees_bus_addresses(api):
    off = 0x1_0000_0000_0000
    res = run_workload(preset("switch", off), api)
    assert of_kind(res, "iommu_map_calls") == []
    assert of_kind(res, "iommu_unmap") == []
    assert res.counters.iova_allocs == 0 and res.counters.iommu_map_calls == 0
    funcs = {e.func for e in res.log.events}
    assert "blk_dma_map_bus" in funcs and "nvme_pci_setup_data_simple" not in funcs
    view = res.device_view
    assert len(view) == (1 if api == "direct" else 2)   # dma-direct: no dma_opt_mapping_size cap
    for cmd in view:
        assert cmd["path"].startswith("P2P bus address")
        assert cmd["dma_segments"] == [(p + off, n) for p, n in cmd["segments"]]
        assert cmd["prp1"] == cmd["segments"][0][0] + off
        for e in cmd["prp_lists"][0]["entries"]:
            assert any(p + off <= e < p + off + n for p, n in cmd["segments"])


@pytest.mark.parametrize("topology", ["host_bridge", "switch_acs_redirect"])
@pytest.mark.parametrize("api", ["iova", "page"])
def test_thru_host_bridge_maps_with_iommu_mmio(api, topology):
    res = run_workload(preset(topology, 0x1000_0000), api)
    maps = of_kind(res, "iommu_map_calls")
    assert maps, "THRU_HOST_BRIDGE is an ordinary IOMMU mapping"
    for e in maps:
        assert e.args["prot"] & IOMMU_MMIO and not e.args["prot"] & IOMMU_CACHE
        assert BAR <= e.args["paddr"] < BAR + 0x1000_0000
    # the device sees IOVAs, not bus addresses (bus_offset plays no part)
    for cmd in res.device_view:
        assert "DMA_ATTR_MMIO" in cmd["path"]
        for a, _n in cmd["dma_segments"]:
            assert not BAR <= a - 0x1000_0000 < BAR + 0x1000_0000
    # everything mapped is unmapped at completion
    assert sum(e.args["size"] for e in of_kind(res, "iommu_unmap")) == sum(e.args["size"] for e in maps)
    if api == "iova":
        assert res.counters.iova_allocs == 2          # one IOVA range per two-segment request
        assert [c["path"].split(" (")[0] for c in res.device_view] == ["IOVA"] * 2


def test_thru_host_bridge_unmap_paths_use_mmio():
    res = run_workload(preset("host_bridge"), "page")
    maps = [e for e in res.log.events if e.kind == "dma_api_calls" and e.func == "dma_map_phys"]
    unmaps = [e for e in res.log.events if e.kind == "dma_api_calls" and e.func == "dma_unmap_phys"]
    assert len(maps) == len(unmaps) == 4          # 2 requests x 2 segments, blk_dma_map_direct
    assert all(e.args["attrs"] & DMA_ATTR_MMIO for e in maps)


def test_not_supported_is_blk_sts_inval():
    with pytest.raises(NvmeError, match="BLK_STS_INVAL"):
        run_workload(preset("host_bridge_not_allowlisted"), "iova")


def test_p2p_needs_kernel_73_and_block_iterator():
    p = preset()
    p["iommu"] = {"preset": "intel-vtd", "kernel": "6.17"}
    with pytest.raises(ValueError, match="kernel '7.3'"):
        run_workload(p, "iova")
    with pytest.raises(ValueError, match="scatterlist"):
        run_workload(preset(), "sg")


def test_ordinary_pages_unchanged_by_a_p2p_provider_elsewhere():
    """A request whose first segment is not a P2P page maps as before (PCI_P2PDMA_MAP_NONE)."""
    plain = copy.deepcopy(load_preset("nvme-128k-scattered"))
    with_p2p = copy.deepcopy(plain)
    with_p2p["parameters"]["p2p"] = {"owner": "0000:02:00.0", "bar": hex(BAR), "size": "0x10000000"}
    a, b = run_workload(plain, "iova"), run_workload(with_p2p, "iova")
    assert a.counters == b.counters
    assert [c["dma_segments"] for c in a.device_view] == [c["dma_segments"] for c in b.device_view]


def test_calc_map_type_and_dist():
    assert calc_map_type_and_dist(True, False, False) == PCI_P2PDMA_MAP_BUS_ADDR
    assert calc_map_type_and_dist(True, True, True) == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    assert calc_map_type_and_dist(False, False, True) == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
    assert calc_map_type_and_dist(False, False, False) == PCI_P2PDMA_MAP_NOT_SUPPORTED
    assert calc_map_type_and_dist(True, True, False) == PCI_P2PDMA_MAP_NOT_SUPPORTED


def test_state_cached_per_provider_and_client():
    a = P2pdmaProvider("0000:02:00.0", 0x1000_0000, 0x10_0000, 0x100, "switch")
    b = P2pdmaProvider("0000:03:00.0", 0x2000_0000, 0x10_0000, 0, "host_bridge")
    pages = P2pdmaPages([a, b])
    st = PciP2pdmaMapState()
    assert pci_p2pdma_state(st, pages, "nvme", 0x5000) == PCI_P2PDMA_MAP_NONE and st.mem is None
    assert pci_p2pdma_state(st, pages, "nvme", 0x1000_2000) == PCI_P2PDMA_MAP_BUS_ADDR and st.mem is a
    assert a.map_types == {"nvme": PCI_P2PDMA_MAP_BUS_ADDR}
    assert pci_p2pdma_state(st, pages, "nvme", 0x2000_0000) == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE and st.mem is b
    assert pci_p2pdma_state(PciP2pdmaMapState(), pages, "plat", 0x1000_0000, client_is_pci=False) \
        == PCI_P2PDMA_MAP_NOT_SUPPORTED
    assert pci_p2pdma_bus_addr_map(a, 0x1000_2000) == 0x1000_2100


@pytest.mark.parametrize("spec,match", [
    ({"bar": "0x1000", "size": "0x1000", "topology": "bus"}, "topology"),
    ({"bar": "0x1001", "size": "0x1000"}, "page aligned"),
    ({"bar": "0x1000", "size": 0}, "page aligned"),
    ({"bar": "0x1000", "size": "0x1000", "colour": 1}, "unknown key"),
    ({"bar": "zz", "size": "0x1000"}, "not an integer"),
    ([{"bar": "0x1000", "size": "0x2000"}, {"bar": "0x2000", "size": "0x1000"}], "overlaps"),
    ("0x1000", "must be an object"),
])
def test_bad_p2p_parameter(spec, match):
    with pytest.raises(ValueError, match=match):
        p2pdma_from_params(spec)


def test_host_bridge_preset_is_the_thru_host_bridge_form():
    """The bundled ``-host-bridge`` preset differs from ``nvme-p2p-read-bar`` only by its topology."""
    a, b = load_preset(PRESET), load_preset(PRESET + "-host-bridge")
    assert b["parameters"]["p2p"].pop("topology") == "host_bridge"
    assert a["parameters"]["p2p"].pop("topology") == "switch"
    assert a["parameters"] == b["parameters"]
    res = run_workload(PRESET + "-host-bridge", "iova")
    assert res.counters.iommu_map_calls == 4 and res.counters.iova_allocs == 2
