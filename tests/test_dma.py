"""dma-iommu.c model: worked examples (iova.c allocations, the two-step call sequence, the NVMe read),
the review thread's arithmetic, the misuse matrix, strict/lazy IOTLB behaviour and random interleavings of both APIs."""

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import (
    DMA_BIDIRECTIONAL, DMA_IOVA_USE_SWIOTLB, DMA_NONE, DMA_TO_DEVICE, DmaDomain, DmaIovaState,
    ScatterEntry, dma_iova_size, dma_mapping_error, dma_use_iova,
)
from iovalab.kernel.dma_iova import IovaApi, dma_iova_range
from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.kernel.events import EventLog
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.units import DMA_BIT_MASK, EEXIST, EINVAL, EIO, DmaError


def fresh(strict=True, ncpus=1, iommu="intel-vtd", **kw):
    """A domain of the 6.17 model with a 10 ms timer in whole ms (HZ=1000); 7.3: tests/test_kernel73.py."""
    kw.setdefault("kernel", "6.17")
    kw.setdefault("hz", 1000)
    return DmaDomain(iommu, strict=strict, ncpus=ncpus, **kw)


def pci64():
    return Device(dma_mask=DMA_BIT_MASK(64), is_pci=True)


# ----------------------------------------------------------------------- the review thread
def test_try_alloc_review_arithmetic():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0x1234, 0x3000)
    base, length = dma_iova_range(st_, dom.granule)
    assert (st_.addr, length) == (0xFFFFC234, 0x4000)
    assert dma_iova_size(st_) == 0x3000 and dma_use_iova(st_)
    # no PTE, no sync: the IOVA is only reserved
    c = dom.log.counters()
    assert (c.iova_allocs, c.iommu_map_calls, c.pte_writes, c.iotlb_syncs) == (1, 0, 0, 0)


def test_try_alloc_phys_zero_reserves_less():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0, 0x3000)
    assert dma_iova_range(st_, dom.granule) == (0xFFFFC000, 0x3000)  # reserved length 0x3000 ...
    node = dom.iovad.find_iova(0xFFFFC)
    assert node.size == 4  # ... but alloc_iova_fast rounds 3 granules to 4 in the tree


def test_granule_64k_changes_footprint():
    dom, dev = fresh(iommu="smmuv3-64k"), Device(dma_mask=DMA_BIT_MASK(48), is_pci=False)
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0x1234, 0x3000)
    assert dma_iova_range(st_, dom.granule)[1] == 0x10000
    assert st_.addr & 0xFFFF == 0x1234


# ---------------------------------------- dma_iova_* call sequence (dma-iommu.c, 6.17)
def test_two_step_sequence_counts_and_events():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState()
    dom.dma_iova_try_alloc(dev, st_, 0, 4 * 0x1000)
    for i, pa in enumerate((0x10000, 0x30000, 0x50000, 0x70000)):
        assert dom.dma_iova_link(dev, st_, pa, i * 0x1000, 0x1000) == 0
    c = dom.log.counters()
    assert (c.iommu_map_calls, c.pte_writes, c.iotlb_syncs) == (4, 4, 0)
    dom.dma_iova_sync(dev, st_, 0, 4 * 0x1000)
    assert dom.log.counters().iotlb_syncs == 1
    for i, pa in enumerate((0x10000, 0x30000, 0x50000, 0x70000)):
        assert dom.iommu.iommu_iova_to_phys(st_.addr + i * 0x1000 + 0x10) == pa + 0x10
    mark = dom.log.mark()
    dom.dma_iova_unlink(dev, st_, 0x1000, 0x1000)
    c = dom.log.counters(since=mark)
    assert (c.iotlb_invalidations, c.iova_frees) == (1, 0)  # unlink: strict sync, IOVA kept
    mark = dom.log.mark()
    dom.dma_iova_unlink(dev, st_, 0x2000, 0x2000)
    dom.dma_iova_destroy(dev, st_, 0x1000)
    c = dom.log.counters(since=mark)
    assert (c.iotlb_invalidations, c.iova_frees) == (2, 1)
    assert dom.iommu.pgtable.leaf_count() == 0


