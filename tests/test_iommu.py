"""IOMMU core model (drivers/iommu/iommu.c): iommu_pgsize (+ the pgsize.jsonl reference trace),
map/unmap/sync, IOTLB gather helpers and driver gather styles, iommu_map_sg, the IOTLB model."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import (
    IOMMU_FAULT_WRITE,
    IOMMU_READ,
    IOMMU_WRITE,
    PRESETS,
    IommuDomain,
    IotlbGather,
    iommu_iotlb_gather_add_page,
    iommu_iotlb_gather_add_range,
    iommu_iotlb_gather_init,
    iommu_iotlb_gather_is_disjoint,
    iommu_pgsize,
    split_pages,
)
from iovalab.kernel.pgtable import AMD_IOMMU_PGSIZES
from iovalab.kernel.units import EEXIST, EINVAL, SZ_1G, SZ_2M, SZ_4K, SZ_64K, SZ_512M, ULONG_MAX

RW = IOMMU_READ | IOMMU_WRITE
K4, M2 = SZ_4K, SZ_2M
INTEL = SZ_4K | SZ_2M | SZ_1G
TRACE = Path(__file__).resolve().parent.parent / "data" / "kernel-traces" / "pgsize.jsonl"


def dom(name="intel-vtd", **kw):
    """A domain of the 6.17 model this module documents (7.3 VT-d: tests/test_kernel73.py)."""
    log = EventLog()
    kw.setdefault("kernel", "6.17")
    return IommuDomain.preset(name, log=log, **kw), log


# -- iommu_pgsize -------------------------------------------------------------------------------
def test_pgsize_trace_replay_has_no_mismatch():
    ops = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    assert ops[0]["kind"] == "pgsize-trace"
    splits = [o for o in ops[1:] if o["op"] == "split"]
    assert len(splits) == 500
    bad = [o for o in splits
           if [list(x) for x in split_pages(o["pgsize_bitmap"], o["iova"], o["paddr"], o["size"])]
           != o["expect"]]
    assert bad == []


@pytest.mark.parametrize("bitmap,iova,pa,size,expect", [
    # iommu_pgsize() worked examples (drivers/iommu/iommu.c, 6.17)
    (INTEL, 0xFFE00000, 0x40200000, 4 << 20, [(0xFFE00000, 0x40200000, M2, 2)]),
    (INTEL, 0x1FF000, 0x3FF000, 0x401000, [(0x1FF000, 0x3FF000, K4, 1), (0x200000, 0x400000, M2, 2)]),
    (INTEL, 0x40000000, 0x80000000, SZ_1G + M2 + 3 * K4,
     [(0x40000000, 0x80000000, SZ_1G, 1), (0x80000000, 0xC0000000, M2, 1), (0x80200000, 0xC0200000, K4, 3)]),
    (AMD_IOMMU_PGSIZES, 0x10000, 0x30000, 0x20000, [(0x10000, 0x30000, SZ_64K, 2)]),
])
def test_spec_worked_examples(bitmap, iova, pa, size, expect):
    assert split_pages(bitmap, iova, pa, size) == expect
    name = "amd-v1" if bitmap == AMD_IOMMU_PGSIZES else "intel-vtd"
    d, log = dom(name)
    assert d.iommu_map(iova, pa, size, RW) == 0
    (ev,) = log.of_kind("iommu_map_calls")
    assert ev.args["chunks"] == expect
    assert (ev.args["iova"], ev.args["paddr"], ev.args["size"]) == (iova, pa, size)
    assert d.iommu_iova_to_phys(iova + size - 1) == pa + size - 1


def test_iommu_pgsize_single_steps():
    assert iommu_pgsize(INTEL, 0x1FF000, 0x3FF000, 0x401000) == (K4, 1)
    assert iommu_pgsize(INTEL, 0x1FF000, 0x4FF000, 0x401000) == (K4, 0x401)   # never co-aligned on 2M
    assert iommu_pgsize(INTEL, 0x200000, 0x400000, 0x1FF000) == (K4, 0x1FF)   # below 2M: 4K pages
    assert iommu_pgsize(INTEL, 0x200000, 0x400000, 0x3FF000) == (M2, 1)
    assert iommu_pgsize(INTEL, 0, 0, 3 * SZ_1G) == (SZ_1G, 3)                 # addr_merge 0: any size
    with pytest.raises(ValueError, match="BUG_ON"):
        iommu_pgsize(INTEL, 0x800, 0, K4)
    with pytest.raises(ValueError, match="__fls"):
        iommu_pgsize(INTEL, 0, 0, 0)


# -- map ----------------------------------------------------------------------------------------
def test_map_events_and_counters():
    d, log = dom()
    assert d.iommu_map(0x10000, 0x20000, 3 * K4, RW) == 0
    kinds = [e.kind for e in log]
    assert kinds[-2:] == ["iommu_map_calls", "iotlb_syncs"]
    c = log.counters()
    assert (c.iommu_map_calls, c.pte_writes, c.iotlb_syncs) == (1, 3, 1)
    assert c.table_pages == 1 + 3                         # root at creation + PDPT, PD, PT
    (sync,) = log.of_kind("iotlb_syncs")
    assert sync.args["callback"] == "intel_iommu_iotlb_sync_map" and sync.args["flushed"] is False
    assert sync.func == "iommu_sync_map"
    assert all(e.layer in ("iommu", "pgtable") for e in log)
    # a zero-size map passes the alignment check and still traces
    assert d.iommu_map_nosync(0x40000, 0x40000, 0, RW) == 0
    assert log.of_kind("iommu_map_calls")[-1].args["size"] == 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_unaligned_map_and_unmap(name):
    d, log = dom(name)
    g = d.granule
    d.iommu_map(0, 0x100000000, g, RW)
    snap, n = d.snapshot(), len(log)
    for iova, pa, size in ((g // 2, 0, g), (0, g // 2, g), (g, g, g + 1)):
        assert d.iommu_map(iova, pa, size, RW) == -EINVAL
    assert [e.kind for e in log.since((n, {}))] == ["pr_err"] * 3
    assert "unaligned: iova" in log[-1].args["msg"]
    assert d.iommu_unmap(g // 2, g) == 0 and d.iommu_unmap(0, g + 1) == 0
    assert log[-1].kind == "pr_err" and not log.of_kind("iommu_unmap")
    assert d.snapshot() == snap


def test_overlap_unwinds_and_leaves_translations():
    d, log = dom("smmuv3-4k")
    d.iommu_map(0x200000, 0x900000, K4, RW)
    snap = d.snapshot()
    m = log.mark()
    # ARM maps entries 510 and 511 of the first table, then the next map_pages hits 0x200000
    assert d.iommu_map(0x1FE000, 0x5FE000, 3 * K4, RW) == -EEXIST
    evs = log.since(m)
    assert [e.args["pgcount"] for e in evs if e.kind == "pte_writes"] == [3]
    unmap = [e for e in evs if e.kind == "iommu_unmap"]
    got = [(e.args["iova"], e.args["size"], e.args["unmapped_size"]) for e in unmap]
    assert got == [(0x1FE000, 0x2000, 0x2000)]
    assert not [e for e in evs if e.kind == "iommu_map_calls"]
    assert evs[-1].kind == "error" and evs[-1].result == -EEXIST
    assert d.snapshot() == snap


def test_overlap_inside_one_map_pages_call_writes_nothing():
    d, log = dom()
    d.iommu_map(0x200000, 0x900000, K4, RW)
    snap = d.snapshot()
    assert d.iommu_map(0x1FE000, 0x5FE000, 3 * K4, RW) == -EEXIST     # VT-d: one call, validated first
    assert log.of_kind("iommu_unmap")[-1].args["size"] == 0           # iommu_unmap(orig, 0) as the kernel
    assert d.snapshot() == snap


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_with_large_pages(name):
    d, log = dom(name)
    sizes = sorted(1 << i for i in range(64) if d.pgsize_bitmap >> i & 1 and (1 << i) <= SZ_1G)
    big = sizes[-1] if name != "amd-v1" else SZ_1G
    small = d.granule
    iova, pa = 4 * big, 8 * big
    size = big + (sizes[1] if len(sizes) > 1 else 0) + 3 * small
    assert d.iommu_map(iova, pa, size, RW) == 0
    chunks = log.of_kind("iommu_map_calls")[0].args["chunks"]
    assert chunks[0][2] == big
    for off in (0, small + 7, big - 1, big, size - 1):
        assert d.iommu_iova_to_phys(iova + off) == pa + off
        assert d.device_access(iova + off) == pa + off
    assert d.pgtable.mapped_ranges() == [(iova, pa, size, RW)]
    assert d.iommu_unmap(iova, size) == size
    assert d.pgtable.leaf_count() == 0 and d.stale_iotlb_entries() == []
    assert d.device_access(iova) is None
    assert log.of_kind("io_page_fault")[-1].args["iova"] == iova


def test_arm_table_end_gives_extra_map_pages_calls():
    # dma-iova.jsonl section 5 case: 640 MiB, IOVA and PA not co-aligned on 512 MiB
    iova, pa, size = 0xFF00000000, 0xFF0000000, 640 << 20
    assert split_pages(SZ_64K | SZ_512M, iova, pa, size) == [(iova, pa, SZ_64K, 10240)]
    d, log = dom("smmuv3-64k")
    assert d.iommu_map(iova, pa, size, RW) == 0
    assert log.of_kind("iommu_map_calls")[0].args["chunks"] == [
        (iova, pa, SZ_64K, 10240), (iova + SZ_512M, pa + SZ_512M, SZ_64K, 2048)]
    assert [e.count for e in log.of_kind("pte_writes")] == [8192, 2048]


# -- gather -------------------------------------------------------------------------------------
def test_gather_helpers():
    g = IotlbGather()
    assert (g.start, g.end, g.pgsize, g.queued) == (ULONG_MAX, 0, 0, False)
    assert not iommu_iotlb_gather_is_disjoint(g, 0x5000, K4)            # empty gather
    iommu_iotlb_gather_add_range(g, 0x5000, K4)
    assert (g.start, g.end) == (0x5000, 0x5FFF)
    assert not iommu_iotlb_gather_is_disjoint(g, 0x6000, K4)            # adjacent above
    assert not iommu_iotlb_gather_is_disjoint(g, 0x4000, K4)            # adjacent below
    assert iommu_iotlb_gather_is_disjoint(g, 0x7000, K4)
    assert iommu_iotlb_gather_is_disjoint(g, 0x2000, K4)
    g.queued = True
    iommu_iotlb_gather_init(g)
    assert (g.start, g.end, g.pgsize, g.queued) == (ULONG_MAX, 0, 0, False)


def test_gather_add_page_early_flush():
    d, log = dom()
    g = IotlbGather()
    iommu_iotlb_gather_add_page(d, g, 0x1000, K4)
    iommu_iotlb_gather_add_page(d, g, 0x2000, K4)                       # same size, adjacent
    assert not log.of_kind("iotlb_invalidations") and (g.start, g.end) == (0x1000, 0x2FFF)
    iommu_iotlb_gather_add_page(d, g, 0x200000, M2)                     # other size: sync first
    (ev,) = log.of_kind("iotlb_invalidations")
    assert (ev.args["start"], ev.args["end"], ev.args["early"]) == (0x1000, 0x2FFF, True)
    assert (g.start, g.end, g.pgsize) == (0x200000, 0x3FFFFF, M2)
    iommu_iotlb_gather_add_page(d, g, 0x800000, M2)                     # disjoint: sync again
    assert len(log.of_kind("iotlb_invalidations")) == 2


@pytest.mark.parametrize("name,invalidations", [
    ("intel-vtd", [(0x1FF000, 0x1FFFFF, True), (0x200000, 0x5FFFFF, False)]),   # add_page(4K) then (4M)
    ("smmuv3-4k", [(0x1FF000, 0x1FFFFF, True), (0x200000, 0x5FFFFF, False)]),   # add_page(4K) then (2M)
    ("amd-v1", [(0x1FF000, 0x5FFFFF, False)]),                                   # add_range only
])
def test_unmap_gather_style_per_driver(name, invalidations):
    d, log = dom(name)
    d.iommu_map(0x1FF000, 0x3FF000, 0x401000, RW)
    assert d.iommu_unmap(0x1FF000, 0x401000) == 0x401000
    got = [(e.args["start"], e.args["end"], e.args["early"]) for e in log.of_kind("iotlb_invalidations")]
    assert got == invalidations


def test_page_style_gathers_runs_of_equal_pages():
    d, log = dom("smmuv3-4k")
    d.iommu_map(0x1000, 0x100000, 3 * K4, RW)
    d.iommu_map(0x4000, 0x900000, 2 * K4, RW)
    assert d.iommu_unmap(0x1000, 5 * K4) == 5 * K4
    (ev,) = log.of_kind("iotlb_invalidations")
    assert (ev.args["start"], ev.args["end"], ev.args["pgsize"]) == (0x1000, 0x5FFF, K4)


@pytest.mark.parametrize("name,early", [("smmuv3-4k", 1), ("intel-vtd", 1), ("amd-v1", 0)])
def test_disjoint_unmaps_in_one_gather(name, early):
    d, log = dom(name)
    d.iommu_map(0x1000, 0x100000, K4, RW)
    d.iommu_map(0x9000, 0x200000, K4, RW)
    g = IotlbGather()
    d.iommu_unmap_fast(0x1000, K4, g)
    d.iommu_unmap_fast(0x9000, K4, g)
    assert len(log.of_kind("iotlb_invalidations")) == early
    d.iommu_iotlb_sync(g)
    assert len(log.of_kind("iotlb_invalidations")) == early + 1
    assert g.empty()


def test_amd_np_cache_syncs_disjoint_ranges_early():
    d, log = dom("amd-v1", has_iotlb_sync_map=True)
    d.iommu_map(0x1000, 0x100000, K4, RW)
    d.iommu_map(0x9000, 0x200000, K4, RW)
    g = IotlbGather()
    d.iommu_unmap_fast(0x1000, K4, g)
    d.iommu_unmap_fast(0x9000, K4, g)
    callers = [e.args["caller"] for e in log.of_kind("iotlb_invalidations")]
    assert callers == ["amd_iommu_iotlb_gather_add_page"]


@pytest.mark.parametrize("name,records", [("intel-vtd", False), ("smmuv3-4k", False), ("amd-v1", True)])
def test_queued_gather(name, records):
    d, log = dom(name)
    d.iommu_map(0x1000, 0x100000, 2 * K4, RW)
    g = IotlbGather(queued=True)
    assert d.iommu_unmap_fast(0x1000, 2 * K4, g) == 2 * K4
    assert (not g.empty()) is records
    assert not log.of_kind("iotlb_invalidations")


def test_intel_gather_counts_freed_tables():
    d, log = dom()
    d.iommu_map(0x200000, 0x400000 + K4, M2, RW)                       # 512 4K PTEs in one PT
    tables = d.pgtable.table_page_count()
    assert d.iommu_unmap(0x200000, M2) == M2
    assert d.pgtable.table_page_count() == tables - 1
    assert log.of_kind("iotlb_invalidations")[-1].args["freed_tables"] == 1


@pytest.mark.parametrize("name,unmapped", [("smmuv3-4k", 0), ("amd-v1", 0), ("intel-vtd", 1 << 39)])
def test_unmap_of_a_hole_through_the_core(name, unmapped):
    d, log = dom(name)
    assert d.iommu_unmap(0x7000, K4) == unmapped
    ev = log.of_kind("iommu_unmap")[-1]
    assert (ev.args["size"], ev.args["unmapped_size"]) == (K4, unmapped)
    assert (log.count("warn") == 1) is (name == "smmuv3-4k")


# -- iommu_map_sg --------------------------------------------------------------------------------
def test_map_sg_merges_contiguous_runs():
    d, log = dom()
    segs = [(0x100000, K4), (0x101000, K4), (0x200000, 2 * K4), (0x300000, K4)]
    assert d.iommu_map_sg(0x40000000, segs, RW) == 5 * K4
    maps = [(e.args["iova"], e.args["paddr"], e.args["size"]) for e in log.of_kind("iommu_map_calls")]
    assert maps == [(0x40000000, 0x100000, 2 * K4), (0x40002000, 0x200000, 2 * K4),
                    (0x40004000, 0x300000, K4)]
    syncs = log.of_kind("iotlb_syncs")
    assert [(s.args["iova"], s.args["size"]) for s in syncs] == [(0x40000000, 5 * K4)]
    assert d.iommu_iova_to_phys(0x40003000) == 0x201000


def test_map_sg_error_unmaps_everything():
    d, log = dom()
    d.iommu_map(0x40002000, 0x700000, K4, RW)
    snap = d.snapshot()
    segs = [(0x100000, 2 * K4), (0x200000, 2 * K4)]
    assert d.iommu_map_sg(0x40000000, segs, RW) == -EEXIST
    assert log.of_kind("iommu_unmap")[-1].args["size"] == 2 * K4
    assert d.snapshot() == snap
    assert d.iommu_map_sg(0x50000000, [], RW) == 0


# -- IOTLB model -------------------------------------------------------------------------------
def test_strict_unmap_leaves_no_stale_entry_but_fast_unmap_does():
    d, log = dom()
    d.iommu_map(0x10000, 0x80000, 2 * K4, RW)
    assert d.device_access(0x10008) == 0x80008
    assert d.device_access(0x10008) == 0x80008
    assert [e.kind for e in log if e.func == "device_access"] == ["iotlb_miss", "iotlb_hit"]
    g = IotlbGather()
    d.iommu_unmap_fast(0x10000, 2 * K4, g)
    assert d.stale_iotlb_entries() == [(0x10000, 0x80000, K4)]
    assert d.device_access(0x10000) == 0x80000                          # the device still gets through
    d.iommu_iotlb_sync(g)
    assert d.stale_iotlb_entries() == [] and d.device_access(0x10000) is None
    d.iommu_map(0x10000, 0x90000, K4, RW)
    d.device_access(0x10000)
    d.iommu_flush_iotlb_all()
    assert d.iotlb_entries() == [] and log[-1].args["scope"] == "all"


def test_caching_mode_needs_sync_map():
    d, log = dom("intel-vtd-caching-mode")
    assert d.device_access(0x5000) is None                              # fault, cached non-present
    assert d.iommu_map_nosync(0x5000, 0x7000, K4, RW) == 0
    assert d.device_access(0x5000) is None                              # still the cached fault
    assert d.stale_iotlb_entries() == [(0x5000, None, K4)]
    d.iommu_sync_map(0x5000, K4)
    assert log.of_kind("iotlb_syncs")[-1].args["flush"] == "cache_tag_flush_range_np"
    assert d.device_access(0x5000) == 0x7000
    plain, _ = dom("intel-vtd")
    assert plain.device_access(0x5000) is None
    plain.iommu_map_nosync(0x5000, 0x7000, K4, RW)
    assert plain.device_access(0x5000) == 0x7000


def test_permission_fault_and_large_page_entries():
    d, log = dom("smmuv3-4k")
    d.iommu_map(0x200000, 0x400000, M2, IOMMU_READ)
    assert d.device_access(0x200010, write=True) is None
    assert log.of_kind("io_page_fault")[-1].args["flags"] == IOMMU_FAULT_WRITE
    assert d.device_access(0x3FF000, size=2 * K4) is None               # runs past the mapping
    assert d.iotlb_entries() == [(0x200000, 0x400000, M2, IOMMU_READ)]  # one entry for the 2M leaf
    g = IotlbGather()
    d.iommu_unmap_fast(0x200000, M2, g)
    d.iommu_iotlb_sync(g)
    assert d.iotlb_entries() == []


def _pages(iova, size, g):
    return range(iova, iova + size, g)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.data())
def test_iotlb_and_translation_properties(name, data):
    d = IommuDomain.preset(name, log=EventLog(keep=False), kernel="6.17")
    g = d.granule
    big = (d.pgsize_bitmap & ~(2 * g - 1)) & -(d.pgsize_bitmap & ~(2 * g - 1))
    model: dict[int, int] = {}
    live: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(4, 24))):
        op = data.draw(st.sampled_from(["map", "map", "unmap", "unmap_fast", "access", "access"]))
        if op == "map":
            iova = data.draw(st.integers(0, 3)) * big + data.draw(st.integers(0, 4)) * g
            size = data.draw(st.sampled_from([g, 2 * g, 3 * g, big, big + g, 2 * big - g]))
            pa = data.draw(st.integers(1, 40)) * big + data.draw(st.sampled_from([0, 0, g, 3 * g]))
            overlap = any(p in model for p in _pages(iova, size, g))
            ret = d.iommu_map(iova, pa, size, RW)
            assert ret == (-EEXIST if overlap else 0)
            if not ret:
                model.update({p: pa + (p - iova) for p in _pages(iova, size, g)})
                live.append((iova, size))
            assert d.stale_iotlb_entries() == []
        elif op in ("unmap", "unmap_fast") and live:
            iova, size = live.pop(data.draw(st.integers(0, len(live) - 1)))
            if op == "unmap":
                assert d.iommu_unmap(iova, size) == size
            else:
                gather = IotlbGather()
                assert d.iommu_unmap_fast(iova, size, gather) == size
                d.iommu_iotlb_sync(gather)
            for p in _pages(iova, size, g):
                del model[p]
            assert d.stale_iotlb_entries() == []
        elif op == "access":
            a = data.draw(st.integers(0, 4 * big // g)) * g + data.draw(st.integers(0, g - 1))
            page = a & ~(g - 1)
            want = model[page] + (a - page) if page in model else None
            assert d.device_access(a) == want
        probe = data.draw(st.integers(0, 4 * big // g)) * g
        assert d.iommu_iova_to_phys(probe) == model.get(probe, 0)
    assert sum(r[2] for r in d.pgtable.mapped_ranges()) == len(model) * g
    assert d.pgtable.leaf_count() <= len(model)


# -- presets and configuration --------------------------------------------------------------------
def test_presets():
    assert set(PRESETS) == {"intel-vtd", "intel-vtd-caching-mode", "amd-v1", "smmuv3-4k", "smmuv3-16k",
                            "smmuv3-64k"}
    d = IommuDomain.preset("intel-vtd")
    assert (d.pgsize_bitmap, d.granule, d.aperture_end) == (0x40201000, K4, (1 << 48) - 1)
    assert d.gather_style == "chunk" and d.driver == "intel"
    assert IommuDomain.preset("intel-vtd-caching-mode").has_iotlb_sync_map
    assert IommuDomain.preset("amd-v1").pgsize_bitmap == ((1 << 52) - 1) & ~0xFFF & ~(1 << 39)
    assert IommuDomain.preset("smmuv3-64k").granule == SZ_64K
    assert IommuDomain.preset("smmuv3-16k").pgtable.nlevels == 4
    with pytest.raises(ValueError, match="preset"):
        IommuDomain.preset("powerpc")


@pytest.mark.parametrize("kw,needle", [
    (dict(pgsize_bitmap=0), "pgsize_bitmap"),
    (dict(pgsize_bitmap=1 << 17 | 1 << 21), "above 64K"),
    (dict(pgsize_bitmap=INTEL, gather_style="tlb"), "gather_style"),
    (dict(pgsize_bitmap=INTEL, aperture_end=1 << 50), "aperture_end"),
    (dict(pgsize_bitmap=SZ_64K, fmt="x86-64"), "4K pages only"),
])
def test_bad_domain_configuration(kw, needle):
    with pytest.raises(ValueError, match=needle):
        IommuDomain(**kw)


def test_log_setter_reaches_the_page_table():
    d = IommuDomain(INTEL)
    new = EventLog()
    d.log = new
    d.iommu_map(0, 0, K4, RW)
    assert new.count("pte_writes") == 1 and d.pgtable.log is new


# -- scale ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["intel-vtd", "smmuv3-4k"])
def test_scale_262144_pages(name):
    log = EventLog(keep=False)
    d = IommuDomain.preset(name, log=log, kernel="6.17")
    iova, pa = 4 * SZ_1G, 64 * SZ_1G + K4          # PA offset forces 4K pages: 262,144 PTEs
    assert d.iommu_map(iova, pa, SZ_1G, RW) == 0
    pt = d.pgtable
    assert pt.leaf_count() == 262144 and log.counters().pte_writes == 262144
    assert pt.table_page_count() == 1 + 1 + 1 + 512
    assert pt.table_page_count() * K4 < 100 << 20
    assert pt.mapped_ranges() == [(iova, pa, SZ_1G, RW)]
    assert d.iommu_iova_to_phys(iova + 0x12345678) == pa + 0x12345678
    assert d.iommu_unmap(iova, SZ_1G) == SZ_1G
    assert pt.leaf_count() == 0
    # VT-d frees the PD and 512 PTs the 1 GiB range covers; io-pgtable-arm frees the PD (and
    # its PTs) when the 1 GiB-sized unmap meets the table entry at L1
    assert pt.table_page_count() == 2
