"""A capture's requests redone in a simulated domain of the mode you choose, at the times they were
traced: "what would this boot have done lazy?" (no kernel analogue).

:func:`rerun_capture` reads the capture's requests (:func:`~iovalab.trace.steps.reconstruct`: each
one's path, physical segments, size and timestamp) and redoes them, in file order, through the
simulator's DMA API in a fresh domain of the traced system (:func:`~iovalab.trace.system.infer_system`),
strict or lazy, its clock advanced to each step's timestamp first, so that a lazy domain's
flush-queue timer runs when the kernel's would have (``DmaDomain.advance_time``,
:func:`~iovalab.kernel.version.timer_wheel_fires`). The IOVAs are the simulator's own: unlike the
replay (:mod:`iovalab.trace.replay`) nothing is compared or forced to the capture's.

The paths, as :mod:`iovalab.trace.lines` reads them: ``dma_map_phys``/``dma_map_page`` (one
``dma_map_page`` of the traced ``phys_addr`` and size), ``dma_map_sg`` (``iommu_dma_map_sg`` of the
scatterlist the lines give, :func:`~iovalab.trace.lines.sg_entries_from_lines`), the two-step API (map
lines under one unmap with no ``dma:*`` event: ``dma_iova_try_alloc`` of the unmap's size, one
``dma_iova_link`` per map line, one ``dma_iova_sync``, ``dma_iova_destroy`` at the unmap) and
``dma_alloc`` (``dma_alloc_coherent`` of the size; its memory is the simulator's). A range the trace
never unmaps stays mapped; other lines are not redone (counted in ``skipped``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iova import DmaIovaState
from iovalab.kernel.events import Event, EventLog
from iovalab.kernel.units import DMA_BIT_MASK
from iovalab.trace.ftrace import DMA_DIRECTIONS, FtraceCapture
from iovalab.trace.ftrace_write import export_ftrace
from iovalab.trace.lines import sg_entries_from_lines
from iovalab.trace.steps import reconstruct
from iovalab.trace.system import SystemConfig, infer_system

__all__ = ["Rerun", "rerun_capture", "reach"]


def reach(ranges: Iterable[tuple[int, int]], granule: int) -> tuple[int, int]:
    """``(lowest IOVA, distinct granules)`` the ``(iova, size)`` mapped ranges cover (0, 0 for none)."""
    pages: set[int] = set()
    for iova, size in ranges:
        pages.update(range(iova // granule, (iova + size + granule - 1) // granule))
    return (min(pages) * granule if pages else 0), len(pages)


@dataclass
class Rerun:
    """What :func:`rerun_capture` did: the domain's ``events`` and, for each, the time (s, the
    capture's clock) it happened at; ``allocations``: (time, IOVA, size) of each request's mapping."""

    system: SystemConfig
    strict: bool
    events: list[Event]
    times: list[float]
    allocations: list[tuple[float, int, int]] = field(default_factory=list)
    timer_flushes: int = 0
    skipped: int = 0

    def reach(self) -> tuple[int, int]:
        """``(lowest IOVA mapped, distinct granules mapped)`` over the whole run (:func:`reach`)."""
        return reach(((e.args["iova"], e.args["size"]) for e in self.events if e.kind == "iommu_map_calls"),
                     self.system.granule)

    def export(self, path: str | os.PathLike, *, iotlb_events: bool = False) -> int:
        """Write the run as a capture (the system's kernel's forms, each line at its event's time);
        returns the lines written."""
        return export_ftrace(self.events, path, kernel=self.system.kernel, iotlb_events=iotlb_events,
                             start=0.0, step_us=1, times=self.times)


def rerun_capture(cap: FtraceCapture, *, strict: bool, system: SystemConfig | None = None,
                  hz: int | None = None) -> Rerun:
    """Redo the requests of ``cap`` (one CPU's worth per traced CPU) in a ``strict`` or lazy domain of
    ``system`` (default: :func:`infer_system` of the capture; ``hz``: its ``CONFIG_HZ`` instead), at
    their traced times (module doc)."""
    if not isinstance(strict, bool):
        raise ValueError(f"strict {strict!r} must be True or False")
    system = system or infer_system(cap, hz=hz)
    if hz is not None and system.hz != hz:
        system = dataclasses.replace(system, hz=hz)
    ncpus = cap.nr_cpus or (max(cap.cpus) + 1 if cap.cpus else 1)
    log = EventLog(keep=True)
    dom = system.make_domain(strict=strict, ncpus=ncpus, log=log)
    dev = Device(name="0000:00:01.0", dma_mask=DMA_BIT_MASK(64), is_pci=True)
    run = Rerun(system, strict, log.events, [])
    live: dict[int, tuple] = {}
    if cap.lines:
        dom.advance_time(max(0.0, cap.lines[0].timestamp * 1000))

    def at(ts: float, cpu: int) -> None:
        if dom.advance_time(max(0.0, ts * 1000 - dom.now_ms), cpu=cpu):
            run.timer_flushes += 1

    for st in reconstruct(cap, system.granule):
        kind = st[0]
        if kind == "alloc":
            a = st[1]
            at(a.timestamp, a.cpu)
            f = a.closer.fields if a.closer is not None else {}
            got = 0
            if a.kind in ("dma_map_phys", "dma_map_page"):
                d = DMA_DIRECTIONS[f["dir"]]
                got = dom.dma_map_page(dev, f["phys_addr"], f["size"], d, cpu=a.cpu)
                live[a.base] = ("single", got, f["size"], d)
            elif a.kind == "dma_map_sg":
                sgl = sg_entries_from_lines(f["phys_addrs"], a.maps, system.granule)
                d = DMA_DIRECTIONS[f["dir"]]
                if sgl is not None and dom.dma_map_sg(dev, sgl, d, cpu=a.cpu):
                    got = sgl[0].dma_address
                    live[a.base] = ("sg", sgl, d)
                else:
                    run.skipped += 1
            elif a.kind == "?" and a.freed_at is not None:     # the two-step API
                state = DmaIovaState()
                if dom.dma_iova_try_alloc(dev, state, a.maps[0].fields["paddr"], a.size, cpu=a.cpu):
                    for m in a.maps:
                        dom.dma_iova_link(dev, state, m.fields["paddr"], m.fields["iova"] - a.base,
                                          m.fields["size"], cpu=a.cpu)
                    dom.dma_iova_sync(dev, state, 0, a.size, cpu=a.cpu)
                    got = state.addr
                    live[a.base] = ("iova", state)
            elif a.kind == "dma_alloc":
                got = dom.dma_alloc_coherent(dev, a.size, cpu=a.cpu)[1]
            else:
                run.skipped += 1
            if got:
                run.allocations.append((a.timestamp, got, a.size))
        elif kind == "free":
            a, cpu, ts = st[1], st[2], st[5]
            at(ts, cpu)
            how = live.pop(a.base, None)
            if how is None:
                continue
            if how[0] == "single":
                dom.dma_unmap_page(dev, how[1], how[2], how[3], cpu=cpu)
            elif how[0] == "sg":
                dom.dma_unmap_sg(dev, how[1], how[2], cpu=cpu)
            else:
                dom.dma_iova_destroy(dev, how[1], a.size, cpu=cpu)
        run.times.extend([dom.now_ms / 1000] * (len(log.events) - len(run.times)))
    return run
