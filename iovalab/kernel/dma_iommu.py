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
(default 250): the flush-queue timer fires on a tick (:func:`iovalab.kernel.version.fq_timer_expiry`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
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
from iovalab.kernel.iova import IovaDomain, PerCpu
from iovalab.kernel.p2pdma import (
    MAP_TYPE_NAMES, PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, P2pdmaPages,
    PciP2pdmaMapState, pci_p2pdma_bus_addr_map, pci_p2pdma_state,
)
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.version import (
    CONFIG_HZ_VALUES, DEFAULT_HZ, DEFAULT_KERNEL, behaves, check_hz, check_kernel, fq_timer_expiry,
    msecs_to_jiffies,
)
from iovalab.kernel.units import (
    DMA_BIT_MASK, DMA_MAPPING_ERROR, EINVAL, ENOMEM, EOPNOTSUPP, EREMOTEIO, PAGE_SIZE, SZ_4K, SZ_16K, SZ_64K, U64_MASK,
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
# flush queue parameters (drivers/iommu/dma-iommu.c)
IOVA_DEFAULT_FQ_SIZE = 256
IOVA_DEFAULT_FQ_TIMEOUT = 10      # ms
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_SINGLE_FQ_TIMEOUT = 1000     # ms
# CONFIG_HZ_VALUES and msecs_to_jiffies: iovalab.kernel.version (re-exported here)

_L = "dma"


def dma_mapping_error(addr: int) -> bool:
    """``dma_mapping_error(dev, addr)`` (dma-mapping.h): ``addr == DMA_MAPPING_ERROR``."""
    return addr == DMA_MAPPING_ERROR


@dataclass
class ScatterEntry:
    """One ``struct scatterlist`` entry: ``sg_phys(s)`` as ``phys``, ``s->length`` as ``length``;
    after mapping, ``dma_address``/``dma_length`` (``sg_dma_address``/``sg_dma_len``) and
    ``dma_bus_address``: the ``SG_DMA_BUS_ADDRESS`` flag of ``sg->dma_flags``
    (``sg_dma_is_bus_address()``, include/linux/scatterlist.h): a PCI P2P bus address that no IOMMU
    mapping backs (set by ``iommu_dma_map_sg()``, cleared by ``iommu_dma_unmap_sg()``, 7.3.4)."""

    phys: int
    length: int
    dma_address: int = 0
    dma_length: int = 0
    dma_bus_address: bool = False


@dataclass
class _FqEntry:
    """``struct iova_fq_entry`` (dma-iommu.c)."""
    iova_pfn: int
    pages: int
    counter: int


@dataclass
class _FlushQueue:
    """``struct iova_fq`` (dma-iommu.c): a ring of ``size`` slots, usable ``size - 1``."""
    size: int
    entries: deque[_FqEntry] = field(default_factory=deque)  # head first

    def full(self) -> bool:
        """``fq_full()``: one slot of the ring always stays empty."""
        return len(self.entries) == self.size - 1


class DmaDomain:
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

    #: The machine's PCI P2P pages (:class:`~iovalab.kernel.p2pdma.P2pdmaPages`), what
    #: ``is_pci_p2pdma_page(sg_page(s))`` answers in ``iommu_dma_map_sg()`` (7.3.4); None: no P2P memory.
    #: Set by whoever builds the machine (a scenario's ``p2p`` parameter).
    p2pdma: P2pdmaPages | None = None

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
        self.single_queue = single_queue
        fq_size = IOVA_SINGLE_FQ_SIZE if single_queue else IOVA_DEFAULT_FQ_SIZE
        self.fq_timeout = IOVA_SINGLE_FQ_TIMEOUT if single_queue else IOVA_DEFAULT_FQ_TIMEOUT
        nq = 1 if single_queue else ncpus
        self.fqs: PerCpu[_FlushQueue] = PerCpu(nq, lambda: _FlushQueue(fq_size))  # made on first use
        self.fq_flush_start_cnt = 0
        self.fq_flush_finish_cnt = 0
        self.fq_timer_on = False
        self.fq_timer_deadline = 0.0
        self.now_ms = 0.0
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
        shift = self._shift()
        iova_len = size >> shift
        dma_limit = self.dma_limit_for(dev, dma_limit)
        iova = 0
        if dma_limit > DMA_BIT_MASK(32) and dev.pci_32bit_workaround:
            iova = self.iovad.alloc_iova_fast(iova_len, DMA_BIT_MASK(32) >> shift, False, cpu)
            self.log.emit(_L, "iommu_dma_alloc_iova", "step", iova << shift, cpu=cpu,
                          attempt="below 4 GiB", size=size, limit=DMA_BIT_MASK(32))
            if iova:
                return iova << shift
            dev.pci_32bit_workaround = False
            self.log.emit(_L, "iommu_dma_alloc_iova", "dev_notice", None, cpu=cpu,
                          message=f"Using {bits_per(dma_limit)}-bit DMA addresses", dev=dev.name)
        iova = self.iovad.alloc_iova_fast(iova_len, dma_limit >> shift, True, cpu)
        self.log.emit(_L, "iommu_dma_alloc_iova", "step", iova << shift, cpu=cpu,
                      attempt="full width", size=size, limit=dma_limit)
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

    # ---------------------------------------------------------------- flush queue
    def _fq(self, cpu: int) -> _FlushQueue:
        return self.fqs[0 if self.single_queue else cpu]

    def fq_ring_free(self, fq: _FlushQueue, cpu: int) -> int:
        """``fq_ring_free_locked()`` (dma-iommu.c): free head entries whose counter is below
        ``fq_flush_finish_cnt`` into the rcache of ``cpu``. Returns how many."""
        n = 0
        while fq.entries and fq.entries[0].counter < self.fq_flush_finish_cnt:
            e = fq.entries.popleft()
            self.iovad.free_iova_fast(e.iova_pfn, e.pages, cpu)
            n += 1
        if n:
            self.log.emit(_L, "fq_ring_free", "fq_free", None, cpu=cpu, count=n)
        return n

    def fq_flush_iotlb(self, cpu: int = 0, why: str = "") -> None:
        """``fq_flush_iotlb()`` (dma-iommu.c): start count, ``flush_iotlb_all``, finish count."""
        self.fq_flush_start_cnt += 1
        self.iommu.iommu_flush_iotlb_all(cpu=cpu)
        self.fq_flush_finish_cnt += 1
        self.log.emit(_L, "fq_flush_iotlb", "fq_flush", None, cpu=cpu, why=why,
                      finish_cnt=self.fq_flush_finish_cnt)

    def queue_iova(self, pfn: int, pages: int, cpu: int = 0) -> None:
        """``queue_iova(cookie, pfn, pages, freelist)`` (dma-iommu.c): defer a free until a flush."""
        fq = self._fq(cpu)
        self.fq_ring_free(fq, cpu)
        if fq.full():
            self.fq_flush_iotlb(cpu, why="queue full")
            self.fq_ring_free(fq, cpu)
        fq.entries.append(_FqEntry(pfn, pages, self.fq_flush_start_cnt))
        self.log.emit(_L, "queue_iova", "fq_add", None, cpu=cpu, pfn=pfn, pages=pages,
                      counter=self.fq_flush_start_cnt, queued=len(fq.entries))
        if not self.fq_timer_on:
            self.fq_timer_on = True
            # mod_timer(&fq_timer, jiffies + msecs_to_jiffies(fq_timeout)): fires on a tick
            self.fq_timer_deadline = fq_timer_expiry(self.now_ms, self.fq_timeout, self.hz)

    def fq_timer_ms(self) -> float:
        """How long after ``queue_iova`` arms it now (at ``now_ms``) the flush-queue timer fires, in ms.

        ``queue_iova`` (dma-iommu.c, 6.17 and 7.3.4) arms ``mod_timer(&cookie->fq_timer, jiffies +
        msecs_to_jiffies(fq_timeout))``; ``fq_flush_timeout`` runs at the tick that brings ``jiffies``
        there (:func:`~iovalab.kernel.version.fq_timer_expiry`; ticks at multiples of ``1000 / HZ`` ms
        from time 0). Armed on a tick: a whole number of ticks (10 ms at HZ=250 is 3 jiffies = 12 ms;
        at HZ=100 one jiffy = 10 ms; at HZ=300, 3 jiffies = 10.0 ms); armed between ticks: less.
        """
        return fq_timer_expiry(self.now_ms, self.fq_timeout, self.hz) - self.now_ms

    def fq_flush_timeout(self, cpu: int = 0) -> None:
        """``fq_flush_timeout()`` (dma-iommu.c), the timer callback, run on ``cpu``: one
        ``flush_iotlb_all``, then free what is ready in every queue (into ``cpu``'s rcache)."""
        self.fq_timer_on = False
        self.fq_flush_iotlb(cpu, why="timeout")
        for _, fq in self.fqs.touched():   # an unused CPU's queue is empty: nothing to free
            self.fq_ring_free(fq, cpu)

    def advance_time(self, ms: float, cpu: int = 0) -> bool:
        """Let ``ms`` milliseconds pass; fires the flush-queue timer if it is due. True if fired."""
        if not isinstance(ms, int | float) or isinstance(ms, bool) or not math.isfinite(ms) or ms < 0:
            raise ValueError(f"advance_time: ms {ms!r} must be a finite number >= 0")
        check_cpu("advance_time", cpu, self.ncpus)
        self.now_ms += ms
        if self.fq_timer_on and self.now_ms >= self.fq_timer_deadline:
            self.fq_flush_timeout(cpu)
            return True
        return False

    def fq_pending(self) -> int:
        """IOVA ranges waiting in flush queues."""
        return sum(len(fq.entries) for _, fq in self.fqs.touched())

    # ---------------------------------------------------------------- classic map/unmap
    def trace_api(self, func: str, dev: Device, cpu: int, result: Any, **args: Any) -> None:
        """One ``dma_api_calls`` event for a DMA API entry point (the ``dma`` tracepoints)."""
        self.log.emit(_L, func, "dma_api_calls", result, cpu=cpu, dev=dev.name, **args)

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

    def __iommu_dma_unmap(self, dev: Device, dma_addr: int, size: int, cpu: int) -> int:
        """``__iommu_dma_unmap(dev, dma_addr, size)`` (dma-iommu.c): unmap, sync (strict) or
        queue (lazy), free the IOVA. Returns bytes unmapped."""
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
        self.trace_api(func, dev, cpu, addr, dir=dir, phys=orig, size=size, attrs=attrs)
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
            self.__iommu_dma_unmap(dev, dma_addr, size, cpu)
            if phys is not None and self.swiotlb is not None and self.swiotlb.is_swiotlb_buffer(phys):
                self.swiotlb.swiotlb_tbl_unmap_single(phys, size, dir, attrs, cpu, dev=dev)
        finally:
            self.log.depth -= 1
        self.trace_api(func, dev, cpu, None, dir=dir, dma_addr=dma_addr, size=size)
        if ref is not None and self.debug is not None:
            self.debug.check_unmap(ref, "debug_dma_unmap_phys", cpu)

    # ---------------------------------------------------------------- scatterlists
    def dma_map_sg(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                   attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_sg_attrs()`` -> ``iommu_dma_map_sg()`` (dma-iommu.c).

        One IOVA for the whole list (``iova_len`` = Σ granule-aligned segment lengths plus boundary
        padding), one ``iommu_map_sg`` (a map call per physically contiguous run, one sync), then
        ``__finalise_sg`` merges segments into DMA segments. Returns the number of DMA segments
        (``ents``); 0 on failure, as ``dma_map_sg`` does (``dma_map_sgtable`` returns the errno).

        PCI P2P pages (:attr:`p2pdma`; 7.3.4 ``iommu_dma_map_sg()``, ``pci_p2pdma_state()`` per entry):
        ``PCI_P2PDMA_MAP_BUS_ADDR`` - the entry gets the bus address (``pci_p2pdma_bus_addr_map``) and
        is marked ``dma_bus_address``; it takes no IOVA and ``iommu_map_sg`` skips it (no list of bus
        entries only allocates nothing); ``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`` - mapped with regular IOVAs
        and the caller's ``attrs``: no ``DMA_ATTR_MMIO`` is added, so the PTEs carry no ``IOMMU_MMIO``
        (unlike ``blk_rq_dma_map_iter_start()`` and ``hmm_dma_map_pfn()``, which add it); any other type
        (``PCI_P2PDMA_MAP_NOT_SUPPORTED``) - ``-EREMOTEIO`` after ``__invalidate_sg``, nothing mapped.
        """
        ents = self._dma_map_sg_attrs(dev, sgl, dir, attrs, cpu)
        return ents if ents > 0 else 0

    def dma_map_sgtable(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                        attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_sgtable()`` (kernel/dma/mapping.c, 7.3.4): what :meth:`dma_map_sg` does, returning
        0 on success or the errno of ``iommu_dma_map_sg()``: ``-EREMOTEIO`` when the device cannot reach
        a P2P entry, ``-ENOMEM`` when no IOVA is left, ``-EINVAL`` when ``iommu_map_sg`` failed."""
        ents = self._dma_map_sg_attrs(dev, sgl, dir, attrs, cpu)
        return 0 if ents > 0 else (ents or -EINVAL)

    def _dma_map_sg_attrs(self, dev: Device, sgl: list[ScatterEntry], dir: int, attrs: int, cpu: int) -> int:
        """``__dma_map_sg_attrs()``: DMA segments, or a negative errno."""
        valid_dma_direction(dir)
        check_cpu("dma_map_sg", cpu, self.ncpus)
        if not isinstance(sgl, list) or not sgl:
            raise ValueError(f"dma_map_sg: sgl {sgl!r} must be a non-empty list of ScatterEntry")
        total = 0
        for i, s in enumerate(sgl):
            if not isinstance(s, ScatterEntry):
                raise ValueError(f"dma_map_sg: sgl[{i}] {s!r} is not a ScatterEntry")
            check_size(f"dma_map_sg: sgl[{i}]", s.length)
            check_phys(f"dma_map_sg: sgl[{i}]", s.phys, s.length)
            total += s.length
        check_size("dma_map_sg: total length", total)
        self.log.depth += 1
        try:
            untrusted = False
            if dev.untrusted:  # dev_use_sg_swiotlb: iommu_dma_map_sg_swiotlb, every segment on its own
                done: list[ScatterEntry] = []
                saved_debug, self.debug = self.debug, None  # inner calls: no dma-debug hooks
                try:
                    for s in sgl:
                        s.dma_address = self.dma_map_page(dev, s.phys, s.length, dir, attrs, cpu)
                        s.dma_length = s.length
                        if s.dma_address == DMA_MAPPING_ERROR:
                            break
                        done.append(s)
                finally:  # out_unmap: a failure (or an exception) unmaps the segments mapped so far
                    if len(done) < len(sgl):
                        for t in done:
                            self.dma_unmap_page(dev, t.dma_address, t.length, dir,
                                                attrs | DMA_ATTR_SKIP_CPU_SYNC, cpu)
                    self.debug = saved_debug
                ents = len(sgl) if len(done) == len(sgl) else 0
                untrusted = True
            else:
                ents = self._map_sg_iova(dev, sgl, dir, attrs, cpu)
        finally:
            self.log.depth -= 1
        if ents < 0:   # -EREMOTEIO: dma_map_sg_attrs() returns 0, dma_map_sgtable() the errno
            self.log.emit(_L, "iommu_dma_map_sg", "step", ents, cpu=cpu, nents=len(sgl),
                          rule="pci_p2pdma_state: PCI_P2PDMA_MAP_NOT_SUPPORTED for a P2P entry")
            return ents
        if not untrusted:  # the swiotlb path's calls were traced one by one
            self.trace_api("dma_map_sg", dev, cpu, ents, dir=dir, nents=len(sgl),
                           phys=[s.phys for s in sgl], dma_addrs=[s.dma_address for s in sgl[:ents]],
                           sizes=[s.dma_length for s in sgl[:ents]])
        if self.debug is not None and ents:
            self._raise_findings(self.debug.debug_dma_map_sg(dev, sgl, len(sgl), ents, dir, attrs,
                                                             self._swiotlb_active(), cpu), ents)
        return ents

    def _no_debug(self):
        """dma-debug hooks sit in ``dma_map_*_attrs``/``dma_unmap_*_attrs`` (kernel/dma/mapping.c), not
        in the ``iommu_dma_*`` calls those make: inner per-segment calls run with the hooks off."""
        from contextlib import contextmanager

        @contextmanager
        def off():
            saved, self.debug = self.debug, None
            try:
                yield
            finally:
                self.debug = saved
        return off()

    def _map_sg_iova(self, dev: Device, sgl: list[ScatterEntry], dir: int, attrs: int, cpu: int) -> int:
        """``iommu_dma_map_sg()`` past the swiotlb case: one IOVA for the list (7.3.4: P2P entries as
        :meth:`dma_map_sg` says). Returns the DMA segments, 0 on an IOVA or map failure, or -EREMOTEIO."""
        g = self.granule
        mask = dev.dma_get_seg_boundary()
        iova_len = 0
        layout: list[list[int] | None] = []  # [phys_aligned, aligned_len, s_iova_off, s_len]; None: bus address
        prev: list[int] | None = None
        p2p = self.p2pdma
        p2pdma_state = PciP2pdmaMapState()
        for s in sgl:
            if p2p:
                t = pci_p2pdma_state(p2pdma_state, p2p, dev.name, s.phys, dev.is_pci)
                if t == PCI_P2PDMA_MAP_BUS_ADDR:
                    assert p2pdma_state.mem is not None
                    s.dma_address = pci_p2pdma_bus_addr_map(p2pdma_state.mem, s.phys)
                    s.dma_length = s.length
                    s.dma_bus_address = True      # sg_dma_mark_bus_address(s)
                    layout.append(None)
                    continue
                if t not in (PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE):
                    for e in sgl:                 # out_restore_sg: __invalidate_sg()
                        e.dma_address, e.dma_length, e.dma_bus_address = DMA_MAPPING_ERROR, 0, False
                    assert t in MAP_TYPE_NAMES
                    return -EREMOTEIO
            s_iova_off = iova_offset(g, s.phys)
            s_len = s.length
            seg = [s.phys - s_iova_off, iova_align(g, s_len + s_iova_off), s_iova_off, s_len]
            pad_len = (mask - iova_len + 1) & mask
            if pad_len and pad_len < seg[1] - 1:
                assert prev is not None  # the first segment starts at iova_len 0: pad_len is 0
                prev[1] += pad_len
                iova_len += pad_len
            iova_len += seg[1]
            layout.append(seg)
            prev = seg
        if not iova_len:   # bus addresses only: no IOVA, nothing to map
            return self.__finalise_sg(dev, sgl, layout, 0)
        iova = self.iommu_dma_alloc_iova(iova_len, dev.dma_get_mask(), dev, cpu)
        if not iova:
            ents = 0
        else:
            prot = dma_info_to_prot(dir, dev.coherent, attrs)
            # iommu_map_sg() skips a bus-address entry but still ends the physically contiguous run at
            # it unless it happens to continue it: a zero-length entry at its phys does just that
            ret = self.iommu.iommu_map_sg(iova, [(s.phys, 0) if seg is None else (seg[0], seg[1])
                                                 for s, seg in zip(sgl, layout, strict=True)], prot, cpu=cpu)
            if ret < iova_len:
                self.iommu_dma_free_iova(iova, iova_len, None, cpu)
                ents = 0
            else:
                ents = self.__finalise_sg(dev, sgl, layout, iova)
        return ents

    def __finalise_sg(self, dev: Device, sgl: list[ScatterEntry], layout: list, dma_addr: int) -> int:
        """``__finalise_sg(dev, sg, nents, dma_addr)`` (dma-iommu.c): merge into DMA segments. A
        bus-address entry (7.3.4) becomes an output segment of its own, still marked, and ends the
        segment before it."""
        seg_mask = dev.dma_get_seg_boundary()
        max_len = dev.dma_get_max_seg_size()
        cur_len = 0
        count = 0
        out: list[list] = []   # [dma_address, dma_length, bus address]
        for s, seg in zip(sgl, layout, strict=True):
            if seg is None:
                out.append([s.dma_address, s.dma_length, True])
                count += 1
                cur_len = 0
                continue
            _, s_iova_len, s_iova_off, s_len = seg
            if cur_len and not s_iova_off and (dma_addr & seg_mask) and max_len - cur_len >= s_len:
                cur_len += s_len
            else:  # start the next output segment; the previous one keeps its length
                out.append([dma_addr + s_iova_off, s_len, False])
                count += 1
                cur_len = s_len
            out[-1][1] = cur_len
            dma_addr += s_iova_len
            if s_len + s_iova_off < s_iova_len:
                cur_len = 0
        for i, s in enumerate(sgl):  # entries past the last output segment keep the reset values
            s.dma_address, s.dma_length, s.dma_bus_address = out[i] if i < count else (DMA_MAPPING_ERROR, 0, False)
        return count

    def dma_unmap_sg(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                     attrs: int = 0, cpu: int = 0, nents: int | None = None) -> None:
        """``dma_unmap_sg_attrs()`` -> ``iommu_dma_unmap_sg()`` (dma-iommu.c): one
        ``__iommu_dma_unmap`` from the first segment's DMA address to the end of the last
        non-empty one among the first ``nents`` entries.

        ``nents`` is what the driver passes (default ``len(sgl)``, the count it gave ``dma_map_sg``);
        passing ``dma_map_sg``'s return value instead is the classic bug dma-debug reports."""
        valid_dma_direction(dir)
        check_cpu("dma_unmap_sg", cpu, self.ncpus)
        if not isinstance(sgl, list) or not sgl or not all(isinstance(s, ScatterEntry) for s in sgl):
            raise ValueError(f"dma_unmap_sg: sgl {sgl!r} must be the non-empty list passed to dma_map_sg")
        if dev.untrusted:
            bad = [s for s in sgl if s.dma_address == DMA_MAPPING_ERROR or not s.dma_length]
            if bad:
                raise ValueError(f"dma_unmap_sg: segment {bad[0]!r} is not mapped (dma_map_sg failed or was "
                                 "not called)")
        if nents is None:
            nents = len(sgl)
        if not isinstance(nents, int) or isinstance(nents, bool) or not 1 <= nents <= len(sgl):
            raise ValueError(f"dma_unmap_sg: nents {nents!r} must be in 1..{len(sgl)} (entries of the list)")
        refs = None
        if self.debug is not None:
            refs = self.debug.unmap_sg_refs(dev, sgl, nents, dir, attrs)
            self._refuse_unmap("debug_dma_unmap_sg", self.debug.findings_for_unmap_sg(refs), dev, cpu)
        sgl = sgl[:nents]
        self.trace_api("dma_unmap_sg", dev, cpu, None, dir=dir, phys=[s.phys for s in sgl])
        self.log.depth += 1
        try:
            if dev.untrusted:
                with self._no_debug():
                    for s in sgl:
                        self.dma_unmap_page(dev, s.dma_address, s.length, dir, attrs, cpu)
                return
            # 7.3.4: the IOVA runs from the first to the last entry that is not a P2P bus address
            # (those are unmarked on the way, sg_dma_unmark_bus_address); none: nothing to unmap
            start = end = 0
            first = True
            for s in sgl:
                if s.dma_bus_address:
                    s.dma_bus_address = False
                    continue
                if not s.dma_length:
                    break
                if first:
                    start, first = s.dma_address, False
                end = s.dma_address + s.dma_length
            if end:
                g = self.granule
                a = start - iova_offset(g, start)
                self.check_mapped("iommu_dma_unmap_sg", a, iova_align(g, end - a), cpu)
                self.__iommu_dma_unmap(dev, start, end - start, cpu)
        finally:
            self.log.depth -= 1
        if refs is not None and self.debug is not None:
            for ref in refs:
                self.debug.check_unmap(ref, "debug_dma_unmap_sg", cpu)

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
