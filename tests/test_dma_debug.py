"""dma-debug (``CONFIG_DMA_API_DEBUG``) and the Part Ie rules: one test per misuse row.

Each test cites the kernel source it follows: ``kernel/dma/debug.c`` as read in Linux 7.3.4 (the
6.17 differences are the entry type of ``dma_map_page``, ``single`` from ``debug_dma_map_page()``
instead of ``phy`` from ``debug_dma_map_phys()``, and no attribute check); Part Ie of
``Documentation/core-api/dma-api.rst`` where dma-debug has no hook.
"""

import pytest

from iovalab import Device, DmaDomain, DmaError, DmaIovaState, ScatterEntry
from iovalab.kernel.device import DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE
from iovalab.kernel.dma_iommu import msecs_to_jiffies
from iovalab.kernel.units import DMA_MAPPING_ERROR, EINVAL


def dbg(**kw):
    return DmaDomain("intel-vtd", dma_debug=True, **{"kernel": "6.17", **kw}), Device()


def lines(dom):
    return [e.args["message"] for e in dom.log.of_kind("dma_debug")]


def mapped(dom, addr):
    return dom.iommu.iommu_iova_to_phys(addr)


def checked_map(dom, dev, phys, size, dir=DMA_BIDIRECTIONAL, attrs=0):
    addr = dom.dma_map_page(dev, phys, size, dir, attrs)
    assert not dom.dma_mapping_error(dev, addr)
    return addr


def test_unmap_smaller_size_reports_and_leaves_tail_mapped_iova_reused():
    # debug.c check_unmap(): "frees DMA memory with different size"; dma-iommu.c __iommu_dma_unmap()
    # unmaps only the given size and free_iova_fast() files the IOVA in the smaller rcache bin (6.17)
    dom, dev = dbg()
    addr = checked_map(dom, dev, 0x100000, 0x2000)
    dom.dma_unmap_page(dev, addr, 0x1000)
    assert lines(dom) == [f"DMA-API: nvme 0000:01:00.0: device driver frees DMA memory with different size "
                          f"[device address=0x{addr:016x}] [map size=8192 bytes] [unmap size=4096 bytes]"]
    assert mapped(dom, addr) == 0 and mapped(dom, addr + 0x1000) == 0x101000   # the tail stays mapped
    again = checked_map(dom, dev, 0x200000, 0x1000)
    assert again == addr                                                       # IOVA handed out again
    assert dom.debug.entries() and dom.log.count("warn") == 0                  # no errno, no WARN_ON


def test_unmap_larger_size_unmaps_the_mapped_neighbour():
    # check_unmap() size report; iommu_unmap_fast() of the larger range clears the neighbour silently
    dom, dev = dbg()
    a = checked_map(dom, dev, 0x100000, 0x1000)
    b = checked_map(dom, dev, 0x200000, 0x1000)
    assert b == a - 0x1000                                                     # top-down: b sits below a
    dom.dma_unmap_page(dev, b, 0x2000)
    assert "[map size=4096 bytes] [unmap size=8192 bytes]" in lines(dom)[0]
    assert mapped(dom, a) == 0 and mapped(dom, b) == 0                         # a is gone too
    with pytest.raises(DmaError) as e:                                         # a's own unmap then WARNs
        dom.dma_unmap_page(dev, a, 0x1000)
    assert e.value.errno == -EINVAL and e.value.warned == "WARN_ON"


def test_unmap_with_another_direction():
    # check_unmap(): "frees DMA memory with different direction"; the unmap itself goes ahead
    dom, dev = dbg()
    addr = checked_map(dom, dev, 0x100000, 0x1000, DMA_TO_DEVICE)
    dom.dma_unmap_page(dev, addr, 0x1000, DMA_FROM_DEVICE)
    assert lines(dom) == [f"DMA-API: nvme 0000:01:00.0: device driver frees DMA memory with different direction "
                          f"[device address=0x{addr:016x}] [size=4096 bytes] [mapped with DMA_TO_DEVICE] "
                          "[unmapped with DMA_FROM_DEVICE]"]
    assert mapped(dom, addr) == 0 and dom.debug.entries() == []


