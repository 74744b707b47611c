"""Peer-to-peer DMA (Linux 7.3.4 include/linux/pci-p2pdma.h, drivers/pci/p2pdma.c, block/blk-mq-dma.c,
drivers/nvme/host/pci.c): the ``nvme-p2p-read-bar`` preset under both map types, and the p2pdma model."""

from __future__ import annotations

import copy

import pytest

from iovalab.drivers import iter_workload, load_preset, run_workload
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


def test_p2p_needs_kernel_73():
    p = preset()
    p["iommu"] = {"preset": "intel-vtd", "kernel": "6.17"}
    with pytest.raises(ValueError, match="kernel '7.3'"):
        run_workload(p, "iova")


def test_sg_path_bus_addr_and_host_bridge():
    """api 'sg' (6.12 nvme_map_data over 7.3.4 iommu_dma_map_sg): bus addresses with no IOVA and no
    unmap; through the host bridge one IOVA per list, mapped without IOMMU_MMIO (iommu_dma_map_sg adds
    no DMA_ATTR_MMIO), all of it unmapped."""
    off = 0x40_0000_0000
    bus = run_workload(preset("switch", off), "sg")
    assert bus.counters.iova_allocs == 0 and bus.counters.iommu_map_calls == 0
    assert of_kind(bus, "iommu_unmap") == []
    assert "nvme_setup_prp_simple" not in {e.func for e in bus.log.events}
    for cmd in bus.device_view:
        assert cmd["path"].startswith("P2P bus address")
        assert cmd["dma_segments"] == [(p + off, n) for p, n in cmd["segments"]]
    hb = run_workload(preset("host_bridge", off), "sg")
    maps = of_kind(hb, "iommu_map_calls")
    assert hb.counters.iova_allocs == 2 and len(maps) == 4
    for e in maps:
        assert BAR <= e.args["paddr"] < BAR + 0x1000_0000
        assert not e.args["prot"] & IOMMU_MMIO and e.args["prot"] & IOMMU_CACHE   # the known difference
    assert sum(e.args["size"] for e in of_kind(hb, "iommu_unmap")) == sum(e.args["size"] for e in maps)
    assert [len(c["dma_segments"]) for c in hb.device_view] == [1, 1]


def test_sg_path_not_supported_is_blk_sts_target():
    with pytest.raises(NvmeError, match="EREMOTEIO.*BLK_STS_TARGET"):
        run_workload(preset("host_bridge_not_allowlisted"), "sg")


def _presets_and_apis() -> list[tuple[str, str]]:
    from iovalab.drivers import list_presets, valid_apis
    return [(name, api) for name in list_presets() for api in valid_apis(name)]


@pytest.mark.parametrize("name,api", _presets_and_apis())
def test_every_listed_api_of_every_preset_runs(name, api):
    """What ``valid_apis`` (and ``scenarios --list``) offers for a preset runs to completion. The large
    HMM/VFIO presets run at 8192 entries (the same code, a smaller umem): the page path of the 1 GiB
    preset takes half a minute."""
    p = copy.deepcopy(load_preset(name))
    par = p["parameters"]
    if isinstance(par.get("npages"), int) and par["npages"] > 8192:
        par["npages"] = 8192
        par["invalidate"] = [[a, min(n, 8192 - a)] for a, n in par.get("invalidate", []) if a < 8192]
    res = run_workload(p, api, keep_events=False)
    assert res.device_view is not None and res.api == api
    if api == "direct":
        assert res.counters.iommu_map_calls == 0


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


# ------------------------------------------------------------------ iommu_dma_map_sg (7.3.4)
def _sg_domain(topology: str, bus_offset: int = 0x100_0000_0000):
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    d = DmaDomain("intel-vtd")
    d.p2pdma = P2pdmaPages([P2pdmaProvider("0000:02:00.0", BAR, 0x1000_0000, bus_offset, topology)])
    return d, Device.nvme()


def test_map_sg_bus_addr_segments_take_no_iova_and_unmap_skips_them():
    from iovalab.kernel.dma_iommu import DMA_FROM_DEVICE, ScatterEntry
    d, dev = _sg_domain("switch")
    sgl = [ScatterEntry(0x10_0000, 0x2000), ScatterEntry(BAR + 0x4000, 0x3000), ScatterEntry(0x20_0000, 0x1000)]
    ents = d.dma_map_sg(dev, sgl, DMA_FROM_DEVICE)
    assert ents == 3
    assert [s.dma_bus_address for s in sgl] == [False, True, False]
    assert sgl[1].dma_address == BAR + 0x4000 + 0x100_0000_0000 and sgl[1].dma_length == 0x3000
    # memory segments: one IOVA of 0x3000 for both (the bus segment takes none), two runs, not merged
    # across the bus segment
    maps = [e for e in d.log.events if e.kind == "iommu_map_calls"]
    assert [(e.args["paddr"], e.args["size"]) for e in maps] == [(0x10_0000, 0x2000), (0x20_0000, 0x1000)]
    assert maps[1].args["iova"] == maps[0].args["iova"] + 0x2000
    assert sgl[0].dma_address == maps[0].args["iova"] and sgl[2].dma_address == maps[1].args["iova"]
    assert d.iommu.iommu_iova_to_phys(maps[0].args["iova"] + 0x2000) == 0x20_0000
    mapped = d.iommu.snapshot()
    d.dma_unmap_sg(dev, sgl, DMA_FROM_DEVICE)
    unmaps = [e for e in d.log.events if e.kind == "iommu_unmap"]
    assert sum(e.args["size"] for e in unmaps) == 0x3000
    assert not any(s.dma_bus_address for s in sgl)      # sg_dma_unmark_bus_address on the way
    assert mapped != d.iommu.snapshot() == _sg_domain("switch")[0].iommu.snapshot()   # no PTE left


