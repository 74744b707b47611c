"""HMM / RDMA-ODP page faults under the IOVA API and its fallback: ``mm/hmm.c`` (6.16), ``include/linux/hmm-dma.h``.

Mirrors ``hmm_dma_map_alloc``, ``hmm_dma_map_pfn``, ``hmm_dma_unmap_pfn`` and ``hmm_dma_map_free``
(mm/hmm.c) as an on-demand-paging driver uses them (``ib_init_umem_odp`` -> ``hmm_dma_map_alloc``;
mlx5 ``populate_mtt`` -> ``hmm_dma_map_pfn`` per valid pfn; ``ib_umem_odp_unmap_dma_pages`` ->
``hmm_dma_unmap_pfn`` per page on invalidation and teardown; ``ib_umem_odp_free`` ->
``hmm_dma_map_free``; drivers/infiniband/core/umem_odp.c, drivers/infiniband/hw/mlx5/odp.c).

Mapping paths (``api``):

* ``"iova"`` - ``hmm_dma_map_alloc`` reserves IOVA for the whole range at registration:
  ``dma_iova_try_alloc(dev, &map->state, 0, nr_entries * PAGE_SIZE)``; each fault links one entry
  (``dma_iova_link(dev, state, paddr, idx * entry_size, entry_size, DMA_BIDIRECTIONAL, 0)``) and
  syncs just that entry (``dma_iova_sync(dev, state, idx * entry_size, entry_size)``); the DMA
  address is ``state.addr + idx * entry_size``. A pfn already ``HMM_PFN_DMA_MAPPED`` returns that
  address at once (no page-table work). An invalidation unlinks page by page
  (``dma_iova_unlink``: one unmap plus one *strict* IOTLB sync per page, even in lazy domains);
  teardown unlinks what is left, then ``dma_iova_free``.
* ``"page"`` - the fallback when ``dma_iova_try_alloc`` fails (and the pre-6.16 ODP code): the map
  keeps a ``dma_list`` (``dma_need_unmap()`` is true behind an IOMMU), each fault is one
  ``dma_map_page(dev, page, 0, entry_size, DMA_BIDIRECTIONAL)``, each unmap one ``dma_unmap_page``.
* ``"direct"`` - no IOMMU: ``try_alloc`` is false, ``dma_need_unmap()`` is false so there is no
  ``dma_list``; every fault calls ``dma_map_page`` (even for an already-mapped pfn: "Continue to
  remapping"), unmaps do nothing.

Bookkeeping (see :mod:`.common`): ``pfn_list`` 8 B per entry always; ``dma_list`` 8 B per entry only
in the fallback that needs unmaps; ``struct dma_iova_state`` 16 B (embedded in ``struct
hmm_dma_map``).

Parameters: ``npages`` (entries, ``dma_entry_size`` = ``entry_size``, default 4096; the umem spans
``npages * entry_size`` bytes and ``hmm_dma_map_alloc`` gets ``nr_entries`` = that span in system
pages, as :func:`ib_init_umem_odp` computes it), ``fault_order
(``sequential`` | ``random`` (``seed``) | ``strided`` (``stride``: all indices ``= s mod stride`` for
s = 0, 1, ...) | ``repeated`` (``passes`` sequential passes; later passes hit mapped pfns)),
``faults`` (stop after this many), ``invalidate`` (``[[first, count], ...]`` index ranges unmapped
after the faults, as an MMU-notifier invalidation would), ``refault`` (fault those ranges again),
``phys`` (``base``/``stride``/``run_pages``: where entry i's page lives). Random orders use numpy's
PCG64 ``default_rng(seed).permutation`` (deterministic for a given numpy version).

Peer-to-peer (``p2p`` parameter, :mod:`iovalab.kernel.p2pdma`; Linux 7.3.4 mm/hmm.c:
``hmm_dma_map_pfn()``, ``hmm_dma_unmap_pfn()``): a pfn that lies in a provider's BAR is a P2P page, and
``pci_p2pdma_state(p2pdma_state, dev, page)`` decides per pfn. ``PCI_P2PDMA_MAP_BUS_ADDR``: the pfn is
marked ``HMM_PFN_P2PDMA_BUS | HMM_PFN_DMA_MAPPED`` and the bus address
(``pci_p2pdma_bus_addr_map``) is returned - no IOVA link, no ``dma_map_*``, nothing to unmap (a fault on
it again recomputes the address, it is not returned from the reservation);
``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE``: ``HMM_PFN_P2PDMA`` and ``DMA_ATTR_MMIO`` - ``dma_iova_link`` with
``DMA_ATTR_MMIO`` (``IOMMU_MMIO`` in the PTEs) on the IOVA path, ``dma_map_phys(..., DMA_ATTR_MMIO)``
otherwise, and the unmap carries ``DMA_ATTR_MMIO`` too; any other type: ``DMA_MAPPING_ERROR``, nothing
mapped. The caller's ``p2pdma_state`` is one per fault phase here. (7.3.4 also passes
``DMA_ATTR_REQUIRE_COHERENT``; the model's ``hmm_dma_map_alloc`` already refuses a non-coherent device.)
With ``p2p`` the batch helpers below are not used.

Speed: per-phase runs (``run_scenario``, ``iter_scenario(fine=False)``) with ``keep_events=False`` on the
IOVA path hand each phase's new faults to ``DmaDomain.dma_iova_link_sync_pages`` (link + sync per
page) and its unmaps to ``DmaDomain.dma_iova_unlink_pages`` (one unlink per page): batch forms of the
same per-page calls with identical page tables and counters (the DMA layer falls back to the
per-page calls itself when a batch would not be exact). Everything else goes page by page.
"""

