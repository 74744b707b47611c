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
and passes it in, as the kernel's callers do. ``blk_can_dma_map_iova()`` tests the queue's virt boundary
(``queue_virt_boundary(q)``, 6.17; 7.3.4 tests ``req_phys_gap_mask(req)``, which for NVMe's requests
is the same 4 KiB boundary) against ``dma_get_merge_boundary()``. A failed ``dma_map_page`` sets the
iterator's status to ``BLK_STS_RESOURCE`` and the iterator returns false, as ``blk_dma_map_direct()``
does; the driver turns the status into its error.

Model limits: no P2P (``blk_dma_map_bus``), no integrity iterator, no bounce of the ``sg`` path
(``blk_rq_map_sg`` lives with the 6.12 driver path in :mod:`iovalab.drivers.nvme_pci`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from iovalab.kernel.dma_iommu import DmaIovaState, dma_iova_size, dma_use_iova
from iovalab.kernel.device import NVME_CTRL_PAGE_SIZE
from iovalab.kernel.units import DMA_MAPPING_ERROR, PAGE_SIZE, hx
from iovalab.drivers.common import PARAM_BOUNDS, ScenarioContext, Step, int_param

__all__ = [
    "UINT_MAX", "BLK_STS_OK", "BLK_STS_RESOURCE", "BlkRequest", "BlkDmaIter", "bio_vecs",
    "get_max_segment_size", "biovec_phys_mergeable", "blk_map_iter_segments", "blk_split_requests",
    "blk_can_dma_map_iova", "blk_rq_dma_map_iter_start", "blk_rq_dma_map_iova", "blk_dma_map_direct",
    "blk_rq_dma_map_iter_next", "blk_rq_dma_unmap",
]

UINT_MAX = 0xFFFFFFFF
BLK_STS_OK = ""
BLK_STS_RESOURCE = "BLK_STS_RESOURCE"


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
    cursor over the request's physical segments (for the 6.12 ``sg`` path: over the mapped DMA segments)."""

    def __init__(self) -> None:
        self.it = {"addr": 0, "len": 0}
        self.pos = 0
        self.status = BLK_STS_OK


def blk_can_dma_map_iova(ctx: ScenarioContext, virt_boundary_mask: int) -> tuple[bool, str]:
    """``blk_can_dma_map_iova()`` (block/blk-mq-dma.c, 6.17): ``!((queue_virt_boundary(q) + 1) &
    dma_get_merge_boundary(dev))`` (7.3.4: ``req_phys_gap_mask(req)``); with the reason as text."""
    mb = ctx.dma_get_merge_boundary()
    can = ((virt_boundary_mask + 1) & mb) == 0
    why = (f"blk_can_dma_map_iova: (virt_boundary {virt_boundary_mask:#x} + 1) & merge_boundary {mb:#x} = "
           f"{(virt_boundary_mask + 1) & mb:#x}")
    return can, why


def blk_rq_dma_map_iter_start(ctx: ScenarioContext, rq: BlkRequest, state: DmaIovaState, it: BlkDmaIter,
                              virt_boundary_mask: int, try_iova: bool = True) -> Generator[Step, None, bool]:
    """``blk_rq_dma_map_iter_start()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): IOVA coalescing iff
    ``blk_can_dma_map_iova()`` and ``dma_iova_try_alloc(dev, state, first.paddr, payload)``, else
    ``blk_dma_map_direct()``. ``try_iova=False`` is the lab's ``api="page"``: the IOVA branch not taken.
    False with ``it.status`` set when the first mapping fails."""
    first = rq.segments[0]
    it.pos = 1
    ctx.begin("blk_rq_dma_map_iter_start", request=rq.index, payload=rq.payload,
              nr_phys_segments=rq.nr_phys_segments)
    if not try_iova:
        can = False
        why = "api='page': the IOVA branch is not taken (as when blk_can_dma_map_iova() is false)"
    else:
        can, why = blk_can_dma_map_iova(ctx, virt_boundary_mask)
    if can:
        ok = ctx.dma.dma_iova_try_alloc(ctx.dev, state, first[0], rq.payload)
        if ctx.fine:
            yield ctx.step(f"{why}; dma_iova_try_alloc(phys {hx(first[0])}, {hx(rq.payload)}) -> {ok}"
                           + (f", state.addr = {hx(state.addr)}" if ok else ""), request=rq.index)
        if ok:
            yield from blk_rq_dma_map_iova(ctx, rq, state, it)
            return True
    elif ctx.fine:
        yield ctx.step(f"{why}: map segment by segment", request=rq.index)
    return (yield from blk_dma_map_direct(ctx, rq, it, first))


def blk_rq_dma_map_iova(ctx: ScenarioContext, rq: BlkRequest, state: DmaIovaState,
                        it: BlkDmaIter) -> Generator[Step, None, None]:
    """``blk_rq_dma_map_iova()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): link every physical segment at
    its payload offset, one ``dma_iova_sync``."""
    rq.path = "IOVA (dma_iova_link per segment)"
    it.it["addr"], it.it["len"] = state.addr, dma_iova_size(state)
    mapped = 0
    for p, n in rq.segments:
        ctx.begin("blk_rq_dma_map_iova", request=rq.index, phys=p, offset=mapped, len=n)
        ctx.dma.dma_iova_link(ctx.dev, state, p, mapped, n, rq.dir)
        mapped += n
        if ctx.fine:
            yield ctx.step(f"dma_iova_link(phys {hx(p)}, offset {hx(mapped - n)}, {hx(n)})", request=rq.index)
    ctx.begin("blk_rq_dma_map_iova", request=rq.index, sync=mapped)
    ctx.dma.dma_iova_sync(ctx.dev, state, 0, mapped)
    it.pos = len(rq.segments)
    rq.dma_segments = [(state.addr, dma_iova_size(state))]
    yield ctx.step(f"{len(rq.segments)} link(s), one dma_iova_sync(0, {hx(mapped)}): the request is one DMA "
                   f"segment {hx(state.addr)}+{hx(mapped)}", request=rq.index)


def blk_dma_map_direct(ctx: ScenarioContext, rq: BlkRequest, it: BlkDmaIter,
                       seg: tuple[int, int]) -> Generator[Step, None, bool]:
    """``blk_dma_map_direct()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): ``dma_map_page`` of one physical
    segment; on ``DMA_MAPPING_ERROR`` the status becomes ``BLK_STS_RESOURCE`` and the result false."""
    rq.path = "dma-direct (phys = DMA address)" if ctx.direct else "dma_map_page per segment"
    ctx.begin("blk_dma_map_direct", request=rq.index, phys=seg[0], len=seg[1])
    addr = ctx.dma.dma_map_page(ctx.dev, seg[0], seg[1], rq.dir)
    if addr == DMA_MAPPING_ERROR:
        it.status = BLK_STS_RESOURCE
        return False
    it.it["addr"], it.it["len"] = addr, seg[1]
    rq.dma_segments.append((addr, seg[1]))
    if ctx.fine:
        yield ctx.step(f"dma_map_page(phys {hx(seg[0])}, {hx(seg[1])}) -> {hx(addr)}", request=rq.index)
    return True


def blk_rq_dma_map_iter_next(ctx: ScenarioContext, rq: BlkRequest,
                             it: BlkDmaIter) -> Generator[Step, None, bool]:
    """``blk_rq_dma_map_iter_next()`` (block/blk-mq-dma.c, 6.17 and 7.3.4): map the next physical
    segment (non-IOVA case only); false at the end, or with ``it.status`` set when the mapping fails."""
    if it.pos >= len(rq.segments):
        return False
    seg = rq.segments[it.pos]
    it.pos += 1
    return (yield from blk_dma_map_direct(ctx, rq, it, seg))


def blk_rq_dma_unmap(ctx: ScenarioContext, state: DmaIovaState, mapped_len: int, dir: int) -> str | None:
    """``blk_rq_dma_unmap()`` (include/linux/blk-mq-dma.h, 6.17 and 7.3.4; no P2P): ``dma_iova_destroy``
    if the request was coalesced, nothing if ``dma_need_unmap()`` is false; a description of what was
    done, or None when the caller must unmap every DMA segment itself (the kernel's false)."""
    if dma_use_iova(state):
        ctx.dma.dma_iova_destroy(ctx.dev, state, mapped_len, dir)
        return f"blk_rq_dma_unmap -> dma_iova_destroy(mapped_len {hx(mapped_len)})"
    if not ctx.dma_need_unmap():
        return "blk_rq_dma_unmap: dma_need_unmap() is false (dma-direct, coherent): nothing to unmap"
    return None
