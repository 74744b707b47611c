"""Read-only walks of an IO page table (Linux 6.17): ``iova_to_phys`` and the queries built on the same walk.

The kernel keeps its read-only walks apart from map and unmap: ``drivers/iommu/io-pgtable-arm.c``
(6.17) has a visitor section (``__arm_lpae_iopte_walk``, ``io_pgtable_visit``) that
``arm_lpae_iova_to_phys`` (``visit_iova_to_phys``), ``arm_lpae_pgtable_walk`` (``visit_pgtable_walk``)
and ``arm_lpae_read_and_clear_dirty`` share; 7.3.4's ``drivers/iommu/generic_pt/iommu_pt.h`` walks with
``pt_walk_range`` (``drivers/iommu/generic_pt/pt_iter.h``) for ``iova_to_phys`` and
``read_and_clear_dirty``. VT-d (``intel_iommu_iova_to_phys``, ``pfn_to_dma_pte`` with target level 0, which
allocates nothing)
and AMD v1 (``iommu_v1_iova_to_phys``, ``fetch_pte``) walk the same way.

:class:`IoPgtableWalkMixin` holds these for :class:`iovalab.kernel.pgtable.ops.IoPgtable`: the hardware
walk (``_entry``, ``_leaf``), ``lookup``/``iova_to_phys``/``walk``, and the model's own queries with no
kernel analogue (``find_mapped``, ``first_unmapped``, ``mapped_ranges``, counts, ``occupancy``,
``snapshot``). Every name is still importable from :mod:`~iovalab.kernel.pgtable.ops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import iovalab.kernel.pgtable.table as table
from iovalab.kernel.pgtable.table import Table

__all__ = ["FEW_GRANULES", "IoPgtableWalkMixin"]

#: a non-empty range of up to this many granules inside the table (a request of a few pages) is queried
#: entry by entry with hardware walks (:meth:`IoPgtableWalkMixin._entry`): cheaper than the numpy table walks
#: of :mod:`~iovalab.kernel.pgtable.table` there, same answer (:meth:`IoPgtableWalkMixin.first_unmapped`,
#: ``find_mapped``); ``IoPgtable.map_pages`` reads and writes a run of up to this many PTEs as Python ints,
#: not numpy vectors
FEW_GRANULES = 32


class IoPgtableWalkMixin:
    """The read-only walks of :class:`~iovalab.kernel.pgtable.ops.IoPgtable`. The host provides what
    is declared below."""

    if TYPE_CHECKING:
        root: Table
        granule: int
        ias: int
        nlevels: int
        _sh: list[int]
        _mask: list[int]
        _block: list[int]
        _leaves: int
        _ntables: int
        _levels: tuple[tuple[int, int, int], ...]
        _top: int
        _few_span: int

        def level_name(self, i: int) -> str: ...
        def _decode(self, v: int, i: int) -> tuple[int, int, int]: ...
        def _decode_vec(self, v: np.ndarray, iov: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]: ...

    # -- the hardware walk --------------------------------------------------------------------
    def _leaf(self, iova: int) -> tuple[Table, int, int, int] | None:
        """The hardware walk: ``(table, index, level, PTE value)`` of the leaf that maps ``iova``."""
        if iova >> self.ias or iova < 0:
            return None
        hit = self._entry(iova)
        return hit if hit[3] else None

    def _entry(self, iova: int) -> tuple[Table, int, int, int]:
        """The walk of ``iova`` (``0 <= iova < 2**ias``) to where it stops: ``(table, index, level, PTE
        value)`` of the leaf that maps it, or of the empty entry (value 0) that covers it."""
        t = self.root
        for i, s, m in self._levels:
            idx = (iova >> s) & m
            k = t.kids.get(idx)
            if k is None:
                return t, idx, i, t.ent.item(idx)
            t = k
        raise AssertionError("unreachable: the bottom level has no child tables")

    # -- lookups ------------------------------------------------------------------------------
    def lookup(self, iova: int) -> tuple[int, int, int] | None:
        """Hardware-style walk: ``(phys of iova, leaf page size, IOMMU prot)`` or None."""
        hit = self._leaf(iova)
        if hit is None:
            return None
        _, _, i, v = hit
        base, size, prot = self._decode(v, i)
        return base + (iova & (size - 1)), size, prot

    def iova_to_phys(self, iova: int) -> int:
        """``ops->iova_to_phys(ops, iova)`` (``arm_lpae_iova_to_phys``, ``intel_iommu_iova_to_phys``,
        ``iommu_v1_iova_to_phys``): the physical address, or 0 when nothing is mapped."""
        r = self.lookup(iova)
        return 0 if r is None else r[0]

    def walk(self, iova: int) -> list[dict]:
        """Every PTE the walk of ``iova`` reads (like ``arm_lpae_pgtable_walk``), for views."""
        out = []
        t = self.root
        for i in range(self.nlevels):
            idx = (iova >> self._sh[i]) & self._mask[i]
            v = int(t.ent[idx])
            k = t.kids.get(idx)
            kind = "table" if k is not None else ("leaf" if v else "none")
            out.append({"level": self.level_name(i), "index": idx, "pte": v, "kind": kind,
                        "table_phys": t.phys})
            if k is None:
                break
            t = k
        return out

    def find_mapped(self, lo: int, hi: int, limit: int = 16) -> list[int]:
        """Up to ``limit`` granule addresses in ``[lo, hi)`` that a leaf maps, ascending; walks only
        the tables that exist (no kernel analogue: a query for contract checks and views)."""
        if not (0 <= lo < hi <= self._top and hi - lo <= self._few_span):  # few granules
            return table.find_mapped(self.root, self._block, self.granule, lo, hi, limit)
        g = self.granule
        entry, block = self._entry, self._block
        if hi - lo == g and not lo & (g - 1):    # one aligned granule (a one-page request): one walk
            return [lo] if limit > 0 and entry(lo)[3] else []
        out: list[int] = []
        a = lo
        while a < hi and len(out) < limit:
            _, _, i, v = entry(a)
            bsz = block[i]
            end = min(hi, (a & ~(bsz - 1)) + bsz)
            if v:
                out.extend(range(a, min(end, a + g * (limit - len(out))), g))
            a = end
        return out

    def first_unmapped(self, lo: int, hi: int) -> int | None:
        """Lowest granule address in ``[lo, hi)`` with no leaf, or None (walks existing tables)."""
        if not (0 <= lo < hi <= self._top and hi - lo <= self._few_span):  # few granules
            return table.first_unmapped(self.root, self._block, self.granule, lo, hi)
        entry, block = self._entry, self._block
        a = lo
        while a < hi:
            t, idx, i, v = entry(a)
            if not v:
                return a & ~(self.granule - 1)
            bsz = block[i]
            a = (a & ~(bsz - 1)) + bsz
            if not t.kids and a < hi:    # the next entries of this leaf table, read in place
                n = min(len(t.ent) - idx - 1, -(-(hi - a) // bsz))
                for v in t.ent[idx + 1:idx + 1 + n].tolist():
                    if not v:
                        return a
                    a += bsz
        return None

    def mapped_ranges(self, merge: bool = True) -> list[tuple[int, int, int, int]]:
        """``[(iova, phys, size, prot), ...]`` in IOVA order: runs that are contiguous in both IOVA
        and physical space with equal prot (``merge=True``), or one tuple per leaf PTE (an AMD
        replicated large page appears once per replica, ``size`` = that level's block)."""
        return table.mapped_ranges(self.root, self._block, self._decode_vec, merge)

    def leaf_count(self) -> int:
        """Leaf PTEs present (a block counts 1; an AMD replicated page counts its replicas)."""
        return self._leaves

    def table_page_count(self) -> int:
        """Table pages currently allocated, the root included."""
        return self._ntables

    def occupancy(self) -> list[dict]:
        """Per populated top-level entry: ``index``, ``iova`` base, ``span``, ``leaf_ptes``,
        ``mapped`` bytes, ``table_pages`` (for drawing)."""
        return table.occupancy(self.root, self._block)

    def snapshot(self) -> tuple:
        """Comparable copy of every translation (per leaf PTE)."""
        return tuple(self.mapped_ranges(merge=False))
