"""A capture as the steps the kernel took: IOVA allocations, frees, flushes and phase markers.

The capture (``iommu:map``/``iommu:unmap``, ``dma:*``, optionally ``intel_iommu:*`` and
``tracing_mark_write`` markers) does not show allocations and frees directly; :func:`reconstruct`
rebuilds them from what the kernel's code guarantees (see :mod:`iovalab.trace.replay`):
``__iommu_dma_map()`` / ``iommu_dma_map_sg()`` / ``dma_iova_try_alloc()`` (drivers/iommu/dma-iommu.c,
6.17 and 7.3) allocate the IOVA before the first ``iommu_map()`` of the range, and
``__iommu_dma_unmap()`` / ``dma_iova_destroy()`` unmap the whole granule-aligned range before
``iommu_dma_free_iova()``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field

from iovalab.kernel.units import DMA_MAPPING_ERROR, iova_align
from iovalab.trace.ftrace import FtraceCapture, is_domain_flush

__all__ = ["Allocation", "GRANULE", "DMA_MAP_EVENTS", "map_alignment", "reconstruct"]

#: the smallest IOVA granule of every modelled IOMMU (VT-d, AMD v1, LPAE with 4 KiB pages)
GRANULE = 0x1000
#: the largest: io-pgtable-arm's 64 KiB granule (arm_lpae_restrict_pgsizes), arm64's largest PAGE_SIZE
MAX_GRANULE = 0x10000
#: the end of what an IOVA domain can hand out: pfns stay below IOVA_ANCHOR (~0UL) of the smallest granule
_IOVA_END = (1 << 64) - GRANULE
DMA_MAP_EVENTS = frozenset(("dma_map_page", "dma_map_sg", "dma_alloc", "dma_map_resource", "dma_map_phys",
                            "dma_alloc_pages", "dma_alloc_sgt"))


@dataclass
class Allocation:
    """One IOVA allocation seen in the capture."""

    lineno: int          # line of its first ``map`` event
    cpu: int
    base: int            # IOVA the kernel chose (granule-aligned)
    size: int = 0        # bytes (granule-aligned)
    span_end: int = 0    # end of the map lines seen so far
    kind: str = "?"      # dma_map_page | dma_map_sg | dma_alloc | ...
    freed_at: int | None = None
    timestamp: float = 0.0
    closed: bool = False
    size_hint: int = 0   # size of the unmap that will free it (0 = never unmapped)
    closed_at: int = 0   # line of the dma_* event that closed it (0: none, e.g. the two-step API)
    map_lines: list[int] = field(default_factory=list)   # its map lines, in file order


def map_alignment(cap: FtraceCapture) -> int:
    """The lowest set bit of every ``map``/``unmap`` line's IOVA and size, capped at
    :data:`MAX_GRANULE`: ``__iommu_map()``/``__iommu_unmap()`` (drivers/iommu/iommu.c) refuse a range
    not aligned to the domain's smallest page, so the granule divides this (and usually is it)."""
    bits = 0
    for ln in cap.lines:
        if ln.event in ("map", "unmap"):
            bits |= ln.fields["iova"] | ln.fields["size"]
    low = bits & -bits if bits else MAX_GRANULE
    return max(GRANULE, min(low, MAX_GRANULE))