def test_map_page_path_counts():
    dom, dev = fresh(), pci64()
    a = dom.dma_map_page(dev, 0x12345678, 0x100, DMA_TO_DEVICE)
    assert a == 0xFFFFF678
    c = dom.log.counters()
    assert (c.iova_allocs, c.iommu_map_calls, c.iotlb_syncs, c.dma_api_calls) == (1, 1, 1, 1)
    dom.dma_unmap_page(dev, a, 0x100, DMA_TO_DEVICE)
    c = dom.log.counters()
    assert (c.iotlb_invalidations, c.iova_frees) == (1, 1)
    # the freed IOVA sits in CPU0's magazine and comes straight back (LIFO)
    assert dom.dma_map_page(dev, 0x5000, 0x1000) == 0xFFFFF000
    assert dom.log.counters().rcache_hits == 1


def test_rcache_per_cpu_and_lazy_flush_queue():
    dom, dev = fresh(ncpus=2), pci64()
    a = dom.dma_map_page(dev, 0x1000, 0x1000, cpu=0)
    dom.dma_unmap_page(dev, a, 0x1000, cpu=0)
    assert dom.dma_map_page(dev, 0x2000, 0x1000, cpu=1) == 0xFFFFE000  # CPU1 does not see it
    lazy, dev2 = fresh(strict=False), pci64()
    a = lazy.dma_map_page(dev2, 0x1000, 0x1000)
    lazy.dma_unmap_page(dev2, a, 0x1000)
    assert lazy.fq_pending() == 1 and lazy.log.counters().iotlb_invalidations == 0
    assert lazy.dma_map_page(dev2, 0x2000, 0x1000) == 0xFFFFE000  # not reusable before the flush
    # HZ=1000: msecs_to_jiffies(10) = 10 jiffies, and the timer wheel runs it one tick later (calc_index)
    assert not lazy.advance_time(10) and lazy.advance_time(1)
    assert lazy.fq_pending() == 0 and lazy.log.counters().iotlb_invalidations == 1
    assert lazy.dma_map_page(dev2, 0x3000, 0x1000) == 0xFFFFF000


def test_flush_queue_full_flushes_at_255():
    dom, dev = fresh(strict=False), pci64()
    addrs = [dom.dma_map_page(dev, 0x100000 + i * 0x1000, 0x1000) for i in range(256)]
    for a in addrs[:255]:
        dom.dma_unmap_page(dev, a, 0x1000)
    assert dom.fq_pending() == 255 and dom.fq_flush_start_cnt == 0
    dom.dma_unmap_page(dev, addrs[255], 0x1000)  # ring full: flush, free all, queue this one
    assert dom.fq_flush_start_cnt == 1 and dom.fq_pending() == 1


def test_flush_queue_is_a_deque_freed_from_the_head():
    """Regression: the ring used ``list.pop(0)`` (O(n) per free); it is a deque, freed head first."""
    dom, dev = fresh(strict=False), pci64()
    addrs = [dom.dma_map_page(dev, 0x100000 + i * 0x1000, 0x1000) for i in range(3)]
    for a in addrs:
        dom.dma_unmap_page(dev, a, 0x1000)
    fq = dom.fqs[0]
    assert isinstance(fq.entries, deque)
    assert [e.iova_pfn << 12 for e in fq.entries] == addrs
    dom.fq_flush_iotlb()
    assert dom.fq_ring_free(fq, 0) == 3 and not fq.entries
    # freed in queue order into the rcache: the last freed comes back first
    assert dom.dma_map_page(dev, 0x200000, 0x1000) == addrs[-1]


def test_two_step_api_is_composed_not_inherited():
    """``DmaDomain`` holds an ``IovaApi`` over itself (a ``DmaIovaHost``) and forwards to it."""
    dom, dev = fresh(), pci64()
    assert not isinstance(dom, IovaApi) and isinstance(dom.iova_api, IovaApi) and dom.iova_api.host is dom
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0, 0x2000)
    assert dma_iova_range(st_, dom.granule) == (st_.addr, 0x2000)


def test_forcedac_full_width_example():
    dom, dev = fresh(), Device(dma_mask=DMA_BIT_MASK(64), is_pci=True, forcedac=True)
    a = dom.dma_map_page(dev, 0x1000, 0x1000)
    b = dom.dma_map_page(dev, 0x10000, 0x4000)
    assert (a, b) == (0xFFFFFFFFF000, 0xFFFFFFFF8000)


