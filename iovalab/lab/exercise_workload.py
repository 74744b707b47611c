"""Exercise kinds about whole workloads under a mapping path (``dma_map_page``, ``dma_map_sg``, the
two-step ``dma_iova_*`` API): IOTLB invalidations, ``iommu:map`` events and DMA API calls counted from
the event log, and when an unmapped IOVA goes back to the allocator, strict vs lazy (the flush queue of
``drivers/iommu/dma-iommu.c``).

No kernel analogue: generators, questions and solvers; every answer is read from the simulator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from iovalab.kernel.units import hx
from iovalab.lab.derivation import fresh_domain, make_device
from iovalab.lab.exercise_base import Kind, event_lines
from iovalab.lab.review import path_counts

__all__ = ["KINDS"]


def _gen_workload(rng: random.Random, lazy_ok: bool = True) -> dict:
    reqs = []
    big = rng.random() < 0.3
    r = rng.randrange(30, 45) if big else rng.randrange(1, 5)
    for _ in range(r):
        k = rng.randrange(2, 9)
        segs: list[list[int]] = []
        for _ in range(k):
            if segs and rng.random() < 0.3:
                segs.append([segs[-1][0] + segs[-1][1], 0x1000])
            else:
                segs.append([rng.randrange(0x10000, 0x400000) * 0x1000, 0x1000])
        reqs.append(segs)
    return dict(path=rng.choice(["page", "sg", "iova"]), strict=(not lazy_ok) or not big or rng.random() < 0.3,
                requests=reqs)


def _wl_text(p: dict) -> str:
    segs = sum(len(r) for r in p["requests"])
    contiguous = sum(1 for r in p["requests"] for a, b in zip(r, r[1:], strict=False) if a[0] + a[1] == b[0])
    desc = {"page": "dma_map_page per segment, then dma_unmap_page per segment",
            "sg": "one dma_map_sg of the whole list, then one dma_unmap_sg",
            "iova": "dma_iova_try_alloc, dma_iova_link per segment, one dma_iova_sync, then one "
                    "dma_iova_destroy"}
    mode = "strict" if p["strict"] else "lazy (flush queue: 255 usable slots per CPU, no time passes)"
    reqs = "; ".join("[" + ", ".join(hx(a) for a, _ in r) + "]" for r in p["requests"][:6])
    more = f" ... ({len(p['requests'])} requests)" if len(p["requests"]) > 6 else ""
    return (f"A fresh {mode} VT-d domain (4 KiB granule, no caching mode) and an NVMe device handle "
            f"{len(p['requests'])} request(s), {segs} segment(s) of 4 KiB in total ({contiguous} of them "
            f"physically contiguous with the previous one); each request is mapped and unmapped with "
            f"{desc[p['path']]}. Segment addresses per request: {reqs}{more}.")


def _solve_counter(counter: str) -> Callable[[dict], tuple[Any, list[str]]]:
    def solve(p: dict) -> tuple[Any, list[str]]:
        reqs = [[tuple(s) for s in r] for r in p["requests"]]
        res = path_counts(reqs, paths=(p["path"],), strict=p["strict"])
        c = res[p["path"]]["counters"]
        lines = [f"path_counts(..., paths=({p['path']!r},), strict={p['strict']}) on the simulator:",
                 "counters: " + ", ".join(f"{k}={v}" for k, v in c.as_dict().items()),
                 "driver callbacks: " + ", ".join(f"{k}={v}" for k, v in res[p["path"]]["indirect"].items())]
        return getattr(c, counter), lines
    return solve


def _q_inval(p: dict) -> str:
    return (_wl_text(p) + " How many unmap-side IOTLB invalidations (ranged iommu_iotlb_sync flushes plus "
            "flush_iotlb_all calls) happen in total? Answer a decimal count.")


def _q_mapcalls(p: dict) -> str:
    return (_wl_text(p) + " How many iommu:map trace events (iommu_map_nosync calls) happen in total? "
            "Answer a decimal count.")


def _q_apicalls(p: dict) -> str:
    return (_wl_text(p) + " How many driver-visible DMA API calls (map, unmap, try_alloc, link, sync, "
            "destroy ...) does the driver make in total? Answer a decimal count.")


def _gen_lazy(rng: random.Random) -> dict:
    r = rng.random()
    if r < 0.15:
        n = rng.randrange(256, 300)
        return dict(strict=False, n=n, unmap_times=[0] * n, target=rng.choice([rng.randrange(1, 256),
                                                                                 rng.randrange(256, n + 1)]))
    n = rng.randrange(1, 5)
    times = sorted(rng.randrange(0, 30) for _ in range(n))
    return dict(strict=r < 0.35, n=n, unmap_times=times, target=rng.randrange(1, n + 1))


def _q_lazy(p: dict) -> str:
    mode = ("strict (IOMMU_DOMAIN_DMA)" if p["strict"] else
            "lazy (IOMMU_DOMAIN_DMA_FQ: one per-CPU flush queue of 256 slots, 255 usable; a 10 ms timer, "
            "CONFIG_HZ=1000: mod_timer(jiffies + 10), which the timer wheel runs one tick after that)")
    if len(set(p["unmap_times"])) == 1 and p["n"] > 5:
        when = f"all {p['n']} are unmapped one after another at t={p['unmap_times'][0]} ms"
    else:
        when = "; ".join(f"buffer {i + 1} is unmapped at t={t} ms" for i, t in enumerate(p["unmap_times"]))
    return (f"A fresh {mode} VT-d domain, one CPU. At t=0 ms a device maps {p['n']} one-page buffers with "
            f"dma_map_page (buffer 1 first); then {when}. At what time t (whole ms) is buffer "
            f"{p['target']}'s IOVA handed back to the allocator (free_iova_fast), so that a new mapping could "
            "reuse it? Answer a decimal number of ms.")


def _solve_lazy(p: dict) -> tuple[Any, list[str]]:
    dom = fresh_domain(0x1000, strict=p["strict"])
    dev = make_device()
    addrs = [dom.dma_map_page(dev, (0x100000 + i) * 0x1000, 0x1000) for i in range(p["n"])]
    target_pfn = addrs[p["target"] - 1] >> 12
    lines = [f"mapped {p['n']} buffers at t=0: buffer {p['target']} has IOVA {hx(addrs[p['target'] - 1])}"]
    order = sorted(range(p["n"]), key=lambda i: (p["unmap_times"][i], i))
    t = 0
    k = 0
    freed_at = None
    while freed_at is None and t <= max(p["unmap_times"]) + 100:
        while k < len(order) and p["unmap_times"][order[k]] == t:
            i = order[k]
            mark = dom.log.mark()
            dom.dma_unmap_page(dev, addrs[i], 0x1000)
            evs = dom.log.since(mark)
            if p["n"] <= 10 or i + 1 == p["target"] or any(e.func == "fq_flush_iotlb" for e in evs):
                lines.append(f"t={t} ms: dma_unmap_page(buffer {i + 1}):")
                lines += [x for x in event_lines(evs, ("dma",)) if "fq_" in x or "queue_iova" in x] or \
                    ["    (unmap, IOTLB sync, free_iova_fast)" if p["strict"] else "    queue_iova"]
            if any(e.func == "free_iova_fast" and e.args.get("pfn") == target_pfn for e in evs):
                freed_at = t
            k += 1
        if freed_at is not None:
            break
        mark = dom.log.mark()
        dom.advance_time(1)
        t += 1
        evs = dom.log.since(mark)
        if any(e.func == "fq_flush_iotlb" for e in evs):
            lines.append(f"t={t} ms: flush-queue timer fires: flush_iotlb_all, then free every entry queued "
                         "before that flush started   [drivers/iommu/dma-iommu.c fq_flush_timeout]")
        if any(e.func == "free_iova_fast" and e.args.get("pfn") == target_pfn for e in evs):
            freed_at = t
    lines.append(f"buffer {p['target']}'s IOVA (pfn {hx(target_pfn)}) reaches free_iova_fast at "
                 f"t={freed_at} ms")
    return freed_at, lines


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("invalidations", "IOTLB invalidations of a workload", "int", _gen_workload, _q_inval,
         _solve_counter("iotlb_invalidations")),
    Kind("map_calls", "iommu:map events of a workload", "int", lambda r: _gen_workload(r, False), _q_mapcalls,
         _solve_counter("iommu_map_calls")),
    Kind("api_calls", "DMA API calls of a workload", "int", lambda r: _gen_workload(r, False), _q_apicalls,
         _solve_counter("dma_api_calls")),
    Kind("lazy_reuse", "When is an IOVA reusable", "int", _gen_lazy, _q_lazy, _solve_lazy),
]}
