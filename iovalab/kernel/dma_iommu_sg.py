"""The scatterlist path of ``drivers/iommu/dma-iommu.c`` (Linux 6.17 and 7.3.4): ``iommu_dma_map_sg()``
(one IOVA for the whole list, boundary padding, one ``iommu_map_sg``; untrusted devices bounce every
segment through ``iommu_dma_map_sg_swiotlb()``), ``__finalise_sg()`` (merging into DMA segments),
``__invalidate_sg()`` and ``iommu_dma_unmap_sg()`` (one ``__iommu_dma_unmap`` over the list), reached
through ``dma_map_sg_attrs()``/``dma_map_sgtable()``/``dma_unmap_sg_attrs()`` (kernel/dma/mapping.c),
and ``struct scatterlist`` as :class:`ScatterEntry`.

7.3.4 adds PCI P2P segments (``pci_p2pdma_state()`` per entry, include/linux/pci-p2pdma.h): a
``PCI_P2PDMA_MAP_BUS_ADDR`` entry gets its bus address (``sg_dma_mark_bus_address()``) and no IOVA;
``iommu_dma_unmap_sg()`` skips and unmarks it.

:class:`ScatterlistMixin` holds these calls for :class:`iovalab.kernel.dma_iommu.DmaDomain`, whose
classic single-buffer path (``__iommu_dma_map``, ``__iommu_dma_unmap``, ``iommu_dma_map_page``) and
IOVA alloc/free they use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iovalab.kernel.device import DMA_ATTR_SKIP_CPU_SYNC, DMA_BIDIRECTIONAL, Device, valid_dma_direction
from iovalab.kernel.dma_debug import DmaDebug, Finding
from iovalab.kernel.dma_iova import dma_info_to_prot
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import IommuDomain, IotlbGather
from iovalab.kernel.p2pdma import (
    MAP_TYPE_NAMES, PCI_P2PDMA_MAP_BUS_ADDR, PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE, P2pdmaPages,
    PciP2pdmaMapState, pci_p2pdma_bus_addr_map, pci_p2pdma_state,
)
from iovalab.kernel.units import (
    DMA_MAPPING_ERROR, EINVAL, EREMOTEIO, check_cpu, check_phys, check_size, iova_align, iova_offset,
)

__all__ = ["ScatterEntry", "ScatterlistMixin"]

_L = "dma"


@dataclass
class ScatterEntry:
    """One ``struct scatterlist`` entry: ``sg_phys(s)`` as ``phys``, ``s->length`` as ``length``;
    after mapping, ``dma_address``/``dma_length`` (``sg_dma_address``/``sg_dma_len``) and
    ``dma_bus_address``: the ``SG_DMA_BUS_ADDRESS`` flag of ``sg->dma_flags``
    (``sg_dma_is_bus_address()``, include/linux/scatterlist.h): a PCI P2P bus address that no IOMMU
    mapping backs (set by ``iommu_dma_map_sg()``, cleared by ``iommu_dma_unmap_sg()``, 7.3.4)."""

    phys: int
    length: int
    dma_address: int = 0
    dma_length: int = 0
    dma_bus_address: bool = False



class ScatterlistMixin:
    """``dma_map_sg``/``dma_map_sgtable``/``dma_unmap_sg`` over a DMA domain
    (:class:`~iovalab.kernel.dma_iommu.DmaDomain`, which provides what is declared below)."""

    #: The machine's PCI P2P pages (:class:`~iovalab.kernel.p2pdma.P2pdmaPages`), what
    #: ``is_pci_p2pdma_page(sg_page(s))`` answers in ``iommu_dma_map_sg()`` (7.3.4); None: no P2P memory.
    #: Set by whoever builds the machine (a scenario's ``p2p`` parameter).
    p2pdma: P2pdmaPages | None = None

    if TYPE_CHECKING:
        log: EventLog
        iommu: IommuDomain
        granule: int
        ncpus: int
        debug: DmaDebug | None

        def dma_map_page(self, dev: Device, phys: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                         attrs: int = 0, cpu: int = 0) -> int: ...

        def dma_unmap_page(self, dev: Device, dma_addr: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                           attrs: int = 0, cpu: int = 0) -> None: ...

        def iommu_dma_alloc_iova(self, size: int, dma_limit: int, dev: Device, cpu: int = 0) -> int: ...

        def iommu_dma_free_iova(self, iova: int, size: int, gather: IotlbGather | None,
                                cpu: int = 0) -> None: ...

        def _iommu_dma_unmap(self, dev: Device, dma_addr: int, size: int, cpu: int) -> int: ...

        def check_mapped(self, func: str, iova: int, size: int, cpu: int) -> None: ...

        def trace_api(self, func: str, dev: Device, cpu: int, result: Any, **args: Any) -> None: ...

        def _swiotlb_active(self) -> bool: ...

        def _raise_findings(self, found: list[Finding], result=None) -> None: ...

        def _refuse_unmap(self, func: str, refs_findings: list[tuple[str, str]], dev: Device,
                          cpu: int) -> None: ...

    def dma_map_sg(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                   attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_sg_attrs()`` -> ``iommu_dma_map_sg()`` (dma-iommu.c).

        One IOVA for the whole list (``iova_len`` = Σ granule-aligned segment lengths plus boundary
        padding), one ``iommu_map_sg`` (a map call per physically contiguous run, one sync), then
        ``__finalise_sg`` merges segments into DMA segments. Returns the number of DMA segments
        (``ents``); 0 on failure, as ``dma_map_sg`` does (``dma_map_sgtable`` returns the errno).

        PCI P2P pages (:attr:`p2pdma`; 7.3.4 ``iommu_dma_map_sg()``, ``pci_p2pdma_state()`` per entry):
        ``PCI_P2PDMA_MAP_BUS_ADDR`` - the entry gets the bus address (``pci_p2pdma_bus_addr_map``) and
        is marked ``dma_bus_address``; it takes no IOVA and ``iommu_map_sg`` skips it (no list of bus
        entries only allocates nothing); ``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`` - mapped with regular IOVAs
        and the caller's ``attrs``: no ``DMA_ATTR_MMIO`` is added, so the PTEs carry no ``IOMMU_MMIO``
        (unlike ``blk_rq_dma_map_iter_start()`` and ``hmm_dma_map_pfn()``, which add it); any other type
        (``PCI_P2PDMA_MAP_NOT_SUPPORTED``) - ``-EREMOTEIO`` after ``__invalidate_sg``, nothing mapped.
        """
        ents = self._dma_map_sg_attrs(dev, sgl, dir, attrs, cpu)
        return ents if ents > 0 else 0

    def dma_map_sgtable(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                        attrs: int = 0, cpu: int = 0) -> int:
        """``dma_map_sgtable()`` (kernel/dma/mapping.c, 7.3.4): what :meth:`dma_map_sg` does, returning
        0 on success or the errno of ``iommu_dma_map_sg()``: ``-EREMOTEIO`` when the device cannot reach
        a P2P entry, ``-ENOMEM`` when no IOVA is left, ``-EINVAL`` when ``iommu_map_sg`` failed."""
        ents = self._dma_map_sg_attrs(dev, sgl, dir, attrs, cpu)
        return 0 if ents > 0 else (ents or -EINVAL)

    def _dma_map_sg_attrs(self, dev: Device, sgl: list[ScatterEntry], dir: int, attrs: int, cpu: int) -> int:
        """``__dma_map_sg_attrs()``: DMA segments, or a negative errno."""
        valid_dma_direction(dir)
        check_cpu("dma_map_sg", cpu, self.ncpus)
        if not isinstance(sgl, list) or not sgl:
            raise ValueError(f"dma_map_sg: sgl {sgl!r} must be a non-empty list of ScatterEntry")
        total = 0
        for i, s in enumerate(sgl):
            if not isinstance(s, ScatterEntry):
                raise ValueError(f"dma_map_sg: sgl[{i}] {s!r} is not a ScatterEntry")
            check_size(f"dma_map_sg: sgl[{i}]", s.length)
            check_phys(f"dma_map_sg: sgl[{i}]", s.phys, s.length)
            total += s.length
        check_size("dma_map_sg: total length", total)
        self.log.depth += 1
        try:
            untrusted = False
            if dev.untrusted:  # dev_use_sg_swiotlb: iommu_dma_map_sg_swiotlb, every segment on its own
                done: list[ScatterEntry] = []
                saved_debug, self.debug = self.debug, None  # inner calls: no dma-debug hooks
                try:
                    for s in sgl:
                        s.dma_address = self.dma_map_page(dev, s.phys, s.length, dir, attrs, cpu)
                        s.dma_length = s.length
                        if s.dma_address == DMA_MAPPING_ERROR:
                            break
                        done.append(s)
                finally:  # out_unmap: a failure (or an exception) unmaps the segments mapped so far
                    if len(done) < len(sgl):
                        for t in done:
                            self.dma_unmap_page(dev, t.dma_address, t.length, dir,
                                                attrs | DMA_ATTR_SKIP_CPU_SYNC, cpu)
                    self.debug = saved_debug
                ents = len(sgl) if len(done) == len(sgl) else 0
                untrusted = True
            else:
                ents = self._map_sg_iova(dev, sgl, dir, attrs, cpu)
        finally:
            self.log.depth -= 1
        if ents < 0:   # -EREMOTEIO: dma_map_sg_attrs() returns 0, dma_map_sgtable() the errno
            self.log.emit(_L, "iommu_dma_map_sg", "step", ents, cpu=cpu, nents=len(sgl),
                          rule="pci_p2pdma_state: PCI_P2PDMA_MAP_NOT_SUPPORTED for a P2P entry")
            return ents
        if not untrusted:  # the swiotlb path's calls were traced one by one
            self.trace_api("dma_map_sg", dev, cpu, ents, dir=dir, nents=len(sgl),
                           phys=[s.phys for s in sgl], dma_addrs=[s.dma_address for s in sgl[:ents]],
                           sizes=[s.dma_length for s in sgl[:ents]])
        if self.debug is not None and ents:
            self._raise_findings(self.debug.debug_dma_map_sg(dev, sgl, len(sgl), ents, dir, attrs,
                                                             self._swiotlb_active(), cpu), ents)
        return ents

    def _no_debug(self):
        """dma-debug hooks sit in ``dma_map_*_attrs``/``dma_unmap_*_attrs`` (kernel/dma/mapping.c), not
        in the ``iommu_dma_*`` calls those make: inner per-segment calls run with the hooks off."""
        from contextlib import contextmanager

        @contextmanager
        def off():
            saved, self.debug = self.debug, None
            try:
                yield
            finally:
                self.debug = saved
        return off()

    def _map_sg_iova(self, dev: Device, sgl: list[ScatterEntry], dir: int, attrs: int, cpu: int) -> int:
        """``iommu_dma_map_sg()`` past the swiotlb case: one IOVA for the list (7.3.4: P2P entries as
        :meth:`dma_map_sg` says). Returns the DMA segments, 0 on an IOVA or map failure, or -EREMOTEIO."""
        g = self.granule
        mask = dev.dma_get_seg_boundary()
        iova_len = 0
        layout: list[list[int] | None] = []  # [phys_aligned, aligned_len, s_iova_off, s_len]; None: bus address
        prev: list[int] | None = None
        p2p = self.p2pdma
        p2pdma_state = PciP2pdmaMapState()
        for s in sgl:
            if p2p:
                t = pci_p2pdma_state(p2pdma_state, p2p, dev.name, s.phys, dev.is_pci)
                if t == PCI_P2PDMA_MAP_BUS_ADDR:
                    assert p2pdma_state.mem is not None
                    s.dma_address = pci_p2pdma_bus_addr_map(p2pdma_state.mem, s.phys)
                    s.dma_length = s.length
                    s.dma_bus_address = True      # sg_dma_mark_bus_address(s)
                    layout.append(None)
                    continue
                if t not in (PCI_P2PDMA_MAP_NONE, PCI_P2PDMA_MAP_THRU_HOST_BRIDGE):
                    self.__invalidate_sg(sgl)     # out_restore_sg
                    assert t in MAP_TYPE_NAMES
                    return -EREMOTEIO
            s_iova_off = iova_offset(g, s.phys)
            s_len = s.length
            seg = [s.phys - s_iova_off, iova_align(g, s_len + s_iova_off), s_iova_off, s_len]
            pad_len = (mask - iova_len + 1) & mask
            if pad_len and pad_len < seg[1] - 1:
                assert prev is not None  # the first segment starts at iova_len 0: pad_len is 0
                prev[1] += pad_len
                iova_len += pad_len
            iova_len += seg[1]
            layout.append(seg)
            prev = seg
        if not iova_len:   # bus addresses only: no IOVA, nothing to map
            return self.__finalise_sg(dev, sgl, layout, 0)
        iova = self.iommu_dma_alloc_iova(iova_len, dev.dma_get_mask(), dev, cpu)
        if not iova:
            ents = 0
        else:
            prot = dma_info_to_prot(dir, dev.coherent, attrs)
            # iommu_map_sg() skips a bus-address entry but still ends the physically contiguous run at
            # it unless it happens to continue it: a zero-length entry at its phys does just that
            ret = self.iommu.iommu_map_sg(iova, [(s.phys, 0) if seg is None else (seg[0], seg[1])
                                                 for s, seg in zip(sgl, layout, strict=True)], prot, cpu=cpu)
            if ret < iova_len:
                self.iommu_dma_free_iova(iova, iova_len, None, cpu)
                ents = 0
            else:
                ents = self.__finalise_sg(dev, sgl, layout, iova)
        return ents

    def __finalise_sg(self, dev: Device, sgl: list[ScatterEntry], layout: list, dma_addr: int) -> int:
        """``__finalise_sg(dev, sg, nents, dma_addr)`` (dma-iommu.c): merge into DMA segments. A
        bus-address entry (7.3.4) becomes an output segment of its own, still marked, and ends the
        segment before it."""
        seg_mask = dev.dma_get_seg_boundary()
        max_len = dev.dma_get_max_seg_size()
        cur_len = 0
        count = 0
        out: list[list] = []   # [dma_address, dma_length, bus address]
        for s, seg in zip(sgl, layout, strict=True):
            if seg is None:
                out.append([s.dma_address, s.dma_length, True])
                count += 1
                cur_len = 0
                continue
            _, s_iova_len, s_iova_off, s_len = seg
            if cur_len and not s_iova_off and (dma_addr & seg_mask) and max_len - cur_len >= s_len:
                cur_len += s_len
            else:  # start the next output segment; the previous one keeps its length
                out.append([dma_addr + s_iova_off, s_len, False])
                count += 1
                cur_len = s_len
            out[-1][1] = cur_len
            dma_addr += s_iova_len
            if s_len + s_iova_off < s_iova_len:
                cur_len = 0
        for i, s in enumerate(sgl):  # entries past the last output segment keep the reset values
            s.dma_address, s.dma_length, s.dma_bus_address = out[i] if i < count else (DMA_MAPPING_ERROR, 0, False)
        return count

    @staticmethod
    def __invalidate_sg(sgl: list[ScatterEntry]) -> None:
        """``__invalidate_sg(sg, nents)`` (dma-iommu.c, 7.3.4): every entry back to
        ``DMA_MAPPING_ERROR``, length 0, no bus-address mark."""
        for e in sgl:
            e.dma_address, e.dma_length, e.dma_bus_address = DMA_MAPPING_ERROR, 0, False

    def dma_unmap_sg(self, dev: Device, sgl: list[ScatterEntry], dir: int = DMA_BIDIRECTIONAL,
                     attrs: int = 0, cpu: int = 0, nents: int | None = None) -> None:
        """``dma_unmap_sg_attrs()`` -> ``iommu_dma_unmap_sg()`` (dma-iommu.c): one
        ``__iommu_dma_unmap`` from the first segment's DMA address to the end of the last
        non-empty one among the first ``nents`` entries.

        ``nents`` is what the driver passes (default ``len(sgl)``, the count it gave ``dma_map_sg``);
        passing ``dma_map_sg``'s return value instead is the classic bug dma-debug reports."""
        valid_dma_direction(dir)
        check_cpu("dma_unmap_sg", cpu, self.ncpus)
        if not isinstance(sgl, list) or not sgl or not all(isinstance(s, ScatterEntry) for s in sgl):
            raise ValueError(f"dma_unmap_sg: sgl {sgl!r} must be the non-empty list passed to dma_map_sg")
        if dev.untrusted:
            bad = [s for s in sgl if s.dma_address == DMA_MAPPING_ERROR or not s.dma_length]
            if bad:
                raise ValueError(f"dma_unmap_sg: segment {bad[0]!r} is not mapped (dma_map_sg failed or was "
                                 "not called)")
        if nents is None:
            nents = len(sgl)
        if not isinstance(nents, int) or isinstance(nents, bool) or not 1 <= nents <= len(sgl):
            raise ValueError(f"dma_unmap_sg: nents {nents!r} must be in 1..{len(sgl)} (entries of the list)")
        refs = None
        if self.debug is not None:
            refs = self.debug.unmap_sg_refs(dev, sgl, nents, dir, attrs)
            self._refuse_unmap("debug_dma_unmap_sg", self.debug.findings_for_unmap_sg(refs), dev, cpu)
        sgl = sgl[:nents]
        self.trace_api("dma_unmap_sg", dev, cpu, None, dir=dir, phys=[s.phys for s in sgl])
        self.log.depth += 1
        try:
            if dev.untrusted:
                with self._no_debug():
                    for s in sgl:
                        self.dma_unmap_page(dev, s.dma_address, s.length, dir, attrs, cpu)
                return
            # 7.3.4: the IOVA runs from the first to the last entry that is not a P2P bus address
            # (those are unmarked on the way, sg_dma_unmark_bus_address); none: nothing to unmap
            start = end = 0
            first = True
            for s in sgl:
                if s.dma_bus_address:
                    s.dma_bus_address = False
                    continue
                if not s.dma_length:
                    break
                if first:
                    start, first = s.dma_address, False
                end = s.dma_address + s.dma_length
            if end:
                g = self.granule
                a = start - iova_offset(g, start)
                self.check_mapped("iommu_dma_unmap_sg", a, iova_align(g, end - a), cpu)
                self._iommu_dma_unmap(dev, start, end - start, cpu)
        finally:
            self.log.depth -= 1
        if refs is not None and self.debug is not None:
            for ref in refs:
                self.debug.check_unmap(ref, "debug_dma_unmap_sg", cpu)
