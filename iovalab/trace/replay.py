"""Replay a real kernel ftrace capture through the simulator and compare every IOVA allocation.

The capture (``iommu:map``/``iommu:unmap``, ``dma:*``, optionally ``intel_iommu:*`` and
``tracing_mark_write`` phase markers; see ``data/real/README.md``) does not show allocations and
frees directly. They are reconstructed from what the kernel's code guarantees:

* ``__iommu_dma_map()`` / ``iommu_dma_map_sg()`` (drivers/iommu/dma-iommu.c) allocate the IOVA, then
  ``iommu_map()`` emits one ``map`` event per physically contiguous chunk, then the ``dma_map_*``
  event follows (kernel/dma/mapping.c). So an allocation happens before the first ``map`` line of
  its range, on that line's CPU; the ``dma_*`` event on the same CPU closes it.
* Its size is the IOVA length the matching ``unmap`` reports (``__iommu_dma_unmap`` unmaps the whole
  granule-aligned range); where no unmap follows (coherent ``dma_alloc``), the span its ``map``
  lines cover.
* ``unmap`` (``__iommu_unmap``) is followed by ``iommu_dma_free_iova()`` on the same CPU: strict
  domains free into that CPU's rcache (``free_iova_fast``), lazy ones queue the range in that CPU's
  flush queue (``queue_iova``) until a ``flush_iotlb_all`` (``cache_tag_flush_all`` on VT-d).
* An interrupt-context unmap can run between an allocation and its first ``map`` line; the
  replayer then moves the allocation before the immediately preceding interrupt-context (or
  other-CPU) frees, and counts and reports every such reorder.
* Strict or lazy comes from the capture (:func:`infer_mode`): its IOTLB flush lines, else whether the
  IOVAs freed by ``dma_unmap_*`` come straight back to the next allocation of their size on their CPU
  (:class:`~iovalab.trace.evidence.IovaReuse`), else a guess of strict, reported as one; ``--strict``/
  ``--lazy`` override it. The replay runs once in that mode: it is never chosen by how well it matches.
* Time: the rcache depot trim (``iova_depot_work_func``, 100 ms after a depot push) and, for lazy
  captures without flush events, the flush-queue timer (10 ms) are driven by the event timestamps.

The domain is built as ``iommu_dma_init_domain()`` does for the traced system, which
:func:`iovalab.trace.system.infer_system` reads from the capture's own evidence (IOMMU, IOVA granule,
``PAGE_SIZE``, reserved regions, CPUs; each decision with its evidence), with a PCI device with a
64-bit mask and the 32-bit-first workaround. :func:`iovalab.trace.lines.check_lines` then redoes
every mapping through the DMA API and compares every ``map``/``unmap`` line.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from iovalab.kernel.device import Device
from iovalab.kernel.events import EventLog
from iovalab.trace.evidence import CaptureEvidence, IovaReuse
from iovalab.trace.ftrace import FtraceCapture, TraceLine, iter_ftrace
from iovalab.trace.ftrace_write import events_to_ftrace, export_ftrace
from iovalab.kernel.iommu import IotlbGather
from iovalab.kernel.iova import IOVA_DEPOT_DELAY_MS, IOVA_RANGE_CACHE_MAX_SIZE, MAX_CPUS
from iovalab.kernel.units import DMA_BIT_MASK
from iovalab.kernel.version import behaves, timer_wheel_fires
from iovalab.trace.lines import MAX_MISMATCHES, LineCheck, LineChecker, check_lines
from iovalab.trace.steps import LOOKAHEAD, Allocation, iter_steps, reconstruct
from iovalab.trace.system import SystemConfig, TwoStepFacts, infer_system

__all__ = ["Allocation", "PhaseResult", "ReplayResult", "SystemConfig", "LineCheck", "reconstruct",
           "infer_system", "replay_capture", "replay_file", "check_lines", "events_to_ftrace", "export_ftrace"]


@dataclass
class PhaseResult:
    name: str
    first_line: int
    allocations: int = 0
    matched: int = 0
    reordered: int = 0
    mismatched: int = 0
    first_mismatch: str | None = None


@dataclass
class ReplayResult:
    path: str
    cpus: int
    mode: str
    mode_inferred: str
    allocations: int = 0
    matched: int = 0
    reordered: int = 0
    mismatched: int = 0
    frees: int = 0
    unmatched_unmaps: int = 0
    flushes: int = 0
    phases: list[PhaseResult] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    reorders: list[int] = field(default_factory=list)
    reorder_frees: dict[int, int] = field(default_factory=dict)   # allocation line -> frees moved after it
    sim_iovas: list[tuple[float, int, int]] = field(default_factory=list)  # (ts, sim iova, size)
    kernel_iovas: list[tuple[float, int, int]] = field(default_factory=list)
    seconds: float = 0.0
    system: SystemConfig | None = None
    lines: LineCheck | None = None
    nr_lines: int = 0     # lines of the file (replay_file)
    timer_flushes: int = 0  # flush-queue timer runs placed from the timestamps (lazy, no flush lines)
    passes: int = 1       # replays of the capture it took (replay_file: a second one when the whole capture
    #                       decided another system or mode than its first lines; a guessed mode tried both ways)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("path", "cpus", "mode", "mode_inferred", "allocations",
                                           "matched", "reordered", "mismatched", "frees",
                                           "unmatched_unmaps", "flushes", "timer_flushes", "passes", "nr_lines",
                                           "seconds")}
        d["phases"] = [vars(p) for p in self.phases]
        d["mismatches"] = self.mismatches[:20]
        d["reorder_lines"] = self.reorders
        if self.system is not None:
            d["system"] = self.system.as_dict()
        if self.lines is not None:
            d["lines"] = self.lines.as_dict()
        return d


# --------------------------------------------------------------------------------------------
def infer_mode(cap: FtraceCapture | CaptureEvidence, reuse: IovaReuse | None = None) -> tuple[str, str]:
    """strict or lazy, and how that was decided, from the capture's own lines.

    Only a flush queue (``fq_flush_iotlb`` -> ``flush_iotlb_all``) flushes a DMA domain's whole IOTLB
    while it runs, so domain-wide flush lines mean lazy; a 7.3 lazy capture has ranged flushes too, one
    per two-step unmap (7.3.4 ``dma_iova_destroy()`` unlinks with a sync that is not queued). Ranged
    flushes alone mean strict (one per unmap). Without any flush line, whether freed IOVAs come straight
    back decides (``reuse``, :class:`~iovalab.trace.evidence.IovaReuse`: the capture's steps); without
    that either, strict is a guess, reported as one. The simulator is never run to choose."""
    ev = cap if isinstance(cap, CaptureEvidence) else CaptureEvidence.of_capture(cap)
    if ev.domain_flushes:
        ranged = f", and {ev.ranged_flushes} ranged ones (7.3: one per two-step unmap)" if ev.ranged_flushes else ""
        return "lazy", (f"lazy: {ev.domain_flushes} domain-wide flushes (cache_tag_flush_all, or cache_tag_flush_range "
                        f"over [0x0-0xffffffffffffffff]: the flush queue draining){ranged}")
    if ev.ranged_flushes > 0:
        return "strict", "strict: one ranged IOTLB flush per unmap (cache_tag_flush_range), none domain-wide"
    told = reuse.mode() if reuse is not None else None
    if told is not None:
        return told
    return "strict", ("strict (a guess: the capture has no IOTLB flush line, and no IOVA freed by a dma_unmap_* "
                      "path is allocated again on its CPU; --lazy replays it lazy)")


def needs_reuse(ev: CaptureEvidence) -> bool:
    """Whether :func:`infer_mode` reads :class:`~iovalab.trace.evidence.IovaReuse` for this capture
    (it has no IOTLB flush line)."""
    return not ev.domain_flushes and ev.ranged_flushes <= 0


def iova_reuse(steps: Iterable[tuple], granule: int) -> IovaReuse:
    """:class:`~iovalab.trace.evidence.IovaReuse` of ``steps``."""
    reuse = IovaReuse(granule)
    for st in steps:
        reuse.feed(st)
    return reuse


class _Replayer:
    def __init__(self, cpus: int, mode: str, system: SystemConfig, flush_points: bool = False):
        self.log = EventLog(keep=False)
        self.dom = system.make_domain(strict=(mode == "strict"), ncpus=cpus, log=self.log)
        self.dev = Device(name="0000:00:01.0", dma_mask=DMA_BIT_MASK(64), is_pci=True)
        self.lazy = mode == "lazy"
        self.flush_points = flush_points  # lazy: flushes come from cache_tag_flush_all lines
        self.trace_flushes = 0
        self.depot_deadline: dict[int, float] = {}
        self.depot_sizes = [0] * IOVA_RANGE_CACHE_MAX_SIZE
        self.fq_deadline: float | None = None
        self.desync_frees = 0
        self.other_flushes = 0
        self.timer_flushes = 0     # flush-queue timer runs placed from the timestamps
        self.followers: list = []  # other domains of the same replay (the line check's): same timers
        self.hz = system.hz
        self.two_step_at_once = behaves(system.kernel, "destroy_unlink_then_free")

    # -- trying another order: a trial of the allocator (IovaDomain.trial_*) and a copy of the rest
    def save(self):
        d = self.dom
        d.iovad.trial_begin()
        return ({cpu: list(fq.entries) for cpu, fq in d.fqs.touched()}, d.fq_flush_start_cnt,
                d.fq_flush_finish_cnt, d.fq_timer_on, self.dev.pci_32bit_workaround,
                dict(self.depot_deadline), list(self.depot_sizes), self.fq_deadline)

    def done(self) -> None:
        """The order is chosen: keep the state."""
        self.dom.iovad.trial_end()

    def restore(self, s):
        d = self.dom
        (fqs, d.fq_flush_start_cnt, d.fq_flush_finish_cnt, d.fq_timer_on,
         self.dev.pci_32bit_workaround, self.depot_deadline, self.depot_sizes, self.fq_deadline) = s
        self.depot_deadline = dict(self.depot_deadline)
        self.depot_sizes = list(self.depot_sizes)
        d.iovad.trial_rollback()
        d.fqs.replace({})
        for cpu, entries in fqs.items():
            d.fqs[cpu].entries = deque(entries)

    # -- time
    def _note_depot(self, ts: float) -> None:
        for b, r in enumerate(self.dom.iovad.rcaches):
            if r.depot_size > self.depot_sizes[b] and b not in self.depot_deadline:
                self.depot_deadline[b] = ts + IOVA_DEPOT_DELAY_MS / 1000
            self.depot_sizes[b] = r.depot_size

    def advance(self, ts: float, cpu: int) -> None:
        for b, due in sorted(self.depot_deadline.items()):
            deadline: float | None = due
            while deadline is not None and ts >= deadline:
                for other in self.followers:
                    other.iovad.iova_depot_work_func(b)
                if self.dom.iovad.iova_depot_work_func(b):
                    deadline += IOVA_DEPOT_DELAY_MS / 1000
                else:
                    deadline = None
            if deadline is None:
                del self.depot_deadline[b]
            else:
                self.depot_deadline[b] = deadline
            self.depot_sizes[b] = self.dom.iovad.rcaches[b].depot_size
        if self.lazy and not self.flush_points and self.dom.fq_timer_on:
            if self.fq_deadline is None:
                self.fq_deadline = self._fq_fires(ts)
            elif ts >= self.fq_deadline:
                self.fq_deadline = None
                self.timer_flushes += 1
                self.flush(cpu)

    def timer_due(self, ts: float, first_free: float) -> float | None:
        """When the flush-queue timer runs before ``ts`` (None otherwise), counting a timer the first
        pending free (traced at ``first_free``) arms in ``queue_iova`` if none is pending yet."""
        if not self.lazy or self.flush_points:
            return None
        d = self.fq_deadline
        if d is None and not self.dom.fq_timer_on:
            d = self._fq_fires(first_free)
        return d if d is not None and ts >= d else None

    def _fq_fires(self, ts: float) -> float:
        """When (trace seconds) the flush-queue timer armed at ``ts`` runs: ``mod_timer(jiffies +
        msecs_to_jiffies(fq_timeout))`` on the timer wheel (:func:`~iovalab.kernel.version.timer_wheel_fires`)
        at the system's ``HZ``, ticks at whole multiples of ``1000 / HZ`` ms of the trace clock (a guess:
        no trace line marks a tick)."""
        return timer_wheel_fires(ts * 1000, self.dom.fq_timeout, self.hz) / 1000

    # -- steps
    def alloc(self, a: Allocation) -> int:
        try:
            return self.dom.iommu_dma_alloc_iova(a.size, self.dev.dma_get_mask(), self.dev, a.cpu)
        except ValueError:  # e.g. a CPU beyond --cpus
            return 0

    def free(self, a: Allocation, cpu: int, ts: float) -> None:
        try:
            self._free(a, cpu, ts)
        except ValueError:  # only after a mismatch: the simulator does not hold this range
            self.desync_frees += 1

    def _free(self, a: Allocation, cpu: int, ts: float) -> None:
        g = IotlbGather()
        # 7.3.4 dma_iova_destroy(): dma_iova_unlink() syncs on a gather that is not queued, then
        # dma_iova_free() frees the IOVA at once, even in a flush-queue domain; 6.17 queues it
        at_once = a.kind == "?" and self.two_step_at_once
        g.queued = self.lazy and not at_once
        if g.queued:
            before = self.dom.fq_flush_start_cnt
            self.dom.iommu_dma_free_iova(a.base, a.size, g, cpu)
            if self.dom.fq_flush_start_cnt != before and self.flush_points:
                # the queue-full flush the trace will show as a cache_tag_flush_all of its own
                self.trace_flushes -= 1
            if self.fq_deadline is None and self.dom.fq_timer_on and not self.flush_points:
                self.fq_deadline = self._fq_fires(ts)
        else:
            self.dom.iommu_dma_free_iova(a.base, a.size, g, cpu)
        self._note_depot(ts)

    def flush(self, cpu: int, timer: bool = True) -> None:
        """A ``flush_iotlb_all`` seen in the capture. In softirq context it is the flush-queue timer
        (``fq_flush_timeout``: flush, then free what every queue holds). Elsewhere it is the
        queue-full flush inside ``queue_iova`` (which the simulator does by itself when its queue is
        full) or a flush outside the flush queue, which frees nothing."""
        if not timer:
            if self.trace_flushes < 0:   # already done by the simulator's own queue-full flush
                self.trace_flushes += 1
            else:
                self.other_flushes += 1
            return
        for dom in (self.dom, *self.followers):
            try:
                dom.fq_flush_timeout(cpu)
            except ValueError:
                self.desync_frees += 1


def replay_capture(cap: FtraceCapture, *, cpus: int | None = None, mode: str | None = None,
                   path: str = "<capture>", system: SystemConfig | None = None,
                   lines: bool = False, iovas: bool = True) -> ReplayResult:
    """Replay a parsed capture; see the module docstring for the rules. ``system``: the simulated
    system (default: :func:`infer_system` of the capture); ``lines``: also redo every mapping and
    compare every ``map``/``unmap`` line (:class:`~iovalab.trace.lines.LineChecker`, in ``result.lines``);
    ``iovas``: keep every allocation's kernel and simulator IOVA (``kernel_iovas``/``sim_iovas``, for plots).
    :func:`replay_file` does the same for a capture read from a file as a stream."""
    t0 = time.perf_counter()
    ev = CaptureEvidence.of_capture(cap)
    system = system or infer_system(ev, steps=lambda g: reconstruct(cap, g))   # the same evidence, once
    last = cap.lines[-1].lineno + 1 if cap.lines else 1
    reuse = iova_reuse(reconstruct(cap, system.granule), system.granule) if mode is None and needs_reuse(ev) else None
    result = _replay_modes([lambda: iter(cap.lines)], ev, cpus, mode, path, system, lines, iovas, lookahead=last,
                           reuse=reuse)
    result.seconds = time.perf_counter() - t0
    return result


def replay_file(path: str | os.PathLike, *, cpus: int | None = None, mode: str | None = None,
                system: SystemConfig | None = None, lines: bool = True, iovas: bool = False,
                lookahead: int = LOOKAHEAD, strict_parse: bool = True,
                overrides: dict | None = None, progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay the capture in file ``path`` as a stream: the same result as :func:`replay_capture` of
    the parsed capture (with ``iovas=False``: no per-allocation lists), holding only the lookahead of
    :func:`~iovalab.trace.steps.iter_steps` and the ranges still mapped, so the memory does not grow
    with the capture.

    The system and the mode are decided from the whole capture's evidence
    (:class:`~iovalab.trace.evidence.CaptureEvidence`, :class:`~iovalab.trace.system.TwoStepFacts`), as
    :func:`replay_capture` decides them. The replay starts once ``2 * lookahead`` lines are read, with
    the decisions their evidence gives; it gathers the whole capture's evidence as it goes, and when
    the whole capture decides otherwise, the capture is replayed again with those decisions
    (``result.passes`` says how many replays it took). ``overrides``: ``iommu``/``page_size``/
    ``reserve``/``kernel`` for :func:`infer_system`; ``progress``: called with a short text as each
    replay starts and ends."""
    threshold = gc.get_threshold()
    # the replay makes and drops a few objects per line; a young-generation collection every 700
    # allocations would walk the lookahead's lines over and over (about a tenth of the time)
    gc.set_threshold(max(threshold[0], _GC_YOUNG), *threshold[1:])
    try:
        return _replay_file(path, cpus, mode, system, lines, iovas, lookahead, strict_parse, overrides, progress)
    finally:
        gc.set_threshold(*threshold)


