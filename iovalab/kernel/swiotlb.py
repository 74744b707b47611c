"""The swiotlb bounce-buffer pool: ``kernel/dma/swiotlb.c`` and ``include/linux/swiotlb.h`` (6.16).

A :class:`SwiotlbPool` is one ``struct io_tlb_pool``: ``nslabs`` slots of ``IO_TLB_SIZE`` (2 KiB)
starting at a page-aligned physical ``base``, grouped in segments of ``IO_TLB_SEGSIZE`` (128) slots
that no allocation may straddle, plus ``nareas`` areas each with its own search cursor (``index``)
and ``used`` count. Per slot the kernel keeps ``list`` (free slots from here to the segment end, 0
when taken), ``orig_addr``, ``alloc_size`` and ``pad_slots``; so does this model, and
:meth:`SwiotlbPool.swiotlb_tbl_map_single` / :meth:`SwiotlbPool.swiotlb_tbl_unmap_single` update
them exactly as ``swiotlb_search_pool_area`` and ``swiotlb_release_slots`` do: the search starts at
the area's cursor, skips slots whose address breaks ``alloc_align_mask`` or the device's
``min_align_mask`` bits, steps by the alignment stride, rejects runs that would cross the device's
segment boundary, takes the first slot whose ``list >= nslots``, then re-links the free counts of the
preceding slots of the segment and moves the cursor past the allocation.
The slot allocator (``swiotlb_find_slots``, ``swiotlb_search_pool_area``, ``swiotlb_release_slots``)
is :class:`~iovalab.kernel.swiotlb_slots.SwiotlbSlotsMixin` (:mod:`iovalab.kernel.swiotlb_slots`), a
base of :class:`SwiotlbPool`; its names are still importable from here.

Events (layer ``swiotlb``): ``swiotlb_bounces`` (counter, once per successful map),
``swiotlb_copy`` (step, ``count`` = bytes copied by one ``swiotlb_bounce``), ``swiotlb_release``
(step), ``swiotlb_full`` (step, a failed map; the kernel's "swiotlb buffer is full" warning) and
``warn`` for the two ``dev_WARN_ONCE`` checks. :meth:`SwiotlbPool.iommu_dma_map_swiotlb` (the
dma-iommu.c caller) adds ``swiotlb_bounced`` (the tracepoint's fields) and
``swiotlb_zero_padding`` (``count`` = bytes zeroed for an untrusted device), layer ``dma``.

Simplified on purpose (and nothing else):

* Only the default pool; no ``CONFIG_SWIOTLB_DYNAMIC`` growth, transient pools or restricted-DMA
  pools. ``nareas`` defaults to 1 (the kernel uses ``num_possible_cpus()`` rounded up to a power of
  two); with ``nareas > 1`` the search starts in area ``cpu & (nareas - 1)`` and wraps, as
  ``swiotlb_find_slots`` does without ``CONFIG_SWIOTLB_DYNAMIC``.
* No data is held: copies are recorded as byte counts only. ``phys_to_dma`` is the identity.
* A failed search returns ``DMA_MAPPING_ERROR`` (the kernel's ``(phys_addr_t)DMA_MAPPING_ERROR``,
  which its callers turn into ``-ENOMEM``); the pool is unchanged and one ``swiotlb_full`` event is
  logged.
* Unmapping an address inside the pool that no live mapping starts at is not checked by the kernel
  (it would corrupt its slot lists); here it raises :class:`~iovalab.kernel.units.DmaError` ``-EINVAL``
  before touching anything.
* Where the kernel reads ``dma_get_min_align_mask(dev)`` at unmap time, this model uses the mask
  recorded at map time unless one is passed (the two differ only if a driver changes the mask while
  buffers are mapped).

Kernel facts worth knowing (not simplifications): ``swiotlb_tbl_map_single`` copies the original
buffer into the slot for **every** direction, including ``DMA_FROM_DEVICE`` (so that a partial
device write cannot expose stale bounce-buffer bytes), and ignores ``DMA_ATTR_SKIP_CPU_SYNC`` for that
copy; the copy back on unmap happens only for ``DMA_FROM_DEVICE``/``DMA_BIDIRECTIONAL`` without
``DMA_ATTR_SKIP_CPU_SYNC``. The ``swiotlb_bounced`` tracepoint is emitted by the dma-iommu caller in
6.16 (drivers/iommu/dma-iommu.c: ``iommu_dma_map_swiotlb()``; include/trace/events/swiotlb.h);
a 2025 patch by Steven Rostedt moves it into ``swiotlb_tbl_map_single`` (same event order for IOMMU callers).
"""

