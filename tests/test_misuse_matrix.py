"""The misuse matrix: what each driver's own page-table code does with two misuses, per kernel version.

Rows: mapping over a mapped range, unmapping a range with a hole. Columns: VT-d, AMD v1, ARM LPAE under
Linux 6.17 (and 7.3, see ``CITE_73``). Each cell asserts the event text, the errno or silence, and the
state left, against the kernel source it cites. ``follow_kernel=False`` (the default) refuses where the
kernel would corrupt state and says so in the event; ``follow_kernel=True`` does what the kernel does.
"""

from __future__ import annotations

import pytest

from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
from iovalab.kernel.device import Device
from iovalab.kernel.iommu import IOMMU_READ, IOMMU_WRITE, IommuDomain
from iovalab.kernel.units import EADDRINUSE, EEXIST, EINVAL, DmaError

RW = IOMMU_READ | IOMMU_WRITE
X, OLD, NEW = 0x10000, 0x100000, 0x200000
PRESET = {"intel": "intel-vtd", "amd": "amd-v1", "arm": "smmuv3-4k"}

#: (driver, version) -> citation of the code each cell follows
CITE = {
    ("intel", "6.17"): "drivers/iommu/intel/iommu.c: __domain_mapping(), intel_iommu_unmap() (6.17)",
    ("amd", "6.17"): "drivers/iommu/amd/io_pgtable.c: iommu_v1_map_pages(), iommu_v1_unmap_pages() (6.17)",
    ("arm", "6.17"): "drivers/iommu/io-pgtable-arm.c: arm_lpae_init_pte(), __arm_lpae_unmap() (6.17)",
    ("arm", "7.3"): "drivers/iommu/io-pgtable-arm.c: arm_lpae_init_pte(), __arm_lpae_unmap() (7.3.4)",
}
#: 7.3 VT-d and AMD go through drivers/iommu/generic_pt/iommu_pt.h (amd/io_pgtable.c is gone):
#: map_range() -> __map_range_leaf() -> clear_contig() returns -EADDRINUSE (no WARN) after writing the
#: leaves before the conflict, and iommu_map_nosync() unmaps those ``mapped`` bytes again;
#: unmap_range() -> __unmap_range() stops at an empty entry (-EINVAL internally) and returns the
#: bytes cleared before it (no WARN in the page table).
CITE_73 = "drivers/iommu/generic_pt/iommu_pt.h: map_range(), __map_range_leaf(), __unmap_range() (7.3.4)"
#: the 7.3 format each generic-page-table cell runs through
CITE_73_FMT = {
    "intel": "drivers/iommu/intel/iommu.c: intel_iommu_domain_alloc_second_stage() -> pt_iommu_vtdss_init() (7.3.4)",
    "amd": "drivers/iommu/amd/iommu.c: amd_iommu_domain_alloc_paging_v1() -> pt_iommu_amdv1_init() (7.3.4)",
}


def _events(dom, *kinds):
    return [e for e in dom.log.events if e.kind in kinds]


def _domain(driver: str, version: str, follow: bool) -> IommuDomain:
    if version == "7.3" and driver != "arm":
        d = DmaDomain(PRESET[driver], follow_kernel=follow, kernel="7.3")  # type: ignore[call-arg]
        return d.iommu
    return DmaDomain(PRESET[driver], follow_kernel=follow, kernel=version).iommu


def _columns():
    for drv in ("intel", "amd", "arm"):
        for ver in ("6.17", "7.3"):
            for follow in (False, True):
                yield pytest.param(drv, ver, follow, id=f"{drv}-{ver}-{'follow' if follow else 'refuse'}")