_GC_YOUNG = 50_000
_PROGRESS_EVERY_S = 5.0


def _replay_file(path, cpus, mode, system, lines, iovas, lookahead, strict_parse, overrides, progress) -> ReplayResult:
    t0 = time.perf_counter()
    say = progress or (lambda _text: None)
    over = overrides or {}
    head = FtraceCapture()
    ev = CaptureEvidence()
    it = iter_ftrace(path, strict=strict_parse, into=head)
    first = list(itertools.islice(it, 2 * lookahead))
    ev.feed_all(first)
    whole = len(first) < 2 * lookahead
    if whole:
        ev.finish(head)
    seen = ev if whole else ev.snapshot(head)
    spec = system or infer_system(seen, steps=lambda g: iter_steps(iter(first), g, lookahead=lookahead), **over)

    # for progress: the lines the file should have, from its size and the first lines' length
    per_line = sum(len(x.raw) + 1 for x in first[:1000]) / min(len(first), 1000) if first else 1
    expect = int(os.path.getsize(path) / per_line) if progress is not None and not whole else 0

    def fed() -> Iterator[TraceLine]:
        yield from first
        first.clear()
        n = 0
        t_next = time.perf_counter() + _PROGRESS_EVERY_S
        for ln in it:
            ev.feed(ln)
            yield ln
            n += 1
            if expect and not n & 0x3FFF and time.perf_counter() >= t_next:
                t_next += _PROGRESS_EVERY_S
                say(f"line {ln.lineno:,} of about {expect:,} ({min(99, 100 * ln.lineno // expect)}%)")
        ev.finish(head)

    def again() -> Iterator[TraceLine]:
        return iter_ftrace(path, strict=strict_parse)

    sources = [fed, again]
    say("replaying the capture" + ("" if whole else f" (decisions from its first {2 * lookahead:,} lines so far)"))
    facts = TwoStepFacts(spec.granule)
    reuse = iova_reuse(iter_steps(iter(first), spec.granule, lookahead=lookahead), spec.granule) \
        if mode is None and needs_reuse(seen) else None
    gather = IovaReuse(spec.granule) if reuse is not None and not whole else None
    result = _replay_modes(sources, seen, cpus, mode, os.fspath(path), spec, lines, iovas, lookahead, facts,
                           reuse=reuse, gather=gather)
    passes = result.passes
    if not whole:
        final = system or infer_system(ev, facts=facts, steps=lambda g: iter_steps(again(), g, lookahead=lookahead),
                                       **over)
        if mode is None and needs_reuse(ev) and (gather is None or final.granule != spec.granule):
            gather = iova_reuse(iter_steps(again(), final.granule, lookahead=lookahead), final.granule)
        whole_mode = infer_mode(ev, gather if mode is None else None)
        same = final.model_key() == spec.model_key() and whole_mode[0] == infer_mode(seen, reuse)[0] and \
            replay_cpus(ev, cpus, again) == replay_cpus(seen, cpus) and \
            (ev.domain_flushes > 0) == (seen.domain_flushes > 0)
        if same:
            result.system = final
            if mode is None:    # the same decision, said from the whole capture's evidence
                result.mode_inferred = _mode_text(whole_mode[1], result.mode, ev.domain_flushes > 0, final)
        else:
            say(f"the whole capture decides otherwise ({final.describe()}, {whole_mode[0]}): replaying it again")
            result = _replay_modes([again], ev, cpus, mode, os.fspath(path), final, lines, iovas, lookahead, None,
                                   reuse=gather)
            passes += result.passes
    result.passes = passes
    result.nr_lines = head.nr_lines
    result.seconds = time.perf_counter() - t0
    say(f"replayed {head.nr_lines:,} lines in {result.seconds:.1f} s")
    return result


