"""Tests for iovalab.lab.scenarios (NVMe, HMM, VFIO under every mapping path).

Counts are asserted from the run's event log (``result.log``), not re-derived.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.lab.scenarios import (
    COUNTER_KEYS, cli, iter_scenario, list_presets, load_preset, run_scenario, valid_apis,
)
from iovalab.drivers.common import SIZEOF, Bookkeeping
from iovalab.drivers.blk_mq_dma import blk_map_iter_segments, blk_split_requests, bio_vecs
from iovalab.drivers.nvme_pci import NVME_CTRL_PAGE_SIZE, nvme_prp_layout
from iovalab.drivers.vfio_mlx5 import sg_slots

ROOT = Path(__file__).resolve().parent.parent
SCEN = ROOT / "iovalab" / "drivers"

REQUIRED = ["nvme-4k-read", "nvme-128k-scattered", "nvme-unaligned-12k", "nvme-1m-direct",
            "hmm-1gib-random", "vfio-migration-256mib"]


def kinds(res, kind: str, func: str | None = None) -> list:
    return [e for e in res.log.events if e.kind == kind and (func is None or e.func == func)]


def driver_index(res, func: str) -> int:
    """Position of the first driver event ``func`` in the log."""
    for i, e in enumerate(res.log.events):
        if e.layer == "driver" and e.func == func:
            return i
    raise AssertionError(f"no driver event {func}")


# -------------------------------------------------------------------------------------------- presets
def test_required_presets_exist_and_are_complete():
    names = list_presets()
    for n in REQUIRED:
        assert n in names
    readme = (ROOT / "data" / "scenarios" / "README.md").read_text()
    for n in names:
        p = load_preset(n)
        assert p["name"] == n
        for key in ("scenario", "description", "device", "iommu", "parameters", "source"):
            assert key in p, (n, key)
        assert f"{n}.json" in readme, f"data/scenarios/README.md has no line for {n}.json"


def test_unknown_preset_names_known_ones():
    with pytest.raises(ValueError, match="nvme-4k-read"):
        load_preset("no-such-preset")


# -------------------------------------------------------------------------------------------- NVMe acceptance
def test_nvme_128k_scattered_page():
    # 6.17: blk_dma_map_direct is dma_map_page (7.3.4: dma_map_phys, tests/test_blk_mq_73.py)
    r = run_scenario("nvme-128k-scattered", api="page", strict=True, kernel="6.17")
    unmap_at = driver_index(r, "nvme_unmap_data")
    assert len(kinds(r, "iova_allocs")) == 32
    assert len(kinds(r, "iommu_map_calls")) == 32
    assert len(kinds(r, "iotlb_syncs")) == 32
    inv = [i for i, e in enumerate(r.log.events) if e.kind == "iotlb_invalidations"]
    assert len(inv) == 32 and min(inv) > unmap_at          # all on the unmap side
    assert len(kinds(r, "dma_api_calls", "dma_map_page")) == 32
    assert len(kinds(r, "dma_api_calls", "dma_unmap_page")) == 32
    assert r.counters.iova_allocs == 32 and r.counters.iotlb_invalidations == 32
    # iod->dma_vecs: 32 x 16 B, plus the embedded dma_iova_state
    assert r.bookkeeping_bytes == 32 * SIZEOF["struct nvme_dma_vec"] + SIZEOF["struct dma_iova_state"]


def test_nvme_128k_scattered_sg():
    r = run_scenario("nvme-128k-scattered", api="sg", strict=True)
    assert len(kinds(r, "iova_allocs")) == 1
    assert len(kinds(r, "iommu_map_calls")) == 32           # one per physically contiguous chunk
    assert len(kinds(r, "iotlb_syncs")) == 1
    assert len(kinds(r, "iotlb_invalidations")) == 1
    assert [e.func for e in kinds(r, "dma_api_calls")] == ["dma_map_sg", "dma_unmap_sg"]
    assert r.bookkeeping_bytes == SIZEOF["struct sg_table"] + 32 * SIZEOF["struct scatterlist"]


def test_nvme_128k_scattered_iova():
    r = run_scenario("nvme-128k-scattered", api="iova", strict=True)
    assert len(kinds(r, "iova_allocs")) == 1
    assert len(kinds(r, "iommu_map_calls")) == 32
    assert len(kinds(r, "iotlb_syncs")) == 1
    assert len(kinds(r, "iotlb_invalidations")) == 1
    funcs = [e.func for e in kinds(r, "dma_api_calls")]
    assert funcs == ["dma_iova_try_alloc"] + ["dma_iova_link"] * 32 + ["dma_iova_sync", "dma_iova_destroy"]
    assert r.bookkeeping_bytes == SIZEOF["struct dma_iova_state"]
    cmd = r.device_view[0]
    st_addr = kinds(r, "dma_api_calls", "dma_iova_try_alloc")[0].args["addr"]
    assert cmd["dma_segments"] == [(st_addr, 0x20000)]       # one DMA segment for the whole request
    assert cmd["format"] == "PRP"                            # no SGL support in this preset
    assert cmd["prp_lists"][0]["entries"] == [st_addr + k * 0x1000 for k in range(1, 32)]


def test_nvme_128k_scattered_direct_has_no_iova_events():
    r = run_scenario("nvme-128k-scattered", api="direct")
    assert r.domain is None
    c = r.counters
    assert (c.iova_allocs, c.iommu_map_calls, c.iotlb_syncs, c.iotlb_invalidations, c.pte_writes) == (0,) * 5
    assert all(e.layer in ("driver", "dma-direct") for e in r.log.events)
    assert [e.result for e in kinds(r, "dma_api_calls", "dma_iova_try_alloc")] == [False]
    maps = kinds(r, "dma_api_calls", "dma_map_page")
    assert [e.result for e in maps] == [e.args["phys"] for e in maps]     # DMA address = phys
    assert not kinds(r, "dma_api_calls", "dma_unmap_page")              # dma_need_unmap() is false


def test_nvme_sgl_capable_controller():
    r = run_scenario("nvme-128k-scattered-sgl", api="iova")
    cmd = r.device_view[0]
    # coalesced -> counts as one segment: avg 128 KiB >= sgl_threshold 32 KiB -> one data descriptor
    assert cmd["format"] == "SGL" and cmd["sgl"]["type"] == "DATA_DESC" and cmd["sgl"]["length"] == 0x20000
    r = run_scenario("nvme-128k-scattered-sgl", api="page")
    assert r.device_view[0]["format"] == "PRP"                # avg 4 KiB < 32 KiB


def test_nvme_admin_queue_is_always_prp():
    p = copy.deepcopy(load_preset("nvme-128k-scattered-sgl"))
    p["parameters"]["queue"] = "admin"
    assert run_scenario(p, api="iova").device_view[0]["format"] == "PRP"


# -------------------------------------------------------------------------------------------- PRP derivations
def test_prp_unaligned_12k_iova_hand_derivation():
    # Buffer: 12 KiB at page offset 0x200, pages every 8 KiB from 0x50000000 (preset phys.stride 0x2000):
    #   bio_vecs (0x50000200, 0xE00) (0x50002000, 0x1000) (0x50004000, 0x1000) (0x50006000, 0x200) -
    #   4 physical segments, no virt-boundary gap (the first ends and the others start 4 KiB aligned).
    # blk_can_dma_map_iova: (0xFFF + 1) & merge boundary 0xFFF = 0 -> try the IOVA path.
    # dma_iova_try_alloc(phys 0x50000200, 0x3000): iova_off 0x200, iova_align(0x3200) = 0x4000 = 4 pages;
    #   alloc_iova_fast(4) (power of two already); 64-bit PCI device -> first below 4 GiB, limit pfn
    #   0xFFFFF; fresh domain, top-down: new_pfn = (0x100000 - 4) & ~3 = 0xFFFFC -> IOVA 0xFFFFC000,
    #   state.addr = 0xFFFFC200.
    # Links at payload offsets 0, 0xE00, 0x1E00, 0x2E00 -> IOVA pages 0xFFFFC000..0xFFFFF000.
    # PRP (coalesced = 1 segment, avg 0x3000 < 32 KiB; no SGL): PRP1 = 0xFFFFC200 (0x1000 - 0x200 =
    #   0xE00 bytes); 0x2200 left > 4 KiB -> PRP2 = a list of DIV_ROUND_UP(0x2200, 0x1000) = 3 <= 32
    #   entries (small pool): 0xFFFFD000, 0xFFFFE000, 0xFFFFF000 (the last carries 0x200 bytes).
    r = run_scenario("nvme-unaligned-12k", api="iova")
    [cmd] = r.device_view
    assert cmd["segments"] == [(0x50000200, 0xE00), (0x50002000, 0x1000), (0x50004000, 0x1000), (0x50006000, 0x200)]
    assert kinds(r, "dma_api_calls", "dma_iova_try_alloc")[0].args["addr"] == 0xFFFFC200
    maps = [(e.args["iova"], e.args["paddr"], e.args["size"]) for e in kinds(r, "iommu_map_calls")]
    assert maps == [(0xFFFFC000, 0x50000000, 0x1000), (0xFFFFD000, 0x50002000, 0x1000),
                    (0xFFFFE000, 0x50004000, 0x1000), (0xFFFFF000, 0x50006000, 0x1000)]
    assert cmd["format"] == "PRP" and cmd["prp1"] == 0xFFFFC200
    assert cmd["prp2_kind"] == "list" and cmd["prp2"] is None          # list page: dma_pool, not modelled
    assert cmd["prp_lists"] == [{"pool": "small", "entries": [0xFFFFD000, 0xFFFFE000, 0xFFFFF000],
                                 "chained": False}]
    [destroy] = kinds(r, "dma_api_calls", "dma_iova_destroy")
    assert destroy.args["mapped_len"] == 0x3000
    assert len(kinds(r, "iotlb_invalidations")) == 1


def test_prp_unaligned_12k_page_hand_derivation():
    # Per segment dma_map_page, 1 page each, top-down from a fresh domain: 0xFFFFF, 0xFFFFE, 0xFFFFD,
    # 0xFFFFC. The first keeps its 0x200 offset: PRP1 = 0xFFFFF200 (0xE00 bytes); then the list walks
    # the next segments: 0xFFFFE000, 0xFFFFD000, 0xFFFFC000.
    r = run_scenario("nvme-unaligned-12k", api="page")
    [cmd] = r.device_view
    assert cmd["prp1"] == 0xFFFFF200
    assert cmd["prp_lists"][0]["entries"] == [0xFFFFE000, 0xFFFFD000, 0xFFFFC000]
    assert r.bookkeeping_bytes == 4 * 16 + 16


def test_prp_kernel_spec_worked_example():
    # NVMe worked example: try_alloc asks 0x6000 (6 pages -> 8, aligned 8) -> node 0xFFFF8-0xFFFFF,
    # state.addr 0xFFFF8200; PRP1 0xFFFF8200; list 0xFFFF9000..0xFFFFD000; one destroy of 0x5600.
    for api in ("iova", "sg"):
        r = run_scenario("nvme-spec-example", api=api)
        [cmd] = r.device_view
        assert cmd["prp1"] == 0xFFFF8200
        assert cmd["prp_lists"][0]["entries"] == [0xFFFF9000, 0xFFFFA000, 0xFFFFB000, 0xFFFFC000, 0xFFFFD000]
    r = run_scenario("nvme-spec-example", api="iova")
    maps = [(e.args["iova"], e.args["paddr"], e.args["size"]) for e in kinds(r, "iommu_map_calls")]
    assert maps == [(0xFFFF8000, 0x12345000, 0x1000), (0xFFFF9000, 0x20000000, 0x1000),
                    (0xFFFFA000, 0x30000000, 0x3000), (0xFFFFD000, 0x40000000, 0x1000)]
    [sync] = kinds(r, "iotlb_syncs")
    assert (sync.args["iova"], sync.args["size"]) == (0xFFFF8000, 0x6000)
    assert kinds(r, "dma_api_calls", "dma_iova_destroy")[0].args["mapped_len"] == 0x5600


def test_nvme_single_segment_fast_path_under_every_path():
    for api in ("page", "sg", "iova"):
        r = run_scenario("nvme-4k-read", api=api)
        assert [e.func for e in kinds(r, "dma_api_calls")] == ["dma_map_page", "dma_unmap_page"]
        assert r.device_view[0]["prp1"] == 0xFFFFF000 and r.device_view[0]["prp2_kind"] == "none"
    r = run_scenario("nvme-4k-read", api="direct")
    assert r.device_view[0]["prp1"] == 0x3FFBB000


def test_nvme_1m_is_split_into_128k_requests_behind_an_iommu():
    r = run_scenario("nvme-1m-direct", api="iova")
    assert [v["payload"] for v in r.device_view] == [0x20000] * 8
    assert r.counters.iova_allocs == 8 and r.counters.iotlb_syncs == 8 and r.counters.iotlb_invalidations == 8
    assert r.counters.iommu_map_calls == 64                  # 8 runs of 16 KiB per request
    # all eight requests are in flight together: eight distinct IOVAs
    assert len({v["prp1"] for v in r.device_view}) == 8
    r = run_scenario("nvme-1m-direct", api="direct")
    assert [v["payload"] for v in r.device_view] == [0x100000]   # no IOMMU: dma_opt_mapping_size unlimited
    assert r.device_view[0]["prp_lists"][0]["pool"] == "large"


def test_nvme_196k_is_128k_plus_68k():
    r = run_scenario("nvme-196k-read", api="iova")
    assert [v["payload"] for v in r.device_view] == [0x20000, 0x11000]
    allocs = kinds(r, "dma_api_calls", "dma_iova_try_alloc")
    # the 17-page request gets a 32-page-aligned slot
    assert allocs[1].args["addr"] % (32 * 4096) == 0


def test_nvme_lazy_settles_the_flush_queue():
    r = run_scenario("nvme-128k-scattered", api="page", strict=False)
    assert r.domain.fq_pending() == 0
    assert r.counters.iova_frees == 32
    assert r.counters.iotlb_invalidations == 1              # one flush_iotlb_all for 32 unmaps


# -------------------------------------------------------------------------------------------- NVMe helpers
def test_prp_list_chaining_at_512_entries():
    # one 4 MiB DMA segment + 0x200 offset: PRP1 covers 0xE00, the other 0x3FF200 bytes need
    # DIV_ROUND_UP(0x3FF200, 0x1000) = 1024 entries: list page 0 holds 511 data entries + the chain
    # link (the 512th entry moves to slot 0 of the next page), page 1 the same, page 2 the last 2.
    base = 0x1_0000_0200
    out = nvme_prp_layout([(base, 0x400000)], 0x400000)
    assert out["prp1"] == base and out["prp2_kind"] == "list"
    lists = out["prp_lists"]
    assert [len(lst["entries"]) for lst in lists] == [511, 511, 2]
    assert [lst["chained"] for lst in lists] == [True, True, False]
    assert all(lst["pool"] == "large" for lst in lists)
    flat = [e for lst in lists for e in lst["entries"]]
    assert flat == [base - 0x200 + 0x1000 * k for k in range(1, 1025)]


@given(off=st.integers(0, 0xFFF).map(lambda x: x & ~3), length=st.integers(1, 0x180000).map(lambda x: x * 4),
       base=st.integers(1, 1 << 20).map(lambda x: x << 12))
@settings(max_examples=200, deadline=None)
def test_prp_layout_properties(off, length, base):
    addr = base + off
    out = nvme_prp_layout([(addr, length)], length)
    first = min(length, NVME_CTRL_PAGE_SIZE - off)
    rest = length - first
    assert out["prp1"] == addr
    if rest == 0:
        assert out["prp2_kind"] == "none"
    elif rest <= NVME_CTRL_PAGE_SIZE:
        assert out["prp2_kind"] == "data" and out["prp2"] == addr + first
    else:
        flat = [e for lst in out["prp_lists"] for e in lst["entries"]]
        n = -(-rest // NVME_CTRL_PAGE_SIZE)
        assert flat == [addr + first + k * NVME_CTRL_PAGE_SIZE for k in range(n)]
        assert all(e % NVME_CTRL_PAGE_SIZE == 0 for e in flat)
        assert out["prp_lists"][0]["pool"] == ("small" if n <= 32 else "large")
        assert all(len(lst["entries"]) == 511 for lst in out["prp_lists"] if lst["chained"])


def test_bio_vecs_merge_and_split():
    bv = bio_vecs({"length": 0x5000, "offset": 0, "phys": {"base": "0x10000000", "stride": "0x4000",
                                                           "run_pages": 2}})
    assert bv == [(0x10000000, 0x2000), (0x10004000, 0x2000), (0x10008000, 0x1000)]
    reqs = blk_split_requests(bv, 0x3000, 256)
    assert reqs == [[(0x10000000, 0x2000), (0x10004000, 0x1000)], [(0x10005000, 0x1000), (0x10008000, 0x1000)]]
    # a gap at the 4 KiB virt boundary starts a new request
    assert blk_split_requests([(0x1000, 0x800), (0x5000, 0x1000)], 0x20000, 256) == [[(0x1000, 0x800)],
                                                                                    [(0x5000, 0x1000)]]
    # physical segments: contiguous bio_vecs merge, a 4 GiB segment boundary does not
    assert blk_map_iter_segments([(0x1000, 0x1000), (0x2000, 0x1000), (0x9000, 0x1000)]) == [
        (0x1000, 0x2000), (0x9000, 0x1000)]
    assert blk_map_iter_segments([(0xFFFFF000, 0x1000), (0x100000000, 0x1000)]) == [
        (0xFFFFF000, 0x1000), (0x100000000, 0x1000)]
    with pytest.raises(ValueError, match="512"):
        bio_vecs({"segments": [[0x1000, 100]]})


# -------------------------------------------------------------------------------------------- HMM
def small_hmm(**over) -> dict:
    p = copy.deepcopy(load_preset("hmm-16mib-strided"))
    p["parameters"].update(over)
    return p


def test_hmm_one_iova_for_the_range_and_one_sync_per_faulted_page():
    # every page faulted twice: the second fault returns state.addr + offset without page-table work
    p = small_hmm(fault_order="repeated", passes=2, invalidate=[[100, 8]])
    r = run_scenario(p, api="iova", strict=True)
    n = 4096
    [alloc] = kinds(r, "dma_api_calls", "dma_iova_try_alloc")
    assert alloc.args["size"] == n * 4096 and alloc.args["phys"] == 0
    assert len(kinds(r, "iova_allocs")) == 1 and len(kinds(r, "iova_frees")) == 1
    assert len(kinds(r, "dma_api_calls", "dma_iova_link")) == n
    syncs = kinds(r, "iotlb_syncs")
    assert len(syncs) == n and all(e.args["size"] == 4096 for e in syncs)
    # invalidation + teardown: one unlink (and one strict invalidation) per mapped page
    assert len(kinds(r, "dma_api_calls", "dma_iova_unlink")) == n
    assert len(kinds(r, "iotlb_invalidations")) == n
    assert len(kinds(r, "dma_api_calls", "dma_iova_free")) == 1
    view = r.device_view
    assert view["mapped"] == n - 8 and view["dma"][100] == 0
    assert view["dma"][5] == view["state_addr"] + 5 * 4096
    assert r.bookkeeping_bytes == 8 * n + 16                  # pfn_list + state, no dma_list


def test_hmm_fault_orders_give_the_same_page_tables_work():
    res = {o: run_scenario(small_hmm(fault_order=o, invalidate=[]), api="iova").counters
           for o in ("sequential", "random", "strided")}
    assert res["sequential"] == res["random"] == res["strided"]


@pytest.mark.parametrize("order", ["random", "repeated"])
def test_hmm_batch_path_matches_per_page_calls(order):
    # run_scenario(keep_events=False) uses the DMA layer's batch helpers when it has them; the tallies
    # (counters, driver calls, every step kind) must equal a page-by-page run
    p = small_hmm(fault_order=order, passes=2, invalidate=[[10, 20], [4000, 96]], refault=True, npages=4096)
    fast = run_scenario(p, api="iova", keep_events=False)
    steps = list(iter_scenario(p, api="iova", keep_events=False, fine=True))
    slow = steps[-1]["result"]
    assert fast.extra["bulk"] and not slow.extra["bulk"]
    assert fast.counters == slow.counters
    assert {k: v for k, v in fast.log.totals.items() if v} == {k: v for k, v in slow.log.totals.items() if v}
    assert np.array_equal(fast.device_view["dma"], slow.device_view["dma"])
    assert fast.bookkeeping_bytes == slow.bookkeeping_bytes
    assert fast.domain.snapshot() == slow.domain.snapshot()


def test_hmm_fallback_page_path():
    p = small_hmm(fault_order="repeated", passes=2, invalidate=[], npages=256)
    r = run_scenario(p, api="page")
    assert r.counters.iova_allocs == 256                      # one dma_map_page per first fault
    assert len(kinds(r, "dma_api_calls", "dma_map_page")) == 256
    assert len(kinds(r, "dma_api_calls", "dma_unmap_page")) == 256
    assert not kinds(r, "dma_api_calls", "dma_iova_try_alloc")
    assert r.bookkeeping_bytes == 8 * 256 + 8 * 256 + 16      # pfn_list + dma_list + state
    r = run_scenario(p, api="direct")
    # no dma_list (dma_need_unmap false): every fault, also the repeated one, calls dma_map_page
    assert len(kinds(r, "dma_api_calls", "dma_map_page")) == 512
    assert r.counters.iova_allocs == 0 and r.bookkeeping_bytes == 8 * 256 + 16


def test_hmm_random_order_is_deterministic():
    from iovalab.drivers.hmm import fault_order
    a = fault_order({"fault_order": "random", "seed": 7}, 1000)
    b = fault_order({"fault_order": "random", "seed": 7}, 1000)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(1000))
    s = fault_order({"fault_order": "strided", "stride": 4}, 8)
    assert s.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_hmm_rejects_sg():
    with pytest.raises(ValueError, match="valid: iova, page, direct"):
        run_scenario("hmm-16mib-strided", api="sg")


# -------------------------------------------------------------------------------------------- VFIO
def test_vfio_iova_register_unregister():
    r = run_scenario("vfio-migration-4mib", api="iova")
    n = 1024
    funcs = [e.func for e in kinds(r, "dma_api_calls")]
    assert funcs == ["dma_iova_try_alloc"] + ["dma_iova_link"] * n + ["dma_iova_sync", "dma_iova_destroy"]
    assert len(kinds(r, "iova_allocs")) == 1 and len(kinds(r, "iotlb_syncs")) == 1
    assert len(kinds(r, "iotlb_invalidations")) == 1 and len(kinds(r, "iova_frees")) == 1
    mtt = r.device_view["mtt"]
    assert mtt.tolist() == [r.device_view["state_addr"] + 4096 * i for i in range(n)]
    assert r.bookkeeping_bytes == 8 * n + 16


def test_vfio_page_and_sg_variants():
    r = run_scenario("vfio-migration-4mib", api="page")
    assert r.counters.iova_allocs == 1024 and r.counters.iotlb_invalidations == 1024
    unmaps = kinds(r, "dma_api_calls", "dma_unmap_page")
    assert [e.args["dma_addr"] for e in unmaps] == r.device_view["mtt"][::-1].tolist()  # reverse order
    r = run_scenario("vfio-migration-4mib", api="sg")
    # runs of 4 contiguous pages -> 256 scatterlist entries, one IOVA, a map call per run
    assert r.extra["sg_entries"] == 256
    assert r.counters.iova_allocs == 1 and r.counters.iommu_map_calls == 256 and r.counters.iotlb_syncs == 1
    assert r.bookkeeping_bytes == SIZEOF["struct sg_append_table"] + 32 * sg_slots(256)
    mtt = r.device_view["mtt"]
    assert np.all(np.diff(mtt.astype(np.int64)) == 4096)       # one contiguous IOVA range
    t1 = r.extra["vfio_type1"]
    assert t1["iova_allocs"] == 0 and t1["iommu_map_calls"] == 256 and t1["iotlb_invalidations"] == 1
    assert "counting-only" in t1["model"]


def test_sg_slots_chaining():
    assert sg_slots(128) == 128
    assert sg_slots(129) == 130          # 127 + link, then 2
    assert sg_slots(128 + 127) == 256


# -------------------------------------------------------------------------------------------- steps, layering
def test_iter_scenario_steps_add_up():
    steps = list(iter_scenario("nvme-unaligned-12k", api="iova"))
    assert steps[-1]["driver"] == "done"
    res = steps[-1]["result"]
    total = {}
    for s in steps:
        for k, v in s["counters"].as_dict().items():
            total[k] = total.get(k, 0) + v
    assert total == res.counters.as_dict()
    assert sum(len(s["events"]) for s in steps) == len(res.log.events)
    drivers = [s["driver"] for s in steps]
    assert "blk_rq_dma_map_iter_start" in drivers and "nvme_unmap_data" in drivers
    assert all(isinstance(s["what"], str) and s["what"] for s in steps)


def test_scenarios_use_only_the_dma_layer():
    forbidden = ("iovalab.kernel.iova", "iovalab.kernel.iommu", "iovalab.kernel.pgtable")

    def bad(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    for path in SCEN.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    base = node.module or ""
                else:   # resolve relative to iovalab/scenarios/
                    pkg = ["iovalab", "scenarios"][: 3 - node.level] if node.level <= 2 else []
                    base = ".".join(pkg + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                assert not bad(n), f"{path.name} imports {n}"
        text = path.read_text()
        for attr in (".iovad", ".iommu.", ".pgtable", "importlib"):
            assert attr not in text, f"{path.name} reaches into DMA-layer internals ({attr})"


def test_bookkeeping_tracks_peak():
    b = Bookkeeping()
    b.add("a", 10)
    b.add("b", 5)
    b.remove("a", 10)
    b.add("a", 2)
    assert (b.current, b.peak, b.peak_breakdown) == (7, 15, {"a": 10, "b": 5})
    with pytest.raises(ValueError):
        b.remove("b", 6)


# -------------------------------------------------------------------------------------------- CLI
def ns(**kw) -> argparse.Namespace:
    d = {"preset": None, "api": "iova", "json": False, "cost_preset": None, "lazy": False}
    d.update(kw)
    return argparse.Namespace(**d)


def test_cli_json_keys(capsys):
    assert cli(ns(preset="nvme-128k-scattered", api="sg", json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    for k in COUNTER_KEYS:
        assert isinstance(out[k], int), k
    assert set(COUNTER_KEYS) >= {"iova_allocs", "iova_frees", "rcache_hits", "iommu_map_calls", "pte_writes",
                                 "table_pages", "iotlb_syncs", "iotlb_invalidations", "swiotlb_bounces",
                                 "dma_api_calls", "bookkeeping_bytes"}
    assert out["iova_allocs"] == 1 and out["iommu_map_calls"] == 32
    assert isinstance(out["modelled_ns"], dict) and out["modelled_ns"]


def test_cli_text_says_modelled_and_lists_presets(capsys):
    assert cli(ns(preset="nvme-4k-read", api="page", lazy=True)) == 0
    out = capsys.readouterr().out
    assert "modelled" in out and "lazy" in out and "bookkeeping_bytes" in out
    assert cli(ns()) == 0
    out = capsys.readouterr().out
    for n in REQUIRED:
        assert n in out


def test_cli_bad_api(capsys):
    assert cli(ns(preset="hmm-16mib-strided", api="sg")) == 2
    err = capsys.readouterr().err
    assert "'sg'" in err and "iova, page, direct" in err
    assert cli(ns(preset="nvme-4k-read", api="bogus")) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "page, sg, iova, direct" in err
    assert cli(ns(preset="no-such", api="iova")) == 2


def test_valid_apis():
    assert valid_apis("nvme-4k-read") == ("page", "sg", "iova", "direct")
    assert valid_apis("vfio-migration-4mib") == ("iova", "page", "sg", "direct")
    assert valid_apis("hmm-1gib-random") == ("iova", "page", "direct")


def test_module_entry_points_take_preset_names():
    from iovalab.drivers import nvme_pci as nvme
    from iovalab.drivers import vfio_mlx5 as vfio
    r = nvme.run("nvme-4k-read", api="page")
    assert r.counters.iova_allocs == 1 and r.api == "page"
    steps = list(vfio.iter_steps("vfio-migration-4mib", api="sg"))
    assert [s["driver"] for s in steps] == ["sg_alloc_append_table_from_pages", "dma_map_sgtable",
                                            "unregister_dma_pages"]
    with pytest.raises(ValueError, match="expected a 'vfio' preset"):
        vfio.run("nvme-4k-read")


# -------------------------------------------------------------------------------------------- PAGE_SIZE
def _read(iommu, length, offset=0, mdts=0, kernel=None):
    params = {"direction": "read", "length": length, "offset": offset,
              "phys": {"base": "0x60000000", "stride": "0x20000", "run_pages": 1}}
    if mdts:
        params["mdts"] = mdts
    return run_scenario({"name": "t", "scenario": "nvme", "device": "nvme", "iommu": iommu,
                         "parameters": params}, api="iova", strict=True, kernel=kernel)


def test_nvme_queue_limits_follow_the_kernels_page_size_not_the_granule():
    """nvme_pci_alloc_dev: max_hw_sectors <= dma_opt_mapping_size() = iova_rcache_range() = PAGE_SIZE << 5;
    nvme_max_drv_segments = max_hw_sectors / 4 KiB + 1. The arm64 captures (Linux 7.3.4, QEMU NVMe with
    a 512 KiB MDTS): max_sectors_kb 128 / max_segments 33 with 4 KiB pages, 512 / 129 with 64 KiB pages,
    so a 1 MiB read is eight 128 KiB requests or (MDTS aside) one."""
    from iovalab.drivers.nvme_pci import dma_opt_mapping_size_iommu, nvme_max_drv_segments

    assert dma_opt_mapping_size_iommu(0x1000) == 128 << 10 and dma_opt_mapping_size_iommu(0x10000) == 2 << 20
    assert nvme_max_drv_segments(128 << 10) == 33 and nvme_max_drv_segments(512 << 10) == 129
    # no MDTS here: 128 KiB with 4 KiB pages, 2 MiB with 64 KiB pages, whatever the granule
    for iommu, reqs in (("smmuv3-4k", 8), ("smmuv3-64k", 1), ({"preset": "smmuv3-4k", "page_size": 0x10000}, 1)):
        r = _read(iommu, 1 << 20)
        assert (r.extra["requests"], r.extra["max_transfer"]) == (reqs, 128 << 10 if reqs == 8 else 2 << 20), iommu


def test_nvme_single_segment_path_counts_kernel_pages():
    """An 8 KiB buffer at offset 0x600 spans three 4 KiB pages (three segments: the two-step API) but
    lies inside one 64 KiB page (one segment: dma_map_phys), as the 64K capture's 8 KiB reads show."""
    small = _read("smmuv3-4k", 0x2000, offset=0x600)
    assert len(kinds(small, "dma_api_calls", "dma_iova_try_alloc")) == 1
    assert not kinds(small, "dma_api_calls", "dma_map_page")
    big = _read("smmuv3-64k", 0x2000, offset=0x600, kernel="6.17")
    assert len(kinds(big, "dma_api_calls", "dma_map_page")) == 1
    assert not kinds(big, "dma_api_calls", "dma_iova_try_alloc")
    # 7.3.4 (blk_iova_gap_mask): no PRP for 0x600 + 8 KiB on a PRP-only controller, so the iterator; one
    # bio_vec has no seam, req_phys_gap_mask is 0 and the 64 KiB merge boundary no longer refuses the IOVA path
    big73 = _read("smmuv3-64k", 0x2000, offset=0x600, kernel="7.3")
    assert len(kinds(big73, "dma_api_calls", "dma_iova_try_alloc")) == 1
    assert not kinds(big73, "dma_api_calls", "dma_map_page")


