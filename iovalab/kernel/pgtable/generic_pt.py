"""The generic page table (Linux 7.3.4, ``drivers/iommu/generic_pt/iommu_pt.h``): what every format that
is a ``struct pt_iommu`` shares, whatever its PTE layout.

In 7.3 ``iommu_map_nosync()`` / ``__iommu_unmap()`` (drivers/iommu/iommu.c) call the table's
``map_range`` / ``unmap_range`` once for the whole range instead of the ``iommu_pgsize`` +
``map_pages`` loop. The formats (:mod:`~iovalab.kernel.pgtable.vtdss` for VT-d second stage,
:mod:`~iovalab.kernel.pgtable.amdv1_pt` for AMD v1) differ only in their PTE encoding (``fmt/vtdss.h``,
``fmt/amdv1.h``) and page sizes (``pt_possible_sizes``); :class:`GenericPt` is the common algorithm,
mixed in before the format's table class (which supplies the encoding, ``map_pages`` writes and the
table walk):

* **Leaf sizes.** ``pt_compute_best_pgsize`` / ``pt_pgsz_count`` choose the same leaves as the
  ``iommu_pgsize`` loop did (one 4K page: the ``single_page`` fast path): :func:`pgsize_chunks`.
* **Unaligned** ``iova | paddr | size``: ``-ENXIO`` (``pt_compute_best_pgsize() == 0``), no ``pr_err``.
* **A present entry in the way** (``__map_range_leaf`` -> ``clear_contig``, or ``__map_range``
  meeting a leaf where it descends): ``-EADDRINUSE`` after the leaves before it were written, no
  WARN; the caller traces the bytes mapped and unmaps them (``iommu_map_nosync``).
* **Unmap** (``__unmap_range``): stops at the first non-present entry; 0 when ``iova`` is inside a
  larger (or contiguous) leaf (``-EINVAL`` from the walk); a range ending inside a leaf clears the
  whole leaf and counts it. Tables the range covers whole (``pt_entry_fully_covered``) are freed
  through the gather (``gather_add_table``), and the gather gets one range, ``(iova, unmapped)``
  (``gather_range_pending``), per unmap, not one per driver chunk.
"""

from __future__ import annotations

from iovalab.kernel.pgtable.ops import IoPgtable
from iovalab.kernel.pgtable.table import Table
from iovalab.kernel.units import EADDRINUSE, EINVAL, ENXIO, ERANGE

__all__ = ["GenericPt", "pgsize_chunks", "pgsize_first"]


def pgsize_chunks(pgsize_fn, granule: int, iova: int, paddr: int, size: int):
    """The leaves ``map_range`` installs, as ``(iova, paddr, pgsize, count)`` runs, in order
    (``pt_compute_best_pgsize``/``pt_pgsz_count`` choose the same leaves as the ``iommu_pgsize``
    loop; ``pgsize_fn(iova, paddr, size) -> (pgsize, count)`` is the domain's ``iommu_pgsize``)."""
    while size:
        pgsize, count = pgsize_first(pgsize_fn, granule, iova, paddr, size)
        yield iova, paddr, pgsize, count
        n = pgsize * count
        iova, paddr, size = iova + n, paddr + n, size - n