def test_32bit_first_then_permanent_fallback():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0, 0x40000000)  # 1 GiB, size-aligned: 0xc0000000
    assert st_.addr == 0xC0000000 and dev.pci_32bit_workaround
    st2 = DmaIovaState()
    # 2 GiB must start on a 2 GiB boundary below 0xc0000000: only 0, below start_pfn -> full width
    assert dom.dma_iova_try_alloc(dev, st2, 0, 0x80000000)
    assert st2.addr >= 1 << 32 and not dev.pci_32bit_workaround
    notes = [e for e in dom.log if e.kind == "dev_notice"]
    assert notes and notes[0].args["message"] == "Using 48-bit DMA addresses"
    assert dom.dma_map_page(dev, 0x1000, 0x1000) >= 1 << 32


# ---------------------------------------- NVMe worked example (drivers/nvme/host/pci.c, 6.17)
def test_nvme_worked_example():
    dom, dev = fresh(), Device.nvme()
    segs = [(0x12345200, 0xE00), (0x20000000, 0x1000), (0x30000000, 0x3000), (0x40000000, 0x800)]
    total = sum(n for _, n in segs)
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, segs[0][0], total)
    assert st_.addr == 0xFFFF8200 and dom.iovad.find_iova(0xFFFF8).pfn_hi == 0xFFFFF
    mapped = 0
    mark = dom.log.mark()
    for p, n in segs:
        dom.dma_iova_link(dev, st_, p, mapped, n)
        mapped += n
    maps = [(e.args["iova"], e.args["paddr"], e.args["size"]) for e in dom.log.since(mark)
            if e.kind == "iommu_map_calls"]
    assert maps == [(0xFFFF8000, 0x12345000, 0x1000), (0xFFFF9000, 0x20000000, 0x1000),
                    (0xFFFFA000, 0x30000000, 0x3000), (0xFFFFD000, 0x40000000, 0x1000)]
    dom.dma_iova_sync(dev, st_, 0, mapped)
    mark = dom.log.mark()
    dom.dma_iova_destroy(dev, st_, mapped)
    (unmap,) = [e for e in dom.log.since(mark) if e.func == "__iommu_unmap"]
    assert (unmap.args["iova"], unmap.args["size"]) == (0xFFFF8000, 0x6000)
    frees = [e for e in dom.log.since(mark) if e.kind == "rcache_insert"]
    assert frees[0].args["bin"] == 3  # size 6 -> bin 3, same as the allocation


# ----------------------------------------------------------------------- scatterlists
def test_map_sg_one_iova_merges_and_unmaps_once():
    dom, dev = fresh(), pci64()
    sgl = [ScatterEntry(0x100000, 0x1000), ScatterEntry(0x101000, 0x1000), ScatterEntry(0x300000, 0x800)]
    ents = dom.dma_map_sg(dev, sgl, DMA_BIDIRECTIONAL)
    c = dom.log.counters()
    assert (c.iova_allocs, c.iommu_map_calls, c.iotlb_syncs) == (1, 2, 1)  # two contiguous runs
    assert ents == 1 and sgl[0].dma_length == 0x2800  # merged into one DMA segment
    dom.dma_unmap_sg(dev, sgl, DMA_BIDIRECTIONAL)
    c = dom.log.counters()
    assert (c.iotlb_invalidations, c.iova_frees) == (1, 1)
    assert dom.iommu.pgtable.leaf_count() == 0


def test_map_sg_segment_boundary_padding():
    dom = fresh()
    dev = Device(dma_mask=DMA_BIT_MASK(64), seg_boundary=0xFFFF, max_seg_size=0x10000)
    # 0xF000 then 0x2000: the second would cross a 64 KiB boundary, so the first is padded by 0x1000
    sgl = [ScatterEntry(0x100000, 0xF000), ScatterEntry(0x400000, 0x2000)]
    ents = dom.dma_map_sg(dev, sgl)
    assert ents == 2
    assert sgl[1].dma_address - sgl[0].dma_address == 0x10000
    unmap_len = dom.first_unmapped(sgl[0].dma_address, 0x12000)
    assert unmap_len is None  # padding is real mapped IOVA


# ----------------------------------------------------------------------- swiotlb link path
def test_untrusted_device_bounces_unaligned_head_and_tail():
    pool = SwiotlbPool(0x8000000)
    dom = fresh(swiotlb=pool)
    dev = Device.thunderbolt_nvme()
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0x12345200, 0x2000)
    dom.dma_iova_link(dev, st_, 0x12345200, 0, 0x2000)
    assert st_.size_field & DMA_IOVA_USE_SWIOTLB
    assert dom.log.counters().swiotlb_bounces == 2  # head granule and tail granule
    dom.dma_iova_sync(dev, st_, 0, 0x2000)
    dom.dma_iova_destroy(dev, st_, 0x2000)
    assert pool.used == 0  # every bounce slot released by the slow unlink path


