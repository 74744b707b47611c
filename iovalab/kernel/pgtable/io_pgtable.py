"""``drivers/iommu/io-pgtable.c``: ``alloc_io_pgtable_ops()`` picks the format's ops (Linux 6.17).

The model keys formats by driver: ``"intel"`` (VT-d, x86-64), ``"amd"`` (AMD-Vi v1, x86-64) and
``"arm"`` (io-pgtable-arm LPAE stage 1). VT-d and AMD v1 do not go through io-pgtable.c in 6.17 (their
drivers own their tables); the factory treats them alike so the IOMMU core sees one protocol.
"""

from __future__ import annotations

from iovalab.kernel.events import EventLog
from iovalab.kernel.pgtable.amd_v1 import AmdV1Pgtable
from iovalab.kernel.pgtable.amdv1_pt import Amdv1PtPgtable
from iovalab.kernel.pgtable.arm_lpae import ArmLpaePgtable
from iovalab.kernel.pgtable.intel_vtd import IntelVtdPgtable
from iovalab.kernel.pgtable.ops import IoPgtable, TlbFlush
from iovalab.kernel.pgtable.vtdss import VtdssPgtable
from iovalab.kernel.units import SZ_4K
from iovalab.kernel.version import behaves

__all__ = ["FORMATS", "DRIVERS", "PGTABLE_CLASSES", "GENERIC_PT_CLASSES", "GENERIC_PT_DIFFERENCE",
           "alloc_io_pgtable_ops"]

FORMATS = ("x86-64", "arm-lpae")
DRIVERS = ("intel", "amd", "arm")
_DEFAULT_DRIVER = {"x86-64": "intel", "arm-lpae": "arm"}
#: driver name -> the class of its page-table format
PGTABLE_CLASSES: dict[str, type[IoPgtable]] = {
    "intel": IntelVtdPgtable, "amd": AmdV1Pgtable, "arm": ArmLpaePgtable,
}
#: Linux 7.3.4: drivers whose tables are generic page tables (drivers/iommu/generic_pt/): VT-d
#: (``pt_iommu_vtdss_init`` in intel_iommu_domain_alloc_second_stage()) and AMD v1 (``pt_iommu_amdv1_init``
#: in amd_iommu_domain_alloc_paging_v1(); amd/io_pgtable.c is gone). ARM keeps io-pgtable-arm.c.
GENERIC_PT_CLASSES: dict[str, type[IoPgtable]] = {"intel": VtdssPgtable, "amd": Amdv1PtPgtable}
#: driver -> the :data:`~iovalab.kernel.version.DIFFERENCES` entry that makes its table a generic one
GENERIC_PT_DIFFERENCE = {"intel": "vtd_generic_pt", "amd": "amdv1_generic_pt"}


def alloc_io_pgtable_ops(fmt: str = "x86-64", granule: int = SZ_4K, ias: int = 48, log: EventLog | None = None,
                         *, driver: str | None = None, pgsize_bitmap: int | None = None, oas: int | None = None,
                         tlb_flush: TlbFlush | None = None, generic_pt: bool = False,
                         kernel: str | None = None) -> IoPgtable:
    """``alloc_io_pgtable_ops(fmt, cfg, cookie)``: a new page table of ``fmt`` for ``driver``.

    :param fmt: ``"x86-64"`` or ``"arm-lpae"``.
    :param driver: ``"intel"`` (default for x86-64), ``"amd"`` (x86-64) or ``"arm"`` (arm-lpae).
    :param generic_pt: the driver's 7.3 generic page table where one is modelled
        (:data:`GENERIC_PT_CLASSES`), else its own format.
    :param kernel: a modelled kernel version (already checked): the generic page table when the
        driver's :data:`GENERIC_PT_DIFFERENCE` applies to it.
    Other arguments: :class:`~iovalab.kernel.pgtable.ops.IoPgtable`. Raises ``ValueError`` for an
    unknown format or driver, or a driver that does not use ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"page-table format {fmt!r} is not one of {FORMATS}")
    driver = driver or _DEFAULT_DRIVER[fmt]
    if driver not in DRIVERS:
        raise ValueError(f"driver {driver!r} is not one of {DRIVERS}")
    if kernel is not None and driver in GENERIC_PT_DIFFERENCE:
        generic_pt = generic_pt or behaves(kernel, GENERIC_PT_DIFFERENCE[driver])
    cls = GENERIC_PT_CLASSES.get(driver, PGTABLE_CLASSES[driver]) if generic_pt else PGTABLE_CLASSES[driver]
    if cls.fmt != fmt:
        raise ValueError(f"driver {driver!r} does not use the {fmt!r} format "
                         "(intel/amd: x86-64; arm: arm-lpae)")
    return cls(granule, ias, log, pgsize_bitmap=pgsize_bitmap, oas=oas, tlb_flush=tlb_flush)
