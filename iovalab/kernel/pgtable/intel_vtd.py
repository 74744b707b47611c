"""VT-d second-stage page tables: ``drivers/iommu/intel/iommu.c`` (Linux 6.17), format ``"x86-64"``.

``pfn_to_dma_pte``, ``intel_iommu_map_pages`` -> ``__domain_mapping``, ``intel_iommu_unmap_pages`` ->
``intel_iommu_unmap`` -> ``domain_unmap`` -> ``dma_pte_clear_level``, ``intel_iommu_iova_to_phys``.
Levels ``PML5``/``PML4``/``PDPT``/``PD``/``PT`` (geometry: :mod:`~iovalab.kernel.pgtable.ops`).

* **Overlap.** ``__domain_mapping`` (6.17): ``cmpxchg64_local`` fails, ``pr_crit("ERROR: DMA PTE for
  vPFN 0x%lx already set (to %llx not %llx)")``, ``WARN_ON(1)``, the old PTE stays, the other PTEs
  are written and the call returns 0: the caller believes the range is mapped to its pages while
  the device reaches the old ones there. **Model: refuses** (-EEXIST, nothing written, the event
  quotes the kernel's line); with ``follow_kernel`` it does what the kernel does.
* **Superpage over an existing lower table.** ``switch_to_super_page`` + ``cache_tag_flush_range``.
* **One map_pages call** maps the whole ``pgsize * pgcount``, crossing tables.
* **Partial unmap of a superpage.** ``intel_iommu_unmap`` rounds the size up to the superpage found at
  ``iova`` (``pfn_to_dma_pte`` level), unmaps it whole and returns that size.
* **Holes.** Never stops: the size is rounded up to the level where the walk met the non-present
  entry, ``domain_unmap`` clears whatever is present in that range and the full (rounded) size is
  returned.
* **Freeing tables on unmap.** ``dma_pte_clear_level`` frees every table whose whole span lies inside
  the unmapped range (queued on ``gather->freelist``, freed after the IOTLB sync); partially cleared
  tables stay.
* **Superpage choice.** ``__domain_mapping`` re-derives the level with ``hardware_largepage_caps()``;
  for this driver's bitmap (4K|2M|1G) it equals the core's choice, so the model uses the ``pgsize``
  it is given.
"""

from __future__ import annotations

import numpy as np

from iovalab.kernel.pgtable.ops import IOMMU_READ, IOMMU_WRITE, IoPgtable, x86_geometry
from iovalab.kernel.pgtable.table import Table
from iovalab.kernel.units import EEXIST, EFAULT, EINVAL, GENMASK, SZ_1G, SZ_2M, SZ_4K

__all__ = ["INTEL_PGSIZES", "IntelVtdPgtable"]

#: Page sizes of VT-d second-stage tables with 2-level superpage support (``SZ_4K`` |
#: ``domain_super_pgsize_bitmap()``), the only sizes ``intel_iommu_map_pages`` accepts.
INTEL_PGSIZES = SZ_4K | SZ_2M | SZ_1G

# drivers/iommu/intel/iommu.h: second-stage PTE bits
DMA_PTE_READ = 1 << 0
DMA_PTE_WRITE = 1 << 1
DMA_PTE_LARGE_PAGE = 1 << 7
#: ``VTD_PAGE_MASK`` (intel/iommu.h): ``dma_pte_addr()`` masks a PTE with every bit from 12 up, so a
#: physical address of 52 bits or more is kept, not truncated (``__domain_mapping()`` does not check it;
#: bits above the IOMMU's address width are reserved, and the hardware would fault on them).
VTD_PAGE_MASK = GENMASK(63, 12)


