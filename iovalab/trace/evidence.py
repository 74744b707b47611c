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

from iovalab.kernel.iova_rcache import iova_rcache_bin
from iovalab.kernel.units import DMA_MAPPING_ERROR, SZ_4K, SZ_16K, SZ_64K, iova_align, iova_offset
from iovalab.trace.ftrace import FtraceCapture, TraceLine, is_domain_flush

__all__ = ["CaptureEvidence", "GRANULE_CANDIDATES", "IovaReuse"]

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


class IovaReuse:
    """Whether the IOVAs the kernel freed come straight back: the strict/lazy evidence of a capture
    without IOTLB flush lines, gathered from its steps (:func:`~iovalab.trace.steps.iter_steps`) as they
    go by. Memory: one entry per CPU and rcache bin.

    In a strict domain ``__iommu_dma_unmap()`` frees the IOVA at once (``iommu_dma_free_iova()`` ->
    ``free_iova_fast()``), and ``iova_rcache_insert()`` pushes it on top of the freeing CPU's loaded
    magazine for its bin (``order_base_2`` of its size, below ``IOVA_RANGE_CACHE_MAX_SIZE``); the next
    allocation of that bin on that CPU (``iova_rcache_get()`` pops the top) gets that very IOVA back
    (drivers/iommu/iova.c and dma-iommu.c, 6.17 and 7.3.4). In a flush-queue domain the unmap only
    queues it (``queue_iova()``); it comes back only after the queue is flushed (its timer, 10 ms and
    more later, or a full queue). So for each *pair* - a free by a path that queues in a lazy domain
    (one closed by a ``dma:*`` event: ``dma_unmap_page``/``dma_unmap_phys``/``dma_unmap_sg``/
    ``dma_free_*``), then the next allocation of the same bin on the freeing CPU with no other free of
    that bin there in between - strict reuses the IOVA every time; lazy often does not.

    An allocation not unmapped within the lookahead is left out (its size, so its bin, is only the
    span of its map lines), unless it is one single mapping (one ``map`` line, then its
    ``dma_map_page``/``dma_map_phys`` line). A pair whose free was traced in interrupt context after
    the allocation's last task-context line (between the allocation and its first ``map`` line, as far
    as the trace can tell) is *open*: the free may have come after the allocation, so not reusing is
    no evidence (counted, not used)."""

    def __init__(self, granule: int) -> None:
        self.shift = granule.bit_length() - 1
        self.pairs = 0
        self.reused = 0
        self.not_reused = 0       # pairs that a strict domain cannot give
        self.open = 0             # pairs not reused whose order the trace leaves open
        self._top: dict[tuple[int, int], tuple[int, bool, bool, int]] = {}  # (cpu, bin) -> last free

    def feed(self, st: tuple) -> None:
        kind = st[0]
        if kind == "free":
            a = st[1]
            b = iova_rcache_bin(a.size >> self.shift)
            if b is not None:
                self._top[(st[2], b)] = (a.base, a.kind != "?", st[3], st[4])
        elif kind == "alloc":
            a = st[1]
            b = iova_rcache_bin(a.size >> self.shift)
            top = self._top.pop((a.cpu, b), None) if b is not None else None
            if top is None or not top[1]:
                return
            if not a.size_hint and a.freed_at is None and not (a.kind in _SINGLE and len(a.maps) == 1):
                return      # not unmapped within the lookahead: its size (so its bin) is not sure
            self.pairs += 1
            if top[0] == a.base:
                self.reused += 1
            elif top[2] and top[3] > a.task_before:
                self.open += 1
            else:
                self.not_reused += 1

    def mode(self) -> tuple[str, str] | None:
        """``(mode, why)`` from the pairs, None without any. Lazy when at least one pair in a hundred
        (and at least one) is not reused: a strict domain reuses every one, short of a magazine that
        could not be allocated (``GFP_ATOMIC``) or a mask below the cached IOVA."""
        if not self.pairs:
            return None
        seen = (f"{self.reused} of {self.pairs} IOVAs freed by a dma_unmap_* path came back to the next "
                f"allocation of their size on their CPU")
        also = (f" ({self.open} other(s), freed in interrupt context just before the allocation's first map line, "
                "may have been freed after it)") if self.open else ""
        if self.not_reused and 100 * self.not_reused >= self.pairs:
            return "lazy", (f"lazy: no IOTLB flush line, but only {seen}{also}: a strict domain's rcache gives every "
                            "one back at once, a flush queue holds them until it is flushed")
        return "strict", f"strict: no IOTLB flush line; {seen}, as a strict domain's per-CPU rcache does{also}"
