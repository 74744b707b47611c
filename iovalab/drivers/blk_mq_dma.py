"""The block layer's DMA mapping of a request: ``block/blk-mq-dma.c`` and the splitting it relies on.

Mirrors (Linux 6.17 unless said otherwise; Linux 7.3.4 keeps the same functions in
``block/blk-mq-dma.c`` and ``include/linux/blk-mq-dma.h``):

* ``blk_rq_dma_map_iter_start()``, ``blk_rq_dma_map_iter_next()``, ``blk_rq_dma_map_iova()``,
  ``blk_dma_map_direct()``, ``blk_can_dma_map_iova()``, ``blk_map_iter_next()``
  (block/blk-mq-dma.c) and ``blk_rq_dma_unmap()`` (include/linux/blk-mq-dma.h): a request's physical
  segments become one IOVA range (``dma_iova_try_alloc`` + ``dma_iova_link`` per segment + one
  ``dma_iova_sync``) when ``blk_can_dma_map_iova()`` holds, else one ``dma_map_page`` per segment;
* ``biovec_phys_mergeable()``, ``get_max_segment_size()`` (block/blk.h), ``bvec_gap_to_prev()`` and
  ``bio_split_rw_at()`` (block/blk-merge.c): how an I/O's bio_vecs become requests and physical segments.

The driver (:mod:`iovalab.drivers.nvme_pci`) owns the ``struct dma_iova_state`` (in its ``nvme_iod``)
and passes it in, as the kernel's callers do. A failed ``dma_map_page`` sets the iterator's status to
``BLK_STS_RESOURCE`` and the iterator returns false, as ``blk_dma_map_direct()`` does; the driver turns
the status into its error.

Kernel versions (the simulated domain's ``kernel``; :data:`iovalab.kernel.version.DIFFERENCES`):

* ``blk_iova_gap_mask`` - when a request takes the IOVA path. 6.17 ``blk_can_dma_map_iova()`` tests
  the queue's virt boundary, ``(queue_virt_boundary(q) + 1) & dma_get_merge_boundary(dev)``; 7.3.4
  tests the request's own gaps, ``req_phys_gap_mask(req) & dma_get_merge_boundary(dev)``
  (:func:`req_phys_gap_mask`);
* ``blk_iova_link_unwind`` - a ``dma_iova_link()`` error in ``blk_rq_dma_map_iova()``. 6.17 breaks out
  of the loop, syncs the ``mapped`` bytes and returns the sync's result (0): the error is lost, the
  request goes to the device with an IOVA range whose tail is not linked. 7.3.4 ``goto out_unlink``:
  ``dma_iova_destroy(dev, state, mapped, dir, attrs)`` and ``iter->status =
  errno_to_blk_status(error)`` (``-ENOMEM`` -> ``BLK_STS_RESOURCE``), false;
* ``blk_nvme_map_phys`` - ``blk_dma_map_direct()`` calls ``dma_map_phys()`` in 7.3.4 (6.17:
  ``dma_map_page()``); ``blk_rq_dma_unmap()`` is the same in both for memory (not P2P):
  ``dma_iova_destroy(mapped_len)`` of a coalesced request, else the caller unmaps every segment.

Fault injection (no kernel analogue; the lab's, explicit): the simulator never runs out of memory, so
a ``dma_iova_link()`` error is injected with :class:`FailNthLink` (the NVMe preset parameter
``fail_iova_link: N``): the N-th ``dma_iova_link`` of the run returns ``-ENOMEM`` before touching any
state, as ``iommu_map()`` does when a page-table page cannot be allocated (it unmaps what it mapped
of that call before returning). One ``error`` event records the injection.

Peer-to-peer (7.3.4, :mod:`iovalab.kernel.p2pdma`): ``blk_dma_map_iter_start()`` decides the request's
``pci_p2pdma_state`` from its first physical segment alone (``iter->p2pdma``): BUS_ADDR maps every
segment with ``blk_dma_map_bus()`` (bus address, no IOMMU, nothing to unmap); THRU_HOST_BRIDGE takes the
ordinary IOVA or direct path with ``DMA_ATTR_MMIO`` (``dma_iova_link`` / ``dma_map_phys``, ``IOMMU_MMIO``
in the PTE); NOT_SUPPORTED fails the request with ``BLK_STS_INVAL``. ``blk_rq_dma_unmap()`` takes the map
type: nothing for BUS_ADDR, ``dma_iova_destroy(..., DMA_ATTR_MMIO)`` for THRU_HOST_BRIDGE.

Model limits: no integrity iterator, no bounce of the ``sg`` path
(``blk_rq_map_sg`` lives with the 6.12 driver path in :mod:`iovalab.drivers.nvme_pci`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from iovalab.kernel.dma_iommu import DMA_ATTR_MMIO, DmaIovaState, dma_iova_size, dma_use_iova
from iovalab.kernel.p2pdma import (
    MAP_TYPE_NAMES, PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, PciP2pdmaMapState,
    pci_p2pdma_bus_addr_map, pci_p2pdma_state,
)
from iovalab.kernel.device import NVME_CTRL_PAGE_SIZE
from iovalab.kernel.units import DMA_MAPPING_ERROR, ENOMEM, PAGE_SIZE, hx
from iovalab.kernel.version import DEFAULT_KERNEL, behaves, check_kernel
from iovalab.drivers.common import PARAM_BOUNDS, ScenarioContext, Step, int_param

__all__ = [
    "UINT_MAX", "BLK_STS_OK", "BLK_STS_RESOURCE", "BLK_STS_INVAL", "BlkRequest", "BlkDmaIter", "bio_vecs",
    "get_max_segment_size", "biovec_phys_mergeable", "blk_map_iter_segments", "blk_split_requests",
    "blk_can_dma_map_iova", "blk_rq_dma_map_iter_start", "blk_rq_dma_map_iova", "blk_dma_map_direct",
    "blk_rq_dma_map_iter_next", "blk_rq_dma_unmap", "blk_kernel", "req_phys_gap_mask", "FailNthLink",
    "errno_to_blk_status", "U64_MAX", "blk_dma_map_bus",
]

UINT_MAX = 0xFFFFFFFF
BLK_STS_OK = ""
BLK_STS_RESOURCE = "BLK_STS_RESOURCE"
BLK_STS_IOERR = "BLK_STS_IOERR"
BLK_STS_INVAL = "BLK_STS_INVAL"
U64_MAX = (1 << 64) - 1


def errno_to_blk_status(errno: int) -> str:
    """``errno_to_blk_status()`` (block/blk-core.c, ``blk_errors[]``) for the errnos a link returns:
    ``-ENOMEM`` -> ``BLK_STS_RESOURCE``; anything else the model reaches -> ``BLK_STS_IOERR``."""
    return BLK_STS_OK if errno == 0 else BLK_STS_RESOURCE if errno == -ENOMEM else BLK_STS_IOERR


def blk_kernel(ctx: ScenarioContext) -> str:
    """The simulated kernel's version: the domain's, or (``api="direct"``, no domain) the preset's
    ``iommu.kernel``, else :data:`~iovalab.kernel.version.DEFAULT_KERNEL`."""
    if ctx.domain is not None:
        return ctx.domain.kernel
    spec = ctx.preset.get("iommu")
    return check_kernel(spec["kernel"]) if isinstance(spec, dict) and "kernel" in spec else DEFAULT_KERNEL


class FailNthLink:
    """Lab fault injection (no kernel analogue, see the module doc): the ``n``-th ``dma_iova_link`` that
    :func:`blk_rq_dma_map_iova` makes in a run (counting from 1) fails with ``-ENOMEM``, once."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"fail_iova_link {n!r} must be an int >= 1 (the N-th dma_iova_link of the run fails)")
        self.n = n
        self.calls = 0

    def __call__(self) -> int:
        """Count one link; ``-ENOMEM`` if it is the one to fail, else 0."""
        self.calls += 1
        return -ENOMEM if self.calls == self.n else 0