from __future__ import annotations

from array import array
from collections.abc import Generator
from typing import Any

import numpy as np

from iovalab.kernel.dma_iommu import DMA_ATTR_MMIO, DMA_BIDIRECTIONAL, DmaIovaState, dma_use_iova
from iovalab.kernel.p2pdma import (
    MAP_TYPE_NAMES, PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, PciP2pdmaMapState,
    pci_p2pdma_bus_addr_map, pci_p2pdma_state,
)
from iovalab.kernel.version import behaves
from iovalab.kernel.units import DMA_MAPPING_ERROR, EINVAL, EOPNOTSUPP, PAGE_SIZE, U64_MASK, DmaError, hx
from iovalab.drivers.common import SIZEOF, ScenarioContext, Step, as_context, int_param, make_run

__all__ = ["APIS", "FAULT_ORDERS", "fault_order", "iter_steps", "run"]

#: mapping paths this scenario runs under (HMM never builds a scatterlist)
APIS = ("iova", "page", "direct")
FAULT_ORDERS = ("sequential", "random", "strided", "repeated")
_CHUNK = 1 << 16          # per-page loops convert this many indices to Python ints at a time
_BULK_CHUNK = 1 << 22     # faults per batch call (bounded numpy temporaries: ~100 MB at most)


def fault_order(params: dict, npages: int) -> np.ndarray:
    """The fault sequence (entry indices, ``int64``) for the preset parameters (see the module doc)."""
    order = str(params.get("fault_order", "sequential"))
    if order not in FAULT_ORDERS:
        raise ValueError(f"fault_order {order!r} is not one of {', '.join(FAULT_ORDERS)}")
    idx = np.arange(npages, dtype=np.int64)
    if order == "random":
        seq = np.random.default_rng(int_param(params, "seed", 1)).permutation(npages).astype(np.int64)
    elif order == "strided":
        stride = int_param(params, "stride", 512)
        if stride < 1:
            raise ValueError(f"stride {stride} must be >= 1")
        seq = idx[np.lexsort((idx, idx % stride))]
    elif order == "repeated":
        passes = int_param(params, "passes", 2)
        if passes < 1:
            raise ValueError(f"passes {passes} must be >= 1")
        seq = np.tile(idx, passes)
    else:
        seq = idx
    if "faults" in params:
        n = int_param(params, "faults")
        if not 0 <= n <= len(seq):
            raise ValueError(f"faults {n} must be in 0..{len(seq)}")
        seq = seq[:n]
    return seq


EOVERFLOW = 75  # include/uapi/asm-generic/errno.h


