"""The NVMe PCI driver's data path under every mapping path: ``drivers/nvme/host/pci.c``.

Mirrors (Linux 6.17 unless said otherwise; Linux 7.3.4 keeps these functions in
drivers/nvme/host/pci.c): ``nvme_map_data``, ``nvme_pci_setup_data_simple``, ``nvme_pci_setup_data_prp``,
``nvme_pci_setup_data_sgl``, ``nvme_pci_use_sgls``, ``nvme_pci_avg_seg_size``, ``nvme_pci_prp_iter_next``,
``nvme_unmap_data`` (drivers/nvme/host/pci.c), the queue limits of ``nvme_pci_alloc_dev`` and
``nvme_max_drv_segments`` (drivers/nvme/host/core.c), and the scenario's entry points
(:func:`iter_steps`, :func:`run`). The block layer it calls (``blk_rq_dma_map_iter_start`` and
friends, bio_vec splitting) is :mod:`iovalab.drivers.blk_mq_dma` (block/blk-mq-dma.c). The ``sg`` path
is the 6.12-6.16 driver (``blk_rq_map_sg`` + ``dma_map_sgtable``,
``nvme_pci_setup_prps``/``nvme_pci_setup_sgls``) that the real capture in data/real/ (Linux 6.12) shows.

Mapping paths (``api``):

* ``"iova"`` - the 6.17 block layer: ``blk_can_dma_map_iova()`` (the queue's virt boundary, 4 KiB
  for NVMe, must be a multiple of the IOMMU granule) and ``dma_iova_try_alloc(dev, state,
  first.paddr, payload)`` -> one IOVA for the whole request, ``dma_iova_link`` per physical segment,
  one ``dma_iova_sync``; completion: one ``dma_iova_destroy``. If either test fails the request falls
  back to per-segment ``dma_map_page`` exactly as the kernel does (e.g. a 16K/64K-granule SMMU).
* ``"page"`` - the same 6.17 code when the IOVA branch is not taken (as when
  ``blk_can_dma_map_iova()`` is false): ``blk_dma_map_direct()`` = one ``dma_map_page`` per physical
  segment, recorded in ``iod->dma_vecs`` for unmap; completion: ``dma_unmap_page`` per segment.
* ``"sg"`` - 6.12-6.16: ``dma_map_sgtable`` over the request's scatterlist (one IOVA for the list,
  a map call per physically contiguous run, one sync); completion: one ``dma_unmap_sg``.
* ``"direct"`` - no IOMMU (see :class:`~iovalab.drivers.common.DirectDma`): ``dma_iova_try_alloc``
  is false, each segment's DMA address is its physical address; ``dma_need_unmap()`` is false so the
  block layer skips the unmaps (the single-segment path still calls ``dma_unmap_page``, as the driver
  does unconditionally).

Kernel versions (the domain's ``kernel``, :data:`iovalab.kernel.version.DIFFERENCES`): under 7.3.4 an
SGL-capable I/O queue has no virt boundary (``nvme_pci_get_virt_boundary()``), so a request may carry
seams inside a page; it is ``SGL_FORCED`` and takes the IOVA path only if ``req_phys_gap_mask(req)``
clears the merge boundary (``blk_iova_gap_mask``); per-segment mappings are ``dma_map_phys`` /
``dma_unmap_phys`` (``blk_nvme_map_phys``); a ``dma_iova_link`` error fails the request with
``BLK_STS_RESOURCE`` after ``dma_iova_destroy(mapped)`` where 6.17 lost it (``blk_iova_link_unwind``;
injected with the lab parameter ``fail_iova_link: N``, see :class:`~iovalab.drivers.blk_mq_dma.FailNthLink`).

In every path a request with exactly one physical segment takes the driver's single-segment fast path
(``nvme_pci_setup_data_simple``, 6.12: ``nvme_setup_prp_simple``/``nvme_setup_sgl_simple``): one
``dma_map_page`` ("dma_map_bvec"), never the IOVA API - the block layer's comment: "there is no point
in using the slightly more complicated IOVA based path for single segment mappings".

The I/O buffer: ``parameters.segments`` (explicit ``[[phys, len], ...]`` bio_vecs) or a user buffer
``length``/``offset`` whose page i lives at ``phys.base + (i // run_pages) * phys.stride + (i %
run_pages) * 4096``. Physically contiguous pieces form one multi-page bio_vec (``bio_add_page`` merges
them). The I/O is split into requests (``bio_split_rw``) at ``max_hw_sectors`` =
``min(NVME_MAX_BYTES, dma_opt_mapping_size(dev), MDTS)`` - 128 KiB behind an IOMMU
(``dma_opt_mapping_size`` = ``iova_rcache_range()`` = ``PAGE_SIZE << 5``), 8 MiB (or MDTS) with
dma-direct - at ``NVME_MAX_SEGS`` segments (256; 128 before 6.17) and wherever two bio_vecs leave a
gap at the 4 KiB virt boundary. All requests of one I/O are in flight together (mapped in order,
then completed in order), as the real capture's 1 MiB reads show.

Model limits (stated, not hidden): the descriptor pages (PRP lists, SGL segments) come from
``dma_pool`` memory mapped once at probe time; their DMA addresses are not modelled (shown as
``prp2_kind="list"`` with ``prp2=None``) and they take no IOVA here, so a fresh domain's first
request gets the first IOVA (as in the worked example of notebooks/04-two-step-api and
tests/test_dma.py). Splitting ignores the logical
block size beyond requiring a 512-byte multiple; no integrity metadata.

Peer-to-peer (``p2p`` parameter, 7.3.4 only): the IOVA/page/direct paths follow
:mod:`~iovalab.drivers.blk_mq_dma`; the ``sg`` path is 6.12's ``nvme_map_data`` (a P2P page never takes
the single-segment path, ``is_pci_p2pdma_page()``; ``dma_map_sgtable`` returning ``-EREMOTEIO`` is
``BLK_STS_TARGET``) over 7.3.4's ``iommu_dma_map_sg()`` (bus addresses marked and skipped at unmap;
through the host bridge mapped like memory, without ``IOMMU_MMIO``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from iovalab.kernel.dma_iommu import (
    DMA_ATTR_MMIO, DMA_FROM_DEVICE, DMA_TO_DEVICE, DmaIovaState, ScatterEntry, dma_use_iova,
)
from iovalab.kernel.p2pdma import PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE
from iovalab.kernel.device import NVME_CTRL_PAGE_SIZE
from iovalab.kernel.units import DMA_MAPPING_ERROR, EREMOTEIO, PAGE_SIZE, SZ_128K, hx
from iovalab.kernel.version import behaves
from iovalab.drivers.blk_mq_dma import (
    BLK_STS_INVAL, FailNthLink, blk_kernel, req_phys_gap_mask,
    BlkDmaIter, BlkRequest, bio_vecs, blk_map_iter_segments, blk_rq_dma_map_iter_next, blk_rq_dma_map_iter_start,
    blk_rq_dma_unmap, blk_split_requests,
)
from iovalab.drivers.common import SIZEOF, ScenarioContext, Step, as_context, int_param, make_run

__all__ = [
    "APIS", "NVME_CTRL_PAGE_SIZE", "dma_opt_mapping_size_iommu", "nvme_max_drv_segments",
    "NVME_SMALL_POOL_SIZE", "NVME_MAX_BYTES", "NVME_MAX_SEGS",
    "NVME_MAX_SEGS_PRE_6_17", "NVME_SGL_DESC_SIZE", "PRPS_PER_PAGE", "SGL_THRESHOLD_DEFAULT",
    "SGL_UNSUPPORTED", "SGL_SUPPORTED", "SGL_FORCED", "NvmeError", "NvmeRequest", "nvme_prp_layout",
    "iter_steps", "run",
]

#: mapping paths this scenario runs under
APIS = ("page", "sg", "iova", "direct")

NVME_SMALL_POOL_SIZE = 256          # pci.c: "Optimisation for I/Os between 4k and 128k"
NVME_MAX_BYTES = 8 << 20            # pci.c (6.17); NVME_MAX_KB_SZ 8192 before
NVME_SGL_DESC_SIZE = 16             # sizeof(struct nvme_sgl_desc)
NVME_MAX_SEGS = NVME_CTRL_PAGE_SIZE // NVME_SGL_DESC_SIZE   # 256 (6.17)
NVME_MAX_SEGS_PRE_6_17 = 128        # pci.c 6.3-6.16
PRPS_PER_PAGE = NVME_CTRL_PAGE_SIZE // 8 - 1                 # 511 (the last slot chains)
SGL_THRESHOLD_DEFAULT = 32 * 1024   # module parameter sgl_threshold
#: ``dma_opt_mapping_size()`` behind an IOMMU with 4 KiB pages: ``iova_rcache_range()`` =
#: ``PAGE_SIZE << (6 - 1)`` (:func:`dma_opt_mapping_size_iommu` for another ``PAGE_SIZE``)
DMA_OPT_MAPPING_SIZE_IOMMU = SZ_128K


def dma_opt_mapping_size_iommu(page_size: int = PAGE_SIZE) -> int:
    """``dma_opt_mapping_size()`` -> ``iommu_dma_opt_mapping_size()`` = ``iova_rcache_range()``
    (drivers/iommu/dma-iommu.c, iova.c; 6.17 and 7.3): ``PAGE_SIZE << 5``, the kernel's page, not
    the IOVA granule: 128 KiB with 4 KiB pages, 2 MiB with 64 KiB pages."""
    return page_size << 5   # IOVA_RANGE_CACHE_MAX_SIZE - 1


def nvme_max_drv_segments(max_hw_bytes: int) -> int:
    """``nvme_max_drv_segments()`` (drivers/nvme/host/core.c, 6.17 and 7.3): ``max_hw_sectors /
    (NVME_CTRL_PAGE_SIZE >> SECTOR_SHIFT) + 1``; the queue's ``max_segments`` is the smaller of this
    and the driver's ``NVME_MAX_SEGS`` (33 for 128 KiB requests, 129 for 512 KiB)."""
    return max_hw_bytes // NVME_CTRL_PAGE_SIZE + 1

