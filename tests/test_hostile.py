"""Regression tests for issue 15 ("Hostile input"): each case is the issue's reproducer. The rule: bad
input raises a ValueError naming the value and the rule before any state changes; what the kernel
reports as a failure (DMA_MAPPING_ERROR, false, 0 entries) is returned as the kernel returns it."""

import math

import pytest

import iovalab
from iovalab import Device, DmaDomain, DmaError, DmaIovaState, IovaDomain, ScatterEntry
from iovalab.kernel.dma_iova import DMA_IOVA_USE_SWIOTLB, dma_iova_range
from iovalab.kernel.iova import IOVA_ANCHOR
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.units import DMA_BIT_MASK, DMA_MAPPING_ERROR, MAX_MAP_SIZE

LIM32 = DMA_BIT_MASK(32) >> 12


def bounce_dom(**kw):
    return DmaDomain("intel-vtd", swiotlb=SwiotlbPool(0x8000000), **kw)


def state(dom, *devs):
    return dom.snapshot(), tuple((d.pci_32bit_workaround, d.dma_skip_sync) for d in devs)


# ------------------------------------------------------------------ 1. __finalise_sg
def test_map_sg_keeps_each_segment_length_and_unmap_clears_every_pte():
    dom, dev = DmaDomain("intel-vtd"), Device()
    sgl = [ScatterEntry(0x10000100, 0x100), ScatterEntry(0x20000000, 0x1000)]
    assert dom.dma_map_sg(dev, sgl) == 2
    assert [(s.dma_address, s.dma_length) for s in sgl] == [(0xFFFFE100, 0x100), (0xFFFFF000, 0x1000)]
    dom.dma_unmap_sg(dev, sgl)
    assert dom.iommu.pgtable.find_mapped(0, 1 << 48, 4) == []
    # the 2-granule IOVA went to the 2-granule bin: a 1-page map does not reuse half of it
    assert dom.iovad.rcache_summary()[1]["cpus"][0] == (1, 0)
    a = dom.dma_map_page(dev, 0x30000000, 0x1000)
    assert dom.iommu.iommu_iova_to_phys(a) == 0x30000000
    assert dom.iommu.iommu_iova_to_phys(0xFFFFF000) == 0  # not the old buffer


def test_map_sg_shrunk_form_unmaps():
    dom, dev = DmaDomain("intel-vtd"), Device()
    sgl = [ScatterEntry(0x1000000, 1), ScatterEntry(0x1000000, 1)]
    assert dom.dma_map_sg(dev, sgl) == 2
    assert [s.dma_length for s in sgl] == [1, 1]
    dom.dma_unmap_sg(dev, sgl)
    assert dom.iommu.pgtable.find_mapped(0, 1 << 48, 4) == []


# ------------------------------------------------------------------ 2. validate first
def test_bad_cpu_on_bounced_map_leaks_no_slot():
    dom, dev = bounce_dom(), Device.thunderbolt_nvme()
    before = state(dom, dev)
    with pytest.raises(ValueError, match="cpu 7"):
        dom.dma_map_page(dev, 0x10000100, 0x200, cpu=7)
    assert state(dom, dev) == before and dom.swiotlb.used == 0


def test_bad_cpu_on_lazy_unmap_unmaps_nothing():
    dom, dev = DmaDomain("intel-vtd", strict=False), Device()
    a = dom.dma_map_page(dev, 0x5000, 0x1000)
    before = state(dom, dev)
    with pytest.raises(ValueError, match="cpu 5"):
        dom.dma_unmap_page(dev, a, 0x1000, cpu=5)
    assert state(dom, dev) == before


def test_bad_cpu_on_advance_time_flushes_nothing():
    dom, dev = DmaDomain("intel-vtd", strict=False), Device()
    dom.dma_unmap_page(dev, dom.dma_map_page(dev, 0x5000, 0x1000), 0x1000)
    before = state(dom, dev)
    with pytest.raises(ValueError, match="cpu 5"):
        dom.advance_time(20, cpu=5)
    assert state(dom, dev) == before and dom.fq_pending() == 1


@pytest.mark.parametrize("bounce", [False, True])
def test_dma_bit_mask_12_fails_as_the_kernel_does(bounce):
    dom = bounce_dom() if bounce else DmaDomain("intel-vtd")
    dev = Device(dma_mask=DMA_BIT_MASK(12), untrusted=bounce)
    assert dom.dma_map_page(dev, 0x10000100 if bounce else 0x1000, 0x200) == DMA_MAPPING_ERROR
    assert dom.dma_map_sg(dev, [ScatterEntry(0x1000, 0x1000)]) == 0
    assert dom.dma_iova_try_alloc(dev, DmaIovaState(), 0, 0x1000) is False
    assert len(dom.iovad) == 0
    if bounce:
        assert dom.swiotlb.used == 0 and not dom.swiotlb.mappings


