"""drivers/iommu/iova.c model: worked examples (a fresh 4 KiB domain, 6.17), rcache paths, errors, invariants."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.kernel.events import EventLog
from iovalab.kernel.iova import IOVA_MAG_SIZE, IovaDomain, iova_rcache_range

LIM32 = 0xFFFFF  # 32-bit limit_pfn for a 4 KiB granule (inclusive)


def dom(**kw):
    return IovaDomain(0x1000, 1, **kw)


def test_alloc_iova_fast_worked_example():
    d = dom()
    assert [d.alloc_iova_fast(n, LIM32) for n in (1, 1, 2, 3)] == [0xFFFFF, 0xFFFFE, 0xFFFFC, 0xFFFF8]
    # the 3-granule request occupies 4 granules in the tree (rounded below 32)
    assert d.find_iova(0xFFFF8).pfn_hi == 0xFFFFB


def test_alloc_iova_size_aligned_no_rounding_leaves_hole():
    d = dom()
    got = [d.alloc_iova(n, LIM32, True).pfn_lo for n in (1, 1, 2, 3)]
    assert got == [0xFFFFF, 0xFFFFE, 0xFFFFC, 0xFFFF8]
    assert d.find_iova(0xFFFF8).pfn_hi == 0xFFFFA
    assert d.find_iova(0xFFFFB) is None  # the unused hole
    # a following 1-page request skips the hole: allocation continues below the cached node
    assert d.alloc_iova(1, LIM32, True).pfn_lo == 0xFFFF7


def test_alloc_iova_unaligned_three_pages():
    d = dom()
    for _ in range(2):
        d.alloc_iova(1, LIM32, True)
    d.alloc_iova(2, LIM32, True)
    assert d.alloc_iova(3, LIM32, False).pfn_lo == 0xFFFF9


def test_free_moves_cached32_node_up():
    d = dom()
    a, b, c = (d.alloc_iova(1, LIM32, True) for _ in range(3))
    assert d.cached32_node is c
    d.free_iova(b.pfn_lo)
    assert d.cached32_node is a  # rule 1 of __cached_rbnode_delete_update
    assert d.alloc_iova(1, LIM32, True).pfn_lo == 0xFFFFE
    d.free_iova(a.pfn_lo)
    assert d.cached32_node is d.anchor
    assert d.alloc_iova(1, LIM32, True).pfn_lo == 0xFFFFF


def test_64bit_limit_uses_cached_node():
    d = dom()
    lim = (1 << 36) - 1  # 48-bit address space in 4K pfns
    assert d.alloc_iova_fast(1, lim) == 0xFFFFFFFFF
    assert d.alloc_iova_fast(4, lim) == 0xFFFFFFFF8
    assert d.cached_node.pfn_lo == 0xFFFFFFFF8 and d.cached32_node is d.anchor


def test_rcache_lifo_reuse_and_per_cpu():
    d = dom(ncpus=2)
    p = d.alloc_iova_fast(1, LIM32, cpu=0)
    d.free_iova_fast(p, 1, cpu=0)
    assert d.find_iova(p) is not None  # parked in the magazine, still in the tree
    assert d.alloc_iova_fast(1, LIM32, cpu=0) == p  # magazine hit on the same CPU
    d.free_iova_fast(p, 1, cpu=0)
    assert d.alloc_iova_fast(1, LIM32, cpu=1) == p - 1  # the other CPU does not see it
    assert d.log.count("rcache_hits") == 1


def test_magazines_and_depot():
    d = dom()
    pfns = [d.alloc_iova_fast(1, LIM32) for _ in range(300)]
    for p in pfns:
        d.free_iova_fast(p, 1)
    s = d.rcache_summary()[0]
    # 300 = 127 (depot) + 127 (prev) + 46 (loaded)
    assert s["depot"] == 1 and s["cpus"] == [(46, IOVA_MAG_SIZE)]
    assert d.log.count("depot_push") == 1
    # draining: loaded first (LIFO), then prev, then the depot magazine
    assert d.alloc_iova_fast(1, LIM32) == pfns[-1]
    for _ in range(300 - 1):
        assert d.alloc_iova_fast(1, LIM32)
    assert d.log.count("depot_pop") == 1
    assert d.log.count("rcache_hits") == 300


def test_magazine_pop_respects_limit():
    d = dom()
    hi = d.alloc_iova_fast(1, (1 << 36) - 1)  # a 64-bit pfn
    d.free_iova_fast(hi, 1)
    # a 32-bit-limited request must not take it: it goes to the tree instead
    assert d.alloc_iova_fast(1, LIM32) == 0xFFFFF
    assert d.log.count("rcache_hits") == 0


def test_flush_rcache_and_retry_on_exhaustion():
    d = dom()
    lim = 0x3FF  # a 4 MiB window: pfns 1..0x3ff
    got = []
    while (p := d.alloc_iova_fast(1, lim, flush_rcache=False)):
        got.append(p)
    assert len(got) == 0x3FF
    for p in got[:10]:
        d.free_iova_fast(p, 1)
    # tree full, but 10 ranges sit in the rcache; a 2-page request flushes them and retries
    p2 = d.alloc_iova_fast(2, lim)
    assert p2 and p2 % 2 == 0
    assert d.log.count("rcache_flush") == 1


def test_max32_alloc_size_fast_fail_and_rearm():
    d = dom()
    lim = 0xFFFFF
    big = d.alloc_iova(0x80000, lim, True)  # half of the 32-bit space
    assert big.pfn_lo == 0x80000
    assert d.alloc_iova(0x80000, lim, True) is None  # start_pfn 1 blocks the lower half
    assert d.max32_alloc_size == 0x80000
    mark = d.log.mark()
    assert d.alloc_iova(0x80000, lim, True) is None
    (fail,) = [e for e in d.log.since(mark) if e.kind == "alloc_fail"]
    assert fail.args["reason"] == "max32_alloc_size"  # failed at once, no walk
    d.free_iova(big.pfn_lo)  # a free below 4 GiB re-arms 32-bit allocations
    assert d.max32_alloc_size == d.dma_32bit_pfn


def test_reserve_merges_and_is_skipped():
    d = dom()
    r = d.reserve_iova(0xFEE00, 0xFEEFF)
    assert d.reserve_iova(0xFEE40, 0xFEE7F) is r  # inside: returns the existing node
    assert d.ranges() == [(0xFEE00, 0xFEEFF)]
    d.reserve_iova(0xFED00, 0xFEE10)  # overlaps below: the node is extended downward
    assert d.ranges() == [(0xFED00, 0xFEEFF)]
    d.reserve_iova(0xFEF00, 0xFEF00)
    assert d.ranges() == [(0xFED00, 0xFEEFF), (0xFEF00, 0xFEF00)]
    assert d.cached32_node is d.anchor  # reservations do not move the cached nodes


def test_rcache_range_is_128k():
    assert iova_rcache_range() == 128 * 1024


@pytest.mark.parametrize("call, match", [
    (lambda d: d.alloc_iova(0, LIM32, True), "size 0"),
    (lambda d: d.alloc_iova_fast(1, -1), "limit_pfn -1"),
    (lambda d: d.free_iova(0x1234), "0x1234"),
    (lambda d: d.free_iova_fast(0x1234, 1), "0x1234"),
    (lambda d: d.alloc_iova_fast(1, LIM32, cpu=3), "cpu 3"),
    (lambda d: d.reserve_iova(5, 4), "pfn_lo <= pfn_hi"),
])
def test_bad_input_raises_and_leaves_state(call, match):
    d = dom()
    d.alloc_iova_fast(1, LIM32)
    before = d.snapshot()
    with pytest.raises(ValueError, match=match):
        call(d)
    assert d.snapshot() == before


@pytest.mark.parametrize("g", [0, 3, 0x3000, 0x20000])
def test_bad_granule(g):
    with pytest.raises(ValueError, match=hex(g) if g else "0x0"):
        IovaDomain(g)


# ------------------------------------------------------------------ properties
ops = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(1, 40), st.sampled_from([0xFFFFF, 0xFFFFFF, 0x3FF, 0x7FF]),
              st.booleans()),
    st.tuples(st.just("fast"), st.integers(1, 40), st.sampled_from([0xFFFFF, 0xFFFFFF, 0x3FF]),
              st.integers(0, 1)),
    st.tuples(st.just("free"), st.integers(0, 10_000), st.booleans(), st.integers(0, 1)),
), max_size=120)
reserves = st.lists(st.tuples(st.integers(1, 0x7FF), st.integers(0, 16)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(reserves, ops)
def test_invariants(res, seq):
    """Reservations first (as iommu_dma_init_domain does), then random allocs and frees."""
    d = IovaDomain(0x1000, 1, ncpus=2, log=EventLog(keep=False))
    live = {}       # pfn_lo -> (requested size, via fast)
    reserved = []
    for lo, extra in res:
        d.reserve_iova(lo, lo + extra)
        reserved.append((lo, lo + extra))
    for op in seq:
        if op[0] == "alloc":
            _, n, lim, aligned = op
            node = d.alloc_iova(n, lim, aligned)
            if node:
                assert node.size == n and d.start_pfn <= node.pfn_lo and node.pfn_hi <= lim
                if aligned:
                    assert node.pfn_lo % (1 << (n - 1).bit_length()) == 0
                live[node.pfn_lo] = (n, False)
        elif op[0] == "fast":
            _, n, lim, cpu = op
            p = d.alloc_iova_fast(n, lim, cpu=cpu)
            if p:
                node = d.find_iova(p)
                assert node.pfn_lo == p and node.pfn_hi <= lim
                size = node.size
                assert size >= n and p % (1 << (size - 1).bit_length()) == 0
                assert p not in live
                live[p] = (n, True)
        elif op[0] == "free" and live:
            _, k, _, cpu = op
            p = sorted(live)[k % len(live)]
            n, fast = live.pop(p)
            if fast:
                d.free_iova_fast(p, n, cpu=cpu)
            else:
                d.free_iova(p)
        rs = d.ranges()
        for (_, a_hi), (b_lo, _) in zip(rs, rs[1:], strict=False):
            assert a_hi < b_lo, "ranges overlap"
        assert all(lo >= d.start_pfn for lo, _ in rs)
        # the tree holds exactly the live, cached and reserved ranges
        cached = set(d.cached_pfns())
        tree = {lo for lo, _ in rs}
        assert set(live) <= tree and cached <= tree
        for lo, _ in rs:
            node = d.find_iova(lo)
            assert lo in live or lo in cached or node.reserved
    # free everything, flush the caches: only reservations remain
    for p, (n, fast) in sorted(live.items()):
        if fast:
            d.free_iova_fast(p, n)
        else:
            d.free_iova(p)
    for cpu in range(d.ncpus):
        d.free_cpu_cached_iovas(cpu)
    d.free_global_cached_iovas()
    assert all(n.reserved for n in d.nodes())
    covered = set()
    for lo, hi in d.ranges():
        covered.update(range(lo, hi + 1))
    for lo, hi in reserved:
        assert set(range(lo, hi + 1)) <= covered


def test_tens_of_thousands_of_live_ranges():
    """50,000 live single-granule ranges (top-down), then frees in the middle and reuse."""
    d = IovaDomain(0x1000, 1, log=EventLog(keep=False))
    lim = (1 << 36) - 1
    got = [d.alloc_iova(1, lim, True).pfn_lo for _ in range(50_000)]
    assert got == list(range(lim, lim - 50_000, -1))
    assert len(d) == 50_000
    for p in got[1000:2000]:
        d.free_iova(p)
    # the cached node moved up past the hole (rule 3): the next allocation reuses the hole top-down
    assert d.alloc_iova(1, lim, True).pfn_lo == got[1000]
    assert d.find_iova(got[-1]).pfn_lo == got[-1]


_OPS = st.lists(st.tuples(st.sampled_from(["alloc", "free"]), st.integers(1, 40), st.integers(0, 1)),
                min_size=1, max_size=60)


def _run(dom: IovaDomain, ops, live: list[tuple[int, int]]) -> None:
    for op, n, cpu in ops:
        if op == "alloc" or not live:
            pfn = dom.alloc_iova_fast(n, 1 << 20, cpu=cpu)
            if pfn:
                live.append((pfn, n))
        else:
            pfn, size = live.pop(n % len(live))
            dom.free_iova_fast(pfn, size, cpu=cpu)


@settings(max_examples=60, deadline=None)
@given(before=_OPS, during=_OPS, again=_OPS)
def test_trial_rollback_restores_the_whole_state(before, during, again):
    """A trial journals the tree changes; rolling back gives back the state at trial_begin exactly
    (tree, cached nodes, max32_alloc_size, every magazine and the depot), as often as asked."""
    dom = IovaDomain(0x1000, ncpus=2, log=EventLog(keep=False))
    live: list[tuple[int, int]] = []
    _run(dom, before, live)
    want = dom.snapshot()
    dom.trial_begin()
    _run(dom, during, list(live))
    dom.trial_rollback()
    assert dom.snapshot() == want
    _run(dom, again, list(live))
    dom.trial_rollback()
    assert dom.snapshot() == want
    dom.trial_end()
    with pytest.raises(ValueError, match="without trial_begin"):
        dom.trial_rollback()