# ============================================================================================ bio_vecs, splitting
def bio_vecs(params: dict, page_size: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """The I/O's bio_vecs ``[(phys, len), ...]`` from the preset parameters (see the module doc);
    a user buffer is cut into the simulated kernel's pages of ``page_size`` bytes (``PAGE_SIZE``:
    with 64 KiB pages an 8 KiB buffer inside one page is one bio_vec, one physical segment).

    Physically contiguous neighbours are merged into one multi-page bio_vec (``bio_add_page`` ->
    ``bvec_try_merge_page``). Raises ValueError for an empty buffer or a length that is not a
    multiple of 512 (the logical block size O_DIRECT requires).
    """
    if "segments" in params:
        if not isinstance(params["segments"], list) or len(params["segments"]) > PARAM_BOUNDS["npages"]:
            raise ValueError(f"scenario parameter 'segments' must be a list of at most {PARAM_BOUNDS['npages']} "
                             "[phys, len] pairs")
        raw = []
        for i, s in enumerate(params["segments"]):
            if not isinstance(s, (list, tuple)) or len(s) != 2:
                raise ValueError(f"segments[{i}] = {s!r} must be [phys, len]")
            p, n = int_param({"p": s[0]}, "p"), int_param({"n": s[1]}, "n")
            if n <= 0 or p < 0 or n > PARAM_BOUNDS["length"] or p > PARAM_BOUNDS["base"]:
                raise ValueError(f"segments[{i}] = [{hx(p)}, {hx(n)}]: phys must be in 0..{hx(PARAM_BOUNDS['base'])} "
                                 f"and len in 1..{hx(PARAM_BOUNDS['length'])}")
            raw.append((p, n))
    else:
        length = int_param(params, "length")
        offset = int_param(params, "offset", 0)
        ph = params.get("phys", {})
        base = int_param(ph, "base", 0x1_0000_0000)
        stride = int_param(ph, "stride", page_size)
        run = int_param(ph, "run_pages", 1)
        if length <= 0 or not 0 <= offset < page_size or run < 1 or stride < page_size * run:
            raise ValueError(f"buffer length {length} must be > 0, offset {offset:#x} in [0, {page_size:#x}), "
                             f"run_pages {run} >= 1 and stride {stride:#x} >= run_pages * {page_size:#x}")
        if base & (page_size - 1) or stride & (page_size - 1):
            raise ValueError(f"phys.base {base:#x} and phys.stride {stride:#x} must be page aligned")
        raw = []
        i, off, left = 0, offset, length
        while left:
            n = min(left, page_size - off)
            raw.append((base + (i // run) * stride + (i % run) * page_size + off, n))
            left -= n
            off = 0
            i += 1
    total = sum(n for _, n in raw)
    if total % 512:
        raise ValueError(f"I/O length {total:#x} is not a multiple of the 512-byte logical block size")
    out: list[list[int]] = []
    for p, n in raw:
        if out and out[-1][0] + out[-1][1] == p and out[-1][1] + n <= UINT_MAX:
            out[-1][1] += n
        else:
            out.append([p, n])
    return [(p, n) for p, n in out]


def get_max_segment_size(seg_boundary_mask: int, max_segment_size: int, paddr: int, length: int) -> int:
    """``get_max_segment_size(lim, paddr, len)`` (block/blk.h): the longest segment starting at
    ``paddr`` that stays inside one segment-boundary window and within ``max_segment_size``."""
    return min(length, min(seg_boundary_mask - (seg_boundary_mask & paddr), max_segment_size - 1) + 1)


def biovec_phys_mergeable(seg_boundary_mask: int, v1: tuple[int, int], v2: tuple[int, int]) -> bool:
    """``biovec_phys_mergeable(q, vec1, vec2)`` (block/blk.h): physically contiguous and inside one
    segment-boundary window (``biovec_within_boundary``)."""
    a1, n1 = v1
    a2, n2 = v2
    if a1 + n1 != a2:
        return False
    return (a1 | seg_boundary_mask) == ((a2 + n2 - 1) | seg_boundary_mask)


def blk_map_iter_segments(bvecs: list[tuple[int, int]], seg_boundary_mask: int = UINT_MAX,
                          max_segment_size: int = UINT_MAX) -> list[tuple[int, int]]:
    """Physical segments ``[(paddr, len), ...]`` in the order ``blk_map_iter_next()`` (block/blk-mq-dma.c)
    produces them: each bio_vec clipped by ``get_max_segment_size``, then the following bio_vecs merged
    while ``biovec_phys_mergeable`` and the total stays within that size."""
    segs: list[tuple[int, int]] = []
    i, done = 0, 0
    while i < len(bvecs):
        p, n = bvecs[i]
        p += done
        n -= done
        max_size = get_max_segment_size(seg_boundary_mask, max_segment_size, p, UINT_MAX)
        take = min(n, max_size)
        if take < n:
            done += take
            segs.append((p, take))
            continue
        i += 1
        done = 0
        while i < len(bvecs):
            nxt = bvecs[i]
            if take + nxt[1] > max_size or not biovec_phys_mergeable(seg_boundary_mask, (p, take), nxt):
                break
            take += nxt[1]
            i += 1
        segs.append((p, take))
    return segs


def blk_split_requests(bvecs: list[tuple[int, int]], max_bytes: int, max_segs: int,
                       virt_boundary_mask: int = NVME_CTRL_PAGE_SIZE - 1,
                       seg_boundary_mask: int = UINT_MAX) -> list[list[tuple[int, int]]]:
    """Split an I/O's bio_vecs into requests as ``bio_split_rw_at()`` (block/blk-merge.c) would:
    at ``max_bytes`` (``max_sectors``, cut to a 512-byte multiple), at ``max_segs`` physical
    segments, and before a bio_vec that leaves a gap at the virt boundary (``bvec_gap_to_prev``:
    the previous one does not end, or this one does not start, on the boundary)."""
    if max_bytes < 512 or max_segs < 1:
        raise ValueError(f"max_bytes {max_bytes} must be >= 512 and max_segs {max_segs} >= 1")
    reqs: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    cur_bytes = 0
    nsegs = 0

    def close() -> None:
        nonlocal cur, cur_bytes, nsegs
        if cur:
            reqs.append(cur)
        cur, cur_bytes, nsegs = [], 0, 0

    for p, n in bvecs:
        while n:
            if cur and virt_boundary_mask and ((p & virt_boundary_mask)
                                               or ((cur[-1][0] + cur[-1][1]) & virt_boundary_mask)):
                close()
            room = max_bytes - cur_bytes
            take = min(n, room)
            if take < n:
                take &= ~511
            if take == 0:
                close()
                continue
            new_seg = not cur or not biovec_phys_mergeable(seg_boundary_mask, cur[-1], (p, take))
            if new_seg and nsegs == max_segs:
                close()
                continue
            if cur and not new_seg:
                cur[-1] = (cur[-1][0], cur[-1][1] + take)
            else:
                cur.append((p, take))
                nsegs += 1
            cur_bytes += take
            p += take
            n -= take
            if cur_bytes == max_bytes:
                close()
    close()
    return reqs



# ============================================================================================ the DMA iterator
@dataclass
class BlkRequest:
    """One block request (``struct request``) as the DMA iterator sees it, plus what the model records
    of its mapping: ``path`` (which branch mapped it) and ``dma_segments`` (what the iterator produced)."""

    io: int
    index: int
    bvecs: list[tuple[int, int]]
    segments: list[tuple[int, int]]
    dir: int
    path: str = ""
    dma_segments: list[tuple[int, int]] = field(default_factory=list)

    @property
    def payload(self) -> int:
        """``blk_rq_payload_bytes(req)``."""
        return sum(n for _, n in self.bvecs)

    @property
    def nr_phys_segments(self) -> int:
        """``blk_rq_nr_phys_segments(req)``."""
        return len(self.segments)


class BlkDmaIter:
    """``struct blk_dma_iter`` (include/linux/blk-mq-dma.h, 6.17): ``addr``, ``len``, ``status`` and the
    cursor over the request's physical segments (for the 6.12 ``sg`` path: over the mapped DMA segments);
    7.3.4 adds ``p2pdma`` (a ``struct pci_p2pdma_map_state``)."""

    def __init__(self) -> None:
        self.it = {"addr": 0, "len": 0}
        self.pos = 0
        self.status = BLK_STS_OK
        self.p2pdma = PciP2pdmaMapState(map=PCI_P2PDMA_MAP_NONE)

    def mmio_attrs(self) -> int:
        """``DMA_ATTR_MMIO`` when ``iter->p2pdma.map == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`` (7.3.4), else 0."""
        return DMA_ATTR_MMIO if self.p2pdma.map == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE else 0


def req_phys_gap_mask(rq: BlkRequest, page_size: int = PAGE_SIZE) -> int:
    """``req_phys_gap_mask(req)`` (Linux 7.3.4), the request's own segment gaps as a mask.

    Its definition (include/linux/blk-mq.h) and the code that fills ``rq->phys_gap_bit``
    (block/blk-merge.c) are not among the 7.3.4 files read for this model; derived from the callers
    that are (block/blk-mq-dma.c: ``blk_can_dma_map_iova()``, ``& dma_get_merge_boundary(dev)``;
    drivers/nvme/host/pci.c: ``nvme_pci_use_sgls()``, ``& (NVME_CTRL_PAGE_SIZE - 1)``) and the
    upstream series that added it ("block: accumulate memory segment gaps per bio"): every seam
    between two consecutive bio_vecs contributes ``bv.bv_offset | (bvprv.bv_offset + bvprv.bv_len)``
    to ``gaps``, ``phys_gap_bit = ffs(gaps)`` (0: no seam, or every seam at offset 0), and the mask
    has every bit from ``phys_gap_bit - 1`` up set (0 when ``phys_gap_bit`` is 0). Both callers test
    it against a low mask ``2^k - 1``, so the answer is "does some seam fall off a ``2^k`` boundary".
    ``bv_offset`` is the offset in the first page (``page_size``: the simulated ``PAGE_SIZE``).
    Model limit: one bio per request (no ``bio_seg_gap()`` of merged bios)."""
    gaps = 0
    for (p0, n0), (p1, _) in zip(rq.bvecs, rq.bvecs[1:], strict=False):
        gaps |= (p1 & (page_size - 1)) | ((p0 & (page_size - 1)) + n0)
    gap_bit = (gaps & -gaps).bit_length()          # ffs()
    return ~(((1 << gap_bit) >> 1) - 1) & U64_MAX


def blk_can_dma_map_iova(ctx: ScenarioContext, virt_boundary_mask: int,
                         rq: BlkRequest | None = None) -> tuple[bool, str]:
    """``blk_can_dma_map_iova()`` (block/blk-mq-dma.c), with the reason as text. 6.17:
    ``!((queue_virt_boundary(q) + 1) & dma_get_merge_boundary(dev))``; 7.3.4 (difference
    ``blk_iova_gap_mask``): ``!(req_phys_gap_mask(req) & dma_get_merge_boundary(dev))``
    (:func:`req_phys_gap_mask`; ``rq`` is required then)."""
    mb = ctx.dma_get_merge_boundary()
    if behaves(blk_kernel(ctx), "blk_iova_gap_mask"):
        if rq is None:
            raise ValueError("blk_can_dma_map_iova: 7.3 tests the request's own gaps; pass rq")
        page = PAGE_SIZE if ctx.domain is None else ctx.domain.page_size
        mask = req_phys_gap_mask(rq, page)
        return (mask & mb) == 0, (f"blk_can_dma_map_iova: req_phys_gap_mask {mask:#x} & merge_boundary "
                                  f"{mb:#x} = {mask & mb:#x}")
    can = ((virt_boundary_mask + 1) & mb) == 0
    why = (f"blk_can_dma_map_iova: (virt_boundary {virt_boundary_mask:#x} + 1) & merge_boundary {mb:#x} = "
           f"{(virt_boundary_mask + 1) & mb:#x}")
    return can, why


def blk_rq_dma_map_iter_start(ctx: ScenarioContext, rq: BlkRequest, state: DmaIovaState, it: BlkDmaIter,
                              virt_boundary_mask: int, try_iova: bool = True,
                              fail_link: FailNthLink | None = None) -> Generator[Step, None, bool]:
    """``blk_rq_dma_map_iter_start()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): IOVA coalescing iff
    ``blk_can_dma_map_iova()`` and ``dma_iova_try_alloc(dev, state, first.paddr, payload)``, else
    ``blk_dma_map_direct()``. ``try_iova=False`` is the lab's ``api="page"``: the IOVA branch not taken.
    False with ``it.status`` set when the first mapping fails (7.3.4: also when a link fails).
    ``fail_link``: the lab's injected link error (:class:`FailNthLink`)."""
    first = rq.segments[0]
    it.pos = 1
    ctx.begin("blk_rq_dma_map_iter_start", request=rq.index, payload=rq.payload,
              nr_phys_segments=rq.nr_phys_segments)
    # 7.3.4 blk_dma_map_iter_start(): the P2P state of the whole request from its first segment
    it.p2pdma = PciP2pdmaMapState(map=PCI_P2PDMA_MAP_NONE)
    p2p = pci_p2pdma_state(it.p2pdma, ctx.p2pdma, ctx.dev.name, first[0], ctx.dev.is_pci)
    if p2p == PCI_P2PDMA_MAP_BUS_ADDR:
        return (yield from blk_dma_map_bus(ctx, rq, it, first))
    if p2p not in (PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE):
        it.status = BLK_STS_INVAL
        rq.path = f"P2P {MAP_TYPE_NAMES[p2p]}: BLK_STS_INVAL"
        if ctx.fine:
            yield ctx.step(f"pci_p2pdma_state(phys {hx(first[0])}) = {MAP_TYPE_NAMES[p2p]}: BLK_STS_INVAL",
                           request=rq.index)
        return False
    if not try_iova:
        can = False
        why = "api='page': the IOVA branch is not taken (as when blk_can_dma_map_iova() is false)"
    else:
        can, why = blk_can_dma_map_iova(ctx, virt_boundary_mask, rq)
    if can:
        ok = ctx.dma.dma_iova_try_alloc(ctx.dev, state, first[0], rq.payload)
        if ctx.fine:
            yield ctx.step(f"{why}; dma_iova_try_alloc(phys {hx(first[0])}, {hx(rq.payload)}) -> {ok}"
                           + (f", state.addr = {hx(state.addr)}" if ok else ""), request=rq.index)
        if ok:
            return (yield from blk_rq_dma_map_iova(ctx, rq, state, it, fail_link))
    elif ctx.fine:
        yield ctx.step(f"{why}: map segment by segment", request=rq.index)
    return (yield from blk_dma_map_direct(ctx, rq, it, first))


def blk_rq_dma_map_iova(ctx: ScenarioContext, rq: BlkRequest, state: DmaIovaState, it: BlkDmaIter,
                        fail_link: FailNthLink | None = None) -> Generator[Step, None, bool]:
    """``blk_rq_dma_map_iova()`` (block/blk-mq-dma.c): link every physical segment at its payload
    offset, one ``dma_iova_sync``; True.

    A link error (difference ``blk_iova_link_unwind``; injected with ``fail_link``): 6.17 breaks out
    of the loop and returns the result of ``dma_iova_sync(0, mapped)`` - 0, so the request is handed
    to the device as one segment over the whole reserved range, of which only ``[0, mapped)`` is
    linked; 7.3.4 ``dma_iova_destroy(dev, state, mapped, dir, attrs)`` (unlink ``[0, mapped)`` if
    ``mapped``, then ``dma_iova_free``), ``it.status = errno_to_blk_status(error)``, False."""
    attrs = it.mmio_attrs()   # 7.3.4: DMA_ATTR_MMIO for P2P through the host bridge
    rq.path = "IOVA (dma_iova_link per segment)" + (", DMA_ATTR_MMIO (P2P through the host bridge)" if attrs else "")
    it.it["addr"], it.it["len"] = state.addr, dma_iova_size(state)
    unwind = behaves(blk_kernel(ctx), "blk_iova_link_unwind")
    mapped = 0
    error = 0
    for p, n in rq.segments:
        ctx.begin("blk_rq_dma_map_iova", request=rq.index, phys=p, offset=mapped, len=n)
        error = fail_link() if fail_link is not None else 0
        if error:
            ctx.log.emit("block", "dma_iova_link", "error", error, rule=(
                f"injected (lab fault fail_iova_link={fail_link.n}, no kernel analogue): "  # type: ignore[union-attr]
                f"iommu_map could not allocate a page-table page, -ENOMEM; phys {hx(p)} offset {hx(mapped)}"))
            if ctx.fine:
                yield ctx.step(f"dma_iova_link(phys {hx(p)}, offset {hx(mapped)}, {hx(n)}) -> -ENOMEM (injected)",
                               request=rq.index)
            break
        ctx.dma.dma_iova_link(ctx.dev, state, p, mapped, n, rq.dir, attrs)
        mapped += n
        if ctx.fine:
            yield ctx.step(f"dma_iova_link(phys {hx(p)}, offset {hx(mapped - n)}, {hx(n)})", request=rq.index)
    if error and unwind:
        ctx.begin("blk_rq_dma_map_iova", request=rq.index, unwind=mapped)
        ctx.dma.dma_iova_destroy(ctx.dev, state, mapped, rq.dir, attrs)
        it.status = errno_to_blk_status(error)
        rq.dma_segments = []
        yield ctx.step(f"link error {error}: out_unlink: dma_iova_destroy(mapped {hx(mapped)}) "
                       f"(unlink what was linked, free the IOVA); iter.status = {it.status}", request=rq.index)
        return False
    ctx.begin("blk_rq_dma_map_iova", request=rq.index, sync=mapped)
    ctx.dma.dma_iova_sync(ctx.dev, state, 0, mapped)
    it.pos = len(rq.segments)
    rq.dma_segments = [(state.addr, dma_iova_size(state))]
    if error:
        rq.path = "IOVA (link error lost: tail not linked)"
        yield ctx.step(f"link error {error} lost (6.17): dma_iova_sync(0, {hx(mapped)}) returns 0; the device "
                       f"gets {hx(state.addr)}+{hx(dma_iova_size(state))} of which only {hx(mapped)} bytes "
                       "are linked", request=rq.index)
        return True
    yield ctx.step(f"{len(rq.segments)} link(s), one dma_iova_sync(0, {hx(mapped)}): the request is one DMA "
                   f"segment {hx(state.addr)}+{hx(mapped)}", request=rq.index)
    return True


def blk_dma_map_direct(ctx: ScenarioContext, rq: BlkRequest, it: BlkDmaIter,
                       seg: tuple[int, int]) -> Generator[Step, None, bool]:
    """``blk_dma_map_direct()`` (block/blk-mq-dma.c): ``dma_map_page`` (6.17) / ``dma_map_phys``
    (7.3.4, difference ``blk_nvme_map_phys``) of one physical segment, with ``DMA_ATTR_MMIO`` for P2P
    through the host bridge (7.3.4); on ``DMA_MAPPING_ERROR`` the status becomes ``BLK_STS_RESOURCE`` and
    the result false. Without an IOMMU the lab's dma-direct stand-in has only ``dma_map_page`` (the same
    mapping: phys = DMA address)."""
    attrs = it.mmio_attrs()
    phys_api = behaves(blk_kernel(ctx), "blk_nvme_map_phys") and not ctx.direct
    fn = "dma_map_phys" if phys_api else "dma_map_page"
    rq.path = "dma-direct (phys = DMA address)" if ctx.direct else f"{fn} per segment"
    if attrs:
        rq.path += ", DMA_ATTR_MMIO (P2P through the host bridge)"
    ctx.begin("blk_dma_map_direct", request=rq.index, phys=seg[0], len=seg[1])
    addr = (ctx.dma.dma_map_phys if phys_api else ctx.dma.dma_map_page)(ctx.dev, seg[0], seg[1], rq.dir, attrs)
    if addr == DMA_MAPPING_ERROR:
        it.status = BLK_STS_RESOURCE
        return False
    it.it["addr"], it.it["len"] = addr, seg[1]
    rq.dma_segments.append((addr, seg[1]))
    if ctx.fine:
        yield ctx.step(f"{fn}(phys {hx(seg[0])}, {hx(seg[1])}) -> {hx(addr)}", request=rq.index)
    return True


def blk_rq_dma_map_iter_next(ctx: ScenarioContext, rq: BlkRequest,
                             it: BlkDmaIter) -> Generator[Step, None, bool]:
    """``blk_rq_dma_map_iter_next()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): map the next physical
    segment (non-IOVA case only); false at the end, or with ``it.status`` set when the mapping fails."""
    if it.pos >= len(rq.segments):
        return False
    seg = rq.segments[it.pos]
    it.pos += 1
    if it.p2pdma.map == PCI_P2PDMA_MAP_BUS_ADDR:
        return (yield from blk_dma_map_bus(ctx, rq, it, seg))
    return (yield from blk_dma_map_direct(ctx, rq, it, seg))


def blk_dma_map_bus(ctx: ScenarioContext, rq: BlkRequest, it: BlkDmaIter,
                    seg: tuple[int, int]) -> Generator[Step, None, bool]:
    """``blk_dma_map_bus()`` (block/blk-mq-dma.c, 7.3.4): a P2P segment between devices below one
    switch; the DMA address is the bus address ``pci_p2pdma_bus_addr_map(mem, paddr)``, nothing is mapped
    in the IOMMU (no IOVA, no ``iommu_map``, no trace event) and nothing will be unmapped."""
    assert it.p2pdma.mem is not None
    addr = pci_p2pdma_bus_addr_map(it.p2pdma.mem, seg[0])
    rq.path = "P2P bus address (blk_dma_map_bus, no IOMMU mapping)"
    ctx.begin("blk_dma_map_bus", request=rq.index, phys=seg[0], len=seg[1])
    it.it["addr"], it.it["len"] = addr, seg[1]
    rq.dma_segments.append((addr, seg[1]))
    if ctx.fine:
        yield ctx.step(f"P2P page of {it.p2pdma.mem.owner} ({MAP_TYPE_NAMES[it.p2pdma.map]}): bus address "
                       f"{hx(seg[0])} + bus_offset {hx(it.p2pdma.mem.bus_offset)} = {hx(addr)}", request=rq.index)
    return True


def blk_rq_dma_unmap(ctx: ScenarioContext, state: DmaIovaState, mapped_len: int, dir: int,
                     map: int = PCI_P2PDMA_MAP_NONE) -> str | None:
    """``blk_rq_dma_unmap()`` (include/linux/blk-mq-dma.h, 6.17 and 7.3.4, whose ``map`` argument is the
    request's P2P map type): nothing for ``PCI_P2PDMA_MAP_BUS_ADDR``; ``dma_iova_destroy`` if the request
    was coalesced (with ``DMA_ATTR_MMIO`` for THRU_HOST_BRIDGE), nothing if ``dma_need_unmap()`` is false;
    a description of what was done, or None when the caller must unmap every DMA segment itself (the
    kernel's false: ``dma_unmap_page`` per segment in 6.17, ``dma_unmap_phys`` in 7.3.4). For memory
    (``map`` NONE) 6.17 and 7.3.4 do the same."""
    if map == PCI_P2PDMA_MAP_BUS_ADDR:
        return "blk_rq_dma_unmap: P2P bus addresses (PCI_P2PDMA_MAP_BUS_ADDR): nothing to unmap"
    if dma_use_iova(state):
        attrs = DMA_ATTR_MMIO if map == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE else 0
        ctx.dma.dma_iova_destroy(ctx.dev, state, mapped_len, dir, attrs)
        return f"blk_rq_dma_unmap -> dma_iova_destroy(mapped_len {hx(mapped_len)}" + (
            ", DMA_ATTR_MMIO)" if attrs else ")")
    if not ctx.dma_need_unmap():
        return "blk_rq_dma_unmap: dma_need_unmap() is false (dma-direct, coherent): nothing to unmap"
    return None