def _vfio(iommu, api="iova", npages=8, **phys):
    return run_scenario({"name": "t", "scenario": "vfio", "device": "mlx5", "iommu": iommu,
                         "parameters": {"npages": npages, **({"phys": phys} if phys else {})}}, api=api, strict=True)


def test_vfio_page_array_entries_are_kernel_pages():
    """register_dma_pages (drivers/vfio/pci/mlx5/cmd.c, 6.16): one MTT entry per struct page, PAGE_SIZE
    each (dma_iova_try_alloc(0, npages * PAGE_SIZE), dma_iova_link(.., PAGE_SIZE, ..), log_page_size =
    PAGE_SHIFT): with a 64 KiB kernel each of the 8 entries is 64 KiB, also behind a 4 KiB granule."""
    for iommu, page in (("smmuv3-4k", 0x1000), ("smmuv3-64k", 0x10000),
                        ({"preset": "smmuv3-4k", "page_size": 0x10000}, 0x10000)):
        r = _vfio(iommu)
        (alloc,) = kinds(r, "dma_api_calls", "dma_iova_try_alloc")
        assert alloc.args["size"] == 8 * page, iommu
        links = kinds(r, "dma_api_calls", "dma_iova_link")
        assert [e.args["size"] for e in links] == [page] * 8, iommu
        mtt = r.device_view["mtt"]
        assert len(mtt) == 8 and all(int(b) - int(a) == page for a, b in zip(mtt, mtt[1:], strict=False)), iommu
        assert r.device_view["log_page_size"] == page.bit_length() - 1
    sg = _vfio("smmuv3-64k", api="sg", run_pages=2, stride=0x40000)   # pairs of contiguous 64 KiB pages
    assert sg.extra["sg_entries"] == 4