@pytest.mark.parametrize("version, mapped_as", [("6.17", "single"), ("7.3", "phy")])
def test_map_page_undone_by_unmap_sg(version, mapped_as):
    # check_unmap(): "wrong function" (type2name[]), then the sg entry-count test fires too
    # (ref->sg_call_ents 1 != entry->sg_call_ents 0)
    dom, dev = dbg(dma_debug_version=version)
    dom.debug.show_all_errors = True
    addr = checked_map(dom, dev, 0x100000, 0x1000)
    dom.dma_unmap_sg(dev, [ScatterEntry(0x100000, 0x1000, addr, 0x1000)])
    out = lines(dom)
    assert out[0].endswith(f"with wrong function [device address=0x{addr:016x}] [size=4096 bytes] "
                           f"[mapped as {mapped_as}] [unmapped as scatter-gather]")
    assert out[1].endswith("DMA sg list with different entry count [map count=0] [unmap count=1]")
    assert len(out) == 2 and mapped(dom, addr) == 0


def test_sg_unmapped_with_another_entry_count():
    # debug_dma_unmap_sg() -> check_unmap(): nents must be what dma_map_sg was given, not what it returned
    dom, dev = dbg()
    sg = [ScatterEntry(0x300000 + i * 0x1000, 0x1000) for i in range(3)]
    ents = dom.dma_map_sg(dev, sg)
    assert ents == 1                                               # merged into one DMA segment
    dom.dma_unmap_sg(dev, sg, nents=ents)
    assert lines(dom) == ["DMA-API: nvme 0000:01:00.0: device driver frees DMA sg list with different entry "
                          "count [map count=3] [unmap count=1]"]
    assert mapped(dom, sg[0].dma_address) == 0                     # the whole list is unmapped anyway


def test_sg_segment_longer_than_max_and_across_boundary():
    # check_sg_segment(): sg->length > dma_get_max_seg_size(); (start ^ end) & ~boundary
    dom = DmaDomain("intel-vtd", dma_debug=True)
    dom.debug.show_all_errors = True
    dev = Device(seg_boundary=0xFFFF)
    sg = [ScatterEntry(0x400000, 0x20000)]
    assert dom.dma_map_sg(dev, sg) == 1
    start = sg[0].dma_address
    assert lines(dom) == [
        "DMA-API: nvme 0000:01:00.0: mapping sg segment longer than device claims to support "
        "[len=131072] [max=65536]",
        f"DMA-API: nvme 0000:01:00.0: mapping sg segment across boundary [start=0x{start:016x}] "
        f"[end=0x{start + 0x1FFFF:016x}] [boundary=0x000000000000ffff]"]
    assert mapped(dom, start + 0x1F000) == 0x41F000                # mapped as asked: dma-debug only reports


def test_two_live_from_device_maps_of_one_cacheline():
    # add_dma_entry() -> active_cacheline_insert() -EEXIST, reported only where
    # dma_get_cache_alignment() >= L1_CACHE_BYTES (arm64 non-coherent: 64; x86: 1, silent)
    dom = DmaDomain("smmuv3-4k", dma_debug=True)
    arm = Device(coherent=False, dma_cache_alignment=64)
    checked_map(dom, arm, 0x500000, 0x20, DMA_FROM_DEVICE)
    checked_map(dom, arm, 0x500020, 0x20, DMA_FROM_DEVICE)
    assert lines(dom) == ["DMA-API: nvme 0000:01:00.0: cacheline tracking EEXIST, overlapping mappings "
                          "aren't supported"]
    assert len(dom.debug.entries()) == 2                           # both mappings live
    x86, dev = dbg()
    checked_map(x86, dev, 0x500000, 0x20, DMA_FROM_DEVICE)
    checked_map(x86, dev, 0x500020, 0x20, DMA_FROM_DEVICE)
    assert lines(x86) == []                                        # dma_get_cache_alignment() is 1 on x86
    to_dev = DmaDomain("intel-vtd", dma_debug=True)
    checked_map(to_dev, arm, 0x500000, 0x20, DMA_TO_DEVICE)
    checked_map(to_dev, arm, 0x500020, 0x20, DMA_TO_DEVICE)
    assert lines(to_dev) == []                                     # DMA_TO_DEVICE is never tracked


