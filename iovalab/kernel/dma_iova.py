"""The two-step IOVA-based DMA API: ``include/linux/dma-mapping.h`` (``struct dma_iova_state``,
``dma_use_iova``, ``dma_iova_size``) and the ``dma_iova_*`` functions of ``drivers/iommu/dma-iommu.c``
(Linux 6.16/6.17), plus ``dma_info_to_prot`` which both DMA paths share.

``dma_iova_try_alloc`` reserves IOVA once (``phys`` only sets the sub-granule offset);
``dma_iova_link`` writes page-table entries without syncing; one ``dma_iova_sync`` makes them
visible; ``dma_iova_unlink`` (always strict, keeps the IOVA), ``dma_iova_destroy`` (one unmap, one
sync or flush-queue entry, and the free; in 7.3.4 an unlink and a free, never queued) and
``dma_iova_free`` undo it. The swiotlb variant of the
link (``iommu_dma_iova_link_swiotlb``) bounces unaligned head and tail granules.

:class:`IovaApi` holds these calls over a :class:`DmaIovaHost`: what they need from the DMA domain
(``struct iommu_dma_cookie`` + ``struct iommu_domain``): its IOMMU domain, granule, swiotlb pool, the
IOVA alloc/free of ``dma-iommu.c`` (which go through the flush queue) and the checks shared with the
classic path. :class:`iovalab.kernel.dma_iommu.DmaDomain` is such a host, holds an :class:`IovaApi`
and forwards its ``dma_iova_*`` methods to it. Error conventions are those of
:mod:`iovalab.kernel.dma_iommu`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from iovalab.kernel.device import (
    DMA_ATTR_PRIVILEGED, DMA_ATTR_SKIP_CPU_SYNC, DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE, Device,
    valid_dma_direction,
)
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import (
    IOMMU_CACHE, IOMMU_MMIO, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE, IommuDomain, IotlbGather,
)
from iovalab.kernel.swiotlb import SwiotlbPool
from iovalab.kernel.units import (
    DMA_MAPPING_ERROR, EINVAL, EIO, ENOMEM, EPERM, DmaError, check_cpu, check_phys, check_size, iova_align,
    iova_offset,
)
from iovalab.kernel.version import behaves

__all__ = ["DMA_ATTR_MMIO", "DMA_IOVA_USE_SWIOTLB", "dma_info_to_prot", "DmaIovaState", "dma_use_iova",
           "dma_iova_size", "dma_iova_range", "DmaIovaHost", "IovaApi"]

#: DMA_ATTR_MMIO (include/linux/dma-mapping.h, 6.18+)
DMA_ATTR_MMIO = 1 << 10
#: private flag in ``dma_iova_state.__size`` (include/linux/dma-mapping.h)
DMA_IOVA_USE_SWIOTLB = 1 << 63

_L = "dma"


def dma_info_to_prot(dir: int, coherent: bool, attrs: int) -> int:
    """``dma_info_to_prot(dir, coherent, attrs)`` (dma-iommu.c): IOMMU prot bits for a mapping.

    6.18+ ``DMA_ATTR_MMIO`` uses ``IOMMU_MMIO`` instead of ``IOMMU_CACHE``.
    """
    if attrs & DMA_ATTR_MMIO:
        prot = IOMMU_MMIO
    else:
        prot = IOMMU_CACHE if coherent else 0
    if attrs & DMA_ATTR_PRIVILEGED:
        prot |= IOMMU_PRIV
    if dir == DMA_BIDIRECTIONAL:
        return prot | IOMMU_READ | IOMMU_WRITE
    if dir == DMA_TO_DEVICE:
        return prot | IOMMU_READ
    if dir == DMA_FROM_DEVICE:
        return prot | IOMMU_WRITE
    return 0


@dataclass
class DmaIovaState:
    """``struct dma_iova_state`` (include/linux/dma-mapping.h): ``addr`` and ``__size``.

    ``__size`` carries the requested size with bit 63 = ``DMA_IOVA_USE_SWIOTLB``. Allocated by the
    caller, zeroed by ``dma_iova_try_alloc``, kept until unmap time.
    """

    addr: int = 0
    size_field: int = 0  # the kernel's __size
    #: simulator bookkeeping for the Part Ie contract checks (not kernel fields): the ``(offset,
    #: size)`` of live links that end mid-granule, the highest offset linked so far, and whether
    #: ``dma_iova_free``/``destroy`` already gave the IOVA back
    links: list = field(default_factory=list, repr=False, compare=False)
    max_offset: int = field(default=-1, repr=False, compare=False)
    freed: bool = field(default=False, repr=False, compare=False)

    def __repr__(self) -> str:
        flag = " USE_SWIOTLB" if self.size_field & DMA_IOVA_USE_SWIOTLB else ""
        return f"DmaIovaState(addr={self.addr:#x}, size={dma_iova_size(self):#x}{flag})"


def dma_use_iova(state: DmaIovaState) -> bool:
    """``dma_use_iova(state)`` (dma-mapping.h): ``state->__size != 0``."""
    return state.size_field != 0


def dma_iova_size(state: DmaIovaState) -> int:
    """``dma_iova_size(state)`` (dma-mapping.h): ``__size`` without ``DMA_IOVA_USE_SWIOTLB``."""
    return state.size_field & ~DMA_IOVA_USE_SWIOTLB


def dma_iova_range(state: DmaIovaState, granule: int) -> tuple[int, int]:
    """``(iova, length)``: the granule-aligned IOVA a state holds, as ``dma_iova_free()`` and
    ``dma_iova_destroy()`` (dma-iommu.c) compute it: ``iova_align(size + iova_offset(addr))`` bytes
    from ``addr - iova_offset(addr)``."""
    pad = iova_offset(granule, state.addr)
    return state.addr - pad, iova_align(granule, dma_iova_size(state) + pad)


class DmaIovaHost(Protocol):
    """What the ``dma_iova_*`` calls use of a DMA domain (``struct iommu_dma_cookie`` and its
    ``struct iommu_domain``, drivers/iommu/dma-iommu.c)."""

    log: EventLog
    iommu: IommuDomain
    granule: int
    ncpus: int
    swiotlb: SwiotlbPool | None
    check_contract: bool
    #: the modelled kernel version (:mod:`iovalab.kernel.version`)
    kernel: str

    @property
    def fq_domain(self) -> bool:
        """``cookie->fq_domain != NULL``."""
        ...

    def iommu_dma_alloc_iova(self, size: int, dma_limit: int, dev: Device, cpu: int = 0) -> int:
        """``iommu_dma_alloc_iova()``: the IOVA, 0 on failure."""
        ...

    def iommu_dma_free_iova(self, iova: int, size: int, gather: IotlbGather | None, cpu: int = 0) -> None:
        """``iommu_dma_free_iova()``: free now, or queue when ``gather->queued``."""
        ...

    def first_unmapped(self, iova: int, size: int) -> int | None:
        """First granule address in ``[iova, iova + size)`` with no translation, or None."""
        ...

    def mapped_granules(self, iova: int, size: int) -> list[int]:
        """Up to 16 granule addresses in ``[iova, iova + size)`` that have a translation."""
        ...

    def check_mapped(self, func: str, iova: int, size: int, cpu: int) -> None:
        """Refuse (WARN + -EINVAL) an unmap of a range that is not fully mapped."""
        ...

    def needs_bounce(self, dev: Device, size: int, dir: int, phys: int) -> bool:
        """``dev_use_swiotlb(dev, size, dir) && iova_unaligned(iovad, phys, size)``."""
        ...

    def trace_api(self, func: str, dev: Device, cpu: int, result: Any, **args: Any) -> None:
        """One ``dma_api_calls`` event for a DMA API entry point."""
        ...

    def trace_api_values(self, func: str, dev: Device, cpu: int, result: Any, *values: Any) -> None:
        """:meth:`trace_api` with the arguments after ``dev`` in the schema's order."""
        ...


