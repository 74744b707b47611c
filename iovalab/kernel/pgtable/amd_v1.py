"""AMD-Vi v1 page tables: ``drivers/iommu/amd/io_pgtable.c`` (Linux 6.17), format ``"x86-64"``.

``iommu_v1_map_pages``, ``alloc_pte``, ``fetch_pte``, ``iommu_v1_unmap_pages``,
``iommu_v1_iova_to_phys``. Level ``L0`` holds 4K PTEs; any level may hold a leaf, and sizes between
level sizes are replicated PTEs (``PAGE_SIZE_PTE`` with ``PM_LEVEL_ENC(7)``: 64K = 16 level-0 PTEs).

* **Overlap.** ``iommu_v1_map_pages`` (6.17) silently replaces the old PTEs (``free_clear_pte``
  frees any table below them) and flushes (``amd_iommu_domain_flush_pages``) only when it freed or
  allocated a table: a replaced leaf is not invalidated, so an IOTLB entry for the old page stays.
  **Model: refuses** (-EEXIST, nothing written, the ``error`` event says what the kernel does);
  with ``follow_kernel`` it replaces silently, as the kernel does.
* **Large page over an existing lower table.** ``free_clear_pte`` + ``amd_iommu_domain_flush_pages``
  once for the mapped range.
* **One map_pages call** maps the whole ``pgsize * pgcount``, crossing tables.
* **Partial unmap of a large page.** ``fetch_pte`` returns the large page, all its replicated PTEs
  are cleared, its full size is counted.
* **Holes.** Returns the bytes cleared before the hole (0 at once).
* **Tables are never freed** because their leaves were cleared.
* **Table growth.** The kernel starts at 3 levels and adds levels on demand
  (``increase_address_space``); the model builds the ``ias`` levels up front.
"""

from __future__ import annotations

import numpy as np

from iovalab.kernel.pgtable.ops import IOMMU_READ, IOMMU_WRITE, IoPgtable, x86_geometry
from iovalab.kernel.pgtable.table import Table
from iovalab.kernel.units import EEXIST, EFAULT, EINVAL, GENMASK

__all__ = ["AMD_IOMMU_PGSIZES", "AmdV1Pgtable"]

#: ``AMD_IOMMU_PGSIZES`` (drivers/iommu/amd/amd_iommu_types.h): ``GENMASK_ULL(51, 12) ^ SZ_512G``.
AMD_IOMMU_PGSIZES = GENMASK(51, 12) ^ (1 << 39)

# drivers/iommu/amd/amd_iommu_types.h
IOMMU_PTE_PR = 1 << 0
IOMMU_PTE_FC = 1 << 60
IOMMU_PTE_IR = 1 << 61
IOMMU_PTE_IW = 1 << 62
PM_ADDR_MASK = 0x000F_FFFF_FFFF_F000
PM_LEVEL_ENC_7 = 7 << 9  # PM_LEVEL_ENC(7): replicated ("level 7") large PTE