class IntelVtdPgtable(IoPgtable):
    """``dmar_domain->pgd`` and the ``intel_iommu_*`` page-table ops."""

    fmt = "x86-64"
    driver = "intel"
    FN = {"map": "intel_iommu_map_pages", "unmap": "intel_iommu_unmap_pages", "alloc": "pfn_to_dma_pte",
          "root": "iommu_alloc_pages_node_sz", "free": "dma_pte_clear_level",
          "flush": "cache_tag_flush_range", "init": "__domain_mapping"}
    OVERLAP = "keep"

    @staticmethod
    def already_set(iova: int, old: int, new: int) -> str:
        """The line ``__domain_mapping`` (intel/iommu.c, 6.17) prints for a PTE already present."""
        return f"ERROR: DMA PTE for vPFN {iova >> 12:#x} already set (to {old:x} not {new:x})"

    def _overlap_refused(self, iova, old, new, cpu):
        return self._err("__domain_mapping", EEXIST, f"the kernel prints '{self.already_set(iova, old, new)}', "
                         "WARN_ON(1), keeps the old PTE, writes the rest and returns 0; the simulator refuses "
                         "(-EEXIST, nothing written; follow_kernel=True follows the kernel)", True, cpu, iova=iova)

    def _overlap_followed(self, iova, old, new, cpu):
        if self.log is not None:
            self.log.warn("pgtable", "__domain_mapping", 0, f"pr_crit: {self.already_set(iova, old, new)}; "
                          "WARN_ON(1): the old PTE stays and the call returns 0", cpu=cpu, iova=iova)

    @classmethod
    def format_geometry(cls, granule: int) -> tuple[int, int, int]:
        return x86_geometry(granule, INTEL_PGSIZES)

    def level_name(self, i: int) -> str:
        """``agaw_to_level`` names: ``PML5``, ``PML4``, ``PDPT``, ``PD``, ``PT``."""
        n = self.nlevels
        names = ["PML5", "PML4", "PDPT", "PD", "PT"]
        return names[len(names) - n + i] if n <= len(names) else f"level{n - i}"

    # -- PTE encoding ----------------------------------------------------------------------------
    def _table_pte(self, tphys: int, i: int) -> int:
        return tphys | DMA_PTE_READ | DMA_PTE_WRITE

    def _leaf_bits(self, prot: int, i: int, rep: int) -> int:
        b = (DMA_PTE_READ if prot & IOMMU_READ else 0) | (DMA_PTE_WRITE if prot & IOMMU_WRITE else 0)
        return b | (DMA_PTE_LARGE_PAGE if i < self.nlevels - 1 else 0)

    def _decode(self, v: int, i: int) -> tuple[int, int, int]:
        prot = (IOMMU_READ if v & DMA_PTE_READ else 0) | (IOMMU_WRITE if v & DMA_PTE_WRITE else 0)
        return v & VTD_PAGE_MASK, self._block[i], prot

    def _decode_vec(self, v: np.ndarray, iov: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        u = np.uint64
        phys = v & u(VTD_PAGE_MASK)
        prot = (v & u(DMA_PTE_READ)) * u(IOMMU_READ) + ((v >> u(1)) & u(1)) * u(IOMMU_WRITE)
        return phys, prot

    # -- map ----------------------------------------------------------------------------------
    def _check_map(self, iova, paddr, pgsize, count, prot, info, cpu):
        """``intel_iommu_map_pages`` -> ``intel_iommu_map`` -> ``__domain_mapping`` checks, in order."""
        fn = self.FN["map"]
        if pgsize not in (SZ_4K, SZ_2M, SZ_1G) or info is None:
            return self._err(fn, EINVAL, f"pgsize {pgsize:#x} is not 4K/2M/1G", False, cpu, pgsize=pgsize)
        if (iova | paddr) & (pgsize - 1):
            return self._err(fn, EINVAL, "!IS_ALIGNED(iova | paddr, pgsize)", False, cpu,
                             iova=iova, paddr=paddr, pgsize=pgsize)
        if iova + pgsize * count > 1 << self.ias:
            return self._err("intel_iommu_map", EFAULT, f"pr_err: iommu width ({self.ias}) is not "
                             "sufficient for the mapped address", False, cpu, iova=iova)
        if not prot & (IOMMU_READ | IOMMU_WRITE):
            return self._err("__domain_mapping", EINVAL, "(prot & (DMA_PTE_READ|DMA_PTE_WRITE)) == 0",
                             False, cpu, prot=prot)
        return None

    # -- unmap --------------------------------------------------------------------------------
    def _unmap(self, iova, pgsize, count, cpu):
        """``intel_iommu_unmap``: round up to the level the walk stops at, then ``domain_unmap``."""
        size = count * pgsize
        if iova >> self.ias:  # pfn_to_dma_pte(): !domain_pfn_supported -> NULL -> return 0
            return 0, 0, None
        # pfn_to_dma_pte(level = 0): stop at a non-present or superpage PTE, or at level 1
        t = self.root
        sh, mask, n = self._sh, self._mask, self.nlevels
        i = 0
        while i < n - 1:
            k = t.kids.get((iova >> sh[i]) & mask[i])
            if k is None:
                break
            t = k
            i += 1
        if size < self._block[i]:
            size = self._block[i]
        last = iova + size - 1
        if last >> self.ias:
            self._err("domain_unmap", EINVAL, "WARN_ON(!domain_pfn_supported(domain, last_pfn))", True, cpu,
                      iova=iova, size=size)
            cleared = 0
        elif i == n - 1 and last < t.base + (self._ent[i] << sh[i]) and not (
                t is not self.root and iova == t.base and last == t.base + (self._ent[i] << sh[i]) - 1):
            # fast path: the range lies inside one leaf table and does not cover it whole
            a = (iova - t.base) >> sh[i]
            b = ((last - t.base) >> sh[i]) + 1
            if b - a == 1:
                cleared = 1 if t.ent[a] else 0
                t.ent[a] = 0
            else:
                seg = t.ent[a:b]
                cleared = int(np.count_nonzero(seg))
                seg[:] = 0
            self._leaves -= cleared
        else:
            cleared = self._clear_level(self.root, iova, last, cpu)
        return size, cleared, (iova, size, size)

    def _clear_level(self, t: Table, start: int, last: int, cpu: int) -> int:
        """``dma_pte_clear_level()``: clear leaves in ``[start, last]``; free (via the freelist)
        every table whose whole span is inside. Returns leaf PTEs cleared."""
        i = t.lvl
        sh = self._sh[i]
        bsz = 1 << sh
        lo = (max(start, t.base) - t.base) >> sh
        hi = min(self._ent[i] - 1, (last - t.base) >> sh)
        if i == self.nlevels - 1:
            seg = t.ent[lo:hi + 1]
            n = int(np.count_nonzero(seg))
            seg[:] = 0
            self._leaves -= n
            return n
        cleared = 0
        for j in (np.flatnonzero(t.ent[lo:hi + 1]) + lo).tolist():
            e_lo = t.base + j * bsz
            kid = t.kids.get(j)
            if start <= e_lo and last >= e_lo + bsz - 1:
                if kid is not None:
                    before = self._leaves
                    del t.kids[j]
                    self.last_freed += self._free_subtree(kid, cpu)
                    cleared += before - self._leaves
                else:
                    self._leaves -= 1
                    cleared += 1
                t.ent[j] = 0
            elif kid is not None:
                cleared += self._clear_level(kid, start, last, cpu)
            else:
                self._err("dma_pte_clear_level", EINVAL, "range covers only part of a superpage: the kernel "
                          "walks the superpage's data page as if it were a table (not modelled); the "
                          "superpage stays mapped", True, cpu, iova=e_lo, level=self.level_name(i))
        return cleared
