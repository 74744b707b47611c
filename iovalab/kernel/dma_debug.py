"""``CONFIG_DMA_API_DEBUG``: the DMA API's own checker, ``kernel/dma/debug.c`` (read in Linux 7.3.4).

dma-debug records every mapping a driver makes in a hash table of ``struct dma_debug_entry`` (keyed by
device + DMA address, ``hash_fn()`` = bits 13..26 of the address) and checks every unmap against it
(``check_unmap()``). Each finding is an ``err_printk()``: a ``WARN`` whose text begins
``DMA-API: <driver> <device>:``. dma-debug only reports: the call goes on exactly as it would without it.

Modelled here (the hooks the simulator's DMA paths have):

* ``debug_dma_map_phys`` (7.3; ``debug_dma_map_page`` in 6.17) - entry type ``phy`` in 7.3,
  ``single`` in 6.17 (``type2name[]``), ``map_err_type = MAP_ERR_NOT_CHECKED``;
* ``debug_dma_mapping_error`` - marks the first unchecked exact match ``MAP_ERR_CHECKED``;
* ``debug_dma_unmap_phys`` / ``debug_dma_unmap_sg`` / ``debug_dma_free_coherent`` -> ``check_unmap``:
  no entry ("tries to free DMA memory it has not allocated" / "an invalid DMA memory address"), size,
  type ("wrong function"), coherent CPU address, sg entry count, direction, unchecked map error,
  attributes (7.3's ``DMA_ATTR_UNMAP_VALID`` set);
* ``debug_dma_map_sg`` -> ``check_sg_segment`` (segment longer than ``dma_get_max_seg_size``, segment
  across ``dma_get_seg_boundary``) and one entry per *mapped* segment;
* ``add_dma_entry`` -> ``active_cacheline_insert``: the first cacheline of a mapping that the device may
  write (not ``DMA_TO_DEVICE``) goes into a radix tree; a second live mapping of it reports
  "cacheline tracking EEXIST, overlapping mappings aren't supported" unless ``DMA_ATTR_SKIP_CPU_SYNC``,
  or ``dma_get_cache_alignment() < L1_CACHE_BYTES`` (x86: 1, so never there), or
  ``CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC`` with swiotlb active. Overlaps are counted in 3 radix tags
  (at most 7, ``ACTIVE_CACHELINE_MAX_OVERLAP``; one more is ``WARN_ONCE`` "exceeded ... overlapping").

Not modelled (the simulator has no such inputs): stack / kernel-text / vmalloc checks, sync calls
(``check_sync``), the driver filter, the per-device leak report at driver unbind, the entry pool.

``show_num_errors`` (default 1) and ``show_all_errors`` are the debugfs knobs: every ``err_printk``
counts in ``error_count`` but only the first ``show_num_errors`` are printed. Each finding is an
event of kind ``dma_debug`` with ``message`` (the line as the kernel prints it), ``check`` (which test
of which kernel function) and ``printed``. Message formats are the kernel's short ``printk`` formats,
filled in as the kernel would print them.
"""

from __future__ import annotations

from dataclasses import dataclass

from iovalab.kernel.device import (
    DMA_ATTR_SKIP_CPU_SYNC, DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_NONE, DMA_TO_DEVICE, Device,
)
from iovalab.kernel.events import EventLog
from iovalab.kernel.units import DMA_MAPPING_ERROR

__all__ = ["HASH_SIZE", "HASH_FN_SHIFT", "L1_CACHE_BYTES", "ACTIVE_CACHELINE_MAX_OVERLAP",
           "MAP_ERR_CHECK_NOT_APPLICABLE", "MAP_ERR_NOT_CHECKED", "MAP_ERR_CHECKED", "DebugEntry", "DmaDebug",
           "DMA_DEBUG_VERSIONS", "Finding"]

# kernel/dma/debug.c
HASH_SIZE = 16384
HASH_FN_SHIFT = 13
HASH_FN_MASK = HASH_SIZE - 1
#: ``L1_CACHE_SHIFT`` is 6 on x86-64 and arm64
L1_CACHE_SHIFT = 6
L1_CACHE_BYTES = 1 << L1_CACHE_SHIFT
#: ``RADIX_TREE_MAX_TAGS`` (include/linux/radix-tree.h) is 3
RADIX_TREE_MAX_TAGS = 3
ACTIVE_CACHELINE_MAX_OVERLAP = (1 << RADIX_TREE_MAX_TAGS) - 1