def pgsize_first(pgsize_fn, granule: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """``(pgsize, count)`` of the first run :func:`pgsize_chunks` gives: one granule page when ``size``
    is one granule (``single_page``), else ``pgsize_fn``."""
    return (granule, 1) if size == granule else pgsize_fn(iova, paddr, size)


#: ``cfg.common.hw_max_oasz_lg2 = 52`` for VT-d (drivers/iommu/intel/iommu.c) and AMD v1
#: (drivers/iommu/amd/iommu.c), 7.3.4: the widest physical address the table stores; ``map_pages()`` of
#: generic_pt/iommu_pt.h refuses a wider ``paddr`` with ``-ERANGE`` before writing anything.
MAX_OASZ_LG2 = 52


class GenericPt(IoPgtable):
    """``struct pt_iommu`` and the ``pt_iommu_ops`` of ``iommu_pt.h`` (``map_range``, ``unmap_range``).
    Mixed in before a format's table class: ``class VtdssPgtable(GenericPt, IntelVtdPgtable)``."""

    pt_iommu = True

    def map_range(self, iova: int, paddr: int, size: int, prot: int, pgsize_fn,
                  cpu: int = 0) -> tuple[int, int, list]:
        """``pt->ops->map_range(pt, iova, paddr, len, prot, gfp, &mapped)``: ``(mapped, 0 or -errno,
        chunks)``; ``chunks`` = the ``(iova, paddr, pgsize, count)`` runs written; ``pgsize_fn``:
        :func:`pgsize_chunks`."""
        g = self.granule
        if paddr >> MAX_OASZ_LG2:
            return 0, -ERANGE, []      # paddr beyond what the table can store (max_oasz_lg2)
        if not size:
            return 0, -EINVAL, []      # make_range_no_check(): an empty range
        if (iova | paddr | size) & (g - 1):
            return 0, -ENXIO, []       # single_page: log2_mod(iova | paddr); else best pgsize 0
        mapped = 0
        chunks = []
        runs = ((iova, paddr, g, 1),) if size == g else pgsize_chunks(pgsize_fn, g, iova, paddr, size)
        for a, p, pgsize, count in runs:
            n = pgsize * count
            busy = self.find_mapped(a, a + n, 1)
            if busy:
                count = (busy[0] - a) // pgsize     # leaves (contiguous groups) before the entry in the way
            if count:
                chunks.append((a, p, pgsize, count))
                done, ret = self.map_pages(a, p, pgsize, count, prot, cpu)
                mapped += done
                if ret:
                    return mapped, ret, chunks
            if busy:
                return mapped, -EADDRINUSE, chunks   # clear_contig(): a present entry
        return mapped, 0, chunks

    def unmap_range(self, iova: int, size: int, pgsize_fn, cpu: int = 0) -> tuple[int, int, list]:
        """``pt->ops->unmap_range(pt, iova, len, gather)``: ``(unmapped, tables freed, chunks)``;
        the caller adds ``(iova, unmapped)`` to the gather (``gather_range_pending``)."""
        g = self.granule
        hit = self.lookup(iova) if size and not iova & (g - 1) else None
        if hit is None or iova & (hit[1] - 1):
            return 0, 0, []                          # a hole, or inside a larger leaf
        end_r = iova + ((size + g - 1) & ~(g - 1))
        # the leaf found at iova (which starts there) maps [iova, iova + leaf size): no hole before that
        hole = None if end_r - iova <= hit[1] else self.first_unmapped(iova, end_r)
        end = hole if hole is not None else end_r
        a = iova
        unmapped = freed = 0
        chunks = []
        while a < end:
            pgsize, count = pgsize_first(pgsize_fn, g, a, a, end - a)
            n = self.unmap_pages(a, pgsize, count, None, cpu)
            freed += self.last_freed
            chunks.append((a, pgsize, count, n))
            if not n:
                break
            a += n
            unmapped += n
        if unmapped:
            freed += self._free_covered(self.root, iova, iova + unmapped, cpu)
        self.last_freed = freed
        return unmapped, freed, chunks

    def _free_covered(self, t: Table, lo: int, hi: int, cpu: int) -> int:
        """``__unmap_range``'s ``fully_covered`` tables below ``t`` that are left (a format's own unmap
        may have freed them already): every table whose span lies inside ``[lo, hi)`` and holds no
        leaf is cleared from its parent and freed (``gather_add_table``). Returns table pages freed."""
        block = self._block
        while True:                   # the common case: [lo, hi) inside one entry, down the tree
            bsz = block[t.lvl]
            a = (lo - t.base) // bsz
            if a != (hi - 1 - t.base) // bsz:
                break                 # several entries: the general loop below
            k = t.kids.get(a)
            if k is None:
                return 0
            base = k.base
            if base + bsz <= lo or base >= hi:
                return 0
            if lo <= base and base + bsz <= hi and not self._subtree_leaves(k):
                del t.kids[a]
                t.ent[a] = 0
                return self._free_subtree(k, cpu)
            t = k
        freed = 0
        kids = t.kids
        items = None
        a, b = (lo - t.base) // bsz, -(-(hi - t.base) // bsz)    # the entries [lo, hi) touches
        if b - a <= 32:               # a short range: look up the entries it touches
            hits = [j for j in range(a, b) if j in kids]
            if len(hits) <= 1:        # (several go in the order they were made in, which the dict keeps)
                items = [(j, kids[j]) for j in hits]
        for j, k in items if items is not None else list(kids.items()):
            base = k.base
            if base + bsz <= lo or base >= hi:
                continue
            if lo <= base and base + bsz <= hi and not self._subtree_leaves(k):
                del t.kids[j]
                t.ent[j] = 0
                freed += self._free_subtree(k, cpu)
            else:
                freed += self._free_covered(k, lo, hi, cpu)
        return freed