def test_mapping_error_not_checked_before_unmap():
    # debug_dma_map_phys() sets MAP_ERR_NOT_CHECKED; only dma_mapping_error() clears it
    dom, dev = dbg()
    addr = dom.dma_map_page(dev, 0x100000, 0x1000)
    dom.dma_unmap_page(dev, addr, 0x1000)
    assert lines(dom) == [f"DMA-API: nvme 0000:01:00.0: device driver failed to check map error"
                          f"[device address=0x{addr:016x}] [size=4096 bytes] [mapped as single]"]
    ok, dev2 = dbg()
    addr = checked_map(ok, dev2, 0x100000, 0x1000)
    ok.dma_unmap_page(dev2, addr, 0x1000)
    assert lines(ok) == []


def test_free_of_memory_never_mapped_and_show_num_errors():
    # check_unmap() with no entry; err_printk() prints only show_num_errors (1) but counts every error
    dom, dev = dbg()
    dom.debug.check_unmap(dom.debug.unmap_page_ref(dev, DMA_MAPPING_ERROR, 0x1000, 0, 0), "debug_dma_unmap_phys")
    dom.debug.check_unmap(dom.debug.unmap_page_ref(dev, 0x1000, 0x1000, 0, 0), "debug_dma_unmap_phys")
    ev = dom.log.of_kind("dma_debug")
    assert ev[0].args["message"].endswith("device driver tries to free an invalid DMA memory address")
    assert ev[1].args["message"].endswith("tries to free DMA memory it has not allocated "
                                          "[device address=0x0000000000001000] [size=4096 bytes]")
    assert [e.args["printed"] for e in ev] == [True, False] and dom.debug.error_count == 2


def test_hash_key_is_bits_13_up_of_the_dma_address():
    # hash_fn(): (dev_addr >> HASH_FN_SHIFT) & HASH_FN_MASK
    dom, dev = dbg()
    addr = checked_map(dom, dev, 0x100000, 0x1000)
    assert list(dom.debug.buckets) == [(addr >> 13) & 0x3FFF]
    e = dom.debug.entries()[0]
    assert (e.type, e.paddr, e.dev_addr, e.size, e.direction, e.map_err_type) == ("single", 0x100000, addr,
                                                                                 0x1000, DMA_BIDIRECTIONAL, 2)


def test_check_contract_raises_unmap_findings_before_any_change():
    dom, dev = DmaDomain("intel-vtd", check_contract=True), Device()
    assert dom.debug is not None                                   # check_contract turns dma-debug on
    addr = checked_map(dom, dev, 0x100000, 0x2000)
    before = dom.snapshot()
    with pytest.raises(DmaError) as e:
        dom.dma_unmap_page(dev, addr, 0x1000)
    assert "different size" in e.value.rule and e.value.func == "debug_dma_unmap_phys"
    assert dom.snapshot() == before and len(dom.debug.entries()) == 1
    dom.dma_unmap_page(dev, addr, 0x2000)                          # the right call still works
    assert mapped(dom, addr) == 0


# ------------------------------------------------------------------ Part Ie (no dma-debug hook)
def _iova(**kw):
    dom, dev = DmaDomain("intel-vtd", **kw), Device()
    st = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st, 0, 0x4000)
    return dom, dev, st


def test_range_not_last_must_end_on_merge_boundary():
    dom, dev, st = _iova()
    dom.dma_iova_link(dev, st, 0x100000, 0, 0x800)
    assert dom.log.count("contract") == 0                          # alone, a short last range is fine
    dom.dma_iova_link(dev, st, 0x200000, 0x1000, 0x1000)
    (ev,) = dom.log.of_kind("contract")
    assert "not on the merge boundary" in ev.args["rule"] and ev.func == "dma_iova_link"
    assert mapped(dom, st.addr + 0x1000) == 0x200000               # linked anyway: the kernel does not check
    strict, dev2, st2 = _iova(check_contract=True)
    strict.dma_iova_link(dev2, st2, 0x100000, 0, 0x800)
    before = strict.snapshot()
    with pytest.raises(DmaError):
        strict.dma_iova_link(dev2, st2, 0x200000, 0x1000, 0x1000)
    assert strict.snapshot() == before