class IovaApi:
    """The ``dma_iova_*`` calls of ``drivers/iommu/dma-iommu.c`` over a DMA domain (``host``, any
    :class:`DmaIovaHost`; :class:`iovalab.kernel.dma_iommu.DmaDomain` holds one and forwards its
    ``dma_iova_*`` methods here)."""

    def __init__(self, host: DmaIovaHost):
        self.host = host

    def dma_iova_try_alloc(self, dev: Device, state: DmaIovaState, phys: int, size: int,
                           cpu: int = 0) -> bool:
        """``dma_iova_try_alloc(dev, state, phys, size)`` (dma-iommu.c).

        :param phys: ``phys_addr_t``, only its offset inside the granule matters (0 is fine for
            granule-aligned transfers).
        :param size: ``size_t`` bytes.
        Reserves ``iova_align(size + iova_offset(phys))`` bytes of IOVA (32-bit first for PCI, the
        rcache, power-of-two rounding below 32 granules, size alignment) and sets
        ``state->addr = iova + iova_offset(phys)``, ``state->__size = size``. No PTE is written.
        """
        check_cpu("dma_iova_try_alloc", cpu, self.host.ncpus)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= (1 << 64) - 1:
            raise ValueError(f"dma_iova_try_alloc: size {size!r} must be an int in 0..2^64-1 (size_t)")
        if not size & DMA_IOVA_USE_SWIOTLB:
            check_phys("dma_iova_try_alloc", phys, size)
        state.addr = 0
        state.size_field = 0
        state.links = []
        state.max_offset = -1
        state.freed = False
        ok = False
        self.host.log.depth += 1
        try:
            if size == 0 or size & DMA_IOVA_USE_SWIOTLB:
                self.host.log.warn(_L, "dma_iova_try_alloc", 0,
                              "WARN_ON_ONCE(!size)" if size == 0 else
                              f"WARN_ON_ONCE(size {size:#x} & DMA_IOVA_USE_SWIOTLB)", cpu=cpu)
            elif size < 0:
                raise ValueError(f"dma_iova_try_alloc: size {size} must be >= 0")
            else:
                g = self.host.granule
                off = iova_offset(g, phys)
                addr = self.host.iommu_dma_alloc_iova(iova_align(g, size + off), dev.dma_get_mask(), dev, cpu)
                if addr:
                    state.addr = addr + off
                    state.size_field = size
                    ok = True
        finally:
            self.host.log.depth -= 1
        g = self.host.granule
        self.host.trace_api_values("dma_iova_try_alloc", dev, cpu, ok, phys, size, state.addr,
                                   iova_align(g, size + iova_offset(g, phys)))
        return ok

    def _check_cpu_arg(self, func: str, cpu) -> None:
        check_cpu(func, cpu, self.host.ncpus)

    @staticmethod
    def _check_range_args(func: str, offset, size, zero_ok: bool = False) -> None:
        """``offset`` and ``size`` (``size_t``) must be ints with ``size > 0`` (``>= 0`` with ``zero_ok``)."""
        check_size(func, size, zero_ok=zero_ok)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= (1 << 64) - 1 - size:
            raise ValueError(f"{func}: offset {offset!r} must be an int >= 0 inside the 64-bit space")


    def dma_iova_free(self, dev: Device, state: DmaIovaState, cpu: int = 0) -> None:
        """``dma_iova_free(dev, state)`` (dma-iommu.c): give the whole IOVA back at once
        (never queued, no IOTLB work). Every linked range must have been unlinked first."""
        if not dma_use_iova(state):
            raise ValueError("dma_iova_free: state does not hold an IOVA (dma_use_iova() is false)")
        self._check_cpu_arg("dma_iova_free", cpu)
        self._check_not_freed("dma_iova_free", state, cpu)
        base, length = dma_iova_range(state, self.host.granule)
        linked = self.host.mapped_granules(base, length)
        if linked:
            self.host.log.emit(_L, "dma_iova_free", "contract", None, cpu=cpu,
                          rule=f"granule(s) still linked (first {linked[0]:#x}); "
                          "the kernel does not check and frees the IOVA with live PTEs")
            if self.host.check_contract:
                raise DmaError(-EINVAL, f"dma_iova_free with IOVA {linked[0]:#x} still linked",
                               "dma_iova_free")
        self.host.iommu_dma_free_iova(base, length, None, cpu)
        state.freed = True
        self.host.trace_api("dma_iova_free", dev, cpu, None, addr=state.addr, size=dma_iova_size(state))

    def _contract(self, func: str, rule: str, refusal: str, cpu: int) -> None:
        """A Part Ie rule of Documentation/core-api/dma-api.rst that nothing in the kernel checks
        (dma-debug has no hooks in the ``dma_iova_*`` calls): a ``contract`` event; refused with
        ``-EINVAL`` under ``check_contract=True``."""
        self.host.log.emit(_L, func, "contract", None, cpu=cpu, rule=rule)
        if self.host.check_contract:
            raise DmaError(-EINVAL, refusal, func)

    def _check_not_freed(self, func: str, state: DmaIovaState, cpu: int) -> None:
        if state.freed:
            self._contract(func, f"IOVA {state.addr:#x} was already given back (dma_iova_free/destroy); "
                           "the kernel does not check and the allocator takes it back twice, so it is "
                           "handed out twice", f"IOVA {state.addr:#x} of this state was already freed", cpu)

    def dma_iova_link(self, dev: Device, state: DmaIovaState, phys: int, offset: int, size: int,
                      dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> int:
        """``dma_iova_link(dev, state, phys, offset, size, dir, attrs)`` (dma-iommu.c).

        Maps IOVA ``state->addr + offset - pad`` to ``phys - pad`` for ``iova_align(size + pad)``
        bytes (``pad = iova_offset(phys)``) with ``iommu_map_nosync``: PTEs written, no sync.
        Only the first range (offset 0) may start mid-granule: else WARN_ON_ONCE and ``-EIO``.
        Returns 0; raises :class:`DmaError` with the kernel's errno.
        """
        valid_dma_direction(dir)
        if not dma_use_iova(state):
            raise ValueError("dma_iova_link: state does not hold an IOVA (dma_iova_try_alloc failed "
                             "or was not called)")
        self._check_cpu_arg("dma_iova_link", cpu)
        check_size("dma_iova_link", size)
        check_phys("dma_iova_link", phys, size)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= (1 << 64) - 1 - size:
            raise ValueError(f"dma_iova_link: offset {offset!r} must be an int >= 0 with offset + size "
                             "inside the 64-bit space")
        host = self.host
        g = host.granule
        pad = iova_offset(g, phys)
        if pad and offset > 0:
            host.log.warn(_L, "dma_iova_link", EIO, f"phys {phys:#x} has granule offset {pad:#x} at "
                          f"offset {offset:#x} > 0: only the first range may start mid-granule", cpu=cpu)
            raise DmaError(-EIO, f"phys {phys:#x} is not granule-aligned (offset {pad:#x}) and "
                           f"offset {offset:#x} > 0", "dma_iova_link", warned=True)
        if offset + size > dma_iova_size(state):
            self.host.log.emit(_L, "dma_iova_link", "contract", None, cpu=cpu,
                          rule=f"offset {offset:#x} + size {size:#x} exceeds the reserved size "
                          f"{dma_iova_size(state):#x} (the kernel does not check this)")
            if self.host.check_contract:
                raise DmaError(-EINVAL, f"offset {offset:#x} + size {size:#x} is past the reserved "
                               f"size {dma_iova_size(state):#x}", "dma_iova_link")
        if state.links or iova_offset(g, state.addr + offset + size):
            self._check_merge_boundary(state, offset, size, cpu)
        log = host.log
        log.depth += 1
        try:
            if host.needs_bounce(dev, size, dir, phys):
                ret = self._iova_link_swiotlb(dev, state, phys, offset, size, dir, attrs, cpu)
            else:
                ret = self.__dma_iova_link(dev, state.addr + offset - pad, phys - pad,
                                           iova_align(g, size + pad), dir, attrs, cpu)
        finally:
            log.depth -= 1
        host.trace_api_values("dma_iova_link", dev, cpu, ret, phys, offset, size, dir)
        if not ret:
            if iova_offset(g, state.addr + offset + size):
                state.links.append((offset, size))
            state.max_offset = max(state.max_offset, offset)
        if ret:
            raise DmaError(ret, f"iommu_map_nosync failed for IOVA {state.addr + offset - pad:#x}",
                           "dma_iova_link")
        return 0

    def _check_merge_boundary(self, state: DmaIovaState, offset: int, size: int, cpu: int) -> None:
        """Documentation/core-api/dma-api.rst Part Ie, ``dma_iova_link``: every range but the last
        must end on ``dma_get_merge_boundary()`` (a granule end), so that the ranges are one
        contiguous IOVA run for the device. Checked when a range is linked after one that ends
        mid-granule (or before a linked one, when this one ends mid-granule). Only the ranges that
        end mid-granule are remembered (few), so long runs of page links stay O(1) per link."""
        g = self.host.granule
        firsts = [(o, n) for o, n in state.links if o < offset] if state.links else []
        if iova_offset(g, state.addr + offset + size) and state.max_offset > offset:
            firsts.append((offset, size))
        if firsts:
            o, n = firsts[0]
            end = state.addr + o + n
            self._contract("dma_iova_link", f"range [{o:#x}, {o + n:#x}) is not the last but ends at IOVA "
                           f"{end:#x}, not on the merge boundary (granule {g:#x}); the kernel does not check",
                           f"range ending at IOVA {end:#x} is followed by another but does not end on the "
                           "merge boundary", cpu)

    def __dma_iova_link(self, dev: Device, iova: int, phys: int, size: int, dir: int, attrs: int,
                        cpu: int) -> int:
        """``__dma_iova_link()`` (dma-iommu.c): CPU cache sync for non-coherent devices, then
        ``iommu_map_nosync`` (no ``iotlb_sync_map``)."""
        if not dev.coherent and not attrs & DMA_ATTR_SKIP_CPU_SYNC:
            self.host.log.emit(_L, "arch_sync_dma_for_device", "cpu_sync", None, cpu=cpu, phys=phys, size=size)
        return self.host.iommu.iommu_map_nosync(iova, phys, size, dma_info_to_prot(dir, dev.coherent, attrs),
                                           cpu=cpu)

    def _iova_link_swiotlb(self, dev: Device, state: DmaIovaState, phys: int, offset: int, size: int,
                           dir: int, attrs: int, cpu: int) -> int:
        """``iommu_dma_iova_link_swiotlb()`` (dma-iommu.c, with stable fix 6ec91df8aff7): bounce
        the unaligned head and tail granules, link the aligned middle directly."""
        if attrs & DMA_ATTR_MMIO:
            return -EPERM
        if self.host.swiotlb is None:
            self.host.log.warn(_L, "iommu_dma_map_swiotlb", 0, "DMA bounce buffers are inactive", cpu=cpu)
            return -ENOMEM
        g = self.host.granule
        start_pad = iova_offset(g, phys)
        end_pad = iova_offset(g, phys + size)
        addr = state.addr + offset
        mapped = 0
        if start_pad:
            blen = min(size, g - start_pad)
            ret = self._bounce_and_link(dev, addr, phys, blen, dir, attrs, start_pad, cpu)
            if ret:
                return ret
            state.size_field |= DMA_IOVA_USE_SWIOTLB
            mapped += blen
            size -= blen
            if not size:
                return 0
        size -= end_pad
        if size:
            ret = self.__dma_iova_link(dev, addr + mapped, phys + mapped, size, dir, attrs, cpu)
            if ret:
                return self._link_swiotlb_out_unmap(dev, state, offset, mapped, dir, attrs, cpu, ret)
            mapped += size
        if end_pad:
            ret = self._bounce_and_link(dev, addr + mapped, phys + mapped, end_pad, dir, attrs, 0, cpu)
            if ret:
                return self._link_swiotlb_out_unmap(dev, state, offset, mapped, dir, attrs, cpu, ret)
            state.size_field |= DMA_IOVA_USE_SWIOTLB
        return 0

    def _link_swiotlb_out_unmap(self, dev, state, offset, mapped, dir, attrs, cpu, ret) -> int:
        """The ``out_unmap`` label of ``iommu_dma_iova_link_swiotlb()`` (dma-iommu.c, 7.3.4): a
        failure after the head was bounced or the middle linked unlinks the ``mapped`` bytes linked
        so far (``dma_iova_unlink``, which also releases the bounce slots). As in the kernel,
        ``DMA_IOVA_USE_SWIOTLB`` stays set in ``state``."""
        if mapped:
            self.dma_iova_unlink(dev, state, offset, mapped, dir, attrs, cpu)
        return ret

    def _bounce_and_link(self, dev, addr, phys, blen, dir, attrs, start_pad, cpu) -> int:
        """``iommu_dma_iova_bounce_and_link()`` (dma-iommu.c)."""
        pool = self.host.swiotlb
        assert pool is not None, "only reached when needs_bounce() said the device bounces"
        bphys = pool.iommu_dma_map_swiotlb(dev, phys, blen, self.host.granule, dir, attrs, cpu)
        if bphys == DMA_MAPPING_ERROR:
            return -ENOMEM
        ret = self.__dma_iova_link(dev, addr - start_pad, bphys - start_pad,
                                   iova_align(self.host.granule, blen), dir, attrs, cpu)
        if ret:
            pool.swiotlb_tbl_unmap_single(bphys, blen, dir, attrs, cpu, dev=dev)
        return ret

    def dma_iova_sync(self, dev: Device, state: DmaIovaState, offset: int, size: int,
                      cpu: int = 0) -> int:
        """``dma_iova_sync(dev, state, offset, size)`` (dma-iommu.c): ``iommu_sync_map`` over the
        granule-rounded range. Returns 0."""
        self._check_cpu_arg("dma_iova_sync", cpu)
        self._check_range_args("dma_iova_sync", offset, size)
        g = self.host.granule
        a = state.addr + offset
        pad = iova_offset(g, a)
        length = iova_align(g, size + pad)
        hole = self.host.first_unmapped(a - pad, length)
        if hole is not None:
            self.host.log.emit(_L, "dma_iova_sync", "contract", None, cpu=cpu,
                          rule=f"sync of IOVA never linked (first {hole:#x}); the kernel does not check")
            if self.host.check_contract:
                raise DmaError(-EINVAL, f"sync of IOVA {hole:#x} which is not linked", "dma_iova_sync")
        self.host.log.depth += 1
        try:
            ret = self.host.iommu.iommu_sync_map(a - pad, length, cpu=cpu)
        finally:
            self.host.log.depth -= 1
        self.host.trace_api_values("dma_iova_sync", dev, cpu, ret, offset, size)
        return ret

    def __iommu_dma_iova_unlink(self, func: str, dev: Device, state: DmaIovaState, offset: int,
                                size: int, dir: int, attrs: int, free_iova: bool, cpu: int) -> None:
        """``__iommu_dma_iova_unlink()`` (dma-iommu.c): slow path per granule for swiotlb or
        non-coherent devices, then one ``iommu_unmap_fast``, a strict sync unless queued, and the
        IOVA free when ``free_iova``."""
        g = self.host.granule
        addr = state.addr + offset
        pad = iova_offset(g, addr)
        length = iova_align(g, size + pad)
        self.host.check_mapped(func, addr - pad, length, cpu)
        skip = DMA_ATTR_SKIP_CPU_SYNC | (DMA_ATTR_MMIO if behaves(self.host.kernel, "dma_map_phys") else 0)
        slow = not dev.coherent and not attrs & skip   # 7.3.4 dma_iova_unlink: MMIO skips the CPU sync
        if (state.size_field & DMA_IOVA_USE_SWIOTLB) or slow:
            # iommu_dma_iova_unlink_range_slow
            end = addr + size
            a = addr
            while a < end:
                chunk = min(end - a, g - iova_offset(g, a))
                p = self.host.iommu.iommu_iova_to_phys(a)
                if slow:
                    self.host.log.emit(_L, "arch_sync_dma_for_cpu", "cpu_sync", None, cpu=cpu, phys=p, size=chunk)
                if self.host.swiotlb is not None and self.host.swiotlb.is_swiotlb_buffer(p):
                    self.host.swiotlb.swiotlb_tbl_unmap_single(p, chunk, dir, attrs, cpu, dev=dev)
                a += chunk
        gather = IotlbGather()
        gather.queued = free_iova and self.host.fq_domain
        unmapped = self.host.iommu.iommu_unmap_fast(addr - pad, length, gather, cpu=cpu)
        if unmapped != length:  # reached only with follow_kernel (check_mapped refuses otherwise)
            self.host.log.warn(_L, "__iommu_dma_iova_unlink", 0,
                               f"WARN_ON(unmapped {unmapped:#x} != size {length:#x})", cpu=cpu)
        if not gather.queued:
            self.host.iommu.iommu_iotlb_sync(gather, cpu=cpu)
        if free_iova:
            self.host.iommu_dma_free_iova(addr - pad, length, gather, cpu)

    def dma_iova_unlink(self, dev: Device, state: DmaIovaState, offset: int, size: int,
                        dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """``dma_iova_unlink(dev, state, offset, size, dir, attrs)`` (dma-iommu.c): unmap a linked
        range with its own (always strict) IOTLB sync; the IOVA stays reserved."""
        valid_dma_direction(dir)
        if not dma_use_iova(state):
            raise ValueError("dma_iova_unlink: state does not hold an IOVA")
        self._check_cpu_arg("dma_iova_unlink", cpu)
        self._check_range_args("dma_iova_unlink", offset, size)
        self.host.log.depth += 1
        try:
            self.__iommu_dma_iova_unlink("dma_iova_unlink", dev, state, offset, size, dir, attrs, False, cpu)
        finally:
            self.host.log.depth -= 1
        state.links = [(o, n) for o, n in state.links if not (offset <= o and o + n <= offset + size)]
        self.host.trace_api("dma_iova_unlink", dev, cpu, None, offset=offset, size=size)

    def dma_iova_destroy(self, dev: Device, state: DmaIovaState, mapped_len: int,
                         dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """``dma_iova_destroy(dev, state, mapped_len, dir, attrs)`` (dma-iommu.c).

        6.17: one unmap of ``[0, mapped_len)``, one sync (strict) or a flush-queue entry (lazy), and
        the free of ``iova_align(mapped_len + pad)``; ``mapped_len == 0`` only frees (``dma_iova_free``).
        7.3.4 (``dma_iova_destroy()``): ``dma_iova_unlink(state, 0, mapped_len)`` when ``mapped_len``
        (its own ``iommu_iotlb_sync``, even in a flush-queue domain), then always ``dma_iova_free``:
        the whole reserved ``iova_align(dma_iova_size + pad)`` straight back, never queued."""
        valid_dma_direction(dir)
        if not dma_use_iova(state):
            raise ValueError("dma_iova_destroy: state does not hold an IOVA")
        self._check_cpu_arg("dma_iova_destroy", cpu)
        self._check_range_args("dma_iova_destroy", 0, mapped_len, zero_ok=True)
        self._check_not_freed("dma_iova_destroy", state, cpu)
        if mapped_len:
            base, length = dma_iova_range(state, self.host.granule)
            cut = iova_align(self.host.granule, state.addr + mapped_len)
            left = self.host.mapped_granules(cut, base + length - cut) if base + length > cut else []
            if left:
                self._contract("dma_iova_destroy", f"mapped_len {mapped_len:#x} does not cover every linked "
                               f"range (IOVA {left[0]:#x} still linked); the kernel does not check and "
                               "frees the IOVA with those PTEs live", f"mapped_len {mapped_len:#x} leaves "
                               f"IOVA {left[0]:#x} linked", cpu)
            new = behaves(self.host.kernel, "destroy_unlink_then_free")
            self.host.log.depth += 1
            try:
                self.__iommu_dma_iova_unlink("dma_iova_destroy", dev, state, 0, mapped_len, dir, attrs,
                                             not new, cpu)
                if new:   # 7.3.4 dma_iova_free(): the whole reservation, never queued
                    self.host.iommu_dma_free_iova(base, length, None, cpu)
            finally:
                self.host.log.depth -= 1
            state.freed = True
            state.links = []
            self.host.trace_api_values("dma_iova_destroy", dev, cpu, None, mapped_len)
        else:
            self.dma_iova_free(dev, state, cpu)

    # ---------------------------------------------------------------- bulk (no kernel analogue)
    def _bulk_ok(self, dev: Device, state: DmaIovaState, offsets, size: int) -> bool:
        """Whether the per-page calls would all take the same plain path (so a batch is exact)."""
        import numpy as np

        if self.host.log.keep or size != self.host.granule or not dev.coherent or not dma_use_iova(state):
            return False
        if state.size_field & DMA_IOVA_USE_SWIOTLB or self.host.iommu.has_iotlb_sync_map:
            return False
        if not self.host.iommu.iotlb_empty():  # cached translations would need per-page invalidation
            return False
        off = np.asarray(offsets, dtype=np.int64)
        g = self.host.granule
        return bool(len(off) > 1 and not (off & (g - 1)).any() and off.min() >= 0
                    and off.max() + size <= dma_iova_size(state) and not iova_offset(g, state.addr))

    def _scaled(self, first, rest_n: int, bulk) -> bool:
        """Run ``first()`` (one page the normal way), then ``bulk()`` for the rest; the tallies of the
        rest are the first page's per-kind counts times ``rest_n`` (table pages are counted by the bulk
        call itself)."""
        log = self.host.log
        mark = log.mark()
        first()
        delta = log.tallies_since(mark)
        delta.pop("table_pages", None)
        if not bulk():
            return False
        log.tally_many(delta, rest_n)
        return True

    def dma_iova_link_sync_pages(self, dev: Device, state: DmaIovaState, phys, offsets, size: int,
                                 dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """For each ``i``: ``dma_iova_link(dev, state, phys[i], offsets[i], size, dir, attrs)`` then
        ``dma_iova_sync(dev, state, offsets[i], size)`` — what ``hmm_dma_map_pfn()`` (mm/hmm.c) does
        per fault — as one batch with the same page-table state and the same counters.

        No kernel analogue: a simulator speed path for multi-million-page workloads, used only when
        the log keeps tallies (``EventLog(keep=False)``) and every call would take the plain path
        (granule-sized, coherent, no bounce, no ``iotlb_sync_map`` callback); otherwise it makes the
        per-page calls."""
        import numpy as np

        phys = np.asarray(phys, dtype=np.uint64)
        offsets = np.asarray(offsets, dtype=np.int64)

        def per_page_range(lo: int, hi: int | None = None) -> None:
            for p, o in zip(phys[lo:hi].tolist(), offsets[lo:hi].tolist(), strict=True):
                self.dma_iova_link(dev, state, p, o, size, dir, attrs, cpu)
                self.dma_iova_sync(dev, state, o, size, cpu)

        def per_page(lo: int) -> None:
            per_page_range(lo)

        if not (self._bulk_ok(dev, state, offsets, size) and not (phys & np.uint64(self.host.granule - 1)).any()):
            return per_page(0)
        iovas = np.uint64(state.addr) + offsets.astype(np.uint64)
        prot = dma_info_to_prot(dir, dev.coherent, attrs)
        if not self._scaled(lambda: per_page_range(0, 1), len(phys) - 1,
                            lambda: self.host.iommu.pgtable.map_leaves_bulk(iovas[1:], phys[1:], prot, cpu)):
            per_page(1)

    def dma_iova_unlink_pages(self, dev: Device, state: DmaIovaState, offsets, size: int,
                              dir: int = DMA_BIDIRECTIONAL, attrs: int = 0, cpu: int = 0) -> None:
        """For each offset: ``dma_iova_unlink(dev, state, offset, size, dir, attrs)`` (each with its
        own strict IOTLB sync, as ``hmm_dma_unmap_pfn()`` does), as one batch with identical state and
        counters; same conditions as :meth:`dma_iova_link_sync_pages`."""
        import numpy as np

        offsets = np.asarray(offsets, dtype=np.int64)

        def per_page(lo: int) -> None:
            for o in offsets[lo:].tolist():
                self.dma_iova_unlink(dev, state, o, size, dir, attrs, cpu)

        if not self._bulk_ok(dev, state, offsets, size):
            return per_page(0)
        iovas = np.uint64(state.addr) + offsets.astype(np.uint64)
        if not self._scaled(lambda: self.dma_iova_unlink(dev, state, int(offsets[0]), size, dir, attrs, cpu),
                            len(offsets) - 1, lambda: self.host.iommu.pgtable.clear_leaves_bulk(iovas[1:])):
            per_page(1)