def ib_init_umem_odp(address: int, length: int, page_shift: int,
                     page_size: int = PAGE_SIZE) -> tuple[int, int, int, int]:
    """The arithmetic of ``ib_init_umem_odp()`` (drivers/infiniband/core/umem_odp.c, 7.3.4), the
    real caller of ``hmm_dma_map_alloc``: ``(start, end, nr_entries, dma_entry_size)``.

    ``start = ALIGN_DOWN(address, page_size)``, ``end = ALIGN(address + length, page_size)``
    (-EOVERFLOW on a 64-bit wrap), and ``nr_entries = (end - start) >> PAGE_SHIFT``: the entry
    count is in *system pages* while ``dma_entry_size = 1 << page_shift`` may be a huge page, so the
    IOVA reserved (``nr_entries * PAGE_SIZE``) is the umem's byte span and only
    ``nr_entries * PAGE_SIZE / dma_entry_size`` entries of ``dma_entry_size`` are ever linked (-EINVAL
    when that is 0). ``pfn_list`` keeps ``nr_entries`` slots (``hmm_range_fault`` fills it per page).
    ``page_size``: the simulated kernel's ``PAGE_SIZE`` (4 KiB or 64 KiB), the unit of ``nr_entries``."""
    sys_page = page_size
    if not sys_page.bit_length() - 1 <= page_shift < 64:
        raise ValueError(f"page_shift {page_shift!r} must be in {sys_page.bit_length() - 1}..63 "
                         "(umem_odp->page_shift is PAGE_SHIFT or a huge page shift)")
    if not 0 <= address <= U64_MASK or not 0 <= length <= U64_MASK:
        raise ValueError(f"address {address!r} / length {length!r} must be 64-bit unsigned values")
    page_size = 1 << page_shift
    start = address & ~(page_size - 1)
    end = address + length
    if end > U64_MASK:
        raise DmaError(-EOVERFLOW, f"address {address:#x} + length {length:#x} overflows", "ib_init_umem_odp")
    end = (end + page_size - 1) & ~(page_size - 1) & U64_MASK
    if end < page_size:
        raise DmaError(-EOVERFLOW, f"ALIGN({address + length:#x}, {page_size:#x}) wraps", "ib_init_umem_odp")
    nr_entries = (end - start) >> (sys_page.bit_length() - 1)
    if not nr_entries * sys_page // page_size:
        raise DmaError(-EINVAL, f"{nr_entries} pages hold no {page_size:#x} entry", "ib_init_umem_odp")
    return start, end, nr_entries, page_size


