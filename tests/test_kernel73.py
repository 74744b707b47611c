"""Kernel versions as a dimension: what Linux 7.3.4 does differently from the 6.17 model
(iovalab.kernel.version.DIFFERENCES), one test per difference, and the version/HZ arguments."""

import pytest

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DMA_ATTR_MMIO, DMA_TO_DEVICE, DmaDomain, DmaIovaState
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import IOMMU_MMIO, IommuDomain, IotlbGather
from iovalab.kernel.pgtable import AMDV1PT_PGSIZES, AmdV1Pgtable, Amdv1PtPgtable, IntelVtdPgtable, VtdssPgtable
from iovalab.kernel.pgtable.amdv1_pt import amdv1pt_possible_sizes
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.units import DMA_MAPPING_ERROR, EADDRINUSE, ENXIO
from iovalab.kernel.version import (
    DEFAULT_HZ, DEFAULT_KERNEL, DIFFERENCES, behaves, fq_timer_expiry, msecs_to_jiffies,
)
from iovalab.lab.scenarios import run_scenario
from iovalab.trace.ftrace import is_domain_flush, parse_ftrace
from iovalab.trace.replay import events_to_ftrace

RW = 3


def test_defaults_and_bad_values():
    assert (DEFAULT_KERNEL, DEFAULT_HZ) == ("7.3", 250)
    d = DmaDomain()
    assert (d.kernel, d.hz) == ("7.3", 250) and isinstance(d.iommu.pgtable, VtdssPgtable)
    assert type(DmaDomain(kernel="6.17").iommu.pgtable) is IntelVtdPgtable
    for bad in ("6.12", 7.3, None):
        with pytest.raises(ValueError, match="kernel"):
            DmaDomain(kernel=bad)
    for bad in (0, -250, 250.0, True, "250"):
        with pytest.raises(ValueError, match="hz"):
            DmaDomain(hz=bad)
    # every difference cites a 7.3.4 file and function
    assert all(":" in d.source and "(" in d.source for d in DIFFERENCES.values())
    assert behaves("7.3", "dma_map_phys") and not behaves("6.17", "dma_map_phys")


def _two_step(dom, dev, pages, reserve):
    st = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st, 0, reserve)
    for k, p in enumerate(pages):
        dom.dma_iova_link(dev, st, p, k * 0x1000, 0x1000)
    dom.dma_iova_sync(dev, st, 0, len(pages) * 0x1000)
    return st


@pytest.mark.parametrize("kernel, queued, syncs, freed_pages", [("6.17", 1, 0, 2), ("7.3", 0, 1, 4)])
def test_destroy_is_unlink_plus_free_of_the_reservation(kernel, queued, syncs, freed_pages):
    """7.3.4 dma_iova_destroy = dma_iova_unlink (own sync, even lazy) + dma_iova_free of the whole
    reserved size; 6.17 queued the unmap and freed only the mapped length."""
    dom = DmaDomain("intel-vtd", strict=False, kernel=kernel)
    dev = Device.nvme()
    st = _two_step(dom, dev, [0x100000, 0x300000], reserve=0x4000)
    mark = dom.log.mark()
    dom.dma_iova_destroy(dev, st, 0x2000)
    evs = dom.log.since(mark)
    assert dom.fq_pending() == queued
    assert sum(e.kind == "iotlb_invalidations" for e in evs) == syncs
    frees = [e for e in evs if e.kind == "iova_frees"] + [e for e in evs if e.func == "queue_iova"]
    assert frees and frees[0].args.get("size", frees[0].args.get("pages")) == freed_pages
    # the nested free is no driver-visible call: one dma_api_calls event
    assert [e.func for e in evs if e.kind == "dma_api_calls"] == ["dma_iova_destroy"]


