"""``struct iommu_iotlb_gather`` and its helpers (include/linux/iommu.h, Linux 6.17; the same in 7.3.4):
``iommu_iotlb_gather_init``, ``iommu_iotlb_gather_is_disjoint``, ``iommu_iotlb_gather_add_range``,
``iommu_iotlb_gather_add_page`` (which may sync early through the domain's ``iommu_iotlb_sync``) and
``iommu_iotlb_gather_queued``. An unmap collects the range to invalidate here; ``iommu_iotlb_sync``
(:class:`iovalab.kernel.iommu.IommuDomain`) hands it to the driver. Importable from
:mod:`iovalab.kernel.iommu` as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from iovalab.kernel.units import ULONG_MAX

__all__ = ["IotlbGather", "IotlbSyncer", "iommu_iotlb_gather_init", "iommu_iotlb_gather_is_disjoint",
           "iommu_iotlb_gather_add_range", "iommu_iotlb_gather_add_page", "iommu_iotlb_gather_queued"]


class IotlbSyncer(Protocol):
    """What ``iommu_iotlb_gather_add_page()`` uses of a ``struct iommu_domain``: ``iommu_iotlb_sync``."""

    def iommu_iotlb_sync(self, gather: IotlbGather, cpu: int = 0, caller: str | None = None) -> None:
        """``iommu_iotlb_sync(domain, iotlb_gather)``."""
        ...


@dataclass(slots=True)
class IotlbGather:
    """``struct iommu_iotlb_gather`` (include/linux/iommu.h): ``start``/``end`` (inclusive) of the
    range to invalidate, ``pgsize`` of the pages gathered (``add_page``), ``queued`` (a flush queue
    will do a global flush), ``freelist`` (table pages to free after the sync; a count here)."""

    start: int = ULONG_MAX
    end: int = 0
    pgsize: int = 0
    queued: bool = False
    freelist: int = 0

    def empty(self) -> bool:
        return self.start > self.end


def iommu_iotlb_gather_init(gather: IotlbGather) -> None:
    """``iommu_iotlb_gather_init(gather)``: ``start = ULONG_MAX``, everything else zero (``queued`` too)."""
    gather.start, gather.end, gather.pgsize, gather.queued, gather.freelist = ULONG_MAX, 0, 0, False, 0


def iommu_iotlb_gather_is_disjoint(gather: IotlbGather, iova: int, size: int) -> bool:
    """``iommu_iotlb_gather_is_disjoint(gather, iova, size)``: a non-empty gather that neither
    overlaps nor touches ``[iova, iova + size - 1]`` (adjacent ranges are not disjoint)."""
    end = iova + size - 1
    return gather.end != 0 and (end + 1 < gather.start or iova > gather.end + 1)


def iommu_iotlb_gather_add_range(gather: IotlbGather, iova: int, size: int) -> None:
    """``iommu_iotlb_gather_add_range(gather, iova, size)``: widen ``[start, end]``."""
    end = iova + size - 1
    if gather.start > iova:
        gather.start = iova
    if gather.end < end:
        gather.end = end


def iommu_iotlb_gather_add_page(domain: IotlbSyncer, gather: IotlbGather, iova: int, size: int,
                                cpu: int = 0) -> None:
    """``iommu_iotlb_gather_add_page(domain, gather, iova, size)``: sync first if the page size
    differs from the gathered one or the range is disjoint, then record ``size`` and the range."""
    if (gather.pgsize and gather.pgsize != size) or iommu_iotlb_gather_is_disjoint(gather, iova, size):
        domain.iommu_iotlb_sync(gather, cpu=cpu, caller="iommu_iotlb_gather_add_page")
    gather.pgsize = size
    iommu_iotlb_gather_add_range(gather, iova, size)


def iommu_iotlb_gather_queued(gather: IotlbGather | None) -> bool:
    """``iommu_iotlb_gather_queued(gather)``: ``gather && gather->queued``."""
    return gather is not None and gather.queued