from __future__ import annotations

from dataclasses import dataclass

from iovalab.kernel.device import (
    DMA_ATTR_NO_WARN,
    DMA_ATTR_SKIP_CPU_SYNC,
    DMA_BIDIRECTIONAL,
    DMA_FROM_DEVICE,
    DMA_TO_DEVICE,
    U32_MAX,
    Device,
    dma_dir_name,
)
from iovalab.kernel.events import EventLog
from iovalab.kernel.swiotlb_slots import (
    INVALID_PHYS_ADDR,
    IO_TLB_SEGSIZE,
    IO_TLB_SHIFT,
    IO_TLB_SIZE,
    SwiotlbSlotsMixin,
    get_max_slots,
    io_tlb_offset,
    iommu_is_span_boundary,
    nr_slots,
    swiotlb_align_offset,
)
from iovalab.kernel.units import DMA_MAPPING_ERROR, EINVAL, PAGE_SIZE, ULONG_MAX, U64_MASK, DmaError, is_power_of_2

__all__ = [
    "IO_TLB_SHIFT", "IO_TLB_SIZE", "IO_TLB_SEGSIZE", "IO_TLB_DEFAULT_SIZE", "INVALID_PHYS_ADDR",
    "io_tlb_offset", "nr_slots", "get_max_slots", "iommu_is_span_boundary", "swiotlb_align_offset",
    "swiotlb_max_mapping_size", "format_swiotlb_bounced",
    "SwiotlbMapping", "SwiotlbPool",
]

#: ``IO_TLB_DEFAULT_SIZE``: default pool size, 64 MiB (32768 slots).
IO_TLB_DEFAULT_SIZE = 64 << 20

_L = "swiotlb"


