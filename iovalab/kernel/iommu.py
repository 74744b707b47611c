"""The IOMMU core: ``drivers/iommu/iommu.c`` and ``include/linux/iommu.h`` (Linux 6.16/6.17).

An :class:`IommuDomain` is a paging ``struct iommu_domain``: its ``pgsize_bitmap``, geometry
(aperture), the driver's page table (an :class:`~iovalab.kernel.pgtable.IoPgtable`, one class per
format) and a model of the IOMMU's translation cache (IOTLB). The functions keep the kernel's names and steps:

* map: ``iommu_map_nosync`` (alignment check, one ``iommu_pgsize`` + ``map_pages`` per step, unwind
  on error, one ``iommu:map`` trace on success), ``iommu_sync_map`` (the driver's
  ``iotlb_sync_map``), ``iommu_map``, ``iommu_map_sg``;
* unmap: ``__iommu_unmap`` (one ``iommu_pgsize`` + ``unmap_pages`` per step, stop at 0, one
  ``iommu:unmap`` trace), ``iommu_unmap_fast``, ``iommu_unmap``, ``iommu_iotlb_sync``,
  ``iommu_flush_iotlb_all`` and the ``struct iommu_iotlb_gather`` helpers (those in
  :mod:`iovalab.kernel.iommu_gather`, importable from here);
* ``iommu_pgsize`` exactly as the kernel computes it, and :func:`split_pages`, the
  ``iommu_map_nosync`` loop without side effects (what ``data/kernel-traces/pgsize.jsonl`` checks).

Driver behaviour (``driver`` = ``"intel"``, ``"amd"`` or ``"arm"``), as read in the 6.17 sources:

* IOTLB gather, ``gather_style``: ``"page"`` = io-pgtable-arm + SMMUv3 (``io_pgtable_tlb_add_page``
  -> ``iommu_iotlb_gather_add_page(domain, gather, iova, leaf size)`` for every cleared PTE, skipped
  when ``gather->queued``); ``"chunk"`` = VT-d ``intel_iommu_unmap`` (one
  ``iommu_iotlb_gather_add_page(domain, gather, iova, size)`` per ``unmap_pages`` call, size =
  the whole (rounded) chunk, skipped when queued); ``"range"`` = AMD ``amd_iommu_iotlb_gather_add_page``
  (``iommu_iotlb_gather_add_range``, with an early sync on a disjoint range only when the IOMMU
  caches non-present entries (``amd_iommu_np_cache``); recorded even when queued).
  ``add_page`` syncs early when the page size changes or the range is disjoint: under VT-d an unmap
  whose chunks differ in size (4K head, 2M body) therefore issues several invalidations.
* ``iotlb_sync_map``: VT-d ``intel_iommu_iotlb_sync_map`` flushes (``cache_tag_flush_range_np``) only
  with ``dmar_domain->iotlb_sync_map`` (caching mode, e.g. QEMU ``caching-mode=on``, or RWBF);
  AMD ``amd_iommu_iotlb_sync_map`` only with ``amd_iommu_np_cache``; SMMUv3 has no callback.
  ``has_iotlb_sync_map`` says whether the callback flushes.
* ``map_pages``/``unmap_pages`` semantics (overlap, partial blocks, holes, table freeing): see
  :mod:`iovalab.kernel.pgtable`.

IOTLB model (hardware, no kernel function; :mod:`iovalab.kernel.iotlb`, a mixin of
:class:`IommuDomain`): one entry per leaf translation the device used
(``leaf size -> {iova base: (phys base, prot)}``), filled by :meth:`IommuDomain.device_access` on a
miss by a page walk; a walk that finds nothing is an ``io_page_fault``. With
``caches_non_present`` (default: the same as ``has_iotlb_sync_map``) a fault is cached as a
negative entry until something invalidates that page - that is why caching-mode IOMMUs need
``iotlb_sync_map``. Invalidations drop every entry that overlaps the range; the work is
O(min(entries, slots in range)).

Differences from the kernel on purpose: an empty gather is not handed to the driver's
``iotlb_sync`` (no event; SMMUv3 returns at once for it, VT-d would call ``cache_tag_flush_range``
with ``start = ULONG_MAX``); ``iommu_iova_to_phys`` records no event (a read-only query).
"""