class _Opened:
    """One CPU's allocations whose ``dma_*`` event is still pending, in the order they were opened,
    with the two lookups :func:`reconstruct` makes per line in O(log n) (no kernel analogue).

    The question is always "the most recently opened allocation whose range holds ``iova``", where
    the range is ``[base, base + size_hint)`` (or ``[base, span_end]`` without a hint) for a ``map``
    line and ``[base, max(span_end, base + 1))`` for a ``dma_*`` event. Live IOVA ranges do not
    overlap, so the candidates are the allocations at the highest base ``<= iova`` and, at a
    boundary, those without a hint whose mapped span ends exactly at ``iova``; the most recent
    candidate that holds ``iova`` is the answer, as a newest-first scan of every open allocation
    would give. ``neg`` keeps ``-base`` ascending: the IOVA allocator hands out ranges top-down, so
    a new base usually goes near the end of the list.
    """

    __slots__ = ("seq", "order", "neg", "by_base", "ends", "serial")

    def __init__(self) -> None:
        self.serial = 0
        self.seq: dict[int, int] = {}                 # id(alloc) -> open order
        self.order: dict[int, Allocation] = {}        # id(alloc) -> alloc, in open order
        self.neg: list[int] = []                      # -base, ascending (duplicates allowed)
        self.by_base: dict[int, list[Allocation]] = {}
        self.ends: dict[int, list[Allocation]] = {}   # span_end -> hintless allocations ending there

    def __bool__(self) -> bool:
        return bool(self.order)

    def __contains__(self, a: Allocation) -> bool:
        return id(a) in self.order

    def add(self, a: Allocation) -> None:
        self.serial += 1
        self.seq[id(a)] = self.serial
        self.order[id(a)] = a
        insort(self.neg, -a.base)
        self.by_base.setdefault(a.base, []).append(a)
        if not a.size_hint:
            self.ends.setdefault(a.span_end, []).append(a)

    def remove(self, a: Allocation) -> None:
        del self.order[id(a)], self.seq[id(a)]
        neg = self.neg
        del neg[bisect_left(neg, -a.base)]
        same = self.by_base[a.base]
        same.remove(a)          # allocations at one base: almost always one
        if not same:
            del self.by_base[a.base]
        if not a.size_hint:
            self._unend(a)

    def _unend(self, a: Allocation) -> None:
        at = self.ends[a.span_end]
        at.remove(a)
        if not at:
            del self.ends[a.span_end]

    def grow(self, a: Allocation, span_end: int) -> None:
        if span_end != a.span_end and not a.size_hint:
            self._unend(a)
            a.span_end = span_end
            self.ends.setdefault(span_end, []).append(a)
        a.span_end = span_end

    def last(self) -> Allocation:
        return self.order[next(reversed(self.order))]

    def holding(self, iova: int, *, hint: bool) -> Allocation | None:
        neg = self.neg
        i = bisect_left(neg, -iova)     # the highest base <= iova
        cands: list[Allocation] = list(self.by_base[-neg[i]]) if i < len(neg) else []
        if hint:
            cands += self.ends.get(iova, ())
        best, best_seq = None, 0
        for cur in cands:
            if hint:
                limit = cur.base + cur.size_hint if cur.size_hint else cur.span_end + 1
            else:
                limit = max(cur.span_end, cur.base + 1)
            s = self.seq[id(cur)]
            if cur.base <= iova < limit and s > best_seq:
                best, best_seq = cur, s
        return best


