"""A model of the IOMMU's translation cache (IOTLB): hardware, no kernel function. What
``device_access`` does is what the IOMMU does for a device's DMA: look the page up in the IOTLB, else
walk the page table (:mod:`iovalab.kernel.pgtable`) and cache the leaf; a page with no translation (or
without the permission) is a fault, reported as ``report_iommu_fault()`` (drivers/iommu/iommu.c,
6.17) traces it, with ``IOMMU_FAULT_READ``/``IOMMU_FAULT_WRITE`` (include/linux/iommu.h). The
invalidations that empty it are the kernel's: ``iommu_iotlb_sync``, ``iommu_flush_iotlb_all``,
``iommu_sync_map`` and the drivers' immediate flushes, in :mod:`iovalab.kernel.iommu`.

:class:`IotlbModel` holds it for :class:`iovalab.kernel.iommu.IommuDomain` (see that module's
docstring for the entries, the negative entries of ``caches_non_present`` and the invalidation cost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iovalab.kernel.events import EventLog
from iovalab.kernel.pgtable import IOMMU_READ, IOMMU_WRITE, IoPgtable

__all__ = ["IOMMU_FAULT_READ", "IOMMU_FAULT_WRITE", "IotlbModel"]

#: ``IOMMU_FAULT_READ`` / ``IOMMU_FAULT_WRITE`` (include/linux/iommu.h), ``report_iommu_fault`` flags.
IOMMU_FAULT_READ = 0x0
IOMMU_FAULT_WRITE = 0x1

_L = "iommu"


class IotlbModel:
    """The IOTLB of an IOMMU domain: ``_tlb`` (``leaf size -> {iova base: (phys base, prot)}``) and
    ``_neg`` (cached non-present granule pages). The host provides what is declared below."""

    if TYPE_CHECKING:
        _log: EventLog
        pgtable: IoPgtable
        granule: int
        granule_shift: int
        caches_non_present: bool

    def iotlb_init(self) -> None:
        """An empty IOTLB (no kernel analogue)."""
        self._tlb: dict[int, dict[int, tuple[int, int]]] = {}
        self._neg: set[int] = set()

    def _tlb_invalidate(self, start: int, end: int) -> int:
        dropped = 0
        for s, d in self._tlb.items():
            if not d:
                continue
            lo = start & ~(s - 1)
            if (end - lo) // s + 1 <= len(d):
                for k in range(lo, end + 1, s):
                    if d.pop(k, None) is not None:
                        dropped += 1
            else:
                dead = [k for k in d if k <= end and k + s - 1 >= start]
                for k in dead:
                    del d[k]
                dropped += len(dead)
        if self._neg:
            sh = self.granule_shift
            a, b = start >> sh, end >> sh
            if b - a + 1 <= len(self._neg):
                for p in range(a, b + 1):
                    if p in self._neg:
                        self._neg.discard(p)
                        dropped += 1
            else:
                dead = [p for p in self._neg if a <= p <= b]
                self._neg.difference_update(dead)
                dropped += len(dead)
        return dropped

    def _fault(self, iova: int, write: bool, cpu: int, reason: str) -> None:
        self._log.emit(_L, "report_iommu_fault", "io_page_fault", None, cpu=cpu, iova=iova,
                       flags=IOMMU_FAULT_WRITE if write else IOMMU_FAULT_READ, reason=reason)

    def _translate(self, a: int, write: bool, cpu: int) -> int | None:
        need = IOMMU_WRITE if write else IOMMU_READ
        log = self._log
        for s, d in self._tlb.items():
            e = d.get(a & ~(s - 1))
            if e is not None:
                log.emit(_L, "device_access", "iotlb_hit", e[0] + (a & (s - 1)), cpu=cpu, iova=a, pgsize=s)
                if not e[1] & need:
                    self._fault(a, write, cpu, "permission")
                    return None
                return e[0] + (a & (s - 1))
        if self.caches_non_present and (a >> self.granule_shift) in self._neg:
            log.emit(_L, "device_access", "iotlb_hit", None, cpu=cpu, iova=a, negative=True)
            self._fault(a, write, cpu, "cached non-present entry")
            return None
        r = self.pgtable.lookup(a)
        log.emit(_L, "device_access", "iotlb_miss", None if r is None else r[0], cpu=cpu, iova=a,
                 negative=r is None and self.caches_non_present)
        if r is None:
            if self.caches_non_present:
                self._neg.add(a >> self.granule_shift)
            self._fault(a, write, cpu, "not present")
            return None
        phys, leaf, prot = r
        base = a & ~(leaf - 1)
        self._tlb.setdefault(leaf, {})[base] = (phys - (a - base), prot)
        if not prot & need:
            self._fault(a, write, cpu, "permission")
            return None
        return phys

    def device_access(self, iova: int, size: int | None = None, write: bool = False,
                      cpu: int = 0) -> int | None:
        """A device DMA to ``[iova, iova + size)`` (default: to the end of ``iova``'s granule page).

        No kernel analogue (it is what the hardware does): every granule page touched is translated
        by the IOTLB (``iotlb_hit``) or a page walk that fills it (``iotlb_miss``); an unmapped
        page, a cached non-present entry or a missing permission is a fault (``io_page_fault``
        event, as ``report_iommu_fault`` traces it). Returns the physical address of ``iova`` or
        None if any page faulted. Note a stale IOTLB entry is used as the hardware would use it.
        """
        g = self.granule
        size = g - (iova & (g - 1)) if size is None else size
        if size <= 0:
            raise ValueError(f"device_access: size {size} must be > 0")
        first = iova & ~(g - 1)
        out = None
        for a in range(first, iova + size, g):
            p = self._translate(a, write, cpu)
            if p is None:
                return None
            if a == first:
                out = p + (iova - first)
        return out

    def iotlb_empty(self) -> bool:
        """No cached translation and no cached non-present entry."""
        return not self._tlb and not self._neg

    def iotlb_entries(self) -> list[tuple[int, int | None, int, int]]:
        """Cached translations ``(iova base, phys base, leaf size, prot)``; negative entries have
        phys ``None`` and size = granule."""
        out: list[tuple[int, int | None, int, int]] = [(base, e[0], s, e[1]) for s, d in self._tlb.items()
                                                      for base, e in d.items()]
        out += [(p << self.granule_shift, None, self.granule, 0) for p in self._neg]
        return sorted(out)

    def stale_iotlb_entries(self) -> list[tuple[int, int | None, int]]:
        """IOTLB entries that no longer match the page table: ``(iova base, cached phys, size)``
        (a negative entry is stale once the page is mapped)."""
        out: list[tuple[int, int | None, int]] = []
        lookup = self.pgtable.lookup
        g = self.granule
        for s, d in self._tlb.items():
            for base, (phys, prot) in d.items():
                r = lookup(base)
                if r is not None and r[1] >= s:
                    ok = r[0] == phys and r[2] == prot
                else:
                    ok = all((x := lookup(base + o)) is not None and x[0] == phys + o and x[2] == prot
                             for o in range(0, s, g))
                if not ok:
                    out.append((base, phys, s))
        for p in self._neg:
            if lookup(p << self.granule_shift) is not None:
                out.append((p << self.granule_shift, None, g))
        return sorted(out, key=lambda e: e[0])
