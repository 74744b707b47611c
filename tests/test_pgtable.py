"""IO page-table model (io-pgtable-arm.c, intel/iommu.c, amd/io_pgtable.c): geometry, PTE encodings,
map/unmap per driver, overlap, partial blocks, holes, table freeing, AMD replicated PTEs."""

import pytest

from iovalab.kernel.events import EventLog
from iovalab.kernel.pgtable import (
    AMD_IOMMU_PGSIZES,
    IOMMU_CACHE,
    IOMMU_READ,
    IOMMU_WRITE,
    alloc_io_pgtable_ops,
    arm_lpae_pgsizes,
)
from iovalab.kernel.units import EEXIST, EFAULT, EINVAL, ERANGE, SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

RW = IOMMU_READ | IOMMU_WRITE
K4, M2 = SZ_4K, SZ_2M


def pt(fmt="x86-64", granule=SZ_4K, ias=48, driver=None, **kw):
    log = EventLog()
    flushes = []
    t = alloc_io_pgtable_ops(fmt, granule, ias, log, driver=driver,
                             tlb_flush=lambda iova, size, func, cpu: flushes.append((iova, size, func)), **kw)
    t.flushes = flushes
    return t, log


ALL = [("x86-64", SZ_4K, "intel"), ("x86-64", SZ_4K, "amd"), ("arm-lpae", SZ_4K, "arm"),
       ("arm-lpae", SZ_16K, "arm"), ("arm-lpae", SZ_64K, "arm")]


# -- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,granule,ias,levels,pgd,blocks", [
    ("x86-64", SZ_4K, 39, 3, 512, (SZ_1G, M2, K4)),
    ("x86-64", SZ_4K, 48, 4, 512, (1 << 39, SZ_1G, M2, K4)),
    ("x86-64", SZ_4K, 57, 5, 512, (1 << 48, 1 << 39, SZ_1G, M2, K4)),
    ("arm-lpae", SZ_4K, 48, 4, 512, (1 << 39, SZ_1G, M2, K4)),
    ("arm-lpae", SZ_4K, 32, 3, 4, (SZ_1G, M2, K4)),
    ("arm-lpae", SZ_16K, 48, 4, 2, (1 << 47, 1 << 36, SZ_32M, SZ_16K)),
    ("arm-lpae", SZ_64K, 48, 3, 64, (1 << 42, SZ_512M, SZ_64K)),
    ("arm-lpae", SZ_64K, 42, 2, 8192, (SZ_512M, SZ_64K)),
])
def test_geometry(fmt, granule, ias, levels, pgd, blocks):
    t, _ = pt(fmt, granule, ias)
    assert t.nlevels == levels
    assert t.level_entries[0] == pgd
    assert t.block_sizes == blocks
    assert t.table_page_count() == 1 and t.leaf_count() == 0


def test_level_names():
    assert [g["level"] for g in pt()[0].geometry()] == ["PML4", "PDPT", "PD", "PT"]
    assert [g["level"] for g in pt("arm-lpae", SZ_64K)[0].geometry()] == ["L1", "L2", "L3"]
    assert [g["level"] for g in pt(driver="amd")[0].geometry()] == ["L3", "L2", "L1", "L0"]


def test_pgsizes_per_granule():
    assert arm_lpae_pgsizes(SZ_4K) == SZ_4K | M2 | SZ_1G
    assert arm_lpae_pgsizes(SZ_16K) == SZ_16K | SZ_32M
    assert arm_lpae_pgsizes(SZ_64K) == SZ_64K | SZ_512M
    assert AMD_IOMMU_PGSIZES == ((1 << 52) - 1) & ~0xFFF & ~(1 << 39)


