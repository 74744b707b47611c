"""The step log that every layer writes to.

No kernel analogue as such: it plays the part of the ftrace ring buffer plus the per-call
narrative a reviewer would write beside ``drivers/iommu/dma-iommu.c``. One step, one event:
every kernel-visible action (IOVA alloc, rcache hit or miss, PTE write, table page, IOTLB
invalidation, sync_map, swiotlb bounce, WARN) is appended here with the kernel function's name,
its arguments and result. Players, counters, exports and tests all read this one log.

This module is the bottom layer: it imports nothing of ours.

Counting: an event's ``kind`` is either one of :data:`COUNTER_KINDS` (then ``count`` is added to
that counter) or a plain step name (also tallied, under its own name). With ``keep=False`` the log
keeps only the tallies, so multi-million-page workloads stay small; counters are then exactly what
they would have been with ``keep=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Event", "EventLog", "Counters", "COUNTER_KINDS"]

#: Event kinds that feed :class:`Counters` (the field of the same name).
COUNTER_KINDS = (
    "iova_allocs",          # one successful IOVA allocation (alloc_iova_fast / alloc_iova)
    "iova_frees",           # one IOVA free handed to the allocator (free_iova_fast / free_iova)
    "rcache_hits",          # an allocation served by a per-CPU magazine or the depot
    "iommu_map_calls",      # one iommu_map_nosync() call (one iommu:map trace event)
    "pte_writes",           # leaf entries written (count = entries of one map_pages call)
    "table_pages",          # page-table pages allocated
    "iotlb_syncs",          # iommu_sync_map() / iotlb_sync_map (map side)
    "iotlb_invalidations",  # unmap-side IOTLB invalidations (ranged iotlb_sync or flush_iotlb_all)
    "swiotlb_bounces",      # buffers bounced through swiotlb
    "dma_api_calls",        # driver-visible DMA API entry points (dma_map_page, dma_iova_link, ...)
)


class Event:
    """One kernel-visible step.

    ``layer``: ``iova`` | ``iommu`` | ``pgtable`` | ``dma`` | ``swiotlb`` | ``driver``;
    ``func``: the kernel function that does the step (``alloc_iova_fast``);
    ``kind``: a counter name from :data:`COUNTER_KINDS` or a step name (``rcache_miss``, ``warn``);
    ``args``: the arguments as ints (bytes or pfns, as the kernel has them);
    ``result``: what the function returned; ``cpu``: the CPU it ran on; ``count``: how many units
    of ``kind`` this one step stands for; ``depth``: call nesting, for players; ``seq``: position.
    """

    __slots__ = ("seq", "layer", "func", "kind", "args", "result", "cpu", "count", "depth")

    def __init__(self, seq: int, layer: str, func: str, kind: str, args: dict, result: Any,
                 cpu: int, count: int, depth: int):
        self.seq = seq
        self.layer = layer
        self.func = func
        self.kind = kind
        self.args = args
        self.result = result
        self.cpu = cpu
        self.count = count
        self.depth = depth

    def describe(self) -> str:
        """``alloc_iova_fast(size=0x1, limit_pfn=0xfffff) -> 0xfffff`` (ints in hex)."""
        def fmt(v: Any) -> str:
            if isinstance(v, bool) or v is None:
                return str(v)
            if isinstance(v, int):
                return hex(v) if v >= 0 else f"-{hex(-v)}"
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(fmt(x) for x in v) + "]"
            return str(v)
        a = ", ".join(f"{k}={fmt(v)}" for k, v in self.args.items())
        res = "" if self.result is None else f" -> {fmt(self.result)}"
        return f"{self.func}({a}){res}"

    def as_dict(self) -> dict:
        """Plain dict (JSON-friendly) of every field."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"<Event #{self.seq} [{self.layer}/{self.kind} cpu{self.cpu}] {self.describe()}>"


@dataclass
class Counters:
    """Totals over (a stretch of) the event log; see :data:`COUNTER_KINDS` for what each counts."""

    iova_allocs: int = 0
    iova_frees: int = 0
    rcache_hits: int = 0
    iommu_map_calls: int = 0
    pte_writes: int = 0
    table_pages: int = 0
    iotlb_syncs: int = 0
    iotlb_invalidations: int = 0
    swiotlb_bounces: int = 0
    dma_api_calls: int = 0

    @classmethod
    def from_totals(cls, totals: dict[str, int]) -> Counters:
        return cls(**{f.name: totals.get(f.name, 0) for f in fields(cls)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __sub__(self, other: Counters) -> Counters:
        return Counters(**{k: v - getattr(other, k) for k, v in self.as_dict().items()})


class EventLog:
    """Append-only list of :class:`Event` plus running tallies per kind.

    ``keep=False`` drops the events themselves and keeps only the tallies (for bulk workloads).
    ``depth`` is raised by entry points around their inner calls so players can indent steps.
    """

    def __init__(self, keep: bool = True):
        self.keep = keep
        self.events: list[Event] = []
        self.totals: defaultdict[str, int] = defaultdict(int)
        self.seq = 0
        self.depth = 0

    def emit(self, layer: str, func: str, kind: str = "step", result: Any = None, *,
             cpu: int = 0, count: int = 1, **args: Any) -> Event | None:
        """Record one step; returns the event (``None`` when not keeping events)."""
        self.totals[kind] += count
        self.seq += 1
        if not self.keep:
            return None
        ev = Event(self.seq, layer, func, kind, args, result, cpu, count, self.depth)
        self.events.append(ev)
        return ev

    def tally(self, kind: str, count: int = 1) -> None:
        """Count steps without recording them one by one (bulk paths, only when ``keep`` is off)."""
        self.totals[kind] += count

    def warn(self, layer: str, func: str, errno: int, rule: str, *, cpu: int = 0,
             **args: Any) -> Event | None:
        """Record a kernel ``WARN_ON_ONCE``/``WARN_ON`` with the errno the call returns."""
        return self.emit(layer, func, "warn", -abs(errno) if errno else 0, cpu=cpu,
                         rule=rule, **args)

    # -- reading ---------------------------------------------------------------------------
    def mark(self) -> tuple[int, dict[str, int]]:
        """A point to measure from: ``(number of events, copy of the tallies)``."""
        return len(self.events), dict(self.totals)

    def since(self, mark: tuple[int, dict[str, int]] | None = None) -> list[Event]:
        """Events recorded after ``mark`` (all events when ``mark`` is None)."""
        return self.events[(mark[0] if mark else 0):]

    def counters(self, since: tuple[int, dict[str, int]] | None = None) -> Counters:
        """:class:`Counters` over the whole log, or over what came after ``since``."""
        now = Counters.from_totals(self.totals)
        return now - Counters.from_totals(since[1]) if since else now

    def count(self, kind: str) -> int:
        """Total of any kind, counter or step (``log.count('warn')``)."""
        return self.totals.get(kind, 0)

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def clear(self) -> None:
        self.events.clear()
        self.totals.clear()
        self.seq = 0
        self.depth = 0

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __getitem__(self, i):
        return self.events[i]
