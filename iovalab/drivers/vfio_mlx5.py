"""mlx5 VFIO live-migration buffers: ``drivers/vfio/pci/mlx5/cmd.c`` (6.16), with the pre-6.16 scatterlist
version and a vfio-type1 pinned region for contrast.

Mirrors ``register_dma_pages`` / ``unregister_dma_pages`` (drivers/vfio/pci/mlx5/cmd.c, 6.16), called
when a migration data buffer gets its mkey (``mlx5vf_dma_data_buffer``) and when it is freed
(``mlx5vf_free_data_buffer``, after the mkey is destroyed). The buffer's pages come from
``alloc_pages_bulk``; the mkey uses ``log_page_size = PAGE_SHIFT`` and one MTT entry (8 bytes,
big-endian DMA address) per page.

Mapping paths (``api``):

* ``"iova"`` - ``dma_iova_try_alloc(dev, state, 0, npages * PAGE_SIZE)``; every page linked at
  ``mapped`` (``dma_iova_link(dev, state, page_to_phys(page), mapped, PAGE_SIZE, dir, 0)``), MTT[i] =
  ``state.addr + i * PAGE_SIZE``; one ``dma_iova_sync(dev, state, 0, mapped)``. Unregister: one
  ``dma_iova_destroy(dev, state, npages * PAGE_SIZE, dir, 0)``.
* ``"page"`` - the 6.16 fallback when ``try_alloc`` fails: ``dma_map_page(page, 0, PAGE_SIZE, dir)``
  per page into the MTT; unregister: ``dma_unmap_page`` per MTT entry in reverse order.
* ``"sg"`` - before 6.16: the pages went into an ``sg_append_table``
  (``sg_alloc_append_table_from_pages``: physically contiguous pages share an entry), mapped with
  ``dma_map_sgtable`` (one IOVA for the list), the MTT filled per 4 KiB DMA page
  (``for_each_sgtable_dma_page``); freed with ``dma_unmap_sgtable``.
* ``"direct"`` - no IOMMU: ``try_alloc`` false, ``dma_map_page`` is the physical address; the 6.16
  unregister path unmaps every page unconditionally (``dma_unmap_page``, a no-op for dma-direct).

Bookkeeping: ``page_list`` (``struct page *`` per page) and the embedded ``struct dma_iova_state`` in
the 6.16 buffer; for ``sg``: the ``struct sg_append_table`` and its ``struct scatterlist`` entries,
counted with chaining (entries are allocated ``SG_MAX_SINGLE_ALLOC`` = 128 at a time, the last slot of
a full chunk being the chain link; an approximation of the append-table growth). The MTT is
device-facing (in ``mkey_in``) and shown in the device view.

**vfio-type1 contrast (counting only, not simulated).** ``VFIO_IOMMU_MAP_DMA`` maps user memory at a
user-chosen IOVA in an ``IOMMU_DOMAIN_UNMANAGED`` domain with ``iommu_map()``: no IOVA allocator and
no DMA API at all, so it cannot be expressed through :class:`~iovalab.kernel.dma_iommu.DmaDomain` and scenarios
may not call the IOMMU layer. :func:`vfio_type1_counts` therefore only *counts* what
``vfio_pin_map_dma`` / ``vfio_unmap_unpin`` (drivers/vfio/vfio_iommu_type1.c) would do for the same
pages: one ``iommu_map`` (map + ``iotlb_sync_map``) per physically contiguous pinned run, at unmap one
``iommu_unmap_fast`` per contiguous run and one IOTLB sync per ``VFIO_IOMMU_TLB_SYNC_MAX`` (512)
regions plus a final one. PTE counts assume 4 KiB leaves (runs that are 2 MiB aligned and sized in
both IOVA and physical address could use superpages). The result is in ``result.extra["vfio_type1"]``
and never enters the counters.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from iovalab.kernel.dma_iommu import (
    DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE, DmaIovaState, ScatterEntry, dma_use_iova,
)
from iovalab.kernel.units import DMA_MAPPING_ERROR, PAGE_SIZE, hx
from iovalab.drivers.common import SIZEOF, ScenarioContext, Step, as_context, int_param, make_run

__all__ = ["APIS", "SG_MAX_SINGLE_ALLOC", "VFIO_IOMMU_TLB_SYNC_MAX", "page_runs", "sg_slots",
           "vfio_type1_counts", "iter_steps", "run"]

#: mapping paths this scenario runs under
APIS = ("iova", "page", "sg", "direct")
#: ``PAGE_SIZE / sizeof(struct scatterlist)`` (include/linux/scatterlist.h)
SG_MAX_SINGLE_ALLOC = PAGE_SIZE // SIZEOF["struct scatterlist"]
#: drivers/vfio/vfio_iommu_type1.c
VFIO_IOMMU_TLB_SYNC_MAX = 512


def _pages(params: dict, page: int = PAGE_SIZE) -> np.ndarray:
    """Physical address of each buffer page (``page_to_phys(page_list[i])``), int64; ``page``: the
    simulated kernel's ``PAGE_SIZE`` (``DmaDomain.page_size``), the size of one ``struct page``."""
    n = int_param(params, "npages")
    if n < 1:
        raise ValueError(f"npages {n} must be >= 1")
    ph = params.get("phys", {})
    base = int_param(ph, "base", 0x1_0000_0000)
    stride = int_param(ph, "stride", 2 * page)
    run = int_param(ph, "run_pages", 1)
    if base % page or stride % page or run < 1 or stride < run * page:
        raise ValueError(f"phys.base {base:#x}/stride {stride:#x} must be page aligned, run_pages {run} >= 1, "
                         "stride >= run_pages * PAGE_SIZE")
    i = np.arange(n, dtype=np.int64)
    return base + (i // run) * stride + (i % run) * page


def page_runs(phys: np.ndarray, max_len: int | None = None, page: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """Physically contiguous runs ``[(phys, len), ...]`` of the page array (pages of ``page`` bytes,
    the kernel's ``PAGE_SIZE``), each at most ``max_len`` bytes (default ``UINT_MAX`` aligned down to
    ``PAGE_SIZE``: how ``sg_alloc_append_table_from_pages`` and ``vfio_pin_pages_remote`` group pages)."""
    if max_len is None:
        max_len = 0xFFFFFFFF & ~(page - 1)
    if not len(phys):
        return []
    breaks = np.flatnonzero(np.diff(phys) != page) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(phys)]))
    runs = []
    per = max_len // page
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        while s < e:
            k = min(e - s, per)
            runs.append((int(phys[s]), k * page))
            s += k
    return runs