@pytest.mark.parametrize("preset", ["intel-vtd", "amd-v1", "smmuv3-4k"])
@pytest.mark.parametrize("phys", [-0x1000, 1 << 64, (1 << 64) - 0x800])
def test_phys_outside_64_bits_is_refused_before_allocating(preset, phys):
    dom, dev = DmaDomain(preset), Device()
    before = state(dom, dev)
    with pytest.raises(ValueError, match="phys"):
        dom.dma_map_page(dev, phys, 0x1000)
    with pytest.raises(ValueError, match="phys"):
        dom.dma_map_sg(dev, [ScatterEntry(0x1000, 0x1000), ScatterEntry(phys, 0x1000)])
    assert state(dom, dev) == before


def test_untrusted_sg_later_segment_failure_unwinds():
    # a pool of 256 KiB: the second bounce does not fit
    dom = DmaDomain("intel-vtd", swiotlb=SwiotlbPool(0x8000000, 0x40000))
    dev = Device.thunderbolt_nvme()
    before = dom.snapshot()
    sgl = [ScatterEntry(0x10000100, 0x200), ScatterEntry(0x20000100, 0x40000)]
    assert dom.dma_map_sg(dev, sgl) == 0
    assert dom.iommu.pgtable.find_mapped(0, 1 << 48, 4) == [] and dom.swiotlb.used == 0
    assert dom.snapshot()[1] == before[1]


def test_unmap_page_with_another_device_checks_before_unmapping():
    dom, dev = bounce_dom(), Device.thunderbolt_nvme()
    a = dom.dma_map_page(dev, 0x10000100, 0x200)
    other = Device(name="0000:06:00.0", untrusted=True, min_align_mask=0)
    before = state(dom, dev)
    with pytest.raises(ValueError, match="min_align_mask"):
        dom.dma_unmap_page(other, a, 0x200)
    assert state(dom, dev) == before
    dom.dma_unmap_page(dev, a, 0x200)
    assert dom.swiotlb.used == 0


def test_failed_iova_link_through_swiotlb_unlinks_as_out_unmap():
    # the head bounces into the only free slots; the tail then finds the pool full
    dom = DmaDomain("intel-vtd", swiotlb=SwiotlbPool(0x8000000, 0x40000))
    dev = Device.thunderbolt_nvme()
    hog = dom.dma_map_page(dev, 0x30000100, 0x3F000 - 0x100)  # 126 of 128 slots: room for the head only
    assert hog != DMA_MAPPING_ERROR
    st = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st, 0x10000100, 0x3000)
    used = dom.swiotlb.used
    with pytest.raises(DmaError):
        dom.dma_iova_link(dev, st, 0x10000100, 0, 0x3000)
    base, length = dma_iova_range(st, dom.granule)
    assert dom.iommu.pgtable.find_mapped(base, base + length, 4) == []
    assert dom.swiotlb.used == used
    assert st.size_field & DMA_IOVA_USE_SWIOTLB  # the kernel leaves the flag set


# ------------------------------------------------------------------ 6. API edge cases
@pytest.mark.parametrize("ms, cpu", [(math.nan, 0), (math.inf, 0), ("1", 0), (None, 0), (-1, 0),
                                     (1, -1), (1, "0"), (1, 1.5), (1, None), (1, True)])
def test_advance_time_rejects(ms, cpu):
    dom = DmaDomain("intel-vtd", strict=False, ncpus=2)
    before = dom.snapshot()
    with pytest.raises(ValueError):
        dom.advance_time(ms, cpu=cpu)
    assert dom.snapshot() == before


@pytest.mark.parametrize("size", [0, -0x1000, 1 << 64, MAX_MAP_SIZE + 1, 1.5, None, "4096"])
def test_dma_alloc_coherent_rejects_size(size):
    dom, dev = DmaDomain("intel-vtd"), Device()
    before = dom.snapshot()
    with pytest.raises(ValueError, match="size"):
        dom.dma_alloc_coherent(dev, size)
    assert dom.snapshot() == before
    phys, addr = dom.dma_alloc_coherent(dev, 0x1000)  # later calls still work
    assert phys == 0x1_0000_0000 and dom.iommu.iommu_iova_to_phys(addr) == phys


def test_start_pfn_zero_is_refused():
    with pytest.raises(ValueError, match="start_pfn 0"):
        IovaDomain(0x1000, 0)


def test_reserve_reaching_the_anchor_is_refused():
    d = IovaDomain(1, 1)
    with pytest.raises(ValueError, match="IOVA_ANCHOR"):
        d.reserve_iova(0x10, IOVA_ANCHOR)
    assert d.ranges() == [] and d.anchor.pfn_lo == IOVA_ANCHOR


