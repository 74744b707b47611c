"""Counters → MODELLED time, from ``data/cost-model.csv``.

No kernel analogue: this turns the event counters of a simulated run (``iovalab.kernel.events.Counters``)
into a **modelled** cost in nanoseconds, ``Σ count × cost``, with one cost per counted operation
and platform preset. The results are MODELLED, NOT MEASURED: each per-operation cost in the CSV
either cites a published figure (author, message id or URL, and how well it was verified) or is
marked ``assumed`` with its reasoning; most are assumed.
Use the output to compare the *shape* of two runs (which operation dominates, how a difference
scales), never as a prediction of wall-clock time. Every label this module produces says
"modelled". See ``data/cost-model.README.md`` for every derivation and caveat.

Operations and the counters they multiply (names from :data:`iovalab.kernel.event_schema.COUNTER_KINDS`):

==========================  ===========================================================
``iova_alloc_rcache``       ``rcache_hits``
``iova_alloc_tree``         ``iova_allocs - rcache_hits``
``iova_free``               ``iova_frees``
``pte_write``               ``pte_writes``
``table_page``              ``table_pages``
``iommu_map_call``          ``iommu_map_calls``
``iotlb_sync``              ``iotlb_syncs`` (map side, ``iotlb_sync_map``)
``iotlb_invalidation``      ``iotlb_invalidations``
``sync_wait``               ``iotlb_invalidations`` (one wait round trip per invalidation)
``swiotlb_copy_per_byte``   bytes of the ``swiotlb_copy`` step kind (``EventLog.totals``)
``dma_api_call``            ``dma_api_calls``
==========================  ===========================================================

``swiotlb_copy`` bytes are a step tally, not a :class:`~iovalab.kernel.events.Counters` field: pass the
:class:`~iovalab.kernel.events.EventLog` itself (or ``log.totals``) to include them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iovalab.resources import data_dir
from iovalab.kernel.events import Counters, EventLog

__all__ = [
    "MODELLED", "OPERATIONS", "CSV_COLUMNS", "default_cost_model_path",
    "CostModelError", "CostRow", "CostModel", "ModelledBreakdown", "OperationSensitivity",
    "Sensitivity", "load_cost_model",
]

#: The word every label carries.
MODELLED = "modelled"

#: operation -> (counter added, counter subtracted or None). ``swiotlb_copy`` is the step kind
#: whose tally is bytes copied by ``swiotlb_bounce``.
OPERATIONS: dict[str, tuple[str, str | None]] = {
    "iova_alloc_rcache": ("rcache_hits", None),
    "iova_alloc_tree": ("iova_allocs", "rcache_hits"),
    "iova_free": ("iova_frees", None),
    "pte_write": ("pte_writes", None),
    "table_page": ("table_pages", None),
    "iommu_map_call": ("iommu_map_calls", None),
    "iotlb_sync": ("iotlb_syncs", None),
    "iotlb_invalidation": ("iotlb_invalidations", None),
    "sync_wait": ("iotlb_invalidations", None),
    "swiotlb_copy_per_byte": ("swiotlb_copy", None),
    "dma_api_call": ("dma_api_calls", None),
}

CSV_COLUMNS = ("operation", "preset", "ns", "source", "note")


def default_cost_model_path() -> Path:
    """The bundled ``iovalab/data/cost-model.csv`` (package data, found with :mod:`importlib.resources`)."""
    return Path(str(data_dir("cost-model.csv")))


class CostModelError(ValueError):
    """The cost-model CSV is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class CostRow:
    """One CSV row: the modelled cost of one ``operation`` on one ``preset``."""

    operation: str
    preset: str
    ns: float
    source: str
    note: str
    line: int


@dataclass(frozen=True)
class OperationSensitivity:
    """How the modelled difference (run B - run A) moves when one operation's cost is scaled."""

    operation: str
    count_delta: float        # count in B - count in A
    contribution_ns: float    # count_delta * cost: this operation's share of the difference
    diff_scaled_up_ns: float  # the difference with this cost multiplied by the factor
    diff_scaled_down_ns: float  # ... divided by the factor
    swing_ns: float           # |up - down|: how much this one parameter can move the answer
    flips_sign: bool          # scaling this cost alone can change which run is cheaper


@dataclass(frozen=True)
class Sensitivity:
    """Result of :meth:`CostModel.sensitivity` (all numbers modelled, in ns)."""

    preset: str
    factor: float
    diff_ns: float            # modelled(B) - modelled(A)
    per_operation: dict[str, OperationSensitivity]
    dominant: str | None      # the operation with the largest swing (None if nothing differs)
    label: str

    def describe(self) -> str:
        """A few lines of text, largest swing first; every line says "modelled"."""
        lines = [self.label,
                 f"modelled difference B - A: {self.diff_ns:,.1f} ns; dominant parameter: {self.dominant}"]
        for s in sorted(self.per_operation.values(), key=lambda s: -s.swing_ns):
            if s.swing_ns == 0:
                continue
            flip = "  (can flip which run is cheaper)" if s.flips_sign else ""
            lines.append(f"  {s.operation:<22} modelled share {s.contribution_ns:>14,.1f} ns; "
                         f"x{self.factor:g}: {s.diff_scaled_up_ns:,.1f}  /{self.factor:g}: "
                         f"{s.diff_scaled_down_ns:,.1f}{flip}")
        return "\n".join(lines)


