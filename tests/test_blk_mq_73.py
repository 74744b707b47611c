"""block/blk-mq-dma.c and drivers/nvme/host/pci.c under Linux 6.17 and 7.3.4: the differences
blk_iova_link_unwind, blk_iova_gap_mask and blk_nvme_map_phys of iovalab.kernel.version.DIFFERENCES,
each run under both versions."""

import copy

import pytest

from iovalab.drivers import load_preset
from iovalab.drivers.blk_mq_dma import (
    BLK_STS_RESOURCE, BlkRequest, FailNthLink, blk_can_dma_map_iova, req_phys_gap_mask,
)
from iovalab.drivers.common import as_context
from iovalab.drivers.nvme_pci import NvmeError, iter_steps
from iovalab.kernel.units import DmaError
from iovalab.kernel.version import DIFFERENCES
from iovalab.lab.scenarios import run_scenario, with_kernel


def _ctx(name, kernel, api="iova", follow_kernel=False, **params):
    p = copy.deepcopy(load_preset(name))
    p["parameters"].update(params)
    p = with_kernel(p, kernel)
    if follow_kernel:
        p["iommu"]["follow_kernel"] = True
    return as_context(p, api, "nvme", "nvme")


def _api(log):
    return [(e.func, e.result) for e in log.events if e.kind == "dma_api_calls"]


def test_differences_are_recorded_once_with_their_source():
    for name, func in (("blk_iova_link_unwind", "blk_rq_dma_map_iova()"),
                       ("blk_iova_gap_mask", "blk_can_dma_map_iova()"),
                       ("blk_nvme_map_phys", "blk_dma_map_direct()")):
        d = DIFFERENCES[name]
        assert d.since == "7.3" and "block/blk-mq-dma.c" in d.source and func in d.source
    assert "nvme_pci_get_virt_boundary()" in DIFFERENCES["blk_iova_gap_mask"].source


def test_fail_nth_link_is_explicit_and_validated():
    f = FailNthLink(2)
    assert [f(), f(), f()] == [0, -12, 0]          # the 2nd link fails, once
    for bad in (0, -1, True, "2", 1.0):
        with pytest.raises(ValueError, match="fail_iova_link"):
            FailNthLink(bad)


# nvme-unaligned-12k: 4 segments (0x50000200+0xE00, 0x50002000+0x1000, 0x50004000+0x1000, 0x50006000+0x200),
# one IOVA of 4 pages at 0xFFFFC000 (state.addr 0xFFFFC200); the 3rd link (offset 0x1E00) fails.
def test_link_error_617_is_lost_and_the_tail_stays_unlinked():
    """6.17 blk_rq_dma_map_iova(): break, dma_iova_sync(0, mapped) returns 0, success."""
    ctx = _ctx("nvme-unaligned-12k", "6.17", follow_kernel=True, fail_iova_link=3)
    gen = iter_steps(ctx)
    for s in gen:
        if "lost (6.17)" in s["what"]:
            break
    else:
        pytest.fail("no lost-error step")
    api = _api(ctx.log)
    assert api == [("dma_iova_try_alloc", True), ("dma_iova_link", 0), ("dma_iova_link", 0), ("dma_iova_sync", 0)]
    [err] = [e for e in ctx.log.events if e.kind == "error"]
    assert err.func == "dma_iova_link" and err.result == -12 and "injected" in err.args["rule"]
    sync = [e for e in ctx.log.events if e.func == "dma_iova_sync"][0]
    assert sync.args["size"] == 0x1E00
    iommu = ctx.domain.iommu
    # the command is built over the whole reserved range; only [0, 0x2000) of the IOVA is linked
    assert iommu.device_access(0xFFFFD000, write=True) == 0x50002000
    assert iommu.device_access(0xFFFFE000, write=True) is None                   # the device would fault here
    for _ in gen:
        pass
    [cmd] = ctx.device_view
    assert cmd["dma_segments"] == [(0xFFFFC200, 0x3000)] and cmd["prp1"] == 0xFFFFC200
    # completion: dma_iova_destroy(total_len 0x3000) over the unlinked tail; VT-d 6.17 clears past the hole
    [destroy] = [e for e in ctx.log.events if e.func == "dma_iova_destroy" and e.kind == "dma_api_calls"]
    assert destroy.args["mapped_len"] == 0x3000
    assert ctx.domain.mapped_granules(0xFFFFC000, 0x4000) == []


def test_link_error_617_default_domain_refuses_the_unmap_of_the_hole():
    ctx = _ctx("nvme-unaligned-12k", "6.17", fail_iova_link=3)
    with pytest.raises(DmaError, match="not mapped"):
        for _ in iter_steps(ctx):
            pass
    assert any(e.kind == "warn" and e.func == "dma_iova_destroy" for e in ctx.log.events)


@pytest.mark.parametrize("nth, mapped", [(3, 0x1E00), (1, 0)])
def test_link_error_73_unwinds_with_destroy_and_sets_status(nth, mapped):
    """7.3.4 blk_rq_dma_map_iova(): out_unlink: dma_iova_destroy(mapped); iter->status = BLK_STS_RESOURCE."""
    ctx = _ctx("nvme-unaligned-12k", "7.3", fail_iova_link=nth)
    with pytest.raises(NvmeError, match=BLK_STS_RESOURCE):
        for _ in iter_steps(ctx):
            pass
    api = _api(ctx.log)
    links = [("dma_iova_link", 0)] * (nth - 1)
    tail = [("dma_iova_destroy", None)] if mapped else [("dma_iova_free", None)]
    assert api == [("dma_iova_try_alloc", True), *links, *tail]
    assert "dma_iova_sync" not in [f for f, _ in api]
    if mapped:
        [d] = [e for e in ctx.log.events if e.func == "dma_iova_destroy" and e.kind == "dma_api_calls"]
        assert d.args["mapped_len"] == mapped
        assert sum(e.kind == "iotlb_invalidations" for e in ctx.log.events) == 1   # the unlink's own sync
    # nothing left: no PTE, the IOVA back in the allocator, no command built
    assert ctx.domain.mapped_granules(0xFFFFC000, 0x4000) == []
    assert sum(e.kind == "iova_frees" for e in ctx.log.events) == 1
    assert ctx.device_view == []