# ------------------------------------------------------------------------------- map over a mapped range
@pytest.mark.parametrize("driver,version,follow", list(_columns()))
def test_map_over_mapped_range(driver, version, follow):
    d = _domain(driver, version, follow)
    assert d.iommu_map(X + 0x1000, OLD, 0x1000, RW) == 0
    assert d.device_access(X + 0x1000) == OLD                  # the device has the old translation cached
    before = d.pgtable.snapshot()
    mark = len(d.log.events)
    ret = d.iommu_map(X, NEW, 0x3000, RW)
    new_events = d.log.events[mark:]
    warns = [e for e in new_events if e.kind == "warn"]
    errors = [e for e in new_events if e.kind == "error" and e.layer == "pgtable"]
    ranges = [(a, p, s) for a, p, s, _ in d.pgtable.mapped_ranges()]
    if version == "7.3" and driver != "arm":                   # CITE_73: -EADDRINUSE, silent, unwound
        assert d.pgtable.pt_iommu, CITE_73_FMT[driver]
        assert ret == -EADDRINUSE and not warns and not errors and d.pgtable.snapshot() == before
        # iommu_map_nosync(): trace_map(iova, paddr, mapped) of what was written before the conflict,
        # then iommu_unmap(iova, mapped): the old page stays, whatever follow_kernel says. VT-d
        # (4K|2M|1G) writes the 4K leaf at X first; AMD v1 (fmt/amdv1.h amdv1pt_possible_sizes: every
        # power of two) gets pt_compute_best_pgsize(X | NEW aligned to 64K, len 0x3000) = 8K, one
        # contiguous entry over X and X + 0x1000, so clear_contig() meets the old page first: 0 bytes.
        mapped = {"intel": 0x1000, "amd": 0}[driver]
        lines = [(e.kind, e.args["iova"], e.args["size"]) for e in new_events
                 if e.kind in ("iommu_map_calls", "iommu_unmap")]
        assert lines == [("iommu_map_calls", X, mapped), ("iommu_unmap", X, mapped)]
        call = next(e for e in new_events if e.kind == "iommu_map_calls")
        assert call.result == -EADDRINUSE and call.args["requested"] == 0x3000
        assert call.args["chunks"] == {"intel": [(X, NEW, 0x1000, 1)], "amd": []}[driver]
        assert ranges == [(X + 0x1000, OLD, 0x1000)] and d.iommu_iova_to_phys(X + 0x1000) == OLD
        return
    if driver == "arm" or not follow:
        # ARM: arm_lpae_init_pte() checks every entry first: WARN_ON + -EEXIST, nothing written.
        # VT-d/AMD refused: the event quotes what the kernel would do instead.
        assert ret == -EEXIST and d.pgtable.snapshot() == before
        if driver == "arm":
            assert warns[0].func == "arm_lpae_init_pte" and "-EEXIST" in warns[0].args["rule"]
        elif driver == "intel":
            assert warns[0].func == "__domain_mapping" and warns[0].result == -EEXIST
            assert "ERROR: DMA PTE for vPFN 0x11 already set (to 100003 not 201003)" in warns[0].args["rule"]
            assert "simulator refuses" in warns[0].args["rule"] and "follow_kernel=True" in warns[0].args["rule"]
        else:
            assert not warns[:1] or warns[0].func != "iommu_v1_map_pages"   # the kernel does not WARN
            assert errors[0].func == "iommu_v1_map_pages" and "replaces it silently" in errors[0].args["rule"]
            assert "simulator refuses" in errors[0].args["rule"]
        return
    assert ret == 0                                            # the caller believes it mapped NEW
    if driver == "intel":
        # __domain_mapping: pr_crit + WARN_ON(1); the old PTE stays, the others are written
        assert [w.func for w in warns] == ["__domain_mapping"] and warns[0].result == 0
        line = "pr_crit: ERROR: DMA PTE for vPFN 0x11 already set (to 100003 not 201003)"
        assert warns[0].args["rule"].startswith(line)
        assert ranges == [(X, NEW, 0x1000), (X + 0x1000, OLD, 0x1000), (X + 0x2000, NEW + 0x2000, 0x1000)]
        assert d.iommu_iova_to_phys(X + 0x1000) == OLD         # a stale translation in the page table
    else:
        # iommu_v1_map_pages: free_clear_pte + overwrite, silently; no flush for a replaced leaf
        assert not warns and not errors
        assert ranges == [(X, NEW, 0x3000)]
        assert d.device_access(X + 0x1000) == OLD              # the IOTLB still serves the old page