class _HmmMap:
    """``struct hmm_dma_map`` plus the per-entry ``HMM_PFN_DMA_MAPPED`` bit of its ``pfn_list``."""

    def __init__(self, ctx: ScenarioContext, npages: int, entry: int, page_size: int = PAGE_SIZE):
        p = ctx.params
        ph = p.get("phys", {})
        self.base = int_param(ph, "base", 0x1_0000_0000)
        self.stride = int_param(ph, "stride", 2 * page_size)
        self.run = int_param(ph, "run_pages", 1)
        if self.stride < self.run * entry or self.base % page_size or self.stride % page_size:
            raise ValueError(f"phys.base {self.base:#x}/stride {self.stride:#x} must be page aligned and "
                             f"stride >= run_pages * entry_size")
        self.ctx = ctx
        self.n = npages
        self.entry = entry
        self.state = DmaIovaState()
        self.mapped = bytearray(npages)            # HMM_PFN_DMA_MAPPED per entry
        self.dma_list: array | None = None         # dma_addr_t *dma_list (fallback with dma_need_unmap)
        self.addrs: array | None = None            # what the device was given (page/direct; view only)
        self.nmapped = 0
        self.p2p_flags: dict[int, int] = {}        # HMM_PFN_P2PDMA / HMM_PFN_P2PDMA_BUS per entry (7.3.4)
        self.bus: dict[int, int] = {}              # the bus address handed out for a P2PDMA_BUS entry

    def paddr(self, idx: int) -> int:
        """``hmm_pfn_to_phys(pfns[idx])`` for this workload's page placement."""
        return self.base + (idx // self.run) * self.stride + (idx % self.run) * self.entry


#: ``HMM_PFN_P2PDMA`` / ``HMM_PFN_P2PDMA_BUS`` (include/linux/hmm.h, 7.3.4), as flags of :attr:`_HmmMap.p2p_flags`
HMM_PFN_P2PDMA = 1
HMM_PFN_P2PDMA_BUS = 2


class _Hmm:
    def __init__(self, ctx: ScenarioContext):
        self.ctx = ctx
        p = ctx.params
        # the simulated kernel's PAGE_SIZE (DmaDomain.page_size; dma-direct: 4 KiB): hmm_range_fault()
        # fills pfn_list per kernel page, and dma_entry_size is at least one
        self.page = int(getattr(ctx.dma, "page_size", PAGE_SIZE))
        self.npages = int_param(p, "npages")
        self.entry = int_param(p, "entry_size", self.page)
        if self.npages < 1:
            raise ValueError(f"npages {self.npages} must be >= 1")
        if self.entry < self.page or self.entry & (self.entry - 1):
            raise ValueError(f"entry_size {self.entry} must be a power of two >= PAGE_SIZE {self.page:#x} "
                             "(dma_entry_size)")
        self.map = _HmmMap(ctx, self.npages, self.entry, self.page)
        # ib_init_umem_odp: nr_entries in system pages, dma_entry_size = the (huge) page size
        self.nr_entries = ib_init_umem_odp(0, self.npages * self.entry, self.entry.bit_length() - 1,
                                           self.page)[2]
        inv = p.get("invalidate", [])
        if not isinstance(inv, list) or not all(isinstance(r, list) and len(r) == 2 for r in inv):
            raise ValueError(f"scenario parameter 'invalidate': {inv!r} must be a list of [first, npages] pairs")
        self.invalidate = [(int_param({"a": a}, "a"), int_param({"b": b}, "b")) for a, b in inv]
        for a, b in self.invalidate:
            if a < 0 or b < 1 or a + b > self.npages:
                raise ValueError(f"invalidate range [{a}, {a}+{b}) is outside 0..{self.npages}")
        self.refault = bool(p.get("refault", False))
        self.unique_faults = True   # set by iter_steps: no index repeats within the fault sequence
        self.use_iova = False
        self.need_unmap = ctx.dma_need_unmap()
        self.p2p = ctx.p2pdma                       # the machine's P2P pages (empty: none)
        self.p2pdma_state = PciP2pdmaMapState()      # the caller's struct pci_p2pdma_map_state
        # 7.3.4: dma_map_phys() behind an IOMMU (dma_map_page refuses DMA_ATTR_MMIO there)
        self.phys_api = ctx.domain is not None and behaves(ctx.domain.kernel, "dma_map_phys")
        self.bulk: Any = None if self.p2p else self._bulk_helpers()

    def _bulk_helpers(self):
        """The DMA layer's batch helpers, if it has them and events are not kept (identical counters)."""
        ctx = self.ctx
        if ctx.direct or ctx.log.keep or ctx.fine:
            return None
        link = getattr(ctx.dma, "dma_iova_link_sync_pages", None)
        unlink = getattr(ctx.dma, "dma_iova_unlink_pages", None)
        if link is None or unlink is None:
            return None
        return link, unlink

    # ---------------------------------------------------------------- mm/hmm.c
    def hmm_dma_map_alloc(self) -> Generator[Step, None, None]:
        """``hmm_dma_map_alloc(dev, map, nr_entries, dma_entry_size)``."""
        ctx, m = self.ctx, self.map
        dev = ctx.dev
        ctx.begin("hmm_dma_map_alloc", nr_entries=self.nr_entries, dma_entry_size=self.entry)
        if not dev.dma_skip_sync or dev.dma_addressing_limited():
            why = "the device needs CPU syncs (non-coherent)" if not dev.dma_skip_sync else \
                "dma_addressing_limited(dev)"
            raise DmaError(-EOPNOTSUPP, f"hmm_dma_map_alloc refuses the device: {why}", "hmm_dma_map_alloc")
        ctx.bk.add("pfn_list (unsigned long per entry)", SIZEOF["unsigned long"] * self.nr_entries)
        ctx.bk.add("struct dma_iova_state (hmm_dma_map.state)", SIZEOF["struct dma_iova_state"])
        if ctx.api in ("iova", "direct"):   # api="page" stands for try_alloc failing
            self.use_iova = ctx.dma.dma_iova_try_alloc(dev, m.state, 0, self.nr_entries * self.page)
        if not self.use_iova:
            m.addrs = array("Q", bytes(8 * self.npages))
            if self.need_unmap:
                m.dma_list = m.addrs
                ctx.bk.add("dma_list (dma_addr_t per entry)", SIZEOF["dma_addr_t"] * self.nr_entries)
        if self.use_iova:
            what = (f"dma_iova_try_alloc(0, {hx(self.nr_entries * self.page)}) reserves the whole range: "
                    f"state.addr = {hx(m.state.addr)}; pfn_list {self.nr_entries * 8} B")
        elif ctx.api == "page":
            what = "fallback (api='page'): no IOVA reservation; pfn_list + dma_list"
        else:
            what = "dma-direct: dma_iova_try_alloc is false, dma_need_unmap() false: pfn_list only"
        yield ctx.step(what, state_addr=m.state.addr if self.use_iova else None)

    def hmm_dma_map_pfn(self, idx: int, p2pdma_state: PciP2pdmaMapState | None = None) -> int:
        """``hmm_dma_map_pfn(dev, map, idx, p2pdma_state)`` (mm/hmm.c; P2P pages as 7.3.4 maps them, see
        the module doc). ``p2pdma_state``: the caller's (default: the one of the current fault phase)."""
        ctx, m = self.ctx, self.map
        off = idx * self.entry
        flags = m.p2p_flags.get(idx, 0) if m.p2p_flags else 0
        if m.mapped[idx] and not flags & HMM_PFN_P2PDMA_BUS:
            if self.use_iova:
                return m.state.addr + off
            if self.need_unmap:
                assert m.dma_list is not None  # allocated with the fallback when dma_need_unmap()
                return m.dma_list[idx]
        paddr = m.paddr(idx)
        attrs = 0
        if self.p2p:
            st = self.p2pdma_state if p2pdma_state is None else p2pdma_state
            t = pci_p2pdma_state(st, self.p2p, ctx.dev.name, paddr, ctx.dev.is_pci)
            if t == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE:
                attrs = DMA_ATTR_MMIO
                m.p2p_flags[idx] = flags | HMM_PFN_P2PDMA
            elif t == PCI_P2PDMA_MAP_BUS_ADDR:
                assert st.mem is not None
                m.p2p_flags[idx] = flags | HMM_PFN_P2PDMA_BUS
                addr = m.bus[idx] = pci_p2pdma_bus_addr_map(st.mem, paddr)
                if not m.mapped[idx]:           # HMM_PFN_DMA_MAPPED
                    m.mapped[idx] = 1
                    m.nmapped += 1
                return addr
            elif t != PCI_P2PDMA_MAP_NONE:
                return DMA_MAPPING_ERROR
        if self.use_iova:
            ctx.dma.dma_iova_link(ctx.dev, m.state, paddr, off, self.entry, DMA_BIDIRECTIONAL, attrs)
            ctx.dma.dma_iova_sync(ctx.dev, m.state, off, self.entry)
            addr = m.state.addr + off
        else:
            if attrs and self.phys_api:
                addr = ctx.dma.dma_map_phys(ctx.dev, paddr, self.entry, DMA_BIDIRECTIONAL, attrs)
            else:
                addr = ctx.dma.dma_map_page(ctx.dev, paddr, self.entry, DMA_BIDIRECTIONAL, attrs)
            if addr == DMA_MAPPING_ERROR:
                m.p2p_flags.pop(idx, None)      # error: pfns[idx] &= ~HMM_PFN_P2PDMA
                return addr
            assert m.addrs is not None  # allocated with the fallback (no IOVA reservation)
            m.addrs[idx] = addr
        if not m.mapped[idx]:
            m.mapped[idx] = 1
            m.nmapped += 1
        return addr

    def hmm_dma_unmap_pfn(self, idx: int) -> bool:
        """``hmm_dma_unmap_pfn(dev, map, idx)``: False if the entry was not DMA-mapped. 7.3.4: nothing
        to unmap for a P2P bus address; ``DMA_ATTR_MMIO`` for a P2P page through the host bridge."""
        ctx, m = self.ctx, self.map
        if not m.mapped[idx]:
            return False
        flags = m.p2p_flags.pop(idx, 0) if m.p2p_flags else 0
        attrs = DMA_ATTR_MMIO if flags & HMM_PFN_P2PDMA else 0
        if flags & HMM_PFN_P2PDMA_BUS:
            del m.bus[idx]                      # no need to unmap bus address P2P mappings
        elif self.use_iova:
            ctx.dma.dma_iova_unlink(ctx.dev, m.state, idx * self.entry, self.entry, DMA_BIDIRECTIONAL, attrs)
        elif self.need_unmap:
            assert m.dma_list is not None
            if attrs and self.phys_api:
                ctx.dma.dma_unmap_phys(ctx.dev, m.dma_list[idx], self.entry, DMA_BIDIRECTIONAL, attrs)
            else:
                ctx.dma.dma_unmap_page(ctx.dev, m.dma_list[idx], self.entry, DMA_BIDIRECTIONAL)
        m.mapped[idx] = 0
        m.nmapped -= 1
        return True

    def hmm_dma_map_free(self) -> None:
        """``hmm_dma_map_free(dev, map)``: ``dma_iova_free`` if the IOVA was used; free the lists."""
        ctx, m = self.ctx, self.map
        if dma_use_iova(m.state):
            ctx.dma.dma_iova_free(ctx.dev, m.state)
        ctx.bk.remove("pfn_list (unsigned long per entry)", SIZEOF["unsigned long"] * self.nr_entries)
        ctx.bk.remove("struct dma_iova_state (hmm_dma_map.state)", SIZEOF["struct dma_iova_state"])
        if m.dma_list is not None:
            ctx.bk.remove("dma_list (dma_addr_t per entry)", SIZEOF["dma_addr_t"] * self.nr_entries)

    # ---------------------------------------------------------------- workload phases
    def faults(self, seq: np.ndarray, label: str) -> Generator[Step, None, None]:
        ctx = self.ctx
        self.p2pdma_state = PciP2pdmaMapState()    # one caller state per fault phase
        if ctx.fine:
            for idx in seq.tolist():
                was = self.map.mapped[idx]
                ctx.begin("hmm_dma_map_pfn", idx=idx)
                addr = self.hmm_dma_map_pfn(idx)
                yield ctx.step(f"{label}: hmm_dma_map_pfn({idx}) -> {hx(addr)}" + self._why(idx, addr, was),
                               idx=idx, dma=addr)
            return
        ctx.begin("hmm_dma_map_pfn", faults=len(seq), label=label, calls=len(seq))
        if self.bulk is not None and self.use_iova:
            self._bulk_faults(seq)
        else:
            for i in range(0, len(seq), _CHUNK):
                for idx in seq[i:i + _CHUNK].tolist():
                    self.hmm_dma_map_pfn(idx)
        yield ctx.step(f"{label}: {len(seq)} fault(s) -> hmm_dma_map_pfn; {self.map.nmapped} entries mapped")

    def _why(self, idx: int, addr: int, was: int) -> str:
        flags = self.map.p2p_flags.get(idx, 0)
        if addr == DMA_MAPPING_ERROR:
            return (f" (P2P {MAP_TYPE_NAMES[self.p2pdma_state.map]}: DMA_MAPPING_ERROR)"
                    if self.p2pdma_state.map not in (PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_BUS_ADDR,
                                                     PCI_P2PDMA_MAP_THRU_HOST_BRIDGE) else "")
        if flags & HMM_PFN_P2PDMA_BUS:
            return " (P2P PCI_P2PDMA_MAP_BUS_ADDR: the bus address, no IOMMU mapping)"
        if was:
            return " (already mapped: no page-table work)"
        if flags & HMM_PFN_P2PDMA:
            return " (P2P PCI_P2PDMA_MAP_THRU_HOST_BRIDGE: DMA_ATTR_MMIO)"
        return ""

    def _bulk_faults(self, seq: np.ndarray) -> None:
        link, _ = self.bulk
        m = self.map
        mapped = np.frombuffer(m.mapped, dtype=np.uint8)
        # only the first fault of an entry does work (later ones return the address at once); one
        # batch for the whole sequence, in fault order
        perm = np.argsort(seq, kind="stable")
        ss = seq[perm]
        first = perm[np.concatenate(([True], ss[1:] != ss[:-1]))]  # first fault of each entry
        new = seq[np.sort(first)]
        new = new[mapped[new] == 0]
        if len(new):
            link(self.ctx.dev, m.state, self._phys(new), new * self.entry, self.entry, DMA_BIDIRECTIONAL)
            mapped[new] = 1
            m.nmapped += len(new)

    def _phys(self, idx: np.ndarray) -> np.ndarray:
        m = self.map
        return (m.base + (idx // m.run) * m.stride + (idx % m.run) * self.entry).astype(np.int64)

    def unmap_range(self, indices: np.ndarray, label: str) -> Generator[Step, None, None]:
        ctx = self.ctx
        if ctx.fine:
            for idx in indices.tolist():
                ctx.begin("hmm_dma_unmap_pfn", idx=idx)
                done = self.hmm_dma_unmap_pfn(idx)
                yield ctx.step(f"{label}: hmm_dma_unmap_pfn({idx})" + ("" if done else " (not mapped)"), idx=idx)
            return
        ctx.begin("hmm_dma_unmap_pfn", entries=len(indices), label=label, calls=len(indices))
        before = self.map.nmapped
        if self.bulk is not None and self.use_iova:
            self._bulk_unmap(indices)
        else:
            for i in range(0, len(indices), _CHUNK):
                for idx in indices[i:i + _CHUNK].tolist():
                    self.hmm_dma_unmap_pfn(idx)
        yield ctx.step(f"{label}: hmm_dma_unmap_pfn over {len(indices)} entries, {before - self.map.nmapped} "
                       "were mapped")

    def _bulk_unmap(self, indices: np.ndarray) -> None:
        _, unlink = self.bulk
        m = self.map
        mapped = np.frombuffer(m.mapped, dtype=np.uint8)
        sel = indices[mapped[indices] == 1]
        if len(sel):
            unlink(self.ctx.dev, m.state, sel * self.entry, self.entry, DMA_BIDIRECTIONAL)
            mapped[sel] = 0
            m.nmapped -= len(sel)

    def view(self) -> dict:
        """The DMA address per entry the device holds (its MTT), 0 where not mapped."""
        m = self.map
        mapped = np.frombuffer(m.mapped, dtype=np.uint8).astype(bool)
        if self.use_iova:
            dma = np.where(mapped, np.uint64(m.state.addr) + np.arange(self.npages, dtype=np.uint64)
                           * np.uint64(self.entry), np.uint64(0))
        else:
            assert m.addrs is not None
            dma = np.where(mapped, np.frombuffer(m.addrs, dtype=np.uint64), np.uint64(0))
        for idx, a in m.bus.items():            # P2P bus addresses (7.3.4)
            dma[idx] = a
        return {"entry_size": self.entry, "npages": self.npages, "mapped": int(mapped.sum()),
                "state_addr": m.state.addr if self.use_iova else None, "dma": dma}


def iter_steps(ctx: ScenarioContext | str | dict, api: str = "iova", *, strict: bool = True,
               keep_events: bool = True, fine: bool = True) -> Generator[Step, None, None]:
    """The HMM scenario as steps: registration, faults, invalidations (and refaults), teardown.
    ``ctx.device_view`` is the MTT-like ``{"dma": ndarray(uint64) per entry, "mapped", "state_addr",
    ...}`` taken after the faults and invalidations, before teardown."""
    ctx = as_context(ctx, api, "hmm", "mlx5", strict=strict, keep_events=keep_events, fine=fine)
    if ctx.api not in APIS:
        raise ValueError(f"api {ctx.api!r} does not apply to the hmm scenario; valid: {', '.join(APIS)}")
    h = _Hmm(ctx)
    seq = fault_order(ctx.params, h.npages)
    h.unique_faults = ctx.params.get("fault_order", "sequential") != "repeated"
    yield from h.hmm_dma_map_alloc()
    yield from h.faults(seq, f"{ctx.params.get('fault_order', 'sequential')} faults")
    for a, b in h.invalidate:
        rng = np.arange(a, a + b, dtype=np.int64)
        yield from h.unmap_range(rng, f"invalidate [{a}, {a + b})")
        if h.refault:
            yield from h.faults(rng, f"refault [{a}, {a + b})")
    ctx.device_view = h.view()
    mapped = np.flatnonzero(np.frombuffer(h.map.mapped, dtype=np.uint8)).astype(np.int64)
    yield from h.unmap_range(mapped, "teardown (ib_umem_odp_unmap_dma_pages)")
    ctx.begin("hmm_dma_map_free")
    h.hmm_dma_map_free()
    yield ctx.step("hmm_dma_map_free: " + ("dma_iova_free of the whole reservation" if h.use_iova
                                           else "free pfn_list/dma_list"))
    yield from ctx.settle()
    ctx.extra.update({"faults": int(len(seq)), "use_iova": h.use_iova, "bulk": h.bulk is not None})
    if h.use_iova:
        ctx.notes.append("every dma_iova_unlink (invalidation and teardown) carries its own strict IOTLB sync, "
                         "also in lazy domains")


run = make_run("hmm", "mlx5", iter_steps)
