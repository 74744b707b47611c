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

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from iovalab.kernel.units import DMA_MAPPING_ERROR, iova_align
from iovalab.trace.ftrace import IRQ_CONTEXT, FtraceCapture, TraceLine, is_domain_flush

__all__ = ["Allocation", "GRANULE", "DMA_MAP_EVENTS", "LOOKAHEAD", "alignment_of", "iter_steps", "map_alignment",
           "reconstruct"]

#: the smallest IOVA granule of every modelled IOMMU (VT-d, AMD v1, LPAE with 4 KiB pages)
GRANULE = 0x1000
#: the largest: io-pgtable-arm's 64 KiB granule (arm_lpae_restrict_pgsizes), arm64's largest PAGE_SIZE
MAX_GRANULE = 0x10000
#: the end of what an IOVA domain can hand out: pfns stay below IOVA_ANCHOR (~0UL) of the smallest granule
_IOVA_END = (1 << 64) - GRANULE
DMA_MAP_EVENTS = frozenset(("dma_map_page", "dma_map_sg", "dma_alloc", "dma_map_resource", "dma_map_phys",
                            "dma_alloc_pages", "dma_alloc_sgt"))


@dataclass(eq=False, slots=True)
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
    size_hint: int = 0   # size of the unmap that will free it (0 = never unmapped)
    maps: list[TraceLine] = field(default_factory=list, repr=False)   # its map lines, in file order
    closer: TraceLine | None = field(default=None, repr=False)        # the dma_* line that closed it (None:
    #                                                                   none, e.g. the two-step API)
    emitted: bool = False    # its ``alloc`` step has left :func:`iter_steps`
    first_paddr: int = 0     # the physical address its first ``map`` line maps
    task_before: int = 0     # the last task-context line of its CPU before its first ``map`` line (0: none)


def alignment_of(bits: int) -> int:
    """The lowest set bit of ``bits`` (the OR of every ``map``/``unmap`` line's IOVA and size), within
    ``GRANULE..MAX_GRANULE``: ``__iommu_map()``/``__iommu_unmap()`` (drivers/iommu/iommu.c) refuse a
    range not aligned to the domain's smallest page, so the granule divides this (and usually is it)."""
    low = bits & -bits if bits else MAX_GRANULE
    return max(GRANULE, min(low, MAX_GRANULE))


def map_alignment(cap: FtraceCapture) -> int:
    """:func:`alignment_of` every ``map``/``unmap`` line of ``cap``."""
    bits = 0
    for ln in cap.lines:
        if ln.event in ("map", "unmap"):
            bits |= ln.fields["iova"] | ln.fields["size"]
    return alignment_of(bits)


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


#: lines :func:`iter_steps` reads ahead of the line it groups (to find the unmap that sizes a range),
#: and lines it groups ahead of the step it hands out (to see a request's later map lines and its dma_*
#: event): a range unmapped further ahead than this is sized like one never unmapped
LOOKAHEAD = 1 << 14


def reconstruct(cap: FtraceCapture, granule: int | None = None) -> list[tuple]:
    """Every step of an in-memory capture (:func:`iter_steps` with the whole capture as lookahead).
    ``granule``: the IOVA granule that never-unmapped spans are rounded to (default:
    :func:`map_alignment`)."""
    if granule is None:
        granule = map_alignment(cap)
    return list(iter_steps(cap.lines, granule, lookahead=max(len(cap.lines), 1)))


def _check_wrap(ln: TraceLine) -> None:
    f = ln.fields
    if f["iova"] + f["size"] > _IOVA_END:
        raise ValueError(f"line {ln.lineno}: {ln.event} of {f['size']:#x} bytes at iova {f['iova']:#x} "
                         "wraps past 2^64 - 4 KiB: the IOVA allocator hands out ranges below its anchor "
                         "(drivers/iommu/iova.c: IOVA_ANCHOR ~0UL), so no DMA-API mapping ends there")


