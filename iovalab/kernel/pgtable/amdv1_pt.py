"""AMD-Vi v1 as a generic page table (Linux 7.3.4, ``CONFIG_IOMMU_PT_AMDV1``), format ``"x86-64"``.

In 7.3 there is no ``drivers/iommu/amd/io_pgtable.c``: ``amd_iommu_domain_alloc_paging_v1()``
(drivers/iommu/amd/iommu.c) builds the table with ``pt_iommu_amdv1_init()``
(drivers/iommu/generic_pt/fmt/iommu_amdv1.c) and its domain ops are ``IOMMU_PT_DOMAIN_OPS(amdv1)``, so
``iommu_map_nosync()`` / ``__iommu_unmap()`` call ``map_range`` / ``unmap_range`` of
drivers/iommu/generic_pt/iommu_pt.h once per call (:class:`~iovalab.kernel.pgtable.generic_pt.GenericPt`).
The format, drivers/iommu/generic_pt/fmt/amdv1.h (level 0 = the 4K PTEs, "mode 1"):

* **Page sizes.** ``amdv1pt_possible_sizes()``: every power of two from the level's item size up to
  ``min(51, item + 9 - 1)`` bits, except ``SZ_512G`` (a hardware bug), at every level below
  ``PT_MAX_TOP_LEVEL`` (5): the union, :data:`AMDV1PT_PGSIZES`, is ``GENMASK(51, 12) ^ SZ_512G``, the
  6.17 ``AMD_IOMMU_PGSIZES``, which ``amd_iommu_domain_alloc_paging_v1()`` ANDs the domain's bitmap with.
* **PTEs.** A leaf is ``AMDV1PT_FMT_PR | OA | attrs`` (``amdv1pt_install_leaf_entry``); the attrs
  (``amdv1pt_iommu_set_prot``) are ``IR``/``IW`` from the prot and ``FC`` because the domain sets
  ``PT_FEAT_AMDV1_FORCE_COHERENCE``. A size between two level sizes is a contiguous entry: ``NEXT_LEVEL
  = AMDV1PT_FMT_NL_SIZE`` (7) and the low OA bits ``2**(oasz_lg2 - 12 - 1) - 1`` set, written in every
  one of its ``2**(oasz_lg2 - item_lg2)`` slots (64K = 16 level-0 PTEs). A table entry
  (``amdv1pt_install_table``) is ``PR | NEXT_LEVEL = level | OA | IR | IW``. These are the 6.17 bit
  values (``PAGE_SIZE_PTE``/``PM_LEVEL_ENC(7)``, ``PM_LEVEL_PDE``), so the encoding is
  :class:`~iovalab.kernel.pgtable.amd_v1.AmdV1Pgtable`'s. Not modelled: ``AMDV1PT_FMT_D`` (dirty
  tracking) and SME (``PT_FEAT_AMDV1_ENCRYPT_TABLES``).
* **Levels.** ``cfg.starting_level = 2`` with ``PT_FEAT_DYNAMIC_TOP``: the kernel starts with 3 levels
  and ``increase_top()`` adds one when a map needs it; the model builds the ``ias`` levels up front
  (as for 6.17).

What changes from 6.17 (each from iommu_pt.h):

* **Overlap.** ``__map_range_leaf`` -> ``clear_contig``: ``-EADDRINUSE`` at the first present entry,
  the leaves before it written, no WARN; ``iommu_map_nosync`` unmaps them (6.17 ``iommu_v1_map_pages``
  replaced the old PTEs silently and returned 0).
* **Unmap inside a contiguous entry.** ``__unmap_range`` returns ``-EINVAL`` when the range starts in
  the middle of a large or contiguous leaf (``log2_mod(va, pt_entry_oa_lg2sz)``): nothing is cleared
  and 0 is returned (6.17 ``fetch_pte`` cleared the whole large page and returned its size).
* **Tables are freed** on unmap when the range covers them whole (6.17 never freed them), through the
  gather, and the gather gets one range per unmap (``gather_range_pending``; 6.17
  ``iommu_v1_unmap_pages`` added one per ``unmap_pages`` call).
* **A large leaf over empty lower tables** (``clear_contig`` -> ``__collect_tables``): the tables go on
  the map's own gather, which ``map_range`` syncs once (``iommu_iotlb_sync`` ->
  ``amd_iommu_iotlb_sync`` -> ``amd_iommu_domain_flush_pages``) over the freed tables' span.
"""

from __future__ import annotations

from iovalab.kernel.pgtable.amd_v1 import AMD_IOMMU_PGSIZES, AmdV1Pgtable
from iovalab.kernel.pgtable.generic_pt import GenericPt
from iovalab.kernel.units import GENMASK

__all__ = ["AMDV1PT_PGSIZES", "PT_MAX_TOP_LEVEL", "amdv1pt_possible_sizes", "Amdv1PtPgtable"]

#: fmt/amdv1.h: the top level (5) holds no leaves (``amdv1pt_can_have_leaf``)
PT_MAX_TOP_LEVEL = 5
_SZ_512G = 1 << 39


def amdv1pt_possible_sizes(level: int) -> int:
    """``amdv1pt_possible_sizes()`` (fmt/amdv1.h, 7.3.4): the leaf sizes a level-``level`` entry can
    hold (level 0 = 4K items, 9 index bits a level)."""
    if level >= PT_MAX_TOP_LEVEL:
        return 0
    isz = 12 + 9 * level
    return GENMASK(min(51, isz + 9 - 1), isz) & ~_SZ_512G


#: the union over the levels: what ``pt_iommu_amdv1_init()`` gives the domain (``NS(get_info)``)
AMDV1PT_PGSIZES = 0
for _lv in range(PT_MAX_TOP_LEVEL):
    AMDV1PT_PGSIZES |= amdv1pt_possible_sizes(_lv)
assert AMDV1PT_PGSIZES == AMD_IOMMU_PGSIZES


class Amdv1PtPgtable(GenericPt, AmdV1Pgtable):
    """``struct pt_iommu_amdv1`` and its ``pt_iommu_ops`` (``map_range``, ``unmap_range``)."""

    FN = dict(AmdV1Pgtable.FN, map="map_range", unmap="unmap_range", alloc="pt_walk_descend",
              free="gather_add_table", init="__map_range_leaf", flush="amd_iommu_domain_flush_pages")
    #: never reached: ``map_range`` stops at a present entry before ``map_pages`` sees it
    OVERLAP = "eexist"

    def __init__(self, *args, **kwargs) -> None:
        self._replaced_span: tuple[int, int] | None = None
        super().__init__(*args, **kwargs)

    def _flush_replaced(self, base: int, size: int, cpu: int) -> None:
        """``clear_contig``: the empty table goes on the map's gather (``gather_range_pending`` of its span)."""
        lo, hi = self._replaced_span or (base, base + size)
        self._replaced_span = (min(lo, base), max(hi, base + size))

    def _after_replace(self, iova: int, size: int, cpu: int) -> None:
        """``map_range``: freelist not empty -> one ``iommu_iotlb_sync`` over the gathered span."""
        span, self._replaced_span = self._replaced_span, None
        if span is not None:
            self._flush(span[0], span[1] - span[0], cpu)