# ------------------------------------------------------------------------------- unmap with a hole
@pytest.mark.parametrize("driver,version,follow", list(_columns()))
def test_unmap_range_with_hole(driver, version, follow):
    d = _domain(driver, version, follow)
    assert d.iommu_map(X, OLD, 0x1000, RW) == 0
    assert d.iommu_map(X + 0x2000, NEW, 0x1000, RW) == 0
    mark = len(d.log.events)
    got = d.iommu_unmap(X, 0x3000)
    warns = [e for e in d.log.events[mark:] if e.kind == "warn"]
    left = [(a, p, s) for a, p, s, _ in d.pgtable.mapped_ranges()]
    if driver == "intel" and version == "6.17":
        # intel_iommu_unmap: never stops at a hole, no WARN in the page table, full size returned
        assert got == 0x3000 and not warns and left == []
    elif driver == "arm":
        # __arm_lpae_unmap: WARN_ON(!pte) at the hole, stop; __iommu_unmap stops on 0
        assert got == 0x1000 and warns and all(w.func == "__arm_lpae_unmap" for w in warns)
        assert left == [(X + 0x2000, NEW, 0x1000)]
    else:
        # AMD 6.17 iommu_v1_unmap_pages / 7.3 generic_pt __unmap_range: stop silently at the hole
        assert got == 0x1000 and not warns and left == [(X + 0x2000, NEW, 0x1000)]


@pytest.mark.parametrize("driver", ["intel", "amd", "arm"])
@pytest.mark.parametrize("follow", [False, True], ids=["refuse", "follow"])
def test_dma_layer_unmap_with_hole(driver, follow):
    """dma-iommu.c __iommu_dma_iova_unlink(): ``WARN_ON(unmapped != size)`` then the IOVA is freed anyway
    (6.17 and 7.3.4): what follows the hole stays mapped while its IOVA is handed out again."""
    d = DmaDomain(PRESET[driver], follow_kernel=follow, kernel="6.17")
    dev = Device("nvme0")
    st = DmaIovaState()
    assert d.dma_iova_try_alloc(dev, st, OLD, 0x3000)
    d.dma_iova_link(dev, st, OLD, 0, 0x1000)
    d.dma_iova_link(dev, st, NEW, 0x2000, 0x1000)
    base = st.addr
    before = d.snapshot()
    if not follow:
        with pytest.raises(DmaError) as ei:
            d.dma_iova_destroy(dev, st, 0x3000)
        assert ei.value.errno == -EINVAL and d.snapshot() == before
        w = _events(d, "warn")[-1]
        assert w.func == "dma_iova_destroy" and "simulator refuses" in w.args["rule"]
        assert {"intel": "never stops at a hole", "amd": "iommu_v1_unmap_pages stops",
                "arm": "__arm_lpae_unmap WARN_ON(!pte)"}[driver] in w.args["rule"]
        return
    d.dma_iova_destroy(dev, st, 0x3000)
    unlink_warns = [e for e in _events(d, "warn") if e.func == "__iommu_dma_iova_unlink"]
    left = [(a, p, s) for a, p, s, _ in d.iommu.pgtable.mapped_ranges()]
    if driver == "intel":
        assert not unlink_warns and left == []                 # silence: everything cleared
        return
    assert [w.args["rule"] for w in unlink_warns] == ["WARN_ON(unmapped 0x1000 != size 0x3000)"]
    assert left == [(base + 0x2000, NEW, 0x1000)]              # the tail stays mapped ...
    st2 = DmaIovaState()
    assert d.dma_iova_try_alloc(dev, st2, OLD, 0x3000) and st2.addr == base   # ... its IOVA handed out again


def test_follow_kernel_bad_input_leaves_nothing_built():
    with pytest.raises(ValueError, match=r"follow_kernel 'yes' must be a bool"):
        DmaDomain("intel-vtd", follow_kernel="yes")  # type: ignore[arg-type]
    from iovalab.drivers.common import make_domain
    with pytest.raises(ValueError, match=r"'follow_kernel': 1 must be true or false"):
        make_domain({"preset": "intel-vtd", "follow_kernel": 1}, strict=True, keep_events=True)
    assert make_domain({"preset": "amd-v1", "follow_kernel": True}, strict=True,
                       keep_events=True).iommu.pgtable.follow_kernel