def test_dma_map_phys_and_mmio():
    dev = Device.thunderbolt_nvme()
    with pytest.raises(ValueError, match="dma_map_phys"):
        DmaDomain(kernel="6.17").dma_map_phys(dev, 0x1000, 0x1000)
    for attrs, bounced in ((0, 1), (DMA_ATTR_MMIO, 0)):
        dom = DmaDomain("intel-vtd", swiotlb=SwiotlbPool(0x8000_0000, 1 << 20, EventLog()), kernel="7.3")
        a = dom.dma_map_phys(dev, 0x1234_5E00, 0x300, DMA_TO_DEVICE, attrs)
        assert dom.log.count("swiotlb_bounces") == bounced
        assert (dom.iommu.iommu_iova_to_phys(a) == 0x1234_5E00) == (not bounced)
        prot = [e.args["prot"] for e in dom.log if e.kind == "iommu_map_calls"][-1]
        assert bool(prot & IOMMU_MMIO) == bool(attrs)
        dom.dma_unmap_phys(dev, a, 0x300, DMA_TO_DEVICE, attrs)
        assert dom.iommu.iommu_iova_to_phys(a) == 0
    # dma_map_page_attrs refuses DMA_ATTR_MMIO in 7.3 (kernel/dma/mapping.c)
    assert DmaDomain().dma_map_page(Device.nvme(), 0x1000, 0x1000, attrs=DMA_ATTR_MMIO) == DMA_MAPPING_ERROR


def _pt(kernel):
    log = EventLog()
    return IommuDomain.preset("intel-vtd", log=log, kernel=kernel), log


def _lines(log):
    return [("map" if e.kind == "iommu_map_calls" else "unmap", e.args["iova"], e.args["size"])
            for e in log if e.kind in ("iommu_map_calls", "iommu_unmap")]


def test_generic_pt_map_errors_are_traced_and_unwound():
    d, log = _pt("7.3")
    assert d.iommu_map(0x10000, 0x100000, 0x1000, RW) == 0
    # a mapped page in the way: the page before it is written, traced, then unmapped again
    assert d.iommu_map(0xF000, 0x200000, 0x3000, RW) == -EADDRINUSE
    assert d.iommu_map(0x20800, 0x300000, 0x1000, RW) == -ENXIO     # unaligned: no pr_err
    assert _lines(log) == [("map", 0x10000, 0x1000), ("map", 0xF000, 0x1000), ("unmap", 0xF000, 0x1000),
                           ("map", 0x20800, 0), ("unmap", 0x20800, 0)]
    assert d.iommu_iova_to_phys(0xF000) == 0 and d.iommu_iova_to_phys(0x10000) == 0x100000
    d6, _ = _pt("6.17")
    d6.iommu_map(0x10000, 0x100000, 0x1000, RW)
    assert d6.iommu_map(0xF000, 0x200000, 0x3000, RW) != -EADDRINUSE


@pytest.mark.parametrize("kernel, unmapped, flushes", [("6.17", 0x3000, 2), ("7.3", 0x1000, 1)])
def test_generic_pt_unmap_stops_at_a_hole_and_gathers_one_range(kernel, unmapped, flushes):
    d, log = _pt(kernel)
    d.iommu_map(0x40000, 0x400000, 0x1000, RW)
    d.iommu_map(0x42000, 0x402000, 0x1000, RW)
    g = IotlbGather()
    assert d.iommu_unmap_fast(0x40000, 0x3000, g) == unmapped
    d.iommu_iotlb_sync(g)
    # a 4K head and a 2M superpage: 6.17 VT-d gathered per chunk (page-size change: early sync)
    assert d.iommu_map(0x1FF000, 0x1FF000, 0x201000, RW) == 0
    n0 = log.count("iotlb_invalidations")
    g = IotlbGather()
    assert d.iommu_unmap_fast(0x1FF000, 0x201000, g) == 0x201000
    d.iommu_iotlb_sync(g)
    assert log.count("iotlb_invalidations") - n0 == flushes


def test_generic_pt_frees_covered_tables_through_the_gather():
    d, log = _pt("7.3")
    assert d.iommu_map(0x8000_0000, 0x1000, 0x200000, RW) == 0   # 512 4K leaves: one whole PT table
    g = IotlbGather()
    assert d.iommu_unmap_fast(0x8000_0000, 0x200000, g) == 0x200000   # covers the PT whole: freed
    assert g.freelist >= 1
    d.iommu_iotlb_sync(g)
    assert log.events[-1].args["freed_tables"] >= 1