def _mode_text(why: str, mode: str, flush_points: bool, system: SystemConfig) -> str:
    """``why`` the mode is what it is, and for a lazy replay without flush lines how the flush-queue
    timer is placed."""
    if mode != "lazy" or flush_points:
        return why
    return why + (f"; no flush line: the flush-queue timer placed from the timestamps, msecs_to_jiffies(10 ms) at "
                  f"HZ={system.hz} (--hz) plus calc_index's tick, ticks at multiples of {1000 / system.hz:g} ms of "
                  "the trace clock (a guess: no line marks a tick)")


def _replay_modes(sources: list[Callable[[], Iterator[TraceLine]]], ev: CaptureEvidence, cpus: int | None,
                  mode: str | None, path: str, system: SystemConfig, lines: bool, iovas: bool,
                  lookahead: int, facts: TwoStepFacts | None = None, *, reuse: IovaReuse | None = None,
                  gather: IovaReuse | None = None) -> ReplayResult:
    """The replay in the given mode, else in the mode :func:`infer_mode` reads off the capture
    (``reuse``: its IOVA-reuse evidence, when it has no flush line). One replay: the mode is never
    chosen by how well a replay matches. ``sources``: the replay reads the first, a check of the
    CPUs the last; ``gather``: fed every step (the whole capture's reuse evidence)."""
    ncpus = replay_cpus(ev, cpus, sources[-1])
    fp = ev.domain_flushes > 0
    if mode is None:
        mode, why = infer_mode(ev, reuse)
    else:
        why = f"{mode} (given)"
    return _replay(sources[0], ncpus, mode, path, _mode_text(why, mode, fp, system), system, lines, iovas,
                   lookahead, fp, facts, gather)


