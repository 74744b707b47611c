"""The DMA-API-to-IOMMU glue: ``drivers/iommu/dma-iommu.c`` (Linux 6.16/6.17) and the two-step
IOVA API of ``include/linux/dma-mapping.h`` / ``kernel/dma/mapping.c``.

A :class:`DmaDomain` is an ``IOMMU_DOMAIN_DMA`` (strict) or ``IOMMU_DOMAIN_DMA_FQ`` (lazy) domain
together with its ``struct iommu_dma_cookie``: the IOVA domain (:mod:`iovalab.kernel.iova`), the flush
queues, and the :class:`~iovalab.kernel.iommu.IommuDomain` whose page table it fills. Devices
(:class:`~iovalab.kernel.device.Device`) attach to it.

The two-step API's calls (``dma_iova_*``) live in :class:`iovalab.kernel.dma_iova.IovaApi`; a
``DmaDomain`` holds one (``iova_api``) and forwards them.
Classic paths: ``dma_map_page``/``dma_unmap_page`` (``iommu_dma_map_page``, ``__iommu_dma_map``,
``__iommu_dma_unmap``), ``dma_map_sg``/``dma_unmap_sg`` (``iommu_dma_map_sg``: one IOVA for the
whole list, boundary padding, ``__finalise_sg`` merging), ``dma_alloc_coherent``.

Error conventions (errors are data): where the kernel returns an errno, the
simulator raises :class:`~iovalab.kernel.units.DmaError` with that errno *before* changing any state
(a ``warn`` event is logged first where the kernel WARNs). ``dma_map_page`` returns
``DMA_MAPPING_ERROR`` and ``dma_iova_try_alloc`` returns False exactly where the kernel does.
Misuse the kernel does *not* catch (linking past the reserved size, syncing a range never linked)
is recorded as a ``contract`` event and otherwise behaves as the kernel does; with
``DmaDomain(check_contract=True)`` such calls are refused instead (like a dma-debug build).
Unmapping a range that is not fully mapped (a hole): the kernel differs by driver (6.17) - VT-d
``intel_iommu_unmap`` never stops at a hole (the whole range is cleared, no WARN fires), ARM
``__arm_lpae_unmap`` WARNs and stops, AMD ``iommu_v1_unmap_pages`` stops silently; then
``__iommu_dma_unmap``/``__iommu_dma_iova_unlink`` ``WARN_ON(unmapped != size)``, and the IOVA is
freed anyway, so what lies after the hole stays mapped while its IOVA is handed out again. By
default the call is refused with ``-EINVAL`` after a WARN event saying what the kernel would do, so
the simulator state stays consistent; ``DmaDomain(follow_kernel=True)`` follows the kernel instead
(also for mapping over a mapped range, see :mod:`iovalab.kernel.pgtable.ops`).

Kernel version: ``DmaDomain(kernel="6.17"|"7.3")`` (default 7.3); what differs is listed, with the 7.3.4
functions that changed it, in :data:`iovalab.kernel.version.DIFFERENCES`. ``hz`` is ``CONFIG_HZ``
(default 250): the flush-queue timer runs on the timer wheel, one tick after its expiry
(:func:`iovalab.kernel.version.timer_wheel_fires`).
"""

from __future__ import annotations

from typing import Any

from iovalab.kernel.device import (
    DMA_ATTR_PRIVILEGED, DMA_ATTR_SKIP_CPU_SYNC, DMA_BIDIRECTIONAL, DMA_DIR_NAMES, DMA_FROM_DEVICE, DMA_NONE,
    DMA_TO_DEVICE, Device, valid_dma_direction,
)
from iovalab.kernel.dma_debug import DmaDebug, Finding
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import (
    IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE, IommuDomain, IotlbGather,
)
from iovalab.kernel.dma_iova import (
    DMA_ATTR_MMIO, DMA_IOVA_USE_SWIOTLB, DmaIovaState, IovaApi, dma_info_to_prot, dma_iova_size, dma_use_iova,
)
from iovalab.kernel.dma_iommu_fq import (
    IOVA_DEFAULT_FQ_SIZE, IOVA_DEFAULT_FQ_TIMEOUT, IOVA_SINGLE_FQ_SIZE, IOVA_SINGLE_FQ_TIMEOUT, FlushQueueMixin,
)
from iovalab.kernel.dma_iommu_sg import ScatterEntry, ScatterlistMixin
from iovalab.kernel.iova import IovaDomain
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.version import (
    CONFIG_HZ_VALUES, DEFAULT_HZ, DEFAULT_KERNEL, behaves, check_hz, check_kernel, msecs_to_jiffies,
)
from iovalab.kernel.units import (
    DMA_BIT_MASK, DMA_MAPPING_ERROR, EINVAL, ENOMEM, EOPNOTSUPP, PAGE_SIZE, SZ_4K, SZ_16K, SZ_64K, U64_MASK,
    DmaError, _is_int, bits_per, check_cpu, check_phys, check_size, iova_align, iova_offset,
)

