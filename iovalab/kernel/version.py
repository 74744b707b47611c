"""The kernel version a simulated domain models, and the one list of what differs between them.

A :class:`~iovalab.kernel.dma_iommu.DmaDomain` is built for one version (``kernel="6.17"`` or
``kernel="7.3"``, default :data:`DEFAULT_KERNEL`); every layer that behaves differently asks
:func:`behaves` with a name from :data:`DIFFERENCES`, never compares version strings itself. Each
difference names the Linux 7.3.4 file and function that changed it (the 6.17 behaviour is the one the
rest of the model documents).

``CONFIG_HZ`` is not a version but a build option both versions share, and this module is its one
home (:data:`CONFIG_HZ_VALUES`, :data:`DEFAULT_HZ`, :func:`check_hz`, :func:`msecs_to_jiffies`,
:func:`fq_timer_expiry`, :func:`timer_wheel_fires`). The flush-queue timer is a ``timer_list`` armed once, by the first
``queue_iova()`` that finds ``fq_timer_on`` clear, with ``mod_timer(&cookie->fq_timer, jiffies +
msecs_to_jiffies(cookie->options.fq_timeout))``; its callback ``fq_flush_timeout()`` clears
``fq_timer_on``, flushes and frees every queue (drivers/iommu/dma-iommu.c, 6.17 and 7.3.4 alike). The
timer wheel runs a timer one tick after ``jiffies`` reaches its expiry (``calc_index()``,
kernel/time/timer.c), so the flush always falls on a tick.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KERNEL_VERSIONS", "DEFAULT_KERNEL", "CONFIG_HZ_VALUES", "DEFAULT_HZ", "Difference", "DIFFERENCES",
           "check_kernel", "check_hz", "behaves", "msecs_to_jiffies", "timer_wheel_fires", "fq_timer_expiry"]

#: the versions a domain can model
KERNEL_VERSIONS = ("6.17", "7.3")
#: today's stable (the captures in data/real/v734-* are Linux 7.3.4)
DEFAULT_KERNEL = "7.3"
#: ``CONFIG_HZ`` choices (kernel/Kconfig.hz: ``HZ_100``, ``HZ_250``, ``HZ_300``, ``HZ_1000``)
CONFIG_HZ_VALUES = (100, 250, 300, 1000)
#: ``CONFIG_HZ`` of the real 7.3.4 captures (``CONFIG_HZ=250`` in their configs), and Kconfig.hz's default
DEFAULT_HZ = 250


@dataclass(frozen=True)
class Difference:
    """One behaviour that differs: what 6.17 does, what 7.3.4 does, and where 7.3.4 does it."""

    name: str
    since: str          # first modelled version with the new behaviour
    old: str
    new: str
    source: str         # 7.3.4 file: function(s)


#: Every modelled difference between 6.17 and 7.3.4, by name (the names :func:`behaves` accepts).
DIFFERENCES: dict[str, Difference] = {d.name: d for d in (
    Difference(
        "destroy_unlink_then_free", "7.3",
        "dma_iova_destroy unmaps [0, mapped_len) and frees iova_align(mapped_len + pad): queued in a "
        "flush-queue domain, synced and freed at once in a strict one",
        "dma_iova_destroy = dma_iova_unlink (its own iommu_iotlb_sync, even in a flush-queue domain) + "
        "dma_iova_free of the whole reserved iova_align(dma_iova_size + pad), never queued",
        "drivers/iommu/dma-iommu.c: dma_iova_destroy(), dma_iova_unlink(), dma_iova_free()"),
    Difference(
        "dma_map_phys", "7.3",
        "dma_map_page/dma_unmap_page (trace events dma:dma_map_page, dma:dma_unmap_page)",
        "dma_map_page_attrs calls dma_map_phys, dma_unmap_page_attrs calls dma_unmap_phys (trace events "
        "dma:dma_map_phys, dma:dma_unmap_phys); DMA_ATTR_MMIO: no swiotlb bounce, no CPU cache "
        "maintenance, IOMMU_MMIO in the PTE (dma_map_resource is dma_map_phys + DMA_ATTR_MMIO)",
        "kernel/dma/mapping.c: dma_map_phys(), dma_unmap_phys(); drivers/iommu/dma-iommu.c: "
        "iommu_dma_map_phys(), iommu_dma_unmap_phys(), dma_info_to_prot()"),
    Difference(
        "vtd_generic_pt", "7.3",
        "VT-d tables in drivers/iommu/intel/iommu.c: iommu_pgsize loop of intel_iommu_map_pages; an "
        "already-set PTE is kept with a WARN and success; unmap clears past holes",
        "VT-d second stage is a generic page table (CONFIG_IOMMU_PT_VTDSS): one map_range per "
        "iommu_map, -EADDRINUSE over a present entry, trace_map even on failure, unmap stops at the "
        "first hole, one gather range per unmap, emptied tables freed through the gather",
        "drivers/iommu/iommu.c: iommu_map_nosync(), __iommu_unmap(); drivers/iommu/generic_pt/"
        "iommu_pt.h: map_range(), __map_range_leaf(), clear_contig(), unmap_range(), __unmap_range(); "
        "drivers/iommu/intel/iommu.c: intel_iommu_domain_alloc_second_stage()"),
    Difference(
        "amdv1_generic_pt", "7.3",
        "AMD v1 tables in drivers/iommu/amd/io_pgtable.c: iommu_pgsize loop of iommu_v1_map_pages; a "
        "present PTE is replaced silently; unmap inside a large page clears it whole; tables never freed",
        "AMD v1 is a generic page table (CONFIG_IOMMU_PT_AMDV1, amd/io_pgtable.c removed): one map_range "
        "per iommu_map, -EADDRINUSE over a present entry (no WARN), trace_map even on failure, unmap "
        "returns 0 inside a contiguous entry and stops at the first hole, one gather range per unmap, "
        "covered tables freed through the gather",
        "drivers/iommu/amd/iommu.c: amd_iommu_domain_alloc_paging_v1(); drivers/iommu/generic_pt/fmt/"
        "amdv1.h: amdv1pt_possible_sizes(), amdv1pt_install_leaf_entry(); drivers/iommu/generic_pt/"
        "iommu_pt.h: map_range(), clear_contig(), __unmap_range()"),
    Difference(
        "flush_tag_no_pages", "7.3",
        "cache_tag_flush_range prints 'pages 0x..'; a domain-wide flush is cache_tag_flush_all",
        "cache_tag_flush_range(_np) print no pages field; cache_tag_flush_all() is "
        "cache_tag_flush_range(domain, 0, ULONG_MAX, 0): a range line over [0x0-0xffffffffffffffff]",
        "drivers/iommu/intel/trace.h: cache_tag_flush; drivers/iommu/intel/cache.c: cache_tag_flush_all()"),
    Difference(
        "blk_iova_gap_mask", "7.3",
        "blk_can_dma_map_iova: the IOVA path when (queue_virt_boundary + 1) & dma_get_merge_boundary is 0; "
        "NVMe's virt boundary is NVME_CTRL_PAGE_SIZE - 1 on every queue, so a request never has gaps",
        "blk_can_dma_map_iova: the IOVA path when req_phys_gap_mask(req) & dma_get_merge_boundary is 0 "
        "(the request's own bio_vec seams); NVMe on an SGL-capable I/O queue has no virt boundary "
        "(nvme_pci_get_virt_boundary: 0), and a request with a seam inside NVME_CTRL_PAGE_SIZE - 1 is "
        "SGL_FORCED",
        "block/blk-mq-dma.c: blk_can_dma_map_iova(); drivers/nvme/host/pci.c: "
        "nvme_pci_get_virt_boundary(), nvme_pci_use_sgls()"),
    Difference(
        "blk_iova_link_unwind", "7.3",
        "a dma_iova_link error breaks the loop; dma_iova_sync(0, mapped) then returns 0 and the request "
        "is mapped 'successfully' over the whole reserved range with its tail not linked",
        "a dma_iova_link error goes to out_unlink: dma_iova_destroy(mapped) (unlink [0, mapped) if "
        "mapped, free the IOVA) and iter->status = errno_to_blk_status(error), false",
        "block/blk-mq-dma.c: blk_rq_dma_map_iova()"),
    Difference(
        "blk_nvme_map_phys", "7.3",
        "blk_dma_map_direct maps a segment with dma_map_page; nvme_free_prps/nvme_free_sgls unmap each "
        "with dma_unmap_page",
        "blk_dma_map_direct maps with dma_map_phys, nvme_free_prps/nvme_free_sgls unmap with "
        "dma_unmap_phys; unchanged: a single segment is dma_map_bvec (dma_map_page_attrs -> dma_map_phys) "
        "and dma_unmap_page, a coalesced request one dma_iova_destroy(iod->total_len) (blk_rq_dma_unmap)",
        "block/blk-mq-dma.c: blk_dma_map_direct(); include/linux/blk-mq-dma.h: blk_rq_dma_unmap(); "
        "drivers/nvme/host/pci.c: nvme_free_prps(), nvme_free_sgls(), nvme_unmap_data(), "
        "nvme_pci_setup_data_simple()"),
    Difference(
        "p2pdma_map_types", "7.3",
        "no peer-to-peer path in the model",
        "pci_p2pdma_state(): PCI_P2PDMA_MAP_BUS_ADDR = the bus address, no IOMMU mapping, no unmap; "
        "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE = an ordinary IOVA mapping with DMA_ATTR_MMIO (IOMMU_MMIO)",
        "include/linux/pci-p2pdma.h: pci_p2pdma_state(), pci_p2pdma_bus_addr_map(); "
        "block/blk-mq-dma.c: blk_dma_map_iter_start(); mm/hmm.c: hmm_dma_map_pfn(); "
        "drivers/iommu/dma-iommu.c: iommu_dma_map_sg()"),
)}


def check_kernel(kernel) -> str:
    """``kernel`` if it is a modelled version, else ValueError naming it and the rule."""
    if not isinstance(kernel, str) or kernel not in KERNEL_VERSIONS:
        raise ValueError(f"kernel {kernel!r} is not one of {KERNEL_VERSIONS}")
    return kernel


def check_hz(hz) -> int:
    """``hz`` if it is a ``CONFIG_HZ`` choice (:data:`CONFIG_HZ_VALUES`), else ValueError naming it and
    the rule (0, negatives, bools, floats, strings and values Kconfig does not offer are refused)."""
    if isinstance(hz, bool) or not isinstance(hz, int) or hz not in CONFIG_HZ_VALUES:
        raise ValueError(f"hz {hz!r} is not a CONFIG_HZ choice (kernel/Kconfig.hz: "
                         f"{', '.join(map(str, CONFIG_HZ_VALUES))})")
    return hz


def behaves(kernel: str, name: str) -> bool:
    """True when ``kernel`` has the behaviour :data:`DIFFERENCES` ``[name]`` describes as new."""
    try:
        return _BEHAVES[kernel, name]       # hot paths ask the same few questions again and again
    except (KeyError, TypeError):
        pass
    d = DIFFERENCES[name]
    new = KERNEL_VERSIONS.index(kernel) >= KERNEL_VERSIONS.index(d.since)
    _BEHAVES[kernel, name] = new
    return new


#: ``(kernel, name) -> behaves(kernel, name)``, filled as asked (only answers, never errors)
_BEHAVES: dict[tuple[str, str], bool] = {}


def msecs_to_jiffies(m: int, hz: int) -> int:
    """``msecs_to_jiffies(m)`` (include/linux/jiffies.h, ``_msecs_to_jiffies``): rounds **up** to whole
    ticks. ``HZ <= MSEC_PER_SEC`` and 1000 a multiple of HZ: ``DIV_ROUND_UP(m, MSEC_PER_SEC / HZ)``;
    HZ=300 (not a divisor of 1000): ``(m * HZ + 999) / 1000`` (the ``MSEC_TO_HZ_MUL32`` path gives the
    same round-up for these small values). 10 ms at HZ=250 is 3 jiffies, 100 ms is 25. A negative
    ``m`` (the kernel returns ``MAX_JIFFY_OFFSET``) is refused."""
    check_hz(hz)
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"msecs_to_jiffies: ms {m!r} must be an int >= 0 (negative values are MAX_JIFFY_OFFSET)")
    if 1000 % hz == 0:
        return -(-m // (1000 // hz))
    return -(-(m * hz) // 1000)


def fq_timer_expiry(now_ms: float, timeout_ms: int, hz: int, phase_ms: float = 0.0) -> float:
    """The expiry of ``mod_timer(&fq_timer, jiffies + msecs_to_jiffies(timeout_ms))`` armed at
    ``now_ms``, in ms: the tick at which ``jiffies`` reaches ``jiffies + msecs_to_jiffies(timeout)``,
    ``jiffies`` at ``now_ms`` being ``floor((now_ms - phase_ms) * HZ / 1000)``. Armed on a tick that is
    a whole ``msecs_to_jiffies`` ticks (10 ms at HZ=250: 12 ms); armed between ticks, up to one tick
    less. ``phase_ms`` = when a tick happened on the same clock (no trace records it; 0 by default).
    The timer runs one tick later (:func:`timer_wheel_fires`)."""
    check_hz(hz)
    j = int((now_ms - phase_ms) * hz // 1000)
    return (j + msecs_to_jiffies(timeout_ms, hz)) * 1000 / hz + phase_ms


def timer_wheel_fires(now_ms: float, timeout_ms: int, hz: int, phase_ms: float = 0.0) -> float:
    """When the kernel really runs a timer ``mod_timer(&t, jiffies + msecs_to_jiffies(timeout_ms))``
    armed at ``now_ms``, in ms: one tick after :func:`fq_timer_expiry`, because ``calc_index()``
    (kernel/time/timer.c, 6.17 and 7.3) files it in the bucket ``(expires >> LVL_SHIFT(lvl)) + 1`` so
    that it never fires early (a flush-queue timeout of a few ticks is a level-0 timer, one tick per
    bucket). At HZ=250, ``queue_iova()``'s 10 ms timer (3 jiffies) runs 12 to 16 ms after it is armed.
    The simulator's flush queue (``DmaDomain.advance_time``) and the replay of a lazy capture without
    flush lines both use this. ``phase_ms``: when a tick happened on the clock."""
    return fq_timer_expiry(now_ms, timeout_ms, hz, phase_ms) + 1000 / hz