def reconstruct(cap: FtraceCapture, granule: int | None = None) -> list[tuple]:
    """Turn the capture into an ordered list of steps:

    ``("alloc", Allocation)``, ``("free", Allocation, cpu, irq, lineno, ts)``,
    ``("flush", cpu, lineno, ts, softirq)`` (a domain-wide flush: ``cache_tag_flush_all``, or in 7.3
    a ``cache_tag_flush_range`` over ``[0x0-0xffffffffffffffff]``,
    :func:`~iovalab.trace.ftrace.is_domain_flush`), ``("phase", name, lineno)``.
    Unmaps of ranges not seen allocated become ``("unmatched", lineno)``. ``granule``: the IOVA
    granule that never-unmapped spans are rounded to (default: :func:`map_alignment`).
    """
    if granule is None:
        granule = map_alignment(cap)
    steps: list[tuple] = []
    # where each range will be unmapped: base -> [(lineno, size), ...] in file order, so that the
    # extent of an allocation is known when its first map line is seen (two-step users emit no
    # dma_* event that would close it)
    unmaps: dict[int, list[tuple[int, int]]] = {}
    for ln in cap.lines:
        if ln.event in ("map", "unmap"):
            f = ln.fields
            if f["iova"] + f["size"] > _IOVA_END:
                raise ValueError(f"line {ln.lineno}: {ln.event} of {f['size']:#x} bytes at iova {f['iova']:#x} "
                                 "wraps past 2^64 - 4 KiB: the IOVA allocator hands out ranges below its anchor "
                                 "(drivers/iommu/iova.c: IOVA_ANCHOR ~0UL), so no DMA-API mapping ends there")
            if ln.event == "unmap":
                unmaps.setdefault(f["iova"], []).append((ln.lineno, f["size"]))

    def extent(base: int, lineno: int) -> int:
        later = unmaps.get(base, ())
        i = bisect_right(later, (lineno, 1 << 64))
        return later[i][1] if i < len(later) else 0

    open_by_cpu: dict[int, _Opened] = {}   # allocations whose dma_* event is pending, per CPU
    live: dict[int, Allocation] = {}        # base -> allocation
    opened: _Opened | None
    a: Allocation | None
    for ln in cap.lines:
        ev = ln.event
        if ev == "map":
            iova, size = ln.fields["iova"], ln.fields["size"]
            opened = open_by_cpu.get(ln.cpu)
            if opened is None:
                opened = open_by_cpu[ln.cpu] = _Opened()
            cur = opened.holding(iova, hint=True)   # a further chunk of a mapping still being built
            if cur is not None:
                opened.grow(cur, max(cur.span_end, iova + size))
                cur.map_lines.append(ln.lineno)
            else:
                a = Allocation(ln.lineno, ln.cpu, iova, 0, iova + size, timestamp=ln.timestamp,
                               size_hint=extent(iova, ln.lineno), map_lines=[ln.lineno])
                opened.add(a)
                old = live.get(iova)
                if old is not None:  # the trace never unmapped the old one: keep its mapped span
                    old.size = iova_align(granule, old.span_end - old.base)
                live[iova] = a
                steps.append(("alloc", a))
        elif ev in DMA_MAP_EVENTS:
            opened = open_by_cpu.get(ln.cpu)
            f = ln.fields
            if opened and f.get("dma_addr") != DMA_MAPPING_ERROR:  # a failed map allocated nothing
                addr = f.get("dma_addr")
                if addr is None and f.get("dma_addrs"):
                    addr = f["dma_addrs"][0]
                pick = opened.holding(addr, hint=False) if addr is not None else None
                if pick is None:
                    pick = opened.last()
                opened.remove(pick)
                pick.closed = True
                pick.kind = ev
                pick.closed_at = ln.lineno
        elif ev == "unmap":
            iova, size = ln.fields["iova"], ln.fields["size"]
            a = live.pop(iova, None)
            if a is None:
                steps.append(("unmatched", ln.lineno))
                continue
            a.size = size
            a.freed_at = ln.lineno
            a.closed = True
            opened = open_by_cpu.get(a.cpu)
            if opened and a in opened:
                opened.remove(a)
            steps.append(("free", a, ln.cpu, ln.in_irq, ln.lineno, ln.timestamp))
        elif ev in ("cache_tag_flush_all", "cache_tag_flush_range") and is_domain_flush(ln):
            steps.append(("flush", ln.cpu, ln.lineno, ln.timestamp, ln.in_softirq))
        elif ev == "tracing_mark_write":
            steps.append(("phase", ln.text.strip(), ln.lineno))
    for _, a in live.items():  # never unmapped: the span its map lines cover
        a.size = iova_align(granule, a.span_end - a.base)
    for st in steps:
        if st[0] == "alloc" and st[1].size <= 0:
            st[1].size = iova_align(granule, max(st[1].span_end - st[1].base, granule))
    return steps
