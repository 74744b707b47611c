"""VT-d second stage as a generic page table (Linux 7.3.4, ``CONFIG_IOMMU_PT_VTDSS``), format ``"x86-64"``.

In 7.3 ``intel_iommu_domain_alloc_second_stage()`` (drivers/iommu/intel/iommu.c) builds the table with
``pt_iommu_vtdss_init()`` (drivers/iommu/generic_pt/fmt/iommu_vtdss.c): the domain is a ``struct
pt_iommu``, and ``iommu_map_nosync()`` / ``__iommu_unmap()`` (drivers/iommu/iommu.c) call its
``map_range`` / ``unmap_range`` once for the whole range (drivers/iommu/generic_pt/iommu_pt.h) instead
of the ``iommu_pgsize`` + ``map_pages`` loop. The table layout, PTE bits and leaf sizes are those of
:class:`~iovalab.kernel.pgtable.intel_vtd.IntelVtdPgtable` (fmt/vtdss.h); the generic algorithm
(-EADDRINUSE over a present entry, unmap stopping at a hole, one gather range per unmap, covered
tables freed through the gather) is :class:`~iovalab.kernel.pgtable.generic_pt.GenericPt`. Where 6.17
differed: it printed "already set" and kept the old PTE, and cleared past holes returning the full size.
"""

from __future__ import annotations

from iovalab.kernel.pgtable.generic_pt import GenericPt, pgsize_chunks
from iovalab.kernel.pgtable.intel_vtd import IntelVtdPgtable

__all__ = ["VtdssPgtable", "pgsize_chunks"]


class VtdssPgtable(GenericPt, IntelVtdPgtable):
    """``struct pt_iommu_vtdss`` and its ``pt_iommu_ops`` (``map_range``, ``unmap_range``)."""

    FN = dict(IntelVtdPgtable.FN, map="map_range", unmap="unmap_range", alloc="pt_walk_descend",
              free="gather_add_table", init="__map_range_leaf")
