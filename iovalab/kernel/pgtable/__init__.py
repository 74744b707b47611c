"""IO page tables, one module per format behind ``struct io_pgtable_ops`` (Linux 6.16/6.17).

==================  =================================================================================
module              kernel file
==================  =================================================================================
``ops``             ``include/linux/io-pgtable.h``: the ops protocol; the table walk formats share
``ops_walk``        the read-only walks (``arm_lpae_iova_to_phys``, ``arm_lpae_pgtable_walk``), a mixin of ``ops``
``arm_lpae``        ``drivers/iommu/io-pgtable-arm.c`` (SMMUv2/v3 stage 1, driver ``"arm"``)
``intel_vtd``       ``drivers/iommu/intel/iommu.c`` (VT-d second stage, driver ``"intel"``)
``amd_v1``          ``drivers/iommu/amd/io_pgtable.c`` (AMD-Vi v1, driver ``"amd"``)
``generic_pt``      ``drivers/iommu/generic_pt/iommu_pt.h`` (7.3.4): ``map_range``/``unmap_range``
``vtdss``           ``drivers/iommu/generic_pt/fmt/vtdss.h`` (7.3.4): VT-d second stage as a generic page table
``amdv1_pt``        ``drivers/iommu/generic_pt/fmt/amdv1.h`` (7.3.4): AMD v1 as a generic page table
``io_pgtable``      ``drivers/iommu/io-pgtable.c``: ``alloc_io_pgtable_ops()``
``table``           the table tree they build, and read-only queries over it (no kernel file)
==================  =================================================================================

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
"""

from iovalab.kernel.pgtable.amd_v1 import AMD_IOMMU_PGSIZES, AmdV1Pgtable
from iovalab.kernel.pgtable.amdv1_pt import AMDV1PT_PGSIZES, Amdv1PtPgtable
from iovalab.kernel.pgtable.generic_pt import GenericPt
from iovalab.kernel.pgtable.arm_lpae import ArmLpaePgtable, arm_lpae_pgsizes
from iovalab.kernel.pgtable.intel_vtd import INTEL_PGSIZES, IntelVtdPgtable
from iovalab.kernel.pgtable.io_pgtable import (
    DRIVERS, FORMATS, GENERIC_PT_CLASSES, PGTABLE_CLASSES, alloc_io_pgtable_ops,
)
from iovalab.kernel.pgtable.ops import (
    IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE, TABLE_PHYS_BASE, IoPgtable,
    IoPgtableOps,
)
from iovalab.kernel.pgtable.vtdss import VtdssPgtable

__all__ = [
    "IOMMU_READ", "IOMMU_WRITE", "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
    "FORMATS", "DRIVERS", "TABLE_PHYS_BASE", "PGTABLE_CLASSES", "GENERIC_PT_CLASSES", "VtdssPgtable",
    "GenericPt", "Amdv1PtPgtable", "AMDV1PT_PGSIZES",
    "INTEL_PGSIZES", "AMD_IOMMU_PGSIZES", "arm_lpae_pgsizes",
    "IoPgtableOps", "IoPgtable", "ArmLpaePgtable", "IntelVtdPgtable", "AmdV1Pgtable", "alloc_io_pgtable_ops",
]