def test_destroy_mapped_len_must_cover_every_link():
    dom, dev, st = _iova()
    dom.dma_iova_link(dev, st, 0x100000, 0, 0x1000)
    dom.dma_iova_link(dev, st, 0x200000, 0x1000, 0x1000)
    dom.dma_iova_destroy(dev, st, 0x1000)
    (ev,) = dom.log.of_kind("contract")
    assert f"IOVA {st.addr + 0x1000:#x} still linked" in ev.args["rule"]
    assert mapped(dom, st.addr + 0x1000) == 0x200000               # the PTE outlives its IOVA


def test_iova_free_twice_hands_the_iova_out_twice():
    dom, dev, st = _iova()
    dom.dma_iova_free(dev, st)
    dom.dma_iova_free(dev, st)
    assert "already given back" in dom.log.of_kind("contract")[0].args["rule"]
    a, b = DmaIovaState(), DmaIovaState()
    dom.dma_iova_try_alloc(dev, a, 0, 0x4000)
    dom.dma_iova_try_alloc(dev, b, 0, 0x4000)
    assert a.addr == b.addr == st.addr                             # two owners of one IOVA
    strict, dev2, st2 = _iova(check_contract=True)
    strict.dma_iova_free(dev2, st2)
    before = strict.snapshot()
    with pytest.raises(DmaError):
        strict.dma_iova_free(dev2, st2)
    assert strict.snapshot() == before


# ------------------------------------------------------------------ HZ and bad options
@pytest.mark.parametrize("hz, jiffies, ms", [(100, 1, 20.0), (250, 3, 16.0), (300, 3, 4000 / 300), (1000, 10, 11.0)])
def test_flush_queue_timer_in_jiffies(hz, jiffies, ms):
    # dma-iommu.c queue_iova(): mod_timer(jiffies + msecs_to_jiffies(IOVA_DEFAULT_FQ_TIMEOUT)), armed on
    # a tick (time 0); the timer wheel runs it one tick after that expiry (calc_index, kernel/time/timer.c)
    assert msecs_to_jiffies(10, hz) == jiffies
    dom, dev = DmaDomain("intel-vtd", strict=False, hz=hz), Device()
    assert dom.fq_timer_ms() == pytest.approx(ms) == (jiffies + 1) * 1000 / hz
    addr = dom.dma_map_page(dev, 0x100000, 0x1000)
    dom.dma_unmap_page(dev, addr, 0x1000)
    assert dom.fq_pending() == 1
    assert dom.advance_time(ms - 1) is False and dom.advance_time(1.001) is True and dom.fq_pending() == 0


@pytest.mark.parametrize("kw, words", [
    ({"hz": 123}, ["123", "CONFIG_HZ"]),
    ({"dma_debug": "yes"}, ["'yes'", "CONFIG_DMA_API_DEBUG"]),
    ({"dma_debug": True, "dma_debug_version": "6.1"}, ["'6.1'", "6.17, 7.3"]),
])
def test_bad_options_are_refused_by_name(kw, words):
    with pytest.raises(ValueError) as e:
        DmaDomain("intel-vtd", **kw)
    assert all(w in str(e.value) for w in words)


def test_unmap_sg_nents_out_of_range_refused_state_unchanged():
    dom, dev = dbg()
    sg = [ScatterEntry(0x300000, 0x1000)]
    dom.dma_map_sg(dev, sg)
    before = dom.snapshot()
    with pytest.raises(ValueError, match="nents 2"):
        dom.dma_unmap_sg(dev, sg, nents=2)
    assert dom.snapshot() == before and len(dom.debug.entries()) == 1


def test_debug_on_a_device_without_an_iommu_is_refused():
    from iovalab.drivers.common import ScenarioContext, make_domain
    with pytest.raises(ValueError) as e:
        ScenarioContext({"iommu": {"preset": "intel-vtd", "dma_debug": True}}, "direct")
    assert "['dma_debug']" in str(e.value) and "direct" in str(e.value)
    dom = make_domain({"preset": "intel-vtd", "dma_debug": True, "hz": 250}, strict=False, keep_events=True)
    assert dom.debug is not None and dom.fq_timer_ms() == 16.0
