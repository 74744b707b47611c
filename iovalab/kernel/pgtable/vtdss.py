"""VT-d second stage as a generic page table (Linux 7.3.4, ``CONFIG_IOMMU_PT_VTDSS``), format ``"x86-64"``.

In 7.3 ``intel_iommu_domain_alloc_second_stage()`` (drivers/iommu/intel/iommu.c) builds the table with
``pt_iommu_vtdss_init()`` (drivers/iommu/generic_pt/fmt/iommu_vtdss.c): the domain is a ``struct
pt_iommu``, and ``iommu_map_nosync()`` / ``__iommu_unmap()`` (drivers/iommu/iommu.c) call its
``map_range`` / ``unmap_range`` once for the whole range (drivers/iommu/generic_pt/iommu_pt.h) instead
of the ``iommu_pgsize`` + ``map_pages`` loop. The table layout, PTE bits and leaf sizes are those of
:class:`~iovalab.kernel.pgtable.intel_vtd.IntelVtdPgtable`; what changes:

* **Leaf sizes.** ``pt_compute_best_pgsize`` / ``pt_pgsz_count`` choose the same leaves as the
  ``iommu_pgsize`` loop did (one 4K page: the ``single_page`` fast path).
* **Unaligned** ``iova | paddr | size``: ``-ENXIO`` (``pt_compute_best_pgsize() == 0``), no ``pr_err``.
* **A present entry in the way** (``__map_range_leaf`` -> ``clear_contig``): ``-EADDRINUSE`` after
  the leaves before it were written (6.17 printed "already set" and kept the old PTE); the caller
  traces the bytes mapped and unmaps them.
* **Unmap** (``__unmap_range``): stops at the first non-present entry (6.17 cleared past holes and
  returned the full size); 0 when ``iova`` is inside a larger leaf (``-EINVAL`` from the walk); a
  range ending inside a leaf clears the whole leaf. Tables the range covers whole are freed through
  the gather (``gather_add_table``), and the gather gets one range, ``(iova, unmapped)``
  (``gather_range_pending``), per unmap, not one per driver chunk.
"""

from __future__ import annotations

from iovalab.kernel.pgtable.intel_vtd import IntelVtdPgtable
from iovalab.kernel.units import EADDRINUSE, EINVAL, ENXIO, ERANGE

__all__ = ["VtdssPgtable", "pgsize_chunks"]


def pgsize_chunks(pgsize_fn, granule: int, iova: int, paddr: int, size: int):
    """The leaves ``map_range`` installs, as ``(iova, paddr, pgsize, count)`` runs, in order
    (``pt_compute_best_pgsize``/``pt_pgsz_count`` choose the same leaves as the ``iommu_pgsize``
    loop; ``pgsize_fn(iova, paddr, size) -> (pgsize, count)`` is the domain's ``iommu_pgsize``)."""
    g = granule
    while size:
        pgsize, count = (g, 1) if size == g else pgsize_fn(iova, paddr, size)
        yield iova, paddr, pgsize, count
        n = pgsize * count
        iova, paddr, size = iova + n, paddr + n, size - n


#: ``cfg.common.hw_max_oasz_lg2 = 52`` (drivers/iommu/intel/iommu.c, 7.3.4): the widest physical address the
#: table stores; ``map_pages()`` of generic_pt/iommu_pt.h refuses a wider ``paddr`` with ``-ERANGE``.
VTDSS_MAX_OASZ_LG2 = 52


class VtdssPgtable(IntelVtdPgtable):
    """``struct pt_iommu_vtdss`` and its ``pt_iommu_ops`` (``map_range``, ``unmap_range``)."""

    pt_iommu = True
    FN = dict(IntelVtdPgtable.FN, map="map_range", unmap="unmap_range", alloc="pt_walk_descend",
              free="gather_add_table", init="__map_range_leaf")

    def map_range(self, iova: int, paddr: int, size: int, prot: int, pgsize_fn,
                  cpu: int = 0) -> tuple[int, int, list]:
        """``pt->ops->map_range(pt, iova, paddr, len, prot, gfp, &mapped)``: ``(mapped, 0 or -errno,
        chunks)``; ``chunks`` = the ``(iova, paddr, pgsize, count)`` runs written; ``pgsize_fn``:
        :func:`pgsize_chunks`."""
        g = self.granule
        if paddr >> VTDSS_MAX_OASZ_LG2:
            return 0, -ERANGE, []      # paddr beyond what the table can store (max_oasz_lg2)
        if not size:
            return 0, -EINVAL, []      # make_range_no_check(): an empty range
        if (iova | paddr | size) & (g - 1):
            return 0, -ENXIO, []       # single_page: log2_mod(iova | paddr); else best pgsize 0
        mapped = 0
        chunks = []
        for a, p, pgsize, count in pgsize_chunks(pgsize_fn, g, iova, paddr, size):
            n = pgsize * count
            busy = self.find_mapped(a, a + n, 1)
            if busy:
                count = (busy[0] - a) // pgsize     # leaves before the entry in the way
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
        hole = self.first_unmapped(iova, end_r)
        end = hole if hole is not None else end_r
        a = iova
        unmapped = freed = 0
        chunks = []
        while a < end:
            pgsize, count = next(pgsize_chunks(pgsize_fn, g, a, a, end - a))[2:]
            n = self.unmap_pages(a, pgsize, count, None, cpu)
            freed += self.last_freed
            chunks.append((a, pgsize, count, n))
            if not n:
                break
            a += n
            unmapped += n
        return unmapped, freed, chunks
