"""Multi-level IO page tables, as the IOMMU drivers build them (Linux 6.16/6.17).

Mirrors three page-table implementations behind ``iommu_domain_ops->map_pages/unmap_pages``:

* **arm-lpae** - ``drivers/iommu/io-pgtable-arm.c`` (ARM SMMUv2/v3 stage-1 LPAE):
  ``arm_lpae_alloc_pgtable``, ``arm_lpae_restrict_pgsizes``, ``arm_lpae_map_pages`` ->
  ``__arm_lpae_map`` -> ``arm_lpae_init_pte``, ``arm_lpae_unmap_pages`` -> ``__arm_lpae_unmap``,
  ``arm_lpae_iova_to_phys``. Driver name ``"arm"``.
* **x86-64, driver "intel"** - ``drivers/iommu/intel/iommu.c`` (VT-d second-stage tables):
  ``pfn_to_dma_pte``, ``intel_iommu_map_pages`` -> ``__domain_mapping``, ``intel_iommu_unmap_pages``
  -> ``intel_iommu_unmap`` -> ``domain_unmap`` -> ``dma_pte_clear_level``, ``intel_iommu_iova_to_phys``.
* **x86-64, driver "amd"** - ``drivers/iommu/amd/io_pgtable.c`` (AMD-Vi v1): ``iommu_v1_map_pages``,
  ``alloc_pte``, ``fetch_pte``, ``iommu_v1_unmap_pages``, ``iommu_v1_iova_to_phys``.

Geometry (``i`` below is the model's level index, 0 = top table; the kernel's own numbering is given):

=========== ======= ============ ===================================================================
format      granule bits/level   levels for ias (top table entries), leaf sizes
=========== ======= ============ ===================================================================
x86-64      4K      9            ias 39: 3, 48: 4 (512), 57: 5. Intel levels ``agaw_to_level``:
                                 5/4 = PML5/PML4 (tables only), 3 = PDPT (1G superpage),
                                 2 = PD (2M superpage), 1 = PT (4K). ``pfn_level_offset(pfn, level)``
                                 = ``(pfn >> 9*(level-1)) & 511``. AMD v1: level 0 = 4K PTEs, any
                                 level may hold a leaf; sizes between level sizes are replicated
                                 PTEs (``PAGE_SIZE_PTE``/``PM_LEVEL_ENC(7)``, 64K = 16 level-0 PTEs).
arm-lpae    4K      9            ``ARM_LPAE_LVL_SHIFT``; 48-bit: levels 0..3, pgd 512 entries;
                                 blocks at L1 (1G), L2 (2M), pages at L3 (4K).
arm-lpae    16K     11           48-bit: va_bits 34, levels 0..3, pgd_bits 1 (2 entries);
                                 blocks at L2 (32M), pages at L3 (16K).
arm-lpae    64K     13           48-bit: va_bits 32, levels 1..3, pgd_bits 6 (64 entries);
                                 blocks at L2 (512M), pages at L3 (64K). (The 4T L1 block needs
                                 ``oas > 48`` and is not modelled.)
=========== ======= ============ ===================================================================

ARM: ``bits_per_level = pg_shift - 3``, ``levels = DIV_ROUND_UP(ias - pg_shift, bits_per_level)``,
``start_level = 4 - levels``, ``pgd_bits = va_bits - bits_per_level * (levels - 1)``
(``arm_lpae_alloc_pgtable``); the same rule with 9 bits gives the x86 level count.

Each table is a numpy ``uint64`` array of real-format PTEs (physical address | attribute bits, as
the hardware reads them) plus a dict of child tables for the walk; a table page's own "physical
address" is made up (a bump allocator in a simulated region, :data:`TABLE_PHYS_BASE`). 4 Mi mapped
4K pages take 8192 leaf tables = 32 MiB.

Behaviour per driver (what the kernel functions do, and where the model differs on purpose):

* **Overlap.** io-pgtable-arm: a present leaf where a new leaf goes -> ``WARN_ON`` + ``-EEXIST``
  (``arm_lpae_init_pte``), also when a block already covers the walk (``__arm_lpae_map``). VT-d's
  ``__domain_mapping`` instead prints "DMA PTE for vPFN ... already set", ``WARN_ON(1)``, keeps the old
  PTE and returns 0; AMD v1 silently replaces the old PTEs (``free_clear_pte``) and flushes.
  **Model: every driver returns -EEXIST (+ a warn event) and writes nothing** (the brief's rule;
  the Intel/AMD behaviour is documented, not reproduced).
* **Block/superpage over an existing lower table.** All three drivers drop the table (ARM
  ``arm_lpae_init_pte`` -> ``__arm_lpae_unmap`` + ``io_pgtable_tlb_flush_walk``; VT-d
  ``switch_to_super_page`` + ``cache_tag_flush_range``; AMD ``free_clear_pte`` + flush). Model: done
  when the table (subtree) holds no leaf (the normal case after unmapping small pages, since tables
  are not freed on leaf unmap); if it still holds live leaves the kernel would silently discard them -
  the model refuses with -EEXIST instead.
* **One map_pages call.** ARM maps at most up to the end of the current table
  (``arm_lpae_max_entries``) and reports the bytes done; ``iommu_map_nosync`` calls again for the rest.
  VT-d and AMD map the whole ``pgsize * pgcount`` in one call, crossing tables.
* **Partial unmap of a block.** ARM (6.17): ``WARN_ONCE("Unmap of a partial large IOPTE is not
  allowed")``, returns 0 - the old ``arm_lpae_split_blk_unmap`` block splitting is gone from this
  kernel. VT-d: ``intel_iommu_unmap`` rounds the size up to the superpage found at ``iova``
  (``pfn_to_dma_pte`` level), unmaps it whole and returns that size. AMD: ``fetch_pte`` returns the
  large page, all its replicated PTEs are cleared, its full size is counted.
* **Holes.** ARM: a non-present first PTE -> ``WARN_ON`` and ``return -ENOENT`` from a ``size_t``
  function (6.17 source); modelled as 0 (stop) with a warn event. A hole after the first entry:
  ``WARN_ON`` + the entries before it. VT-d never stops: the size is rounded up to the level where
  the walk met the non-present entry, ``domain_unmap`` clears whatever is present in that range and
  the full (rounded) size is returned. AMD: returns the bytes cleared before the hole (0 at once).
* **Freeing tables on unmap.** io-pgtable-arm and AMD v1 never free a table because its leaves were
  cleared; ARM frees a table only when an unmap at a block size meets a table entry
  (``__arm_lpae_unmap``: clear, ``io_pgtable_tlb_flush_walk``, ``__arm_lpae_free_pgtable``).
  VT-d's ``dma_pte_clear_level`` frees every table whose whole span lies inside the unmapped range
  (queued on ``gather->freelist``, freed after the IOTLB sync); partially cleared tables stay.
* **AMD table growth.** AMD v1 starts at 3 levels and adds levels on demand
  (``increase_address_space``); the model builds the ``ias`` levels up front.
* **Intel superpage choice.** ``__domain_mapping`` re-derives the level with
  ``hardware_largepage_caps()``; for bitmaps of this driver (4K|2M|1G) it equals the core's choice,
  so the model uses the ``pgsize`` it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from iovalab.kernel.events import EventLog
from iovalab.kernel.units import (
    EEXIST,
    EFAULT,
    EINVAL,
    ERANGE,
    GENMASK,
    SZ_1G,
    SZ_2M,
    SZ_4K,
    SZ_16K,
    SZ_32M,
    SZ_64K,
    SZ_512M,
)

__all__ = [
    "IOMMU_READ", "IOMMU_WRITE", "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
    "FORMATS", "DRIVERS", "TABLE_PHYS_BASE",
    "INTEL_PGSIZES", "AMD_IOMMU_PGSIZES", "arm_lpae_pgsizes",
    "IoPageTable",
]

# include/linux/iommu.h
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
IOMMU_MMIO = 1 << 4
IOMMU_PRIV = 1 << 5

FORMATS = ("x86-64", "arm-lpae")
DRIVERS = ("intel", "amd", "arm")
_DEFAULT_DRIVER = {"x86-64": "intel", "arm-lpae": "arm"}

#: Simulated physical region the model takes page-table pages from (no kernel analogue).
TABLE_PHYS_BASE = 0x7E00_0000_0000

#: Page sizes of VT-d second-stage tables with 2-level superpage support (``SZ_4K`` |
#: ``domain_super_pgsize_bitmap()``), the only sizes ``intel_iommu_map_pages`` accepts.
INTEL_PGSIZES = SZ_4K | SZ_2M | SZ_1G
#: ``AMD_IOMMU_PGSIZES`` (drivers/iommu/amd/amd_iommu_types.h): ``GENMASK_ULL(51, 12) ^ SZ_512G``.
AMD_IOMMU_PGSIZES = GENMASK(51, 12) ^ (1 << 39)

# drivers/iommu/intel/iommu.h: second-stage PTE bits
DMA_PTE_READ = 1 << 0
DMA_PTE_WRITE = 1 << 1
DMA_PTE_LARGE_PAGE = 1 << 7
_VTD_ADDR = GENMASK(51, 12)
# drivers/iommu/amd/amd_iommu_types.h
IOMMU_PTE_PR = 1 << 0
IOMMU_PTE_FC = 1 << 60
IOMMU_PTE_IR = 1 << 61
IOMMU_PTE_IW = 1 << 62
PM_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_AMD_L7 = 7 << 9  # PM_LEVEL_ENC(7): replicated ("level 7") large PTE
# drivers/iommu/io-pgtable-arm.c
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

_L = "pgtable"
_FN = {
    "arm": {"map": "arm_lpae_map_pages", "unmap": "arm_lpae_unmap_pages", "alloc": "__arm_lpae_alloc_pages",
            "root": "__arm_lpae_alloc_pages", "free": "__arm_lpae_free_pgtable",
            "flush": "io_pgtable_tlb_flush_walk", "init": "arm_lpae_init_pte"},
    "intel": {"map": "intel_iommu_map_pages", "unmap": "intel_iommu_unmap_pages", "alloc": "pfn_to_dma_pte",
              "root": "iommu_alloc_pages_node_sz", "free": "dma_pte_clear_level",
              "flush": "cache_tag_flush_range", "init": "__domain_mapping"},
    "amd": {"map": "iommu_v1_map_pages", "unmap": "iommu_v1_unmap_pages", "alloc": "alloc_pte",
            "root": "iommu_alloc_pages_node_sz", "free": "free_clear_pte",
            "flush": "amd_iommu_domain_flush_pages", "init": "iommu_v1_map_pages"},
}


def arm_lpae_pgsizes(granule: int) -> int:
    """Page sizes ``arm_lpae_restrict_pgsizes()`` (io-pgtable-arm.c) keeps for a granule
    (``unsigned long granule``): 4K -> 4K|2M|1G, 16K -> 16K|32M, 64K -> 64K|512M."""
    sizes = {SZ_4K: SZ_4K | SZ_2M | SZ_1G, SZ_16K: SZ_16K | SZ_32M, SZ_64K: SZ_64K | SZ_512M}
    if granule not in sizes:
        raise ValueError(f"ARM LPAE granule {granule:#x} is not 4K, 16K or 64K (arm_lpae_restrict_pgsizes)")
    return sizes[granule]


def _bits(x: int):
    while x:
        low = x & -x
        yield low
        x ^= low


class _Tbl:
    """One table page: ``ent`` (the PTEs), ``kids`` (index -> child table), level, IOVA base."""

    __slots__ = ("ent", "kids", "lvl", "base", "phys")

    def __init__(self, n: int, lvl: int, base: int, phys: int):
        self.ent = np.zeros(n, dtype=np.uint64)
        self.kids: dict[int, _Tbl] = {}
        self.lvl = lvl
        self.base = base
        self.phys = phys


class IoPageTable:
    """A multi-level IO page table (``struct io_pgtable`` / ``dmar_domain->pgd`` / ``amd_io_pgtable``).

    :param fmt: ``"x86-64"`` or ``"arm-lpae"``.
    :param granule: smallest page (``ARM_LPAE_GRANULE``): 4K for x86-64; 4K, 16K or 64K for ARM.
    :param ias: input (IOVA) address bits (``cfg->ias`` / ``domain->gaw``).
    :param log: the :class:`~iovalab.kernel.events.EventLog` steps go to (``None``: no events).
    :param driver: ``"intel"`` (default for x86-64), ``"amd"`` (x86-64) or ``"arm"`` (arm-lpae);
        picks the map/unmap semantics listed in the module docstring.
    :param pgsize_bitmap: leaf sizes to accept (default: the driver's own; ``INTEL_PGSIZES``,
        ``AMD_IOMMU_PGSIZES``, :func:`arm_lpae_pgsizes`). Sizes above ``2**ias`` are ignored.
    :param oas: output address bits; ARM rejects ``paddr >> oas`` with -ERANGE (default 48).
    :param tlb_flush: ``tlb_flush(iova, size, func, cpu)`` - the immediate invalidations a driver
        does inside map/unmap (``io_pgtable_tlb_flush_walk`` ...), supplied by the IOMMU domain.

    The root table page is allocated at construction (one ``table_pages`` event).
    """

    def __init__(self, fmt: str = "x86-64", granule: int = SZ_4K, ias: int = 48, log: EventLog | None = None,
                 *, driver: str | None = None, pgsize_bitmap: int | None = None, oas: int | None = None,
                 tlb_flush: Callable[[int, int, str, int], None] | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"page-table format {fmt!r} is not one of {FORMATS}")
        driver = driver or _DEFAULT_DRIVER[fmt]
        if driver not in DRIVERS:
            raise ValueError(f"driver {driver!r} is not one of {DRIVERS}")
        if (driver == "arm") != (fmt == "arm-lpae"):
            raise ValueError(f"driver {driver!r} does not use the {fmt!r} format "
                             "(intel/amd: x86-64; arm: arm-lpae)")
        if fmt == "x86-64":
            if granule != SZ_4K:
                raise ValueError(f"granule {granule:#x}: x86-64 IO page tables have 4K pages only")
            bits, max_ias, native = 9, 57, (INTEL_PGSIZES if driver == "intel" else AMD_IOMMU_PGSIZES)
        else:
            native = arm_lpae_pgsizes(granule)
            bits = granule.bit_length() - 1 - 3
            max_ias = 52 if granule == SZ_64K else 48
        shift = granule.bit_length() - 1
        if not shift < ias <= max_ias:
            raise ValueError(f"ias {ias}: must be > {shift} and <= {max_ias} for {fmt} "
                             f"with granule {granule:#x}")
        self.fmt, self.driver, self.granule, self.ias = fmt, driver, granule, ias
        self.oas = oas if oas is not None else (48 if fmt == "arm-lpae" else 52)
        self.log = log
        self.tlb_flush = tlb_flush
        va_bits = ias - shift
        n = -(-va_bits // bits)
        self.nlevels = n
        self.bits_per_level = bits
        self.pgd_bits = va_bits - bits * (n - 1)
        self._sh = [shift + bits * (n - 1 - i) for i in range(n)]
        self._ent = [1 << self.pgd_bits] + [1 << bits] * (n - 1)
        self._mask = [e - 1 for e in self._ent]
        self._block = [1 << s for s in self._sh]
        self.block_sizes = tuple(self._block)
        self.level_entries = tuple(self._ent)
        self.level_shifts = tuple(self._sh)
        if pgsize_bitmap is None:
            pgsize_bitmap = native
        self._pgsz: dict[int, tuple[int, int]] = {}
        for s in _bits(pgsize_bitmap):
            if s > (1 << ias):
                continue
            if driver != "amd" and not s & native:
                raise ValueError(f"page size {s:#x} is not a {driver} {fmt} leaf size (allowed: {native:#x})")
            if s < granule:
                raise ValueError(f"page size {s:#x} is below the granule {granule:#x}")
            i = min(j for j in range(n) if self._block[j] <= s)
            self._pgsz[s] = (i, s // self._block[i])
        self.pgsize_bitmap = sum(self._pgsz)
        self._fn = _FN[driver]
        self._fn_map = self._fn["map"]
        self._arm = driver == "arm"
        self._bits_cache: dict[tuple[int, int, int], int] = {}
        self._lname = [self.level_name(i) for i in range(n)]
        self._tphys = TABLE_PHYS_BASE
        self._ntables = 0
        self._leaves = 0
        #: table pages the last ``unmap_pages`` freed (VT-d: queued on ``gather->freelist``).
        self.last_freed = 0
        self.root = self._new_table(0, 0)
        if log is not None:
            log.emit(_L, self._fn["root"], "table_pages", self.root.phys, level=self.level_name(0), iova=0)

    # -- geometry ------------------------------------------------------------------------------
    def level_name(self, i: int) -> str:
        """Kernel name of model level ``i`` (0 = top): Intel ``PML4``/``PDPT``/``PD``/``PT``,
        ARM ``L0``..``L3`` (``start_level + i``), AMD ``L<n>`` (0 = 4K PTEs)."""
        n = self.nlevels
        if self.driver == "arm":
            return f"L{ARM_LPAE_MAX_LEVELS - n + i}"
        if self.driver == "amd":
            return f"L{n - 1 - i}"
        names = ["PML5", "PML4", "PDPT", "PD", "PT"]
        return names[len(names) - n + i] if n <= len(names) else f"level{n - i}"

    def geometry(self) -> list[dict]:
        """One dict per level: name, IOVA shift, entries per table, block size, leaf allowed."""
        leafs = {i for i, _ in self._pgsz.values()}
        return [{"level": self.level_name(i), "shift": self._sh[i], "entries": self._ent[i],
                 "block": self._block[i], "leaf": i in leafs} for i in range(self.nlevels)]

    # -- PTE encoding ----------------------------------------------------------------------------
    def _new_table(self, lvl: int, base: int) -> _Tbl:
        t = _Tbl(self._ent[lvl], lvl, base, self._tphys)
        self._tphys += self.granule
        self._ntables += 1
        return t

    def _table_pte(self, tphys: int, i: int) -> int:
        d = self.driver
        if d == "intel":
            return tphys | DMA_PTE_READ | DMA_PTE_WRITE
        if d == "amd":  # PM_LEVEL_PDE(level, phys), level = the PTE's own level
            lv = ((self.nlevels - 1 - i) << 9) & 0xE00
            return tphys | lv | IOMMU_PTE_PR | IOMMU_PTE_IR | IOMMU_PTE_IW
        return ((tphys | (tphys >> 36)) & ARM_LPAE_PTE_ADDR_MASK) | ARM_LPAE_PTE_TYPE_TABLE

    def _leaf_bits(self, prot: int, i: int, rep: int) -> int:
        d = self.driver
        if d == "intel":
            b = (DMA_PTE_READ if prot & IOMMU_READ else 0) | (DMA_PTE_WRITE if prot & IOMMU_WRITE else 0)
            return b | (DMA_PTE_LARGE_PAGE if i < self.nlevels - 1 else 0)
        if d == "amd":
            b = IOMMU_PTE_PR | IOMMU_PTE_FC | (IOMMU_PTE_IR if prot & IOMMU_READ else 0)
            return b | (IOMMU_PTE_IW if prot & IOMMU_WRITE else 0) | (_AMD_L7 if rep > 1 else 0)
        # arm_lpae_prot_to_pte() for ARM_64_LPAE_S1
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
        """``(phys of the leaf's first byte, leaf size, IOMMU prot)`` of a leaf PTE at level ``i``."""
        d = self.driver
        if d == "intel":
            prot = (IOMMU_READ if v & DMA_PTE_READ else 0) | (IOMMU_WRITE if v & DMA_PTE_WRITE else 0)
            return v & _VTD_ADDR, self._block[i], prot
        if d == "amd":
            prot = (IOMMU_READ if v & IOMMU_PTE_IR else 0) | (IOMMU_WRITE if v & IOMMU_PTE_IW else 0)
            if (v >> 9) & 7 == 7:  # PTE_PAGE_SIZE(pte) = 1 << (1 + ffz(pte | 0xfff))
                x = v | 0xFFF
                size = 1 << ((~x & (x + 1)).bit_length())
                return v & PM_ADDR_MASK & ~(size - 1), size, prot
            return v & PM_ADDR_MASK, self._block[i], prot
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

    def _enc(self, phys: int) -> int:
        if self.driver == "arm":
            return (phys | (phys >> 36)) & ARM_LPAE_PTE_ADDR_MASK
        return phys

    # -- events -------------------------------------------------------------------------------
    def _err(self, func: str, errno: int, rule: str, warn: bool, cpu: int, **args) -> tuple[int, int]:
        log = self.log
        if log is not None:
            if warn:
                log.warn(_L, func, errno, rule, cpu=cpu, **args)
            else:
                log.emit(_L, func, "error", -errno, cpu=cpu, rule=rule, **args)
        return 0, -errno

    def _flush(self, iova: int, size: int, cpu: int) -> None:
        if self.tlb_flush is not None:
            self.tlb_flush(iova, size, self._fn["flush"], cpu)

    # -- walking ------------------------------------------------------------------------------
    def _find(self, iova: int, lvl: int) -> tuple[_Tbl | None, int]:
        """Table at ``lvl`` on the walk of ``iova`` without allocating: ``(table, -1)``, or
        ``(None, -1)`` when a table is missing, or ``(None, i)`` when a leaf at level ``i`` covers it."""
        t = self.root
        sh, mask = self._sh, self._mask
        for i in range(lvl):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                return (None, i) if t.ent[idx] else (None, -1)
            t = k
        return t, -1

    def _alloc_path(self, iova: int, lvl: int, cpu: int) -> _Tbl:
        t = self.root
        sh, mask = self._sh, self._mask
        for i in range(lvl):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                k = self._new_table(i + 1, iova & ~(self._block[i] - 1))
                t.kids[idx] = k
                t.ent[idx] = self._table_pte(k.phys, i)
                if self.log is not None:
                    self.log.emit(_L, self._fn["alloc"], "table_pages", k.phys, cpu=cpu,
                                  level=self.level_name(i + 1), iova=k.base)
            t = k
        return t

    def _subtree_leaves(self, t: _Tbl) -> int:
        n = int(np.count_nonzero(t.ent)) - len(t.kids)
        for k in t.kids.values():
            n += self._subtree_leaves(k)
        return n

    def _free_subtree(self, t: _Tbl, cpu: int) -> int:
        """Drop a table and everything below it (leaves included); returns table pages freed."""
        tables, stack = 0, [t]
        while stack:
            x = stack.pop()
            tables += 1
            self._leaves -= int(np.count_nonzero(x.ent)) - len(x.kids)
            stack.extend(x.kids.values())
        self._ntables -= tables
        if self.log is not None:
            self.log.emit(_L, self._fn["free"], "table_free", None, cpu=cpu, count=tables,
                          level=self.level_name(t.lvl), iova=t.base)
        return tables

    # -- map ----------------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, count: int, prot: int,
                  cpu: int = 0) -> tuple[int, int]:
        """``ops->map_pages(ops, iova, paddr, pgsize, pgcount, prot, gfp, &mapped)``.

        ``iova`` (``unsigned long``), ``paddr`` (``phys_addr_t``), ``pgsize``/``count``
        (``size_t``), ``prot`` (``int``, ``IOMMU_READ``...). Returns ``(mapped bytes, 0 or -errno)``.
        ARM maps at most to the end of the current table (see module docstring); VT-d and AMD map
        all ``count`` pages. Writes nothing on error. Steps: ``table_pages`` per table allocated,
        one ``pte_writes`` event with ``count`` = PTEs written.
        """
        info = self._pgsz.get(pgsize)
        if (info is None or count < 1 or not prot & (IOMMU_READ | IOMMU_WRITE)
                or (iova | paddr) & (pgsize - 1) or (iova + pgsize * count - 1) >> self.ias
                or paddr >> self.oas):
            bad = self._map_checks(iova, paddr, pgsize, count, prot, info, cpu)
            if bad is not None:
                return bad
        lvl, rep = info
        if count == 1 and rep == 1:  # fast path: one PTE in an existing table
            t = self.root
            sh, mask = self._sh, self._mask
            for i in range(lvl):
                t = t.kids.get((iova >> sh[i]) & mask[i])
                if t is None:
                    break
            else:
                idx = (iova >> sh[lvl]) & mask[lvl]
                ent = t.ent
                if not ent[idx]:
                    key = (prot, lvl, 1)
                    bits = self._bits_cache.get(key)
                    if bits is None:
                        bits = self._bits_cache[key] = self._leaf_bits(prot, lvl, 1)
                    ent[idx] = (self._enc(paddr) if self._arm else paddr) | bits
                    self._leaves += 1
                    if self.log is not None:
                        self.log.emit(_L, self._fn_map, "pte_writes", pgsize, cpu=cpu, count=1, iova=iova,
                                      paddr=paddr, pgsize=pgsize, pgcount=1, level=self._lname[lvl])
                    return pgsize, 0
        return self._map_slow(iova, paddr, pgsize, count, prot, info, cpu)

    def _map_checks(self, iova, paddr, pgsize, count, prot, info, cpu) -> tuple[int, int] | None:
        """The driver's argument checks, in its order: an error tuple, or None to go on."""
        d = self.driver
        fn = self._fn["map"]
        if count < 1:
            raise ValueError(f"{fn}: pgcount {count} (iommu_pgsize never returns 0)")
        if d == "arm":
            if info is None:
                return self._err(fn, EINVAL, "WARN_ON(!pgsize || (pgsize & cfg->pgsize_bitmap) != pgsize)",
                                 True, cpu, iova=iova, pgsize=pgsize)
            if iova >> self.ias:
                return self._err(fn, ERANGE, f"WARN_ON(iaext): iova beyond ias {self.ias}", True, cpu,
                                 iova=iova)
            if paddr >> self.oas:
                return self._err(fn, ERANGE, f"WARN_ON(paddr >> oas {self.oas})", True, cpu, paddr=paddr)
            if not prot & (IOMMU_READ | IOMMU_WRITE):
                return self._err(fn, EINVAL, "prot has neither IOMMU_READ nor IOMMU_WRITE", False, cpu,
                                 prot=prot)
            if (iova | paddr) & (pgsize - 1):
                raise ValueError(f"{fn}: iova {iova:#x} / paddr {paddr:#x} not {pgsize:#x}-aligned "
                                 "(the IOMMU core never passes this)")
        elif d == "intel":
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
        else:
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

    def _map_slow(self, iova, paddr, pgsize, count, prot, info, cpu) -> tuple[int, int]:
        d = self.driver
        fn = self._fn_map
        lvl, rep = info
        sh, mask, nent = self._sh[lvl], self._mask[lvl], self._ent[lvl]
        bsz = self._block[lvl]
        left = count * rep
        if d == "arm":
            left = min(left, nent - ((iova >> sh) & mask))
        # 1. validate every span (no allocation, no write)
        spans = []
        cur = iova
        while left:
            idx = (cur >> sh) & mask
            n = min(left, nent - idx)
            t, blk = self._find(cur, lvl)
            if blk >= 0:
                return self._err(self._fn["init"], EEXIST, f"a block at {self.level_name(blk)} already maps "
                                 "this IOVA (unmap first)", True, cpu, iova=cur)
            repl: list[int] = []
            if t is not None:
                if n == 1:
                    nz = [0] if t.ent[idx] else []
                else:
                    nz = np.flatnonzero(t.ent[idx:idx + n]).tolist()
                for j in nz:
                    k = t.kids.get(idx + j)
                    if k is None:
                        return self._err(self._fn["init"], EEXIST, "PTE already present (unmap first)", True,
                                         cpu, iova=cur + j * bsz)
                    if self._subtree_leaves(k):
                        return self._err(self._fn["init"], EEXIST, "a lower-level table with live mappings "
                                         "is where the block would go (the kernel would discard them)",
                                         True, cpu, iova=cur + j * bsz)
                    repl.append(idx + j)
            spans.append((cur, idx, n, t, repl))
            cur += n * bsz
            left -= n
        # 2. write
        bits = self._leaf_bits(prot, lvl, rep)
        written = 0
        replaced = False
        for cur, idx, n, t, repl in spans:
            if t is None:
                t = self._alloc_path(cur, lvl, cpu)
            for j in repl:
                k = t.kids.pop(j)
                t.ent[j] = 0
                self._free_subtree(k, cpu)
                replaced = True
                if d != "amd":
                    self._flush(k.base, bsz, cpu)
            phys0 = paddr + (cur - iova)
            if rep == 1:
                if n == 1:
                    t.ent[idx] = self._enc(phys0) | bits
                else:
                    ph = np.uint64(phys0) + np.arange(n, dtype=np.uint64) * np.uint64(bsz)
                    if d == "arm":
                        ph = (ph | (ph >> np.uint64(36))) & np.uint64(ARM_LPAE_PTE_ADDR_MASK)
                    t.ent[idx:idx + n] = ph | np.uint64(bits)
            else:  # AMD replicated large PTEs: PAGE_SIZE_PTE(paddr, pgsize) | PM_LEVEL_ENC(7) | ...
                vals = [(((phys0 + k * pgsize) | (pgsize - 1)) & ~(pgsize >> 1) & PM_ADDR_MASK) | bits
                        for k in range(n // rep)]
                t.ent[idx:idx + n] = np.repeat(np.array(vals, dtype=np.uint64), rep)
            written += n
        if replaced and d == "amd":
            self._flush(iova, written // rep * pgsize, cpu)
        self._leaves += written
        mapped = written // rep * pgsize
        if self.log is not None:
            self.log.emit(_L, fn, "pte_writes", mapped, cpu=cpu, count=written, iova=iova, paddr=paddr,
                          pgsize=pgsize, pgcount=count, level=self._lname[lvl])
        return mapped, 0

    # -- bulk leaf writes (no kernel analogue: many map_pages/unmap_pages calls of one granule) ----
    def _leaf_groups(self, iovas: np.ndarray):
        """Split granule-aligned IOVAs by leaf table, in order of first touch."""
        lvl, rep = self._pgsz.get(self.granule, (None, None))
        if lvl is None or rep != 1 or lvl == 0:
            return None
        span = self._block[lvl - 1]
        keys = iovas // np.uint64(span)
        perm = np.argsort(keys, kind="stable")
        sk = keys[perm]
        starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
        ends = np.append(starts[1:], len(perm))
        order = np.argsort(perm[starts], kind="stable")  # groups in order of first touch
        idx = (iovas >> np.uint64(self._sh[lvl])) & np.uint64(self._mask[lvl])
        groups = [(int(sk[starts[g]]) * span, perm[starts[g]:ends[g]]) for g in order.tolist()]
        return lvl, groups, idx.astype(np.intp)

    @staticmethod
    def _has_duplicates(a: np.ndarray) -> bool:
        s = np.sort(a)
        return bool((s[1:] == s[:-1]).any())

    def map_leaves_bulk(self, iovas: np.ndarray, paddrs: np.ndarray, prot: int, cpu: int = 0) -> bool:
        """Many ``map_pages(iova, paddr, granule, 1, prot)`` calls at once, in array order: the same
        table pages (allocated in order of first touch, each a ``table_pages`` event) and the same
        PTE values. The ``pte_writes`` tallies are the caller's. Returns False, writing nothing, when
        any slot is taken, covered by a block, out of range or the arrays are not unique/aligned."""
        iovas = np.asarray(iovas, dtype=np.uint64)
        paddrs = np.asarray(paddrs, dtype=np.uint64)
        g = np.uint64(self.granule - 1)
        n = len(iovas)
        if (n == 0 or len(paddrs) != n or ((iovas | paddrs) & g).any() or not prot & (IOMMU_READ | IOMMU_WRITE)
                or int(iovas.max()) + self.granule > 1 << self.ias or int(paddrs.max()) >> self.oas
                or self._has_duplicates(iovas)):
            return False
        grouped = self._leaf_groups(iovas)
        if grouped is None:
            return False
        lvl, groups, idx = grouped
        tables = []
        for base, sel in groups:  # validate everything before writing anything
            t, blk = self._find(base, lvl)
            if blk >= 0 or (t is not None and t.ent[idx[sel]].any()):
                return False
            tables.append(t)
        bits = np.uint64(self._leaf_bits(prot, lvl, 1))
        enc = paddrs
        if self._arm:
            enc = (paddrs | (paddrs >> np.uint64(36))) & np.uint64(ARM_LPAE_PTE_ADDR_MASK)
        for (base, sel), t in zip(groups, tables, strict=True):
            if t is None:
                t = self._alloc_path(base, lvl, cpu)
            t.ent[idx[sel]] = enc[sel] | bits
        self._leaves += n
        return True

    def find_mapped(self, lo: int, hi: int, limit: int = 16) -> list[int]:
        """Up to ``limit`` granule addresses in ``[lo, hi)`` that a leaf maps, ascending; walks only
        the tables that exist (no kernel analogue: a query for contract checks and views)."""
        out: list[int] = []
        g = self.granule

        def walk(t: _Tbl) -> None:
            i = t.lvl
            bsz = self._block[i]
            first = max(lo, t.base)
            last = min(hi, t.base + bsz * len(t.ent))
            if first >= last:
                return
            a = (first - t.base) // bsz
            b = (last - t.base + bsz - 1) // bsz
            for j in np.flatnonzero(t.ent[a:b]).tolist():
                k = t.kids.get(a + j)
                if k is not None:
                    walk(k)
                else:
                    start = max(first, t.base + (a + j) * bsz)
                    end = min(last, t.base + (a + j + 1) * bsz)
                    out.extend(range(start, min(end, start + g * (limit - len(out))), g))
                if len(out) >= limit:
                    return

        walk(self.root)
        return out[:limit]

    def first_unmapped(self, lo: int, hi: int) -> int | None:
        """Lowest granule address in ``[lo, hi)`` with no leaf, or None (walks existing tables)."""
        g = self.granule

        def walk(t: _Tbl, first: int, last: int) -> int | None:
            bsz = self._block[t.lvl]
            a = (first - t.base) // bsz
            b = (last - t.base + bsz - 1) // bsz
            ent = t.ent[a:b]
            if not ent.all():
                j = int(np.flatnonzero(ent == 0)[0])
            else:
                j = None
            upto = b if j is None else a + j  # entries before the first empty one
            for k_idx in sorted(x for x in t.kids if a <= x < upto):
                k = t.kids[k_idx]
                r = walk(k, max(first, k.base), min(last, k.base + bsz))
                if r is not None:
                    return r
            if j is None:
                return None
            return max(first, t.base + (a + j) * bsz) & ~(g - 1)

        return walk(self.root, lo, hi)

    def clear_leaves_bulk(self, iovas: np.ndarray) -> bool:
        """Clear granule-size leaf PTEs (many ``unmap_pages(iova, granule, 1)`` that each find a present
        leaf). Returns False, clearing nothing, unless every IOVA holds a granule leaf."""
        iovas = np.asarray(iovas, dtype=np.uint64)
        if len(iovas) == 0 or (iovas & np.uint64(self.granule - 1)).any() or self._has_duplicates(iovas):
            return False
        grouped = self._leaf_groups(iovas)
        if grouped is None:
            return False
        lvl, groups, idx = grouped
        tables = []
        for base, sel in groups:
            t, blk = self._find(base, lvl)
            if t is None or blk >= 0 or not t.ent[idx[sel]].all():
                return False
            tables.append(t)
        for (_, sel), t in zip(groups, tables, strict=True):
            t.ent[idx[sel]] = 0
        self._leaves -= len(iovas)
        return True

    # -- unmap --------------------------------------------------------------------------------
    def unmap_pages(self, iova: int, pgsize: int, count: int,
                    gather_cb: Callable[[int, int, int], None] | None = None, cpu: int = 0) -> int:
        """``ops->unmap_pages(ops, iova, pgsize, pgcount, gather)``: returns bytes unmapped.

        ``gather_cb(iova, size, leaf_size)`` is called where the driver adds to the IOTLB gather:
        ARM once per run of cleared PTEs (io-pgtable's per-PTE ``io_pgtable_tlb_add_page``, all of
        ``leaf_size``), VT-d once per call with the (rounded) size, AMD once with the bytes unmapped
        when non-zero. The IOMMU domain turns these into the driver's gather helper. One
        ``pte_clear`` event per call (``count`` = PTEs cleared). Semantics per driver: module
        docstring.
        """
        self.last_freed = 0
        if count < 1 or not pgsize or pgsize & (pgsize - 1):
            raise ValueError(f"unmap_pages: pgsize {pgsize:#x} / pgcount {count} invalid")
        d = self.driver
        if d == "arm":
            n, cleared, gat = self._unmap_arm(iova, pgsize, count, cpu)
        elif d == "intel":
            n, cleared, gat = self._unmap_intel(iova, pgsize, count, cpu)
        else:
            n, cleared, gat = self._unmap_amd(iova, pgsize, count, cpu)
        if self.log is not None:
            self.log.emit(_L, self._fn["unmap"], "pte_clear", n, cpu=cpu, count=cleared, iova=iova,
                          pgsize=pgsize, pgcount=count)
        if gat is not None and gather_cb is not None:
            gather_cb(*gat)
        return n

    def _unmap_arm(self, iova, pgsize, count, cpu) -> tuple[int, int, tuple | None]:
        fn = self._fn["unmap"]
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
                    self._err("__arm_lpae_unmap", EINVAL, "WARN_ON(!pte): nothing mapped (the kernel returns "
                              "(size_t)-ENOENT here; modelled as 0)", True, cpu, iova=iova,
                              level=self.level_name(i))
                return 0, 0, None
            t = k
        idx = (iova >> sh[lvl]) & mask[lvl]
        num = min(count, self._ent[lvl] - idx)
        seg = t.ent[idx:idx + num]
        if not seg[0]:
            self._err("__arm_lpae_unmap", EINVAL, "WARN_ON(!pte): nothing mapped (the kernel returns "
                      "(size_t)-ENOENT here; modelled as 0)", True, cpu, iova=iova,
                      level=self.level_name(lvl))
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

    def _unmap_intel(self, iova, pgsize, count, cpu) -> tuple[int, int, tuple | None]:
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
            cleared = self._intel_clear(self.root, iova, last, cpu)
        return size, cleared, (iova, size, size)

    def _intel_clear(self, t: _Tbl, start: int, last: int, cpu: int) -> int:
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
                cleared += self._intel_clear(kid, start, last, cpu)
            else:
                self._err("dma_pte_clear_level", EINVAL, "range covers only part of a superpage: the kernel "
                          "walks the superpage's data page as if it were a table (not modelled); the "
                          "superpage stays mapped", True, cpu, iova=e_lo, level=self.level_name(i))
        return cleared

    def _leaf(self, iova: int) -> tuple[_Tbl, int, int, int] | None:
        """The hardware walk: ``(table, index, level, PTE value)`` of the leaf that maps ``iova``."""
        if iova >> self.ias or iova < 0:
            return None
        t = self.root
        sh, mask = self._sh, self._mask
        for i in range(self.nlevels):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                v = int(t.ent[idx])
                return (t, idx, i, v) if v else None
            t = k
        raise AssertionError("unreachable: the bottom level has no child tables")

    def _amd_fetch(self, iova: int):
        """``fetch_pte()``: ``(table, first index, level, replicas, page size)`` or None."""
        hit = self._leaf(iova)
        if hit is None:
            return None
        t, idx, i, v = hit
        size = self._decode(v, i)[1]
        rep = size // self._block[i]
        return t, idx & ~(rep - 1), i, rep, size

    def _unmap_amd(self, iova, pgsize, count, cpu) -> tuple[int, int, tuple | None]:
        size = count * pgsize
        unmapped = 0
        cleared = 0
        cur = iova
        bottom = self.nlevels - 1
        while unmapped < size:
            f = self._amd_fetch(cur)
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

    def _table_leaves(self, t: _Tbl):
        """Arrays ``(iova, phys, prot)`` of the leaf PTEs of one table, in IOVA order."""
        i = t.lvl
        nz = np.flatnonzero(t.ent)
        if t.kids:
            nz = nz[~np.isin(nz, np.fromiter(t.kids, dtype=np.int64, count=len(t.kids)))]
        if not len(nz):
            return None
        v = t.ent[nz]
        iov = np.uint64(t.base) + nz.astype(np.uint64) * np.uint64(self._block[i])
        d = self.driver
        u = np.uint64
        if d == "intel":
            phys = v & u(_VTD_ADDR)
            prot = (v & u(DMA_PTE_READ)) * u(IOMMU_READ) + ((v >> u(1)) & u(1)) * u(IOMMU_WRITE)
        elif d == "amd":
            phys = v & u(PM_ADDR_MASK)
            prot = ((v >> u(61)) & u(1)) * u(IOMMU_READ) + ((v >> u(62)) & u(1)) * u(IOMMU_WRITE)
            for j in np.flatnonzero(((v >> u(9)) & u(7)) == 7).tolist():
                base, size, _ = self._decode(int(v[j]), i)
                phys[j] = base + (int(iov[j]) & (size - 1))
        else:
            phys = v & u(ARM_LPAE_PTE_ADDR_MASK)
            if self.granule == SZ_64K:
                phys = (phys | (phys << u(36))) & u(ARM_LPAE_PTE_ADDR_MASK << 4)
            prot = self._arm_prot_vec(v)
        return iov, phys, prot

    def _arm_prot_vec(self, v):
        u = np.uint64
        prot = u(IOMMU_READ) + (((v >> u(7)) & u(1)) ^ u(1)) * u(IOMMU_WRITE)
        attr = (v >> u(ARM_LPAE_PTE_ATTRINDX_SHIFT)) & u(7)
        prot = prot + (attr == ARM_LPAE_MAIR_ATTR_IDX_CACHE).astype(np.uint64) * u(IOMMU_CACHE)
        prot = prot + (attr == ARM_LPAE_MAIR_ATTR_IDX_DEV).astype(np.uint64) * u(IOMMU_MMIO)
        prot = prot + ((v & u(ARM_LPAE_PTE_XN)) != 0).astype(np.uint64) * u(IOMMU_NOEXEC)
        prot = prot + ((v & u(ARM_LPAE_PTE_AP_UNPRIV)) == 0).astype(np.uint64) * u(IOMMU_PRIV)
        return prot

    def _tables_in_order(self):
        stack = [self.root]
        while stack:
            t = stack.pop()
            yield t
            stack.extend(t.kids[j] for j in sorted(t.kids, reverse=True))

    def mapped_ranges(self, merge: bool = True) -> list[tuple[int, int, int, int]]:
        """``[(iova, phys, size, prot), ...]`` in IOVA order: runs that are contiguous in both IOVA
        and physical space with equal prot (``merge=True``), or one tuple per leaf PTE (an AMD
        replicated large page appears once per replica, ``size`` = that level's block)."""
        parts = []
        for t in self._tables_in_order():
            r = self._table_leaves(t)
            if r is not None:
                parts.append((*r, np.full(len(r[0]), self._block[t.lvl], dtype=np.uint64)))
        if not parts:
            return []
        iov, phys, prot, size = (np.concatenate([p[k] for p in parts]) for k in range(4))
        order = np.argsort(iov, kind="stable")
        iov, phys, prot, size = iov[order], phys[order], prot[order], size[order]
        if not merge:
            return list(zip(iov.tolist(), phys.tolist(), size.tolist(), prot.tolist(), strict=True))
        brk = np.flatnonzero((iov[1:] != iov[:-1] + size[:-1]) | (phys[1:] != phys[:-1] + size[:-1])
                             | (prot[1:] != prot[:-1])) + 1
        starts = np.concatenate(([0], brk)).astype(np.int64)
        ends = np.concatenate((brk, [len(iov)])).astype(np.int64)
        csum = np.concatenate(([0], np.cumsum(size, dtype=np.uint64))).astype(np.uint64)
        runs = csum[ends] - csum[starts]
        return list(zip(iov[starts].tolist(), phys[starts].tolist(), runs.tolist(), prot[starts].tolist(),
                        strict=True))

    def leaf_count(self) -> int:
        """Leaf PTEs present (a block counts 1; an AMD replicated page counts its replicas)."""
        return self._leaves

    def table_page_count(self) -> int:
        """Table pages currently allocated, the root included."""
        return self._ntables

    def occupancy(self) -> list[dict]:
        """Per populated top-level entry: ``index``, ``iova`` base, ``span``, ``leaf_ptes``,
        ``mapped`` bytes, ``table_pages`` (for drawing)."""
        out = []
        r = self.root
        span = self._block[0]
        for j in np.flatnonzero(r.ent).tolist():
            k = r.kids.get(j)
            if k is None:
                out.append({"index": j, "iova": j * span, "span": span, "leaf_ptes": 1, "mapped": span,
                            "table_pages": 0})
                continue
            leaves = mapped = tables = 0
            stack = [k]
            while stack:
                x = stack.pop()
                tables += 1
                nl = int(np.count_nonzero(x.ent)) - len(x.kids)
                leaves += nl
                mapped += nl * self._block[x.lvl]
                stack.extend(x.kids.values())
            out.append({"index": j, "iova": j * span, "span": span, "leaf_ptes": leaves, "mapped": mapped,
                        "table_pages": tables})
        return out

    def snapshot(self) -> tuple:
        """Comparable copy of every translation (per leaf PTE)."""
        return tuple(self.mapped_ranges(merge=False))

    def __repr__(self) -> str:
        return (f"<IoPageTable {self.fmt}/{self.driver} granule={self.granule:#x} ias={self.ias} "
                f"levels={self.nlevels} leaves={self._leaves} tables={self._ntables}>")
