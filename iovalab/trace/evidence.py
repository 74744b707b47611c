"""What a capture shows about the traced system, gathered in one pass over its lines (no kernel analogue).

:func:`iovalab.trace.system.infer_system` and :func:`iovalab.trace.replay.infer_mode` decide the
simulated system from this summary, so a capture too big to hold is read once for it and once to
replay it (:func:`iovalab.trace.replay.replay_file`), and an in-memory :class:`FtraceCapture` gives
the same summary (:meth:`CaptureEvidence.of_capture`). Every value is a count, a bit set or a
per-granule flag: the memory does not grow with the capture.

The facts it keeps, and the kernel code that makes them evidence:

* the OR of every ``map``/``unmap`` line's IOVA and size: ``__iommu_map()``/``__iommu_unmap()``
  (drivers/iommu/iommu.c, 6.17 and 7.3.4) refuse a range not aligned to the domain's smallest page;
* for each candidate granule, whether every single mapping (a ``dma_map_page``/``dma_map_phys`` line
  whose ``dma_addr`` falls in the ``map`` line just before it on its CPU) maps
  ``iova_align(size + iova_offset(dma_addr))`` at ``dma_addr - iova_offset(dma_addr)``
  (``__iommu_dma_map``, drivers/iommu/dma-iommu.c), and how many of them are below one granule;
* the IOTLB flush lines: ranged ``cache_tag_flush_range`` lines with and without ``pages`` (6.12 vs
  7.3.4 drivers/iommu/intel/trace.h) and domain-wide ones (``cache_tag_flush_all``, or 7.3.4's
  ``cache_tag_flush_range`` over ``[0x0-0xffffffffffffffff]``: :func:`is_domain_flush`);
* the header (``#P:``), the event counts and the CPUs seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from iovalab.kernel.units import DMA_MAPPING_ERROR, SZ_4K, SZ_16K, SZ_64K, iova_align, iova_offset
from iovalab.trace.ftrace import FtraceCapture, TraceLine, is_domain_flush

__all__ = ["CaptureEvidence", "GRANULE_CANDIDATES"]

#: the IOVA granules a capture can show: VT-d/AMD/LPAE 4 KiB, LPAE 16 KiB and 64 KiB
GRANULE_CANDIDATES = (SZ_4K, SZ_16K, SZ_64K)
_FLUSH_RANGE = ("cache_tag_flush_range", "cache_tag_flush_range_np")
_SINGLE = ("dma_map_page", "dma_map_phys")
_ENDS_SINGLE = ("unmap", "dma_map_sg", "dma_alloc")


@dataclass
class CaptureEvidence:
    """The summary of a capture that the system and mode inference read (module doc)."""

    nr_cpus: int | None = None               # the header's #P:
    cpus: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    align_bits: int = 0                      # OR of every map/unmap line's iova and size
    singles: int = 0                         # single mappings seen
    single_fits: dict[int, bool] = field(default_factory=lambda: dict.fromkeys(GRANULE_CANDIDATES, True))
    single_small: dict[int, int] = field(default_factory=lambda: dict.fromkeys(GRANULE_CANDIDATES, 0))
    flush_with_pages: int = 0                # ranged flush lines printing pages (6.12)
    flush_without_pages: int = 0             # ranged flush lines without pages (7.3.4)
    domain_flushes: int = 0                  # domain-wide flushes (either form)
    _last_map: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)

    @classmethod
    def of_capture(cls, cap: FtraceCapture) -> CaptureEvidence:
        """The evidence of an in-memory capture (header, counts and CPUs from ``cap``)."""
        ev = cls()
        ev.feed_all(cap.lines)
        ev.finish(cap)
        return ev

    def feed_all(self, lines: Iterable[TraceLine]) -> None:
        for ln in lines:
            self.feed(ln)

    def feed(self, ln: TraceLine) -> None:
        """Take one line into account (file order)."""
        ev = ln.event
        if ev == "map":
            f = ln.fields
            self.align_bits |= f["iova"] | f["size"]
            self._last_map[ln.cpu] = (f["iova"], f["size"])
        elif ev == "unmap":
            f = ln.fields
            self.align_bits |= f["iova"] | f["size"]
            self._last_map.pop(ln.cpu, None)
        elif ev in _SINGLE:
            m = self._last_map.pop(ln.cpu, None)
            f = ln.fields
            da = f["dma_addr"]
            if m is not None and da != DMA_MAPPING_ERROR and m[0] <= da < m[0] + m[1]:
                self._single(m[0], m[1], da, f["size"])
        elif ev in _ENDS_SINGLE:
            self._last_map.pop(ln.cpu, None)
        elif ev in _FLUSH_RANGE:
            if is_domain_flush(ln):
                self.domain_flushes += 1
            if "pages" in ln.fields:
                self.flush_with_pages += 1
            else:
                self.flush_without_pages += 1
        elif ev == "cache_tag_flush_all":
            self.domain_flushes += 1

    def _single(self, map_iova: int, map_size: int, dma_addr: int, size: int) -> None:
        self.singles += 1
        for g in GRANULE_CANDIDATES:
            off = iova_offset(g, dma_addr)
            if self.single_fits[g] and not (map_iova == dma_addr - off and map_size == iova_align(g, size + off)):
                self.single_fits[g] = False
            if size + off < g:
                self.single_small[g] += 1

    def finish(self, cap: FtraceCapture) -> None:
        """Copy the header, counts and CPUs a parse gathered (:func:`~iovalab.trace.ftrace.iter_ftrace`'s
        ``into``)."""
        self.nr_cpus = cap.nr_cpus
        self.cpus = list(cap.cpus)
        self.counts = dict(cap.counts)
        self._last_map.clear()

    def snapshot(self, cap: FtraceCapture) -> CaptureEvidence:
        """A finished copy of the evidence so far (``cap``: the parse's header, counts and CPUs so far),
        while this one goes on taking lines."""
        ev = CaptureEvidence(align_bits=self.align_bits, singles=self.singles, single_fits=dict(self.single_fits),
                             single_small=dict(self.single_small), flush_with_pages=self.flush_with_pages,
                             flush_without_pages=self.flush_without_pages, domain_flushes=self.domain_flushes)
        ev.finish(cap)
        return ev

    @property
    def map_lines(self) -> int:
        return self.counts.get("map", 0) + self.counts.get("unmap", 0)

    @property
    def ranged_flushes(self) -> int:
        """Ranged (per-unmap) IOTLB flush lines: ``cache_tag_flush_range`` lines that are not domain-wide."""
        whole = self.domain_flushes - self.counts.get("cache_tag_flush_all", 0)
        return self.counts.get("cache_tag_flush_range", 0) - whole
