"""The IOVA allocator: ``drivers/iommu/iova.c`` and ``include/linux/iova.h`` (Linux 6.16/6.17).

An :class:`IovaDomain` is ``struct iova_domain``: an ordered set of allocated (or reserved) inclusive
pfn ranges, the anchor node at ``IOVA_ANCHOR``, the two cached starting points (``cached_node``,
``cached32_node``), ``max32_alloc_size``, and the per-CPU range caches ("rcache": two magazines of up
to ``IOVA_MAG_SIZE`` pfns per CPU and size bin, plus a LIFO depot of full magazines per bin).

The kernel keeps the ranges in a red-black tree keyed by ``pfn_lo``; here a sorted Python list of
the keys in *descending* order (``bisect``) plus a dict of nodes gives the same ordered walk
(``rb_prev``/``rb_next``): lookups are O(log n); an insert or erase moves only the keys below it,
which top-down allocation keeps few (measured by ``python -m iovalab bench``). The allocation
walk, the retry pass, the cached-node rules, ``reserve_iova``'s overlap
merging and every rcache step follow the kernel function of the same name; each records one event.
The range caches (iova.c's "Magazine caches for IOVA ranges") are :mod:`iovalab.kernel.iova_rcache`, a
mixin of :class:`IovaDomain`; their names are importable from here as before.

Deviations (on purpose, all documented at the function):

* ``free_iova`` of a pfn that no range holds silently returns in the kernel; here it raises
  ``ValueError`` so that a learner's bug is seen (the domain is left unchanged either way).
* Sizes of 0 are undefined behaviour in the kernel (``fls_long(-1)`` shift); here they raise
  ``ValueError``. A limit below ``start_pfn`` (a ``DMA_BIT_MASK(12)`` device) is an ordinary failure in
  the kernel's walk and is one here too (0 / None, after ``alloc_iova_fast``'s rcache flush).
* ``start_pfn`` must be >= 1: ``alloc_iova_fast`` returns 0 for failure, so pfn 0 could never be
  handed out as a success (dma-iommu passes ``max(1, ...)``).
* Ranges reaching ``IOVA_ANCHOR`` (possible only with ``granule == 1``) are refused by
  ``reserve_iova``: the kernel would widen the anchor node.
* Time does not pass by itself: the delayed depot trim (``iova_depot_work_func``, every
  ``IOVA_DEPOT_DELAY`` = 100 ms) runs only when :meth:`IovaDomain.iova_depot_work_func` is called.
* Magazine allocation (``iova_magazine_alloc``, GFP_ATOMIC) never fails.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from iovalab.kernel.events import EventLog
from iovalab.kernel.iova_rcache import (
    IOVA_DEPOT_DELAY_MS, IOVA_MAG_SIZE, IOVA_RANGE_CACHE_MAX_SIZE, MAX_CPUS, IovaMagazine, IovaRcacheMixin, PerCpu,
    iova_rcache_bin, iova_rcache_range, iova_rcache_roundup,
)
from iovalab.kernel.units import PAGE_SIZE, U64_MASK, fls_long, is_power_of_2

__all__ = [
    "IOVA_ANCHOR", "IOVA_MAG_SIZE", "IOVA_RANGE_CACHE_MAX_SIZE", "IOVA_DEPOT_DELAY_MS",
    "iova_rcache_roundup", "iova_rcache_bin",
    "Iova", "IovaMagazine", "IovaDomain", "iova_rcache_range", "PerCpu",
]

#: ``IOVA_ANCHOR`` (iova.c): pfn of the anchor node, always the right-most node.
IOVA_ANCHOR = U64_MASK

_L = "iova"


class Iova:
    """``struct iova`` (include/linux/iova.h): an inclusive range ``[pfn_lo, pfn_hi]``."""

    __slots__ = ("pfn_lo", "pfn_hi", "reserved")

    def __init__(self, pfn_lo: int, pfn_hi: int, reserved: bool = False):
        self.pfn_lo = pfn_lo
        self.pfn_hi = pfn_hi
        #: Not in the kernel struct: True for ranges made by ``reserve_iova`` (for drawings).
        self.reserved = reserved

    @property
    def size(self) -> int:
        """``iova_size(iova)`` (iova.h): ``pfn_hi - pfn_lo + 1``."""
        return self.pfn_hi - self.pfn_lo + 1

    def __repr__(self) -> str:
        r = " reserved" if self.reserved else ""
        return f"<Iova {self.pfn_lo:#x}-{self.pfn_hi:#x}{r}>"


class IovaDomain(IovaRcacheMixin):
    """``struct iova_domain`` after ``init_iova_domain()`` + ``iova_domain_init_rcaches()``.

    :param granule: ``unsigned long granule``, bytes; a power of two ``<= PAGE_SIZE`` of the kernel
        being modelled.
    :param page_size: that kernel's ``PAGE_SIZE`` (default: 4K, or the granule when larger: a 16K
        or 64K granule exists only under a kernel with pages that large).
    :param start_pfn: ``unsigned long start_pfn``, lowest pfn handed out (>= 1 from dma-iommu).
    :param ncpus: number of possible/online CPUs (each gets its own magazines).
    :param log: the shared :class:`~iovalab.kernel.events.EventLog` (a new one when omitted).
    """

    def __init__(self, granule: int, start_pfn: int = 1, *, ncpus: int = 1,
                 log: EventLog | None = None, page_size: int | None = None):
        if not is_power_of_2(granule):
            raise ValueError(f"granule {granule:#x} is not a power of two (init_iova_domain BUG_ON)")
        if page_size is None:  # 4K, or the granule up to 64K (the largest arm64 PAGE_SIZE)
            page_size = max(PAGE_SIZE, min(granule, 0x10000))
        if granule > page_size:
            raise ValueError(f"granule {granule:#x} exceeds PAGE_SIZE {page_size:#x} "
                             "(init_iova_domain BUG_ON(granule > PAGE_SIZE))")
        if not isinstance(start_pfn, int) or isinstance(start_pfn, bool) or not 1 <= start_pfn < IOVA_ANCHOR:
            raise ValueError(f"start_pfn {start_pfn!r} must be an int >= 1 (alloc_iova_fast returns 0 for "
                             "failure; iommu_dma_init_domain uses max(1, ...))")
        if not isinstance(ncpus, int) or isinstance(ncpus, bool) or not 1 <= ncpus <= MAX_CPUS:
            raise ValueError(f"ncpus {ncpus!r} must be an int in 1..{MAX_CPUS} (NR_CPUS of x86_64 "
                             "MAXSMP is 8192)")
        self.log = log if log is not None else EventLog()
        self.granule = granule
        self.page_size = page_size
        self.shift = granule.bit_length() - 1
        self.start_pfn = start_pfn
        self.ncpus = ncpus
        self.dma_32bit_pfn = 1 << (32 - self.shift)
        self.max32_alloc_size = self.dma_32bit_pfn
        self.anchor = Iova(IOVA_ANCHOR, IOVA_ANCHOR)
        self._neg = [-IOVA_ANCHOR]  # -pfn_lo of every node, ascending (pfn_lo descending)
        self._nodes: dict[int, Iova] = {IOVA_ANCHOR: self.anchor}
        self.cached_node = self.anchor
        self.cached32_node = self.anchor
        self.iova_domain_init_rcaches()
        self._journal: list[tuple[bool, Iova]] | None = None   # tree changes since trial_begin()
        self._trial: tuple | None = None
        self.log.emit(_L, "init_iova_domain", "step", granule=granule, start_pfn=start_pfn,
                      dma_32bit_pfn=self.dma_32bit_pfn)

    # -- tree primitives -------------------------------------------------------------------
    def _insert(self, node: Iova) -> None:
        if node.pfn_lo in self._nodes:  # iova_insert_rbtree: WARN_ON(1) on a duplicate key
            raise AssertionError(f"duplicate pfn_lo {node.pfn_lo:#x} in the IOVA tree")
        insort(self._neg, -node.pfn_lo)
        self._nodes[node.pfn_lo] = node
        if self._journal is not None:
            self._journal.append((True, node))

    def _erase(self, node: Iova) -> None:
        del self._neg[bisect_left(self._neg, -node.pfn_lo)]
        del self._nodes[node.pfn_lo]
        if self._journal is not None:
            self._journal.append((False, node))

    def __len__(self) -> int:
        """Number of nodes, anchor excluded."""
        return len(self._neg) - 1

    def nodes(self) -> list[Iova]:
        """Every node in ascending order, anchor excluded (what the traces' ``check`` lists)."""
        nodes = self._nodes
        return [nodes[-k] for k in reversed(self._neg[1:])]

    def ranges(self) -> list[tuple[int, int]]:
        """``[(pfn_lo, pfn_hi), ...]`` ascending, anchor excluded."""
        return [(n.pfn_lo, n.pfn_hi) for n in self.nodes()]

    # -- cached nodes ----------------------------------------------------------------------
    def __get_cached_rbnode(self, limit_pfn: int) -> Iova:
        """``__get_cached_rbnode()`` (iova.c); ``limit_pfn`` is exclusive here."""
        return self.cached32_node if limit_pfn <= self.dma_32bit_pfn else self.cached_node

    def __cached_rbnode_delete_update(self, free: Iova, nxt: Iova | None) -> None:
        """``__cached_rbnode_delete_update()`` (iova.c); runs before ``free`` leaves the tree.

        ``nxt`` is ``rb_next(free)``, looked up once by the caller."""
        assert nxt is not None, "rb_next() of a range is never NULL: the anchor sorts last"
        cached = self.cached32_node
        if free is cached or (free.pfn_hi < self.dma_32bit_pfn and free.pfn_lo >= cached.pfn_lo):
            self.cached32_node = nxt
        if free.pfn_lo < self.dma_32bit_pfn:
            self.max32_alloc_size = self.dma_32bit_pfn
        if free.pfn_lo >= self.cached_node.pfn_lo:
            self.cached_node = nxt

    def iova_find_limit(self, limit_pfn: int) -> Iova:
        """``iova_find_limit()`` (iova.c), used by the retry pass; ``limit_pfn`` exclusive.

        Above the 32-bit boundary it returns the anchor. Otherwise the kernel's tree walk finds
        the lowest node with ``pfn_lo >= limit_pfn`` or the node straddling ``limit_pfn``; for the
        walk that follows this is the same as the first node (ascending) with ``pfn_hi >= limit_pfn``.
        """
        if limit_pfn > self.dma_32bit_pfn:
            return self.anchor
        # first node whose pfn_hi >= limit_pfn: the node holding limit_pfn, else the next one up
        neg = self._neg
        i = bisect_left(neg, -limit_pfn)  # the highest node with pfn_lo <= limit_pfn
        if i < len(neg):
            node = self._nodes[-neg[i]]
            if node.pfn_hi >= limit_pfn:
                return node
        return self._nodes[-neg[i - 1]]

    # -- the allocation walk ---------------------------------------------------------------
    def _alloc_and_insert_iova_range(self, size: int, limit_pfn: int, size_aligned: bool,
                                     cpu: int) -> Iova | None:
        """``__alloc_and_insert_iova_range(iovad, size, limit_pfn, new, size_aligned)`` (iova.c).

        ``limit_pfn`` is exclusive. Top-down walk from the cached node; one retry pass over the
        region above the cached node; on failure ``max32_alloc_size = size``.
        """
        align_mask = U64_MASK
        if size_aligned:
            align_mask = (align_mask << fls_long(size - 1)) & U64_MASK
        if limit_pfn <= self.dma_32bit_pfn and size >= self.max32_alloc_size:
            self.log.emit(_L, "__alloc_and_insert_iova_range", "alloc_fail", -12, cpu=cpu,
                          size=size, limit_pfn=limit_pfn, reason="max32_alloc_size",
                          max32_alloc_size=self.max32_alloc_size)
            return None
        neg, nodes = self._neg, self._nodes
        n = len(neg)
        high_pfn, low_pfn = limit_pfn, self.start_pfn
        curr = self.__get_cached_rbnode(limit_pfn)
        retry_pfn = curr.pfn_hi
        idx = bisect_left(neg, -curr.pfn_lo)
        walked = 0
        retried = False
        while True:
            while True:
                walked += 1
                if curr.pfn_lo < high_pfn:
                    high_pfn = curr.pfn_lo
                new_pfn = ((high_pfn - size) & U64_MASK) & align_mask
                prev = curr
                idx += 1
                if idx >= n:  # rb_prev() is NULL: the walk ends here (curr is not read again)
                    break
                curr = nodes[-neg[idx]]
                if not (new_pfn <= curr.pfn_hi and new_pfn >= low_pfn):
                    break
            if high_pfn < size or new_pfn < low_pfn:
                if low_pfn == self.start_pfn and retry_pfn < limit_pfn:
                    high_pfn = limit_pfn
                    low_pfn = retry_pfn + 1
                    curr = self.iova_find_limit(limit_pfn)
                    idx = bisect_left(neg, -curr.pfn_lo)
                    retried = True
                    continue
                self.max32_alloc_size = size
                self.log.emit_values(_L, "__alloc_and_insert_iova_range", "alloc_fail", -12, cpu,
                                     (size, limit_pfn, "no space", walked, retried))
                return None
            break
        new = Iova(new_pfn, new_pfn + size - 1)
        insort(neg, -new_pfn)
        nodes[new_pfn] = new
        if self._journal is not None:
            self._journal.append((True, new))
        if new.pfn_hi < self.dma_32bit_pfn:  # __cached_rbnode_insert_update(), inline
            self.cached32_node = new
        else:
            self.cached_node = new
        # (size, limit_pfn, size_aligned, walked, retried, below)
        self.log.emit_values(_L, "__alloc_and_insert_iova_range", "tree_alloc", new_pfn, cpu,
                             (size, limit_pfn, size_aligned, walked, retried, prev.pfn_lo))
        return new

    def _check_size_limit(self, func: str, size: int, limit_pfn: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{func}: size {size!r} must be >= 1 granule "
                             "(the kernel computes fls_long(size - 1): size 0 is undefined)")
        if not isinstance(limit_pfn, int) or isinstance(limit_pfn, bool) or limit_pfn < 0:
            raise ValueError(f"{func}: limit_pfn {limit_pfn!r} must be an int >= 0")
        if limit_pfn >= IOVA_ANCHOR:
            raise ValueError(f"{func}: limit_pfn {limit_pfn:#x} reaches the anchor pfn")

    def alloc_iova(self, size: int, limit_pfn: int, size_aligned: bool, cpu: int = 0) -> Iova | None:
        """``alloc_iova(iovad, size, limit_pfn, size_aligned)`` (iova.c).

        :param size: ``unsigned long size``, granules; not rounded.
        :param limit_pfn: ``unsigned long limit_pfn``, inclusive highest pfn.
        :param size_aligned: ``bool``; align the start to ``roundup_pow_of_two(size)``.
        :returns: the new ``struct iova`` or None.
        """
        if size.__class__ is not int or size < 1 or limit_pfn.__class__ is not int \
                or limit_pfn < 0 or limit_pfn >= IOVA_ANCHOR:
            self._check_size_limit("alloc_iova", size, limit_pfn)
        if cpu.__class__ is not int or not 0 <= cpu < self.ncpus:
            self._check_cpu(cpu)
        new = self._alloc_and_insert_iova_range(size, limit_pfn + 1, size_aligned, cpu)
        if new is not None:
            self.log.emit_values(_L, "alloc_iova", "iova_allocs", new.pfn_lo, cpu,
                                 (size, limit_pfn, size_aligned))
        return new

    # -- lookups and frees -----------------------------------------------------------------
    def find_iova(self, pfn: int) -> Iova | None:
        """``find_iova(iovad, pfn)`` (iova.c): the node with ``pfn_lo <= pfn <= pfn_hi``."""
        self._check_pfn("find_iova", pfn)
        neg = self._neg
        i = bisect_left(neg, -pfn)
        if i >= len(neg):
            return None
        node = self._nodes[-neg[i]]
        return node if node.pfn_hi >= pfn and node is not self.anchor else None

    def _remove_iova(self, node: Iova, cpu: int, why: str) -> None:
        """``remove_iova()`` (iova.c): cached-node update, then ``rb_erase``."""
        neg, nodes = self._neg, self._nodes
        i = bisect_left(neg, -node.pfn_lo)  # one index lookup serves rb_next() and rb_erase()
        # rb_next(node): the anchor sits above every node and is never removed, so i > 0
        self.__cached_rbnode_delete_update(node, nodes[-neg[i - 1]])
        del neg[i]
        del nodes[node.pfn_lo]
        if self._journal is not None:
            self._journal.append((False, node))
        self.log.emit_values(_L, "remove_iova", "tree_free", node.pfn_lo, cpu, (node.pfn_lo, node.pfn_hi, why))

    def free_iova(self, pfn: int, cpu: int = 0) -> None:
        """``free_iova(iovad, pfn)`` (iova.c): free the whole node that holds ``pfn``.

        Deviation: the kernel returns silently when no node holds ``pfn``; this raises
        ``ValueError`` (nothing changes either way).
        """
        if cpu.__class__ is not int or not 0 <= cpu < self.ncpus:
            self._check_cpu(cpu)
        node = self.find_iova(pfn)
        if node is None:
            raise ValueError(f"free_iova: no IOVA range holds pfn {pfn:#x} "
                             "(the kernel ignores this silently)")
        self._remove_iova(node, cpu, "free_iova")
        self.log.emit_values(_L, "free_iova", "iova_frees", None, cpu, (pfn,))

    def reserve_iova(self, pfn_lo: int, pfn_hi: int) -> Iova:
        """``reserve_iova(iovad, pfn_lo, pfn_hi)`` (iova.c): mark a range as never allocatable.

        Walks every node in order: an overlapping node is extended downward when the request starts
        below it; a request reaching above it continues from ``node.pfn_hi + 1``; a request that
        ends inside a node returns that node. The rest becomes a new node. Cached nodes are not
        updated.
        """
        if not (isinstance(pfn_lo, int) and isinstance(pfn_hi, int)) or pfn_lo > pfn_hi or pfn_lo < 0:
            raise ValueError(f"reserve_iova: range {pfn_lo!r}-{pfn_hi!r} is not pfn_lo <= pfn_hi")
        if (pfn_hi | pfn_lo) > (U64_MASK >> self.shift):
            raise ValueError(f"reserve_iova: pfn {pfn_hi:#x} beyond ULLONG_MAX >> iova_shift "
                             "(the kernel WARNs and returns NULL)")
        if pfn_hi >= IOVA_ANCHOR:
            raise ValueError(f"reserve_iova: pfn_hi {pfn_hi:#x} reaches IOVA_ANCHOR {IOVA_ANCHOR:#x} "
                             "(the kernel would widen the anchor node)")
        overlap = False
        # The kernel walks from rb_first(); nodes below the first one reaching pfn_lo cannot
        # overlap and the walk passes them by, so start there (nodes are disjoint: pfn_hi ascends
        # with pfn_lo). An extended node keeps its place in the order, so indices stay valid.
        neg, nodes = self._neg, self._nodes
        first = bisect_left(neg, -pfn_lo)      # the highest node with pfn_lo <= the request's
        if first >= len(neg) or nodes[-neg[first]].pfn_hi < pfn_lo:
            first -= 1
        for j in range(first, 0, -1):              # ascending, the anchor (index 0) excluded
            node = nodes[-neg[j]]
            if pfn_lo <= node.pfn_hi and pfn_hi >= node.pfn_lo:  # __is_range_overlap
                # __adjust_overlap_range
                if pfn_lo < node.pfn_lo:
                    self._erase(node)
                    node.pfn_lo = pfn_lo
                    self._insert(node)
                if pfn_hi > node.pfn_hi:
                    pfn_lo = node.pfn_hi + 1
                if pfn_lo >= node.pfn_lo and pfn_hi <= node.pfn_hi:
                    self.log.emit(_L, "reserve_iova", "reserve", node.pfn_lo, pfn_lo=pfn_lo,
                                  pfn_hi=pfn_hi, merged=True)
                    return node
                overlap = True
            elif overlap:
                break
        node = Iova(pfn_lo, pfn_hi, reserved=True)
        self._insert(node)
        self.log.emit(_L, "reserve_iova", "reserve", pfn_lo, pfn_lo=pfn_lo, pfn_hi=pfn_hi,
                      merged=False)
        return node

    def overlaps(self, pfn_lo: int, pfn_hi: int) -> bool:
        """Whether any node (anchor excluded) holds a pfn of ``pfn_lo..pfn_hi`` (no kernel analogue;
        one lookup: the highest node starting at or below ``pfn_hi`` is the only candidate)."""
        neg = self._neg
        i = bisect_left(neg, -pfn_hi)
        return i < len(neg) and i > 0 and self._nodes[-neg[i]].pfn_hi >= pfn_lo

    # -- the range caches ------------------------------------------------------------------
    @staticmethod
    def _check_pfn(func: str, pfn) -> None:
        if not isinstance(pfn, int) or isinstance(pfn, bool) or not 0 <= pfn <= U64_MASK:
            raise ValueError(f"{func}: pfn {pfn!r} must be an int in 0..2^64-1 (unsigned long)")

    def _check_cpu(self, cpu: int) -> None:
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.ncpus:
            raise ValueError(f"cpu {cpu!r} is not one of this domain's CPUs 0..{self.ncpus - 1}")


    def alloc_iova_fast(self, size: int, limit_pfn: int, flush_rcache: bool = True,
                        cpu: int = 0) -> int:
        """``alloc_iova_fast(iovad, size, limit_pfn, flush_rcache)`` (iova.c).

        :param size: ``unsigned long size``, granules; below 32 rounded up to a power of two.
        :param limit_pfn: ``unsigned long limit_pfn``, inclusive.
        :param flush_rcache: ``bool``; on a tree failure return every cached range of every CPU and
            the depots to the tree and retry once.
        :returns: ``pfn_lo`` of the range, 0 on failure.
        """
        if size.__class__ is not int or size < 1 or limit_pfn.__class__ is not int \
                or limit_pfn < 0 or limit_pfn >= IOVA_ANCHOR:
            self._check_size_limit("alloc_iova_fast", size, limit_pfn)
        if cpu.__class__ is not int or not 0 <= cpu < self.ncpus:
            self._check_cpu(cpu)
        log = self.log
        asked = size
        size = iova_rcache_roundup(size)
        pfn = self.iova_rcache_get(size, limit_pfn + 1, cpu)
        if pfn:
            log.emit_values(_L, "iova_rcache_get", "rcache_hits", pfn, cpu, (size, limit_pfn))
            log.emit_values(_L, "alloc_iova_fast", "iova_allocs", pfn, cpu, (asked, limit_pfn, "rcache"))
            return pfn
        if size <= (1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)):
            log.emit_values(_L, "iova_rcache_get", "rcache_miss", 0, cpu, (size, limit_pfn))
        while True:
            new = self._alloc_and_insert_iova_range(size, limit_pfn + 1, True, cpu)
            if new is not None:
                log.emit_values(_L, "alloc_iova_fast", "iova_allocs", new.pfn_lo, cpu, (asked, limit_pfn, "tree"))
                return new.pfn_lo
            if not flush_rcache:
                log.emit(_L, "alloc_iova_fast", "alloc_failed", 0, cpu=cpu, size=asked,
                         limit_pfn=limit_pfn, flush_rcache=False)
                return 0
            flush_rcache = False
            log.emit(_L, "alloc_iova_fast", "rcache_flush", None, cpu=cpu, size=size,
                     limit_pfn=limit_pfn)
            for c in range(self.ncpus):
                self.free_cpu_cached_iovas(c)
            self.free_global_cached_iovas()

    def free_iova_fast(self, pfn: int, size: int, cpu: int = 0) -> None:
        """``free_iova_fast(iovad, pfn, size)`` (iova.c): rcache of ``cpu`` if the bin fits, else tree.

        :param size: ``unsigned long size``, granules, as the *caller* computes it at free time
            (it chooses the bin; the node keeps its own size in the tree).

        Deviation: the kernel does not check that ``pfn`` is allocated; this raises ValueError.
        """
        if cpu.__class__ is not int or not 0 <= cpu < self.ncpus:
            self._check_cpu(cpu)
        if size.__class__ is not int or size < 1:
            raise ValueError(f"free_iova_fast: size {size!r} must be >= 1 granule")
        if pfn.__class__ is not int:
            self._check_pfn("free_iova_fast", pfn)
        neg = self._neg
        i = bisect_left(neg, -pfn)  # find_iova(pfn), inline
        node = self._nodes[-neg[i]] if i < len(neg) else None
        if node is None or node.pfn_hi < pfn or node is self.anchor:
            raise ValueError(f"free_iova_fast: no IOVA range holds pfn {pfn:#x}")
        log = self.log
        if self.iova_rcache_insert(pfn, size, cpu):
            log.emit_values(_L, "free_iova_fast", "iova_frees", None, cpu, (pfn, size, "rcache"))
            return
        self._remove_iova(node, cpu, "free_iova")
        log.emit(_L, "free_iova_fast", "iova_frees", None, cpu=cpu, pfn=pfn, size=size,
                 dest="tree")


    # -- trials: try an order of operations, then undo it (no kernel analogue) ----------------------
    def trial_begin(self) -> None:
        """Start a trial: later tree changes are journaled and the rest of the state copied, so that
        :meth:`trial_rollback` undoes them at the cost of what changed, not of the whole tree (a
        replayer trying another order of frees before an allocation). Nodes must not be resized
        (``reserve_iova``) inside a trial."""
        self._journal = []
        self._trial = (self.cached_node, self.cached32_node, self.max32_alloc_size, self._save_rcaches())

    def trial_rollback(self) -> None:
        """Return to the state at :meth:`trial_begin`; the trial goes on (roll back again, or end it)."""
        if self._journal is None or self._trial is None:
            raise ValueError("trial_rollback without trial_begin")
        neg, nodes = self._neg, self._nodes
        for added, node in reversed(self._journal):
            if added:
                del neg[bisect_left(neg, -node.pfn_lo)]
                del nodes[node.pfn_lo]
            else:
                insort(neg, -node.pfn_lo)
                nodes[node.pfn_lo] = node
        self._journal.clear()
        self.cached_node, self.cached32_node, self.max32_alloc_size, rc = self._trial
        self._restore_rcaches(rc)

    def trial_end(self) -> None:
        """Keep the state as it is and stop journaling."""
        self._journal = None
        self._trial = None


    def snapshot(self) -> tuple:
        """Comparable copy of the whole allocator state (tests use it to prove "no change")."""
        return (tuple(self.ranges()), self.cached_node.pfn_lo, self.cached32_node.pfn_lo,
                self.max32_alloc_size,
                tuple((tuple(tuple(c.loaded.pfns) for c in r.cpu_rcaches),
                       tuple(tuple(c.prev.pfns) for c in r.cpu_rcaches),
                       tuple(tuple(m.pfns) for m in r.depot)) for r in self.rcaches))