def iter_steps(lines: Iterable[TraceLine], granule: int, *, lookahead: int = LOOKAHEAD,
               keep_maps: bool = True) -> Iterator[tuple]:
    """Turn a capture's lines (file order, read once, e.g. :func:`~iovalab.trace.ftrace.iter_ftrace`)
    into its steps, in order:

    ``("alloc", Allocation)``, ``("free", Allocation, cpu, irq, lineno, ts, line)``,
    ``("link", Allocation, line)`` (a ``map`` line that extends a range whose ``alloc`` step was
    already handed out: a two-step user linking late, ``hmm_dma_map_pfn`` on demand),
    ``("flush", cpu, lineno, ts, softirq)`` (a domain-wide flush: ``cache_tag_flush_all``, or in 7.3
    a ``cache_tag_flush_range`` over ``[0x0-0xffffffffffffffff]``,
    :func:`~iovalab.trace.ftrace.is_domain_flush`), ``("phase", name, lineno)``,
    ``("unmatched", lineno, line)`` (an unmap of a range never seen allocated).

    An allocation's size is the size of the unmap that frees it; it is looked for up to
    ``lookahead`` lines ahead of its first map line, and where there is none, it is the span its map
    lines cover (rounded to ``granule``), as for a range never unmapped. An ``alloc`` step is handed
    out ``lookahead`` lines after its first map line (or at the end), so a request's further map lines
    and its ``dma_*`` event are in it. Memory: the lookahead, plus the ranges still mapped. With
    ``keep_maps=False`` (a consumer that handles each step before asking for the next) an allocation's
    ``maps`` are dropped once its ``alloc`` step was handled, so a range mapped for good
    costs only its :class:`Allocation`.
    """
    if not isinstance(lookahead, int) or lookahead < 1:
        raise ValueError(f"lookahead {lookahead!r} must be an int >= 1 (lines)")
    ahead: deque[TraceLine] = deque()                 # read, not grouped yet
    unmaps: dict[int, deque[tuple[int, int]]] = {}     # iova -> (lineno, size) of the unmaps in ``ahead``
    out: deque[tuple[int, tuple]] = deque()            # (line it may leave at, step), grouped, not handed out
    open_by_cpu: dict[int, _Opened] = {}   # allocations whose dma_* event is pending, per CPU
    live: dict[int, Allocation] = {}        # base -> allocation
    last_task: dict[int, int] = {}          # CPU -> its last line in task context (not hardirq/softirq/NMI)

    def extent(base: int) -> int:
        later = unmaps.get(base)
        return later[0][1] if later else 0

    def finish(a: Allocation) -> None:
        """Its size as it leaves: the unmap's, else the span of its map lines."""
        a.emitted = True
        if a.size <= 0:
            a.size = a.size_hint or iova_align(granule, max(a.span_end - a.base, granule))

    def group(ln: TraceLine) -> None:
        ev = ln.event
        opened: _Opened | None
        a: Allocation | None
        fl = ln.flags
        task_before = last_task.get(ln.cpu, 0)
        if fl is None or len(fl) < 3 or fl[2] not in IRQ_CONTEXT:   # not TraceLine.in_irq (inline)
            last_task[ln.cpu] = ln.lineno
        if ev == "map":
            iova, size = ln.fields["iova"], ln.fields["size"]
            opened = open_by_cpu.get(ln.cpu)
            if opened is None:
                opened = open_by_cpu[ln.cpu] = _Opened()
            cur = opened.holding(iova, hint=True)   # a further chunk of a mapping still being built
            if cur is not None:
                opened.grow(cur, max(cur.span_end, iova + size))
                if cur.emitted:
                    out.append((ln.lineno + lookahead, ("link", cur, ln)))
                    if not keep_maps:
                        return
                cur.maps.append(ln)
            else:
                a = Allocation(ln.lineno, ln.cpu, iova, 0, iova + size, timestamp=ln.timestamp,
                               size_hint=extent(iova), maps=[ln],
                               first_paddr=ln.fields["paddr"], task_before=task_before)
                opened.add(a)
                old = live.get(iova)
                if old is not None and old.size <= 0:  # the trace never unmapped the old one: its mapped span
                    old.size = iova_align(granule, old.span_end - old.base)
                live[iova] = a
                out.append((ln.lineno + lookahead, ("alloc", a)))
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
                pick.kind = ev
                pick.closer = ln
        elif ev == "unmap":
            iova, size = ln.fields["iova"], ln.fields["size"]
            q = unmaps.get(iova)
            if q is not None:       # this line leaves the lookahead's index
                q.popleft()
                if not q:
                    del unmaps[iova]
            a = live.pop(iova, None)
            if a is None:
                out.append((ln.lineno, ("unmatched", ln.lineno, ln)))
                return
            a.size = size
            a.freed_at = ln.lineno
            opened = open_by_cpu.get(a.cpu)
            if opened and a in opened:
                opened.remove(a)
            out.append((ln.lineno, ("free", a, ln.cpu, ln.in_irq, ln.lineno, ln.timestamp, ln)))
        elif ev in ("cache_tag_flush_all", "cache_tag_flush_range") and is_domain_flush(ln):
            out.append((ln.lineno, ("flush", ln.cpu, ln.lineno, ln.timestamp, ln.in_softirq)))
        elif ev == "tracing_mark_write":
            out.append((ln.lineno, ("phase", ln.text.strip(), ln.lineno)))

    def release(upto: int) -> Iterator[tuple]:
        """Hand out the grouped steps, in order, up to the first that must wait for line ``upto``."""
        while out and out[0][0] <= upto:
            st = out.popleft()[1]
            if st[0] == "alloc":
                a = st[1]
                finish(a)
                yield st
                if not keep_maps:     # handled: its lines are not needed any more
                    a.maps = []
                    a.closer = None
            else:
                yield st

    last = 0
    for ln in lines:
        ev = ln.event
        if ev == "map" or ev == "unmap":
            _check_wrap(ln)
            if ev == "unmap":
                unmaps.setdefault(ln.fields["iova"], deque()).append((ln.lineno, ln.fields["size"]))
        ahead.append(ln)
        last = ln.lineno
        while ahead[0].lineno + lookahead <= last:
            g = ahead.popleft()
            group(g)
            if out and out[0][0] <= g.lineno:     # release(), inline for the common case of one step
                yield from release(g.lineno)
    while ahead:
        group(ahead.popleft())
    yield from release(1 << 62)