def test_flush_queue_timer_in_jiffies():
    assert msecs_to_jiffies(10, 250) == 3 and msecs_to_jiffies(10, 1000) == 10 and msecs_to_jiffies(100, 250) == 25
    assert msecs_to_jiffies(10, 300) == 3 and msecs_to_jiffies(10, 100) == 1
    assert fq_timer_expiry(1000.0, 10, 250) == pytest.approx(1012.0)    # armed on a tick: 3 ticks later
    assert fq_timer_expiry(1003.9, 10, 250) == pytest.approx(1012.0)    # just before the next: 8.1 ms
    with pytest.raises(ValueError, match="hz"):
        msecs_to_jiffies(10, 0)
    dom = DmaDomain("intel-vtd", strict=False, kernel="6.17", hz=250)
    dev = Device.nvme()
    dom.dma_unmap_page(dev, dom.dma_map_page(dev, 0x100000, 4096), 4096)
    # expiry at jiffy 3 (12 ms); calc_index() (kernel/time/timer.c) files it one tick later: runs at 16 ms
    assert dom.fq_timer_on and dom.fq_timer_deadline == pytest.approx(16.0)
    assert not dom.advance_time(15.9) and dom.advance_time(0.2)


def test_lazy_two_step_is_flushed_at_once_in_73_but_map_phys_waits():
    dev = Device.nvme()
    dom = DmaDomain("intel-vtd", strict=False)
    st = _two_step(dom, dev, [0x100000], reserve=0x1000)
    dom.dma_iova_destroy(dev, st, 0x1000)
    assert dom.fq_pending() == 0
    a = dom.dma_map_phys(dev, 0x200000, 0x1000)
    dom.dma_unmap_phys(dev, a, 0x1000)
    assert dom.fq_pending() == 1


@pytest.mark.parametrize("kernel", ["6.17", "7.3"])
def test_exporter_writes_the_versions_form_and_the_parser_reads_both(kernel):
    dom = DmaDomain("intel-vtd", strict=False, kernel=kernel)
    dev = Device.nvme()
    dom.dma_unmap_page(dev, dom.dma_map_page(dev, 0x100000, 4096), 4096)
    dom.fq_flush_iotlb()
    st = _two_step(dom, dev, [0x300000], reserve=0x1000)
    dom.dma_iova_unlink(dev, st, 0, 0x1000)
    cap = parse_ftrace(events_to_ftrace(dom.log.events, kernel=kernel))
    events = [ln.event for ln in cap.lines]
    new = kernel == "7.3"
    assert ("dma_map_phys" in events, "dma_map_page" in events) == (new, not new)
    assert ("cache_tag_flush_all" in events) == (not new)
    assert sum(is_domain_flush(ln) for ln in cap.lines) == 1
    ranged = [ln for ln in cap.lines if ln.event == "cache_tag_flush_range" and not is_domain_flush(ln)]
    assert ranged and all(("pages" in ln.fields) == (not new) for ln in ranged)


def test_scenarios_accept_kernel():
    r6 = run_scenario("nvme-128k-scattered", api="iova", strict=False, kernel="6.17")
    r7 = run_scenario("nvme-128k-scattered", api="iova", strict=False, kernel="7.3")
    assert (r6.domain.kernel, r7.domain.kernel) == ("6.17", "7.3")
    # 7.3: the two-step IOVA is unlinked with its own IOTLB sync, never queued
    assert r7.summary()["iotlb_invalidations"] == 1
    with pytest.raises(ValueError, match="kernel"):
        run_scenario("nvme-128k-scattered", kernel="5.10")


