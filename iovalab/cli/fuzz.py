"""``python -m iovalab fuzz``: seeded random operation sequences over the IOVA allocator
(:class:`~iovalab.kernel.iova.IovaDomain`) and the DMA layer (:class:`~iovalab.kernel.dma_iommu.DmaDomain`,
classic ``dma_map_*`` and the two-step ``dma_iova_*`` calls) with invariants checked after every call.

No kernel analogue: a test harness. Every configuration is covered (each IOMMU preset, strict and
lazy, 1 and 3 CPUs, swiotlb on (an untrusted device bounces) and off). Valid calls and deliberately bad
ones (wrong CPU, size, address or type; unmapping what is not mapped) are mixed. Before every call the
whole state is snapshotted; a call that raises must raise ``ValueError`` or
:class:`~iovalab.kernel.units.DmaError` and leave the state exactly as it was (the one exception is
the kernel's own ``out_unmap`` path of a failed swiotlb ``dma_iova_link``, after which swiotlb's area
search index has moved and ``DMA_IOVA_USE_SWIOTLB`` stays set, as in the kernel). After every call:

* the IOVA tree is sorted and disjoint, and its nodes are exactly the live IOVAs, the cached pfns and
  the flush-queued pfns (plus reservations), each once;
* every live mapping translates to its physical address (or to its swiotlb slot, whose original
  address is the buffer), and a mapped scatterlist's DMA lengths add up to its segment lengths;
* no PTE lies outside a live IOVA; every swiotlb mapping belongs to a live mapping;
* counters agree: ``iova_allocs - iova_frees`` = live IOVAs + queued frees, flush counts match.

The run is bounded by an operation count, never by wall-clock time, so results repeat for a seed.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from typing import Any

from iovalab.kernel.device import DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE, Device
from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState, ScatterEntry
from iovalab.kernel.dma_iova import DMA_IOVA_USE_SWIOTLB, dma_iova_range, dma_iova_size
from iovalab.kernel.iommu import PRESETS
from iovalab.kernel.iova import IovaDomain
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.units import DMA_BIT_MASK, DMA_MAPPING_ERROR, MAX_MAP_SIZE, DmaError

__all__ = ["FuzzFailure", "FuzzResult", "configs", "fuzz_dma", "fuzz_iova", "run", "cli"]

_DIRS = (DMA_BIDIRECTIONAL, DMA_TO_DEVICE, DMA_FROM_DEVICE)


class FuzzFailure(AssertionError):
    """An invariant broke or a call raised something other than ValueError/DmaError."""


@dataclass
class FuzzResult:
    ops: int = 0
    raised: int = 0
    failures: list[str] = field(default_factory=list)
    configs: int = 0


def configs() -> list[dict]:
    """Every DMA configuration the fuzzer covers: preset x strict/lazy x 1/3 CPUs x swiotlb off/on."""
    return [dict(preset=p, strict=s, ncpus=n, swiotlb=b)
            for p in PRESETS for s in (True, False) for n in (1, 3) for b in (False, True)]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise FuzzFailure(msg)


# ---------------------------------------------------------------------------- IovaDomain
def fuzz_iova(seed: int, ops: int, *, ncpus: int = 2, granule: int = 0x1000) -> FuzzResult:
    """Random ``alloc_iova``/``alloc_iova_fast``/``free_iova``/``free_iova_fast``/cache drains and bad
    calls on one :class:`IovaDomain` with a few reservations."""
    rnd = random.Random(seed)
    d = IovaDomain(granule, rnd.choice([1, 1, 0x10]), ncpus=ncpus)
    bad_d: Any = d   # the bad calls pass wrong types on purpose
    for _ in range(rnd.randint(0, 3)):
        lo = rnd.randrange(0x10, 0x1000)
        d.reserve_iova(lo, lo + rnd.randrange(0, 0x40))
    reserved = {n.pfn_lo for n in d.nodes()}
    fast: dict[int, int] = {}   # pfn -> size asked (freed with free_iova_fast)
    slow: set[int] = set()      # pfns from alloc_iova (freed with free_iova)
    limits = [0x3FF, 0xFFF, 0xFFFFF, 0xFFFFFFF, 0]
    res = FuzzResult(configs=1)
    for i in range(ops):
        cpu = rnd.randrange(ncpus)
        r = rnd.random()
        bad = r < 0.08
        if bad:
            calls: list[Any] = [
                lambda: bad_d.alloc_iova_fast(rnd.choice([0, -1, None, 1.5]), 0xFFFF, True, 0),
                lambda: bad_d.alloc_iova_fast(1, rnd.choice([-1, None, "x", 1 << 64]), True, 0),
                lambda: bad_d.alloc_iova_fast(1, 0xFFFF, True, rnd.choice([ncpus, -1, None, 0.5])),
                lambda: bad_d.free_iova_fast(rnd.randrange(1 << 40, 1 << 41), 1, 0),
                lambda: bad_d.free_iova(rnd.choice([None, 1 << 40, 0])),
                lambda: bad_d.free_cpu_cached_iovas(rnd.choice([ncpus, -1, 1.5])),
                lambda: bad_d.iova_depot_work_func(rnd.choice([6, -1, None])),
                lambda: d.reserve_iova(5, 4),
            ]
            call = rnd.choice(calls)
        before = d.snapshot()
        try:
            if bad:
                call()
                raise FuzzFailure(f"op {i}: a bad call did not raise")
            if r < 0.45:
                size = rnd.choice([1, 1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 64, rnd.randrange(1, 600)])
                pfn = d.alloc_iova_fast(size, rnd.choice(limits), rnd.random() < 0.8, cpu)
                if pfn:
                    _check(pfn not in fast and pfn not in slow, f"op {i}: pfn {pfn:#x} handed out twice")
                    fast[pfn] = size
            elif r < 0.55:
                size = rnd.randrange(1, 200)
                node = d.alloc_iova(size, rnd.choice(limits), rnd.random() < 0.5, cpu)
                if node is not None:
                    _check(node.size == size, f"op {i}: alloc_iova size {node.size} != {size}")
                    slow.add(node.pfn_lo)
            elif r < 0.85 and fast:
                pfn = rnd.choice(list(fast))
                d.free_iova_fast(pfn, fast.pop(pfn), cpu)
            elif r < 0.93 and slow:
                pfn = rnd.choice(list(slow))
                slow.discard(pfn)
                node = d.find_iova(pfn)
                _check(node is not None, f"op {i}: live pfn {pfn:#x} has no node")
                d.free_iova(pfn + rnd.randrange(node.size if node is not None else 1), cpu)
            elif r < 0.96:
                d.free_cpu_cached_iovas(cpu)
            elif r < 0.98:
                d.run_depot_work()
            else:
                d.free_global_cached_iovas()
        except (ValueError, DmaError):
            res.raised += 1
            _check(d.snapshot() == before, f"op {i}: state changed by a call that raised")
        res.ops += 1
        _iova_invariants(d, set(fast) | slow | reserved, i)
    return res


def _iova_invariants(d: IovaDomain, live: set[int], i: int, queued: tuple[int, ...] = ()) -> None:
    nodes = d.nodes()
    for a, b in zip(nodes, nodes[1:], strict=False):
        _check(a.pfn_lo <= a.pfn_hi < b.pfn_lo, f"op {i}: IOVA tree overlaps: {a} {b}")
    cached = [p for p, where in d.cached_pfns().items() for _ in where]
    every = sorted(list(live) + cached + list(queued))
    _check(every == sorted(n.pfn_lo for n in nodes),
           f"op {i}: tree nodes != live + cached + queued ({len(nodes)} nodes, {len(live)} live, "
           f"{len(cached)} cached, {len(queued)} queued)")


# ---------------------------------------------------------------------------- DmaDomain
@dataclass
class _Live:
    kind: str                 # page | sg | state
    dev: Device
    addr: int = 0
    size: int = 0
    phys: int = 0
    dir: int = DMA_BIDIRECTIONAL
    sgl: list = field(default_factory=list)
    state: Any = None   # DmaIovaState for kind 'state'
    linked: list = field(default_factory=list)   # [(offset, size, phys)]


def fuzz_dma(seed: int, ops: int, *, preset: str = "intel-vtd", strict: bool = True, ncpus: int = 1,
             swiotlb: bool = False) -> FuzzResult:
    """Random classic and two-step calls on one :class:`DmaDomain` (see the module doc)."""
    rnd = random.Random(seed)
    pool = SwiotlbPool(0x8000000, 0x40000) if swiotlb else None   # 128 slots: exhaustion happens
    dom = DmaDomain(preset, strict=strict, ncpus=ncpus, swiotlb=pool, reserve_msi=rnd.random() < 0.5)
    g = dom.granule
    devs = [Device(name="0000:01:00.0"), Device.legacy_32bit()]
    if swiotlb:
        devs.append(Device(name="0000:05:00.0", untrusted=True, min_align_mask=0))
    devs.append(Device(name="0000:07:00.0", dma_mask=DMA_BIT_MASK(rnd.choice([12, 20, 40]))))
    reserved = [n.pfn_lo for n in dom.iovad.nodes()]
    live: list[_Live] = []
    res = FuzzResult(configs=1)

    def rphys(size: int) -> int:
        base = rnd.randrange(0x1000, 0x400000) * g
        return base + (0 if rnd.random() < 0.4 else rnd.randrange(g))

    def rsize() -> int:
        return rnd.choice([1, 0x200, g - 1, g, g + 1, 2 * g, 3 * g + 7, rnd.randrange(1, 0x40000)])

    def whole() -> tuple:
        return (dom.snapshot(), tuple((d.pci_32bit_workaround, d.dma_skip_sync) for d in devs),
                tuple((x.state.addr, x.state.size_field) for x in live if x.state is not None))

    for i in range(ops):
        cpu = rnd.randrange(ncpus)
        dev = rnd.choice(devs)
        dir = rnd.choice(_DIRS)
        r = rnd.random()
        before = whole()
        relaxed = False
        try:
            if r < 0.07:
                _bad_call(rnd, dom, devs, live, ncpus, g)
                raise FuzzFailure(f"op {i}: a bad call did not raise")
            if r < 0.30 and len(live) < 24:
                size = rsize()
                phys = rphys(size)
                addr = dom.dma_map_page(dev, phys, size, dir, 0, cpu)
                if addr != DMA_MAPPING_ERROR:
                    live.append(_Live("page", dev, addr, size, phys, dir))
            elif r < 0.40 and len(live) < 24:
                sgl = [ScatterEntry(rphys(0), rnd.choice([0x200, g, 2 * g, rnd.randrange(1, 3 * g)]))
                       for _ in range(rnd.randint(1, 4))]
                if dom.dma_map_sg(dev, sgl, dir, 0, cpu):
                    live.append(_Live("sg", dev, sgl=sgl, dir=dir))
            elif r < 0.50 and len(live) < 24:
                st = DmaIovaState()
                size = rsize()
                phys = rphys(size)
                if dom.dma_iova_try_alloc(dev, st, phys, size, cpu):
                    live.append(_Live("state", dev, size=size, phys=phys, dir=dir, state=st))
            elif r < 0.60 and live:
                x = rnd.choice(live)
                if x.kind == "state" and not x.linked:
                    relaxed = True
                    if x.phys % g == 0 and x.size > g and rnd.random() < 0.5:
                        dom.dma_iova_link(x.dev, x.state, x.phys, 0, g, x.dir, 0, cpu)
                        x.linked.append((0, g, x.phys))
                        before = whole()   # one snapshot per call: the next call starts from here
                        dom.dma_iova_link(x.dev, x.state, x.phys + g, g, x.size - g, x.dir, 0, cpu)
                        x.linked.append((g, x.size - g, x.phys + g))
                    else:
                        dom.dma_iova_link(x.dev, x.state, x.phys, 0, x.size, x.dir, 0, cpu)
                        x.linked.append((0, x.size, x.phys))
                    dom.dma_iova_sync(x.dev, x.state, 0, x.size, cpu)
            elif r < 0.88 and live:
                x = rnd.choice(live)
                if x.kind == "page":
                    dom.dma_unmap_page(x.dev, x.addr, x.size, x.dir, 0, cpu)
                    live.remove(x)
                elif x.kind == "sg":
                    dom.dma_unmap_sg(x.dev, x.sgl, x.dir, 0, cpu)
                    live.remove(x)
                elif x.linked and rnd.random() < 0.5:
                    while x.linked:
                        off, n, _ = x.linked[0]
                        dom.dma_iova_unlink(x.dev, x.state, off, n, x.dir, 0, cpu)
                        x.linked.pop(0)
                        before = whole()
                    if rnd.random() < 0.5:
                        dom.dma_iova_free(x.dev, x.state, cpu)
                        live.remove(x)
                else:
                    dom.dma_iova_destroy(x.dev, x.state, x.size if x.linked else 0, x.dir, 0, cpu)
                    live.remove(x)
            elif r < 0.93:
                dom.advance_time(rnd.choice([0, 1, 5, 10, 20, 1000]), cpu)
            elif r < 0.96:
                dom.iovad.run_depot_work()
            elif r < 0.98:
                dom.iovad.free_cpu_cached_iovas(cpu)
            else:
                # an unmap of an IOVA nobody mapped: WARN + -EINVAL, nothing changes
                dom.dma_unmap_page(dev, rnd.randrange(1, 1 << 32) * g, g, dir, 0, cpu)
        except (ValueError, DmaError) as e:
            res.raised += 1
            after = whole()
            if relaxed and isinstance(e, DmaError):   # out_unmap of a failed swiotlb link
                after, before = _relax(after), _relax(before)
            _check(after == before, f"op {i}: state changed by a call that raised {type(e).__name__}: {e}")
        res.ops += 1
        _dma_invariants(dom, live, reserved, i)
    return res


def _relax(whole: tuple) -> tuple:
    """What a failed swiotlb ``dma_iova_link`` may change, as the kernel does: swiotlb's area search
    index, ``dev->dma_skip_sync`` (cleared by ``swiotlb_tbl_map_single``) and ``DMA_IOVA_USE_SWIOTLB``."""
    snap, devs, states = whole
    snap = snap[:-1] + ((snap[-1][:4] + snap[-1][5:]) if snap[-1] is not None else None,)
    return (snap, tuple(w for w, _skip in devs), tuple((a, s & ~DMA_IOVA_USE_SWIOTLB) for a, s in states))


def _bad_call(rnd: random.Random, dom_: DmaDomain, devs: list, live: list, ncpus: int, g: int) -> None:
    dom: Any = dom_   # wrong types on purpose
    dev = rnd.choice(devs)
    bad_cpu = rnd.choice([ncpus, -1, None, 1.5, "0"])
    bad_size = rnd.choice([0, -1, None, 2.0, MAX_MAP_SIZE + 1])
    bad_phys: Any = rnd.choice([-g, 1 << 64, None, "0x1000"])
    calls = [
        lambda: dom.dma_map_page(dev, 0x1000000, g, DMA_BIDIRECTIONAL, 0, bad_cpu),
        lambda: dom.dma_map_page(dev, 0x1000000, bad_size),
        lambda: dom.dma_map_page(dev, bad_phys, g),
        lambda: dom.dma_map_sg(dev, [ScatterEntry(0x1000000, g), ScatterEntry(bad_phys, g)]),
        lambda: dom.dma_iova_try_alloc(dev, DmaIovaState(), 0, g, bad_cpu),
        lambda: dom.advance_time(rnd.choice([-1, float("nan"), float("inf"), None]), 0),
        lambda: dom.advance_time(1, bad_cpu),
        lambda: dom.dma_alloc_coherent(dev, bad_size),
        lambda: dom.dma_map_page(dev, 0x1000000, g, 7),   # not a DMA direction
    ]
    pages = [x for x in live if x.kind == "page"]
    if pages:
        x = rnd.choice(pages)
        calls.append(lambda: dom.dma_unmap_page(x.dev, x.addr, x.size, x.dir, 0, bad_cpu))
    states = [x for x in live if x.kind == "state"]
    if states:
        x = rnd.choice(states)
        calls.append(lambda: dom.dma_iova_link(x.dev, x.state, bad_phys, 0, g))
        calls.append(lambda: dom.dma_iova_destroy(x.dev, x.state, x.size, x.dir, 0, bad_cpu))
    rnd.choice(calls)()


def _dma_invariants(dom: DmaDomain, live: list[_Live], reserved: list[int], i: int) -> None:
    g, shift = dom.granule, dom.iovad.shift
    iommu, pool = dom.iommu, dom.swiotlb
    live_pfns: list[int] = []
    tlbs: set[int] = set()

    def translates(addr: int, phys: int, size: int, what: str) -> None:
        for a, want in ((addr, phys), (addr + size - 1, phys + size - 1)):   # first and last byte
            p = iommu.iommu_iova_to_phys(a)
            if p == want:
                continue
            # the live bounce mapping holding p (a sync or a tail may point inside one)
            hits = [(t, m) for t, m in (pool.mappings.items() if pool is not None else ())
                    if t <= p < t + m.mapping_size]
            t, m = hits[0] if hits else (p, None)
            _check(m is not None and m.orig_addr + (p - t) == want,
                   f"op {i}: {what} IOVA {a:#x} translates to {p:#x}, not {want:#x} (nor its bounce slot)")
            tlbs.add(t)

    for x in live:
        if x.kind == "page":
            live_pfns.append(x.addr >> shift)
            translates(x.addr, x.phys, x.size, "dma_map_page")
        elif x.kind == "sg":
            outs = [s for s in x.sgl if s.dma_length]
            _check(sum(s.dma_length for s in outs) == sum(s.length for s in x.sgl),
                   f"op {i}: dma_map_sg lengths {[hex(s.dma_length) for s in x.sgl]} do not add up to "
                   f"{[hex(s.length) for s in x.sgl]}")
            if x.dev.untrusted:
                for s in x.sgl:
                    live_pfns.append(s.dma_address >> shift)
                    translates(s.dma_address, s.phys, s.length, "dma_map_sg")
            else:
                live_pfns.append(x.sgl[0].dma_address >> shift)
                translates(x.sgl[0].dma_address, x.sgl[0].phys, 1, "dma_map_sg")
                for s in outs:
                    _check(iommu.iommu_iova_to_phys(s.dma_address) != 0,
                           f"op {i}: dma_map_sg segment {s.dma_address:#x} is not mapped")
        else:
            base, length = dma_iova_range(x.state, dom.granule)
            _check(dma_iova_size(x.state) == x.size, f"op {i}: state size changed: {x.state}")
            live_pfns.append(base >> shift)
            for off, n, phys in x.linked:
                translates(x.state.addr + off, phys, n, "dma_iova_link")
    queued = [e.iova_pfn for fq in dom.fqs for e in fq.entries]
    _iova_invariants(dom.iovad, set(live_pfns) | set(reserved), i, tuple(queued))
    _check(len(set(live_pfns)) == len(live_pfns), f"op {i}: two live mappings share an IOVA")
    # no PTE outside a live IOVA
    limit = 1 << 16
    mapped = iommu.pgtable.find_mapped(0, 1 << iommu.pgtable.ias, limit)
    _check(len(mapped) < limit, f"op {i}: more than {limit} mapped granules")
    live_set = set(live_pfns)
    for a in mapped:
        node = dom.iovad.find_iova(a >> shift)
        _check(node is not None and node.pfn_lo in live_set,
               f"op {i}: PTE at IOVA {a:#x} outside any live IOVA (node {node})")
    # swiotlb: every bounce slot belongs to a live mapping; counts agree
    if pool is not None:
        _check(set(pool.mappings) == tlbs, f"op {i}: swiotlb mappings {sorted(map(hex, pool.mappings))} != "
               f"live bounces {sorted(map(hex, tlbs))}")
        _check(pool.used == sum(m.nslots for m in pool.mappings.values()), f"op {i}: swiotlb used count")
    c = dom.log.counters()
    _check(c.iova_allocs - c.iova_frees == len(live_pfns) + len(queued),
           f"op {i}: iova_allocs {c.iova_allocs} - iova_frees {c.iova_frees} != live {len(live_pfns)} "
           f"+ queued {len(queued)}")
    _check(dom.fq_flush_start_cnt == dom.fq_flush_finish_cnt, f"op {i}: flush counts differ")
    _check(all(e.counter <= dom.fq_flush_start_cnt for fq in dom.fqs for e in fq.entries),
           f"op {i}: flush-queue entry from the future")
    _ = g


# ---------------------------------------------------------------------------- driver
def run(ops: int, seed: int = 1, *, iova_share: float = 0.2) -> FuzzResult:
    """``ops`` operations in all: ``iova_share`` of them on IovaDomain, the rest spread over every
    DMA configuration (:func:`configs`). Failures are collected, not raised."""
    total = FuzzResult()
    cfgs = configs()
    n_iova = max(1, int(ops * iova_share))
    jobs: list[tuple[str, dict, int]] = [("iova", {}, n_iova)]
    per = max(1, -(-(ops - n_iova) // len(cfgs)))   # rounded up: at least `ops` in all
    jobs += [("dma", c, per) for c in cfgs]
    for k, (what, cfg, n) in enumerate(jobs):
        s = seed * 1000 + k
        try:
            r = fuzz_iova(s, n) if what == "iova" else fuzz_dma(s, n, **cfg)
        except FuzzFailure as e:
            total.failures.append(f"{what} {cfg} seed {s}: {e}")
            continue
        except Exception as e:   # anything but ValueError/DmaError escaping is a finding too
            total.failures.append(f"{what} {cfg} seed {s}: {type(e).__name__}: {e}")
            continue
        total.ops += r.ops
        total.raised += r.raised
        total.configs += 1
    return total


def cli(args: argparse.Namespace) -> int:
    if args.ops < 1 or args.ops > 10_000_000:
        print(f"error: --ops {args.ops} must be in 1..10000000", file=sys.stderr)
        return 2
    res = run(args.ops, args.seed)
    print(f"fuzz: {res.ops} operations over {res.configs} configurations (seed {args.seed}), "
          f"{res.raised} raised and left the state unchanged, {len(res.failures)} failures")
    for f in res.failures[:20]:
        print(f"  FAIL {f}")
    return 0 if not res.failures else 1