# enum nvme_use_sgl (pci.c 6.17)
SGL_UNSUPPORTED, SGL_SUPPORTED, SGL_FORCED = 0, 1, 2
_SGL_NAMES = {0: "SGL_UNSUPPORTED", 1: "SGL_SUPPORTED", 2: "SGL_FORCED"}


class NvmeError(RuntimeError):
    """The driver would fail the request (BLK_STS_RESOURCE / BLK_STS_IOERR); the message says why."""


# ============================================================================================ PRP layout
def nvme_prp_layout(dma_segments: list[tuple[int, int]], length: int) -> dict:
    """PRP entries for DMA segments ``[(addr, len), ...]`` carrying ``length`` payload bytes, as
    ``nvme_pci_setup_data_prp`` (and 6.12's ``nvme_pci_setup_prps``) fill the command.

    Pure function (the scenario runs the same walk with lazy mapping): ``{"prp1", "prp2",
    "prp2_kind": "none"|"data"|"list", "prp_lists": [{"pool", "entries", "chained"}]}``. Raises
    :class:`NvmeError` where the driver WARNs "Incorrectly formed request".
    """
    segs = list(dma_segments)
    if not segs:
        raise ValueError("no DMA segments")
    state = {"i": 0, "addr": segs[0][0], "len": segs[0][1]}

    def nxt() -> bool:
        if state["len"]:
            return True
        state["i"] += 1
        if state["i"] >= len(segs):
            return False
        state["addr"], state["len"] = segs[state["i"]]
        return True

    gen = _prp_walk(state, length, nxt)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _prp_walk(it: dict, length: int, iter_next) -> Generator[Step, None, dict]:
    """The PRP walk of ``nvme_pci_setup_data_prp`` over an iterator ``it`` (``addr``/``len``);
    ``iter_next()`` returns a bool or a generator of steps returning one (lazy mapping)."""

    def advance() -> Generator[Step, None, bool]:
        r = iter_next()
        if isinstance(r, bool):
            return r
        return (yield from r)

    prp1 = it["addr"]
    prp_len = min(length, NVME_CTRL_PAGE_SIZE - (it["addr"] & (NVME_CTRL_PAGE_SIZE - 1)))
    it["addr"] += prp_len
    it["len"] -= prp_len
    length -= prp_len
    out = {"prp1": prp1, "prp2": None, "prp2_kind": "none", "prp_lists": []}
    if not length:
        return out
    if not (yield from advance()):
        raise NvmeError("Incorrectly formed request: the iterator ran out after PRP1 (WARN_ON_ONCE)")
    if length <= NVME_CTRL_PAGE_SIZE:
        out["prp2"], out["prp2_kind"] = it["addr"], "data"
        return out
    small = -(-length // NVME_CTRL_PAGE_SIZE) <= NVME_SMALL_POOL_SIZE // 8
    lists: list[dict[str, Any]] = [{"pool": "small" if small else "large", "entries": [], "chained": False}]
    i = 0
    while True:
        lists[-1]["entries"].append(it["addr"])
        i += 1
        prp_len = min(length, NVME_CTRL_PAGE_SIZE)
        if it["len"] < prp_len:
            raise NvmeError(f"Incorrectly formed request for payload: DMA segment has {it['len']:#x} bytes "
                            f"left, PRP entry needs {prp_len:#x} (WARN_ON_ONCE, BLK_STS_IOERR)")
        it["addr"] += prp_len
        it["len"] -= prp_len
        length -= prp_len
        if not length:
            break
        if not (yield from advance()):
            raise NvmeError("Incorrectly formed request: the iterator ran out inside the PRP list")
        if i == NVME_CTRL_PAGE_SIZE >> 3:
            moved = lists[-1]["entries"].pop()
            lists[-1]["chained"] = True
            lists.append({"pool": "large", "entries": [moved], "chained": False})
            i = 1
    out["prp2_kind"] = "list"
    out["prp_lists"] = lists
    return out


# ============================================================================================ requests
@dataclass
class NvmeRequest(BlkRequest):
    """One block request and the driver state of its ``struct nvme_iod`` (drivers/nvme/host/pci.c, 6.17)."""

    state: DmaIovaState = field(default_factory=DmaIovaState)
    single_segment: bool = False          # IOD_SINGLE_SEGMENT
    use_sgl: int = SGL_UNSUPPORTED
    dma_vecs: list[tuple[int, int]] = field(default_factory=list)   # iod->dma_vecs (6.17, non-IOVA PRP)
    sgl: list[ScatterEntry] | None = None   # iod->sgt (6.12 path)
    nents: int = 0                         # iod->sgt.nents after dma_map_sgtable
    cmd: dict = field(default_factory=dict)
    total_len: int = 0                     # iod->total_len
    held: list[tuple[str, int]] = field(default_factory=list)  # bookkeeping to release at completion
    p2p_map: int = PCI_P2PDMA_MAP_NONE     # 7.3.4 IOD_DATA_P2P (BUS_ADDR) / IOD_DATA_MMIO (THRU_HOST_BRIDGE)


def _hold(ctx: ScenarioContext, rq: NvmeRequest, what: str, nbytes: int) -> None:
    ctx.bk.add(what, nbytes)
    rq.held.append((what, nbytes))


def _fail(addr: int, what: str) -> None:
    if addr == DMA_MAPPING_ERROR:
        raise NvmeError(f"{what} returned DMA_MAPPING_ERROR (BLK_STS_RESOURCE)")


def _blk_status(it: BlkDmaIter) -> None:
    """``nvme_map_data`` returns ``iter.status`` when the block layer's iterator failed to map
    (a ``dma_map_page``/``dma_map_phys`` error, or in 7.3.4 a ``dma_iova_link`` error)."""
    if it.status == BLK_STS_INVAL:
        raise NvmeError("pci_p2pdma_state: PCI_P2PDMA_MAP_NOT_SUPPORTED between the P2P provider and the "
                        "controller (BLK_STS_INVAL)")
    if it.status:
        raise NvmeError(f"the block layer's DMA iterator failed: iter.status = {it.status}")


class _Nvme:
    """The driver for one run: queue limits, controller capabilities, the mapping path."""

    def __init__(self, ctx: ScenarioContext):
        p = ctx.params
        self.ctx = ctx
        self.api = ctx.api
        d = str(p.get("direction", "read"))
        if d not in ("read", "write"):
            raise ValueError(f"direction {d!r} must be 'read' or 'write'")
        self.dir = DMA_FROM_DEVICE if d == "read" else DMA_TO_DEVICE
        q = str(p.get("queue", "io"))
        if q not in ("io", "admin"):
            raise ValueError(f"queue {q!r} must be 'io' or 'admin'")
        self.qid = 1 if q == "io" else 0
        self.sgl_supported = bool(p.get("sgl_supported", False))
        self.sgl_threshold = int_param(p, "sgl_threshold", SGL_THRESHOLD_DEFAULT)
        self.passthrough = bool(p.get("passthrough", False))
        self.kernel = blk_kernel(ctx)
        # 6.17 nvme_set_ctrl_limits: virt boundary NVME_CTRL_PAGE_SIZE - 1 on every queue; 7.3.4
        # nvme_pci_get_virt_boundary(): none (0) on an SGL-capable I/O queue (difference blk_iova_gap_mask)
        no_vb = behaves(self.kernel, "blk_iova_gap_mask") and self.sgl_supported and self.qid
        self.vbm = int_param(p, "virt_boundary_mask", 0 if no_vb else NVME_CTRL_PAGE_SIZE - 1)
        # lab fault injection (blk_mq_dma.FailNthLink): the N-th dma_iova_link of the run fails, -ENOMEM
        self.fail_link = FailNthLink(p["fail_iova_link"]) if "fail_iova_link" in p else None
        self.ios = int_param(p, "ios", 1)
        if self.ios < 1:
            raise ValueError(f"ios {self.ios} must be >= 1")
        mdts = int_param(p, "mdts", 0)
        # max_hw_sectors = min(NVME_MAX_BYTES, dma_opt_mapping_size(dev)) and MDTS; dma-direct has no
        # opt_mapping_size op (SIZE_MAX, capped by dma_max_mapping_size: SIZE_MAX without swiotlb)
        # (nvme_pci_alloc_dev); PAGE_SIZE is the simulated kernel's, distinct from the IOVA granule
        self.page_size = PAGE_SIZE if ctx.domain is None else ctx.domain.page_size
        opt = NVME_MAX_BYTES if ctx.direct else dma_opt_mapping_size_iommu(self.page_size)
        self.max_bytes = min(NVME_MAX_BYTES, opt, mdts or NVME_MAX_BYTES)
        # queue limits (nvme_set_ctrl_limits): max_segments = min(nvme_max_drv_segments, NVME_MAX_SEGS)
        self.max_segs = min(NVME_MAX_SEGS_PRE_6_17 if self.api == "sg" else NVME_MAX_SEGS,
                            nvme_max_drv_segments(self.max_bytes))
        self.bvecs = bio_vecs(p, self.page_size)

    # ---------------------------------------------------------------- helpers
    def nvme_pci_use_sgls(self, rq: BlkRequest | None = None) -> int:
        """``nvme_pci_use_sgls(dev, req)`` (6.17): FORCED for passthrough on an SGL-capable I/O queue,
        SUPPORTED for other I/O-queue requests there, else UNSUPPORTED (admin queue: always PRP).
        7.3.4 also forces SGL for a request with a seam inside the controller page
        (``req_phys_gap_mask(req) & (NVME_CTRL_PAGE_SIZE - 1)``: PRP cannot describe it)."""
        if self.qid and self.sgl_supported:
            gap = (rq is not None and behaves(self.kernel, "blk_iova_gap_mask")
                   and req_phys_gap_mask(rq, self.page_size) & (NVME_CTRL_PAGE_SIZE - 1))
            return SGL_FORCED if self.passthrough or gap else SGL_SUPPORTED
        return SGL_UNSUPPORTED

    def requests(self, io: int) -> list[NvmeRequest]:
        out = []
        for k, bv in enumerate(blk_split_requests(self.bvecs, self.max_bytes, self.max_segs, self.vbm)):
            out.append(NvmeRequest(io, k, bv, blk_map_iter_segments(bv), self.dir))
        return out

    # ---------------------------------------------------------------- map
    def nvme_map_data(self, rq: NvmeRequest) -> Generator[Step, None, None]:
        """``nvme_map_data(req)``: the single-segment fast path, else the block DMA iterator (6.17) or
        the scatterlist (``api="sg"``, 6.12), then PRP or SGL."""
        ctx = self.ctx
        rq.use_sgl = self.nvme_pci_use_sgls(rq)
        if self.api != "sg":
            _hold(ctx, rq, "struct dma_iova_state (nvme_iod.dma_state)", SIZEOF["struct dma_iova_state"])
        else:
            _hold(ctx, rq, "struct sg_table (nvme_iod.sgt)", SIZEOF["struct sg_table"])
        if rq.nr_phys_segments == 1:
            done = yield from self.setup_data_simple(rq)
            if done:
                return
        if self.api == "sg":
            yield from self.map_data_sg(rq)
            return
        it = BlkDmaIter()
        if not (yield from blk_rq_dma_map_iter_start(ctx, rq, rq.state, it, self.vbm, try_iova=self.api != "page",
                                                      fail_link=self.fail_link)):
            _blk_status(it)
        rq.p2p_map = it.p2pdma.map   # 7.3.4 nvme_map_data: IOD_DATA_P2P / IOD_DATA_MMIO
        coalesced = dma_use_iova(rq.state)
        nseg = 1 if coalesced else rq.nr_phys_segments
        avg = -(-rq.payload // nseg)
        if rq.use_sgl == SGL_FORCED or (rq.use_sgl == SGL_SUPPORTED and self.sgl_threshold
                                        and avg >= self.sgl_threshold):
            yield from self.setup_data_sgl(rq, it, avg)
        else:
            yield from self.setup_data_prp(rq, it, avg)

    def setup_data_simple(self, rq: NvmeRequest) -> Generator[Step, None, bool]:
        """6.17 ``nvme_pci_setup_data_simple`` / 6.12 ``nvme_setup_prp_simple``+``nvme_setup_sgl_simple``:
        one ``dma_map_page`` of the only bio_vec; False (BLK_STS_AGAIN) when it does not apply."""
        ctx = self.ctx
        phys, n = rq.bvecs[0]
        prp1_offset = phys & (NVME_CTRL_PAGE_SIZE - 1)
        prp_possible = prp1_offset + n <= NVME_CTRL_PAGE_SIZE * 2
        if self.api == "sg":  # 6.12
            use = "prp" if prp_possible else (
                "sgl" if self.qid and self.sgl_threshold and self.sgl_supported else None)
        else:
            if not rq.use_sgl and not prp_possible:
                use = None
            else:
                use = "sgl" if rq.use_sgl == SGL_FORCED or not prp_possible else "prp"
        if use is None:
            return False
        if ctx.p2pdma.provider_of(phys) is not None:   # 7.3.4: is_pci_p2pdma_page(bv.bv_page) -> BLK_STS_AGAIN
            return False
        ctx.begin("nvme_pci_setup_data_simple" if self.api != "sg" else f"nvme_setup_{use}_simple",
                  request=rq.index, phys=phys, len=n)
        addr = ctx.dma.dma_map_page(ctx.dev, phys, n, rq.dir)
        _fail(addr, "dma_map_bvec")
        rq.single_segment = True
        rq.total_len = n
        rq.path = "single segment (dma_map_bvec)"
        rq.dma_segments = [(addr, n)]
        if use == "sgl":
            rq.cmd = {"format": "SGL", "sgl": {"type": "DATA_DESC", "addr": addr, "length": n},
                      "descriptors": [], "descriptor_bytes": 0}
        else:
            first = NVME_CTRL_PAGE_SIZE - prp1_offset
            prp2 = addr + first if n > first else None
            rq.cmd = {"format": "PRP", "prp1": addr, "prp2": prp2, "prp2_kind": "data" if prp2 else "none",
                      "prp_lists": [], "descriptor_bytes": 0}
        yield ctx.step(f"one physical segment: single-segment fast path, dma_map_page -> {hx(addr)}; "
                       f"{rq.cmd['format']} in the command (IOD_SINGLE_SEGMENT)", request=rq.index, dma=addr)
        return True

    # -- 6.17 PRP / SGL over the block layer's DMA iterator ------------------------------------------
    def nvme_pci_prp_iter_next(self, rq: NvmeRequest, it: BlkDmaIter) -> Generator[Step, None, bool]:
        """``nvme_pci_prp_iter_next()``: next segment when this one is used up; record it in
        ``iod->dma_vecs`` when not coalesced and ``dma_need_unmap()``."""
        if it.it["len"]:
            return True
        if not (yield from blk_rq_dma_map_iter_next(self.ctx, rq, it)):
            _blk_status(it)
            return False
        if not dma_use_iova(rq.state) and self.ctx.dma_need_unmap() and rq.p2p_map != PCI_P2PDMA_MAP_BUS_ADDR:
            rq.dma_vecs.append((it.it["addr"], it.it["len"]))
            _hold(self.ctx, rq, "struct nvme_dma_vec (iod->dma_vecs)", SIZEOF["struct nvme_dma_vec"])
        return True

    def setup_data_prp(self, rq: NvmeRequest, it: BlkDmaIter, avg: int) -> Generator[Step, None, None]:
        """``nvme_pci_setup_data_prp()``: PRP1 (may be unaligned), PRP2 = data pointer or list."""
        ctx = self.ctx
        ctx.begin("nvme_pci_setup_data_prp", request=rq.index, payload=rq.payload, avg_seg_size=avg)
        if not dma_use_iova(rq.state) and ctx.dma_need_unmap() and rq.p2p_map != PCI_P2PDMA_MAP_BUS_ADDR:
            rq.dma_vecs = [(it.it["addr"], it.it["len"])]
            _hold(ctx, rq, "struct nvme_dma_vec (iod->dma_vecs)", SIZEOF["struct nvme_dma_vec"])
        out = yield from _prp_walk(it.it, rq.payload, lambda: self.nvme_pci_prp_iter_next(rq, it))
        rq.total_len = rq.payload
        self._prp_cmd(rq, out)
        yield ctx.step(self._describe(rq, avg), request=rq.index, cmd=rq.cmd)

    def setup_data_sgl(self, rq: NvmeRequest, it: BlkDmaIter, avg: int) -> Generator[Step, None, None]:
        """``nvme_pci_setup_data_sgl()``: one data descriptor in the SQE if one segment or coalesced,
        else a descriptor list (small pool if <= 16 entries) and a last-segment descriptor."""
        ctx = self.ctx
        ctx.begin("nvme_pci_setup_data_sgl", request=rq.index, payload=rq.payload, avg_seg_size=avg)
        entries = rq.nr_phys_segments
        if entries == 1 or dma_use_iova(rq.state):
            rq.cmd = {"format": "SGL", "sgl": {"type": "DATA_DESC", "addr": it.it["addr"], "length": it.it["len"]},
                      "descriptors": [], "descriptor_bytes": 0}
            rq.total_len += it.it["len"]
        else:
            descs = []
            while True:
                descs.append({"type": "DATA_DESC", "addr": it.it["addr"], "length": it.it["len"]})
                rq.total_len += it.it["len"]
                if not (yield from blk_rq_dma_map_iter_next(ctx, rq, it)):
                    _blk_status(it)
                    break
            self._sgl_list_cmd(rq, descs)
        yield ctx.step(self._describe(rq, avg), request=rq.index, cmd=rq.cmd)

    # -- 6.12 scatterlist path -----------------------------------------------------------------------
    def map_data_sg(self, rq: NvmeRequest) -> Generator[Step, None, None]:
        """6.12-6.16 ``nvme_map_data``: ``blk_rq_map_sg`` + ``dma_map_sgtable``, then
        ``nvme_pci_use_sgls(dev, req, iod->sgt.nents)`` picks SGL or PRP over the DMA segments."""
        ctx = self.ctx
        ctx.begin("blk_rq_map_sg", request=rq.index, nr_phys_segments=rq.nr_phys_segments)
        rq.sgl = [ScatterEntry(p, n) for p, n in rq.segments]
        _hold(ctx, rq, "struct scatterlist (iod->sgt.sgl)", SIZEOF["struct scatterlist"] * len(rq.sgl))
        ctx.begin("dma_map_sgtable", request=rq.index, nents=len(rq.sgl))
        # dma_map_sgtable(dev, &iod->sgt, dir, DMA_ATTR_NO_WARN): 0 or -errno; P2P entries are the DMA
        # layer's business (iommu_dma_map_sg, 7.3.4), -EREMOTEIO fails the request with BLK_STS_TARGET
        rc = ctx.dma.dma_map_sgtable(ctx.dev, rq.sgl, rq.dir)
        if rc == -EREMOTEIO:
            raise NvmeError("dma_map_sgtable: -EREMOTEIO, the controller cannot reach a P2P page "
                            "(PCI_P2PDMA_MAP_NOT_SUPPORTED): BLK_STS_TARGET")
        if rc:
            raise NvmeError(f"dma_map_sgtable failed ({rc}): BLK_STS_RESOURCE")
        ents = sum(1 for s in rq.sgl if s.dma_length)
        rq.nents = ents
        bus = sum(1 for s in rq.sgl[:ents] if s.dma_bus_address)
        rq.path = "dma_map_sg (one IOVA for the list)"
        if bus == ents:
            rq.path = "P2P bus address (dma_map_sg, no IOMMU mapping)"
        elif bus:
            rq.path += f", {bus} P2P bus-address segment(s)"
        elif ctx.p2pdma.provider_of(rq.sgl[0].phys) is not None:
            rq.path += ", P2P through the host bridge (no DMA_ATTR_MMIO: no IOMMU_MMIO)"
        rq.dma_segments = [(s.dma_address, s.dma_length) for s in rq.sgl[:ents]]
        if ctx.fine:
            yield ctx.step(f"dma_map_sgtable: {len(rq.sgl)} entries -> {ents} DMA segment(s) "
                           + ", ".join(f"{hx(a)}+{hx(n)}" for a, n in rq.dma_segments[:4])
                           + (" ..." if ents > 4 else ""), request=rq.index)
        avg = -(-rq.payload // ents)
        use_sgl = (self.sgl_supported and self.qid and self.sgl_threshold and avg >= self.sgl_threshold)
        rq.total_len = rq.payload
        if use_sgl:
            ctx.begin("nvme_pci_setup_sgls", request=rq.index, avg_seg_size=avg)
            if ents == 1:
                a, n = rq.dma_segments[0]
                rq.cmd = {"format": "SGL", "sgl": {"type": "DATA_DESC", "addr": a, "length": n},
                          "descriptors": [], "descriptor_bytes": 0}
            else:
                self._sgl_list_cmd(rq, [{"type": "DATA_DESC", "addr": a, "length": n}
                                        for a, n in rq.dma_segments])
        else:
            ctx.begin("nvme_pci_setup_prps", request=rq.index, avg_seg_size=avg)
            self._prp_cmd(rq, nvme_prp_layout(rq.dma_segments, rq.payload))
        yield ctx.step(self._describe(rq, avg), request=rq.index, cmd=rq.cmd)

    # -- command views ----------------------------------------------------------------------------------
    def _prp_cmd(self, rq: NvmeRequest, out: dict) -> None:
        nbytes = sum(NVME_SMALL_POOL_SIZE if lst["pool"] == "small" else NVME_CTRL_PAGE_SIZE
                     for lst in out["prp_lists"])
        rq.cmd = {"format": "PRP", **out, "descriptor_bytes": nbytes}

    def _sgl_list_cmd(self, rq: NvmeRequest, descs: list[dict]) -> None:
        small = len(descs) <= NVME_SMALL_POOL_SIZE // NVME_SGL_DESC_SIZE
        rq.cmd = {"format": "SGL",
                  "sgl": {"type": "LAST_SEG_DESC", "addr": None, "length": len(descs) * NVME_SGL_DESC_SIZE},
                  "descriptors": descs, "pool": "small" if small else "large",
                  "descriptor_bytes": NVME_SMALL_POOL_SIZE if small else NVME_CTRL_PAGE_SIZE}

    @staticmethod
    def _describe(rq: NvmeRequest, avg: int) -> str:
        c = rq.cmd
        if c["format"] == "PRP":
            s = f"PRP (avg segment {hx(avg)}): PRP1 = {hx(c['prp1'])}"
            if c["prp2_kind"] == "data":
                s += f", PRP2 = {hx(c['prp2'])} (data)"
            elif c["prp2_kind"] == "list":
                n = sum(len(lst["entries"]) for lst in c["prp_lists"])
                first = c["prp_lists"][0]
                s += (f", PRP2 -> {len(c['prp_lists'])} list page(s) ({first['pool']} pool), {n} entries "
                      f"{hx(first['entries'][0])} ... {hx(c['prp_lists'][-1]['entries'][-1])}")
            return s
        d = c["sgl"]
        if d["type"] == "DATA_DESC":
            return f"SGL (avg segment {hx(avg)}): one data descriptor {hx(d['addr'])}+{hx(d['length'])} in the SQE"
        return (f"SGL (avg segment {hx(avg)}): {len(c['descriptors'])} data descriptors in a "
                f"{c['pool']}-pool list, last-segment descriptor in the SQE")

    # ---------------------------------------------------------------- unmap
    def nvme_unmap_data(self, rq: NvmeRequest) -> Generator[Step, None, None]:
        """``nvme_unmap_data(req)`` at completion (6.17; ``api="sg"``: 6.12's ``dma_unmap_sgtable``)."""
        ctx = self.ctx
        dev = ctx.dev
        ctx.begin("nvme_unmap_data", request=rq.index, total_len=rq.total_len)
        # 7.3.4 nvme_free_prps/nvme_free_sgls: dma_unmap_phys (difference blk_nvme_map_phys)
        phys_api = behaves(self.kernel, "blk_nvme_map_phys") and not ctx.direct
        unmap_fn = "dma_unmap_phys" if phys_api else "dma_unmap_page"
        unmap = ctx.dma.dma_unmap_phys if phys_api else ctx.dma.dma_unmap_page
        # 7.3.4 IOD_DATA_MMIO: P2P through the host bridge is unmapped with DMA_ATTR_MMIO
        attrs = DMA_ATTR_MMIO if phys_api and rq.p2p_map == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE else 0
        if rq.single_segment:
            ctx.dma.dma_unmap_page(dev, rq.dma_segments[0][0], rq.total_len, rq.dir)
            what = "single segment: dma_unmap_page"
        elif self.api == "sg":
            ctx.dma.dma_unmap_sg(dev, rq.sgl, rq.dir)
            what = "dma_unmap_sgtable: one unmap of the list's IOVA"
        elif (done := blk_rq_dma_unmap(ctx, rq.state, rq.total_len, rq.dir, rq.p2p_map)) is not None:
            what = done
        elif rq.cmd["format"] == "SGL":
            descs = rq.cmd["descriptors"] or [rq.cmd["sgl"]]
            for d in descs:
                unmap(dev, d["addr"], d["length"], rq.dir, attrs)
            what = f"nvme_free_sgls: {unmap_fn} x {len(descs)}"
        else:
            for a, n in rq.dma_vecs:
                unmap(dev, a, n, rq.dir, attrs)
            what = f"nvme_free_prps: {unmap_fn} x {len(rq.dma_vecs)} (iod->dma_vecs)"
        for w, n in rq.held:
            ctx.bk.remove(w, n)
        rq.held.clear()
        yield ctx.step(what, request=rq.index)


# ============================================================================================ entry points
def iter_steps(ctx: ScenarioContext | str | dict, api: str = "iova", *, strict: bool = True,
               keep_events: bool = True, fine: bool = True) -> Generator[Step, None, None]:
    """The NVMe scenario as steps (see the module doc); fills ``ctx.device_view`` with one dict per
    command: ``io``, ``request``, ``payload``, ``segments`` (physical), ``path``, ``dma_segments``,
    ``format`` and the PRP/SGL fields the device reads."""
    ctx = as_context(ctx, api, "nvme", "nvme", strict=strict, keep_events=keep_events, fine=fine)
    if ctx.api not in APIS:
        raise ValueError(f"api {ctx.api!r} is not one of {', '.join(APIS)} for the nvme scenario")
    drv = _Nvme(ctx)
    view: list[dict] = []
    ctx.device_view = view
    ctx.extra.update({"max_transfer": drv.max_bytes, "requests": 0, "descriptor_bytes_peak": 0})
    reqs0 = drv.requests(0)
    ctx.begin("submit_bio", ios=drv.ios, length=sum(n for _, n in drv.bvecs), max_transfer=drv.max_bytes)
    yield ctx.step(f"{drv.ios} I/O(s) of {hx(sum(n for _, n in drv.bvecs))} bytes, {len(drv.bvecs)} bio_vec(s); "
                   f"max transfer {hx(drv.max_bytes)} -> {len(reqs0)} request(s) per I/O "
                   f"({', '.join(str(r.nr_phys_segments) for r in reqs0)} physical segment(s))")
    for io in range(drv.ios):
        reqs = reqs0 if io == 0 else drv.requests(io)
        for rq in reqs:
            ctx.begin("nvme_queue_rq", io=io, request=rq.index, payload=rq.payload)
            yield from drv.nvme_map_data(rq)
        desc = sum(rq.cmd.get("descriptor_bytes", 0) for rq in reqs)
        ctx.extra["descriptor_bytes_peak"] = max(ctx.extra["descriptor_bytes_peak"], desc)
        for rq in reqs:
            view.append({"io": io, "request": rq.index, "payload": rq.payload, "segments": list(rq.segments),
                         "path": rq.path, "dma_segments": list(rq.dma_segments), **rq.cmd})
            yield from drv.nvme_unmap_data(rq)
        ctx.extra["requests"] += len(reqs)
    yield from ctx.settle()
    if ctx.direct:
        ctx.notes.append("api='direct': no IOMMU; DMA address = physical address; dma_need_unmap() is false, "
                         "so the block layer skips unmaps (the single-segment path still calls dma_unmap_page)")
    if any(v["path"].startswith("single") for v in view) and ctx.api in ("iova", "sg", "page"):
        ctx.notes.append("single-segment requests take nvme_pci_setup_data_simple (one dma_map_page) under "
                         "every path: the IOVA API is only used for multi-segment requests")


run = make_run("nvme", "nvme", iter_steps)