def swiotlb_max_mapping_size(min_align_mask: int) -> int:
    """``size_t swiotlb_max_mapping_size(struct device *dev)`` (swiotlb.c).

    ``IO_TLB_SIZE * IO_TLB_SEGSIZE`` (256 KiB) minus ``roundup(min_align_mask, IO_TLB_SIZE)`` when
    the device has a ``min_align_mask`` (NVMe: 256 KiB - 4 KiB = 258048). dma-iommu reports it as
    ``dma_max_mapping_size()`` for untrusted devices.
    """
    min_align = -(-min_align_mask // IO_TLB_SIZE) * IO_TLB_SIZE if min_align_mask else 0
    return IO_TLB_SIZE * IO_TLB_SEGSIZE - min_align


def format_swiotlb_bounced(args: dict) -> str:
    """The ``TP_printk`` text of a ``swiotlb_bounced`` event (include/trace/events/swiotlb.h).

    ``"dev_name: %s dma_mask=%llx dev_addr=%llx size=%zu %s"`` with ``FORCE``/``NORMAL`` last
    (include/trace/events/swiotlb.h, 6.16); ``args`` is the ``args`` dict of the event.
    """
    return (f"dev_name: {args['dev_name']} dma_mask={args['dma_mask']:x} dev_addr={args['dev_addr']:x} "
            f"size={args['size']} {args['force']}")


def _check_mask(what: str, mask: int, limit: int = U32_MAX) -> None:
    if (not isinstance(mask, int) or isinstance(mask, bool) or not 0 <= mask <= limit
            or (mask & (mask + 1))):
        raise ValueError(f"{what} {mask!r} must be 0 or 2^n - 1 and at most {limit:#x}")


@dataclass(frozen=True)
class SwiotlbMapping:
    """One live bounce mapping (model bookkeeping, not a kernel struct).

    ``tlb_addr`` is what ``swiotlb_tbl_map_single`` returned; ``first_slot``/``nslots`` cover the
    whole allocation including padding slots; ``min_align_mask`` is the device's mask at map time.
    """

    tlb_addr: int
    orig_addr: int
    mapping_size: int
    alloc_align_mask: int
    min_align_mask: int
    first_slot: int
    nslots: int
    dir: int


class SwiotlbPool(SwiotlbSlotsMixin):
    """``struct io_tlb_pool`` after ``swiotlb_init_io_tlb_pool()`` (kernel/dma/swiotlb.c).

    :param base: ``phys_addr_t start``, page aligned (the kernel allocates it with ``PAGE_SIZE``
        alignment, normally below 4 GiB).
    :param size: bytes, a positive multiple of ``IO_TLB_SEGSIZE * IO_TLB_SIZE`` (256 KiB), default
        ``IO_TLB_DEFAULT_SIZE`` (64 MiB); ``nslabs = size >> IO_TLB_SHIFT``.
    :param log: the shared :class:`~iovalab.kernel.events.EventLog` (a new one when omitted).
    :param nareas: ``unsigned int nareas``, a power of two with at least one segment per area.
    :param force_bounce: ``io_tlb_mem::force_bounce`` (``swiotlb=force``); only shown in the trace.
    :param page_size: the simulated kernel's ``PAGE_SIZE``; ``None``: 4K until a
        :class:`~iovalab.kernel.dma_iommu.DmaDomain` attaches the pool and gives its own.
    """

    def __init__(self, base: int, size: int = IO_TLB_DEFAULT_SIZE, log: EventLog | None = None, *,
                 nareas: int = 1, force_bounce: bool = False, page_size: int | None = None):
        self.page_size = PAGE_SIZE if page_size is None else page_size
        self.page_size_fixed = page_size is not None
        if not isinstance(base, int) or base < 0 or base % self.page_size:
            raise ValueError(f"base {base!r} must be a non-negative, PAGE_SIZE ({self.page_size:#x}) aligned "
                             "physical address (swiotlb_memblock_alloc uses PAGE_SIZE alignment)")
        seg_bytes = IO_TLB_SEGSIZE * IO_TLB_SIZE
        if not isinstance(size, int) or size <= 0 or size % seg_bytes:
            raise ValueError(f"size {size!r} must be a positive multiple of IO_TLB_SEGSIZE * IO_TLB_SIZE "
                             f"= {seg_bytes:#x} bytes (nslabs is ALIGNed to IO_TLB_SEGSIZE)")
        if base + size - 1 > U64_MASK:
            raise ValueError(f"pool {base:#x}+{size:#x} does not fit in a 64-bit physical address space")
        nslabs = size >> IO_TLB_SHIFT
        if not isinstance(nareas, int) or not is_power_of_2(nareas) or nslabs < nareas * IO_TLB_SEGSIZE:
            raise ValueError(f"nareas {nareas!r} must be a power of two with nslabs ({nslabs}) >= "
                             f"nareas * IO_TLB_SEGSIZE (limit_nareas)")
        self.log = log if log is not None else EventLog()
        self.start = base
        self.end = base + size
        self.nslabs = nslabs
        self.nareas = nareas
        self.area_nslabs = nslabs // nareas
        self.force_bounce = force_bounce
        # per-slot state (struct io_tlb_slot)
        self.list = [min(IO_TLB_SEGSIZE - io_tlb_offset(i), nslabs - i) for i in range(nslabs)]
        self.orig_addr = [INVALID_PHYS_ADDR] * nslabs
        self.alloc_size = [0] * nslabs
        self.pad_slots = [0] * nslabs
        # per-area state (struct io_tlb_area)
        self.area_index = [0] * nareas
        self.area_used = [0] * nareas
        self.mappings: dict[int, SwiotlbMapping] = {}
        self._warned_align = False
        self._warned_overflow = False
        self.log.emit(_L, "swiotlb_init_io_tlb_pool", "step", start=base, nslabs=nslabs, nareas=nareas)

    # -- state -------------------------------------------------------------------------------
    def use_page_size(self, page_size: int) -> None:
        """The pool belongs to a kernel whose ``PAGE_SIZE`` is ``page_size`` (its DMA domain's).
        ValueError, nothing changed, if the pool was built for another page size or its base is
        not aligned to this one."""
        if self.page_size_fixed and page_size != self.page_size:
            raise ValueError(f"swiotlb pool built for PAGE_SIZE {self.page_size:#x} cannot serve a kernel "
                             f"with PAGE_SIZE {page_size:#x}")
        if self.start % page_size:
            raise ValueError(f"swiotlb pool base {self.start:#x} is not PAGE_SIZE ({page_size:#x}) aligned")
        self.page_size = page_size

    @property
    def used(self) -> int:
        """Slots in use (``mem_pool_used``: sum of the areas' ``used``)."""
        return sum(self.area_used)

    @property
    def free(self) -> int:
        """Slots not in use."""
        return self.nslabs - self.used

    def used_slots(self) -> int:
        """Same as :attr:`used`."""
        return self.used

    def free_slots(self) -> int:
        """Same as :attr:`free`."""
        return self.free

    def is_swiotlb_buffer(self, phys: int) -> bool:
        """``is_swiotlb_buffer(dev, phys_addr_t paddr)``: ``start <= paddr < end``."""
        return self.start <= phys < self.end

    def snapshot(self) -> tuple:
        """Everything that defines the pool state, for equality checks (tests, "unchanged after error")."""
        return (tuple(self.list), tuple(self.orig_addr), tuple(self.alloc_size), tuple(self.pad_slots),
                tuple(self.area_index), tuple(self.area_used), tuple(sorted(self.mappings.items())))

    def slot_addr(self, idx: int) -> int:
        """``slot_addr(start, idx)``: ``start + (idx << IO_TLB_SHIFT)``."""
        return self.start + (idx << IO_TLB_SHIFT)

    # -- copies --------------------------------------------------------------------------------
    def swiotlb_bounce(self, tlb_addr: int, size: int, dir: int, min_align_mask: int, *,
                       cpu: int = 0) -> int:
        """``swiotlb_bounce(dev, phys_addr_t tlb_addr, size_t size, dir, pool)`` (swiotlb.c).

        Copies between the slot and the original buffer (``DMA_TO_DEVICE``: original → slot; else
        slot → original); records one ``swiotlb_copy`` event with ``count`` = bytes. Does nothing for
        a slot without an original address. A ``size`` beyond the allocation is cut to it after a
        ``dev_WARN_ONCE("Buffer overflow detected...")``. Returns the bytes copied.
        """
        index = (tlb_addr - self.start) >> IO_TLB_SHIFT
        orig = self.orig_addr[index]
        if orig == INVALID_PHYS_ADDR:
            return 0
        avail = self.alloc_size[index]
        tlb_offset = (tlb_addr & (IO_TLB_SIZE - 1)) - swiotlb_align_offset(min_align_mask, 0, orig)
        orig += tlb_offset
        avail -= tlb_offset
        if size > avail:
            if not self._warned_overflow:
                self._warned_overflow = True
                self.log.warn(_L, "swiotlb_bounce", 0, "Buffer overflow detected: mapping size larger "
                              "than the allocation (dev_WARN_ONCE); copy cut to the allocation",
                              cpu=cpu, alloc_size=avail, size=size)
            size = avail
        self.log.emit(_L, "swiotlb_bounce", "swiotlb_copy", None, cpu=cpu, count=size,
                      tlb_addr=tlb_addr, orig_addr=orig, size=size, dir=dma_dir_name(dir))
        return size

    # -- map / unmap ---------------------------------------------------------------------------
    def swiotlb_tbl_map_single(self, orig_addr: int, mapping_size: int, alloc_align_mask: int,
                               min_align_mask: int, dir: int, cpu: int = 0, *, attrs: int = 0,
                               dev: Device | None = None, seg_boundary: int | None = None) -> int:
        """``phys_addr_t swiotlb_tbl_map_single(struct device *dev, phys_addr_t orig_addr,
        size_t mapping_size, unsigned int alloc_align_mask, enum dma_data_direction dir,
        unsigned long attrs)`` (kernel/dma/swiotlb.c).

        :param orig_addr: physical address of the buffer to bounce.
        :param mapping_size: bytes to bounce (>= 1).
        :param alloc_align_mask: alignment of the allocation; dma-iommu passes ``iova_mask`` (granule-1).
        :param min_align_mask: ``dma_get_min_align_mask(dev)``; must equal ``dev``'s if ``dev`` is given.
        :param dir: ``enum dma_data_direction``. :param cpu: CPU doing the mapping (picks the area).
        :param attrs: ``DMA_ATTR_NO_WARN`` silences the "buffer is full" warning (still logged).
        :param dev: optional :class:`~iovalab.kernel.device.Device`: gives the segment boundary and gets
            ``dma_reset_need_sync``.
        :param seg_boundary: ``dma_get_seg_boundary(dev)``; default: ``dev``'s, else ``ULONG_MAX``.

        Steps: ``offset = swiotlb_align_offset(dev, alloc_align_mask, orig_addr)``;
        ``size = ALIGN(mapping_size + offset, alloc_align_mask + 1)``; find ``nr_slots(size)`` slots;
        ``pad_slots = offset >> IO_TLB_SHIFT`` whole slots are skipped and the returned address is
        ``slot_addr(index + pad_slots) + (offset & (IO_TLB_SIZE - 1))``, so it keeps the
        ``min_align_mask`` bits of ``orig_addr``; then the original is copied in (every direction).
        Returns the bounce address, or ``DMA_MAPPING_ERROR`` with the pool unchanged.
        """
        if not isinstance(orig_addr, int) or not 0 <= orig_addr <= U64_MASK:
            raise ValueError(f"orig_addr {orig_addr!r} must be a 64-bit physical address")
        if not isinstance(mapping_size, int) or mapping_size < 1:
            raise ValueError(f"mapping_size {mapping_size!r} must be >= 1 (a zero-slot request BUG_ONs)")
        _check_mask("alloc_align_mask", alloc_align_mask)
        _check_mask("min_align_mask", min_align_mask)
        dma_dir_name(dir)
        if not isinstance(cpu, int) or cpu < 0:
            raise ValueError(f"cpu {cpu!r} must be a CPU number >= 0")
        if dev is not None:
            if min_align_mask != dev.dma_get_min_align_mask():
                raise ValueError(f"min_align_mask {min_align_mask:#x} differs from the device's "
                                 f"{dev.dma_get_min_align_mask():#x} (the kernel reads it from dev)")
            if seg_boundary is None:
                seg_boundary = dev.dma_get_seg_boundary()
        if seg_boundary is None:
            seg_boundary = ULONG_MAX
        _check_mask("seg_boundary", seg_boundary, ULONG_MAX)
        if seg_boundary == 0:
            raise ValueError("seg_boundary 0 is not a boundary mask (dma_get_seg_boundary never returns 0)")

        if alloc_align_mask > self.page_size - 1 and not self._warned_align:
            self._warned_align = True
            self.log.warn(_L, "swiotlb_tbl_map_single", 0, "Alloc alignment may prevent fulfilling "
                          "requests with max mapping_size (dev_WARN_ONCE: alloc_align_mask > ~PAGE_MASK)",
                          cpu=cpu, alloc_align_mask=alloc_align_mask)
        offset = swiotlb_align_offset(min_align_mask, alloc_align_mask, orig_addr)
        size = -(-(mapping_size + offset) // (alloc_align_mask + 1)) * (alloc_align_mask + 1)
        slot, area, index = self.swiotlb_find_slots(cpu, orig_addr, size, alloc_align_mask,
                                                    min_align_mask, seg_boundary)
        if slot < 0:
            self.log.emit(_L, "swiotlb_tbl_map_single", "swiotlb_full", DMA_MAPPING_ERROR, cpu=cpu,
                          orig_addr=orig_addr, mapping_size=mapping_size, size=size,
                          total_slots=self.nslabs, used_slots=self.used,
                          warned=not (attrs & DMA_ATTR_NO_WARN))
            return DMA_MAPPING_ERROR

        small = swiotlb_align_offset(min_align_mask, 0, orig_addr)
        nslots = self._take_slots(slot, area, index, size, small)
        if dev is not None:
            dev.dma_reset_need_sync()
        pad_slots = offset >> IO_TLB_SHIFT
        offset &= IO_TLB_SIZE - 1
        first = slot + pad_slots
        self.pad_slots[first] = pad_slots
        for i in range(nr_slots(size) - pad_slots):
            self.orig_addr[first + i] = orig_addr + (i << IO_TLB_SHIFT)
        tlb_addr = self.slot_addr(first) + offset
        self.mappings[tlb_addr] = SwiotlbMapping(tlb_addr, orig_addr, mapping_size, alloc_align_mask,
                                                 min_align_mask, slot, nslots, dir)
        self.log.emit(_L, "swiotlb_tbl_map_single", "swiotlb_bounces", tlb_addr, cpu=cpu,
                      orig_addr=orig_addr, mapping_size=mapping_size, alloc_align_mask=alloc_align_mask,
                      min_align_mask=min_align_mask, dir=dma_dir_name(dir), index=slot, nslots=nslots,
                      pad_slots=pad_slots, offset=offset)
        self.log.depth += 1
        try:
            self.swiotlb_bounce(tlb_addr, mapping_size, DMA_TO_DEVICE, min_align_mask, cpu=cpu)
        finally:
            self.log.depth -= 1
        return tlb_addr

    def lookup_mapping(self, func: str, tlb_addr: int, min_align_mask: int | None,
                       dev: Device | None) -> SwiotlbMapping:
        """The live mapping at ``tlb_addr`` that ``func`` would release or sync; DmaError for an
        address ``swiotlb_tbl_map_single`` never returned, ValueError for another ``min_align_mask``."""
        m = self.mappings.get(tlb_addr)
        if m is None:
            raise DmaError(-EINVAL, f"{tlb_addr:#x} is inside the swiotlb pool but is not an address "
                           "swiotlb_tbl_map_single returned (the kernel does not check and would corrupt "
                           "its slot lists)", func)
        if dev is not None and min_align_mask is None:
            min_align_mask = dev.dma_get_min_align_mask()
        if min_align_mask is not None and min_align_mask != m.min_align_mask:
            raise ValueError(f"min_align_mask {min_align_mask:#x} differs from {m.min_align_mask:#x} used "
                             f"when {tlb_addr:#x} was mapped (the kernel would release the wrong slots)")
        return m

    def swiotlb_tbl_unmap_single(self, tlb_addr: int, mapping_size: int, dir: int, attrs: int = 0,
                                 cpu: int = 0, *, min_align_mask: int | None = None,
                                 dev: Device | None = None) -> bool:
        """``void swiotlb_tbl_unmap_single(struct device *dev, phys_addr_t addr, size_t size,
        enum dma_data_direction dir, unsigned long attrs)`` (include/linux/swiotlb.h →
        ``__swiotlb_tbl_unmap_single`` in swiotlb.c).

        A no-op returning ``False`` when ``tlb_addr`` is not in the pool (``swiotlb_find_pool`` finds
        nothing; dma-iommu calls it unconditionally). Otherwise: copy back ``mapping_size`` bytes for
        ``DMA_FROM_DEVICE``/``DMA_BIDIRECTIONAL`` unless ``DMA_ATTR_SKIP_CPU_SYNC``, release the
        slots, return ``True``.
        """
        if not self.is_swiotlb_buffer(tlb_addr):
            return False
        if not isinstance(mapping_size, int) or mapping_size < 0:
            raise ValueError(f"mapping_size {mapping_size!r} must be >= 0 (size_t)")
        dma_dir_name(dir)
        m = self.lookup_mapping("swiotlb_tbl_unmap_single", tlb_addr, min_align_mask, dev)
        self.log.emit(_L, "swiotlb_tbl_unmap_single", "step", None, cpu=cpu, tlb_addr=tlb_addr,
                      mapping_size=mapping_size, dir=dma_dir_name(dir))
        self.log.depth += 1
        try:
            if not (attrs & DMA_ATTR_SKIP_CPU_SYNC) and dir in (DMA_FROM_DEVICE, DMA_BIDIRECTIONAL):
                self.swiotlb_bounce(tlb_addr, mapping_size, DMA_FROM_DEVICE, m.min_align_mask, cpu=cpu)
            self.swiotlb_release_slots(tlb_addr, m.min_align_mask, cpu=cpu)
        finally:
            self.log.depth -= 1
        del self.mappings[tlb_addr]
        return True

    def swiotlb_sync_single_for_device(self, tlb_addr: int, size: int, dir: int, cpu: int = 0) -> int:
        """``__swiotlb_sync_single_for_device(dev, tlb_addr, size, dir, pool)``: copy to the slot
        for ``DMA_TO_DEVICE``/``DMA_BIDIRECTIONAL`` (nothing for ``DMA_FROM_DEVICE``). Returns bytes."""
        if not self.is_swiotlb_buffer(tlb_addr):
            return 0
        m = self.lookup_mapping("swiotlb_sync_single_for_device", self._start_of(tlb_addr), None, None)
        if dir in (DMA_TO_DEVICE, DMA_BIDIRECTIONAL):
            return self.swiotlb_bounce(tlb_addr, size, DMA_TO_DEVICE, m.min_align_mask, cpu=cpu)
        if dir != DMA_FROM_DEVICE:
            raise ValueError(f"dir {dir!r}: the kernel BUG_ONs a sync with DMA_NONE")
        return 0

    def swiotlb_sync_single_for_cpu(self, tlb_addr: int, size: int, dir: int, cpu: int = 0) -> int:
        """``__swiotlb_sync_single_for_cpu(dev, tlb_addr, size, dir, pool)``: copy back for
        ``DMA_FROM_DEVICE``/``DMA_BIDIRECTIONAL`` (nothing for ``DMA_TO_DEVICE``). Returns bytes."""
        if not self.is_swiotlb_buffer(tlb_addr):
            return 0
        m = self.lookup_mapping("swiotlb_sync_single_for_cpu", self._start_of(tlb_addr), None, None)
        if dir in (DMA_FROM_DEVICE, DMA_BIDIRECTIONAL):
            return self.swiotlb_bounce(tlb_addr, size, DMA_FROM_DEVICE, m.min_align_mask, cpu=cpu)
        if dir != DMA_TO_DEVICE:
            raise ValueError(f"dir {dir!r}: the kernel BUG_ONs a sync with DMA_NONE")
        return 0

    def _start_of(self, addr: int) -> int:
        """The ``tlb_addr`` of the live mapping containing ``addr`` (syncs may point inside one)."""
        for t, m in self.mappings.items():
            if t <= addr < t + m.mapping_size:
                return t
        return addr

    # -- the dma-iommu caller --------------------------------------------------------------------
    def iommu_dma_map_swiotlb(self, dev: Device, phys: int, size: int, granule: int, dir: int,
                              attrs: int = 0, cpu: int = 0) -> int:
        """``static phys_addr_t iommu_dma_map_swiotlb(struct device *dev, phys_addr_t phys,
        size_t size, enum dma_data_direction dir, unsigned long attrs)`` (drivers/iommu/dma-iommu.c).

        :param granule: the IOVA granule (``iovad->granule``); ``iova_mask = granule - 1`` is the
            allocation alignment.

        Emits the ``swiotlb_bounced`` tracepoint (fields: ``dev_name``, ``dma_mask`` as
        ``*dev->dma_mask``, ``dev_addr`` = ``phys``, ``size``, ``FORCE``/``NORMAL``), calls
        :meth:`swiotlb_tbl_map_single` with ``iova_mask``, and for untrusted devices zeroes the bytes
        between the granule start and the buffer and between the buffer end and the next granule
        boundary (one ``swiotlb_zero_padding`` event, ``count`` = bytes, with both byte counts).
        Returns the bounce address or ``DMA_MAPPING_ERROR``.
        """
        if not is_power_of_2(granule) or granule > self.page_size:
            raise ValueError(f"granule {granule!r} must be a power of two <= PAGE_SIZE {self.page_size:#x}")
        # validate everything swiotlb_tbl_map_single would reject before the trace event is logged
        if not isinstance(phys, int) or not 0 <= phys <= U64_MASK:
            raise ValueError(f"phys {phys!r} must be a 64-bit physical address")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size {size!r} must be >= 1")
        dma_dir_name(dir)
        if not isinstance(cpu, int) or cpu < 0:
            raise ValueError(f"cpu {cpu!r} must be a CPU number >= 0")
        self.log.emit("dma", "trace_swiotlb_bounced", "swiotlb_bounced", None, cpu=cpu,
                      dev_name=dev.name, dma_mask=dev.dma_mask, dev_addr=phys, size=size,
                      force="FORCE" if self.force_bounce else "NORMAL")
        tlb = self.swiotlb_tbl_map_single(phys, size, granule - 1, dev.dma_get_min_align_mask(), dir, cpu,
                                          attrs=attrs, dev=dev)
        if tlb != DMA_MAPPING_ERROR and dev.dev_is_untrusted():
            pre = tlb - (tlb & ~(granule - 1))
            end = tlb + size
            post = ((end + granule - 1) & ~(granule - 1)) - end
            self.log.emit("dma", "iommu_dma_map_swiotlb", "swiotlb_zero_padding", None, cpu=cpu,
                          count=pre + post, tlb_addr=tlb, pre_bytes=pre, post_bytes=post)
        return tlb