def _rq(bvecs):
    return BlkRequest(0, 0, bvecs, bvecs, 2)


def test_req_phys_gap_mask():
    assert req_phys_gap_mask(_rq([(0x1000, 0x1000)])) == 0                       # one bio_vec: no seam
    # seam at page boundaries: gaps = 0x1000 -> ffs 13 -> bits 12 and up
    assert req_phys_gap_mask(_rq([(0x1000, 0x1000), (0x5000, 0x1000)])) == ~0xFFF & ((1 << 64) - 1)
    # first ends at 0x800, second starts at 0x400: gaps = 0xC00, ffs 11 -> bits 10 and up
    m = req_phys_gap_mask(_rq([(0x1000, 0x800), (0x5400, 0x800)]))
    assert m == ~0x3FF & ((1 << 64) - 1) and m & 0xFFF == 0xC00
    # an unaligned start of the first bio_vec is not a seam
    assert req_phys_gap_mask(_rq([(0x1200, 0xE00), (0x5000, 0x1000)])) & 0xFFF == 0


@pytest.mark.parametrize("kernel, can", [("6.17", False), ("7.3", True)])
def test_iova_path_tests_queue_boundary_in_617_request_gaps_in_73(kernel, can):
    """No virt boundary on the queue (0) and page-aligned seams: 6.17 (0 + 1) & 0xFFF = 1 -> per segment;
    7.3.4 req_phys_gap_mask & 0xFFF = 0 -> the IOVA path."""
    ctx = _ctx("nvme-unaligned-12k", kernel)
    ok, why = blk_can_dma_map_iova(ctx, 0, _rq([(0x1000, 0x1000), (0x5000, 0x1000)]))
    assert ok is can and ("req_phys_gap_mask" in why) == (kernel == "7.3")
    r = run_scenario(with_kernel(_params("nvme-128k-scattered", virt_boundary_mask=0), kernel), api="iova")
    assert {v["path"] for v in r.device_view} == (
        {"IOVA (dma_iova_link per segment)"} if can else {"dma_map_page per segment"})


def _params(name, **params):
    p = copy.deepcopy(load_preset(name))
    p["parameters"].update(params)
    return p


@pytest.mark.parametrize("kernel", ["6.17", "7.3"])
def test_sgl_queue_with_a_seam_inside_a_page(kernel):
    """Two bio_vecs whose seam is inside a page (end 0x800, start 0x400) on an SGL-capable I/O queue.
    6.17: virt boundary 0xFFF splits them into two single-segment requests (dma_map_page each).
    7.3.4: nvme_pci_get_virt_boundary() = 0, one request; req_phys_gap_mask & 0xFFF = 0xC00: not the IOVA
    path, SGL_FORCED, dma_map_phys per segment, nvme_free_sgls: dma_unmap_phys per segment."""
    p = _params("nvme-128k-scattered-sgl", segments=[[0x10000000, 0x800], [0x20000400, 0x800]])
    r = run_scenario(with_kernel(p, kernel), api="iova")
    funcs = [e.func for e in r.log.events if e.kind == "dma_api_calls"]
    if kernel == "6.17":
        assert len(r.device_view) == 2 and all(v["path"].startswith("single") for v in r.device_view)
        assert funcs == ["dma_map_page", "dma_map_page", "dma_unmap_page", "dma_unmap_page"]
    else:
        [cmd] = r.device_view
        assert cmd["path"] == "dma_map_phys per segment" and cmd["format"] == "SGL"
        assert [d["length"] for d in cmd["descriptors"]] == [0x800, 0x800]
        assert funcs == ["dma_map_phys", "dma_map_phys", "dma_unmap_phys", "dma_unmap_phys"]


@pytest.mark.parametrize("kernel, mapf, unmapf", [("6.17", "dma_map_page", "dma_unmap_page"),
                                                 ("7.3", "dma_map_phys", "dma_unmap_phys")])
def test_completion_per_segment_and_coalesced(kernel, mapf, unmapf):
    """Per-segment (api=page): blk_dma_map_direct + nvme_free_prps use the version's call; coalesced
    (api=iova): one dma_iova_destroy(mapped_len = iod->total_len) in both; single segment: dma_map_bvec,
    i.e. dma_map_page (7.3.4 routes it through dma_map_phys, whose trace line the exporter writes)."""
    r = run_scenario(with_kernel("nvme-unaligned-12k", kernel), api="page")
    funcs = [e.func for e in r.log.events if e.kind == "dma_api_calls"]
    assert funcs == [mapf] * 4 + [unmapf] * 4
    r = run_scenario(with_kernel("nvme-unaligned-12k", kernel), api="iova")
    [d] = [e for e in r.log.events if e.kind == "dma_api_calls" and e.func == "dma_iova_destroy"]
    assert d.args["mapped_len"] == 0x3000
    r = run_scenario(with_kernel("nvme-4k-read", kernel), api="iova")
    assert [e.func for e in r.log.events if e.kind == "dma_api_calls"] == ["dma_map_page", "dma_unmap_page"]