class AmdV1Pgtable(IoPgtable):
    """``struct amd_io_pgtable`` (v1) and its ``iommu_v1_*`` ops; accepts any size of the bitmap."""

    fmt = "x86-64"
    driver = "amd"
    FN = {"map": "iommu_v1_map_pages", "unmap": "iommu_v1_unmap_pages", "alloc": "alloc_pte",
          "root": "iommu_alloc_pages_node_sz", "free": "free_clear_pte",
          "flush": "amd_iommu_domain_flush_pages", "init": "iommu_v1_map_pages"}
    ANY_PGSIZE = True
    OVERLAP = "replace"

    def _overlap_refused(self, iova, old, new, cpu):
        return self._err("iommu_v1_map_pages", EEXIST, "PTE already present: the kernel replaces it silently "
                         "(no WARN, no IOTLB flush for a replaced leaf) and returns 0; the simulator refuses "
                         "(-EEXIST, nothing written; follow_kernel=True follows the kernel)", False, cpu, iova=iova)

    @classmethod
    def format_geometry(cls, granule: int) -> tuple[int, int, int]:
        return x86_geometry(granule, AMD_IOMMU_PGSIZES)

    def level_name(self, i: int) -> str:
        """``L<n>``, 0 = the 4K PTEs."""
        return f"L{self.nlevels - 1 - i}"

    # -- PTE encoding ----------------------------------------------------------------------------
    def _table_pte(self, tphys: int, i: int) -> int:
        """``PM_LEVEL_PDE(level, phys)``, level = the PTE's own level."""
        lv = ((self.nlevels - 1 - i) << 9) & 0xE00
        return tphys | lv | IOMMU_PTE_PR | IOMMU_PTE_IR | IOMMU_PTE_IW

    def _leaf_bits(self, prot: int, i: int, rep: int) -> int:
        b = IOMMU_PTE_PR | IOMMU_PTE_FC | (IOMMU_PTE_IR if prot & IOMMU_READ else 0)
        return b | (IOMMU_PTE_IW if prot & IOMMU_WRITE else 0) | (PM_LEVEL_ENC_7 if rep > 1 else 0)

    def _decode(self, v: int, i: int) -> tuple[int, int, int]:
        prot = (IOMMU_READ if v & IOMMU_PTE_IR else 0) | (IOMMU_WRITE if v & IOMMU_PTE_IW else 0)
        if (v >> 9) & 7 == 7:  # PTE_PAGE_SIZE(pte) = 1 << (1 + ffz(pte | 0xfff))
            x = v | 0xFFF
            size = 1 << ((~x & (x + 1)).bit_length())
            return v & PM_ADDR_MASK & ~(size - 1), size, prot
        return v & PM_ADDR_MASK, self._block[i], prot

    def _decode_vec(self, v: np.ndarray, iov: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        u = np.uint64
        phys = v & u(PM_ADDR_MASK)
        prot = ((v >> u(61)) & u(1)) * u(IOMMU_READ) + ((v >> u(62)) & u(1)) * u(IOMMU_WRITE)
        for j in np.flatnonzero(((v >> u(9)) & u(7)) == 7).tolist():
            base, size, _ = self._decode(int(v[j]), i)
            phys[j] = base + (int(iov[j]) & (size - 1))
        return phys, prot

    def _replicated(self, phys0: int, pgsize: int, n: int, rep: int, bits: int) -> np.ndarray:
        """``PAGE_SIZE_PTE(paddr, pgsize) | PM_LEVEL_ENC(7) | ...``, repeated in ``rep`` slots."""
        vals = [(((phys0 + k * pgsize) | (pgsize - 1)) & ~(pgsize >> 1) & PM_ADDR_MASK) | bits
                for k in range(n // rep)]
        return np.repeat(np.array(vals, dtype=np.uint64), rep)

    def _flush_replaced(self, base: int, size: int, cpu: int) -> None:
        """``free_clear_pte`` only marks the range; the flush comes once after the map."""

    def _after_replace(self, iova: int, size: int, cpu: int) -> None:
        self._flush(iova, size, cpu)

    # -- map ----------------------------------------------------------------------------------
    def _check_map(self, iova, paddr, pgsize, count, prot, info, cpu):
        """``iommu_v1_map_pages``' checks, in order."""
        fn = self.FN["map"]
        if info is None:
            return self._err(fn, EINVAL, f"pgsize {pgsize:#x} not supported by this table", False, cpu)
        if (iova | paddr) & (pgsize - 1):
            raise ValueError(f"{fn}: BUG_ON(!IS_ALIGNED(iova {iova:#x} | paddr {paddr:#x}, {pgsize:#x}))")
        if not prot & (IOMMU_READ | IOMMU_WRITE):
            return self._err(fn, EINVAL, "!(prot & IOMMU_PROT_MASK)", False, cpu, prot=prot)
        if iova + pgsize * count > 1 << self.ias:
            return self._err(fn, EFAULT, f"beyond the modelled {self.ias}-bit table (the kernel would "
                             "grow it with increase_address_space)", False, cpu, iova=iova)
        return None

    # -- unmap --------------------------------------------------------------------------------
    def _fetch_pte(self, iova: int) -> tuple[Table, int, int, int, int] | None:
        """``fetch_pte()``: ``(table, first index, level, replicas, page size)`` or None."""
        hit = self._leaf(iova)
        if hit is None:
            return None
        t, idx, i, v = hit
        size = self._decode(v, i)[1]
        rep = size // self._block[i]
        return t, idx & ~(rep - 1), i, rep, size

    def _unmap(self, iova, pgsize, count, cpu):
        """``iommu_v1_unmap_pages``: ``fetch_pte`` + clear, page by page, until a hole."""
        size = count * pgsize
        unmapped = 0
        cleared = 0
        cur = iova
        bottom = self.nlevels - 1
        while unmapped < size:
            f = self._fetch_pte(cur)
            if f is None:
                break
            t, first, i, rep, usize = f
            k = 1
            if rep == 1 and i == bottom:
                want = max(1, min(self._ent[i] - first, (size - unmapped) // usize))
                if want > 1:
                    seg = t.ent[first:first + want]
                    bad = np.flatnonzero((seg == 0) | ((seg >> np.uint64(9)) & np.uint64(7) == 7))
                    k = int(bad[0]) if len(bad) else want
            t.ent[first:first + k * rep] = 0
            cleared += k * rep
            cur = (cur & ~(usize - 1)) + usize * k
            unmapped += usize * k
        self._leaves -= cleared
        return unmapped, cleared, ((iova, unmapped, unmapped) if unmapped else None)
