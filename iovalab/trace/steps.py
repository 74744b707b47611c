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

from bisect import bisect_right
from dataclasses import dataclass, field

from iovalab.kernel.units import DMA_MAPPING_ERROR, iova_align
from iovalab.trace.ftrace import FtraceCapture, is_domain_flush

__all__ = ["Allocation", "GRANULE", "DMA_MAP_EVENTS", "map_alignment", "reconstruct"]

#: the smallest IOVA granule of every modelled IOMMU (VT-d, AMD v1, LPAE with 4 KiB pages)
GRANULE = 0x1000
#: the largest: io-pgtable-arm's 64 KiB granule (arm_lpae_restrict_pgsizes), arm64's largest PAGE_SIZE
MAX_GRANULE = 0x10000
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
        if ln.event == "unmap":
            unmaps.setdefault(ln.fields["iova"], []).append((ln.lineno, ln.fields["size"]))

    def extent(base: int, lineno: int) -> int:
        later = unmaps.get(base, ())
        i = bisect_right(later, (lineno, 1 << 64))
        return later[i][1] if i < len(later) else 0

    open_by_cpu: dict[int, list[Allocation]] = {}   # allocations whose dma_* event is pending
    live: dict[int, Allocation] = {}        # base -> allocation
    live_bases: list[int] = []              # sorted bases of live allocations
    opened: list[Allocation] | None
    a: Allocation | None
    for ln in cap.lines:
        ev = ln.event
        if ev == "map":
            iova, size = ln.fields["iova"], ln.fields["size"]
            opened = open_by_cpu.setdefault(ln.cpu, [])
            for cur in reversed(opened):   # a further chunk of a mapping still being built
                limit = cur.base + cur.size_hint if cur.size_hint else cur.span_end + 1
                if cur.base <= iova < limit:
                    cur.span_end = max(cur.span_end, iova + size)
                    cur.map_lines.append(ln.lineno)
                    break
            else:
                a = Allocation(ln.lineno, ln.cpu, iova, 0, iova + size, timestamp=ln.timestamp,
                               size_hint=extent(iova, ln.lineno), map_lines=[ln.lineno])
                opened.append(a)
                old = live.get(iova)
                if old is not None:  # the trace never unmapped the old one: keep its mapped span
                    old.size = iova_align(granule, old.span_end - old.base)
                else:
                    live_bases.insert(bisect_right(live_bases, iova), iova)
                live[iova] = a
                steps.append(("alloc", a))
        elif ev in DMA_MAP_EVENTS:
            opened = open_by_cpu.get(ln.cpu)
            f = ln.fields
            if opened and f.get("dma_addr") != DMA_MAPPING_ERROR:  # a failed map allocated nothing
                addr = f.get("dma_addr")
                if addr is None and f.get("dma_addrs"):
                    addr = f["dma_addrs"][0]
                pick = opened[-1]
                if addr is not None:
                    for cur in reversed(opened):
                        if cur.base <= addr < max(cur.span_end, cur.base + 1):
                            pick = cur
                            break
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
            live_bases.remove(iova)
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