@pytest.mark.parametrize("call, match", [
    (lambda d: d.iova_depot_work_func(6), "bin 6"),
    (lambda d: d.iova_depot_work_func(-1), "bin -1"),
    (lambda d: d.iova_depot_work_func(None), "bin None"),
    (lambda d: d.free_cpu_cached_iovas(1.5), "cpu 1.5"),
    (lambda d: d.free_cpu_cached_iovas(-1), "cpu -1"),
    (lambda d: d.free_cpu_cached_iovas(2), "cpu 2"),
    (lambda d: d.alloc_iova_fast(None, LIM32), "size None"),
    (lambda d: d.alloc_iova_fast("1", LIM32), "size '1'"),
    (lambda d: d.alloc_iova_fast(1, 1.5), "limit_pfn 1.5"),
    (lambda d: d.alloc_iova(1, LIM32, True, cpu=None), "cpu None"),
    (lambda d: d.free_iova_fast(None, 1), "pfn None"),
    (lambda d: d.free_iova("x"), "pfn 'x'"),
    (lambda d: d.find_iova(1.5), "pfn 1.5"),
    (lambda d: d.reserve_iova(None, 3), "None"),
])
def test_iova_domain_type_errors_are_value_errors(call, match):
    d = IovaDomain(0x1000, 1, ncpus=2)
    d.free_iova_fast(d.alloc_iova_fast(1, LIM32), 1)
    before = d.snapshot()
    with pytest.raises(ValueError, match=match):
        call(d)
    assert d.snapshot() == before


def test_limit_below_start_pfn_fails_like_the_kernel():
    d = IovaDomain(0x1000, 1)
    assert d.alloc_iova_fast(1, 0) == 0 and d.alloc_iova(1, 0, True) is None


@pytest.mark.parametrize("call", [
    lambda dom, dev: dom.dma_map_page(dev, None, 0x1000),
    lambda dom, dev: dom.dma_map_page(dev, 0x1000, "4096"),
    lambda dom, dev: dom.dma_map_page(dev, 0x1000, 0x1000, cpu=1.0),
    lambda dom, dev: dom.dma_unmap_page(dev, None, 0x1000),
    lambda dom, dev: dom.dma_map_sg(dev, [ScatterEntry(0x1000, None)]),
    lambda dom, dev: dom.dma_map_sg(dev, [(0x1000, 0x1000)]),
    lambda dom, dev: dom.dma_iova_try_alloc(dev, DmaIovaState(), 0.5, 0x1000),
    lambda dom, dev: dom.dma_iova_try_alloc(dev, DmaIovaState(), 0, 0x1000, cpu=3),
])
def test_dma_domain_type_errors_are_value_errors(call):
    dom, dev = DmaDomain("intel-vtd"), Device()
    before = dom.snapshot()
    with pytest.raises(ValueError):
        call(dom, dev)
    assert dom.snapshot() == before


# ------------------------------------------------------------------ 7. public API
def test_public_api_is_importable_from_the_top_level():
    """The names users' notebooks import stay at the top level whatever moves inside the package."""
    from iovalab.kernel import device, dma_iommu, iommu, iova, units
    where = {"DmaDomain": dma_iommu, "Device": device, "DmaIovaState": dma_iommu, "ScatterEntry": dma_iommu,
             "IovaDomain": iova, "IommuDomain": iommu, "DmaError": units}
    for name, module in where.items():
        assert name in iovalab.__all__
        assert getattr(iovalab, name) is getattr(module, name)


# ------------------------------------------------------------------ 3. output-address width per format
@pytest.mark.parametrize("preset, kernel, mapped, phys", [
    # 6.17 VT-d: __domain_mapping() stores the pfn unchecked and dma_pte_addr() masks with VTD_PAGE_MASK
    # (bits 63:12, intel/iommu.h): the walk gives the address back whole (the hardware would fault on it)
    ("intel-vtd", "6.17", True, 1 << 52),
    # 7.3 VT-d: generic_pt map_pages() refuses paddr >> max_oasz_lg2 (52, intel/iommu.c) with -ERANGE
    ("intel-vtd", "7.3", False, None),
    # 6.17 AMD v1: iommu_v1_iova_to_phys() masks with PM_ADDR_MASK (bits 51:12): the kernel truncates
    ("amd-v1", "6.17", True, 0),
    # 7.3 AMD v1: generic_pt too (hw_max_oasz_lg2 = 52, amd/iommu.c): -ERANGE
    ("amd-v1", "7.3", False, None),
    # ARM LPAE: arm_lpae_map_pages() WARNs and refuses paddr >> oas (48) with -ERANGE
    ("smmuv3-4k", "6.17", False, None),
])
def test_output_address_width_is_the_formats(preset, kernel, mapped, phys):
    dom, dev = DmaDomain(preset, kernel=kernel), Device.nvme()
    addr = dom.dma_map_page(dev, 1 << 52, 0x1000)
    assert (addr != DMA_MAPPING_ERROR) == mapped
    if mapped:
        assert dom.iommu.iommu_iova_to_phys(addr) == phys
    else:
        assert dom.iommu.pgtable.mapped_ranges() == []