# ------------------------------------------------------------------------------- HMM with huge entries
def test_ib_init_umem_odp_arithmetic():
    """drivers/infiniband/core/umem_odp.c: ib_init_umem_odp() (7.3.4): nr_entries in system pages."""
    from iovalab.drivers.hmm import EOVERFLOW, ib_init_umem_odp
    assert ib_init_umem_odp(0x7F00_0012_3000, 0x40_0000, 21) == (0x7F00_0000_0000, 0x7F00_0060_0000, 0x600, 1 << 21)
    assert ib_init_umem_odp(0x1000, 0x1000, 12) == (0x1000, 0x2000, 1, 0x1000)
    with pytest.raises(DmaError) as ei:
        ib_init_umem_odp((1 << 64) - 0x1000, 0x2000, 12)
    assert ei.value.errno == -EOVERFLOW
    with pytest.raises(ValueError, match="page_shift 11"):
        ib_init_umem_odp(0, 0x1000, 11)


def test_hmm_huge_entries_stay_inside_the_reservation():
    """hmm_dma_map_alloc(dev, map, nr_entries = span >> PAGE_SHIFT, dma_entry_size = 2M) reserves the
    umem's byte span (mm/hmm.c, 7.3.4); every 2M entry links inside it, no contract event."""
    from iovalab.drivers import hmm
    spec = {"scenario": "hmm", "device": "mlx5", "iommu": "intel-vtd",
            "parameters": {"npages": 4, "entry_size": 0x200000, "phys": {"stride": 0x400000}}}
    r = hmm.run(spec, "iova")
    alloc = [e for e in r.log.events if e.func == "dma_iova_try_alloc" and e.kind == "dma_api_calls"]
    assert alloc and alloc[0].args["size"] == 4 * 0x200000                 # 2048 pages * PAGE_SIZE
    begin = [e for e in r.log.events if e.func == "hmm_dma_map_alloc"][0]
    assert begin.args["nr_entries"] == 2048 and begin.args["dma_entry_size"] == 0x200000
    assert not [e for e in r.log.events if e.kind in ("contract", "warn")]
    assert r.device_view["mapped"] == 4 or r.extra["faults"] == 4


def test_pgsize_split_answer_has_the_second_map_pages_call_at_an_arm_table_end():
    """io-pgtable-arm.c __arm_lpae_map stops at the end of the 16K granule's 32M leaf table
    (arm_lpae_max_entries); iommu.c iommu_map_nosync calls iommu_pgsize again (6.17, 7.3.4)."""
    from iovalab.lab.exercises import make_problem
    p = make_problem("pgsize_split", dict(preset="smmuv3-16k", bitmap=0x2004000, iova=0x2000000 - 0xC000,
                                          paddr=0x4000, size=0x14000))
    assert p.value == [(5, 0x4000), (2, 0x4000)]            # 5 handed over, 3 mapped, then the other 2
    assert any("arm_lpae_max_entries" in line for line in p.check(p.answer).derivation.splitlines())
    # VT-d maps the whole count in one call: one step
    q = make_problem("pgsize_split", dict(preset="intel-vtd", bitmap=0x40201000, iova=0x1FF4000,
                                          paddr=0x4000, size=0x14000))
    assert q.value == [(20, 0x1000)]


def test_refused_hole_names_the_versions_code():
    """The refusal says what the kernel of the domain's version would do: 6.17 VT-d clears past the hole
    (intel_iommu_unmap), 7.3 stops at it (generic_pt/iommu_pt.h: __unmap_range(), 7.3.4)."""
    from iovalab import Device, DmaDomain, DmaError, DmaIovaState
    texts = {}
    for kernel in ("6.17", "7.3"):
        dom, dev, st = DmaDomain("intel-vtd", kernel=kernel), Device(), DmaIovaState()
        dom.dma_iova_try_alloc(dev, st, 0x100000, 0x3000)
        dom.dma_iova_link(dev, st, 0x100000, 0, 0x1000)
        dom.dma_iova_link(dev, st, 0x300000, 0x2000, 0x1000)
        with pytest.raises(DmaError) as e:
            dom.dma_iova_destroy(dev, st, 0x3000)
        texts[kernel] = str(e.value)
    assert "never stops at a hole" in texts["6.17"]
    assert "stops silently at the hole" in texts["7.3"]