# ----------------------------------------------------------------------- misuse matrix
def _linked():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState()
    dom.dma_iova_try_alloc(dev, st_, 0, 0x4000)
    dom.dma_iova_link(dev, st_, 0x100000, 0, 0x1000)
    return dom, dev, st_


@pytest.mark.parametrize("name, call, errno, warned", [
    ("link unaligned phys at offset > 0", lambda d, v, s: d.dma_iova_link(v, s, 0x200234, 0x1000, 0x100), EIO, True),
    ("link onto a linked granule", lambda d, v, s: d.dma_iova_link(v, s, 0x500000, 0, 0x1000), EEXIST, None),
    ("unlink a range never linked", lambda d, v, s: d.dma_iova_unlink(v, s, 0x2000, 0x1000), EINVAL, True),
    ("destroy past the linked prefix", lambda d, v, s: d.dma_iova_destroy(v, s, 0x3000), EINVAL, True),
    ("unmap_page of an unmapped IOVA", lambda d, v, s: d.dma_unmap_page(v, 0xFFFF0000, 0x1000), EINVAL, True),
])
def test_misuse_matrix(name, call, errno, warned):
    dom, dev, st_ = _linked()
    before = dom.snapshot()
    warns = dom.log.count("warn")
    with pytest.raises(DmaError) as e:
        call(dom, dev, st_)
    assert e.value.errno == -errno, name
    if warned:
        assert e.value.warned and dom.log.count("warn") == warns + 1
    assert dom.snapshot() == before, f"{name}: state changed"


@pytest.mark.parametrize("name, call", [
    ("link past the reserved size", lambda d, v, s: d.dma_iova_link(v, s, 0x600000, 0x4000, 0x1000)),
    ("sync of a range never linked", lambda d, v, s: d.dma_iova_sync(v, s, 0x2000, 0x1000)),
    ("free while links remain", lambda d, v, s: d.dma_iova_free(v, s)),
])
def test_contract_violations_kernel_does_not_catch(name, call):
    dom, dev, st_ = _linked()
    call(dom, dev, st_)  # the kernel goes ahead: recorded as a contract event only
    assert dom.log.count("contract") == 1, name
    strict_dom, dev2 = fresh(check_contract=True), pci64()
    st2 = DmaIovaState()
    strict_dom.dma_iova_try_alloc(dev2, st2, 0, 0x4000)
    strict_dom.dma_iova_link(dev2, st2, 0x100000, 0, 0x1000)
    before = strict_dom.snapshot()
    with pytest.raises(DmaError) as e:
        call(strict_dom, dev2, st2)
    assert e.value.errno == -EINVAL and strict_dom.snapshot() == before


def test_try_alloc_size_zero_warns_and_fails():
    dom, dev = fresh(), pci64()
    st_ = DmaIovaState(addr=0x1234, size_field=7)
    assert dom.dma_iova_try_alloc(dev, st_, 0, 0) is False
    assert (st_.addr, st_.size_field) == (0, 0)  # memset first, as the kernel does
    assert dom.log.count("warn") == 1
    assert dom.dma_iova_try_alloc(dev, st_, 0, DMA_IOVA_USE_SWIOTLB | 0x1000) is False
    assert dom.log.count("warn") == 2 and dom.log.counters().iova_allocs == 0


def test_min_align_mask_beyond_granule_fails_map():
    dom = fresh(iommu="intel-vtd")
    dev = Device(dma_mask=DMA_BIT_MASK(64), min_align_mask=0x1FFF)
    assert dma_mapping_error(dom.dma_map_page(dev, 0x1000, 0x1000))
    assert dom.log.count("warn") == 1 and dom.log.counters().iova_allocs == 0


@pytest.mark.parametrize("bad", [DMA_NONE, 7, -1])
def test_invalid_direction(bad):
    dom, dev = fresh(), pci64()
    before = dom.snapshot()
    with pytest.raises(ValueError, match="direction"):
        dom.dma_map_page(dev, 0x1000, 0x1000, bad)
    assert dom.snapshot() == before