def replay_cpus(cap: FtraceCapture | CaptureEvidence, cpus: int | None = None,
                source: Callable[[], Iterator[TraceLine]] | None = None) -> int:
    """The CPU count a replay models: ``cpus`` (``--cpus``), else the header's ``#P:``, else the
    highest CPU seen + 1. ``ValueError`` when it is not ``1..MAX_CPUS`` or a line's CPU is beyond it
    (per-CPU rcaches and flush queues exist for those CPUs only)."""
    n = cpus or cap.nr_cpus or (max(cap.cpus) + 1 if cap.cpus else 1)
    why = "--cpus" if cpus else "the header's #P:" if cap.nr_cpus else "the CPUs seen"
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CPUS:
        raise ValueError(f"{n!r} CPUs ({why}): must be an int in 1..{MAX_CPUS} (NR_CPUS of x86_64 CONFIG_MAXSMP)")
    if cap.cpus and cap.cpus[-1] >= n:
        lines = source() if source is not None else iter(cap.lines) if isinstance(cap, FtraceCapture) else iter(())
        ln = next((x for x in lines if x.cpu >= n), None)
        where = f"line {ln.lineno}: " if ln is not None else ""
        raise ValueError(f"{where}CPU {cap.cpus[-1] if ln is None else ln.cpu} is beyond the {n} CPUs of {why} "
                         f"(CPUs are 0..{n - 1}); pass --cpus with more")
    return n