from __future__ import annotations


from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu_gather import (
    IotlbGather, iommu_iotlb_gather_add_page, iommu_iotlb_gather_add_range, iommu_iotlb_gather_init,
    iommu_iotlb_gather_is_disjoint, iommu_iotlb_gather_queued,
)
from iovalab.kernel.iotlb import IOMMU_FAULT_READ, IOMMU_FAULT_WRITE, IotlbModel
from iovalab.kernel.pgtable import (
    AMD_IOMMU_PGSIZES, IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE,
    GenericPt, IoPgtable, alloc_io_pgtable_ops,
)
from iovalab.kernel.version import DEFAULT_KERNEL, check_kernel
from iovalab.kernel.units import EINVAL, SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M, U64_MASK

__all__ = [
    "IOMMU_READ", "IOMMU_WRITE", "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
    "IOMMU_FAULT_READ", "IOMMU_FAULT_WRITE",
    "PRESETS", "GRANULE_PRESETS", "GATHER_STYLES",
    "iommu_pgsize", "split_pages",
    "IotlbGather", "iommu_iotlb_gather_init", "iommu_iotlb_gather_is_disjoint",
    "iommu_iotlb_gather_add_range", "iommu_iotlb_gather_add_page", "iommu_iotlb_gather_queued",
    "IommuDomain",
]

GATHER_STYLES = ("page", "chunk", "range")
_DRIVER_GATHER = {"arm": "page", "intel": "chunk", "amd": "range"}
_OPS: dict[str, dict[str, str | None]] = {
    "intel": {"iotlb_sync": "intel_iommu_tlb_sync", "iotlb_sync_map": "intel_iommu_iotlb_sync_map",
              "sync_map_flush": "cache_tag_flush_range_np", "flush_iotlb_all": "intel_flush_iotlb_all"},
    "amd": {"iotlb_sync": "amd_iommu_iotlb_sync", "iotlb_sync_map": "amd_iommu_iotlb_sync_map",
            "sync_map_flush": "domain_flush_np_cache", "flush_iotlb_all": "amd_iommu_flush_iotlb_all"},
    "arm": {"iotlb_sync": "arm_smmu_iotlb_sync", "iotlb_sync_map": None, "sync_map_flush": "iotlb_sync_map",
            "flush_iotlb_all": "arm_smmu_flush_iotlb_all"},
}

_L = "iommu"
_A48 = (1 << 48) - 1

#: Named IOMMU set-ups for :meth:`IommuDomain.preset` (arguments of :class:`IommuDomain`).
PRESETS: dict[str, dict] = {
    # VT-d second stage, 2-level superpage support: SZ_4K | SZ_2M | SZ_1G; aperture __DOMAIN_MAX_ADDR(48)
    "intel-vtd": dict(pgsize_bitmap=SZ_4K | SZ_2M | SZ_1G, fmt="x86-64", driver="intel", ias=48,
                      aperture_end=_A48, has_iotlb_sync_map=False, gather_style="chunk"),
    # the same under QEMU's emulated VT-d with caching-mode=on: dmar_domain->iotlb_sync_map = true
    "intel-vtd-caching-mode": dict(pgsize_bitmap=SZ_4K | SZ_2M | SZ_1G, fmt="x86-64", driver="intel", ias=48,
                                   aperture_end=_A48, has_iotlb_sync_map=True, gather_style="chunk"),
    # AMD-Vi v1: AMD_IOMMU_PGSIZES = GENMASK_ULL(51, 12) ^ SZ_512G (aperture as the brief gives it)
    "amd-v1": dict(pgsize_bitmap=AMD_IOMMU_PGSIZES, fmt="x86-64", driver="amd", ias=48, aperture_end=_A48,
                   has_iotlb_sync_map=False, gather_style="range"),
    # SMMUv3 + io-pgtable-arm, per arm_lpae_restrict_pgsizes()
    "smmuv3-4k": dict(pgsize_bitmap=SZ_4K | SZ_2M | SZ_1G, fmt="arm-lpae", driver="arm", ias=48,
                      aperture_end=_A48, has_iotlb_sync_map=False, gather_style="page"),
    "smmuv3-16k": dict(pgsize_bitmap=SZ_16K | SZ_32M, fmt="arm-lpae", driver="arm", ias=48,
                       aperture_end=_A48, has_iotlb_sync_map=False, gather_style="page"),
    "smmuv3-64k": dict(pgsize_bitmap=SZ_64K | SZ_512M, fmt="arm-lpae", driver="arm", ias=48,
                       aperture_end=_A48, has_iotlb_sync_map=False, gather_style="page"),
}


