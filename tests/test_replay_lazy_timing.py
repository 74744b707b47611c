"""A lazy capture without flush lines, with a real capture's timing: the real Linux 7.3.4 capture's
requests (paths, sizes, physical addresses, timestamps) redone in a lazy (flush-queue) domain of the
simulator, exported without IOTLB flush lines at the times they were traced. ``replay-ftrace`` must
infer lazy from the capture alone (IOVA reuse) and place the flush-queue timer from the timestamps
so that every allocation and line matches."""

from __future__ import annotations

import pytest

from iovalab.kernel.device import DMA_BIT_MASK, Device
from iovalab.kernel.dma_iova import DmaIovaState
from iovalab.kernel.events import EventLog
from iovalab.resources import data_file
from iovalab.trace.ftrace import DMA_DIRECTIONS, parse_ftrace
from iovalab.trace.ftrace_write import export_ftrace
from iovalab.trace.replay import replay_file
from iovalab.trace.steps import reconstruct
from iovalab.trace.system import infer_system


def _lazy_rerun(path, hz: int):
    """The capture's requests redone in a lazy domain, time advanced to each step's timestamp
    (``advance_time`` runs the flush-queue timer when it is due): the events and their times."""
    cap = parse_ftrace(path)
    system = infer_system(cap)
    system.hz = hz
    log = EventLog(keep=True)
    dom = system.make_domain(strict=False, ncpus=1, log=log)
    dev = Device(name="0000:00:01.0", dma_mask=DMA_BIT_MASK(64), is_pci=True)
    times: list[float] = []
    live: dict[int, tuple] = {}
    t0 = cap.lines[0].timestamp
    dom.advance_time(t0 * 1000)

    def at(ts: float) -> None:
        dom.advance_time(max(0.0, ts * 1000 - dom.now_ms))

    for st in reconstruct(cap, system.granule):
        if st[0] == "alloc":
            a = st[1]
            at(a.timestamp)
            if a.kind == "dma_map_phys":
                f = a.closer.fields
                d = DMA_DIRECTIONS[f["dir"]]
                live[a.base] = ("single", dom.dma_map_page(dev, f["phys_addr"], f["size"], d), f["size"], d)
            elif a.kind == "?" and a.freed_at is not None:     # the two-step API (blk_rq_dma_map_iter_start)
                state = DmaIovaState()
                assert dom.dma_iova_try_alloc(dev, state, a.maps[0].fields["paddr"], a.size)
                for m in a.maps:
                    dom.dma_iova_link(dev, state, m.fields["paddr"], m.fields["iova"] - a.base, m.fields["size"])
                dom.dma_iova_sync(dev, state, 0, a.size)
                live[a.base] = ("iova", state)
            elif a.kind == "dma_alloc":
                dom.dma_alloc_coherent(dev, a.size)
        elif st[0] == "free":
            a, ts = st[1], st[5]
            at(ts)
            how = live.pop(a.base, None)
            if how is not None and how[0] == "single":
                dom.dma_unmap_page(dev, how[1], how[2], how[3])
            elif how is not None:
                dom.dma_iova_destroy(dev, how[1], a.size)
        times.extend([dom.now_ms / 1000] * (len(log.events) - len(times)))
    return system, log.events, times


@pytest.mark.parametrize("hz", [250, 1000])
def test_lazy_capture_with_real_timing_replays_exactly(tmp_path, hz):
    system, events, times = _lazy_rerun(data_file("real", "v734-strict-smp1.trace"), hz)
    out = tmp_path / "lazy.trace"
    export_ftrace(events, out, kernel="7.3", iotlb_events=False, start=0.0, step_us=1, times=times)
    res = replay_file(out, overrides={"hz": hz})
    assert res.mode == "lazy" and res.passes == 1 and "lazy: no IOTLB flush line, but only" in res.mode_inferred
    assert res.timer_flushes > 10                      # the flush-queue timer ran, placed from the timestamps
    assert res.allocations > 1000 and res.mismatched == 0, res.mismatches[:3]
    assert res.lines is not None and res.lines.differ == 0, res.lines.mismatches[:3]
    # the wrong HZ places the timer elsewhere: some allocations differ (the timestamps matter)
    wrong = replay_file(out, overrides={"hz": 1250 - hz}, lines=False)
    assert wrong.mismatched > 0
