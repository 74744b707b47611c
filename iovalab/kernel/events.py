"""The step log that every layer writes to.

No kernel analogue as such: it plays the part of the ftrace ring buffer plus the per-call
narrative a reviewer would write beside ``drivers/iommu/dma-iommu.c``. One step, one event:
every kernel-visible action (IOVA alloc, rcache hit or miss, PTE write, table page, IOTLB
invalidation, sync_map, swiotlb bounce, WARN) is appended here with the kernel function's name,
its arguments and result. Players, counters, exports and tests all read this one log.

What an event may say is declared in :mod:`iovalab.kernel.event_schema` (its kinds,
:class:`~iovalab.kernel.event_schema.Kind`, and each kind's typed arguments,
:data:`~iovalab.kernel.event_schema.SCHEMA`, listed in that module's docstring); this module imports
only that one. :meth:`EventLog.emit` refuses an unknown kind always, and an unknown, missing or wrongly
typed argument whenever it keeps the event.

Counting goes through the log: an event's ``kind`` is tallied by ``count`` (a counter of
:class:`Counters` when it is one of :data:`~iovalab.kernel.event_schema.COUNTER_KINDS`, a step tally
otherwise: ``log.count("warn")``).
With ``keep=False`` the log keeps only the tallies, so multi-million-page workloads stay small;
counters are then exactly what they would have been with ``keep=True``. Call sites always
:meth:`~EventLog.emit`; bulk paths that stand for many identical steps use
:meth:`~EventLog.tallies_since` and :meth:`~EventLog.tally_many`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from iovalab.kernel.event_schema import SCHEMA, Kind

__all__ = ["Event", "EventLog", "Counters"]


def _unknown_kind(kind: Any) -> ValueError:
    return ValueError(f"event kind {kind!r} is not declared (iovalab.kernel.event_schema.Kind: "
                      f"{', '.join(k.value for k in Kind)})")


_SCHEMA_GET = SCHEMA.get


def _kind_name(kind: Kind | str) -> str:
    spec = _SCHEMA_GET(kind)
    if spec is None:
        raise _unknown_kind(kind)
    return spec.name


class Event:
    """One kernel-visible step.

    ``layer``: ``iova`` | ``iommu`` | ``pgtable`` | ``dma`` | ``swiotlb`` | ``driver``;
    ``func``: the kernel function that does the step (``alloc_iova_fast``);
    ``kind``: a :class:`~iovalab.kernel.event_schema.Kind` (a counter of
    :data:`~iovalab.kernel.event_schema.COUNTER_KINDS` or a step: ``rcache_miss``, ``warn``);
    ``args``: the arguments :data:`~iovalab.kernel.event_schema.SCHEMA` declares for the kind (ints are bytes
    or pfns, as the kernel has them);
    ``result``: what the function returned; ``cpu``: the CPU it ran on; ``count``: how many units
    of ``kind`` this one step stands for; ``depth``: call nesting, for players; ``seq``: position.
    """

    #: the fields, in order (:meth:`as_dict`)
    FIELDS = ("seq", "layer", "func", "kind", "args", "result", "cpu", "count", "depth")
    __slots__ = ("seq", "layer", "func", "kind", "_args", "_names", "result", "cpu", "count", "depth")

    def __init__(self, seq: int, layer: str, func: str, kind: Kind, args: dict | tuple, result: Any,
                 cpu: int, count: int, depth: int, names: tuple[str, ...] | None = None):
        self.seq = seq
        self.layer = layer
        self.func = func
        self.kind = kind
        self._args = args      # the dict; or, with ``names``, the values (the dict is made when first read)
        self._names = names
        self.result = result
        self.cpu = cpu
        self.count = count
        self.depth = depth

    @property
    def args(self) -> dict[str, Any]:
        """``{name: value}`` of the arguments (:meth:`EventLog.emit_values` events build it when first
        read: most events of a long run are counted and never read)."""
        if self._names is not None:
            self._args = dict(zip(self._names, self._args, strict=True))
            self._names = None
        return self._args  # type: ignore[return-value]

    def pick(self, names: tuple[str, ...]) -> tuple:
        """The values of the arguments ``names``, in that order (a reader of a few arguments of many
        events, without building each event's dict)."""
        a = self._args
        if isinstance(a, tuple):
            have = self._names or ()
            if have[:len(names)] == names:
                return a[:len(names)]
            return tuple(a[have.index(n)] for n in names)
        return tuple(a[n] for n in names)

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
        return {k: getattr(self, k) for k in self.FIELDS}

    def __repr__(self) -> str:
        return f"<Event #{self.seq} [{self.layer}/{self.kind} cpu{self.cpu}] {self.describe()}>"


@dataclass
class Counters:
    """Totals over (a stretch of) the event log; see :data:`~iovalab.kernel.event_schema.COUNTER_KINDS`
    for what each counts."""

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

    ``keep=False`` drops the events themselves and keeps only the tallies (for bulk workloads);
    ``kinds`` keeps only the events of those kinds (a reader that needs a few, such as the replay's
    line check: the others are tallied, neither built nor checked). ``depth`` is raised by entry
    points around their inner calls so players can indent steps.
    """

    def __init__(self, keep: bool = True, kinds: Iterable[Kind | str] | None = None):
        #: kind as emitted (a Kind or its string) -> (tally key, schema entry when its events are kept,
        #: else None): one dict lookup per event instead of a schema lookup and the keep/kinds tests
        self._route: dict[Kind | str, tuple[str, Any]] = {}
        self._keep = keep
        self._kinds: frozenset[str] | None = None if kinds is None else frozenset(_kind_name(k) for k in kinds)
        self.events: list[Event] = []
        self.totals: defaultdict[str, int] = defaultdict(int)
        self.seq = 0
        self.depth = 0

    @property
    def keep(self) -> bool:
        """Whether events are kept (else only tallied)."""
        return self._keep

    @keep.setter
    def keep(self, keep: bool) -> None:
        self._keep = keep
        self._route.clear()

    @property
    def kinds(self) -> frozenset[str] | None:
        """The kinds whose events are kept (None: all)."""
        return self._kinds

    @kinds.setter
    def kinds(self, kinds: frozenset[str] | None) -> None:
        self._kinds = kinds
        self._route.clear()

    def _route_of(self, kind: Kind | str) -> tuple[str, Any]:
        """``(tally key, schema entry or None)`` of ``kind`` (remembered in ``_route``); ValueError for an
        undeclared kind."""
        spec = _SCHEMA_GET(kind)
        if spec is None:
            raise _unknown_kind(kind)
        kept = self._keep and (self._kinds is None or spec.name in self._kinds)
        route = self._route[kind] = (spec.name, spec if kept else None)
        return route

    def _count(self, kind: Kind | str, count: int) -> Any:
        """Tally one step of ``kind``; its schema entry when the event is to be built (kept), else None."""
        route = self._route.get(kind) or self._route_of(kind)
        self.totals[route[0]] += count
        self.seq += 1
        return route[1]

    def emit(self, layer: str, func: str, kind: Kind | str = Kind.STEP, result: Any = None, *,
             cpu: int = 0, count: int = 1, **args: Any) -> Event | None:
        """Record one step of ``kind`` (tallied by ``count``); returns the event (``None`` when not
        keeping events). An undeclared kind raises ``ValueError``; when keeping, so do arguments that
        :data:`~iovalab.kernel.event_schema.SCHEMA` does not declare for ``kind`` and ``func`` (``TypeError``
        for a wrong type)."""
        return self.emit_args(layer, func, kind, result, cpu, args, count)

    def emit_args(self, layer: str, func: str, kind: Kind | str, result: Any, cpu: int, args: dict[str, Any],
                  count: int = 1) -> Event | None:
        """:meth:`emit` with the arguments already in a dict (``args``, which the event then holds): for a
        caller that adds arguments to its own (``trace_api``), one dict instead of two. Same event, same
        checks."""
        spec = self._count(kind, count)
        if spec is None:
            return None
        if (func, *args, *map(type, args.values())) not in spec.valid_shapes:
            spec.check(func, args)
        ev = Event(self.seq, layer, func, spec.kind, args, result, cpu, count, self.depth)
        self.events.append(ev)
        return ev

    def emit_values(self, layer: str, func: str, kind: Kind | str, result: Any, cpu: int, values: tuple,
                    count: int = 1) -> Event | None:
        """:meth:`emit` for hot paths: the arguments are ``values``, in the order
        :data:`~iovalab.kernel.event_schema.SCHEMA` declares them for ``kind`` and ``func`` (trailing
        optional ones may be left out). Same event, same checks; when not keeping events it costs about a
        third of a keyword call (no ``**args`` dict)."""
        name, spec = self._route.get(kind) or self._route_of(kind)      # _count, inlined
        self.totals[name] += count
        self.seq += 1
        if spec is None:
            return None
        names = spec.valid_values.get((func, *map(type, values)))   # as many names as values
        if names is None:
            ev = Event(self.seq, layer, func, spec.kind, spec.named_checked(func, values), result, cpu, count,
                       self.depth)
        else:
            ev = Event(self.seq, layer, func, spec.kind, values, result, cpu, count, self.depth, names)
        self.events.append(ev)
        return ev

    def emit_fields(self, layer: str, func: str, kind: Kind | str, result: Any, cpu: int, names: tuple[str, ...],
                    values: tuple, count: int = 1) -> Event | None:
        """:meth:`emit` for hot paths whose arguments are not in the declared order: ``names`` (a constant
        of the caller) and their ``values``. Same event (its arguments in the order of ``names``), same
        checks."""
        spec = self._count(kind, count)
        if spec is None:
            return None
        if (func, *names, *map(type, values)) not in spec.valid_shapes:
            spec.check(func, dict(zip(names, values, strict=True)))
        ev = Event(self.seq, layer, func, spec.kind, values, result, cpu, count, self.depth, names)
        self.events.append(ev)
        return ev

    def tally(self, kind: Kind | str, count: int = 1) -> None:
        """Count ``count`` units of ``kind`` without recording a step (no event, no ``seq``)."""
        spec = _SCHEMA_GET(kind)
        if spec is None:
            raise _unknown_kind(kind)
        self.totals[spec.name] += count

    def tallies_since(self, mark: tuple[int, dict[str, int]]) -> dict[str, int]:
        """``{kind: units}`` tallied after ``mark`` (from :meth:`mark`), kinds that did not change left out."""
        before = mark[1]
        return {k: v - before.get(k, 0) for k, v in self.totals.items() if v != before.get(k, 0)}

    def tally_many(self, tallies: Mapping[str, int], times: int = 1) -> None:
        """Count ``tallies`` (``{kind: units}``, e.g. from :meth:`tallies_since`) ``times`` more times: what
        a bulk path does when it stands for ``times`` more repetitions of steps just recorded. ``seq``
        advances by the units counted. Only when not keeping events (kept events cannot be invented)."""
        if self.keep:
            raise ValueError("tally_many: this log keeps events; emit each step instead")
        totals = self.totals
        for kind, n in tallies.items():
            spec = _SCHEMA_GET(kind)
            if spec is None:
                raise _unknown_kind(kind)
            totals[spec.name] += n * times
        self.seq += sum(tallies.values()) * times

    def warn(self, layer: str, func: str, errno: int, rule: str, *, cpu: int = 0,
             **args: Any) -> Event | None:
        """Record a kernel ``WARN_ON_ONCE``/``WARN_ON`` with the errno the call returns."""
        return self.emit(layer, func, Kind.WARN, -abs(errno) if errno else 0, cpu=cpu,
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

    def count(self, kind: Kind | str) -> int:
        """Total of any kind, counter or step (``log.count('warn')``)."""
        return self.totals.get(kind, 0)

    def of_kind(self, *kinds: Kind | str) -> list[Event]:
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
