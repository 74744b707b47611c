"""The players' state rebuilt from the event log: :func:`state_at` replays the *descriptions* of the
first ``k`` events into a :class:`StepState` (IOVA nodes, leaf PTEs, IOTLB, counters).

No kernel analogue. Nothing is re-simulated, so what a player shows is exactly what the log says the
kernel code did; ``tests/test_replay_state.py`` drives random workloads and checks, at every step, that
the state rebuilt here (:class:`_Replay`) equals the live domain's. :class:`Timeline` adds checkpoints
for players over long logs. The recordings the players step through are :mod:`iovalab.lab.explain_steps`.

Layering: imports :mod:`iovalab.kernel.events` and :mod:`iovalab.kernel.event_schema` only.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.kernel.events import Counters

__all__ = ["StepState", "state_at", "Timeline"]


@dataclass
class StepState:
    """What the log implies after its first ``k`` events (a pure function of the events).

    ``nodes``: IOVA allocator nodes ``(start, end_exclusive, status)`` in bytes, status
    ``"in use"`` (handed to a driver), ``"cached"`` (in a per-CPU magazine or depot: still a tree
    node), ``"queued"`` (in a flush queue, lazy mode) or ``"reserved"``; ``mapped``: leaf
    translations ``(iova, size, pgsize, phys)``; ``iotlb``: IOTLB entries a device access loaded
    ``(iova, size, phys, stale)`` where ``stale`` means the page table no longer maps it;
    ``unflushed``: IOVA ranges ``(start, end_exclusive)`` unmapped from the page table but not yet
    covered by an IOTLB invalidation (the device may still hold translations for them);
    ``tables``: page-table pages allocated; ``counters``: :class:`~iovalab.kernel.events.Counters`;
    ``notices``: dev_notice, WARN and contract messages so far; ``fq_pending``: ranges in flush
    queues; ``current``: the events of the step that ends at ``k``; ``changed``: counter names the
    current step increased; ``focus``: the IOVA byte range ``[lo, hi)`` the current step touched
    (None if none).
    """

    k: int
    granule: int
    nodes: list[tuple[int, int, str]]
    mapped: list[tuple[int, int, int, int]]
    iotlb: list[tuple[int, int, int | None, bool]]
    unflushed: list[tuple[int, int]]
    tables: int
    counters: Counters
    notices: list[str]
    fq_pending: int
    current: list = field(default_factory=list)
    changed: frozenset = frozenset()
    focus: tuple[int, int] | None = None

    @property
    def stale(self) -> int:
        return sum(1 for *_, s in self.iotlb if s)


class _Replay:
    """The bookkeeping :func:`state_at` replays (copyable for checkpoints)."""

    __slots__ = ("g", "nodes", "keys", "leaves", "tlb", "unflushed", "totals", "notices", "tables", "fq")

    def __init__(self, granule: int):
        self.g = granule
        self.nodes: dict[int, list] = {}
        self.keys: list[int] = []            # sorted leaf bases
        self.leaves: dict[int, tuple[int, int]] = {}
        self.tlb: dict[int, tuple[int, int | None]] = {}  # base -> (size, phys); phys None: non-present
        self.unflushed: list[tuple[int, int]] = []
        self.totals: dict[str, int] = dict.fromkeys(COUNTER_KINDS, 0)
        self.notices: list[str] = []
        self.tables = 0
        self.fq = 0

    def copy(self) -> _Replay:
        r = _Replay.__new__(_Replay)
        r.g = self.g
        r.nodes = {k: list(v) for k, v in self.nodes.items()}
        r.keys = list(self.keys)
        r.leaves = dict(self.leaves)
        r.tlb = dict(self.tlb)
        r.unflushed = list(self.unflushed)
        r.totals = dict(self.totals)
        r.notices = list(self.notices)
        r.tables = self.tables
        r.fq = self.fq
        return r

    def _leaf_at(self, iova: int):
        i = bisect.bisect_right(self.keys, iova) - 1
        if i >= 0:
            base = self.keys[i]
            pg, phys = self.leaves[base]
            if base + pg > iova:
                return base, pg, phys
        return None

    def _maps(self, base: int, size: int, phys: int | None) -> bool:
        """Whether the page table (the leaves so far) still translates ``[base, base + size)`` as an
        IOTLB entry caching ``phys`` does: to ``[phys, phys + size)``, or (``phys`` None) not at all."""
        if phys is None:
            return self._leaf_at(base) is None
        a = base
        while a < base + size:
            leaf = self._leaf_at(a)
            if leaf is None or leaf[2] + (a - leaf[0]) != phys + (a - base):
                return False
            a = leaf[0] + leaf[1]
        return True

    def _invalidate(self, lo: int, hi: int) -> None:
        """Drop IOTLB entries and unflushed ranges overlapping ``[lo, hi)``."""
        for base in [b for b, (pg, _) in self.tlb.items() if b < hi and b + pg > lo]:
            del self.tlb[base]
        out = []
        for a, b in self.unflushed:
            if b <= lo or a >= hi:
                out.append((a, b))
            else:
                if a < lo:
                    out.append((a, lo))
                if b > hi:
                    out.append((hi, b))
        self.unflushed = out

    def apply(self, e, touch=None, changed=None) -> None:
        kind = e.kind
        a = e.args
        g = self.g
        nodes = self.nodes
        totals = self.totals
        if kind in totals:
            totals[kind] += e.count
            if changed is not None and e.count:
                changed.add(kind)
        if kind == "tree_alloc":
            nodes[e.result] = [e.result, e.result + a["size"] - 1, "in use"]
            if touch:
                touch(e.result * g, (e.result + a["size"]) * g)
        elif kind == "reserve":
            nodes.setdefault(a["pfn_lo"], [a["pfn_lo"], a["pfn_hi"], "reserved"])
        elif kind == "tree_free":
            nodes.pop(a["pfn_lo"], None)
            if touch:
                touch(a["pfn_lo"] * g, (a["pfn_hi"] + 1) * g)
        elif kind in ("iova_allocs", "rcache_insert", "fq_add"):
            pfn = e.result if kind == "iova_allocs" else a["pfn"]
            if kind == "fq_add":
                self.fq += 1
            n = nodes.get(pfn)
            if n is not None:
                n[2] = {"iova_allocs": "in use", "rcache_insert": "cached", "fq_add": "queued"}[kind]
                if touch:
                    touch(n[0] * g, (n[1] + 1) * g)
        elif kind == "fq_free":
            self.fq -= e.count
        elif kind == "pte_writes":
            pg = a["pgsize"]
            base = a["iova"]
            for j in range((e.result or 0) // pg):
                key = base + j * pg
                if key not in self.leaves:
                    bisect.insort(self.keys, key)
                self.leaves[key] = (pg, a["paddr"] + j * pg)
        elif kind == "pte_clear":
            # the bytes returned count from the start of the first leaf cleared: AMD v1 clears a whole
            # large PTE when asked for part of it (drivers/iommu/amd/io_pgtable.c iommu_v1_unmap_pages(),
            # 6.17); VT-d and io-pgtable-arm refuse a partial superpage/block instead
            leaf = self._leaf_at(a["iova"])
            lo = leaf[0] if leaf is not None else a["iova"]
            hi = lo + (e.result or 0)
            i = bisect.bisect_left(self.keys, lo)
            j = bisect.bisect_left(self.keys, hi)
            for key in self.keys[i:j]:
                del self.leaves[key]
            del self.keys[i:j]
            if hi > lo:
                self.unflushed.append((lo, hi))
        elif kind == "table_pages":
            self.tables += e.count
        elif kind == "table_free":
            self.tables -= e.count
        elif kind in ("iotlb_miss", "iotlb_hit"):
            if touch:
                base = a["iova"] - a["iova"] % g
                touch(base, base + g)
            if kind == "iotlb_miss" and e.result is not None:
                leaf = self._leaf_at(a["iova"])
                if leaf is not None:
                    self.tlb[leaf[0]] = (leaf[1], leaf[2])
            elif kind == "iotlb_miss" and a.get("negative"):
                # the IOTLB keeps the non-present entry (VT-d caching mode: drivers/iommu/intel/iommu.c
                # intel_iommu_iotlb_sync_map() flushes it when the page is mapped)
                self.tlb[a["iova"] - a["iova"] % g] = (g, None)
        elif kind == "iotlb_syncs" and a.get("flushed") and a.get("size"):
            # iommu_sync_map() -> ops->iotlb_sync_map that flushes [iova, iova + size) (VT-d caching mode,
            # AMD np-cache: drivers/iommu/iommu.c iommu_sync_map(), 6.17)
            self._invalidate(a["iova"], a["iova"] + a["size"])
        elif kind == "iotlb_invalidations":
            if a.get("scope") == "all":
                self.tlb.clear()
                self.unflushed = []
            else:
                self._invalidate(a["start"], a["end"] + 1)
                if touch:
                    touch(a["start"], a["end"] + 1)
        elif kind == "dev_notice":
            self.notices.append(f"dev_notice: {a.get('message', '')}")
        elif kind in ("warn", "contract"):
            self.notices.append(f"{kind.upper()} in {e.func}: {a.get('rule', '')}")
        if touch and kind in ("iommu_map_calls", "iommu_unmap", "iotlb_syncs") and a.get("size"):
            touch(a["iova"], a["iova"] + a["size"])

    def state(self, k: int, current: list, changed: set, span: list) -> StepState:
        g = self.g
        node_list = sorted((lo * g, (hi + 1) * g, st) for lo, hi, st in self.nodes.values())
        mapped = []
        for base in self.keys:
            pg, phys = self.leaves[base]
            mapped.append((base, pg, pg, phys))
        iotlb = [(base, pg, phys, not self._maps(base, pg, phys)) for base, (pg, phys) in sorted(self.tlb.items())]
        focus = (min(span), max(span)) if span else None
        return StepState(k, g, node_list, mapped, iotlb, sorted(self.unflushed), self.tables,
                         Counters.from_totals(self.totals), list(self.notices), self.fq, current,
                         frozenset(changed), focus)


def _replay_range(r: _Replay, events, lo: int, hi: int, s0: int, changed: set, span: list) -> None:
    def touch(a: int, b: int) -> None:
        span.append(a)
        span.append(b)

    for i in range(lo, hi):
        if i >= s0:
            r.apply(events[i], touch, changed)
        else:
            r.apply(events[i])


def state_at(events, k: int, granule: int, *, start: int | None = None) -> StepState:
    """Replay the *descriptions* of the first ``k`` events into a :class:`StepState`.

    Nothing is re-simulated: tree nodes come from ``__alloc_and_insert_iova_range`` /
    ``remove_iova`` / ``reserve_iova``, their status from ``alloc_iova_fast`` / ``alloc_iova``,
    ``iova_rcache_insert`` and ``queue_iova``; leaf PTEs from the page-table ``pte_writes`` /
    ``pte_clear`` events; IOTLB entries from ``device_access`` misses (the leaf that covers the
    address) and every ``iotlb_invalidations`` event (a range, or ``scope="all"``), which also
    retire unmapped ranges from ``unflushed``. ``start`` is where the current step begins
    (default ``k - 1``).
    """
    k = max(0, min(k, len(events)))
    s0 = k - 1 if start is None else max(0, min(start, k))
    r = _Replay(granule)
    changed: set[str] = set()
    span: list[int] = []
    _replay_range(r, events, 0, k, s0, changed, span)
    return r.state(k, list(events[s0:k]), changed, span)


class Timeline:
    """:func:`state_at` with checkpoints every ``every`` events, for players over long logs."""

    def __init__(self, events, granule: int, every: int = 2048):
        self.events = events
        self.granule = granule
        self.every = every
        self._cp: dict[int, _Replay] = {0: _Replay(granule)}

    def _base(self, k: int) -> tuple[int, _Replay]:
        c = (k // self.every) * self.every
        while c not in self._cp:
            c -= self.every
        r = self._cp[c]
        target = (k // self.every) * self.every
        while c < target:
            r = r.copy()
            _replay_range(r, self.events, c, c + self.every, 1 << 62, set(), [])
            c += self.every
            self._cp[c] = r
        return c, r

    def state(self, k: int, start: int | None = None) -> StepState:
        """The same as ``state_at(events, k, granule, start=start)``."""
        events = self.events
        k = max(0, min(k, len(events)))
        s0 = k - 1 if start is None else max(0, min(start, k))
        c, r = self._base(min(k, s0))
        r = r.copy()
        changed: set[str] = set()
        span: list[int] = []
        _replay_range(r, events, c, k, s0, changed, span)
        return r.state(k, list(events[s0:k]), changed, span)