__all__ = [
    "DMA_BIDIRECTIONAL", "DMA_TO_DEVICE", "DMA_FROM_DEVICE", "DMA_NONE", "DIR_NAMES",
    "DMA_ATTR_SKIP_CPU_SYNC", "DMA_ATTR_PRIVILEGED", "DMA_ATTR_MMIO", "DMA_IOVA_USE_SWIOTLB",
    "IOMMU_READ", "IOMMU_WRITE", "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
    "dma_info_to_prot", "DmaIovaState", "ScatterEntry", "DmaDomain", "dma_use_iova",
    "dma_iova_size", "dma_mapping_error", "IOVA_DEFAULT_FQ_SIZE",
    "IOVA_DEFAULT_FQ_TIMEOUT", "IOVA_SINGLE_FQ_SIZE", "IOVA_SINGLE_FQ_TIMEOUT",
    "CONFIG_HZ_VALUES", "msecs_to_jiffies",
]

#: enum dma_data_direction names (include/linux/dma-direction.h); the values come from device.py
DIR_NAMES = DMA_DIR_NAMES
# flush queue parameters (IOVA_*_FQ_*): iovalab.kernel.dma_iommu_fq (re-exported here)
# CONFIG_HZ_VALUES and msecs_to_jiffies: iovalab.kernel.version (re-exported here)

_L = "dma"


def dma_mapping_error(addr: int) -> bool:
    """``dma_mapping_error(dev, addr)`` (dma-mapping.h): ``addr == DMA_MAPPING_ERROR``."""
    return addr == DMA_MAPPING_ERROR


#: ``DMA_BIT_MASK(32)``: the limit of ``iommu_dma_alloc_iova``'s first try for PCI devices
_DMA_32 = DMA_BIT_MASK(32)


