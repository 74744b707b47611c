"""The players' state rebuilt from events (``lab.step_state._Replay`` / ``state_at``) equals the live
domain's state after every event-producing call of random workloads.

``_Replay`` reads only the event log; these tests drive ``DmaDomain`` through both DMA APIs (classic
``dma_map_page`` / ``dma_map_sg`` and the two-step ``dma_iova_*`` calls), strict and lazy, on several
IOMMU presets, with device accesses that fill (and go stale in) the IOTLB, and compare after every call:
the IOVA tree nodes and their status (in use / cached in an rcache / queued in a flush queue / reserved),
the leaf translations, the table pages, the IOTLB entries (stale or not), the flush-queue length and the
counters.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DMA_BIDIRECTIONAL, DmaDomain, DmaIovaState, ScatterEntry, dma_mapping_error
from iovalab.kernel.units import DMA_BIT_MASK
from iovalab.lab.step_state import _Replay, state_at

PRESETS = ("intel-vtd", "intel-vtd-caching-mode", "amd-v1", "smmuv3-4k", "smmuv3-16k", "smmuv3-64k")


# ------------------------------------------------------------------------------ the live state
def live_nodes(dom: DmaDomain) -> list[tuple[int, int, str]]:
    """``StepState.nodes`` computed from the live allocator, rcaches and flush queues."""
    g = dom.granule
    cached = set(dom.iovad.cached_pfns())
    queued = {e.iova_pfn for fq in dom.fqs for e in fq.entries}
    out = []
    for n in dom.iovad.nodes():
        status = ("reserved" if n.reserved else "cached" if n.pfn_lo in cached
                  else "queued" if n.pfn_lo in queued else "in use")
        out.append((n.pfn_lo * g, (n.pfn_hi + 1) * g, status))
    return sorted(out)


def runs(leaves) -> list[tuple[int, int, int]]:
    """``(iova, phys, size)`` leaves merged where contiguous in both spaces."""
    out: list[list[int]] = []
    for iova, phys, size in sorted(leaves):
        if out and out[-1][0] + out[-1][2] == iova and out[-1][1] + out[-1][2] == phys:
            out[-1][2] += size
        else:
            out.append([iova, phys, size])
    return [tuple(r) for r in out]


def compare(dom: DmaDomain, r: _Replay, where: str) -> None:
    s = r.state(len(dom.log), [], set(), [])
    pt = dom.iommu.pgtable
    assert s.nodes == live_nodes(dom), where
    live_leaves = [(iova, phys, size) for iova, phys, size, _ in pt.mapped_ranges(merge=False)]
    assert runs((b, phys, pg) for b, pg, _, phys in s.mapped) == runs(live_leaves), where
    if pt.driver != "amd":  # AMD v1 writes a large page as replicated PTEs: one leaf per replica live
        assert [(b, phys, pg) for b, pg, _, phys in s.mapped] == live_leaves, where
    assert s.tables == pt.table_page_count(), where
    live_tlb = sorted((base, size, phys) for base, phys, size, _ in dom.iommu.iotlb_entries())
    assert sorted((b, pg, phys) for b, pg, phys, _ in s.iotlb) == live_tlb, where
    live_stale = sorted((base, size, phys) for base, phys, size in dom.iommu.stale_iotlb_entries())
    assert sorted((b, pg, phys) for b, pg, phys, stale in s.iotlb if stale) == live_stale, where
    assert s.fq_pending == dom.fq_pending(), where
    assert s.counters == dom.log.counters(), where


# ------------------------------------------------------------------------------ the workloads
ops = st.lists(st.one_of(
    st.tuples(st.just("page"), st.integers(1, 5), st.integers(0, 3), st.booleans()),  # npages, offset, cpu1
    st.tuples(st.just("huge"), st.booleans()),                           # the preset's next page size up
    st.tuples(st.just("sg"), st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=4)),
    st.tuples(st.just("iova"), st.integers(1, 6), st.integers(1, 3), st.booleans()),  # npages, chunk, sync
    st.tuples(st.just("unlink"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("unmap"), st.integers(0, 99), st.booleans(), st.booleans()),  # cpu1, device DMA first
    st.tuples(st.just("access"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("stale"), st.integers(0, 99)),                     # the device touches a freed IOVA
    st.tuples(st.just("tick"),),
), max_size=24)


def run_workload(preset: str, strict: bool, seq) -> None:
    dom = DmaDomain(preset, strict=strict, ncpus=2)
    dev = Device(dma_mask=DMA_BIT_MASK(48), is_pci=True)
    g = dom.granule
    big = [1 << b for b in range(64) if dom.iommu.pgsize_bitmap >> b & 1][1]
    r = _Replay(g)
    seen = [0]
    live: list = []      # ["page", addr, size] | ["sg", sgl] | ["iova", state, npages, linked set, synced]
    gone: list[int] = []
    nxt = [0x40_0000_0000]

    def phys(npages: int, align: int = 0) -> int:
        a = max(align, g)
        p = (nxt[0] + a - 1) & ~(a - 1)
        nxt[0] = p + (npages + 1) * g
        return p

    def check(what: str) -> None:
        for e in dom.log.events[seen[0]:]:
            r.apply(e)
        seen[0] = len(dom.log)
        compare(dom, r, f"{preset} strict={strict} after {what}")

    check("init")
    for op in seq:
        kind = op[0]
        if kind == "page":
            _, n, off, cpu = op
            size = n * g - (off * 0x200 if n > 1 else 0)
            a = dom.dma_map_page(dev, phys(n) + off * 0x200, size, DMA_BIDIRECTIONAL, cpu=int(cpu))
            if not dma_mapping_error(a):
                live.append(["page", a, size])
        elif kind == "huge":
            a = dom.dma_map_page(dev, phys(big // g, big), big, DMA_BIDIRECTIONAL, cpu=int(op[1]))
            if not dma_mapping_error(a):
                live.append(["page", a, big])
        elif kind == "sg":
            sgl = []
            for n, cont in op[1]:  # cont: physically contiguous with the previous entry
                p = nxt[0] - g if cont and sgl else phys(n)
                nxt[0] = max(nxt[0], p + (n + 1) * g)
                sgl.append(ScatterEntry(p, n * g))
            if dom.dma_map_sg(dev, sgl, DMA_BIDIRECTIONAL) > 0:
                live.append(["sg", sgl])
        elif kind == "iova":
            _, n, chunk, sync = op
            s = DmaIovaState()
            if not dom.dma_iova_try_alloc(dev, s, 0, n * g):
                continue
            linked = set()
            for i in range(0, n, chunk):
                k = min(chunk, n - i)
                if dom.dma_iova_link(dev, s, phys(k), i * g, k * g) == 0:
                    linked.update(range(i, i + k))
            if sync:
                dom.dma_iova_sync(dev, s, 0, n * g)
            live.append(["iova", s, n, linked, sync])
        elif kind == "unlink":
            items = [x for x in live if x[0] == "iova" and x[3]]
            if items:
                item = items[op[1] % len(items)]
                i = sorted(item[3])[op[2] % len(item[3])]
                dom.dma_iova_unlink(dev, item[1], i * g, g)
                # AMD v1 clears a whole large PTE when asked for part of it: ask the page table what is left
                item[3].intersection_update(j for j in item[3] if dom.iommu.iommu_iova_to_phys(item[1].addr + j * g))
        elif kind == "unmap" and live:
            item = live.pop(op[1] % len(live))
            cpu = int(op[2])
            if op[3]:  # the device used the buffer: its translation is in the IOTLB at unmap time
                first = item[1] if item[0] == "page" else item[1][0].dma_address if item[0] == "sg" \
                    else item[1].addr + min(item[3], default=0) * g
                dom.iommu.device_access(first)
            if item[0] == "page":
                dom.dma_unmap_page(dev, item[1], item[2], DMA_BIDIRECTIONAL, cpu=cpu)
                gone.append(item[1])
            elif item[0] == "sg":
                dom.dma_unmap_sg(dev, item[1], DMA_BIDIRECTIONAL, cpu=cpu)
                gone.append(item[1][0].dma_address)
            else:
                _, s, n, linked, _ = item
                gone.append(s.addr)
                if linked == set(range(n)):
                    dom.dma_iova_destroy(dev, s, n * g, DMA_BIDIRECTIONAL, cpu=cpu)
                else:
                    for i in sorted(linked):
                        if dom.iommu.iommu_iova_to_phys(s.addr + i * g):  # not cleared with a large PTE
                            dom.dma_iova_unlink(dev, s, i * g, g, DMA_BIDIRECTIONAL, cpu=cpu)
                    dom.dma_iova_free(dev, s, cpu=cpu)
        elif kind == "access" and live:
            item = live[op[1] % len(live)]
            if item[0] == "page":
                addr = item[1] + (op[2] * g) % item[2]
            elif item[0] == "sg":
                addr = item[1][0].dma_address
            elif item[3]:
                addr = item[1].addr + sorted(item[3])[op[2] % len(item[3])] * g
            else:
                continue
            dom.iommu.device_access(addr)
        elif kind == "stale" and gone:
            dom.iommu.device_access(gone[op[1] % len(gone)])
        elif kind == "tick":
            dom.advance_time(dom.fq_timeout)
        else:
            continue
        check(repr(op))


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lazy"])
@pytest.mark.parametrize("preset", PRESETS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=ops)
def test_replayed_state_equals_live_domain(preset, strict, seq):
    run_workload(preset, strict, seq)


def test_negative_and_stale_iotlb_entries_replayed():
    """A fixed lazy caching-mode run: a stale hit after unmap, then (after the flush-queue timer) a fault
    that caches a non-present entry, dropped again by iotlb_sync_map when the IOVA is mapped anew; the
    replay (incremental, and ``state_at`` from scratch) follows each step."""
    dom = DmaDomain("intel-vtd-caching-mode", strict=False, kernel="6.17", hz=1000)
    dev = Device(dma_mask=DMA_BIT_MASK(48), is_pci=True)
    r = _Replay(dom.granule)
    seen = [0]

    def step():
        for e in dom.log.events[seen[0]:]:
            r.apply(e)
        seen[0] = len(dom.log)
        compare(dom, r, "fixed")
        s = state_at(dom.log.events, len(dom.log), dom.granule)
        assert (s.nodes, s.mapped, s.iotlb) == (lambda x: (x.nodes, x.mapped, x.iotlb))(
            r.state(len(dom.log), [], set(), []))
        return s

    a = dom.dma_map_page(dev, 0x40_0000_0000, 0x3000)
    dom.iommu.device_access(a)
    assert step().stale == 0
    dom.dma_unmap_page(dev, a, 0x3000)
    dom.iommu.device_access(a)            # lazy: the entry is still there, and stale
    assert step().stale == 1
    dom.advance_time(dom.fq_timer_ms())
    assert step().iotlb == []
    dom.iommu.device_access(a)            # fault: caching mode keeps the non-present entry
    assert step().iotlb == [(a, dom.granule, None, False)]
    b = dom.dma_map_page(dev, 0x40_0001_0000, 0x3000)
    assert b == a                         # the rcache hands the same IOVA back ...
    assert step().iotlb == []             # ... and intel_iommu_iotlb_sync_map flushed the entry