@pytest.mark.parametrize("kw,needle", [
    (dict(fmt="riscv"), "format"),
    (dict(fmt="x86-64", granule=SZ_64K), "4K pages only"),
    (dict(fmt="arm-lpae", granule=8192), "not 4K, 16K or 64K"),
    (dict(fmt="arm-lpae", ias=50), "ias 50"),
    (dict(fmt="x86-64", driver="arm"), "does not use"),
    (dict(fmt="x86-64", driver="nvidia"), "driver"),
    (dict(fmt="arm-lpae", granule=SZ_64K, pgsize_bitmap=SZ_64K | M2), "leaf size"),
])
def test_bad_configuration_raises(kw, needle):
    kw = {"fmt": "x86-64", "granule": SZ_4K, **kw}
    with pytest.raises(ValueError, match=needle):
        alloc_io_pgtable_ops(kw.pop("fmt"), kw.pop("granule"), kw.pop("ias", 48), **kw)


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,granule,driver", ALL)
def test_round_trip_small_and_large(fmt, granule, driver):
    t, log = pt(fmt, granule, driver=driver)
    big = t.block_sizes[-2]
    iova, pa = 64 * big, 3 * big
    assert t.map_pages(iova, pa, granule, 3, RW) == (3 * granule, 0)
    assert t.map_pages(8 * big, 16 * big, big, 2, IOMMU_READ) == (2 * big, 0)
    assert t.iova_to_phys(iova + granule + 0x123) == pa + granule + 0x123
    assert t.iova_to_phys(9 * big + 0x4567) == 17 * big + 0x4567
    assert t.iova_to_phys(iova + 3 * granule) == 0
    assert t.lookup(9 * big)[1:] == (big, IOMMU_READ)
    assert t.mapped_ranges() == [(8 * big, 16 * big, 2 * big, IOMMU_READ), (iova, pa, 3 * granule, RW)]
    assert t.leaf_count() == 5
    assert sum(e.count for e in log.of_kind("pte_writes")) == 5
    assert len(log.of_kind("pte_writes")) == 2
    # table pages: root + one per allocated table, one event each
    assert t.table_page_count() == len(log.of_kind("table_pages"))
    assert t.unmap_pages(iova, granule, 3) == 3 * granule
    assert t.unmap_pages(8 * big, big, 2) == 2 * big
    assert t.mapped_ranges() == [] and t.leaf_count() == 0
    assert [e.count for e in log.of_kind("pte_clear")] == [3, 2]


def test_pte_encodings():
    intel, _ = pt()
    intel.map_pages(0x1000, 0xABC000, K4, 1, RW)
    intel.map_pages(0x400000, 0x800000, M2, 1, IOMMU_READ)
    assert intel.walk(0x1000)[-1]["pte"] == 0xABC000 | 3
    assert intel.walk(0x400000)[-1]["pte"] == 0x800000 | 1 | 0x80        # DMA_PTE_LARGE_PAGE
    assert intel.walk(0x400000)[-1]["level"] == "PD"
    arm, _ = pt("arm-lpae")
    arm.map_pages(0x1000, 0xABC000, K4, 1, IOMMU_READ | IOMMU_CACHE)
    arm.map_pages(0x400000, 0x800000, M2, 1, RW)
    page = arm.walk(0x1000)[-1]["pte"]
    assert page & 3 == 3 and page & (1 << 10) and page & (1 << 7)       # PAGE, AF, AP_RDONLY
    assert (page >> 2) & 7 == 1 and (page >> 8) & 3 == 3                 # ATTRIDX cache, inner-shareable
    assert page & 0xFFFFFFFFF000 == 0xABC000
    block = arm.walk(0x400000)[-1]["pte"]
    assert block & 3 == 1 and not block & (1 << 7)                       # BLOCK, writable
    assert arm.lookup(0x1000)[2] == IOMMU_READ | IOMMU_CACHE
    # 64K granule packs PA bits 51:48 into PTE bits 15:12
    a64, _ = pt("arm-lpae", SZ_64K, oas=52)
    hi = (0xA << 48) | 0x12340000
    assert a64.map_pages(0x10000, hi, SZ_64K, 1, RW) == (SZ_64K, 0)
    assert (a64.walk(0x10000)[-1]["pte"] >> 12) & 0xF == 0xA
    assert a64.iova_to_phys(0x10000 + 5) == hi + 5
    assert a64.mapped_ranges()[0][1] == hi


def test_arm_range_and_prot_checks():
    t, log = pt("arm-lpae")
    assert t.map_pages(1 << 48, 0, K4, 1, RW) == (0, -ERANGE)
    assert t.map_pages(0, 1 << 48, K4, 1, RW) == (0, -ERANGE)
    assert t.map_pages(0, 0, K4, 1, 0) == (0, -EINVAL)
    assert t.map_pages(0, 0, SZ_64K, 1, RW) == (0, -EINVAL)
    assert log.count("warn") == 3 and t.leaf_count() == 0