def test_map_sg_only_bus_addresses_allocates_nothing_and_unmaps_nothing():
    from iovalab.kernel.dma_iommu import ScatterEntry
    d, dev = _sg_domain("switch", 0)
    before = d.snapshot()
    sgl = [ScatterEntry(BAR, 0x1000), ScatterEntry(BAR + 0x1000, 0x1000)]
    assert d.dma_map_sg(dev, sgl) == 2        # no merging of bus segments, even when contiguous
    assert [(s.dma_address, s.dma_length, s.dma_bus_address) for s in sgl] == \
        [(BAR, 0x1000, True), (BAR + 0x1000, 0x1000, True)]
    assert d.snapshot() == before and d.log.counters().iova_allocs == 0
    d.dma_unmap_sg(dev, sgl)
    assert d.snapshot() == before and d.log.counters().iotlb_invalidations == 0


def test_map_sg_thru_host_bridge_is_memory_without_iommu_mmio():
    """7.3.4 iommu_dma_map_sg: 'mapped with regular IOVAs'; prot from dma_info_to_prot(dir, coherent,
    attrs) with the caller's attrs: no IOMMU_MMIO (blk-mq-dma and hmm add DMA_ATTR_MMIO, map_sg does not)."""
    from iovalab.kernel.dma_iommu import ScatterEntry
    d, dev = _sg_domain("host_bridge")
    sgl = [ScatterEntry(BAR, 0x2000), ScatterEntry(BAR + 0x2000, 0x2000)]
    assert d.dma_map_sg(dev, sgl) == 1 and sgl[0].dma_length == 0x4000 and not sgl[0].dma_bus_address
    (m,) = [e for e in d.log.events if e.kind == "iommu_map_calls"]
    assert m.args["paddr"] == BAR and m.args["size"] == 0x4000
    assert m.args["prot"] & IOMMU_CACHE and not m.args["prot"] & IOMMU_MMIO
    iova = sgl[0].dma_address
    assert d.iommu.iommu_iova_to_phys(iova + 0x3000) == BAR + 0x3000
    d.dma_unmap_sg(dev, sgl)
    assert d.iommu.iommu_iova_to_phys(iova) == 0


def test_map_sg_not_supported_is_eremoteio_state_unchanged():
    from iovalab.kernel.dma_iommu import ScatterEntry
    from iovalab.kernel.units import DMA_MAPPING_ERROR, EREMOTEIO
    d, dev = _sg_domain("host_bridge_not_allowlisted")
    before = d.snapshot()
    sgl = [ScatterEntry(0x10_0000, 0x1000), ScatterEntry(BAR, 0x1000)]
    assert d.dma_map_sg(dev, sgl) == 0                       # dma_map_sg_attrs: errors are 0
    assert [(s.dma_address, s.dma_length) for s in sgl] == [(DMA_MAPPING_ERROR, 0)] * 2   # __invalidate_sg
    assert d.dma_map_sgtable(dev, sgl) == -EREMOTEIO         # dma_map_sgtable: the errno
    assert d.snapshot() == before
    ev = [e for e in d.log.events if e.func == "iommu_dma_map_sg"]
    assert len(ev) == 2 and ev[0].result == -EREMOTEIO and "NOT_SUPPORTED" in ev[0].args["rule"]


# ------------------------------------------------------------------ hmm_dma_map_pfn (7.3.4 mm/hmm.c)
HMM_BASE = 0x1_0000_0000


def hmm_p2p(topology: str, bus_offset: int = 0x100_0000_0000, npages: int = 8) -> dict:
    """An ODP umem of ``npages`` pages, pages 0..npages/2-1 in ordinary memory, the rest in a BAR."""
    half = npages // 2
    return {"name": "hmm-p2p", "scenario": "hmm", "device": "mlx5", "iommu": "intel-vtd",
            "parameters": {"npages": npages, "phys": {"base": hex(HMM_BASE), "stride": "0x2000"},
                           "p2p": {"owner": "0000:04:00.0", "bar": hex(HMM_BASE + half * 0x2000),
                                   "size": hex(half * 0x2000), "bus_offset": hex(bus_offset),
                                   "topology": topology}}}