class ModelledBreakdown(dict):
    """``{operation: modelled ns, ..., "total": modelled ns}`` plus what it was computed from.

    Attributes: ``preset``, ``counts`` (operation -> count used), ``label`` (says "modelled"),
    ``notes`` (e.g. that swiotlb copy bytes were not available).
    """

    def __init__(self, values: dict[str, float], *, preset: str, counts: dict[str, float],
                 notes: list[str]):
        super().__init__(values)
        self.preset = preset
        self.counts = counts
        self.notes = notes
        self.label = f"{MODELLED} ns on preset {preset!r} (from data/cost-model.csv; not measured)"

    @property
    def total(self) -> float:
        return self["total"]

    def table(self) -> str:
        """Text table of count x cost per operation, headed by the "modelled" label."""
        rows = [self.label, f"{'operation':<22} {'count':>14} {'modelled ns':>16}"]
        for op, ns in self.items():
            if op == "total":
                continue
            rows.append(f"{op:<22} {self.counts[op]:>14,} {ns:>16,.1f}")
        rows.append(f"{'total (modelled)':<22} {'':>14} {self['total']:>16,.1f}")
        rows.extend(f"note: {n}" for n in self.notes)
        return "\n".join(rows)


def _totals_of(counters) -> tuple[dict[str, float], list[str]]:
    """Counter totals from a Counters, an EventLog or a mapping of counter/step names."""
    notes: list[str] = []
    totals: dict[str, float]      # counts are ints; a float total is accepted (and checked below)
    if isinstance(counters, EventLog):
        totals = dict(counters.totals)
    elif isinstance(counters, Counters):
        totals = dict(counters.as_dict())
        notes.append("swiotlb copy bytes are not a Counters field; pass the EventLog (or log.totals) "
                     "to include swiotlb_copy_per_byte")
    elif isinstance(counters, Mapping):
        # keys other than the counters and "swiotlb_copy" (step kinds such as 'warn') are ignored
        totals = dict(counters)
    else:
        raise TypeError(f"counters must be iovalab.kernel.events.Counters, an EventLog or a dict, "
                        f"not {type(counters).__name__}")
    for k, v in totals.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"counter {k!r} = {v!r} is not a number")
    return totals, notes


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


class CostModel:
    """The per-operation costs of ``data/cost-model.csv`` (see :func:`load_cost_model`).

    ``presets`` (file order), ``operations`` (:data:`OPERATIONS` order), ``rows``; look-ups with
    :meth:`cost`, :meth:`source`, :meth:`note`.
    """

    def __init__(self, rows: list[CostRow], path: Path | None = None):
        self.rows = list(rows)
        self.path = path
        self._by_key = {(r.operation, r.preset): r for r in self.rows}
        presets: list[str] = []
        for r in self.rows:
            if r.preset not in presets:
                presets.append(r.preset)
        self.presets: tuple[str, ...] = tuple(presets)
        self.operations: tuple[str, ...] = tuple(OPERATIONS)

    def _row(self, operation: str, preset: str) -> CostRow:
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(self.presets)}")
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)}")
        return self._by_key[(operation, preset)]

    def cost(self, operation: str, preset: str) -> float:
        """Modelled ns per unit of ``operation`` on ``preset`` (per byte for ``swiotlb_copy_per_byte``)."""
        return self._row(operation, preset).ns

    def source(self, operation: str, preset: str) -> str:
        return self._row(operation, preset).source

    def note(self, operation: str, preset: str) -> str:
        return self._row(operation, preset).note

    def counts(self, counters) -> dict[str, float]:
        """Operation counts of a run (see the module table); ``ValueError`` if any is negative."""
        totals, _ = _totals_of(counters)
        return self._counts(totals)

    @staticmethod
    def _counts(totals: dict[str, float]) -> dict[str, float]:
        out = {}
        for op, (plus, minus) in OPERATIONS.items():
            n = totals.get(plus, 0) - (totals.get(minus, 0) if minus else 0)
            if n < 0:
                raise ValueError(f"operation {op!r} gets a negative count {n} "
                                 f"({plus}{' - ' + minus if minus else ''}); counters are inconsistent")
            out[op] = n
        return out

    def modelled_ns(self, counters, preset: str) -> ModelledBreakdown:
        """Modelled ns per operation and ``"total"`` for one run: ``Σ count × cost``.

        :param counters: :class:`~iovalab.kernel.events.Counters`, an :class:`~iovalab.kernel.events.EventLog`, or a
            dict keyed by counter names (plus ``"swiotlb_copy"`` for bytes bounced).
        :param preset: one of :attr:`presets`.
        """
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(self.presets)}")
        totals, notes = _totals_of(counters)
        counts = self._counts(totals)
        values = {op: counts[op] * self.cost(op, preset) for op in OPERATIONS}
        values["total"] = math.fsum(values.values())
        return ModelledBreakdown(values, preset=preset, counts=counts, notes=notes)

    def sensitivity(self, counters_a, counters_b, preset: str, factor: float = 2.0) -> Sensitivity:
        """Which cost parameter dominates the modelled difference between run A and run B.

        The modelled difference is ``D = Σ Δn_k · c_k`` (``Δn_k`` = count in B minus count in A).
        For each operation k, ``c_k`` alone is multiplied and divided by ``factor``:
        ``D_up = D + Δn_k c_k (factor - 1)``, ``D_down = D + Δn_k c_k (1/factor - 1)``. The operation
        with the largest swing ``|D_up - D_down|`` dominates; ``flips_sign`` says whether that
        change alone could reverse which run is cheaper. All values are modelled.
        """
        if not isinstance(factor, (int, float)) or not factor > 1 or not math.isfinite(factor):
            raise ValueError(f"factor {factor!r} must be a finite number > 1")
        a = self.modelled_ns(counters_a, preset)
        b = self.modelled_ns(counters_b, preset)
        diff = b["total"] - a["total"]
        per: dict[str, OperationSensitivity] = {}
        for op in OPERATIONS:
            delta = b.counts[op] - a.counts[op]
            share = b[op] - a[op]
            up = diff + share * (factor - 1)
            down = diff + share * (1 / factor - 1)
            flips = bool(share) and (_sign(up) != _sign(diff) or _sign(down) != _sign(diff))
            per[op] = OperationSensitivity(op, delta, share, up, down, abs(up - down), flips)
        ranked = max(per.values(), key=lambda s: s.swing_ns)
        dominant = ranked.operation if ranked.swing_ns > 0 else None
        label = (f"{MODELLED} sensitivity on preset {preset!r}: each cost x{factor:g} and /{factor:g} "
                 "(from data/cost-model.csv; not measured)")
        return Sensitivity(preset, float(factor), diff, per, dominant, label)