#: The preset the lab uses for each IOVA granule (``iommu_dma_init_domain``: granule =
#: ``1 << __ffs(pgsize_bitmap)``): VT-d for 4K (the default domain), SMMUv3 LPAE for 16K and 64K,
#: the granules only arm64's io-pgtable-arm offers.
GRANULE_PRESETS: dict[int, str] = {SZ_4K: "intel-vtd", SZ_16K: "smmuv3-16k", SZ_64K: "smmuv3-64k"}


# --------------------------------------------------------------------------------------------
def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """``iommu_pgsize(domain, iova, paddr, size, &count)`` (iommu.c): ``(pgsize, count)``.

    ``pgsize_bitmap`` (``unsigned long``), ``iova`` (``unsigned long``), ``paddr``
    (``phys_addr_t``), ``size`` (``size_t``). The largest supported size allowed by ``size`` and by
    the common alignment of ``iova | paddr``; ``count`` stops at the next boundary of the next larger
    size when both addresses are equally offset in it and a whole larger page fits after it.
    Raises ``ValueError`` where the kernel would ``BUG_ON(!pgsizes)`` (or ``__fls(0)``).
    """
    if size <= 0:
        raise ValueError(f"iommu_pgsize: size {size:#x} (__fls(0) is undefined)")
    addr_merge = (paddr | iova) & U64_MASK
    pgsizes = pgsize_bitmap & ((1 << size.bit_length()) - 1)          # GENMASK(__fls(size), 0)
    if addr_merge:
        pgsizes &= ((addr_merge & -addr_merge) << 1) - 1              # GENMASK(__ffs(addr_merge), 0)
    if not pgsizes:
        raise ValueError(f"iommu_pgsize: BUG_ON(!pgsizes): iova {iova:#x} paddr {paddr:#x} size {size:#x} "
                         f"bitmap {pgsize_bitmap:#x}")
    idx = pgsizes.bit_length() - 1
    pgsize = 1 << idx
    bigger = pgsize_bitmap & ~((pgsize << 1) - 1)                      # & ~GENMASK(pgsize_idx, 0)
    if bigger:
        nxt = bigger & -bigger
        if not (iova ^ paddr) & (nxt - 1):
            offset = nxt - (addr_merge & (nxt - 1))
            end = offset + nxt
            if end <= U64_MASK and end <= size:                        # !check_add_overflow && <= size
                size = offset
    return pgsize, size >> idx


