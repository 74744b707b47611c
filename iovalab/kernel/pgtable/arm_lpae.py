"""ARM LPAE stage-1 page tables: ``drivers/iommu/io-pgtable-arm.c`` (Linux 6.17), as SMMUv2/v3 use them.

``arm_lpae_alloc_pgtable``, ``arm_lpae_restrict_pgsizes``, ``arm_lpae_map_pages`` -> ``__arm_lpae_map``
-> ``arm_lpae_init_pte``, ``arm_lpae_unmap_pages`` -> ``__arm_lpae_unmap``, ``arm_lpae_iova_to_phys``.
Driver name ``"arm"``, format ``"arm-lpae"``; granules 4K, 16K, 64K (geometry:
:mod:`~iovalab.kernel.pgtable.ops`).

* **Overlap.** A present leaf where a new leaf goes -> ``WARN_ON`` + ``-EEXIST`` (``arm_lpae_init_pte``
  checks every entry of the call before writing any), also when a block already covers the walk
  (``__arm_lpae_map``); ``iommu_map_nosync`` then unmaps what earlier calls mapped. The model does
  the same (no refusal needed).
* **Block over an existing lower table.** ``arm_lpae_init_pte`` -> ``__arm_lpae_unmap`` +
  ``io_pgtable_tlb_flush_walk`` (the model: only an empty table, see ``ops``).
* **One map_pages call** maps at most up to the end of the current table (``arm_lpae_max_entries``)
  and reports the bytes done; ``iommu_map_nosync`` calls again for the rest.
* **Partial unmap of a block.** ``WARN_ONCE("Unmap of a partial large IOPTE is not allowed")``,
  returns 0 - the old ``arm_lpae_split_blk_unmap`` block splitting is gone from 6.17.
* **Holes.** A non-present first PTE -> ``WARN_ON`` and ``return -ENOENT`` from a ``size_t`` function
  (6.17 source); modelled as 0 (stop) with a warn event. A hole after the first entry: ``WARN_ON`` +
  the entries before it.
* **Freeing tables on unmap.** A table is freed only when an unmap at a block size meets a table
  entry (``__arm_lpae_unmap``: clear, ``io_pgtable_tlb_flush_walk``, ``__arm_lpae_free_pgtable``);
  clearing leaves never frees their table.
* With the 64K granule a PTE holds PA bits 51:48 in bits 15:12 (``paddr_to_iopte``/``iopte_to_paddr``).
"""

from __future__ import annotations

import numpy as np

from iovalab.kernel.pgtable.ops import (
    IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE, IoPgtable,
)
from iovalab.kernel.units import EEXIST, EINVAL, ERANGE, GENMASK, SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

__all__ = ["arm_lpae_pgsizes", "ArmLpaePgtable"]

ARM_LPAE_MAX_LEVELS = 4
ARM_LPAE_PTE_TYPE_BLOCK = 1
ARM_LPAE_PTE_TYPE_TABLE = 3
ARM_LPAE_PTE_TYPE_PAGE = 3
ARM_LPAE_PTE_ADDR_MASK = GENMASK(47, 12)
ARM_LPAE_PTE_XN = 3 << 53
ARM_LPAE_PTE_AF = 1 << 10
ARM_LPAE_PTE_SH_OS = 2 << 8
ARM_LPAE_PTE_SH_IS = 3 << 8
ARM_LPAE_PTE_AP_UNPRIV = 1 << 6
ARM_LPAE_PTE_AP_RDONLY = 1 << 7
ARM_LPAE_PTE_nG = 1 << 11
ARM_LPAE_PTE_ATTRINDX_SHIFT = 2
ARM_LPAE_MAIR_ATTR_IDX_CACHE = 1
ARM_LPAE_MAIR_ATTR_IDX_DEV = 2

_NOENT = "WARN_ON(!pte): nothing mapped (the kernel returns (size_t)-ENOENT here; modelled as 0)"


def arm_lpae_pgsizes(granule: int) -> int:
    """Page sizes ``arm_lpae_restrict_pgsizes()`` (io-pgtable-arm.c) keeps for a granule
    (``unsigned long granule``): 4K -> 4K|2M|1G, 16K -> 16K|32M, 64K -> 64K|512M."""
    sizes = {SZ_4K: SZ_4K | SZ_2M | SZ_1G, SZ_16K: SZ_16K | SZ_32M, SZ_64K: SZ_64K | SZ_512M}
    if granule not in sizes:
        raise ValueError(f"ARM LPAE granule {granule:#x} is not 4K, 16K or 64K (arm_lpae_restrict_pgsizes)")
    return sizes[granule]