# ------------------------------------------------------------------ replay-ftrace --kernel
def test_replay_kernel_inferred_from_trace_evidence():
    from iovalab.resources import resolve_data_paths
    from iovalab.trace.ftrace import parse_ftrace
    from iovalab.trace.system import infer_kernel, infer_system

    new = parse_ftrace(resolve_data_paths("real/v734-strict-smp1.trace")[0])
    old = parse_ftrace(resolve_data_paths("real/strict-smp1.trace")[0])
    d = infer_kernel(new)
    assert (d.value, d.guess) == ("7.3", False) and "dma_map_phys" in d.evidence
    d = infer_kernel(old)
    assert (d.value, d.guess) == ("6.17", False) and "dma_map_page" in d.evidence
    assert infer_system(new).kernel == "7.3" and infer_system(new, kernel="6.17").kernel == "6.17"
    with pytest.raises(ValueError, match="kernel"):
        infer_kernel(new, "6.12")


def test_replay_kernel_guess_and_conflicting_forms():
    from iovalab.trace.ftrace import parse_ftrace
    from iovalab.trace.system import infer_kernel

    head = "# tracer: nop\n#\n"
    flush73 = ("  kworker-1 [000] d.h1. 10.000001: cache_tag_flush_range: dmar0 dmar0[0] type iotlb did 3 "
               "[0x1000-0x1fff] addr 0x1000 mask 0x0\n")
    flush612 = ("  kworker-1 [000] d.h1. 10.000002: cache_tag_flush_range: dmar0 dmar0[0] type iotlb did 3 "
                "[0x1000-0x1fff] addr 0x1000 pages 0x1 mask 0x0\n")
    d = infer_kernel(parse_ftrace(head + flush73))
    assert (d.value, d.guess) == ("7.3", False) and "without pages" in d.evidence
    assert infer_kernel(parse_ftrace(head + flush612)).value == "6.17"
    with pytest.raises(ValueError, match="--kernel"):
        infer_kernel(parse_ftrace(head + flush73 + flush612))
    d = infer_kernel(parse_ftrace(head + "  kworker-1 [000] ..... 10.000003: map: IOMMU: iova=0x0000000000001000 "
                                  "- 0x0000000000002000 paddr=0x0000000000100000 size=4096\n"))
    assert d.guess and d.value == "7.3"
# ----------------------------------------------------------------- AMD v1 as a generic page table (7.3.4)
def _amd(kernel):
    log = EventLog()
    return IommuDomain.preset("amd-v1", log=log, kernel=kernel), log


def test_amdv1_is_a_generic_page_table_in_73_only():
    """amd/iommu.c amd_iommu_domain_alloc_paging_v1() -> pt_iommu_amdv1_init() (7.3.4); 6.17 keeps
    amd/io_pgtable.c. Page sizes: fmt/amdv1.h amdv1pt_possible_sizes(), every power of two 4K..2^51
    but 512G: the 6.17 AMD_IOMMU_PGSIZES."""
    assert type(_amd("7.3")[0].pgtable) is Amdv1PtPgtable and type(_amd("6.17")[0].pgtable) is AmdV1Pgtable
    assert AMDV1PT_PGSIZES == (((1 << 52) - 1) & ~0xFFF) ^ (1 << 39)
    assert amdv1pt_possible_sizes(0) == sum(1 << b for b in range(12, 21))   # 4K..1M at level 0
    assert amdv1pt_possible_sizes(3) == sum(1 << b for b in range(40, 48))   # 1T..128T, 512G excluded
    assert amdv1pt_possible_sizes(5) == 0                                    # PT_MAX_TOP_LEVEL: no leaf
    assert behaves("7.3", "amdv1_generic_pt") and not behaves("6.17", "amdv1_generic_pt")