def test_hmm_entries_are_the_simulated_kernels_pages():
    """hmm_range_fault() fills pfn_list per kernel page: on a 64 KiB kernel (smmuv3-64k) an entry is 64 KiB,
    the reservation is nr_entries * 64 KiB (ib_init_umem_odp(), drivers/infiniband/core/umem_odp.c, 7.3.4),
    and an entry_size below PAGE_SIZE is refused naming the value and the rule."""
    from iovalab.drivers import run_workload
    base = {"name": "hmm-64k", "scenario": "hmm", "device": "mlx5", "iommu": "smmuv3-64k",
            "parameters": {"npages": 64, "fault_order": "sequential", "phys": {"base": "0x100000000",
                                                                              "stride": "0x20000"}}}
    r = run_workload(base, api="iova")
    dom = r.domain
    assert dom is not None and dom.page_size == 0x10000
    allocs = [e for e in r.log.events if e.kind == "dma_api_calls" and e.func == "dma_iova_try_alloc"]
    assert allocs and allocs[0].args["size"] == 64 * 0x10000
    links = [e for e in r.log.events if e.kind == "dma_api_calls" and e.func == "dma_iova_link"]
    assert links and all(e.args["size"] == 0x10000 for e in links)
    bad = dict(base, parameters=dict(base["parameters"], entry_size=0x1000))
    with pytest.raises(ValueError, match=r"entry_size 4096 .*PAGE_SIZE 0x10000"):
        run_workload(bad, api="iova")