def _in_bar(p: int, npages: int = 8) -> bool:
    return HMM_BASE + npages // 2 * 0x2000 <= p < HMM_BASE + npages * 0x2000


@pytest.mark.parametrize("api", ["iova", "page", "direct"])
def test_hmm_bus_addr_returns_bus_address_without_iommu(api):
    off = 0x100_0000_0000
    res = run_workload(hmm_p2p("switch", off), api)
    dma = [int(a) for a in res.device_view["dma"]]
    for i in range(4, 8):                                   # the BAR pages: bus addresses
        assert dma[i] == HMM_BASE + i * 0x2000 + off
    for e in res.log.events:
        if e.kind == "iommu_map_calls" or (e.kind == "dma_api_calls" and e.func.startswith(
                ("dma_map", "dma_iova_l", "dma_unmap", "dma_iova_u"))):
            assert not _in_bar(e.args.get("paddr", e.args.get("phys", 0))), e   # no map of a BAR page
    links = [e for e in res.log.events if e.kind == "dma_api_calls" and e.func in ("dma_iova_link", "dma_map_page")]
    assert len(links) == 4                                   # only the memory pages
    unl = [e for e in res.log.events if e.kind == "dma_api_calls" and e.func in ("dma_iova_unlink", "dma_unmap_page")]
    assert len(unl) == (0 if api == "direct" else 4)          # teardown skips the bus addresses
    if api == "iova":
        assert dma[:4] == [res.device_view["state_addr"] + i * 0x1000 for i in range(4)]


@pytest.mark.parametrize("api", ["iova", "page"])
def test_hmm_thru_host_bridge_maps_with_dma_attr_mmio(api):
    res = run_workload(hmm_p2p("host_bridge"), api)
    maps = [e for e in res.log.events if e.kind == "iommu_map_calls"]
    bar = [e for e in maps if _in_bar(e.args["paddr"])]
    mem = [e for e in maps if not _in_bar(e.args["paddr"])]
    assert len(bar) == len(mem) == 4
    assert all(e.args["prot"] & IOMMU_MMIO and not e.args["prot"] & IOMMU_CACHE for e in bar)
    assert all(e.args["prot"] & IOMMU_CACHE and not e.args["prot"] & IOMMU_MMIO for e in mem)
    calls = [e for e in res.log.events if e.kind == "dma_api_calls"]
    if api == "page":    # 7.3.4: dma_map_phys(..., DMA_ATTR_MMIO) and dma_unmap_phys for the BAR pages
        phys = sorted(e.func for e in calls if e.func.endswith("_phys"))
        assert phys == ["dma_map_phys"] * 4 + ["dma_unmap_phys"] * 4
        assert all(e.args["attrs"] & DMA_ATTR_MMIO for e in calls if e.func == "dma_map_phys")
    else:
        assert len([e for e in calls if e.func == "dma_iova_unlink"]) == 8
    assert sum(e.args["size"] for e in of_kind(res, "iommu_unmap")) == sum(e.args["size"] for e in maps)


def test_hmm_thru_host_bridge_direct_passes_mmio_to_dma_direct():
    res = run_workload(hmm_p2p("host_bridge"), "direct")
    calls = [e for e in res.log.events if e.kind == "dma_api_calls" and e.func == "dma_map_page"]
    assert [bool(e.args["attrs"] & DMA_ATTR_MMIO) for e in calls] == [False] * 4 + [True] * 4
    assert [int(a) for a in res.device_view["dma"]] == [HMM_BASE + i * 0x2000 for i in range(8)]


@pytest.mark.parametrize("api", ["iova", "page", "direct"])
def test_hmm_not_supported_is_dma_mapping_error(api):
    from iovalab.kernel.units import DMA_MAPPING_ERROR
    res = run_workload(hmm_p2p("host_bridge_not_allowlisted"), api)
    dma = [int(a) for a in res.device_view["dma"]]
    assert dma[4:] == [0] * 4 and all(dma[:4])              # BAR pages never mapped
    assert res.device_view["mapped"] == 4
    assert not any(_in_bar(e.args["paddr"]) for e in of_kind(res, "iommu_map_calls"))
    fine = [s for s in iter_workload(hmm_p2p("host_bridge_not_allowlisted"), api)
            if s.get("dma") == DMA_MAPPING_ERROR]
    assert len(fine) == 4 and all("PCI_P2PDMA_MAP_NOT_SUPPORTED" in s["what"] for s in fine)


def test_hmm_bus_addr_refault_recomputes_the_address():
    """An entry marked HMM_PFN_P2PDMA_BUS is not returned from the early 'already mapped' exit: the
    bus address is computed again (no double count, nothing mapped)."""
    p = hmm_p2p("switch", 0x1000)
    p["parameters"]["fault_order"] = "repeated"
    res = run_workload(p, "iova")
    assert res.device_view["mapped"] == 8
    assert len([e for e in res.log.events if e.func == "dma_iova_link" and e.kind == "dma_api_calls"]) == 4
