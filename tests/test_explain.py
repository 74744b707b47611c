"""explain: the numbers behind the widgets (footprint, mask walk, recordings, step states, path comparison)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.lab import explain
from iovalab.lab.explain import (
    footprint, mask_walk, record, scaling, state_at, step_bounds,
)
from iovalab.kernel.units import DMA_BIT_MASK


# --- footprint ------------------------------------------------------------------------------------
@pytest.mark.parametrize("granule, length, node, addr", [
    (0x1000, 0x4000, (0xFFFFC, 0xFFFFF), 0xFFFFC234),
    (0x4000, 0x8000, (0x3FFFE, 0x3FFFF), 0xFFFF9234),
    (0x10000, 0x10000, (0xFFFF, 0xFFFF), 0xFFFF1234),
])
def test_footprint_phys_0x1234_size_0x3000(granule, length, node, addr):
    fp = footprint(granule, 0x1234, 0x3000)
    assert fp.iova_offset == 0x1234 & (granule - 1)
    assert fp.iova_len == length
    assert fp.tail == length - fp.iova_offset - 0x3000
    assert fp.fresh_node == node
    assert fp.fresh_addr == addr
    assert fp.fresh_ptes == length // granule  # no block fits: one leaf per granule
    assert dict(fp.rows())["IOVA length = iova_align(size + off)"] == hex(length)


def test_footprint_rounding_and_bins():
    fp = footprint(0x1000, 0, 0x5000)            # 5 granules -> node of 8 (alloc_iova_fast rounding)
    assert (fp.granules, fp.node_granules, fp.align_granules, fp.rcache_bin) == (5, 8, 8, 3)
    assert fp.waste == 0x3000
    assert fp.fresh_node == (0xFFFF8, 0xFFFFF)
    big = footprint(0x1000, 0, 0x41000)          # 65 granules: no rounding, never cached, aligned to 128
    assert (big.node_granules, big.align_granules, big.rcache_bin) == (65, 128, None)
    assert big.fresh_node[0] % 128 == 0


@pytest.mark.parametrize("bad", [dict(granule=0x3000), dict(granule=0x20000), dict(phys=-1), dict(size=0)])
def test_footprint_rejects(bad):
    args = dict(granule=0x1000, phys=0, size=0x1000) | bad
    with pytest.raises(ValueError):
        footprint(**args)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([0x1000, 0x4000, 0x10000]), st.integers(0, 2**40), st.integers(1, 0x80000))
def test_footprint_invariants(granule, phys, size):
    fp = footprint(granule, phys, size)
    assert fp.iova_len % granule == 0
    assert fp.iova_offset + size <= fp.iova_len < fp.iova_offset + size + granule
    assert fp.fresh_addr - fp.fresh_iova == fp.iova_offset
    lo, hi = fp.fresh_node
    assert hi - lo + 1 == fp.node_granules
    assert lo % fp.align_granules == 0
    if fp.granules < 32:
        assert fp.node_granules & (fp.node_granules - 1) == 0


# --- mask walk (iommu_dma_alloc_iova) ---------------------------------------------------------------
def test_mask_walk_32bit_first_then_permanent_fallback():
    w = mask_walk(64, count=6, free_below_4g=0x4000)
    assert [a.iova for a in w.allocs[:4]] == [0xFFFFF000, 0xFFFFE000, 0xFFFFD000, 0xFFFFC000]
    assert all(a.attempt == "below 4 GiB" for a in w.allocs[:4])
    assert w.allocs[4].notice == "Using 48-bit DMA addresses"      # aperture 2^48 - 1 clamps the 64-bit mask
    assert [a.iova for a in w.allocs[4:]] == [0xFFFFFFFFF000, 0xFFFFFFFFE000]
    assert all(a.attempt == "full width" and not a.notice for a in w.allocs[5:])
    assert w.dma_limit == (1 << 48) - 1


def test_mask_walk_32bit_device_runs_out():
    w = mask_walk(32, count=6, free_below_4g=0x4000)
    assert [a.iova for a in w.allocs[:4]] == [0xFFFFF000, 0xFFFFE000, 0xFFFFD000, 0xFFFFC000]
    assert w.allocs[4].iova == 0 and w.allocs[4].why == "no space"
    assert w.allocs[5].why == "max32_alloc_size"                 # the fast fail after a 32-bit failure
    assert w.failures == 2 and not w.notices


def test_mask_walk_forcedac_and_bus_limit():
    w = mask_walk(64, count=2, forcedac=True)                     # iova.c 64-bit example (forcedac)
    assert [a.iova for a in w.allocs] == [0xFFFFFFFFF000, 0xFFFFFFFFE000]
    w = mask_walk(40, count=1, bus_limit_bits=36, pci=False)
    assert w.dma_limit == DMA_BIT_MASK(36)
    assert w.allocs[0].iova == (1 << 36) - 0x1000
    assert dict(w.rows())["effective dma_limit"].startswith("0xfffffffff (36 bits)")


def test_mask_walk_rejects():
    for kw in (dict(mask_bits=31), dict(bus_limit_bits=20), dict(count=0), dict(size=0),
               dict(free_below_4g=0x800)):
        with pytest.raises(ValueError):
            mask_walk(**({"mask_bits": 64} | kw))


# --- recordings and step states ------------------------------------------------------------------
def test_record_scenario_nvme_spec_example():
    rec = record("nvme-spec-example", "iova")
    assert rec.granule == 0x1000
    assert rec.window[0] <= 0xFFFF8000 and rec.window[1] >= 0x100000000
    labels = " | ".join(rec.labels)
    assert "dma_iova_try_alloc" in labels and "dma_iova_destroy" in labels
    after_alloc = next(i for i, t in enumerate(rec.labels) if "try_alloc" in t)
    s = rec.state(after_alloc)
    assert s.nodes == [(0xFFFF8000, 0x100000000, "in use")]         # 6 granules -> node of 8
    assert s.mapped == []                                            # try_alloc writes no PTE
    links = [i for i, t in enumerate(rec.labels) if "dma_iova_link" in t]
    s = rec.state(links[-1])
    assert [m[0] for m in s.mapped] == [0xFFFF8000, 0xFFFF9000, 0xFFFFA000, 0xFFFFB000, 0xFFFFC000, 0xFFFFD000]
    end = rec.state(len(rec.bounds) - 1)
    assert end.nodes == [(0xFFFF8000, 0x100000000, "cached")]       # free_iova_fast -> rcache bin 3
    assert end.counters == rec.result.counters


def test_record_lazy_demo_stale_then_flushed():
    rec = record("demo:pages-8", "page", strict=False)
    unmaps = [i for i, t in enumerate(rec.labels) if t.startswith("dma_unmap_page")]
    s = rec.state(unmaps[-1])
    assert s.fq_pending == 8 and len(s.unflushed) == 8
    assert s.stale == 8                                   # the device's IOTLB entries outlive the PTEs
    assert all(st == "queued" for *_, st in s.nodes)
    end = rec.state(len(rec.bounds) - 1)                  # fq_flush_timeout: flush_iotlb_all + frees
    assert "fq_flush_timeout" in rec.labels[-1]
    assert end.fq_pending == 0 and end.unflushed == [] and end.iotlb == []
    assert all(st == "cached" for *_, st in end.nodes)


def test_step_bounds_group_calls_and_leading_unmap_sg():
    rec = record("demo:nvme-demo", "sg")
    b = rec.bounds
    assert b[-1] == len(rec.events)
    last = rec.events[b[-2]:b[-1]]
    assert last[0].func == "dma_unmap_sg" and last[-1].func == "free_iova_fast"
    assert step_bounds(rec.events, rec.setup) == b


def test_event_unit_and_labels():
    rec = record("demo:nvme-demo", "iova")
    ev = rec.steps("event")
    assert ev[0] == rec.setup and ev[-1] == len(rec.events) and len(ev) == len(rec.events) - rec.setup + 1
    assert rec.label(1, "event").startswith("iova: ")
    with pytest.raises(ValueError):
        rec.steps("minute")
    s = rec.state(3, "event")
    assert len(s.current) == 1 and s.k == rec.setup + 3


@pytest.mark.parametrize("workload, path", [("demo:nvme-demo", "page"), ("nvme-128k-scattered", "iova"),
                                            ("vfio-migration-4mib", "sg")])
def test_timeline_matches_state_at(workload, path):
    rec = record(workload, path, strict=False)
    tl = explain.Timeline(rec.events, rec.granule, every=16)
    n = len(rec.events)
    for k in sorted({0, 1, 15, 16, 17, n // 2, n - 1, n}):
        a = tl.state(k, start=max(0, k - 3))
        b = state_at(rec.events, k, rec.granule, start=max(0, k - 3))
        assert (a.nodes, a.mapped, a.iotlb, a.unflushed, a.counters, a.changed, a.focus, a.tables) == \
               (b.nodes, b.mapped, b.iotlb, b.unflushed, b.counters, b.changed, b.focus, b.tables)


def test_state_focus_and_changed():
    rec = record("demo:nvme-demo", "page")
    s = rec.state(1)                                     # the first dma_map_page
    assert s.focus == (0xFFFFF000, 0x100000000)
    assert {"iova_allocs", "iommu_map_calls", "pte_writes", "iotlb_syncs", "dma_api_calls"} <= s.changed


def test_record_rejects():
    with pytest.raises(ValueError):
        record("demo:nvme-demo", "carrier-pigeon")
    with pytest.raises(ValueError):
        record("demo:nope", "page")
    with pytest.raises(ValueError):
        record("no-such-preset", "page")


def test_workload_lists():
    names = explain.player_workloads()
    assert "nvme-spec-example" in names and "demo:nvme-demo" in names
    assert explain.workload_paths("hmm-16mib-strided") == ("page", "iova")
    assert explain.workload_paths("demo:pages-8") == explain.PATHS


# --- comparisons ---------------------------------------------------------------------------------
def test_compare_workload_matches_scenario_counters():
    from iovalab.lab.scenarios import run_scenario
    res = explain.compare_workload("nvme-128k-scattered")
    assert set(res) == {"page", "sg", "iova"}
    for path, r in res.items():
        assert r["counters"] == run_scenario("nvme-128k-scattered", api=path, keep_events=False).counters
        assert "modelled" in r["modelled"].label
    assert res["page"]["counters"].iova_allocs == 32 and res["iova"]["counters"].iova_allocs == 1


def test_compare_paths_and_scaling_counts():
    segs = explain.scattered_pages(16)
    res = explain.compare_paths(segs)
    assert res["page"]["counters"].iova_allocs == 16
    assert res["sg"]["counters"].iova_allocs == 1 and res["iova"]["counters"].iova_allocs == 1
    assert res["iova"]["counters"].iommu_map_calls == 16     # scattered: one link (map call) per page
    sc = scaling((1, 4, 16))
    assert sc["paths"]["page"]["iova_allocs"] == [1, 4, 16]
    assert sc["paths"]["iova"]["iova_allocs"] == [1, 1, 1]
    assert sc["paths"]["sg"]["iotlb_invalidations"] == [1, 1, 1]
    contig = scaling((16,), contiguous=True)
    assert contig["paths"]["sg"]["iommu_map_calls"] == [1]    # iommu_map_sg merges a contiguous list
    with pytest.raises(ValueError):
        explain.scattered_pages(0)


# --- display helpers -----------------------------------------------------------------------------
def test_describe_helpers():
    fp = footprint(0x1000, 0x1FF0, 0x20)
    text = fp.describe()
    assert "IOVA length = iova_align(size + off)      0x2000" in text
    w = mask_walk(64, count=5, free_below_4g=0x4000)
    assert "#4   0xfffffffff000" in w.describe() and "Using 48-bit DMA addresses" in w.describe()
    rec = record("demo:nvme-demo", "sg")
    out = explain.describe_events(rec.events[rec.bounds[-2]:], limit=3)
    lines = out.splitlines()
    assert lines[0].startswith("[dma] dma_unmap_sg(") and lines[-1].endswith("more event(s)")
    assert "  # pte_clear" in explain.describe_events(rec.events)
    assert explain.hexify({"a": [1, (16, None)], "b": True}) == {"a": ["0x1", ("0x10", None)], "b": True}


def test_recording_find():
    rec = record("nvme-spec-example", "iova")
    first, last = rec.find("dma_iova_link"), rec.find("dma_iova_link", last=True)
    assert first < last and "offset 0x0" in rec.labels[first]
    with pytest.raises(ValueError):
        rec.find("no such call")
    sync = rec.state(rec.find("dma_iova_sync"))
    assert sync.focus == (0xFFFF8000, 0xFFFFE000)           # iommu_sync_map over the linked range