def _replay(source: Callable[[], Iterator[TraceLine]], ncpus: int, mode: str, path: str, why: str,
            system: SystemConfig, lines: bool, iovas: bool, lookahead: int, flush_points: bool,
            facts: TwoStepFacts | None, gather: IovaReuse | None = None) -> ReplayResult:
    rp = _Replayer(ncpus, mode, system, flush_points)
    chk = LineChecker(system, ncpus=ncpus, strict=(mode == "strict")) if lines else None
    if chk is not None:
        rp.followers.append(chk.dom)
    res = ReplayResult(path, ncpus, mode, why, system=system)
    phase = PhaseResult("(before the first marker)", 1)
    res.phases.append(phase)
    pending: list[tuple] = []   # frees seen since the last allocation: (alloc, cpu, irq, ln, ts, line)

    def apply_pending(before: float | None = None):
        """Do the pending frees (those traced before ``before`` only, when given)."""
        n = len(pending) if before is None else next((i for i, p in enumerate(pending) if p[4] >= before),
                                                      len(pending))
        for (a, cpu, _irq, _ln, ts, line) in pending[:n]:
            rp.free(a, cpu, ts)
            if chk is not None:
                chk.unmap(line)
        del pending[:n]

    def tick(ts: float, cpu: int) -> None:
        """Time goes on to ``ts``: frees traced before a flush-queue timer run that falls before ``ts``
        were queued before it ran."""
        due = rp.timer_due(ts, pending[0][4]) if pending else None
        if due is not None:
            apply_pending(due)
        rp.advance(ts, cpu)

    for st in iter_steps(source(), system.granule, lookahead=lookahead, keep_maps=False):
        kind = st[0]
        if facts is not None:
            facts.feed(st)
        if gather is not None:
            gather.feed(st)
        if kind == "phase":
            apply_pending()
            phase = PhaseResult(st[1], st[2])
            res.phases.append(phase)
        elif kind == "unmatched":
            res.unmatched_unmaps += 1
            if chk is not None:     # frees nothing: no allocation depends on where it goes
                chk.unmap(st[2])
        elif kind == "free":
            _, a, cpu, irq, ln, ts, line = st
            tick(ts, cpu)
            res.frees += 1
            pending.append((a, cpu, irq, ln, ts, line))
        elif kind == "link":
            apply_pending()
            if chk is not None:
                chk.link(st[1], st[2])
        elif kind == "flush":
            _, cpu, ln, ts, softirq = st
            apply_pending()
            rp.advance(ts, cpu)
            res.flushes += 1
            rp.flush(cpu, timer=softirq)
        elif kind == "alloc":
            a = st[1]
            tick(a.timestamp, a.cpu)
            res.allocations += 1
            phase.allocations += 1
            chosen, got = _alloc(rp, a, pending)
            if chk is not None:
                cut = len(pending) - max(chosen, 0)
                for p in pending[:cut]:
                    chk.unmap(p[5])
                chk.request(a)
                for p in pending[cut:]:
                    chk.unmap(p[5])
            pending.clear()
            if iovas:
                res.kernel_iovas.append((a.timestamp, a.base, a.size))
                res.sim_iovas.append((a.timestamp, got, a.size))
            if chosen >= 0:
                res.matched += 1
                phase.matched += 1
                if chosen:
                    res.reordered += 1
                    phase.reordered += 1
                    res.reorders.append(a.lineno)
                    res.reorder_frees[a.lineno] = chosen
            else:
                res.mismatched += 1
                phase.mismatched += 1
                msg = (f"line {a.lineno}: {a.size:#x} bytes on cpu{a.cpu}: kernel {a.base:#x}, "
                       f"simulator {got:#x}")
                if len(res.mismatches) < MAX_MISMATCHES:
                    res.mismatches.append(msg)
                if phase.first_mismatch is None:
                    phase.first_mismatch = msg
                _resync(rp, a, got)
    apply_pending()
    res.timer_flushes = rp.timer_flushes
    if chk is not None:
        res.lines = chk.result
    return res


