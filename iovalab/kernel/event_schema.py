"""The schema of the event log: every event kind, and the arguments each kind declares, typed.

No kernel analogue as such: the kinds name what the kernel functions of ``drivers/iommu/iova.c``,
``drivers/iommu/iommu.c``, the io-pgtable formats, ``drivers/iommu/dma-iommu.c`` and
``kernel/dma/swiotlb.c`` do, one step at a time; the log that records them is
:class:`iovalab.kernel.events.EventLog`.

This module is the bottom layer: it imports nothing of ours.

Every event has a kind, one of :class:`Kind` (a ``str`` enum: ``Kind.IOVA_ALLOCS ==
"iova_allocs"``, so string comparisons and JSON exports see the plain name). :data:`SCHEMA` declares
each kind's arguments and their types; :meth:`~iovalab.kernel.events.EventLog.emit` refuses an unknown
kind always, and an unknown, missing or wrongly typed argument whenever it keeps the event
(``ValueError`` / ``TypeError`` naming the kind, the function and the argument, raised by
:meth:`KindSpec.check`). Types are checked exactly (``bool`` is not an ``int``, a numpy integer is not
an ``int``). ``name?`` is optional; ``step``, ``dma_api_calls`` and ``driver`` declare their arguments
per function (``driver`` events take any scalar argument the driver model names). ``cpu`` and
``count`` are fields of every event, not arguments. The kinds of :data:`COUNTER_KINDS` are the fields
of :class:`~iovalab.kernel.events.Counters`.

Kinds and their arguments (``result`` is what the function returned):

``iova_allocs`` (counter): one successful IOVA allocation; result pfn_lo
    ``alloc_iova``: (size: int, limit_pfn: int, size_aligned: bool)
    ``alloc_iova_fast``: (size: int, limit_pfn: int, source: str)
``iova_frees`` (counter): one IOVA free handed to the allocator
    ``free_iova``: (pfn: int)
    ``free_iova_fast``: (pfn: int, size: int, dest: str)
``rcache_hits`` (counter): an allocation served by a per-CPU magazine or the depot; result pfn
    (size: int, limit_pfn: int)
``iommu_map_calls`` (counter): one iommu_map_nosync() call (one iommu:map trace event)
    (iova: int, paddr: int, size: int, prot: int, chunks: list, requested?: int)
``pte_writes`` (counter): leaf entries written by one map_pages call (count = entries); result bytes mapped
    (iova: int, paddr: int, pgsize: int, pgcount: int, level: str)
``table_pages`` (counter): page-table pages allocated; result the table's phys
    (iova: int, level: str)
``iotlb_syncs`` (counter): iommu_sync_map() / iotlb_sync_map (map side)
    (iova: int, size: int, callback: str|None, flushed: bool, flush: str|None)
``iotlb_invalidations`` (counter): unmap-side IOTLB invalidations (ranged iotlb_sync, a driver's immediate
        flush, or flush_iotlb_all with scope 'all')
    (scope: str, dropped: int, start?: int, end?: int, pgsize?: int, callback?: str, freed_tables?: int,
        early?: bool, caller?: str|None)
``swiotlb_bounces`` (counter): buffers bounced through swiotlb; result tlb_addr
    (orig_addr: int, mapping_size: int, alloc_align_mask: int, min_align_mask: int, dir: str, index: int,
        nslots: int, pad_slots: int, offset: int)
``dma_api_calls`` (counter): driver-visible DMA API entry points; result what the call returned
    ``dma_map_page``: (dev: str, dir: int, phys: int, size: int, attrs?: int)
    ``dma_unmap_page``: (dev: str, dir: int, dma_addr: int, size: int, attrs?: int)
    ``dma_map_phys``: (dev: str, dir: int, phys: int, size: int, attrs?: int)
    ``dma_unmap_phys``: (dev: str, dir: int, dma_addr: int, size: int, attrs?: int)
    ``dma_map_sg``: (dev: str, dir: int, nents: int, phys: list, sizes: list, dma_addrs: list)
    ``dma_unmap_sg``: (dev: str, dir: int, phys: list)
    ``dma_alloc``: (dev: str, size: int, phys: int)
    ``dma_iova_try_alloc``: (dev: str, phys: int, size: int, addr?: int, iova_len?: int, reason?: str)
    ``dma_iova_free``: (dev: str, addr: int, size: int)
    ``dma_iova_link``: (dev: str, phys: int, offset: int, size: int, dir: int)
    ``dma_iova_sync``: (dev: str, offset: int, size: int)
    ``dma_iova_unlink``: (dev: str, offset: int, size: int)
    ``dma_iova_destroy``: (dev: str, mapped_len: int)
``step``: a kernel function's step that is not counted
    ``init_iova_domain``: (granule: int, start_pfn: int, dma_32bit_pfn: int)
    ``iommu_dma_init_domain``: (granule: int, start_pfn: int, strict: bool, reserved: int)
    ``iommu_dma_alloc_iova``: (attempt: str, size: int, limit: int)
    ``iommu_map_sg``: (iova: int, nents: int)
    ``iommu_dma_map_sg``: (rule: str, nents: int)
    ``dma_map_page_attrs``: (rule: str)
    ``swiotlb_init_io_tlb_pool``: (start: int, nslabs: int, nareas: int)
    ``swiotlb_tbl_unmap_single``: (tlb_addr: int, mapping_size: int, dir: str)
``tree_alloc``: a node inserted by __alloc_and_insert_iova_range; result pfn_lo
    (size: int, limit_pfn: int, size_aligned: bool, walked: int, retried: bool, below: int)
``tree_free``: a node erased by remove_iova
    (pfn_lo: int, pfn_hi: int, why: str)
``alloc_fail``: __alloc_and_insert_iova_range found no space; result -ENOMEM
    (size: int, limit_pfn: int, reason: str, walked?: int, retried?: bool, max32_alloc_size?: int)
``alloc_failed``: alloc_iova_fast gives up (no rcache flush allowed); result 0
    (size: int, limit_pfn: int, flush_rcache: bool)
``reserve``: reserve_iova; result the node's pfn_lo
    (pfn_lo: int, pfn_hi: int, merged: bool)
``rcache_miss``: iova_rcache_get found nothing
    (size: int, limit_pfn: int)
``rcache_insert``: a freed range parked in a magazine
    (pfn: int, size: int, bin: int, how: str)
``magazine_swap``: __iova_rcache_get served from prev or a depot magazine; result pfn
    (bin: int, source: str)
``depot_push``: a full magazine pushed onto the depot
    (bin: int, depot_size: int)
``depot_pop``: a full magazine popped from the depot
    (bin: int, depot_size: int)
``depot_trim``: iova_depot_work_func returned a depot magazine to the tree
    (bin: int, depot_size: int)
``rcache_flush``: alloc_iova_fast flushes every rcache and retries
    (size: int, limit_pfn: int)
``rcache_drain``: cached ranges of one bin returned to the tree (count = ranges)
    (bin: int)
``pte_clear``: leaf entries cleared by one unmap_pages call (count = entries); result bytes
    (iova: int, pgsize: int, pgcount: int)
``table_free``: page-table pages freed (count = pages)
    (iova: int, level: str)
``iommu_unmap``: one __iommu_unmap (the iommu:unmap trace event); result bytes unmapped
    (iova: int, size: int, unmapped_size: int, chunks: list)
``pr_err``: a pr_err of iommu.c (unaligned request); result the return value
    (iova: int, size: int, min_pagesz: int, msg: str, paddr?: int)
``error``: a driver or map error returned without a WARN; result -errno
    (rule?: str, iova?: int, paddr?: int, size?: int, pgsize?: int, prot?: int, chunks?: list)
``iotlb_hit``: a device access served by the IOTLB; result phys (None for a negative entry)
    (iova: int, pgsize?: int, negative?: bool)
``iotlb_miss``: a device access that walked the page table; result phys or None; negative: the IOTLB cached
        the non-present entry (caches_non_present)
    (iova: int, negative: bool)
``io_page_fault``: report_iommu_fault
    (iova: int, flags: int, reason: str)
``fq_add``: queue_iova deferred a free
    (pfn: int, pages: int, counter: int, queued: int)
``fq_flush``: fq_flush_iotlb
    (why: str, finish_cnt: int)
``fq_free``: fq_ring_free freed queued ranges (count = entries)
    (no arguments)
``dev_notice``: a dev_notice line
    (message: str, dev: str)
``contract``: a broken DMA API contract the kernel does not check (check_contract)
    (rule: str)
``dma_debug``: an err_printk of kernel/dma/debug.c (CONFIG_DMA_API_DEBUG); message as printed
    (check: str, message: str, printed: bool, error_count: int)
``cpu_sync``: arch_sync_dma_for_device / _for_cpu cache maintenance
    (phys: int, size: int)
``swiotlb_copy``: bytes copied by swiotlb_bounce (count = bytes)
    (tlb_addr: int, orig_addr: int, size: int, dir: str)
``swiotlb_release``: swiotlb_release_slots
    (tlb_addr: int, index: int, nslots: int)
``swiotlb_full``: swiotlb_tbl_map_single found no slots; result DMA_MAPPING_ERROR
    (orig_addr: int, mapping_size: int, size: int, total_slots: int, used_slots: int, warned: bool)
``swiotlb_bounced``: the swiotlb_bounced trace event
    (dev_name: str, dma_mask: int, dev_addr: int, size: int, force: str)
``swiotlb_zero_padding``: iommu_dma_map_swiotlb zeroes the padding (count = bytes)
    (tlb_addr: int, pre_bytes: int, post_bytes: int)
``warn``: a WARN_ON / dev_WARN_ONCE; result -errno the call returns (0 if it goes on)
    (rule: str, iova?: int, paddr?: int, pgsize?: int, level?: str, pfn?: int, size?: int, alloc_size?: int,
        alloc_align_mask?: int)
``driver``: a driver-level action (count = the driver calls it stands for)
    (any scalar arguments the driver model names)
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = ["COUNTER_KINDS", "Kind", "KindSpec", "SCHEMA", "schema_text"]


class Kind(StrEnum):
    """Every event kind. The first ten are the :class:`~iovalab.kernel.events.Counters` (:data:`COUNTER_KINDS`)."""

    # counters
    IOVA_ALLOCS = "iova_allocs"
    IOVA_FREES = "iova_frees"
    RCACHE_HITS = "rcache_hits"
    IOMMU_MAP_CALLS = "iommu_map_calls"
    PTE_WRITES = "pte_writes"
    TABLE_PAGES = "table_pages"
    IOTLB_SYNCS = "iotlb_syncs"
    IOTLB_INVALIDATIONS = "iotlb_invalidations"
    SWIOTLB_BOUNCES = "swiotlb_bounces"
    DMA_API_CALLS = "dma_api_calls"
    # iova.c steps
    STEP = "step"
    TREE_ALLOC = "tree_alloc"
    TREE_FREE = "tree_free"
    ALLOC_FAIL = "alloc_fail"
    ALLOC_FAILED = "alloc_failed"
    RESERVE = "reserve"
    RCACHE_MISS = "rcache_miss"
    RCACHE_INSERT = "rcache_insert"
    MAGAZINE_SWAP = "magazine_swap"
    DEPOT_PUSH = "depot_push"
    DEPOT_POP = "depot_pop"
    DEPOT_TRIM = "depot_trim"
    RCACHE_FLUSH = "rcache_flush"
    RCACHE_DRAIN = "rcache_drain"
    # io-pgtable / iommu.c steps
    PTE_CLEAR = "pte_clear"
    TABLE_FREE = "table_free"
    IOMMU_UNMAP = "iommu_unmap"
    PR_ERR = "pr_err"
    ERROR = "error"
    IOTLB_HIT = "iotlb_hit"
    IOTLB_MISS = "iotlb_miss"
    IO_PAGE_FAULT = "io_page_fault"
    # dma-iommu.c steps
    FQ_ADD = "fq_add"
    FQ_FLUSH = "fq_flush"
    FQ_FREE = "fq_free"
    DEV_NOTICE = "dev_notice"
    CONTRACT = "contract"
    DMA_DEBUG = "dma_debug"
    CPU_SYNC = "cpu_sync"
    # swiotlb.c steps
    SWIOTLB_COPY = "swiotlb_copy"
    SWIOTLB_RELEASE = "swiotlb_release"
    SWIOTLB_FULL = "swiotlb_full"
    SWIOTLB_BOUNCED = "swiotlb_bounced"
    SWIOTLB_ZERO_PADDING = "swiotlb_zero_padding"
    # any layer
    WARN = "warn"
    DRIVER = "driver"


#: Event kinds that feed :class:`~iovalab.kernel.events.Counters` (the field of the same name).
COUNTER_KINDS: tuple[Kind, ...] = (
    Kind.IOVA_ALLOCS, Kind.IOVA_FREES, Kind.RCACHE_HITS, Kind.IOMMU_MAP_CALLS, Kind.PTE_WRITES,
    Kind.TABLE_PAGES, Kind.IOTLB_SYNCS, Kind.IOTLB_INVALIDATIONS, Kind.SWIOTLB_BOUNCES, Kind.DMA_API_CALLS,
)

_TYPES: dict[str, type] = {"int": int, "bool": bool, "str": str, "None": type(None), "list": list,
                           "tuple": tuple, "float": float}
_SCALAR = frozenset((int, bool, str, type(None)))

#: The declaration table: kind -> (what one event stands for, its arguments). Arguments are written
#: ``name: type`` (``name?: type`` when optional, ``type|type`` for a union); a dict declares them per
#: emitting function; ``"*"`` lets the emitter name any scalar argument.
_DECLARED: dict[Kind, tuple[str, str | dict[str, str]]] = {
    # -- counters
    Kind.IOVA_ALLOCS: ("one successful IOVA allocation; result pfn_lo", {
        "alloc_iova": "size: int, limit_pfn: int, size_aligned: bool",
        "alloc_iova_fast": "size: int, limit_pfn: int, source: str",
    }),
    Kind.IOVA_FREES: ("one IOVA free handed to the allocator", {
        "free_iova": "pfn: int",
        "free_iova_fast": "pfn: int, size: int, dest: str",
    }),
    Kind.RCACHE_HITS: ("an allocation served by a per-CPU magazine or the depot; result pfn",
                       "size: int, limit_pfn: int"),
    Kind.IOMMU_MAP_CALLS: ("one iommu_map_nosync() call (one iommu:map trace event)",
                           "iova: int, paddr: int, size: int, prot: int, chunks: list, requested?: int"),
    Kind.PTE_WRITES: ("leaf entries written by one map_pages call (count = entries); result bytes mapped",
                      "iova: int, paddr: int, pgsize: int, pgcount: int, level: str"),
    Kind.TABLE_PAGES: ("page-table pages allocated; result the table's phys", "iova: int, level: str"),
    Kind.IOTLB_SYNCS: ("iommu_sync_map() / iotlb_sync_map (map side)",
                       "iova: int, size: int, callback: str|None, flushed: bool, flush: str|None"),
    Kind.IOTLB_INVALIDATIONS: ("unmap-side IOTLB invalidations (ranged iotlb_sync, a driver's immediate "
                               "flush, or flush_iotlb_all with scope 'all')",
                               "scope: str, dropped: int, start?: int, end?: int, pgsize?: int, "
                               "callback?: str, freed_tables?: int, early?: bool, caller?: str|None"),
    Kind.SWIOTLB_BOUNCES: ("buffers bounced through swiotlb; result tlb_addr",
                           "orig_addr: int, mapping_size: int, alloc_align_mask: int, min_align_mask: int, "
                           "dir: str, index: int, nslots: int, pad_slots: int, offset: int"),
    Kind.DMA_API_CALLS: ("driver-visible DMA API entry points; result what the call returned", {
        "dma_map_page": "dev: str, dir: int, phys: int, size: int, attrs?: int",
        "dma_unmap_page": "dev: str, dir: int, dma_addr: int, size: int, attrs?: int",
        "dma_map_phys": "dev: str, dir: int, phys: int, size: int, attrs?: int",
        "dma_unmap_phys": "dev: str, dir: int, dma_addr: int, size: int, attrs?: int",
        "dma_map_sg": "dev: str, dir: int, nents: int, phys: list, sizes: list, dma_addrs: list",
        "dma_unmap_sg": "dev: str, dir: int, phys: list",
        "dma_alloc": "dev: str, size: int, phys: int",
        "dma_iova_try_alloc": "dev: str, phys: int, size: int, addr?: int, iova_len?: int, reason?: str",
        "dma_iova_free": "dev: str, addr: int, size: int",
        "dma_iova_link": "dev: str, phys: int, offset: int, size: int, dir: int",
        "dma_iova_sync": "dev: str, offset: int, size: int",
        "dma_iova_unlink": "dev: str, offset: int, size: int",
        "dma_iova_destroy": "dev: str, mapped_len: int",
    }),
    # -- steps
    Kind.STEP: ("a kernel function's step that is not counted", {
        "init_iova_domain": "granule: int, start_pfn: int, dma_32bit_pfn: int",
        "iommu_dma_init_domain": "granule: int, start_pfn: int, strict: bool, reserved: int",
        "iommu_dma_alloc_iova": "attempt: str, size: int, limit: int",
        "iommu_map_sg": "iova: int, nents: int",
        "iommu_dma_map_sg": "rule: str, nents: int",
        "dma_map_page_attrs": "rule: str",
        "swiotlb_init_io_tlb_pool": "start: int, nslabs: int, nareas: int",
        "swiotlb_tbl_unmap_single": "tlb_addr: int, mapping_size: int, dir: str",
    }),
    Kind.TREE_ALLOC: ("a node inserted by __alloc_and_insert_iova_range; result pfn_lo",
                      "size: int, limit_pfn: int, size_aligned: bool, walked: int, retried: bool, below: int"),
    Kind.TREE_FREE: ("a node erased by remove_iova", "pfn_lo: int, pfn_hi: int, why: str"),
    Kind.ALLOC_FAIL: ("__alloc_and_insert_iova_range found no space; result -ENOMEM",
                      "size: int, limit_pfn: int, reason: str, walked?: int, retried?: bool, "
                      "max32_alloc_size?: int"),
    Kind.ALLOC_FAILED: ("alloc_iova_fast gives up (no rcache flush allowed); result 0",
                        "size: int, limit_pfn: int, flush_rcache: bool"),
    Kind.RESERVE: ("reserve_iova; result the node's pfn_lo", "pfn_lo: int, pfn_hi: int, merged: bool"),
    Kind.RCACHE_MISS: ("iova_rcache_get found nothing", "size: int, limit_pfn: int"),
    Kind.RCACHE_INSERT: ("a freed range parked in a magazine", "pfn: int, size: int, bin: int, how: str"),
    Kind.MAGAZINE_SWAP: ("__iova_rcache_get served from prev or a depot magazine; result pfn",
                         "bin: int, source: str"),
    Kind.DEPOT_PUSH: ("a full magazine pushed onto the depot", "bin: int, depot_size: int"),
    Kind.DEPOT_POP: ("a full magazine popped from the depot", "bin: int, depot_size: int"),
    Kind.DEPOT_TRIM: ("iova_depot_work_func returned a depot magazine to the tree", "bin: int, depot_size: int"),
    Kind.RCACHE_FLUSH: ("alloc_iova_fast flushes every rcache and retries", "size: int, limit_pfn: int"),
    Kind.RCACHE_DRAIN: ("cached ranges of one bin returned to the tree (count = ranges)", "bin: int"),
    Kind.PTE_CLEAR: ("leaf entries cleared by one unmap_pages call (count = entries); result bytes",
                     "iova: int, pgsize: int, pgcount: int"),
    Kind.TABLE_FREE: ("page-table pages freed (count = pages)", "iova: int, level: str"),
    Kind.IOMMU_UNMAP: ("one __iommu_unmap (the iommu:unmap trace event); result bytes unmapped",
                       "iova: int, size: int, unmapped_size: int, chunks: list"),
    Kind.PR_ERR: ("a pr_err of iommu.c (unaligned request); result the return value",
                  "iova: int, size: int, min_pagesz: int, msg: str, paddr?: int"),
    Kind.ERROR: ("a driver or map error returned without a WARN; result -errno",
                 "rule?: str, iova?: int, paddr?: int, size?: int, pgsize?: int, prot?: int, chunks?: list"),
    Kind.IOTLB_HIT: ("a device access served by the IOTLB; result phys (None for a negative entry)",
                     "iova: int, pgsize?: int, negative?: bool"),
    Kind.IOTLB_MISS: ("a device access that walked the page table; result phys or None; negative: the "
                      "IOTLB cached the non-present entry (caches_non_present)", "iova: int, negative: bool"),
    Kind.IO_PAGE_FAULT: ("report_iommu_fault", "iova: int, flags: int, reason: str"),
    Kind.FQ_ADD: ("queue_iova deferred a free", "pfn: int, pages: int, counter: int, queued: int"),
    Kind.FQ_FLUSH: ("fq_flush_iotlb", "why: str, finish_cnt: int"),
    Kind.FQ_FREE: ("fq_ring_free freed queued ranges (count = entries)", ""),
    Kind.DEV_NOTICE: ("a dev_notice line", "message: str, dev: str"),
    Kind.CONTRACT: ("a broken DMA API contract the kernel does not check (check_contract)", "rule: str"),
    Kind.DMA_DEBUG: ("an err_printk of kernel/dma/debug.c (CONFIG_DMA_API_DEBUG); message as printed",
                     "check: str, message: str, printed: bool, error_count: int"),
    Kind.CPU_SYNC: ("arch_sync_dma_for_device / _for_cpu cache maintenance", "phys: int, size: int"),
    Kind.SWIOTLB_COPY: ("bytes copied by swiotlb_bounce (count = bytes)",
                        "tlb_addr: int, orig_addr: int, size: int, dir: str"),
    Kind.SWIOTLB_RELEASE: ("swiotlb_release_slots", "tlb_addr: int, index: int, nslots: int"),
    Kind.SWIOTLB_FULL: ("swiotlb_tbl_map_single found no slots; result DMA_MAPPING_ERROR",
                        "orig_addr: int, mapping_size: int, size: int, total_slots: int, used_slots: int, "
                        "warned: bool"),
    Kind.SWIOTLB_BOUNCED: ("the swiotlb_bounced trace event",
                           "dev_name: str, dma_mask: int, dev_addr: int, size: int, force: str"),
    Kind.SWIOTLB_ZERO_PADDING: ("iommu_dma_map_swiotlb zeroes the padding (count = bytes)",
                                "tlb_addr: int, pre_bytes: int, post_bytes: int"),
    Kind.WARN: ("a WARN_ON / dev_WARN_ONCE; result -errno the call returns (0 if it goes on)",
                "rule: str, iova?: int, paddr?: int, pgsize?: int, level?: str, pfn?: int, size?: int, "
                "alloc_size?: int, alloc_align_mask?: int"),
    Kind.DRIVER: ("a driver-level action (count = the driver calls it stands for)", "*"),
}


class _Sig:
    """One argument list: ``types[name] = (allowed types, required)``."""

    __slots__ = ("text", "types", "nreq", "open")

    def __init__(self, text: str):
        self.text = text
        self.open = text.strip() == "*"
        self.types: dict[str, tuple[frozenset, bool]] = {}
        if self.open:
            self.nreq = 0
            return
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, tys = (x.strip() for x in part.partition(":"))
            opt = name.endswith("?")
            name = name.rstrip("?")
            if not name.isidentifier() or name in self.types or not tys:
                raise ValueError(f"bad argument declaration {part!r}")
            self.types[name] = (frozenset(_TYPES[t.strip()] for t in tys.split("|")), not opt)
        self.nreq = sum(r for _, r in self.types.values())


class KindSpec:
    """The declaration of one :class:`Kind`: ``doc``, and its arguments (``sig`` for every function,
    or ``by_func`` per emitting function); ``name`` is the kind's plain string (the tally key)."""

    __slots__ = ("kind", "name", "doc", "sig", "by_func")

    def __init__(self, kind: Kind, doc: str, sig: _Sig | None, by_func: Mapping[str, _Sig] | None):
        self.kind = kind
        self.name = str(kind.value)
        self.doc = doc
        self.sig = sig
        self.by_func = by_func

    def __repr__(self) -> str:
        return f"<KindSpec {self.name}>"

    def sig_for(self, func: str) -> _Sig:
        """The argument list ``func`` emits this kind with."""
        sig = self.sig
        if sig is None:
            sig = self.by_func.get(func) if self.by_func is not None else None
            if sig is None:
                raise ValueError(f"event kind {self.name!r}: no arguments declared for function {func!r} "
                                 f"(declared: {sorted(self.by_func or ())})")
        return sig

    def named(self, func: str, values: tuple) -> dict[str, Any]:
        """``values`` (in declaration order, trailing optional ones may be left out) as ``{name: value}``."""
        sig = self.sig_for(func)
        names = list(sig.types)
        if sig.open or len(values) > len(names):
            raise ValueError(f"event kind {self.name!r} from {func}: {len(values)} positional value(s) for "
                             f"({sig.text})")
        return dict(zip(names, values, strict=False))

    def check(self, func: str, args: Mapping[str, Any]) -> None:
        """Raise if ``args`` is not what this kind declares for ``func``."""
        sig = self.sig_for(func)
        if sig.open:
            for k, v in args.items():
                if type(v) not in _SCALAR:
                    raise TypeError(f"event kind {self.name!r} from {func}: argument {k}={v!r} is "
                                    f"{type(v).__name__}, not a scalar (int, bool, str, None)")
            return
        types = sig.types
        n = 0
        for k, v in args.items():
            t = types.get(k)
            if t is None:
                raise ValueError(f"event kind {self.name!r} from {func}: unknown argument {k!r} "
                                 f"(declared: {sig.text})")
            if type(v) not in t[0]:
                raise TypeError(f"event kind {self.name!r} from {func}: argument {k}={v!r} is "
                                f"{type(v).__name__}, declared {'|'.join(sorted(x.__name__ for x in t[0]))}")
            n += t[1]
        if n != sig.nreq:
            missing = [k for k, (_, req) in types.items() if req and k not in args]
            raise ValueError(f"event kind {self.name!r} from {func}: missing argument(s) "
                             f"{', '.join(missing)} (declared: {sig.text})")


def _build() -> dict[str, KindSpec]:
    out = {}
    for kind in Kind:
        doc, decl = _DECLARED[kind]
        if isinstance(decl, dict):
            out[kind.value] = KindSpec(kind, doc, None, {f: _Sig(s) for f, s in decl.items()})
        else:
            out[kind.value] = KindSpec(kind, doc, _Sig(decl), None)
    return out


#: kind name -> :class:`KindSpec` (look up with a :class:`Kind` or its string).
SCHEMA: dict[str, KindSpec] = _build()


def schema_text() -> str:
    """The declaration table as text (the module docstring carries the same lines)."""
    lines = []
    for spec in SCHEMA.values():
        lines.append(f"``{spec.kind.value}``{' (counter)' if spec.kind in COUNTER_KINDS else ''}: {spec.doc}")
        if spec.sig is not None:
            lines.append(f"    ({spec.sig.text or 'no arguments'})" if not spec.sig.open
                         else "    (any scalar arguments the driver model names)")
        else:
            for f, s in (spec.by_func or {}).items():
                lines.append(f"    ``{f}``: ({s.text})")
    return "\n".join(w for line in lines
                     for w in textwrap.wrap(line, 110, subsequent_indent="        ", break_on_hyphens=False))