MAP_ERR_CHECK_NOT_APPLICABLE = 0
MAP_ERR_NOT_CHECKED = 1
MAP_ERR_CHECKED = 2
MAPERR2STR = {MAP_ERR_CHECK_NOT_APPLICABLE: "dma map error check not applicable",
              MAP_ERR_NOT_CHECKED: "dma map error not checked", MAP_ERR_CHECKED: "dma map error checked"}
DIR2NAME = {DMA_BIDIRECTIONAL: "DMA_BIDIRECTIONAL", DMA_TO_DEVICE: "DMA_TO_DEVICE",
            DMA_FROM_DEVICE: "DMA_FROM_DEVICE", DMA_NONE: "DMA_NONE"}
#: entry types as ``type2name[]`` prints them
SINGLE, SG, COHERENT, PHY = "single", "scatter-gather", "coherent", "phy"

#: ``DMA_ATTR_UNMAP_VALID`` (7.3 check_unmap): attrs that must match between map and unmap. Bits of
#: include/linux/dma-mapping.h: NO_KERNEL_MAPPING 1<<4, FORCE_CONTIGUOUS 1<<6, PRIVILEGED 1<<9,
#: MMIO 1<<10; REQUIRE_COHERENT and CC_SHARED are 7.x bits the simulator never sets.
DMA_ATTR_UNMAP_VALID = (1 << 4) | (1 << 6) | (1 << 9) | (1 << 10)

#: kernel versions whose dma-debug this module models, and what differs between them
DMA_DEBUG_VERSIONS = ("6.17", "7.3")


@dataclass
class DebugEntry:
    """``struct dma_debug_entry`` (kernel/dma/debug.c), without the list head and the stack trace."""

    dev: str
    dev_addr: int
    size: int
    type: str
    direction: int
    sg_call_ents: int = 0
    sg_mapped_ents: int = 0
    paddr: int = 0
    map_err_type: int = MAP_ERR_CHECK_NOT_APPLICABLE
    attrs: int = 0

    def hash_fn(self) -> int:
        """``hash_fn(entry)``: ``(dev_addr >> HASH_FN_SHIFT) & HASH_FN_MASK``."""
        return (self.dev_addr >> HASH_FN_SHIFT) & HASH_FN_MASK


@dataclass
class Finding:
    """One ``err_printk()``: the kernel function, the check, the printed line, and whether it printed."""

    func: str
    check: str
    message: str
    printed: bool


def _exact_match(a: DebugEntry, b: DebugEntry) -> bool:
    return a.dev_addr == b.dev_addr and a.dev == b.dev