def sg_slots(nents: int, page: int = PAGE_SIZE) -> int:
    """Scatterlist slots allocated for ``nents`` entries when chunks of ``SG_MAX_SINGLE_ALLOC``
    (``PAGE_SIZE / sizeof(struct scatterlist)``, ``page`` = the kernel's ``PAGE_SIZE``) are chained
    (``__sg_alloc_table``: a full non-last chunk gives its last slot to the chain link)."""
    per = page // SIZEOF["struct scatterlist"]
    if nents <= per:
        return nents
    chunks = 1 + -(-(nents - per) // (per - 1))
    return nents + chunks - 1


def vfio_type1_counts(phys: np.ndarray, page: int = PAGE_SIZE) -> dict:
    """Counting-only estimate of ``VFIO_IOMMU_MAP_DMA`` + ``VFIO_IOMMU_UNMAP_DMA`` of these pages in a
    type1 container (see the module doc); keys named like the counters, plus ``model``."""
    runs = len(page_runs(phys, page=page))
    npages = len(phys) * (page // PAGE_SIZE)
    return {
        "model": "counting-only: vfio_iommu_type1 iommu_map()s user memory at a user-chosen IOVA in an "
                 "UNMANAGED domain; this cannot be expressed with the DMA API, so it is not simulated",
        "iova_allocs": 0, "iova_frees": 0,
        "iommu_map_calls": runs, "iotlb_syncs": runs, "pte_writes_4k": npages,
        "iommu_unmap_calls": runs,
        "iotlb_invalidations": -(-runs // VFIO_IOMMU_TLB_SYNC_MAX) if runs else 0,
        "dma_api_calls": 0,
        "bookkeeping": "struct vfio_dma per MAP_DMA (plus struct vfio_regions per unmapped run until the sync)",
    }


class _Mlx5Vf:
    def __init__(self, ctx: ScenarioContext):
        self.ctx = ctx
        p = ctx.params
        # the simulated kernel's PAGE_SIZE, DmaDomain.page_size (dma-direct has no domain: the 4 KiB default)
        self.page = page = getattr(ctx.dma, "page_size", PAGE_SIZE)
        self.phys = _pages(p, page)
        self.n = len(self.phys)
        d = str(p.get("direction", "from_device"))
        dirs = {"from_device": DMA_FROM_DEVICE, "to_device": DMA_TO_DEVICE, "bidirectional": DMA_BIDIRECTIONAL}
        if d not in dirs:
            raise ValueError(f"direction {d!r} must be one of {', '.join(dirs)}")
        self.dir = dirs[d]
        self.state = DmaIovaState()
        self.mtt = np.zeros(self.n, dtype=np.uint64)
        self.sgl: list[ScatterEntry] | None = None
        self.slots = 0

    def register_dma_pages(self) -> Generator[Step, None, None]:
        """``register_dma_pages(mdev, npages, page_list, mkey_in, state, dir)`` (6.16) or, for
        ``api="sg"``, the pre-6.16 ``sg_alloc_append_table_from_pages`` + ``dma_map_sgtable``."""
        ctx = self.ctx
        dev = ctx.dev
        if ctx.api == "sg":
            yield from self._register_sg()
            return
        ctx.bk.add("page_list (struct page * per page)", SIZEOF["struct page *"] * self.n)
        ctx.bk.add("struct dma_iova_state (mlx5_vhca_data_buffer.state)", SIZEOF["struct dma_iova_state"])
        ctx.begin("register_dma_pages", npages=self.n, dir=self.dir)
        ok = False
        if ctx.api in ("iova", "direct"):
            ok = ctx.dma.dma_iova_try_alloc(dev, self.state, 0, self.n * self.page)
        if ok:
            yield ctx.step(f"dma_iova_try_alloc(0, {hx(self.n * self.page)}) -> state.addr = {hx(self.state.addr)}")
            link = ctx.dma.dma_iova_link
            addr = self.state.addr
            mapped = 0
            for i, p in enumerate(self.phys.tolist()):
                link(dev, self.state, p, mapped, self.page, self.dir)
                self.mtt[i] = addr
                addr += self.page
                mapped += self.page
                if ctx.fine:
                    yield ctx.step(f"dma_iova_link(page {i}: phys {hx(p)}, offset {hx(mapped - self.page)}); "
                                   f"MTT[{i}] = {hx(addr - self.page)}", page=i)
            if not ctx.fine:
                yield ctx.step(f"{self.n} x dma_iova_link, MTT[i] = state.addr + i * PAGE_SIZE")
            ctx.dma.dma_iova_sync(dev, self.state, 0, mapped)
            yield ctx.step(f"one dma_iova_sync(0, {hx(mapped)})")
            return
        why = "api='page': the fallback branch" if ctx.api == "page" else "dma_iova_try_alloc is false (dma-direct)"
        for i, p in enumerate(self.phys.tolist()):
            a = ctx.dma.dma_map_page(dev, p, self.page, self.dir)
            if a == DMA_MAPPING_ERROR:
                raise RuntimeError(f"dma_map_page of page {i} failed: the driver unwinds (unregister_dma_pages) "
                                   "and returns -ENOMEM")
            self.mtt[i] = a
            if ctx.fine:
                yield ctx.step(f"{why}: dma_map_page(page {i}: phys {hx(p)}) -> MTT[{i}] = {hx(a)}", page=i)
        if not ctx.fine:
            yield ctx.step(f"{why}: {self.n} x dma_map_page into the MTT")

    def _register_sg(self) -> Generator[Step, None, None]:
        ctx = self.ctx
        ctx.begin("sg_alloc_append_table_from_pages", npages=self.n)
        runs = page_runs(self.phys, page=self.page)
        self.sgl = [ScatterEntry(p, n) for p, n in runs]
        self.slots = sg_slots(len(self.sgl), self.page)
        ctx.bk.add("struct sg_append_table (mlx5_vhca_data_buffer.table)", SIZEOF["struct sg_append_table"])
        ctx.bk.add("struct scatterlist (incl. chain slots)", SIZEOF["struct scatterlist"] * self.slots)
        yield ctx.step(f"{self.n} pages -> {len(self.sgl)} scatterlist entries ({self.slots} slots with chaining)")
        ctx.begin("dma_map_sgtable", nents=len(self.sgl), dir=self.dir)
        ents = ctx.dma.dma_map_sg(ctx.dev, self.sgl, self.dir)
        if not ents:
            raise RuntimeError("dma_map_sgtable failed")
        i = 0
        for s in self.sgl[:ents]:
            k = s.dma_length // self.page
            self.mtt[i:i + k] = np.uint64(s.dma_address) + np.arange(k, dtype=np.uint64) * np.uint64(self.page)
            i += k
        yield ctx.step(f"dma_map_sgtable -> {ents} DMA segment(s) from {hx(self.sgl[0].dma_address)}; MTT filled per "
                       f"{self.page // 1024} KiB DMA page (for_each_sgtable_dma_page)")

    def unregister_dma_pages(self) -> Generator[Step, None, None]:
        """``unregister_dma_pages(mdev, npages, mkey_in, state, dir)`` (6.16) / ``dma_unmap_sgtable``."""
        ctx = self.ctx
        dev = ctx.dev
        ctx.begin("unregister_dma_pages", npages=self.n)
        if ctx.api == "sg":
            ctx.dma.dma_unmap_sg(dev, self.sgl, self.dir)
            ctx.bk.remove("struct sg_append_table (mlx5_vhca_data_buffer.table)", SIZEOF["struct sg_append_table"])
            ctx.bk.remove("struct scatterlist (incl. chain slots)", SIZEOF["struct scatterlist"] * self.slots)
            yield ctx.step("dma_unmap_sgtable: one unmap of the list's IOVA")
            return
        if dma_use_iova(self.state):
            ctx.dma.dma_iova_destroy(dev, self.state, self.n * self.page, self.dir)
            what = f"dma_iova_destroy(mapped_len {hx(self.n * self.page)}): one unmap, one sync, IOVA freed"
        else:
            for a in self.mtt[::-1].tolist():
                ctx.dma.dma_unmap_page(dev, a, self.page, self.dir)
            what = f"dma_unmap_page x {self.n}, last page first"
        ctx.bk.remove("page_list (struct page * per page)", SIZEOF["struct page *"] * self.n)
        ctx.bk.remove("struct dma_iova_state (mlx5_vhca_data_buffer.state)", SIZEOF["struct dma_iova_state"])
        yield ctx.step(what)


def iter_steps(ctx: ScenarioContext | str | dict, api: str = "iova", *, strict: bool = True,
               keep_events: bool = True, fine: bool = True) -> Generator[Step, None, None]:
    """The VFIO scenario as steps: register the buffer (mkey MTT), unregister it. ``ctx.device_view``:
    ``{"mtt": ndarray(uint64) per page, "log_page_size": PAGE_SHIFT, "mtt_bytes", "state_addr"}``;
    ``ctx.extra["vfio_type1"]``: the counting-only contrast."""
    ctx = as_context(ctx, api, "vfio", "mlx5", strict=strict, keep_events=keep_events, fine=fine)
    if ctx.api not in APIS:
        raise ValueError(f"api {ctx.api!r} does not apply to the vfio scenario; valid: {', '.join(APIS)}")
    m = _Mlx5Vf(ctx)
    yield from m.register_dma_pages()
    ctx.device_view = {"mtt": m.mtt.copy(), "log_page_size": m.page.bit_length() - 1, "mtt_bytes": 8 * m.n,
                       "state_addr": m.state.addr if dma_use_iova(m.state) else None}
    yield from m.unregister_dma_pages()
    yield from ctx.settle()
    ctx.extra["vfio_type1"] = vfio_type1_counts(m.phys, m.page)
    ctx.extra["sg_entries"] = len(m.sgl) if m.sgl is not None else None
    ctx.notes.append("vfio-type1 contrast (result.extra['vfio_type1']) is counting-only, not simulated: it uses "
                     "iommu_map() in an UNMANAGED domain, outside the DMA API")


run = make_run("vfio", "mlx5", iter_steps)