def _alloc(rp: _Replayer, a: Allocation, pending: list[tuple]) -> tuple[int, int]:
    """Allocation ``a`` in the allocation model, after the pending frees: ``(k, iova)`` where ``k`` is
    how many of the trailing interrupt-context (or other-CPU) frees had to move after it for the
    kernel's IOVA (0: trace order; -1: no order gives it, trace order kept). Only the order the trace
    leaves open is tried, and every move is counted by the caller."""
    k_max = 0
    for p in reversed(pending):
        if p[2] or p[1] != a.cpu:
            k_max += 1
        else:
            break
    saved = rp.save() if k_max else None
    try:
        got = 0
        for k in range(k_max + 1):
            if k:
                rp.restore(saved)
            cut = len(pending) - k
            for p in pending[:cut]:
                rp.free(p[0], p[1], p[4])
            got = rp.alloc(a)
            if got == a.base:
                for p in pending[cut:]:
                    rp.free(p[0], p[1], p[4])
                return k, got
        # no order matches: keep trace order and report
        if saved:
            rp.restore(saved)
            for p in pending:
                rp.free(p[0], p[1], p[4])
            got = rp.alloc(a)
        return -1, got
    finally:
        if saved:
            rp.done()


def _resync(rp: _Replayer, a: Allocation, got: int) -> None:
    """After a mismatch, give the simulator the kernel's range so later steps stay comparable."""
    iovad = rp.dom.iovad
    shift = iovad.shift
    if got:
        try:
            iovad.free_iova(got >> shift)
        except ValueError:
            pass
    lo, hi = a.base >> shift, ((a.base + a.size) >> shift) - 1
    if not iovad.overlaps(lo, hi):
        iovad.reserve_iova(lo, hi).reserved = False
