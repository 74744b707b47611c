"""The DMA layer's batch helpers give exactly the state and counters of the per-page calls."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
from iovalab.kernel.events import EventLog


def run(keep, preset, order, unlink, npages=2048):
    dom = DmaDomain(preset, log=EventLog(keep=keep))
    dev = Device.mlx5()
    g = dom.granule
    st_ = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, st_, 0, npages * g)
    phys = (0x40_0000_0000 + order * 3 * g).astype(np.uint64)  # scattered pages
    dom.dma_iova_link_sync_pages(dev, st_, phys, order * g, g)
    if len(unlink):
        dom.dma_iova_unlink_pages(dev, st_, unlink * g, g)
    return dom, {k: v for k, v in dom.log.totals.items() if v}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["intel-vtd", "smmuv3-4k", "smmuv3-64k", "amd-v1"]))
def test_bulk_equals_per_page(seed, preset):
    rng = np.random.default_rng(seed)
    n = 2048
    order = rng.permutation(n)[: rng.integers(2, n)]
    unlink = rng.permutation(order)[: rng.integers(0, len(order))]
    a, ta = run(True, preset, order, unlink, n)
    b, tb = run(False, preset, order, unlink, n)
    assert ta == tb
    assert a.iommu.snapshot() == b.iommu.snapshot()
    assert a.iommu.pgtable.table_page_count() == b.iommu.pgtable.table_page_count()
    assert a.iommu.pgtable.leaf_count() == b.iommu.pgtable.leaf_count() == len(order) - len(unlink)


def test_bulk_falls_back_to_kernel_errors():
    """A page that is already linked makes the batch go page by page, which raises as the kernel would."""
    from iovalab.kernel.units import DmaError
    dom = DmaDomain("intel-vtd", log=EventLog(keep=False))
    dev = Device.mlx5()
    st_ = DmaIovaState()
    dom.dma_iova_try_alloc(dev, st_, 0, 64 * 0x1000)
    dom.dma_iova_link(dev, st_, 0x5000_0000, 10 * 0x1000, 0x1000)
    offs = np.arange(64) * 0x1000
    with pytest.raises(DmaError):
        dom.dma_iova_link_sync_pages(dev, st_, 0x6000_0000 + offs, offs, 0x1000)
    # pages before the clash are linked, exactly as per-page calls would leave them
    assert dom.iommu.iommu_iova_to_phys(st_.addr + 9 * 0x1000) == 0x6000_0000 + 9 * 0x1000


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 3000), max_size=60), st.integers(0, 3000), st.integers(1, 1200),
       st.sampled_from(["intel-vtd", "smmuv3-4k", "smmuv3-16k"]))
def test_range_queries_match_page_walks(pages, lo_pg, n_pg, preset):
    """find_mapped / first_unmapped (table walks) agree with one lookup per granule."""
    dom = DmaDomain(preset)
    g = dom.granule
    pt = dom.iommu.pgtable
    base = 0x4000_0000
    for p in sorted(pages):
        assert dom.iommu.iommu_map(base + p * g, 0x1_0000_0000 + p * g, g, 3) == 0
    # one large page too, where the preset allows it
    big = max(dom.iommu.pgtable.block_sizes[-2], g)
    dom.iommu.iommu_map(base + 0x4000 * g, 0x2_0000_0000, big, 3)
    lo, hi = base + lo_pg * g, base + (lo_pg + n_pg) * g
    brute = [a for a in range(lo, hi, g) if pt.lookup(a) is not None]
    assert pt.find_mapped(lo, hi, 16) == brute[:16]
    holes = [a for a in range(lo, hi, g) if pt.lookup(a) is None]
    assert pt.first_unmapped(lo, hi) == (holes[0] if holes else None)
    big_lo = base + 0x4000 * g
    assert pt.first_unmapped(big_lo, big_lo + big) is None
    assert pt.find_mapped(big_lo + big - g, big_lo + big + g, 4) == [big_lo + big - g]
