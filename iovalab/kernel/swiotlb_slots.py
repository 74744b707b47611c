"""The swiotlb slot allocator: ``kernel/dma/swiotlb.c`` (6.16) from ``get_max_slots`` and
``wrap_area_index`` to ``swiotlb_find_slots`` (the area search, ``swiotlb_search_pool_area``, whose
``found:`` block marks the slots used), and its free side ``swiotlb_release_slots``; with the slot
arithmetic they share (``io_tlb_offset``, ``nr_slots``, ``swiotlb_align_offset``, the ``IO_TLB_*``
constants of include/linux/swiotlb.h, ``iommu_is_span_boundary`` of include/linux/iommu-helper.h).

:class:`SwiotlbSlotsMixin` holds these for :class:`iovalab.kernel.swiotlb.SwiotlbPool`
(``struct io_tlb_pool``: the per-slot ``list``/``orig_addr``/``alloc_size``/``pad_slots`` arrays and
the per-area cursors it searches); the bounce copies (``swiotlb_bounce``), ``swiotlb_tbl_map_single``,
``swiotlb_tbl_unmap_single`` and the syncs, which call the allocator, stay in
:mod:`iovalab.kernel.swiotlb`, as does every name here (still importable from there).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from iovalab.kernel.events import EventLog
from iovalab.kernel.units import ULONG_MAX, U64_MASK, is_power_of_2

__all__ = [
    "IO_TLB_SHIFT", "IO_TLB_SIZE", "IO_TLB_SEGSIZE", "INVALID_PHYS_ADDR",
    "io_tlb_offset", "nr_slots", "get_max_slots", "iommu_is_span_boundary", "swiotlb_align_offset",
    "SwiotlbSlotsMixin",
]

#: ``IO_TLB_SHIFT`` (include/linux/swiotlb.h): log2 of the slot size.
IO_TLB_SHIFT = 11
#: ``IO_TLB_SIZE``: one slot, 2 KiB.
IO_TLB_SIZE = 1 << IO_TLB_SHIFT
#: ``IO_TLB_SEGSIZE``: slots per segment; the largest contiguous allocation (256 KiB).
IO_TLB_SEGSIZE = 128
#: ``INVALID_PHYS_ADDR`` (swiotlb.c): ``~(phys_addr_t)0``, marks a slot with no original buffer.
INVALID_PHYS_ADDR = U64_MASK

_L = "swiotlb"


def io_tlb_offset(val: int) -> int:
    """``io_tlb_offset(unsigned long val)``: position of slot ``val`` inside its segment."""
    return val & (IO_TLB_SEGSIZE - 1)


def nr_slots(val: int) -> int:
    """``nr_slots(u64 val)``: ``DIV_ROUND_UP(val, IO_TLB_SIZE)``."""
    return -(-val // IO_TLB_SIZE)


def get_max_slots(boundary_mask: int) -> int:
    """``get_max_slots(unsigned long boundary_mask)``: ``(boundary_mask >> IO_TLB_SHIFT) + 1``."""
    return (boundary_mask >> IO_TLB_SHIFT) + 1


def iommu_is_span_boundary(index: int, nr: int, shift: int, boundary_size: int) -> bool:
    """``iommu_is_span_boundary(unsigned int index, unsigned int nr, unsigned long shift,
    unsigned long boundary_size)`` (include/linux/iommu-helper.h).

    True if ``nr`` units starting at ``shift + index`` cross a multiple of ``boundary_size``.
    """
    if not is_power_of_2(boundary_size):  # the kernel BUG_ONs
        raise ValueError(f"boundary_size {boundary_size:#x} is not a power of two")
    shift = (shift + index) & (boundary_size - 1)
    return shift + nr > boundary_size


def swiotlb_align_offset(min_align_mask: int, align_mask: int, addr: int) -> int:
    """``swiotlb_align_offset(dev, unsigned int align_mask, u64 addr)`` (swiotlb.c).

    ``addr & dma_get_min_align_mask(dev) & (align_mask | (IO_TLB_SIZE - 1))``: the offset into the
    allocation that keeps the device's ``min_align_mask`` bits of ``addr``. Bits below
    ``IO_TLB_SHIFT`` become padding bytes; higher bits (up to ``align_mask``) become padding slots.
    Takes the device's ``min_align_mask`` (``unsigned int``) instead of ``dev``.
    """
    return addr & min_align_mask & (align_mask | (IO_TLB_SIZE - 1))


class SwiotlbSlotsMixin:
    """The slot allocator of :class:`~iovalab.kernel.swiotlb.SwiotlbPool`. The host provides what is
    declared below."""

    if TYPE_CHECKING:
        log: EventLog
        start: int
        nareas: int
        area_nslabs: int
        page_size: int
        list: builtins.list[int]
        orig_addr: builtins.list[int]
        alloc_size: builtins.list[int]
        pad_slots: builtins.list[int]
        area_index: builtins.list[int]
        area_used: builtins.list[int]

    # -- search --------------------------------------------------------------------------------
    def _wrap_area_index(self, index: int) -> int:
        """``wrap_area_index(mem, index)``: 0 once ``index >= area_nslabs``."""
        return 0 if index >= self.area_nslabs else index

    def swiotlb_search_pool_area(self, area_index: int, orig_addr: int, alloc_size: int,
                                 alloc_align_mask: int, min_align_mask: int,
                                 boundary_mask: int = ULONG_MAX) -> tuple[int, int]:
        """``swiotlb_search_pool_area(dev, pool, area_index, orig_addr, alloc_size,
        alloc_align_mask)`` (swiotlb.c), the read-only half.

        :param alloc_size: ``size_t``, bytes including the alignment padding.
        :param alloc_align_mask: ``unsigned int``; :param min_align_mask: ``dma_get_min_align_mask``;
        :param boundary_mask: ``dma_get_seg_boundary(dev)``.
        Returns ``(slot_index, area-relative index)`` of the first slot that fits, or ``(-1, -1)``.
        Nothing is changed; :meth:`_take_slots` does the "found:" part.
        """
        tbl_dma_addr = self.start & boundary_mask
        max_slots = get_max_slots(boundary_mask)
        iotlb_align_mask = min_align_mask
        nslots = nr_slots(alloc_size)
        # streaming mappings with no alignment request keep the historical page alignment
        if not alloc_align_mask and not iotlb_align_mask and alloc_size >= self.page_size:
            alloc_align_mask = self.page_size - 1
        alloc_align_mask |= IO_TLB_SIZE - 1
        iotlb_align_mask &= ~alloc_align_mask
        stride = get_max_slots(max(alloc_align_mask, iotlb_align_mask))
        if nslots > self.area_nslabs - self.area_used[area_index]:
            return -1, -1
        slot_base = area_index * self.area_nslabs
        index = self.area_index[area_index]
        slots_checked = 0
        tbl_shift = nr_slots(tbl_dma_addr)
        while slots_checked < self.area_nslabs:
            slot_index = slot_base + index
            tlb_addr = tbl_dma_addr + (slot_index << IO_TLB_SHIFT)
            if (tlb_addr & alloc_align_mask) or (
                    orig_addr and (tlb_addr & iotlb_align_mask) != (orig_addr & iotlb_align_mask)):
                index = self._wrap_area_index(index + 1)
                slots_checked += 1
                continue
            if not iommu_is_span_boundary(slot_index, nslots, tbl_shift, max_slots):
                if self.list[slot_index] >= nslots:
                    return slot_index, index
            index = self._wrap_area_index(index + stride)
            slots_checked += stride
        return -1, -1

    def swiotlb_find_slots(self, cpu: int, orig_addr: int, alloc_size: int, alloc_align_mask: int,
                           min_align_mask: int, boundary_mask: int = ULONG_MAX) -> tuple[int, int, int]:
        """``swiotlb_find_slots(dev, orig_addr, alloc_size, alloc_align_mask, &pool)`` (swiotlb.c,
        ``!CONFIG_SWIOTLB_DYNAMIC``): try every area, starting at ``cpu & (nareas - 1)``.

        Returns ``(slot_index, area_index, area-relative index)`` or ``(-1, -1, -1)``; read-only.
        """
        start = i = cpu & (self.nareas - 1)
        while True:
            slot, idx = self.swiotlb_search_pool_area(i, orig_addr, alloc_size, alloc_align_mask,
                                                      min_align_mask, boundary_mask)
            if slot >= 0:
                return slot, i, idx
            i += 1
            if i >= self.nareas:
                i = 0
            if i == start:
                return -1, -1, -1

    def _take_slots(self, slot_index: int, area_index: int, index: int, alloc_size: int,
                    offset: int) -> int:
        """The ``found:`` block of ``swiotlb_search_pool_area``: mark the run used, re-link the
        free counts of the preceding slots in the segment, advance the area cursor. Returns nslots."""
        nslots = nr_slots(alloc_size)
        for i in range(slot_index, slot_index + nslots):
            self.list[i] = 0
            self.alloc_size[i] = alloc_size - (offset + ((i - slot_index) << IO_TLB_SHIFT))
        count = 0
        i = slot_index - 1
        while io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 and self.list[i]:
            count += 1
            self.list[i] = count
            i -= 1
        self.area_index[area_index] = self._wrap_area_index(index + nslots)
        self.area_used[area_index] += nslots
        return nslots

    def swiotlb_release_slots(self, tlb_addr: int, min_align_mask: int, *, cpu: int = 0) -> int:
        """``swiotlb_release_slots(dev, phys_addr_t tlb_addr, pool)`` (swiotlb.c).

        Frees the whole allocation (padding slots included) and merges the free counts with the
        free slots after and before it inside the segment. Returns the number of slots freed.
        Call through :meth:`swiotlb_tbl_unmap_single`, which checks ``tlb_addr``.
        """
        offset = swiotlb_align_offset(min_align_mask, 0, tlb_addr)
        index = (tlb_addr - offset - self.start) >> IO_TLB_SHIFT
        index -= self.pad_slots[index]
        nslots = nr_slots(self.alloc_size[index] + offset)
        aindex = index // self.area_nslabs
        seg_end = -(-(index + 1) // IO_TLB_SEGSIZE) * IO_TLB_SEGSIZE
        count = self.list[index + nslots] if index + nslots < seg_end else 0
        for i in range(index + nslots - 1, index - 1, -1):
            count += 1
            self.list[i] = count
            self.orig_addr[i] = INVALID_PHYS_ADDR
            self.alloc_size[i] = 0
            self.pad_slots[i] = 0
        i = index - 1
        while io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 and self.list[i]:
            count += 1
            self.list[i] = count
            i -= 1
        self.area_used[aindex] -= nslots
        self.log.emit(_L, "swiotlb_release_slots", "swiotlb_release", None, cpu=cpu,
                      tlb_addr=tlb_addr, index=index, nslots=nslots)
        return nslots