def test_link_without_iova_is_a_clear_error():
    dom, dev = fresh(), pci64()
    with pytest.raises(ValueError, match="dma_iova_try_alloc"):
        dom.dma_iova_link(dev, DmaIovaState(), 0x1000, 0, 0x1000)


def test_counters_have_every_kind():
    dom, dev = fresh(), pci64()
    dom.dma_map_page(dev, 0x1000, 0x1000)
    assert set(dom.log.counters().as_dict()) == set(COUNTER_KINDS)


# ----------------------------------------------------------------------- random interleavings
actions = st.lists(st.one_of(
    st.tuples(st.just("map_page"), st.integers(0, 0xFFFF), st.integers(1, 0x5000)),
    st.tuples(st.just("iova"), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("unmap"), st.integers(0, 50)),
    st.tuples(st.just("access"), st.integers(0, 50)),
    st.tuples(st.just("tick"),),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(actions, st.booleans())
def test_random_interleavings(seq, strict):
    dom = DmaDomain("intel-vtd", strict=strict, log=EventLog(keep=False))
    dev = pci64()
    live = []  # ("page", dma, size, phys) | ("iova", state, npages, phys_list)
    next_phys = [0x10_0000_0000]

    def phys_pages(n):
        p = next_phys[0]
        next_phys[0] += (n + 1) * 0x1000  # never contiguous with the next buffer
        return p

    for act in seq:
        if act[0] == "map_page":
            _, off, size = act
            p = phys_pages((off + size) // 0x1000 + 1) + off
            a = dom.dma_map_page(dev, p, size)
            assert not dma_mapping_error(a)
            live.append(("page", a, size, p))
        elif act[0] == "iova":
            _, n, split = act
            s = DmaIovaState()
            assert dom.dma_iova_try_alloc(dev, s, 0, n * 0x1000)
            pages = [phys_pages(1) for _ in range(n)]
            for i, p in enumerate(pages):
                dom.dma_iova_link(dev, s, p, i * 0x1000, 0x1000)
            dom.dma_iova_sync(dev, s, 0, n * 0x1000)
            live.append(("iova", s, n, pages))
        elif act[0] == "unmap" and live:
            item = live.pop(act[1] % len(live))
            if item[0] == "page":
                dom.dma_unmap_page(dev, item[1], item[2])
                base = item[1] & ~0xFFF
            else:
                dom.dma_iova_destroy(dev, item[1], item[2] * 0x1000)
                base = item[1].addr
            if strict:  # strict: no stale IOTLB entry for what was just unmapped
                assert not [e for e in dom.iommu.stale_iotlb_entries() if e[0] >= base and e[0] < base + 0x6000]
        elif act[0] == "access" and live:
            item = live[act[1] % len(live)]
            addr = item[1] if item[0] == "page" else item[1].addr
            assert dom.iommu.device_access(addr) is not None
        elif act[0] == "tick":
            dom.advance_time(10)
        # no PTE without a live mapping: the leaves are exactly the live mappings' granules
        expect = sum(((x[1] & 0xFFF) + x[2] + 0xFFF) >> 12 if x[0] == "page" else x[2] for x in live)
        assert dom.iommu.pgtable.leaf_count() == expect
        # every linked byte translates to the right phys; no IOVA is mapped twice
        for item in live:
            if item[0] == "page":
                _, a, size, p = item
                for k in range(0, size, 0x800):
                    assert dom.iommu.iommu_iova_to_phys(a + k) == p + k
            else:
                _, s, n, pages = item
                for i, p in enumerate(pages):
                    assert dom.iommu.iommu_iova_to_phys(s.addr + i * 0x1000 + 8) == p + 8
    for item in live:
        if item[0] == "page":
            dom.dma_unmap_page(dev, item[1], item[2])
        else:
            dom.dma_iova_destroy(dev, item[1], item[2] * 0x1000)
    if not strict:
        stale_before = dom.iommu.stale_iotlb_entries()
        dom.fq_flush_timeout()
        assert not dom.iommu.stale_iotlb_entries()
        assert dom.fq_pending() == 0
        del stale_before
    assert dom.iommu.pgtable.leaf_count() == 0
    assert not dom.iommu.stale_iotlb_entries()
    cached = dom.iovad.cached_pfns()
    assert all(n.pfn_lo in cached or n.reserved for n in dom.iovad.nodes())