def split_pages(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> list[tuple[int, int, int, int]]:
    """The ``iommu_map_nosync()`` loop with no side effects: ``[(iova, paddr, pgsize, count), ...]``,
    each step mapping all ``pgsize * count`` bytes (a driver that maps the whole request, as VT-d
    and AMD do; ARM io-pgtable stops at table ends, see :mod:`iovalab.kernel.pgtable`)."""
    out = []
    while size:
        pgsize, count = iommu_pgsize(pgsize_bitmap, iova, paddr, size)
        out.append((iova, paddr, pgsize, count))
        n = pgsize * count
        iova += n
        paddr += n
        size -= n
    return out


#: the arguments of ``iommu_iotlb_sync``'s ``iotlb_invalidations`` event, in the order it gives them
_SYNC_FIELDS = ("start", "end", "pgsize", "scope", "callback", "freed_tables", "early", "caller", "dropped")


# --------------------------------------------------------------------------------------------
class IommuDomain(IotlbModel):
    """A paging ``struct iommu_domain`` with its driver page table and an IOTLB model.

    :param pgsize_bitmap: ``domain->pgsize_bitmap``; granule = ``1 << __ffs(pgsize_bitmap)``.
    :param fmt: page-table format, ``"x86-64"`` or ``"arm-lpae"``.
    :param ias: IOVA bits of the page table (``domain->gaw`` / ``cfg->ias``).
    :param aperture_start, aperture_end, force_aperture: ``domain->geometry`` (used by the DMA layer).
    :param has_iotlb_sync_map: the driver's ``iotlb_sync_map`` flushes (VT-d caching mode, AMD np-cache).
    :param gather_style: ``"page"``, ``"chunk"`` or ``"range"`` (module docstring); ``None`` = the
        driver's own.
    :param log: the :class:`~iovalab.kernel.events.EventLog` (a new one when ``None``).
    :param driver: ``"intel"``/``"amd"`` (x86-64) or ``"arm"`` (arm-lpae); default from ``fmt``.
    :param caches_non_present: the IOTLB caches faults (default: ``has_iotlb_sync_map``).
    :param name: a label (presets set it).
    :param kernel: the modelled version (:mod:`iovalab.kernel.version`); 7.3 builds VT-d and AMD v1 tables
        as generic page tables (:class:`~iovalab.kernel.pgtable.VtdssPgtable`,
        :class:`~iovalab.kernel.pgtable.Amdv1PtPgtable`) and traces failed maps.
    """

    def __init__(self, pgsize_bitmap: int, fmt: str = "x86-64", ias: int = 48, aperture_start: int = 0,
                 aperture_end: int = _A48, force_aperture: bool = True, has_iotlb_sync_map: bool = False,
                 gather_style: str | None = None, log: EventLog | None = None, *, driver: str | None = None,
                 caches_non_present: bool | None = None, oas: int | None = None, name: str | None = None,
                 kernel: str = DEFAULT_KERNEL):
        self.kernel = check_kernel(kernel)
        if not isinstance(pgsize_bitmap, int) or pgsize_bitmap <= 0:
            raise ValueError(f"pgsize_bitmap {pgsize_bitmap!r}: no page sizes (iommu_map_nosync would "
                             "WARN_ON(domain->pgsize_bitmap == 0) and return -ENODEV)")
        granule = pgsize_bitmap & -pgsize_bitmap
        if granule > SZ_64K:
            raise ValueError(f"pgsize_bitmap {pgsize_bitmap:#x}: smallest page {granule:#x} is above 64K "
                             "(no IOMMU page-table format has such a granule)")
        if not 0 <= aperture_start <= aperture_end:
            raise ValueError(f"aperture [{aperture_start:#x}, {aperture_end:#x}] is empty")
        if aperture_end >> ias:
            raise ValueError(f"aperture_end {aperture_end:#x} is beyond the {ias}-bit page table")
        self._log = log if log is not None else EventLog()
        self.pgtable: IoPgtable = alloc_io_pgtable_ops(fmt, granule, ias, self._log, driver=driver,
                                                       pgsize_bitmap=pgsize_bitmap, oas=oas,
                                                       tlb_flush=self._driver_flush,
                                                       kernel=self.kernel)
        self.driver = self.pgtable.driver
        if gather_style is None:
            gather_style = _DRIVER_GATHER[self.driver]
        if gather_style not in GATHER_STYLES:
            raise ValueError(f"gather_style {gather_style!r} is not one of {GATHER_STYLES}")
        self.pgsize_bitmap = pgsize_bitmap
        self.granule = granule
        self.granule_shift = granule.bit_length() - 1
        self.fmt, self.ias = fmt, ias
        self.aperture_start, self.aperture_end = aperture_start, aperture_end
        self.force_aperture = force_aperture
        self.has_iotlb_sync_map = bool(has_iotlb_sync_map)
        self.caches_non_present = self.has_iotlb_sync_map if caches_non_present is None \
            else bool(caches_non_present)
        self.gather_style = gather_style
        self.name = name
        self._ops = _OPS[self.driver]
        self.iotlb_init()

    @classmethod
    def preset(cls, name: str, log: EventLog | None = None, **overrides) -> IommuDomain:
        """A domain from :data:`PRESETS` (``"intel-vtd"``, ``"intel-vtd-caching-mode"``, ``"amd-v1"``,
        ``"smmuv3-4k"``, ``"smmuv3-16k"``, ``"smmuv3-64k"``); ``overrides`` replace arguments."""
        if name not in PRESETS:
            raise ValueError(f"IOMMU preset {name!r} is not one of {sorted(PRESETS)}")
        kw = dict(PRESETS[name])
        kw.update(overrides)
        kw.setdefault("name", name)
        return cls(log=log, **kw)

    @property
    def log(self) -> EventLog:
        return self._log

    @log.setter
    def log(self, log: EventLog) -> None:
        self._log = log
        self.pgtable.log = log

    def __repr__(self) -> str:
        return (f"<IommuDomain {self.name or self.driver} bitmap={self.pgsize_bitmap:#x} "
                f"granule={self.granule:#x} {self.pgtable!r}>")

    # -- map -------------------------------------------------------------------------------
    def iommu_pgsize(self, iova: int, paddr: int, size: int) -> tuple[int, int]:
        """``iommu_pgsize(domain, iova, paddr, size, &count)`` with this domain's bitmap."""
        return iommu_pgsize(self.pgsize_bitmap, iova, paddr, size)

    def iommu_map_nosync(self, iova: int, paddr: int, size: int, prot: int, cpu: int = 0) -> int:
        if self.pgtable.pt_iommu:
            return self._map_nosync_pt(iova, paddr, size, prot, cpu)
        return self._map_nosync(iova, paddr, size, prot, cpu)

    def _map_nosync_pt(self, iova: int, paddr: int, size: int, prot: int, cpu: int) -> int:
        """7.3.4 ``iommu_map_nosync`` on a ``struct pt_iommu``: one ``pt->ops->map_range``, then
        ``trace_map(iova, paddr, mapped)`` whether it worked or not (``iommu_map_calls`` carries
        ``size`` = bytes mapped, ``requested``, ``result``); on error ``iommu_unmap(iova, mapped)``."""
        log = self._log
        log.depth += 1
        try:
            pt = self.pgtable
            assert isinstance(pt, GenericPt), "pt_iommu is set only by the generic page table"
            mapped, ret, chunks = pt.map_range(iova, paddr, size, prot, self.iommu_pgsize, cpu)
        finally:
            log.depth -= 1
        log.emit_values(_L, "iommu_map_nosync", "iommu_map_calls", ret, cpu, (iova, paddr, mapped, prot, chunks, size))
        if ret:
            self.iommu_unmap(iova, mapped, cpu=cpu)
        return ret

    def _map_nosync(self, iova: int, paddr: int, size: int, prot: int, cpu: int = 0) -> int:
        """``iommu_map_nosync(domain, iova, paddr, size, prot, gfp)`` (iommu.c): 0 or -errno.

        ``iova`` (``unsigned long``), ``paddr`` (``phys_addr_t``), ``size`` (``size_t``), ``prot``
        (``int``). ``(iova | paddr | size)`` not granule-aligned: ``pr_err("unaligned: ...")``,
        -EINVAL, nothing changes. Then ``iommu_pgsize`` + ``map_pages`` until done; on an error the
        bytes mapped so far are undone with ``iommu_unmap`` (which syncs) and the driver's errno is
        returned (table pages allocated on the way stay allocated, as in the kernel). On success one
        ``iommu_map_calls`` event (the ``iommu:map`` trace: ``iova``, ``paddr``, ``size``) carrying
        ``chunks`` = every ``(iova, paddr, pgsize, count)`` handed to ``map_pages``.
        """
        log = self._log
        g = self.granule
        if (iova | paddr | size) & (g - 1):
            log.emit(_L, "iommu_map_nosync", "pr_err", -EINVAL, cpu=cpu, iova=iova, paddr=paddr, size=size,
                     min_pagesz=g, msg=f"unaligned: iova {iova:#x} pa {paddr:#x} size {size:#x} "
                     f"min_pagesz {g:#x}")
            return -EINVAL
        bitmap = self.pgsize_bitmap
        map_pages = self.pgtable.map_pages
        orig_iova, orig_paddr, orig_size = iova, paddr, size
        chunks = []
        ret = 0
        log.depth += 1
        try:
            while size:
                if size == g:  # iommu_pgsize() always gives (granule, 1) here
                    pgsize, count = g, 1
                else:
                    pgsize, count = iommu_pgsize(bitmap, iova, paddr, size)
                chunks.append((iova, paddr, pgsize, count))
                mapped, ret = map_pages(iova, paddr, pgsize, count, prot, cpu)
                size -= mapped
                if ret:
                    break
                iova += mapped
                paddr += mapped
            if ret:
                self.iommu_unmap(orig_iova, orig_size - size, cpu=cpu)
        finally:
            log.depth -= 1
        if ret:
            log.emit(_L, "iommu_map_nosync", "error", ret, cpu=cpu, iova=orig_iova, paddr=orig_paddr,
                     size=orig_size, chunks=chunks)
        else:
            log.emit_values(_L, "iommu_map_nosync", "iommu_map_calls", 0, cpu,
                            (orig_iova, orig_paddr, orig_size, prot, chunks))
        return ret

    def iommu_sync_map(self, iova: int, size: int, cpu: int = 0) -> int:
        """``iommu_sync_map(domain, iova, size)``: ``ops->iotlb_sync_map ? ops->iotlb_sync_map(...) : 0``.

        One ``iotlb_syncs`` event per call (``callback`` = the driver op or None, ``flushed`` =
        whether it invalidated ``[iova, iova + size - 1]``). Always returns 0 (no driver fails it)."""
        flushed = self.has_iotlb_sync_map
        if flushed and size:
            self._tlb_invalidate(iova, iova + size - 1)
        self._log.emit_values(_L, "iommu_sync_map", "iotlb_syncs", 0, cpu,
                              (iova, size, self._ops["iotlb_sync_map"], flushed,
                               self._ops["sync_map_flush"] if flushed else None))
        return 0

    def iommu_map(self, iova: int, paddr: int, size: int, prot: int, cpu: int = 0) -> int:
        """``iommu_map(domain, iova, paddr, size, prot, gfp)``: ``iommu_map_nosync`` then
        ``iommu_sync_map``; if the sync fails the range is unmapped again."""
        ret = self.iommu_map_nosync(iova, paddr, size, prot, cpu)
        if ret:
            return ret
        ret = self.iommu_sync_map(iova, size, cpu)
        if ret:
            self.iommu_unmap(iova, size, cpu=cpu)
        return ret

    def iommu_map_sg(self, iova: int, segments: list[tuple[int, int]], prot: int, cpu: int = 0) -> int:
        """``iommu_map_sg(domain, iova, sg, nents, prot, gfp)`` (iommu.c): bytes mapped or -errno.

        ``segments`` = ``[(phys, length), ...]`` already granule-aligned (dma-iommu rewrites them).
        Physically contiguous neighbours are merged into runs; one ``iommu_map_nosync`` per run at
        ``iova + mapped``, then one ``iommu_sync_map(iova, mapped)``; on error everything mapped is
        undone with ``iommu_unmap``. (The kernel loop runs to ``i <= nents``, re-reading the last
        entry to flush the final run; the model does the same.)"""
        nents = len(segments)
        length = mapped = start = 0
        i = 0
        ret = 0
        log = self._log
        log.depth += 1
        try:
            while i <= nents and nents:
                s_phys, s_len = segments[min(i, nents - 1)]
                if length and s_phys != start + length:
                    ret = self.iommu_map_nosync(iova + mapped, start, length, prot, cpu)
                    if ret:
                        break
                    mapped += length
                    length = 0
                if length:
                    length += s_len
                else:
                    length, start = s_len, s_phys
                i += 1
            if not ret:
                ret = self.iommu_sync_map(iova, mapped, cpu)
            if ret:
                self.iommu_unmap(iova, mapped, cpu=cpu)
        finally:
            log.depth -= 1
        log.emit(_L, "iommu_map_sg", "step", ret if ret else mapped, cpu=cpu, iova=iova, nents=nents)
        return ret if ret else mapped

    # -- unmap -----------------------------------------------------------------------------
    def _gather_cb(self, gather: IotlbGather, cpu: int):
        style = self.gather_style

        def add(iova: int, size: int, leaf: int) -> None:
            if style == "range":
                if self.caches_non_present and iommu_iotlb_gather_is_disjoint(gather, iova, size):
                    self.iommu_iotlb_sync(gather, cpu=cpu, caller="amd_iommu_iotlb_gather_add_page")
                iommu_iotlb_gather_add_range(gather, iova, size)
            elif gather.queued:
                return
            elif style == "page":
                iommu_iotlb_gather_add_page(self, gather, iova, leaf, cpu)
                if size > leaf:  # the further PTEs of the run: same size, adjacent, never a sync
                    iommu_iotlb_gather_add_range(gather, iova, size)
            else:
                iommu_iotlb_gather_add_page(self, gather, iova, size, cpu)
        return add

    def __iommu_unmap(self, iova: int, size: int, gather: IotlbGather, cpu: int = 0) -> int:
        """``__iommu_unmap(domain, iova, size, iotlb_gather)`` (iommu.c): bytes unmapped.

        ``(iova | size)`` not granule-aligned: ``pr_err("unaligned: ...")`` and 0 (no trace). Loop
        ``iommu_pgsize(iova, iova, size - unmapped)`` + ``unmap_pages`` while ``unmapped < size``,
        stopping when the driver returns 0. One ``iommu_unmap`` event = the ``iommu:unmap`` trace
        (``iova``, ``size``, ``unmapped_size``), with ``chunks`` = ``(iova, pgsize, count, returned)``.
        (Python name-mangles this method to ``_IommuDomain__iommu_unmap``; use
        :meth:`iommu_unmap_fast`.) 7.3.4 on a ``struct pt_iommu``: one ``pt->ops->unmap_range``
        (:meth:`~iovalab.kernel.pgtable.GenericPt.unmap_range`), its tables on the gather's freelist
        and one gather range ``(iova, unmapped)`` (``gather_range_pending``; none when queued).
        """
        if self.pgtable.pt_iommu:
            self._log.depth += 1
            try:
                pt = self.pgtable
                assert isinstance(pt, GenericPt), "pt_iommu is set only by the generic page table"
                unmapped, freed, chunks = pt.unmap_range(iova, size, self.iommu_pgsize, cpu)
            finally:
                self._log.depth -= 1
            gather.freelist += freed
            if unmapped and not gather.queued:
                iommu_iotlb_gather_add_range(gather, iova, unmapped)
            self._log.emit_values(_L, "__iommu_unmap", "iommu_unmap", unmapped, cpu, (iova, size, unmapped, chunks))
            return unmapped
        log = self._log
        g = self.granule
        if (iova | size) & (g - 1):
            log.emit(_L, "__iommu_unmap", "pr_err", 0, cpu=cpu, iova=iova, size=size, min_pagesz=g,
                     msg=f"unaligned: iova {iova:#x} size {size:#x} min_pagesz {g:#x}")
            return 0
        pt = self.pgtable
        bitmap = self.pgsize_bitmap
        cb = self._gather_cb(gather, cpu)
        intel = self.driver == "intel"
        orig = iova
        unmapped = 0
        chunks = []
        log.depth += 1
        try:
            while unmapped < size:
                if size - unmapped == g:
                    pgsize, count = g, 1
                else:
                    pgsize, count = iommu_pgsize(bitmap, iova, iova, size - unmapped)
                n = pt.unmap_pages(iova, pgsize, count, cb, cpu)
                if intel and pt.last_freed:
                    gather.freelist += pt.last_freed
                chunks.append((iova, pgsize, count, n))
                if not n:
                    break
                iova += n
                unmapped += n
        finally:
            log.depth -= 1
        log.emit_values(_L, "__iommu_unmap", "iommu_unmap", unmapped, cpu, (orig, size, unmapped, chunks))
        return unmapped

    def iommu_unmap_fast(self, iova: int, size: int, gather: IotlbGather, cpu: int = 0) -> int:
        """``iommu_unmap_fast(domain, iova, size, iotlb_gather)``: ``__iommu_unmap`` only; the caller
        syncs (``iommu_iotlb_sync``) or, with ``gather.queued``, leaves it to a flush queue."""
        return self.__iommu_unmap(iova, size, gather, cpu)

    def iommu_unmap(self, iova: int, size: int, cpu: int = 0) -> int:
        """``iommu_unmap(domain, iova, size)``: gather init, ``__iommu_unmap``, ``iommu_iotlb_sync``."""
        gather = IotlbGather()
        ret = self.__iommu_unmap(iova, size, gather, cpu)
        self.iommu_iotlb_sync(gather, cpu=cpu)
        return ret

    def iommu_iotlb_sync(self, gather: IotlbGather, cpu: int = 0, caller: str | None = None) -> None:
        """``iommu_iotlb_sync(domain, iotlb_gather)``: the driver's ``iotlb_sync`` invalidates
        ``[start, end]`` (one ``iotlb_invalidations`` event), then ``iommu_iotlb_gather_init``.
        ``caller`` names a helper that synced early (``iommu_iotlb_gather_add_page``)."""
        if not gather.empty():
            dropped = self._tlb_invalidate(gather.start, gather.end)
            self._log.emit_fields(_L, "iommu_iotlb_sync", "iotlb_invalidations", None, cpu, _SYNC_FIELDS,
                                  (gather.start, gather.end, gather.pgsize, "range", self._ops["iotlb_sync"],
                                   gather.freelist, caller is not None, caller, dropped))
        iommu_iotlb_gather_init(gather)

    def iommu_flush_iotlb_all(self, cpu: int = 0) -> None:
        """``iommu_flush_iotlb_all(domain)`` -> ``ops->flush_iotlb_all``: invalidate everything."""
        dropped = sum(len(d) for d in self._tlb.values()) + len(self._neg)
        self._tlb.clear()
        self._neg.clear()
        self._log.emit(_L, "iommu_flush_iotlb_all", "iotlb_invalidations", None, cpu=cpu, scope="all",
                       callback=self._ops["flush_iotlb_all"], dropped=dropped)

    def _driver_flush(self, iova: int, size: int, func: str, cpu: int) -> None:
        """Immediate invalidation inside the driver (``io_pgtable_tlb_flush_walk``,
        VT-d ``cache_tag_flush_range`` in ``switch_to_super_page``, AMD ``amd_iommu_domain_flush_pages``)."""
        dropped = self._tlb_invalidate(iova, iova + size - 1)
        self._log.emit(_L, func, "iotlb_invalidations", None, cpu=cpu, start=iova, end=iova + size - 1,
                       scope="range", dropped=dropped)

    # -- queries ---------------------------------------------------------------------------
    def iommu_iova_to_phys(self, iova: int) -> int:
        """``iommu_iova_to_phys(domain, iova)`` -> ``ops->iova_to_phys``: phys or 0."""
        return self.pgtable.iova_to_phys(iova)

    def snapshot(self) -> tuple:
        """Comparable copy of the translations (per leaf PTE); table-page counts are not included."""
        return self.pgtable.snapshot()