def test_amdv1_pt_contiguous_pte_encoding():
    """fmt/amdv1.h amdv1pt_install_leaf_entry(): a 64K leaf is 16 level-0 slots with NEXT_LEVEL = 7
    and OA low bits 2**(16 - 12 - 1) - 1 set; PR, FC (PT_FEAT_AMDV1_FORCE_COHERENCE), IR, IW."""
    d, log = _amd("7.3")
    assert d.iommu_map(0x100000, 0x2340000, 0x10000, RW) == 0
    call = [e for e in log if e.kind == "iommu_map_calls"][-1]
    assert call.args["chunks"] == [(0x100000, 0x2340000, 0x10000, 1)]
    w = d.pgtable.walk(0x105000)[-1]
    assert w["kind"] == "leaf" and w["pte"] == 0x2340000 | 0x7000 | (7 << 9) | 1 | (1 << 60) | (1 << 61) | (1 << 62)
    assert d.pgtable.leaf_count() == 16 and d.iommu_iova_to_phys(0x10ABCD) == 0x234ABCD


@pytest.mark.parametrize("kernel, got, left", [("6.17", 0x10000, 0), ("7.3", 0, 16)])
def test_amdv1_unmap_inside_a_contiguous_entry(kernel, got, left):
    """7.3.4 iommu_pt.h __unmap_range(): a range starting inside a contiguous entry is -EINVAL, 0
    unmapped, nothing cleared; 6.17 amd/io_pgtable.c fetch_pte() cleared the whole 64K page."""
    d, log = _amd(kernel)
    assert d.iommu_map(0x100000, 0x2340000, 0x10000, RW) == 0
    assert d.iommu_unmap(0x104000, 0x1000) == got
    assert d.pgtable.leaf_count() == left
    # a range ending inside it clears it whole and counts it (both versions)
    assert d.iommu_unmap(0x100000, 0x1000) == (0x10000 if left else 0)


@pytest.mark.parametrize("kernel", ["6.17", "7.3"])
def test_amdv1_unmap_frees_covered_tables_and_gathers_once(kernel):
    """7.3.4 __unmap_range(): a level-0 table the range covers whole goes on the gather's freelist
    (gather_add_table) and the gather gets one range (gather_range_pending); 6.17
    iommu_v1_unmap_pages() never freed tables."""
    d, log = _amd(kernel)
    assert d.iommu_map(0x4000_0000, 0x1000, 0x1000, RW) == 0          # 4K leaves in one level-0 table
    for k in range(1, 512):
        assert d.iommu_map(0x4000_0000 + k * 0x1000, 0x1000 + k * 0x2000, 0x1000, RW) == 0
    tables = d.pgtable.table_page_count()
    g = IotlbGather()
    assert d.iommu_unmap_fast(0x4000_0000, 0x200000, g) == 0x200000
    assert (g.start, g.end) == (0x4000_0000, 0x4020_0000 - 1)
    if kernel == "7.3":
        assert g.freelist == 1 and d.pgtable.table_page_count() == tables - 1
        assert [e.func for e in log if e.kind == "table_free"] == ["gather_add_table"]
    else:
        assert g.freelist == 0 and d.pgtable.table_page_count() == tables


def test_amdv1_pt_map_after_a_hole_and_over_a_freed_table():
    """7.3.4: a 2M leaf where an emptied level-0 table still hangs (freed only by a covering unmap)
    goes through clear_contig(): the table is freed through the map's gather and map_range() syncs
    once (iommu_iotlb_sync -> amd_iommu_domain_flush_pages) over the table's span."""
    d, log = _amd("7.3")
    assert d.iommu_map(0x20_0000, 0x1000, 0x1000, RW) == 0
    assert d.iommu_unmap(0x20_0000, 0x1000) == 0x1000                  # the level-0 table stays
    tables = d.pgtable.table_page_count()
    mark = log.mark()
    assert d.iommu_map(0x20_0000, 0x4000_0000, 0x20_0000, RW) == 0     # one 2M leaf
    evs = log.since(mark)
    assert d.pgtable.table_page_count() == tables - 1
    assert d.iommu_iova_to_phys(0x20_1234) == 0x4000_1234
    assert [e.func for e in evs if e.kind == "table_free"] == ["gather_add_table"]
    flush = [(e.func, e.args["start"], e.args["end"]) for e in evs if e.kind == "iotlb_invalidations"]
    assert flush == [("amd_iommu_domain_flush_pages", 0x20_0000, 0x40_0000 - 1)]
