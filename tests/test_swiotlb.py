"""iovalab.kernel.swiotlb: slot search and alignment (kernel/dma/swiotlb.c), copies, errors, padding zeroing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.kernel.device import (
    DMA_ATTR_SKIP_CPU_SYNC,
    DMA_BIDIRECTIONAL,
    DMA_FROM_DEVICE,
    DMA_TO_DEVICE,
    Device,
)
from iovalab.kernel.events import EventLog
from iovalab.kernel.swiotlb import (
    IO_TLB_DEFAULT_SIZE,
    IO_TLB_SEGSIZE,
    IO_TLB_SIZE,
    SwiotlbPool,
    format_swiotlb_bounced,
    swiotlb_align_offset,
    swiotlb_max_mapping_size,
)
from iovalab.kernel.units import DMA_MAPPING_ERROR, DmaError

BASE = 0x8000_0000
SEG = IO_TLB_SEGSIZE * IO_TLB_SIZE  # 256 KiB


def pool(size=4 * SEG, **kw):
    return SwiotlbPool(BASE, size, EventLog(), **kw)


def copies(p):
    return p.log.count("swiotlb_copy")


def test_constants_and_default_pool():
    assert (IO_TLB_SIZE, IO_TLB_SEGSIZE, IO_TLB_DEFAULT_SIZE) == (2048, 128, 64 << 20)
    p = SwiotlbPool(BASE)
    assert p.nslabs == 32768 and p.free == 32768 and p.used == 0
    assert p.list[0] == 128 and p.list[127] == 1 and p.list[128] == 128
    assert p.is_swiotlb_buffer(BASE) and p.is_swiotlb_buffer(BASE + (64 << 20) - 1)
    assert not p.is_swiotlb_buffer(BASE + (64 << 20)) and not p.is_swiotlb_buffer(BASE - 1)


def test_nvme_offset_preserved_worked_example():
    """min_align_mask 4095 + 4 KiB granule: 0xE00 offset -> one padding slot + 0x600 bytes."""
    p = pool()
    orig = 0x1234_5E00
    assert swiotlb_align_offset(4095, 4095, orig) == 0xE00
    tlb = p.swiotlb_tbl_map_single(orig, 0x300, 4095, 4095, DMA_TO_DEVICE)
    assert tlb == BASE + 0xE00                      # slot 1 (slot 0 is padding) + 0x600
    assert tlb & 0xFFF == orig & 0xFFF
    assert p.used == 4                              # ALIGN(0x300 + 0xE00, 0x1000) = 0x2000 = 4 slots
    assert p.pad_slots[1] == 1 and p.orig_addr[1] == orig and p.orig_addr[0] != orig
    ev = p.log.of_kind("swiotlb_bounces")[0]
    assert ev.result == tlb and ev.args["nslots"] == 4 and ev.args["pad_slots"] == 1
    # the next allocation starts after the first (the area cursor moved on), granule aligned
    tlb2 = p.swiotlb_tbl_map_single(0x5000_0010, 0x20, 4095, 4095, DMA_TO_DEVICE)
    assert tlb2 == BASE + 4 * IO_TLB_SIZE + 0x10


@settings(max_examples=150, deadline=None)
@given(orig=st.integers(min_value=1, max_value=(1 << 40) - 1),
       size=st.integers(min_value=1, max_value=64 * 1024),
       align=st.sampled_from([0, 0x7FF, 0xFFF]))
def test_min_align_mask_bits_preserved(orig, size, align):
    p = pool()
    tlb = p.swiotlb_tbl_map_single(orig, size, align, 4095, DMA_BIDIRECTIONAL)
    assert tlb != DMA_MAPPING_ERROR
    assert tlb & 4095 == orig & 4095                 # the device's min_align_mask bits survive
    first = p.mappings[tlb].first_slot
    assert (BASE + first * IO_TLB_SIZE) & (align | (IO_TLB_SIZE - 1)) == 0  # allocation alignment
    assert tlb + size <= BASE + (first + p.mappings[tlb].nslots) * IO_TLB_SIZE  # buffer inside it
    assert p.swiotlb_tbl_unmap_single(tlb, size, DMA_BIDIRECTIONAL)
    assert p.used == 0


def test_no_min_align_mask_no_alignment_page_rule():
    """Streaming case with no alignment request: >= PAGE_SIZE allocations are page aligned."""
    p = pool()
    a = p.swiotlb_tbl_map_single(0x800, 0x800, 0, 0, DMA_TO_DEVICE)
    assert a == BASE  # slot 0, no offset kept (min_align_mask 0)
    b = p.swiotlb_tbl_map_single(0x3000, 0x1000, 0, 0, DMA_TO_DEVICE)
    assert b == BASE + 2 * IO_TLB_SIZE  # slot 1 skipped: not page aligned


def test_orig_addr_zero_skips_the_min_align_check():
    """swiotlb_search_pool_area tests the min_align_mask bits only when orig_addr != 0."""
    p = pool()
    p.swiotlb_tbl_map_single(0x1000, 0x100, 0, 0, DMA_TO_DEVICE)            # takes slot 0
    assert p.swiotlb_tbl_map_single(0, 0x100, 0, 4095, DMA_TO_DEVICE) == BASE + IO_TLB_SIZE
    # (slot 1 has address bit 11 set, orig 0 has it clear: kept anyway.) With a non-zero address
    # whose bit 11 is set, the cursor's slot 2 (bit 11 clear) is skipped for slot 3
    tlb = p.swiotlb_tbl_map_single(0x4800, 0x100, 0, 4095, DMA_TO_DEVICE)
    assert tlb == BASE + 3 * IO_TLB_SIZE and tlb & 0xFFF == 0x800


def test_exhaustion_returns_error_and_leaves_pool_unchanged():
    p = pool(size=SEG)  # 128 slots
    tlbs = [p.swiotlb_tbl_map_single(0x10000 * (i + 1), 0x4000, 4095, 4095, DMA_TO_DEVICE) for i in range(16)]
    assert DMA_MAPPING_ERROR not in tlbs and p.free == 0
    snap, nevents, copied = p.snapshot(), len(p.log), copies(p)
    assert p.swiotlb_tbl_map_single(0x9000_0000, 0x10, 4095, 4095, DMA_TO_DEVICE) == DMA_MAPPING_ERROR
    assert p.snapshot() == snap and copies(p) == copied
    full = p.log.of_kind("swiotlb_full")
    assert len(full) == 1 and len(p.log) == nevents + 1 and full[0].result == DMA_MAPPING_ERROR
    assert full[0].args["used_slots"] == 128 and full[0].args["total_slots"] == 128
    # free one and it fits again
    p.swiotlb_tbl_unmap_single(tlbs[3], 0x4000, DMA_TO_DEVICE)
    assert p.swiotlb_tbl_map_single(0x9000_0000, 0x10, 4095, 4095, DMA_TO_DEVICE) == tlbs[3]


def test_allocations_never_straddle_a_segment():
    p = pool(size=2 * SEG)  # two segments of 128 slots
    a = p.swiotlb_tbl_map_single(0x100000, 100 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE)
    b = p.swiotlb_tbl_map_single(0x200000, 100 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE)
    assert (a, b) == (BASE, BASE + 128 * IO_TLB_SIZE)
    snap = p.snapshot()
    assert p.free == 56
    # 56 slots are free, but no segment has 100 contiguous ones
    assert p.swiotlb_tbl_map_single(0x300000, 100 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE) == DMA_MAPPING_ERROR
    assert p.snapshot() == snap


def test_larger_than_a_segment_fails():
    p = pool()
    snap = p.snapshot()
    too_big = IO_TLB_SEGSIZE * IO_TLB_SIZE + 1
    assert p.swiotlb_tbl_map_single(0x1000, too_big, 0, 0, DMA_TO_DEVICE) == DMA_MAPPING_ERROR
    assert p.snapshot() == snap
    assert swiotlb_max_mapping_size(0) == 256 * 1024
    assert swiotlb_max_mapping_size(4095) == 256 * 1024 - 4096
    # the NVMe maximum really is the largest that always fits, whatever the offset
    tlb = p.swiotlb_tbl_map_single(0x1FFF, swiotlb_max_mapping_size(4095), 4095, 4095, DMA_TO_DEVICE)
    assert tlb != DMA_MAPPING_ERROR and tlb & 4095 == 0xFFF


def test_segment_boundary_respected():
    p = pool()
    a = p.swiotlb_tbl_map_single(0x10000, 20 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE, seg_boundary=0xFFFF)
    b = p.swiotlb_tbl_map_single(0x20000, 20 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE, seg_boundary=0xFFFF)
    assert a == BASE
    assert b == BASE + 0x10000  # slots 20..39 would cross the 64 KiB boundary at slot 32
    # a device's boundary is used when dev is passed
    d = Device(seg_boundary=0xFFFF)
    c = p.swiotlb_tbl_map_single(0x30000, 20 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE, dev=d)
    assert c == BASE + 0x20000


@pytest.mark.parametrize("dir,map_bytes,unmap_bytes", [
    (DMA_TO_DEVICE, 0x300, 0),
    (DMA_FROM_DEVICE, 0x300, 0x300),     # the kernel copies in for FROM_DEVICE too
    (DMA_BIDIRECTIONAL, 0x300, 0x300),
])
def test_copy_byte_counts_per_direction(dir, map_bytes, unmap_bytes):
    p = pool()
    tlb = p.swiotlb_tbl_map_single(0x1234_5E00, 0x300, 4095, 4095, dir)
    assert copies(p) == map_bytes
    assert p.log.count("swiotlb_bounces") == 1
    ev = p.log.of_kind("swiotlb_copy")[0]
    assert ev.args["dir"] == "TO_DEVICE" and ev.count == 0x300 and ev.args["orig_addr"] == 0x1234_5E00
    assert p.swiotlb_tbl_unmap_single(tlb, 0x300, dir)
    assert copies(p) == map_bytes + unmap_bytes
    assert p.log.count("swiotlb_bounces") == 1  # counted once per map
    assert p.used == 0


def test_skip_cpu_sync_suppresses_copy_back_only():
    p = pool()
    tlb = p.swiotlb_tbl_map_single(0x1000, 0x80, 0, 0, DMA_FROM_DEVICE, attrs=DMA_ATTR_SKIP_CPU_SYNC)
    assert copies(p) == 0x80
    p.swiotlb_tbl_unmap_single(tlb, 0x80, DMA_FROM_DEVICE, DMA_ATTR_SKIP_CPU_SYNC)
    assert copies(p) == 0x80


def test_sync_helpers():
    p = pool()
    tlb = p.swiotlb_tbl_map_single(0x4000_0100, 0x200, 4095, 4095, DMA_BIDIRECTIONAL)
    base = copies(p)
    assert p.swiotlb_sync_single_for_device(tlb, 0x200, DMA_TO_DEVICE) == 0x200
    assert p.swiotlb_sync_single_for_device(tlb, 0x200, DMA_FROM_DEVICE) == 0
    assert p.swiotlb_sync_single_for_cpu(tlb + 0x100, 0x100, DMA_FROM_DEVICE) == 0x100
    assert p.swiotlb_sync_single_for_cpu(tlb, 0x200, DMA_TO_DEVICE) == 0
    assert copies(p) == base + 0x300


def test_overflowing_unmap_size_warns_and_is_cut():
    p = pool()
    tlb = p.swiotlb_tbl_map_single(0x1000, 0x100, 0, 0, DMA_FROM_DEVICE)
    p.swiotlb_tbl_unmap_single(tlb, 0x1000, DMA_FROM_DEVICE)
    w = p.log.of_kind("warn")
    assert len(w) == 1 and "Buffer overflow" in w[0].args["rule"]
    # cut to what was allocated: alloc_size records the requested bytes, not whole slots
    assert p.log.of_kind("swiotlb_copy")[-1].count == 0x100


def test_unmap_errors_and_no_ops():
    p = pool()
    tlb = p.swiotlb_tbl_map_single(0x1234_5E00, 0x300, 4095, 4095, DMA_TO_DEVICE)
    snap, n = p.snapshot(), len(p.log)
    assert p.swiotlb_tbl_unmap_single(0x1234_5E00, 0x300, DMA_TO_DEVICE) is False  # not a pool address
    with pytest.raises(DmaError) as e:
        p.swiotlb_tbl_unmap_single(tlb + 0x800, 0x300, DMA_TO_DEVICE)
    assert e.value.errno < 0 and "swiotlb_tbl_map_single returned" in e.value.rule
    with pytest.raises(ValueError, match="min_align_mask"):
        p.swiotlb_tbl_unmap_single(tlb, 0x300, DMA_TO_DEVICE, min_align_mask=0)
    assert p.snapshot() == snap and len(p.log) == n
    assert p.swiotlb_tbl_unmap_single(tlb, 0x300, DMA_TO_DEVICE, min_align_mask=4095)
    with pytest.raises(DmaError):  # double unmap
        p.swiotlb_tbl_unmap_single(tlb, 0x300, DMA_TO_DEVICE)


@pytest.mark.parametrize("kw,match", [
    (dict(mapping_size=0), "mapping_size"),
    (dict(alloc_align_mask=0x1000), "alloc_align_mask"),
    (dict(min_align_mask=3000), "min_align_mask"),
    (dict(dir=9), "dma_data_direction"),
    (dict(orig_addr=-1), "orig_addr"),
    (dict(cpu=-1), "cpu"),
])
def test_map_validation_leaves_pool_unchanged(kw, match):
    p = pool()
    args = dict(orig_addr=0x1000, mapping_size=0x100, alloc_align_mask=0xFFF, min_align_mask=0xFFF,
                dir=DMA_TO_DEVICE)
    args.update(kw)
    cpu = args.pop("cpu", 0)
    snap, n = p.snapshot(), len(p.log)
    with pytest.raises(ValueError, match=match):
        p.swiotlb_tbl_map_single(args["orig_addr"], args["mapping_size"], args["alloc_align_mask"],
                                 args["min_align_mask"], args["dir"], cpu)
    assert p.snapshot() == snap and len(p.log) == n


def test_dev_min_align_mask_must_match():
    p = pool()
    with pytest.raises(ValueError, match="differs from the device"):
        p.swiotlb_tbl_map_single(0x1000, 0x100, 0xFFF, 0, DMA_TO_DEVICE, dev=Device.nvme())


@pytest.mark.parametrize("base,size,nareas,match", [
    (0x1234, SEG, 1, "base"),
    (BASE, SEG + IO_TLB_SIZE, 1, "size"),
    (BASE, 0, 1, "size"),
    (BASE, SEG, 2, "nareas"),
    (BASE, 4 * SEG, 3, "nareas"),
])
def test_pool_validation(base, size, nareas, match):
    with pytest.raises(ValueError, match=match):
        SwiotlbPool(base, size, nareas=nareas)


def test_large_alloc_align_mask_warns_once():
    p = pool()
    p.swiotlb_tbl_map_single(0x10000, 0x100, 0xFFFF, 0, DMA_TO_DEVICE)
    p.swiotlb_tbl_map_single(0x20000, 0x100, 0xFFFF, 0, DMA_TO_DEVICE)
    assert p.log.count("warn") == 1


def test_areas_follow_the_cpu():
    p = pool(size=2 * SEG, nareas=2)
    a = p.swiotlb_tbl_map_single(0x1000, 0x100, 0, 0, DMA_TO_DEVICE, cpu=1)
    b = p.swiotlb_tbl_map_single(0x1000, 0x100, 0, 0, DMA_TO_DEVICE, cpu=0)
    assert a == BASE + 128 * IO_TLB_SIZE and b == BASE
    assert p.area_used == [1, 1]
    p.swiotlb_tbl_unmap_single(a, 0x100, DMA_TO_DEVICE)
    # fill area 1 (cpu 3 & (nareas - 1) == 1), then a CPU-1 request wraps to area 0 at its cursor
    full = p.swiotlb_tbl_map_single(0x1000, 128 * IO_TLB_SIZE, 0, 0, DMA_TO_DEVICE, cpu=3)
    assert full == BASE + 128 * IO_TLB_SIZE and p.area_used == [1, 128]
    c = p.swiotlb_tbl_map_single(0x1000, 0x100, 0, 0, DMA_TO_DEVICE, cpu=1)
    assert c == BASE + IO_TLB_SIZE and p.area_used == [2, 128]


def test_iommu_dma_map_swiotlb_untrusted_zeroes_padding_and_traces():
    p = pool()
    dev = Device.thunderbolt_nvme()
    assert dev.dma_skip_sync is True
    tlb = p.iommu_dma_map_swiotlb(dev, 0x1234_5E00, 0x300, 4096, DMA_TO_DEVICE)
    assert tlb & 0xFFF == 0xE00
    assert dev.dma_skip_sync is False  # dma_reset_need_sync on the first bounce
    z = p.log.of_kind("swiotlb_zero_padding")
    assert len(z) == 1
    assert (z[0].args["pre_bytes"], z[0].args["post_bytes"]) == (0xE00, 0xF00)
    assert z[0].count == 0xE00 + 0xF00 and p.log.count("swiotlb_zero_padding") == 0x1D00
    tr = p.log.of_kind("swiotlb_bounced")
    assert len(tr) == 1 and tr[0].seq < p.log.of_kind("swiotlb_bounces")[0].seq
    assert tr[0].args == dict(dev_name="0000:05:00.0", dma_mask=(1 << 64) - 1, dev_addr=0x1234_5E00,
                              size=0x300, force="NORMAL")
    assert format_swiotlb_bounced(tr[0].args) == \
        "dev_name: 0000:05:00.0 dma_mask=ffffffffffffffff dev_addr=12345e00 size=768 NORMAL"


def test_iommu_dma_map_swiotlb_trusted_does_not_zero():
    p = pool()
    dev = Device(coherent=False, bounce_unaligned_kmalloc=True, arch_dma_minalign=128,
                 dma_cache_alignment=64)
    tlb = p.iommu_dma_map_swiotlb(dev, 0x1000_0020, 20, 4096, DMA_FROM_DEVICE)
    assert tlb != DMA_MAPPING_ERROR
    assert p.log.count("swiotlb_zero_padding") == 0
    assert p.log.count("swiotlb_bounced") == 1


def test_iommu_dma_map_swiotlb_failure_is_traced_but_not_zeroed():
    p = pool(size=SEG)
    dev = Device.thunderbolt_nvme()
    p.swiotlb_tbl_map_single(0, 128 * IO_TLB_SIZE, 0xFFF, 0xFFF, DMA_TO_DEVICE)
    assert p.iommu_dma_map_swiotlb(dev, 0x10, 0x10, 4096, DMA_TO_DEVICE) == DMA_MAPPING_ERROR
    assert p.log.count("swiotlb_bounced") == 1 and p.log.count("swiotlb_zero_padding") == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, (1 << 36) - 1), st.integers(1, 40000),
                          st.sampled_from([0, 0xFFF]), st.sampled_from([0, 0xFFF]),
                          st.booleans()), min_size=1, max_size=40))
def test_random_map_unmap_keeps_free_lists_consistent(ops):
    p = pool(size=2 * SEG)
    initial = p.snapshot()
    live = []
    for orig, size, align, mam, unmap_first in ops:
        if unmap_first and live:
            tlb, sz = live.pop(0)
            assert p.swiotlb_tbl_unmap_single(tlb, sz, DMA_BIDIRECTIONAL)
        before = p.snapshot()
        tlb = p.swiotlb_tbl_map_single(orig, size, align, mam, DMA_BIDIRECTIONAL)
        if tlb == DMA_MAPPING_ERROR:
            assert p.snapshot() == before
            continue
        assert tlb & mam == orig & mam
        live.append((tlb, size))
        # invariant: every slot's free count equals the run of free slots up to the segment end
        for i in range(p.nslabs):
            if p.list[i]:
                j = i
                while j < p.nslabs and p.list[j] and (j == i or j % IO_TLB_SEGSIZE):
                    j += 1
                assert p.list[i] == j - i
        assert p.used == sum(m.nslots for m in p.mappings.values())
    for tlb, sz in live:
        p.swiotlb_tbl_unmap_single(tlb, sz, DMA_BIDIRECTIONAL)
    # same free lists as a fresh pool (cursor positions may differ)
    assert p.snapshot()[:4] == initial[:4] and p.used == 0


def test_iommu_dma_map_swiotlb_validation_logs_nothing():
    p = pool()
    snap, n = p.snapshot(), len(p.log)
    for kw in (dict(granule=8192 * 2), dict(size=0), dict(dir=5), dict(phys=-4)):
        args = dict(phys=0x1000, size=0x10, granule=4096, dir=DMA_TO_DEVICE)
        args.update(kw)
        with pytest.raises(ValueError):
            p.iommu_dma_map_swiotlb(Device.thunderbolt_nvme(), args["phys"], args["size"], args["granule"],
                                    args["dir"])
    assert p.snapshot() == snap and len(p.log) == n


def test_64k_granule_untrusted_map_page_uses_the_kernels_page_size():
    """Regression: a 64K-granule domain with an untrusted device raised "granule ... <= PAGE_SIZE 0x1000"
    from swiotlb. PAGE_SIZE is the simulated kernel's (``DmaDomain.page_size``), not the granule."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    from iovalab.kernel.iova import iova_rcache_range

    dom = DmaDomain("smmuv3-64k", swiotlb=SwiotlbPool(0x8000_0000))
    assert (dom.granule, dom.page_size, dom.swiotlb.page_size) == (0x10000, 0x10000, 0x10000)
    assert iova_rcache_range(dom.iovad.page_size) == 0x200000
    addr = dom.dma_map_page(Device.thunderbolt_nvme(), 0x12345200, 0x200)
    assert addr != DMA_MAPPING_ERROR and addr & 0xFFFF == 0x200
    assert dom.log.count("swiotlb_bounced") == 1
    # a 4K-page kernel cannot host a 64K granule (init_iova_domain BUG_ON), said before anything is built
    with pytest.raises(ValueError, match="PAGE_SIZE"):
        DmaDomain("smmuv3-64k", page_size=0x1000)
    with pytest.raises(ValueError, match="PAGE_SIZE 0x1000"):
        DmaDomain("smmuv3-64k", swiotlb=SwiotlbPool(0x8000_0000, page_size=0x1000))
    assert DmaDomain("intel-vtd").page_size == 0x1000
    assert DmaDomain("smmuv3-4k", page_size=0x10000).iovad.page_size == 0x10000