def test_intel_checks():
    t, _ = pt()
    assert t.map_pages((1 << 48) - K4, 0, K4, 2, RW) == (0, -EFAULT)      # intel_iommu_map: gaw too small
    assert t.map_pages(0x1000, 0, M2, 1, RW) == (0, -EINVAL)               # !IS_ALIGNED(iova | paddr, pgsize)
    assert t.map_pages(0, 0, K4, 1, 0) == (0, -EINVAL)
    assert t.leaf_count() == 0 and t.table_page_count() == 1


# -- ARM map_pages stops at the end of a table ----------------------------------------------------
def test_arm_map_pages_stops_at_table_end_intel_does_not():
    arm, _ = pt("arm-lpae")
    assert arm.map_pages(510 * K4, 0x10000000, K4, 5, RW) == (2 * K4, 0)  # only entries 510, 511
    intel, _ = pt()
    assert intel.map_pages(510 * K4, 0x10000000, K4, 5, RW) == (5 * K4, 0)
    assert intel.mapped_ranges() == [(510 * K4, 0x10000000, 5 * K4, RW)]


# -- overlap ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,granule,driver", ALL)
def test_overlap_is_eexist_and_changes_nothing(fmt, granule, driver):
    t, log = pt(fmt, granule, driver=driver)
    big = t.block_sizes[-2]
    t.map_pages(big, 0x40000000, granule, 4, RW)
    t.map_pages(4 * big, 8 * big, big, 1, RW)
    snap, tables, leaves = t.snapshot(), t.table_page_count(), t.leaf_count()
    # leaf over leaf (the new range also covers free entries: nothing at all may be written)
    assert t.map_pages(big + 2 * granule, 0x80000000, granule, 8, RW) == (0, -EEXIST)
    # small page under a block
    assert t.map_pages(4 * big + granule, 0x80000000, granule, 1, RW) == (0, -EEXIST)
    # block where a table with live leaves is
    assert t.map_pages(big, 0x80000000 // big * big, big, 1, RW) == (0, -EEXIST)
    # block over block
    assert t.map_pages(4 * big, 0, big, 1, RW) == (0, -EEXIST)
    assert (t.snapshot(), t.table_page_count(), t.leaf_count()) == (snap, tables, leaves)
    # AMD's iommu_v1_map_pages (amd/io_pgtable.c, 6.17) replaces a leaf silently: the model's refusal of
    # leaf (or block over block) is an ``error`` event there, not a WARN (tests/test_misuse_matrix.py)
    amd = driver == "amd"
    assert log.count("warn") == (2 if amd else 4) and log.count("error") == (2 if amd else 0)


@pytest.mark.parametrize("fmt,granule,driver", ALL)
def test_block_replaces_empty_table(fmt, granule, driver):
    t, log = pt(fmt, granule, driver=driver)
    big = t.block_sizes[-2]
    t.map_pages(big, 0x40000000, granule, 2, RW)
    t.unmap_pages(big, granule, 2)
    before = t.table_page_count()
    assert t.map_pages(big, 2 * big, big, 1, RW) == (big, 0)
    assert t.table_page_count() == before - 1
    assert log.of_kind("table_free")[-1].count == 1
    assert t.flushes and t.flushes[-1][0] == big                 # walk-cache/IOTLB flush of that range
    assert t.iova_to_phys(big + 5) == 2 * big + 5


# -- partial unmap of a block -------------------------------------------------------------------
def test_arm_partial_block_unmap_warns_and_returns_0():
    t, log = pt("arm-lpae")
    t.map_pages(M2, 4 * M2, M2, 1, RW)
    assert t.unmap_pages(M2, K4, 1) == 0
    assert "partial large IOPTE" in log.of_kind("warn")[-1].args["rule"]
    assert t.iova_to_phys(M2) == 4 * M2 and t.leaf_count() == 1


def test_intel_partial_superpage_unmap_unmaps_whole_superpage():
    t, log = pt()
    t.map_pages(M2, 4 * M2, M2, 1, RW)
    got = []
    assert t.unmap_pages(M2, K4, 1, lambda *a: got.append(a)) == M2       # size rounded up
    assert got == [(M2, M2, M2)]
    assert t.iova_to_phys(M2) == 0 and t.leaf_count() == 0
    # not superpage-aligned: the kernel walks the data page as a table; modelled as a warning
    t.map_pages(M2, 4 * M2, M2, 1, RW)
    assert t.unmap_pages(M2 + K4, K4, 1) == M2
    assert "part of a superpage" in log.of_kind("warn")[-1].args["rule"]
    assert t.iova_to_phys(M2) == 4 * M2


def test_amd_partial_large_page_unmap_clears_whole_page():
    t, _ = pt(driver="amd")
    t.map_pages(M2, 4 * M2, M2, 1, RW)
    assert t.unmap_pages(M2 + K4, K4, 1) == M2
    assert t.leaf_count() == 0


# -- holes --------------------------------------------------------------------------------------
def test_holes_per_driver():
    arm, alog = pt("arm-lpae")
    assert arm.unmap_pages(0x10000, K4, 1) == 0
    assert "nothing mapped" in alog.of_kind("warn")[-1].args["rule"]
    arm.map_pages(0, 0x100000, K4, 2, RW)
    assert arm.unmap_pages(0, K4, 4) == 2 * K4                           # stops at the hole, WARN
    amd, _ = pt(driver="amd")
    assert amd.unmap_pages(0x10000, K4, 1) == 0
    amd.map_pages(0, 0x100000, K4, 2, RW)
    assert amd.unmap_pages(0, K4, 4) == 2 * K4
    # VT-d never stops: the size is rounded up to the level of the missing entry
    intel, _ = pt()
    assert intel.unmap_pages(0x10000, K4, 1) == 1 << 39                  # no PML4 entry: 512 GiB
    intel.map_pages(0, 0x100000, K4, 1, RW)
    assert intel.unmap_pages(M2 * 3, K4, 1) == M2                         # PD entry missing: 2 MiB
    assert intel.unmap_pages(0x5000, K4, 2) == 2 * K4                     # PT present, PTEs absent
    assert intel.iova_to_phys(0) == 0x100000


def test_intel_hole_unmap_clears_neighbours_like_the_kernel():
    t, _ = pt()
    t.map_pages((1 << 39) + K4, 0x100000, K4, 1, RW)    # under PML4[1]
    # unmapping a never-mapped page whose PML4[0] is empty rounds to 512 GiB and reaches PML4[1]
    assert t.unmap_pages((1 << 39) - K4 * 4, K4, 1) == 1 << 39
    assert t.iova_to_phys((1 << 39) + K4) == 0


# -- table freeing ------------------------------------------------------------------------------
def test_table_freeing_on_unmap_per_driver():
    for driver, fmt in (("intel", "x86-64"), ("amd", "x86-64"), ("arm", "arm-lpae")):
        t, _ = pt(fmt, driver=driver)
        t.map_pages(M2, 0x10001000 - K4, K4, 512, RW)       # one full PT, mapped with 4K pages
        n = t.table_page_count()
        assert t.unmap_pages(M2, K4, 512) == M2
        if driver == "intel":                               # the range covers the PT: freed
            assert t.table_page_count() == n - 1 and t.last_freed == 1
        else:                                               # leaf-size unmap: the PT stays
            assert t.table_page_count() == n and t.last_freed == 0
        t.map_pages(M2, 0x10001000 - K4, K4, 512, RW)
        assert t.table_page_count() == n
        assert t.unmap_pages(M2, M2, 1) == M2               # block-size unmap over the PT
        if driver == "amd":
            assert t.table_page_count() == n               # AMD v1 never frees on unmap
        else:
            assert t.table_page_count() == n - 1 and t.last_freed == 1
        assert t.leaf_count() == 0


def test_intel_frees_tables_fully_inside_range():
    t, _ = pt()
    t.map_pages(0, 0x40000000, K4, 1024, RW)                # two PTs
    n = t.table_page_count()
    assert t.unmap_pages(0, K4, 1024) == 4 * M2 // 2       # dma_pte_clear_level frees both PTs
    assert t.table_page_count() == n - 2 and t.last_freed == 2
    t.map_pages(0, 0x40000000, K4, 512, RW)
    assert t.unmap_pages(K4, K4, 511) == 511 * K4          # part of a PT: cleared, not freed
    assert t.last_freed == 0 and t.leaf_count() == 1 and t.iova_to_phys(0) == 0x40000000


# -- AMD replicated PTEs ------------------------------------------------------------------------
def test_amd_replicated_pages():
    t, log = pt(driver="amd")
    assert t.map_pages(0x10000, 0x30000, SZ_64K, 2, RW) == (2 * SZ_64K, 0)
    assert log.of_kind("pte_writes")[-1].count == 32        # 16 replicated level-0 PTEs per 64K page
    assert t.leaf_count() == 32
    pte = t.walk(0x10000)[-1]["pte"]
    assert (pte >> 9) & 7 == 7                              # PM_LEVEL_ENC(7)
    assert pte & 0xFFFFFFFFFF000 == (0x30000 | 0xFFFF) & ~0x8000 & ~0xFFF   # PAGE_SIZE_PTE
    assert t.lookup(0x1F123) == (0x3F123, SZ_64K, RW)
    assert t.mapped_ranges() == [(0x10000, 0x30000, 2 * SZ_64K, RW)]
    assert t.unmap_pages(0x14000, K4, 1) == SZ_64K          # middle of a 64K page: the whole page
    assert t.leaf_count() == 16 and t.iova_to_phys(0x10000) == 0 and t.iova_to_phys(0x20000) == 0x40000
    # 1 GiB in a 4-level AMD table: a real level-2 leaf; 4 GiB would be 4 replicated level-2 PTEs
    assert t.map_pages(4 * SZ_1G, 8 * SZ_1G, 4 * SZ_1G, 1, RW) == (4 * SZ_1G, 0)
    assert t.lookup(5 * SZ_1G + 7) == (9 * SZ_1G + 7, 4 * SZ_1G, RW)
    assert t.unmap_pages(4 * SZ_1G, 4 * SZ_1G, 1) == 4 * SZ_1G


# -- views --------------------------------------------------------------------------------------
def test_mapped_ranges_merge_and_occupancy():
    t, _ = pt()
    t.map_pages(0, 0x100000, K4, 2, RW)
    t.map_pages(2 * K4, 0x102000, K4, 1, IOMMU_READ)      # same phys run, other prot: not merged
    t.map_pages(3 * K4, 0x200000, K4, 1, RW)
    assert t.mapped_ranges() == [(0, 0x100000, 2 * K4, RW), (2 * K4, 0x102000, K4, IOMMU_READ),
                                 (3 * K4, 0x200000, K4, RW)]
    assert len(t.mapped_ranges(merge=False)) == 4
    t.map_pages(1 << 39, 0, SZ_1G, 1, RW)
    occ = t.occupancy()
    assert [(o["index"], o["leaf_ptes"], o["mapped"], o["table_pages"]) for o in occ] == [
        (0, 4, 4 * K4, 3), (1, 1, SZ_1G, 1)]


def test_block_leaves_sort_with_child_tables():
    t, _ = pt()
    t.map_pages(0, 0x40000000, M2, 1, RW)
    t.map_pages(M2, 0x100000, K4, 1, RW)
    t.map_pages(2 * M2, 0x80000000, M2, 1, RW)
    assert [r[0] for r in t.mapped_ranges()] == [0, M2, 2 * M2]


@pytest.mark.parametrize("kernel", ["6.17", "7.3"])
def test_short_range_queries_answer_as_the_table_walks(kernel):
    """first_unmapped/find_mapped answer a range of a few granules with hardware walks: the same
    answers as the table walks of iovalab.kernel.pgtable.table, on random trees of every preset
    (blocks, holes, unaligned ends, ranges past a table's end)."""
    import random

    import iovalab.kernel.pgtable.table as table
    from iovalab.kernel.iommu import PRESETS, IommuDomain

    rng = random.Random(f"short-range-{kernel}")
    for name in sorted(PRESETS):
        d = IommuDomain.preset(name, log=EventLog(keep=False), kernel=kernel)
        pt, g = d.pgtable, d.granule
        base = 0x10000000
        for _ in range(150):
            a = base + (rng.randrange(4) * 512 if rng.random() < 0.3 else rng.randrange(2048)) * g
            n = rng.choice([1, 2, 3, 8, 32, 512])
            try:
                if rng.random() < 0.6:
                    d.iommu_map(a, a, n * g, 3)
                else:
                    d.iommu_unmap(a, n * g)
            except ValueError:
                pass
            for _ in range(4):
                lo = base + rng.randrange(-8, 2100) * g + rng.choice([0, 0, 0x10, g // 2])
                hi = lo + rng.randrange(0, 40) * g + rng.choice([0, 1, g // 2])
                limit = rng.choice([1, 2, 16])
                assert pt.first_unmapped(lo, hi) == table.first_unmapped(pt.root, pt._block, g, lo, hi)
                assert pt.find_mapped(lo, hi, limit) == table.find_mapped(pt.root, pt._block, g, lo, hi, limit)