class DmaDomain(ScatterlistMixin, FlushQueueMixin):
    """An IOMMU DMA domain: ``struct iommu_domain`` + ``struct iommu_dma_cookie``.

    :param iommu: an :class:`IommuDomain` or a preset name (``"intel-vtd"``, ``"smmuv3-64k"``...).
    :param strict: True for ``IOMMU_DOMAIN_DMA`` (invalidate on every unmap), False for
        ``IOMMU_DOMAIN_DMA_FQ`` (lazy: frees wait in flush queues until a ``flush_iotlb_all``).
    :param ncpus: CPUs (per-CPU rcaches and flush queues).
    :param reserve: ``[(start, end_inclusive), ...]`` byte ranges reserved at init
        (``iova_reserve_iommu_regions``); ``reserve_msi=True`` adds the x86 MSI window
        0xfee00000-0xfeefffff.
    :param page_size: the simulated kernel's ``PAGE_SIZE`` (4K, 16K or 64K; default 4K, or the
        granule when larger, since ``init_iova_domain`` BUG()s on a granule above ``PAGE_SIZE``);
        given to the IOVA domain (``iova_rcache_range``) and the swiotlb pool.
    :param single_queue: ``IOMMU_DMA_OPTS_SINGLE_QUEUE`` (``shadow_on_flush``): one queue of 32768
        entries, 1000 ms.
    :param dma_debug: the simulated kernel has ``CONFIG_DMA_API_DEBUG``: a
        :class:`~iovalab.kernel.dma_debug.DmaDebug` (``self.debug``) checks every classic map/unmap and
        reports ``dma_debug`` events without changing what the call does. ``check_contract=True``
        turns it on and raises each finding as :class:`DmaError` (unmap findings before anything
        changes; map findings after the mapping is made and recorded, as dma-debug runs after the
        map; the error's ``result`` is the call's return value so the caller can undo it).
    :param dma_debug_version: ``"6.17"`` or ``"7.3"``, whose ``kernel/dma/debug.c`` to follow
        (default: ``kernel``).
    :param follow_kernel: follow the kernel into the corrupt state it leaves on misuse (an unmap
        over a hole, a map over a mapped range: stale translations, an IOVA handed out twice, a
        neighbour unmapped) instead of refusing (the default, whose events say what the kernel does).
    :param hz: ``CONFIG_HZ`` (100, 250, 300 or 1000; default 250, :data:`~iovalab.kernel.version.DEFAULT_HZ`):
        the flush-queue timer is armed in jiffies, ``msecs_to_jiffies(fq_timeout)``, and fires on a
        tick (see :meth:`fq_timer_ms`).
    :param kernel: the modelled version, ``"6.17"`` or ``"7.3"`` (:mod:`iovalab.kernel.version`). A
        preset name builds its IOMMU for that version (7.3 VT-d: the generic page table); a given
        :class:`IommuDomain` is used as it is.
    """

    def __init__(self, iommu: IommuDomain | str = "intel-vtd", *, strict: bool = True, ncpus: int = 1,
                 log: EventLog | None = None, reserve: list[tuple[int, int]] | None = None,
                 reserve_msi: bool = False, single_queue: bool = False,
                 check_contract: bool = False, swiotlb: SwiotlbPool | None = None,
                 page_size: int | None = None, dma_debug: bool = False,
                 dma_debug_version: str | None = None, hz: int = DEFAULT_HZ, follow_kernel: bool = False,
                 kernel: str = DEFAULT_KERNEL):
        self.kernel = check_kernel(kernel)
        if not isinstance(follow_kernel, bool):
            raise ValueError(f"follow_kernel {follow_kernel!r} must be a bool (True: do what the kernel does "
                             "on misuse; False: refuse and say what it would do)")
        if not isinstance(dma_debug, bool):
            raise ValueError(f"dma_debug {dma_debug!r} must be a bool (CONFIG_DMA_API_DEBUG is y or n)")
        self.hz = check_hz(hz)
        if dma_debug_version is None:
            dma_debug_version = self.kernel
        self.log = log if log is not None else EventLog()
        self.debug = (DmaDebug(self.log, version=dma_debug_version) if dma_debug or check_contract else None)
        if isinstance(iommu, str):
            iommu = IommuDomain.preset(iommu, log=self.log, kernel=self.kernel)
        else:
            iommu.log = self.log
        self.iommu = iommu
        self.follow_kernel = follow_kernel
        iommu.pgtable.follow_kernel = follow_kernel
        self.ncpus = ncpus
        self.strict = strict
        self.check_contract = check_contract
        # iommu_dma_init_domain: order = __ffs(pgsize_bitmap), base_pfn = max(1, aperture_start >> order)
        order = (iommu.pgsize_bitmap & -iommu.pgsize_bitmap).bit_length() - 1
        self.granule = 1 << order
        if page_size is None:
            page_size = max(PAGE_SIZE, self.granule)
        if page_size not in (SZ_4K, SZ_16K, SZ_64K) or self.granule > page_size:
            raise ValueError(f"page_size {page_size!r}: the kernel's PAGE_SIZE must be 4K, 16K or 64K and "
                             f">= the IOVA granule {self.granule:#x} (init_iova_domain BUG_ON(granule > "
                             "PAGE_SIZE))")
        if swiotlb is not None:
            swiotlb.use_page_size(page_size)
        #: ``PAGE_SIZE`` of the simulated kernel (distinct from the IOVA granule).
        self.page_size = page_size
        base_pfn = max(1, iommu.aperture_start >> order)
        self.iovad = IovaDomain(self.granule, base_pfn, ncpus=ncpus, log=self.log, page_size=page_size)
        self.iommu_dma_init_fq(single_queue, ncpus)
        self.swiotlb = swiotlb
        if swiotlb is not None:
            swiotlb.log = self.log  # one event log for every layer
        self._phys_next = 0x1_0000_0000  # bump allocator for dma_alloc_coherent pages
        regions = list(reserve or [])
        if reserve_msi:
            regions.append((0xFEE00000, 0xFEEFFFFF))
        for start, end in regions:
            self.iovad.reserve_iova(start >> order, end >> order)
        self.iova_api = IovaApi(self)
        self.log.emit(_L, "iommu_dma_init_domain", "step", None, granule=self.granule,
                      start_pfn=base_pfn, strict=strict, reserved=len(regions))

    # ----------------------------------------------------------------------------------------
    @property
    def fq_domain(self) -> bool:
        """``cookie->fq_domain != NULL``: the domain is lazy (DMA-FQ)."""
        return not self.strict

    def _shift(self) -> int:
        return self.iovad.shift

    def dma_get_merge_boundary(self, dev: Device | None = None) -> int:
        """``dma_get_merge_boundary()`` -> ``iommu_dma_get_merge_boundary()``: granule - 1."""
        return self.granule - 1

    # ---------------------------------------------------------------- two-step API (dma_iova.IovaApi)
    def dma_iova_try_alloc(self, dev: Device, state: DmaIovaState, phys: int, size: int, cpu: int = 0) -> bool:
        """:meth:`IovaApi.dma_iova_try_alloc <iovalab.kernel.dma_iova.IovaApi.dma_iova_try_alloc>`."""
        return self.iova_api.dma_iova_try_alloc(dev, state, phys, size, cpu)

    def dma_iova_free(self, dev: Device, state: DmaIovaState, cpu: int = 0) -> None:
        """:meth:`IovaApi.dma_iova_free <iovalab.kernel.dma_iova.IovaApi.dma_iova_free>`."""
        self.iova_api.dma_iova_free(dev, state, cpu)

    def dma_iova_link(self, dev: Device, state: DmaIovaState, phys: int, offset: int, size: int,
                      dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> int:
        """:meth:`IovaApi.dma_iova_link <iovalab.kernel.dma_iova.IovaApi.dma_iova_link>`."""
        return self.iova_api.dma_iova_link(dev, state, phys, offset, size, dir, attrs, cpu)

    def dma_iova_sync(self, dev: Device, state: DmaIovaState, offset: int, size: int, cpu: int = 0) -> int:
        """:meth:`IovaApi.dma_iova_sync <iovalab.kernel.dma_iova.IovaApi.dma_iova_sync>`."""
        return self.iova_api.dma_iova_sync(dev, state, offset, size, cpu)

    def dma_iova_unlink(self, dev: Device, state: DmaIovaState, offset: int, size: int,
                        dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """:meth:`IovaApi.dma_iova_unlink <iovalab.kernel.dma_iova.IovaApi.dma_iova_unlink>`."""
        self.iova_api.dma_iova_unlink(dev, state, offset, size, dir, attrs, cpu)

    def dma_iova_destroy(self, dev: Device, state: DmaIovaState, mapped_len: int,
                         dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """:meth:`IovaApi.dma_iova_destroy <iovalab.kernel.dma_iova.IovaApi.dma_iova_destroy>`."""
        self.iova_api.dma_iova_destroy(dev, state, mapped_len, dir, attrs, cpu)

    def dma_iova_link_sync_pages(self, dev: Device, state: DmaIovaState, phys, offsets, size: int,
                                 dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """:meth:`IovaApi.dma_iova_link_sync_pages <iovalab.kernel.dma_iova.IovaApi.dma_iova_link_sync_pages>`."""
        self.iova_api.dma_iova_link_sync_pages(dev, state, phys, offsets, size, dir, attrs, cpu)

    def dma_iova_unlink_pages(self, dev: Device, state: DmaIovaState, offsets, size: int,
                              dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """:meth:`IovaApi.dma_iova_unlink_pages <iovalab.kernel.dma_iova.IovaApi.dma_iova_unlink_pages>`."""
        self.iova_api.dma_iova_unlink_pages(dev, state, offsets, size, dir, attrs, cpu)

    # ---------------------------------------------------------------- IOVA alloc / free
    def dma_limit_for(self, dev: Device, dma_limit: int) -> int:
        """The limit ``iommu_dma_alloc_iova()`` (dma-iommu.c) allocates below: ``dma_limit`` (the
        device mask) clamped by ``min_not_zero(dma_limit, dev->bus_dma_limit)`` and, with
        ``geometry.force_aperture``, by ``geometry.aperture_end``."""
        if dev.bus_dma_limit:
            dma_limit = min(dma_limit, dev.bus_dma_limit)
        if self.iommu.force_aperture:
            dma_limit = min(dma_limit, self.iommu.aperture_end)
        return dma_limit

    def iommu_dma_alloc_iova(self, size: int, dma_limit: int, dev: Device, cpu: int = 0) -> int:
        """``iommu_dma_alloc_iova(domain, size, dma_limit, dev)`` (dma-iommu.c).

        :param size: ``size_t``, bytes, granule-aligned.
        :param dma_limit: ``u64``, the device mask (or coherent mask).
        :returns: ``dma_addr_t`` IOVA, 0 on failure.

        Clamps the limit to ``bus_dma_limit`` and (``force_aperture``) the aperture end; PCI devices
        with ``pci_32bit_workaround`` first try below 4 GiB without flushing the rcache and drop the
        workaround for good on the first failure ("Using N-bit DMA addresses").
        """
        shift = self.iovad.shift
        iova_len = size >> shift
        dma_limit = self.dma_limit_for(dev, dma_limit)
        iova = 0
        if dma_limit > _DMA_32 and dev.pci_32bit_workaround:
            iova = self.iovad.alloc_iova_fast(iova_len, _DMA_32 >> shift, False, cpu)
            self.log.emit_values(_L, "iommu_dma_alloc_iova", "step", iova << shift, cpu,
                                 ("below 4 GiB", size, _DMA_32))
            if iova:
                return iova << shift
            dev.pci_32bit_workaround = False
            self.log.emit(_L, "iommu_dma_alloc_iova", "dev_notice", None, cpu=cpu,
                          message=f"Using {bits_per(dma_limit)}-bit DMA addresses", dev=dev.name)
        iova = self.iovad.alloc_iova_fast(iova_len, dma_limit >> shift, True, cpu)
        self.log.emit_values(_L, "iommu_dma_alloc_iova", "step", iova << shift, cpu, ("full width", size, dma_limit))
        return iova << shift

    def iommu_dma_free_iova(self, iova: int, size: int, gather: IotlbGather | None,
                            cpu: int = 0) -> None:
        """``iommu_dma_free_iova(domain, iova, size, gather)`` (dma-iommu.c).

        Lazy (``gather->queued``): ``queue_iova``; else ``free_iova_fast`` right away. ``size`` is
        what the caller computed at unmap time: it chooses the rcache bin.
        """
        shift = self._shift()
        if gather is not None and gather.queued:
            self.queue_iova(iova >> shift, size >> shift, cpu)
        else:
            self.iovad.free_iova_fast(iova >> shift, size >> shift, cpu)

    # ---------------------------------------------------------------- classic map/unmap
    def trace_api(self, func: str, dev: Device, cpu: int, result: Any, **args: Any) -> None:
        """One ``dma_api_calls`` event for a DMA API entry point (the ``dma`` tracepoints)."""
        self.log.emit_args(_L, func, "dma_api_calls", result, cpu, {"dev": dev.name, **args})

    def trace_api_values(self, func: str, dev: Device, cpu: int, result: Any, *values: Any) -> None:
        """:meth:`trace_api` with the arguments after ``dev`` in the order the schema declares them for
        ``func`` (:data:`~iovalab.kernel.event_schema.SCHEMA`, ``dma_api_calls``): the hot entry points."""
        self.log.emit_values(_L, func, "dma_api_calls", result, cpu, (dev.name, *values))

    def __iommu_dma_map(self, dev: Device, phys: int, size: int, prot: int, dma_mask: int,
                        cpu: int) -> int:
        """``__iommu_dma_map(dev, phys, size, prot, dma_mask)`` (dma-iommu.c)."""
        g = self.granule
        if dev.min_align_mask > g - 1:
            self.log.warn(_L, "__iommu_dma_map", 0, "Unsupported alignment constraint: "
                          f"min_align_mask {dev.min_align_mask:#x} > iova_mask {g - 1:#x}", cpu=cpu)
            return DMA_MAPPING_ERROR
        off = iova_offset(g, phys)
        size = iova_align(g, size + off)
        iova = self.iommu_dma_alloc_iova(size, dma_mask, dev, cpu)
        if not iova:
            return DMA_MAPPING_ERROR
        ret = self.iommu.iommu_map(iova, phys - off, size, prot, cpu=cpu)
        if ret:
            self.iommu_dma_free_iova(iova, size, None, cpu)
            return DMA_MAPPING_ERROR
        return iova + off

    def _iommu_dma_unmap(self, dev: Device, dma_addr: int, size: int, cpu: int) -> int:
        """``__iommu_dma_unmap(dev, dma_addr, size)`` (dma-iommu.c): unmap, sync (strict) or
        queue (lazy), free the IOVA. Returns bytes unmapped. (One leading underscore, not the
        kernel's two: :mod:`~iovalab.kernel.dma_iommu_sg` calls it too, and Python mangles two.)"""
        g = self.granule
        off = iova_offset(g, dma_addr)
        dma_addr -= off
        size = iova_align(g, size + off)
        gather = IotlbGather()
        gather.queued = self.fq_domain
        unmapped = self.iommu.iommu_unmap_fast(dma_addr, size, gather, cpu=cpu)
        if unmapped != size:
            self.log.warn(_L, "__iommu_dma_unmap", 0, f"WARN_ON(unmapped {unmapped:#x} != size {size:#x})",
                          cpu=cpu)
        if not gather.queued:
            self.iommu.iommu_iotlb_sync(gather, cpu=cpu)
        self.iommu_dma_free_iova(dma_addr, size, gather, cpu)
        return unmapped

    def first_unmapped(self, iova: int, size: int) -> int | None:
        """First granule address in ``[iova, iova + size)`` with no translation, or None."""
        return self.iommu.pgtable.first_unmapped(iova, iova + size)

    def mapped_granules(self, iova: int, size: int) -> list[int]:
        """Up to 16 granule addresses in ``[iova, iova + size)`` that have a translation."""
        return self.iommu.pgtable.find_mapped(iova, iova + size, 16)

    #: what each driver's unmap does at a hole (Linux 6.17), for the refusal's event.
    HOLE_BEHAVIOUR = {
        "intel": "intel_iommu_unmap never stops at a hole: the whole range is cleared, no WARN fires",
        "arm": "__arm_lpae_unmap WARN_ON(!pte) stops at the hole, then WARN_ON(unmapped != size); "
               "what follows the hole stays mapped while its IOVA is freed",
        "amd": "iommu_v1_unmap_pages stops at the hole, then WARN_ON(unmapped != size); what follows "
               "the hole stays mapped while its IOVA is freed",
    }

    #: 7.3 VT-d and AMD v1 (drivers/iommu/generic_pt/iommu_pt.h: ``__unmap_range()``, 7.3.4)
    HOLE_BEHAVIOUR_GENERIC_PT = ("the generic page table's unmap_range stops silently at the hole, then "
                                 "WARN_ON(unmapped != size); what follows the hole stays mapped while its IOVA "
                                 "is freed")

    def check_mapped(self, func: str, iova: int, size: int, cpu: int) -> None:
        """Refuse (WARN + -EINVAL) an unmap of a range that is not fully mapped, saying what the
        driver's kernel code would do; with ``follow_kernel`` do nothing (the unmap runs as the
        kernel's does)."""
        if self.follow_kernel:
            return
        a = self.first_unmapped(iova, size)
        if a is not None:
            what = (self.HOLE_BEHAVIOUR_GENERIC_PT if self.iommu.pgtable.pt_iommu
                    else self.HOLE_BEHAVIOUR.get(self.iommu.driver, "the driver unmaps only up to the hole"))
            self.log.warn(_L, func, EINVAL, f"IOVA {a:#x} in [{iova:#x}, {iova + size:#x}) is not "
                          f"mapped: in the kernel {what}; the simulator refuses (follow_kernel=True "
                          "follows the kernel)", cpu=cpu)
            raise DmaError(-EINVAL, f"IOVA {a:#x} is not mapped (the kernel: {what})", func, warned="WARN_ON")

    def needs_bounce(self, dev: Device, size: int, dir: int, phys: int) -> bool:
        """``dev_use_swiotlb(dev, size, dir) && iova_unaligned(iovad, phys, size)`` (dma-iommu.c)."""
        return dev.dev_use_swiotlb(size, dir) and iova_offset(self.granule, phys | size) != 0

    def dma_map_page(self, dev: Device, phys: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                     attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_page_attrs()`` -> ``iommu_dma_map_page(dev, page, offset, size, dir, attrs)``.

        :param phys: ``page_to_phys(page) + offset``.
        :returns: the DMA address, or ``DMA_MAPPING_ERROR``.

        Bounces through swiotlb when the device needs it and the buffer is not granule-aligned at
        both ends; then ``__iommu_dma_map`` (allocate IOVA, ``iommu_map`` incl. ``iotlb_sync_map``).
        7.3.4 (kernel/dma/mapping.c: ``dma_map_page_attrs()``): ``DMA_ATTR_MMIO`` is refused with
        ``DMA_MAPPING_ERROR`` (no trace), everything else is :meth:`dma_map_phys` (whose trace event,
        ``dma:dma_map_phys``, the exporter writes for this call).
        """
        if behaves(self.kernel, "dma_map_phys") and _is_int(attrs) and attrs & DMA_ATTR_MMIO:
            valid_dma_direction(dir)
            self.log.emit(_L, "dma_map_page_attrs", "step", DMA_MAPPING_ERROR, cpu=cpu,
                          rule="DMA_ATTR_MMIO: use dma_map_phys()")
            return DMA_MAPPING_ERROR
        return self._map_phys("dma_map_page", dev, phys, size, dir, attrs, cpu)

    def dma_map_phys(self, dev: Device, phys: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                     attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_phys(dev, phys, size, dir, attrs)`` -> ``iommu_dma_map_phys()`` (7.3.4
        kernel/dma/mapping.c, drivers/iommu/dma-iommu.c). With ``DMA_ATTR_MMIO`` (a BAR reached through
        the host bridge): no swiotlb bounce, no CPU cache maintenance, ``IOMMU_MMIO`` in the PTE.
        Not in 6.17: ValueError."""
        if not behaves(self.kernel, "dma_map_phys"):
            raise ValueError(f"dma_map_phys: not in kernel {self.kernel} (7.3 has it; use dma_map_page)")
        return self._map_phys("dma_map_phys", dev, phys, size, dir, attrs, cpu)

    def _map_phys(self, func: str, dev: Device, phys: int, size: int, dir: int, attrs: int, cpu: int) -> int:
        valid_dma_direction(dir)
        check_cpu(func, cpu, self.ncpus)
        check_size(func, size)
        check_phys(func, phys, size)
        mmio = behaves(self.kernel, "dma_map_phys") and _is_int(attrs) and attrs & DMA_ATTR_MMIO
        self.log.depth += 1
        try:
            orig = phys
            if not mmio and self.needs_bounce(dev, size, dir, phys):
                if self.swiotlb is None:
                    self.log.warn(_L, "iommu_dma_map_page", 0, "DMA bounce buffers are inactive, "
                                  "unable to map unaligned transaction.", cpu=cpu)
                    addr = DMA_MAPPING_ERROR
                    self.trace_api(func, dev, cpu, addr, dir=dir, phys=orig, size=size)
                    return addr
                phys = self.swiotlb.iommu_dma_map_swiotlb(dev, phys, size, self.granule, dir, attrs, cpu)
                if phys == DMA_MAPPING_ERROR:
                    self.trace_api(func, dev, cpu, phys, dir=dir, phys=orig, size=size, attrs=attrs)
                    return phys
            prot = dma_info_to_prot(dir, dev.coherent, attrs)
            addr = self.__iommu_dma_map(dev, phys, size, prot, dev.dma_get_mask(), cpu)
            if addr == DMA_MAPPING_ERROR and phys != orig and self.swiotlb is not None:
                self.swiotlb.swiotlb_tbl_unmap_single(phys, size, dir, attrs, cpu, dev=dev)
        finally:
            self.log.depth -= 1
        self.trace_api_values(func, dev, cpu, addr, dir, orig, size, attrs)
        if self.debug is not None:
            self._raise_findings(self.debug.debug_dma_map_phys(dev, orig, size, dir, addr, attrs,
                                                               self._swiotlb_active(), cpu), addr)
        return addr

    # ---------------------------------------------------------------- dma-debug glue
    def _swiotlb_active(self) -> bool:
        return self.swiotlb is not None

    def _raise_findings(self, found: list[Finding], result=None) -> None:
        """``check_contract=True``: the first dma-debug finding of a call becomes a :class:`DmaError`."""
        if found and self.check_contract:
            f = found[0]
            err = DmaError(-EINVAL, f"dma-debug ({f.check}): {f.message}", f.func)
            err.result = result          # type: ignore[attr-defined]
            err.findings = found         # type: ignore[attr-defined]
            raise err

    def _refuse_unmap(self, func: str, refs_findings: list[tuple[str, str]], dev: Device, cpu: int) -> None:
        """``check_contract=True``: report what ``check_unmap`` would and refuse before any change."""
        if refs_findings and self.check_contract:
            assert self.debug is not None, "refs_findings come from dma-debug"
            found = [self.debug.err_printk(dev.name, func, c, t, cpu) for c, t in refs_findings]
            self._raise_findings(found)

    def dma_mapping_error(self, dev: Device, addr: int) -> bool:
        """``dma_mapping_error(dev, dma_addr)`` (include/linux/dma-mapping.h): ``debug_dma_mapping_error``
        (marks the dma-debug entry checked), then ``addr == DMA_MAPPING_ERROR``."""
        if self.debug is not None:
            self.debug.debug_dma_mapping_error(dev, addr)
        return addr == DMA_MAPPING_ERROR

    def dma_unmap_page(self, dev: Device, dma_addr: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                       attrs: int = 0, cpu: int = 0) -> None:
        """``dma_unmap_page_attrs()`` -> ``iommu_dma_unmap_page()`` (dma-iommu.c); 7.3.4: ->
        ``dma_unmap_phys`` (``DMA_ATTR_MMIO`` there is a silent no-op: kernel/dma/mapping.c)."""
        if behaves(self.kernel, "dma_map_phys") and _is_int(attrs) and attrs & DMA_ATTR_MMIO:
            valid_dma_direction(dir)
            return
        self._unmap_phys("dma_unmap_page", dev, dma_addr, size, dir, attrs, cpu)

    def dma_unmap_phys(self, dev: Device, dma_addr: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                       attrs: int = 0, cpu: int = 0) -> None:
        """``dma_unmap_phys()`` -> ``iommu_dma_unmap_phys()`` (7.3.4): with ``DMA_ATTR_MMIO`` straight
        to ``__iommu_dma_unmap`` (no CPU sync, no swiotlb lookup). Not in 6.17: ValueError."""
        if not behaves(self.kernel, "dma_map_phys"):
            raise ValueError(f"dma_unmap_phys: not in kernel {self.kernel} (7.3 has it; use dma_unmap_page)")
        self._unmap_phys("dma_unmap_phys", dev, dma_addr, size, dir, attrs, cpu)

    def _unmap_phys(self, func: str, dev: Device, dma_addr: int, size: int, dir: int, attrs: int,
                    cpu: int) -> None:
        valid_dma_direction(dir)
        check_cpu(func, cpu, self.ncpus)
        check_size(func, size)
        if not _is_int(dma_addr) or not 0 <= dma_addr <= U64_MASK - size + 1:
            raise ValueError(f"{func}: dma_addr {dma_addr!r} + size {size:#x} is not a 64-bit DMA range")
        mmio = behaves(self.kernel, "dma_map_phys") and _is_int(attrs) and attrs & DMA_ATTR_MMIO
        ref = None
        if self.debug is not None:
            ref = self.debug.unmap_page_ref(dev, dma_addr, size, dir, attrs)
            self._refuse_unmap("debug_dma_unmap_phys", self.debug.findings_for_unmap(ref), dev, cpu)
        g = self.granule
        start = dma_addr - iova_offset(g, dma_addr)
        self.check_mapped("iommu_dma_unmap_page", start, iova_align(g, size + dma_addr - start), cpu)
        phys: int | None = self.iommu.iommu_iova_to_phys(dma_addr)
        if mmio:
            phys = None   # iommu_dma_unmap_phys: DMA_ATTR_MMIO goes straight to __iommu_dma_unmap
        if phys is not None and self.swiotlb is not None and self.swiotlb.is_swiotlb_buffer(phys):
            # what swiotlb_tbl_unmap_single will refuse (another device's min_align_mask, an address it
            # never returned) is checked before anything is unmapped
            self.swiotlb.lookup_mapping("swiotlb_tbl_unmap_single", phys, None, dev)
        self.log.depth += 1
        try:
            self._iommu_dma_unmap(dev, dma_addr, size, cpu)
            if phys is not None and self.swiotlb is not None and self.swiotlb.is_swiotlb_buffer(phys):
                self.swiotlb.swiotlb_tbl_unmap_single(phys, size, dir, attrs, cpu, dev=dev)
        finally:
            self.log.depth -= 1
        self.trace_api_values(func, dev, cpu, None, dir, dma_addr, size)
        if ref is not None and self.debug is not None:
            self.debug.check_unmap(ref, "debug_dma_unmap_phys", cpu)

    def dma_alloc_coherent(self, dev: Device, size: int, cpu: int = 0) -> tuple[int, int]:
        """``dma_alloc_attrs()`` -> ``iommu_dma_alloc()`` (simplified: one physically contiguous
        page-rounded buffer, mapped with the coherent mask). Returns ``(phys, dma_addr)``."""
        check_cpu("dma_alloc_coherent", cpu, self.ncpus)
        check_size("dma_alloc_coherent", size)
        size = iova_align(self.page_size, size)
        phys = self._phys_next
        check_phys("dma_alloc_coherent", phys, size)
        cmask = dev.coherent_dma_mask
        assert cmask is not None  # Device.__post_init__ makes it dma_mask when not given
        addr = self.__iommu_dma_map(dev, phys, size, dma_info_to_prot(DMA_BIDIRECTIONAL, dev.coherent, 0),
                                    cmask, cpu)
        if addr != DMA_MAPPING_ERROR:  # a failed iommu_dma_alloc frees its pages again
            self._phys_next += size
        self.trace_api("dma_alloc", dev, cpu, addr, size=size, phys=phys)
        if self.debug is not None:
            self.debug.debug_dma_alloc_coherent(dev, size, addr, phys, 0, cpu)
        return phys, addr

    # ----------------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """Comparable copy of allocator, page table and flush-queue state (for "no change" tests)."""
        return (self.iovad.snapshot(), self.iommu.snapshot(),
                tuple(tuple((e.iova_pfn, e.pages, e.counter) for e in fq.entries) for fq in self.fqs),
                self.fq_flush_start_cnt, self.fq_flush_finish_cnt, self.now_ms, self.fq_timer_on,
                self.fq_timer_deadline, self._phys_next,
                None if self.swiotlb is None else self.swiotlb.snapshot())


_ = (ENOMEM, EOPNOTSUPP)  # re-exported errno names used by callers' docs