class ArmLpaePgtable(IoPgtable):
    """``struct arm_lpae_io_pgtable`` with ``arm_64_lpae_s1_init_fns``' ops (default ``oas`` 48:
    ``paddr >> oas`` is -ERANGE)."""

    fmt = "arm-lpae"
    driver = "arm"
    FN = {"map": "arm_lpae_map_pages", "unmap": "arm_lpae_unmap_pages", "alloc": "__arm_lpae_alloc_pages",
          "root": "__arm_lpae_alloc_pages", "free": "__arm_lpae_free_pgtable",
          "flush": "io_pgtable_tlb_flush_walk", "init": "arm_lpae_init_pte"}
    DEFAULT_OAS = 48
    ENCODES_PADDR = True

    def _overlap_refused(self, iova, old, new, cpu):
        return self._err("arm_lpae_init_pte", EEXIST, "WARN_ON: leaf PTE already present, -EEXIST "
                         "(we require an unmap first)", True, cpu, iova=iova)

    @classmethod
    def format_geometry(cls, granule: int) -> tuple[int, int, int]:
        native = arm_lpae_pgsizes(granule)
        return granule.bit_length() - 1 - 3, (52 if granule == SZ_64K else 48), native

    def level_name(self, i: int) -> str:
        """``L<start_level + i>``: ``L0``..``L3``."""
        return f"L{ARM_LPAE_MAX_LEVELS - self.nlevels + i}"

    # -- PTE encoding ----------------------------------------------------------------------------
    def _enc(self, phys: int) -> int:
        return (phys | (phys >> 36)) & ARM_LPAE_PTE_ADDR_MASK

    def _enc_vec(self, ph: np.ndarray) -> np.ndarray:
        return (ph | (ph >> np.uint64(36))) & np.uint64(ARM_LPAE_PTE_ADDR_MASK)

    def _table_pte(self, tphys: int, i: int) -> int:
        return self._enc(tphys) | ARM_LPAE_PTE_TYPE_TABLE

    def _leaf_bits(self, prot: int, i: int, rep: int) -> int:
        """``arm_lpae_prot_to_pte()`` for ``ARM_64_LPAE_S1``, plus the block/page type."""
        pte = ARM_LPAE_PTE_nG
        if not prot & IOMMU_WRITE and prot & IOMMU_READ:
            pte |= ARM_LPAE_PTE_AP_RDONLY
        if not prot & IOMMU_PRIV:
            pte |= ARM_LPAE_PTE_AP_UNPRIV
        if prot & IOMMU_MMIO:
            pte |= ARM_LPAE_MAIR_ATTR_IDX_DEV << ARM_LPAE_PTE_ATTRINDX_SHIFT
        elif prot & IOMMU_CACHE:
            pte |= ARM_LPAE_MAIR_ATTR_IDX_CACHE << ARM_LPAE_PTE_ATTRINDX_SHIFT
        pte |= ARM_LPAE_PTE_SH_IS if prot & IOMMU_CACHE else ARM_LPAE_PTE_SH_OS
        if prot & IOMMU_NOEXEC:
            pte |= ARM_LPAE_PTE_XN
        pte |= ARM_LPAE_PTE_AF
        return pte | (ARM_LPAE_PTE_TYPE_PAGE if i == self.nlevels - 1 else ARM_LPAE_PTE_TYPE_BLOCK)

    def _decode(self, v: int, i: int) -> tuple[int, int, int]:
        pa = v & ARM_LPAE_PTE_ADDR_MASK
        if self.granule == SZ_64K:  # iopte_to_paddr: rotate bits 15:12 back to 51:48
            pa = (pa | (pa << 36)) & (ARM_LPAE_PTE_ADDR_MASK << 4)
        prot = IOMMU_READ | (0 if v & ARM_LPAE_PTE_AP_RDONLY else IOMMU_WRITE)
        attr = (v >> ARM_LPAE_PTE_ATTRINDX_SHIFT) & 7
        prot |= IOMMU_CACHE if attr == ARM_LPAE_MAIR_ATTR_IDX_CACHE else 0
        prot |= IOMMU_MMIO if attr == ARM_LPAE_MAIR_ATTR_IDX_DEV else 0
        prot |= IOMMU_NOEXEC if v & ARM_LPAE_PTE_XN else 0
        prot |= 0 if v & ARM_LPAE_PTE_AP_UNPRIV else IOMMU_PRIV
        return pa, self._block[i], prot

    def _decode_vec(self, v: np.ndarray, iov: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        u = np.uint64
        phys = v & u(ARM_LPAE_PTE_ADDR_MASK)
        if self.granule == SZ_64K:
            phys = (phys | (phys << u(36))) & u(ARM_LPAE_PTE_ADDR_MASK << 4)
        prot = u(IOMMU_READ) + (((v >> u(7)) & u(1)) ^ u(1)) * u(IOMMU_WRITE)
        attr = (v >> u(ARM_LPAE_PTE_ATTRINDX_SHIFT)) & u(7)
        prot = prot + (attr == ARM_LPAE_MAIR_ATTR_IDX_CACHE).astype(np.uint64) * u(IOMMU_CACHE)
        prot = prot + (attr == ARM_LPAE_MAIR_ATTR_IDX_DEV).astype(np.uint64) * u(IOMMU_MMIO)
        prot = prot + ((v & u(ARM_LPAE_PTE_XN)) != 0).astype(np.uint64) * u(IOMMU_NOEXEC)
        prot = prot + ((v & u(ARM_LPAE_PTE_AP_UNPRIV)) == 0).astype(np.uint64) * u(IOMMU_PRIV)
        return phys, prot

    # -- map ----------------------------------------------------------------------------------
    def _check_map(self, iova, paddr, pgsize, count, prot, info, cpu):
        """``arm_lpae_map_pages``' checks, in order."""
        fn = self.FN["map"]
        if info is None:
            return self._err(fn, EINVAL, "WARN_ON(!pgsize || (pgsize & cfg->pgsize_bitmap) != pgsize)",
                             True, cpu, iova=iova, pgsize=pgsize)
        if iova >> self.ias:
            return self._err(fn, ERANGE, f"WARN_ON(iaext): iova beyond ias {self.ias}", True, cpu, iova=iova)
        if paddr >> self.oas:
            return self._err(fn, ERANGE, f"WARN_ON(paddr >> oas {self.oas})", True, cpu, paddr=paddr)
        if not prot & (IOMMU_READ | IOMMU_WRITE):
            return self._err(fn, EINVAL, "prot has neither IOMMU_READ nor IOMMU_WRITE", False, cpu, prot=prot)
        if (iova | paddr) & (pgsize - 1):
            raise ValueError(f"{fn}: iova {iova:#x} / paddr {paddr:#x} not {pgsize:#x}-aligned "
                             "(the IOMMU core never passes this)")
        return None

    def _map_span_limit(self, iova: int, left: int, lvl: int) -> int:
        """``arm_lpae_max_entries``: stop at the end of the current table."""
        return min(left, self._ent[lvl] - ((iova >> self._sh[lvl]) & self._mask[lvl]))

    # -- unmap --------------------------------------------------------------------------------
    def _unmap(self, iova, pgsize, count, cpu):
        """``arm_lpae_unmap_pages`` -> ``__arm_lpae_unmap``."""
        fn = self.FN["unmap"]
        info = self._pgsz.get(pgsize)
        if info is None:
            self._err(fn, EINVAL, "WARN_ON(!pgsize || (pgsize & cfg->pgsize_bitmap) != pgsize || !pgcount)",
                      True, cpu, pgsize=pgsize)
            return 0, 0, None
        if iova >> self.ias:
            self._err(fn, ERANGE, "WARN_ON(iaext)", True, cpu, iova=iova)
            return 0, 0, None
        lvl = info[0]
        sh, mask = self._sh, self._mask
        t = self.root
        for i in range(lvl):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                if t.ent[idx]:
                    self._err("__arm_lpae_unmap", EINVAL, "WARN_ONCE: Unmap of a partial large IOPTE is "
                              "not allowed", True, cpu, iova=iova, level=self.level_name(i))
                else:
                    self._err("__arm_lpae_unmap", EINVAL, _NOENT, True, cpu, iova=iova, level=self.level_name(i))
                return 0, 0, None
            t = k
        idx = (iova >> sh[lvl]) & mask[lvl]
        num = min(count, self._ent[lvl] - idx)
        seg = t.ent[idx:idx + num]
        if not seg[0]:
            self._err("__arm_lpae_unmap", EINVAL, _NOENT, True, cpu, iova=iova, level=self.level_name(lvl))
            return 0, 0, None
        k = num
        if num > 1:
            z = np.flatnonzero(seg == 0)
            if len(z):
                k = int(z[0])
                self._err("__arm_lpae_unmap", EINVAL, "WARN_ON(!pte): hole inside the range", True, cpu,
                          iova=iova + k * pgsize)
        bsz = self._block[lvl]
        tables = 0
        if t.kids:
            for j in [j for j in t.kids if idx <= j < idx + k]:
                kid = t.kids.pop(j)
                t.ent[j] = 0
                self._flush(kid.base, bsz, cpu)
                self.last_freed += self._free_subtree(kid, cpu)
                tables += 1
        seg[:k] = 0
        self._leaves -= k - tables
        return k * bsz, k, (iova, k * bsz, bsz)