def load_cost_model(path: str | Path | None = None) -> CostModel:
    """Read and check ``data/cost-model.csv`` (or ``path``) into a :class:`CostModel`.

    Raises :class:`CostModelError` (a ``ValueError``) naming the file, and the line where there is
    one, if the file is missing, the header is not exactly ``operation,preset,ns,source,note``, a row
    has the wrong number of fields, an unknown operation, a cost that is not a finite number >= 0, an
    empty preset or source, a duplicate (operation, preset), or if a preset lacks an operation.
    """
    p = Path(path) if path is not None else default_cost_model_path()
    if not p.is_file():
        raise CostModelError(f"{p}: cost model file not found")
    rows: list[CostRow] = []
    seen: dict[tuple[str, str], int] = {}
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CostModelError(f"{p}:1: empty file, expected header {','.join(CSV_COLUMNS)}") from None
        if tuple(h.strip() for h in header) != CSV_COLUMNS:
            raise CostModelError(f"{p}:1: header {header!r} is not {','.join(CSV_COLUMNS)}")
        try:
            for fields in reader:
                line = reader.line_num
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) != len(CSV_COLUMNS):
                    raise CostModelError(f"{p}:{line}: {len(fields)} fields, expected {len(CSV_COLUMNS)} "
                                         f"({','.join(CSV_COLUMNS)})")
                op, preset, ns_text, source, note = (x.strip() for x in fields)
                if op not in OPERATIONS:
                    raise CostModelError(f"{p}:{line}: unknown operation {op!r}; "
                                         f"known: {', '.join(OPERATIONS)}")
                if not preset:
                    raise CostModelError(f"{p}:{line}: empty preset")
                try:
                    ns = float(ns_text)
                except ValueError:
                    raise CostModelError(f"{p}:{line}: ns {ns_text!r} is not a number") from None
                if not math.isfinite(ns) or ns < 0:
                    raise CostModelError(f"{p}:{line}: ns {ns_text!r} must be a finite number >= 0")
                if not source:
                    raise CostModelError(f"{p}:{line}: empty source "
                                         "(cite the published figure or write 'assumed')")
                if (op, preset) in seen:
                    raise CostModelError(f"{p}:{line}: duplicate ({op}, {preset}); first on line "
                                         f"{seen[(op, preset)]}")
                seen[(op, preset)] = line
                rows.append(CostRow(op, preset, ns, source, note, line))
        except csv.Error as e:
            raise CostModelError(f"{p}:{reader.line_num}: {e}") from None
    if not rows:
        raise CostModelError(f"{p}: no rows after the header")
    presets = list(dict.fromkeys(r.preset for r in rows))
    for preset in presets:
        missing = [op for op in OPERATIONS if (op, preset) not in seen]
        if missing:
            raise CostModelError(f"{p}: preset {preset!r} has no row for {', '.join(missing)}")
    return CostModel(rows, p)