class DmaDebug:
    """The state of ``kernel/dma/debug.c``: ``dma_entry_hash[]``, ``dma_active_cacheline``, the error
    counters. One per simulated kernel (a :class:`~iovalab.kernel.dma_iommu.DmaDomain` owns one when
    built with ``dma_debug=True``).

    :param version: ``"6.17"`` or ``"7.3"``: 6.17's ``dma_map_page`` records a ``single`` entry
        (``debug_dma_map_page``), 7.3's a ``phy`` entry (``debug_dma_map_phys``) and checks unmap
        attributes.
    :param show_num_errors: how many findings print (debugfs ``num_errors``, default 1).
    :param show_all_errors: print every finding (debugfs ``all_errors``).
    """

    def __init__(self, log: EventLog, *, version: str = "6.17", show_num_errors: int = 1,
                 show_all_errors: bool = False, driver: str = "nvme"):
        if version not in DMA_DEBUG_VERSIONS:
            raise ValueError(f"dma-debug version {version!r} is not one of {', '.join(DMA_DEBUG_VERSIONS)} "
                             "(the kernel versions whose kernel/dma/debug.c is modelled)")
        if not isinstance(show_num_errors, int) or isinstance(show_num_errors, bool) or show_num_errors < 0:
            raise ValueError(f"show_num_errors {show_num_errors!r} must be an int >= 0 (u32 debugfs num_errors)")
        self.log = log
        self.version = version
        self.show_num_errors = show_num_errors
        self.show_all_errors = bool(show_all_errors)
        self.driver = driver
        self.error_count = 0
        self.buckets: dict[int, list[DebugEntry]] = {}
        self.cachelines: dict[int, tuple[DebugEntry, int]] = {}   # cln -> (first entry, overlap)
        self.findings: list[Finding] = []
        self._warned_overlap = False

    # ---------------------------------------------------------------- reporting
    def err_printk(self, dev: str, func: str, check: str, text: str, cpu: int = 0) -> Finding:
        """``err_printk(dev, entry, format, ...)``: count, and print while ``show_num_errors`` lasts."""
        self.error_count += 1
        printed = self.show_all_errors or self.show_num_errors > 0
        if not self.show_all_errors and self.show_num_errors > 0:
            self.show_num_errors -= 1
        msg = f"DMA-API: {self.driver} {dev}: {text}"
        f = Finding(func, check, msg, printed)
        self.findings.append(f)
        self.log.emit("dma_debug", func, "dma_debug", None, cpu=cpu, check=check, message=msg,
                      printed=printed, error_count=self.error_count)
        return f

    # ---------------------------------------------------------------- the hash table
    def entries(self, dev: str | None = None) -> list[DebugEntry]:
        """Every live entry (of ``dev``), in bucket order (what ``debug_dma_dump_mappings`` walks)."""
        return [e for i in sorted(self.buckets) for e in self.buckets[i] if dev is None or e.dev == dev]

    def _find(self, ref: DebugEntry) -> DebugEntry | None:
        """``bucket_find_exact()`` -> ``__hash_bucket_find(bucket, ref, exact_match)``: best fit on
        size, type, direction and sg_call_ents; several matches with no perfect fit give NULL."""
        best, last_lvl, matches = None, -1, 0
        for e in self.buckets.get(ref.hash_fn(), []):
            if not _exact_match(ref, e):
                continue
            matches += 1
            lvl = ((e.size == ref.size) + (e.type == ref.type) + (e.direction == ref.direction)
                   + (e.sg_call_ents == ref.sg_call_ents))
            if lvl == 4:
                return e
            if lvl > last_lvl:
                last_lvl, best = lvl, e
        return best if matches == 1 else None

    def _cln(self, e: DebugEntry) -> int:
        """``to_cacheline_number(entry)``: the physical cacheline of ``paddr``."""
        return e.paddr >> L1_CACHE_SHIFT

    def add_dma_entry(self, e: DebugEntry, device: Device, swiotlb_active: bool, cpu: int = 0) -> None:
        """``add_dma_entry(entry, attrs)``: into its hash bucket, then ``active_cacheline_insert``."""
        self.buckets.setdefault(e.hash_fn(), []).append(e)
        if e.direction == DMA_TO_DEVICE:
            return
        cln = self._cln(e)
        if cln not in self.cachelines:
            self.cachelines[cln] = (e, 0)
            return
        first, overlap = self.cachelines[cln]
        if overlap + 1 <= ACTIVE_CACHELINE_MAX_OVERLAP:
            self.cachelines[cln] = (first, overlap + 1)
        elif not self._warned_overlap:
            self._warned_overlap = True
            self.log.warn("dma_debug", "active_cacheline_inc_overlap", 0,
                          f"WARN_ONCE: exceeded {ACTIVE_CACHELINE_MAX_OVERLAP} overlapping mappings of "
                          f"cacheline {cln:#x}", cpu=cpu)
        if (not e.attrs & DMA_ATTR_SKIP_CPU_SYNC and device.dma_cache_alignment >= L1_CACHE_BYTES
                and not (device.bounce_unaligned_kmalloc and swiotlb_active)):
            self.err_printk(e.dev, "add_dma_entry", "cacheline overlap",
                            "cacheline tracking EEXIST, overlapping mappings aren't supported", cpu)

    def _active_cacheline_remove(self, e: DebugEntry) -> None:
        if e.direction == DMA_TO_DEVICE:
            return
        cln = self._cln(e)
        if cln in self.cachelines:
            first, overlap = self.cachelines[cln]
            if overlap - 1 < 0:
                del self.cachelines[cln]
            else:
                self.cachelines[cln] = (first, overlap - 1)

    # ---------------------------------------------------------------- check_unmap
    def findings_for_unmap(self, ref: DebugEntry) -> list[tuple[str, str]]:
        """What ``check_unmap(ref)`` would report, as ``(check, text)``, without changing anything."""
        e = self._find(ref)
        if e is None:
            if ref.dev_addr == DMA_MAPPING_ERROR:
                return [("no entry", "device driver tries to free an invalid DMA memory address")]
            return [("no entry", "device driver tries to free DMA memory it has not allocated "
                     f"[device address=0x{ref.dev_addr:016x}] [size={ref.size} bytes]")]
        out = []
        a = f"[device address=0x{ref.dev_addr:016x}]"
        if ref.size != e.size:
            out.append(("size", f"device driver frees DMA memory with different size {a} "
                        f"[map size={e.size} bytes] [unmap size={ref.size} bytes]"))
        if ref.type != e.type:
            out.append(("function", f"device driver frees DMA memory with wrong function {a} "
                        f"[size={ref.size} bytes] [mapped as {e.type}] [unmapped as {ref.type}]"))
        elif e.type == COHERENT and ref.paddr != e.paddr:
            out.append(("cpu address", f"device driver frees DMA memory with different CPU address {a} "
                        f"[size={ref.size} bytes] [cpu alloc address=0x{e.paddr:016x}] "
                        f"[cpu free address=0x{ref.paddr:016x}]"))
        if ref.sg_call_ents and ref.type == SG and ref.sg_call_ents != e.sg_call_ents:
            out.append(("sg entry count", "device driver frees DMA sg list with different entry count "
                        f"[map count={e.sg_call_ents}] [unmap count={ref.sg_call_ents}]"))
        if ref.direction != e.direction:
            out.append(("direction", f"device driver frees DMA memory with different direction {a} "
                        f"[size={ref.size} bytes] [mapped with {DIR2NAME[e.direction]}] "
                        f"[unmapped with {DIR2NAME[ref.direction]}]"))
        if e.map_err_type == MAP_ERR_NOT_CHECKED:
            # the kernel's format has no space before the bracket: "...map error[device address=..."
            out.append(("map error not checked", f"device driver failed to check map error{a} "
                        f"[size={ref.size} bytes] [mapped as {e.type}]"))
        if self.version != "6.17" and (ref.attrs & DMA_ATTR_UNMAP_VALID) != (e.attrs & DMA_ATTR_UNMAP_VALID):
            out.append(("attributes", f"device driver frees DMA memory with different attributes {a} "
                        f"[size={ref.size} bytes] [mapped with {e.attrs:#x}] [unmapped with {ref.attrs:#x}]"))
        return out

    def check_unmap(self, ref: DebugEntry, func: str, cpu: int = 0) -> list[Finding]:
        """``check_unmap(ref)``: report, then drop the entry (and its cacheline) if one matched."""
        found = [self.err_printk(ref.dev, func, c, t, cpu) for c, t in self.findings_for_unmap(ref)]
        e = self._find(ref)
        if e is not None:
            self.buckets[e.hash_fn()].remove(e)
            if not self.buckets[e.hash_fn()]:
                del self.buckets[e.hash_fn()]
            self._active_cacheline_remove(e)
        return found

    # ---------------------------------------------------------------- the hooks
    def map_page_type(self) -> str:
        """``single`` (6.17 ``debug_dma_map_page``) or ``phy`` (7.3 ``debug_dma_map_phys``)."""
        return SINGLE if self.version == "6.17" else PHY

    def debug_dma_map_phys(self, dev: Device, phys: int, size: int, direction: int, dma_addr: int,
                           attrs: int, swiotlb_active: bool = False, cpu: int = 0) -> list[Finding]:
        """``debug_dma_map_phys()`` (7.3) / ``debug_dma_map_page()`` (6.17): nothing for a failed map;
        else a ``MAP_ERR_NOT_CHECKED`` entry."""
        if dma_addr == DMA_MAPPING_ERROR:
            return []
        n = len(self.findings)
        self.add_dma_entry(DebugEntry(dev.name, dma_addr, size, self.map_page_type(), direction, paddr=phys,
                                      map_err_type=MAP_ERR_NOT_CHECKED, attrs=attrs), dev, swiotlb_active, cpu)
        return self.findings[n:]

    def debug_dma_mapping_error(self, dev: Device, dma_addr: int) -> None:
        """``debug_dma_mapping_error()``: the first exact match still ``NOT_CHECKED`` becomes ``CHECKED``."""
        ref = DebugEntry(dev.name, dma_addr, 0, "", 0)
        for e in self.buckets.get(ref.hash_fn(), []):
            if _exact_match(ref, e) and e.map_err_type == MAP_ERR_NOT_CHECKED:
                e.map_err_type = MAP_ERR_CHECKED
                break

    def unmap_page_ref(self, dev: Device, dma_addr: int, size: int, direction: int, attrs: int) -> DebugEntry:
        return DebugEntry(dev.name, dma_addr, size, self.map_page_type(), direction, attrs=attrs)

    def check_sg_segment(self, dev: Device, length: int, dma_address: int, dma_length: int) -> list[tuple[str, str]]:
        """``check_sg_segment(dev, sg)``: ``sg->length`` against ``dma_get_max_seg_size``; the mapped
        segment ``[sg_dma_address, + sg_dma_len - 1]`` against ``dma_get_seg_boundary``."""
        out = []
        max_seg = dev.dma_get_max_seg_size()
        if length > max_seg:
            out.append(("segment length", "mapping sg segment longer than device claims to support "
                        f"[len={length}] [max={max_seg}]"))
        boundary = dev.dma_get_seg_boundary()
        start = dma_address
        end = (start + dma_length - 1) & ((1 << 64) - 1)
        if (start ^ end) & ~boundary & ((1 << 64) - 1):
            out.append(("segment boundary", "mapping sg segment across boundary "
                        f"[start=0x{start:016x}] [end=0x{end:016x}] [boundary=0x{boundary:016x}]"))
        return out

    def debug_dma_map_sg(self, dev: Device, sgl, nents: int, mapped_ents: int, direction: int, attrs: int,
                         swiotlb_active: bool = False, cpu: int = 0) -> list[Finding]:
        """``debug_dma_map_sg()``: for each of the first ``mapped_ents`` list entries, an ``sg`` entry
        (``paddr = sg_phys(s)``, ``size = sg_dma_len(s)``) after ``check_sg_segment``."""
        n = len(self.findings)
        for s in sgl[:mapped_ents]:
            e = DebugEntry(dev.name, s.dma_address, s.dma_length, SG, direction, nents, mapped_ents, s.phys,
                           attrs=attrs)
            for c, t in self.check_sg_segment(dev, s.length, s.dma_address, s.dma_length):
                self.err_printk(dev.name, "check_sg_segment", c, t, cpu)
            self.add_dma_entry(e, dev, swiotlb_active, cpu)
        return self.findings[n:]

    def unmap_sg_refs(self, dev: Device, sgl, nelems: int, direction: int, attrs: int) -> list[DebugEntry]:
        """The ``ref``\\ s ``debug_dma_unmap_sg()`` checks: one per list entry, stopping after the
        ``sg_mapped_ents`` the first entry's match recorded (``get_nr_mapped_entries``)."""
        refs = []
        mapped_ents = 0
        for i, s in enumerate(sgl[:nelems]):
            ref = DebugEntry(dev.name, s.dma_address, s.dma_length, SG, direction, nelems, paddr=s.phys,
                             attrs=attrs)
            if mapped_ents and i >= mapped_ents:
                break
            if not i:
                m = self._find(ref)
                mapped_ents = m.sg_mapped_ents if m else 0
            refs.append(ref)
        return refs

    def findings_for_unmap_sg(self, refs: list[DebugEntry]) -> list[tuple[str, str]]:
        """What ``debug_dma_unmap_sg`` would report for ``refs``, without changing anything."""
        saved = {k: list(v) for k, v in self.buckets.items()}
        saved_cl = dict(self.cachelines)
        out = []
        try:
            for ref in refs:
                out += self.findings_for_unmap(ref)
                e = self._find(ref)
                if e is not None:
                    self.buckets[e.hash_fn()].remove(e)
        finally:
            self.buckets, self.cachelines = saved, saved_cl
        return out

    def debug_dma_alloc_coherent(self, dev: Device, size: int, dma_addr: int, phys: int, attrs: int = 0,
                                 cpu: int = 0) -> list[Finding]:
        """``debug_dma_alloc_coherent()``: a ``coherent`` entry, ``DMA_BIDIRECTIONAL``."""
        n = len(self.findings)
        if dma_addr != DMA_MAPPING_ERROR:
            self.add_dma_entry(DebugEntry(dev.name, dma_addr, size, COHERENT, DMA_BIDIRECTIONAL, paddr=phys,
                                          attrs=attrs), dev, False, cpu)
        return self.findings[n:]
