"""``struct io_pgtable_ops`` and the table walk every format shares (Linux 6.16/6.17).

``include/linux/io-pgtable.h`` gives each page-table format one ``struct io_pgtable_ops``
(``map_pages``, ``unmap_pages``, ``iova_to_phys``); :class:`IoPgtableOps` is that protocol. The three
modelled formats (:mod:`~iovalab.kernel.pgtable.arm_lpae`, :mod:`~iovalab.kernel.pgtable.intel_vtd`,
:mod:`~iovalab.kernel.pgtable.amd_v1`) are subclasses of :class:`IoPgtable`, which holds what they
share: the radix-tree geometry, walking and allocating tables, the map loop (a format supplies its
argument checks and PTE encoding), unmap and the bulk leaf writes. The read-only walks
(``iova_to_phys``, ``walk``, ranges, occupancy) are :class:`~iovalab.kernel.pgtable.ops_walk.IoPgtableWalkMixin`
(:mod:`~iovalab.kernel.pgtable.ops_walk`), a base of :class:`IoPgtable`.

Geometry of every format: :mod:`iovalab.kernel.pgtable`.

Shared behaviour (each format module lists where its kernel driver differs):

* **Overlap** (a leaf PTE already present where a new leaf goes). The kernel drivers differ
  (``OVERLAP``): ARM ``arm_lpae_init_pte`` WARNs and returns -EEXIST, writing nothing in that call
  (the model does the same); VT-d 6.17 ``__domain_mapping`` prints "DMA PTE for vPFN ... already
  set", WARNs, keeps the old PTE and returns 0; AMD v1 6.17 ``iommu_v1_map_pages`` replaces the
  PTE silently (no IOTLB flush unless it freed or allocated tables). By default the model refuses
  the last two with -EEXIST, writing nothing, and its event says what the kernel would do;
  with ``follow_kernel = True`` (``DmaDomain(follow_kernel=True)``) it does what the kernel does.
* **Block/superpage over an existing lower table.** All three drivers drop the table. Model: done
  when the table (subtree) holds no leaf (the normal case after unmapping small pages, since tables
  are not freed on leaf unmap); if it still holds live leaves the kernel would silently discard them -
  the model refuses with -EEXIST instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from iovalab.kernel.events import EventLog
from iovalab.kernel.pgtable.ops_walk import FEW_GRANULES as _FEW_GRANULES
from iovalab.kernel.pgtable.ops_walk import IoPgtableWalkMixin
from iovalab.kernel.pgtable.table import Table
from iovalab.kernel.units import EEXIST, SZ_4K

__all__ = [
    "IOMMU_READ", "IOMMU_WRITE", "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
    "TABLE_PHYS_BASE", "x86_geometry", "GatherCallback", "TlbFlush", "IoPgtableOps", "IoPgtable",
]

# include/linux/iommu.h
IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
IOMMU_MMIO = 1 << 4
IOMMU_PRIV = 1 << 5

#: Simulated physical region the model takes page-table pages from (no kernel analogue).
TABLE_PHYS_BASE = 0x7E00_0000_0000

LAYER = "pgtable"

#: ``tlb_flush(iova, size, func, cpu)``: an immediate invalidation inside map/unmap.
TlbFlush = Callable[[int, int, str, int], None]
#: ``gather_cb(iova, size, leaf_size)``: where the driver adds to the IOTLB gather.
GatherCallback = Callable[[int, int, int], None]


@runtime_checkable
class IoPgtableOps(Protocol):
    """``struct io_pgtable_ops`` (include/linux/io-pgtable.h), as the IOMMU core calls it."""

    def map_pages(self, iova: int, paddr: int, pgsize: int, count: int, prot: int,
                  cpu: int = 0) -> tuple[int, int]:
        """``map_pages(ops, iova, paddr, pgsize, pgcount, prot, gfp, &mapped)``:
        ``(mapped bytes, 0 or -errno)``."""
        ...

    def unmap_pages(self, iova: int, pgsize: int, count: int, gather_cb: GatherCallback | None = None,
                    cpu: int = 0) -> int:
        """``unmap_pages(ops, iova, pgsize, pgcount, gather)``: bytes unmapped."""
        ...

    def iova_to_phys(self, iova: int) -> int:
        """``iova_to_phys(ops, iova)``: the physical address, or 0 when nothing is mapped."""
        ...


def x86_geometry(granule: int, native: int) -> tuple[int, int, int]:
    """x86-64 IO page tables (VT-d, AMD v1): 9 bits a level, up to 57 IOVA bits, 4K pages only."""
    if granule != SZ_4K:
        raise ValueError(f"granule {granule:#x}: x86-64 IO page tables have 4K pages only")
    return 9, 57, native


def _bits(x: int) -> Iterator[int]:
    while x:
        low = x & -x
        yield low
        x ^= low



class IoPgtable(IoPgtableWalkMixin):
    """A multi-level IO page table (``struct io_pgtable`` / ``dmar_domain->pgd`` / ``amd_io_pgtable``):
    the machinery every format shares. Build one with
    :func:`~iovalab.kernel.pgtable.alloc_io_pgtable_ops`.

    :param granule: smallest page (``ARM_LPAE_GRANULE``): 4K for x86-64; 4K, 16K or 64K for ARM.
    :param ias: input (IOVA) address bits (``cfg->ias`` / ``domain->gaw``).
    :param log: the :class:`~iovalab.kernel.events.EventLog` steps go to (``None``: no events).
    :param pgsize_bitmap: leaf sizes to accept (default: the format's own). Sizes above ``2**ias``
        are ignored.
    :param oas: output address bits (default: the format's).
    :param tlb_flush: ``tlb_flush(iova, size, func, cpu)`` - the immediate invalidations a driver
        does inside map/unmap (``io_pgtable_tlb_flush_walk`` ...), supplied by the IOMMU domain.

    The root table page is allocated at construction (one ``table_pages`` event).
    """

    #: a Linux 7.3 ``struct pt_iommu`` (generic page table): the core calls ``map_range``/``unmap_range``
    pt_iommu = False

    #: ``"x86-64"`` or ``"arm-lpae"``; the driver name (``"intel"``, ``"amd"``, ``"arm"``).
    fmt: ClassVar[str]
    driver: ClassVar[str]
    #: kernel function names of the steps (``map``, ``unmap``, ``alloc``, ``root``, ``free``,
    #: ``flush``, ``init``), for events.
    FN: ClassVar[dict[str, str]]
    DEFAULT_OAS: ClassVar[int] = 52
    #: the driver accepts any leaf size the bitmap names (AMD v1), not only its native ones.
    ANY_PGSIZE: ClassVar[bool] = False
    #: the PTE's address field is not the physical address itself (ARM 52-bit rotation).
    ENCODES_PADDR: ClassVar[bool] = False
    #: what the driver does with a leaf already present where ``map_pages`` writes one: ``"eexist"``
    #: (WARN + -EEXIST, nothing written), ``"keep"`` (message + WARN, old PTE kept, returns 0),
    #: ``"replace"`` (silently overwritten).
    OVERLAP: ClassVar[str] = "eexist"

    def __init__(self, granule: int = SZ_4K, ias: int = 48, log: EventLog | None = None, *,
                 pgsize_bitmap: int | None = None, oas: int | None = None, tlb_flush: TlbFlush | None = None):
        bits, max_ias, native = self.format_geometry(granule)
        shift = granule.bit_length() - 1
        if not shift < ias <= max_ias:
            raise ValueError(f"ias {ias}: must be > {shift} and <= {max_ias} for {self.fmt} "
                             f"with granule {granule:#x}")
        self.granule, self.ias = granule, ias
        self.oas = oas if oas is not None else self.DEFAULT_OAS
        self.log = log
        self.tlb_flush = tlb_flush
        va_bits = ias - shift
        n = -(-va_bits // bits)
        self.nlevels = n
        self.bits_per_level = bits
        self.pgd_bits = va_bits - bits * (n - 1)
        self._sh = [shift + bits * (n - 1 - i) for i in range(n)]
        self._ent = [1 << self.pgd_bits] + [1 << bits] * (n - 1)
        self._mask = [e - 1 for e in self._ent]
        self._block = [1 << s for s in self._sh]
        #: ``(level, shift, index mask)`` of every level, top first: what a walk reads per level
        self._levels = tuple(zip(range(n), self._sh, self._mask, strict=True))
        #: the end of the IOVA space, and the span the walks query entry by entry (``FEW_GRANULES``)
        self._top = 1 << ias
        self._few_span = _FEW_GRANULES * granule
        self.block_sizes = tuple(self._block)
        self.level_entries = tuple(self._ent)
        self.level_shifts = tuple(self._sh)
        if pgsize_bitmap is None:
            pgsize_bitmap = native
        self._pgsz: dict[int, tuple[int, int]] = {}
        for s in _bits(pgsize_bitmap):
            if s > (1 << ias):
                continue
            if not self.ANY_PGSIZE and not s & native:
                raise ValueError(f"page size {s:#x} is not a {self.driver} {self.fmt} leaf size "
                                 f"(allowed: {native:#x})")
            if s < granule:
                raise ValueError(f"page size {s:#x} is below the granule {granule:#x}")
            i = min(j for j in range(n) if self._block[j] <= s)
            self._pgsz[s] = (i, s // self._block[i])
        self.pgsize_bitmap = sum(self._pgsz)
        self._fn_map = self.FN["map"]
        self._bits_cache: dict[tuple[int, int, int], int] = {}
        self._lname = [self.level_name(i) for i in range(n)]
        self._tphys = TABLE_PHYS_BASE
        self._ntables = 0
        self._leaves = 0
        #: table pages the last ``unmap_pages`` freed (VT-d: queued on ``gather->freelist``).
        self.last_freed = 0
        #: follow the driver into the corrupt state it leaves on misuse (see ``OVERLAP``) instead of
        #: refusing; set by ``DmaDomain(follow_kernel=True)``.
        self.follow_kernel = False
        self.root = self._new_table(0, 0)
        if log is not None:
            log.emit(LAYER, self.FN["root"], "table_pages", self.root.phys, level=self.level_name(0), iova=0)

    # -- what a format supplies -----------------------------------------------------------------
    @classmethod
    def format_geometry(cls, granule: int) -> tuple[int, int, int]:
        """``(bits per level, largest ias, native page-size bitmap)`` for ``granule``; ValueError if
        the format has no such granule."""
        raise NotImplementedError

    def level_name(self, i: int) -> str:
        """Kernel name of model level ``i`` (0 = top)."""
        raise NotImplementedError

    def _table_pte(self, tphys: int, i: int) -> int:
        """The PTE at level ``i`` that points to a table page at ``tphys``."""
        raise NotImplementedError

    def _leaf_bits(self, prot: int, i: int, rep: int) -> int:
        """Attribute bits of a leaf PTE at level ``i`` (``rep`` > 1: a replicated large PTE)."""
        raise NotImplementedError

    def _decode(self, v: int, i: int) -> tuple[int, int, int]:
        """``(phys of the leaf's first byte, leaf size, IOMMU prot)`` of a leaf PTE at level ``i``."""
        raise NotImplementedError

    def _decode_vec(self, v: np.ndarray, iov: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Arrays ``(phys, prot)`` of leaf PTEs ``v`` (at IOVAs ``iov``) of one level-``i`` table."""
        raise NotImplementedError

    def _enc(self, phys: int) -> int:
        """``paddr_to_iopte``: the PTE address field of ``phys``."""
        return phys

    def _enc_vec(self, ph: np.ndarray) -> np.ndarray:
        return ph

    def _check_map(self, iova: int, paddr: int, pgsize: int, count: int, prot: int,
                   info: tuple[int, int] | None, cpu: int) -> tuple[int, int] | None:
        """The driver's ``map_pages`` argument checks, in its order: an error tuple, or None to go on."""
        raise NotImplementedError

    def _map_span_limit(self, iova: int, left: int, lvl: int) -> int:
        """PTEs one ``map_pages`` call writes of ``left`` (ARM stops at the end of the table)."""
        return left

    def _replicated(self, phys0: int, pgsize: int, n: int, rep: int, bits: int) -> np.ndarray:
        """PTE values of ``n`` slots holding replicated large pages (only AMD v1 has them)."""
        raise AssertionError(f"{self.driver}: no replicated PTEs")

    def _flush_replaced(self, base: int, size: int, cpu: int) -> None:
        """Invalidation when a block replaces an (empty) lower table: immediate by default."""
        self._flush(base, size, cpu)

    def _after_replace(self, iova: int, size: int, cpu: int) -> None:
        """Invalidation after a map that replaced tables (AMD flushes the range once)."""

    def _overlap_refused(self, iova: int, old: int, new: int, cpu: int) -> tuple[int, int]:
        """A leaf already present at ``iova`` (PTE ``old``; the new one would be ``new``): the
        refusal event, -EEXIST. Formats whose driver does not refuse say what it would do."""
        return self._err(self.FN["init"], EEXIST, "PTE already present (unmap first)", True, cpu, iova=iova)

    def _overlap_followed(self, iova: int, old: int, new: int, cpu: int) -> None:
        """``follow_kernel``: the event (if any) the driver prints for one overlapping PTE it keeps
        or replaces."""

    def _unmap(self, iova: int, pgsize: int, count: int, cpu: int) -> tuple[int, int, tuple | None]:
        """The driver's unmap: ``(bytes unmapped, PTEs cleared, gather (iova, size, leaf) or None)``."""
        raise NotImplementedError

    # -- geometry ------------------------------------------------------------------------------
    def geometry(self) -> list[dict]:
        """One dict per level: name, IOVA shift, entries per table, block size, leaf allowed."""
        leafs = {i for i, _ in self._pgsz.values()}
        return [{"level": self.level_name(i), "shift": self._sh[i], "entries": self._ent[i],
                 "block": self._block[i], "leaf": i in leafs} for i in range(self.nlevels)]

    # -- events -------------------------------------------------------------------------------
    def _err(self, func: str, errno: int, rule: str, warn: bool, cpu: int, **args) -> tuple[int, int]:
        log = self.log
        if log is not None:
            if warn:
                log.warn(LAYER, func, errno, rule, cpu=cpu, **args)
            else:
                log.emit(LAYER, func, "error", -errno, cpu=cpu, rule=rule, **args)
        return 0, -errno

    def _flush(self, iova: int, size: int, cpu: int) -> None:
        if self.tlb_flush is not None:
            self.tlb_flush(iova, size, self.FN["flush"], cpu)

    # -- walking ------------------------------------------------------------------------------
    def _new_table(self, lvl: int, base: int) -> Table:
        t = Table(self._ent[lvl], lvl, base, self._tphys)
        self._tphys += self.granule
        self._ntables += 1
        return t

    def _find(self, iova: int, lvl: int) -> tuple[Table | None, int]:
        """Table at ``lvl`` on the walk of ``iova`` without allocating: ``(table, -1)``, or
        ``(None, -1)`` when a table is missing, or ``(None, i)`` when a leaf at level ``i`` covers it."""
        t = self.root
        sh, mask = self._sh, self._mask
        for i in range(lvl):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                return (None, i) if t.ent[idx] else (None, -1)
            t = k
        return t, -1

    def _alloc_path(self, iova: int, lvl: int, cpu: int) -> Table:
        t = self.root
        sh, mask = self._sh, self._mask
        for i in range(lvl):
            idx = (iova >> sh[i]) & mask[i]
            k = t.kids.get(idx)
            if k is None:
                k = self._new_table(i + 1, iova & ~(self._block[i] - 1))
                t.kids[idx] = k
                t.ent[idx] = self._table_pte(k.phys, i)
                if self.log is not None:
                    self.log.emit(LAYER, self.FN["alloc"], "table_pages", k.phys, cpu=cpu,
                                  level=self.level_name(i + 1), iova=k.base)
            t = k
        return t

    def _subtree_leaves(self, t: Table) -> int:
        n = int(np.count_nonzero(t.ent)) - len(t.kids)
        for k in t.kids.values():
            n += self._subtree_leaves(k)
        return n

    def _free_subtree(self, t: Table, cpu: int) -> int:
        """Drop a table and everything below it (leaves included); returns table pages freed."""
        tables, stack = 0, [t]
        while stack:
            x = stack.pop()
            tables += 1
            self._leaves -= int(np.count_nonzero(x.ent)) - len(x.kids)
            stack.extend(x.kids.values())
        self._ntables -= tables
        if self.log is not None:
            self.log.emit(LAYER, self.FN["free"], "table_free", None, cpu=cpu, count=tables,
                          level=self.level_name(t.lvl), iova=t.base)
        return tables

    # -- map ----------------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, count: int, prot: int,
                  cpu: int = 0) -> tuple[int, int]:
        """``ops->map_pages(ops, iova, paddr, pgsize, pgcount, prot, gfp, &mapped)``.

        ``iova`` (``unsigned long``), ``paddr`` (``phys_addr_t``), ``pgsize``/``count``
        (``size_t``), ``prot`` (``int``, ``IOMMU_READ``...). Returns ``(mapped bytes, 0 or -errno)``.
        ARM maps at most to the end of the current table; VT-d and AMD map all ``count`` pages.
        Writes nothing on error. Steps: ``table_pages`` per table allocated, one ``pte_writes``
        event with ``count`` = PTEs written.
        """
        info = self._pgsz.get(pgsize)
        if (info is None or count < 1 or not prot & (IOMMU_READ | IOMMU_WRITE)
                or (iova | paddr) & (pgsize - 1) or (iova + pgsize * count - 1) >> self.ias
                or paddr >> self.oas):
            if count < 1:
                raise ValueError(f"{self.FN['map']}: pgcount {count} (iommu_pgsize never returns 0)")
            bad = self._check_map(iova, paddr, pgsize, count, prot, info, cpu)
            if bad is not None:
                return bad
        assert info is not None
        lvl, rep = info
        if count == 1 and rep == 1:  # fast path: one PTE in an existing table
            t: Table | None = self.root
            sh, mask = self._sh, self._mask
            for i in range(lvl):
                t = t.kids.get((iova >> sh[i]) & mask[i])  # type: ignore[union-attr]
                if t is None:
                    break
            else:
                assert t is not None
                idx = (iova >> sh[lvl]) & mask[lvl]
                ent = t.ent
                if not ent[idx]:
                    key = (prot, lvl, 1)
                    bits = self._bits_cache.get(key)
                    if bits is None:
                        bits = self._bits_cache[key] = self._leaf_bits(prot, lvl, 1)
                    ent[idx] = (self._enc(paddr) if self.ENCODES_PADDR else paddr) | bits
                    self._leaves += 1
                    if self.log is not None:
                        self.log.emit_values(LAYER, self._fn_map, "pte_writes", pgsize, cpu,
                                             (iova, paddr, pgsize, 1, self._lname[lvl]))
                    return pgsize, 0
        return self._map_slow(iova, paddr, pgsize, count, prot, info, cpu)

    def _map_slow(self, iova: int, paddr: int, pgsize: int, count: int, prot: int, info: tuple[int, int],
                  cpu: int) -> tuple[int, int]:
        lvl, rep = info
        sh, mask, nent = self._sh[lvl], self._mask[lvl], self._ent[lvl]
        bsz = self._block[lvl]
        left = self._map_span_limit(iova, count * rep, lvl)
        init = self.FN["init"]
        # 1. validate every span (no allocation, no write)
        spans = []
        follow = self.follow_kernel and self.OVERLAP != "eexist"
        clashes: list[tuple[Table, int, int]] = []  # (table, index, iova) of present leaves (follow)
        bits = self._leaf_bits(prot, lvl, rep)
        cur = iova
        while left:
            idx = (cur >> sh) & mask
            n = min(left, nent - idx)
            t, blk = self._find(cur, lvl)
            if blk >= 0:
                return self._err(init, EEXIST, f"a block at {self.level_name(blk)} already maps "
                                 "this IOVA (unmap first)", True, cpu, iova=cur)
            repl: list[int] = []
            if t is not None:
                if n == 1:
                    nz = [0] if t.ent[idx] else []
                elif n <= _FEW_GRANULES:
                    nz = [j for j, v in enumerate(t.ent[idx:idx + n].tolist()) if v]
                else:
                    nz = np.flatnonzero(t.ent[idx:idx + n]).tolist()
                for j in nz:
                    k = t.kids.get(idx + j)
                    if k is None:
                        at = cur + j * bsz
                        if follow:
                            clashes.append((t, idx + j, at))
                            continue
                        return self._overlap_refused(at, int(t.ent[idx + j]), self._enc(paddr + (at - iova))
                                                     | bits, cpu)
                    if self._subtree_leaves(k):
                        return self._err(init, EEXIST, "a lower-level table with live mappings "
                                         "is where the block would go (the kernel would discard them)",
                                         True, cpu, iova=cur + j * bsz)
                    repl.append(idx + j)
            spans.append((cur, idx, n, t, repl))
            cur += n * bsz
            left -= n
        # 2. write
        kept = {(id(t), j): int(t.ent[j]) for t, j, _ in clashes}
        written = 0
        replaced = False
        for cur, idx, n, t, repl in spans:
            if t is None:
                t = self._alloc_path(cur, lvl, cpu)
            for j in repl:
                k = t.kids.pop(j)
                t.ent[j] = 0
                self._free_subtree(k, cpu)
                replaced = True
                self._flush_replaced(k.base, bsz, cpu)
            phys0 = paddr + (cur - iova)
            if rep == 1:
                if n == 1:
                    t.ent[idx] = self._enc(phys0) | bits
                elif n <= _FEW_GRANULES:
                    t.ent[idx:idx + n] = [self._enc(phys0 + j * bsz) | bits for j in range(n)]
                else:
                    ph = np.uint64(phys0) + np.arange(n, dtype=np.uint64) * np.uint64(bsz)
                    t.ent[idx:idx + n] = self._enc_vec(ph) | np.uint64(bits)
            else:
                t.ent[idx:idx + n] = self._replicated(phys0, pgsize, n, rep, bits)
            written += n
        for t, j, at in clashes:  # follow_kernel: the driver's own way with a present leaf
            new = int(t.ent[j])
            if self.OVERLAP == "keep":
                t.ent[j] = kept[(id(t), j)]
            self._overlap_followed(at, kept[(id(t), j)], new, cpu)
        if replaced:
            self._after_replace(iova, written // rep * pgsize, cpu)
        self._leaves += written - len(clashes)
        mapped = written // rep * pgsize
        if self.log is not None:
            self.log.emit_values(LAYER, self._fn_map, "pte_writes", mapped, cpu,
                                 (iova, paddr, pgsize, count, self._lname[lvl]), written)
        return mapped, 0

    # -- unmap --------------------------------------------------------------------------------
    def unmap_pages(self, iova: int, pgsize: int, count: int, gather_cb: GatherCallback | None = None,
                    cpu: int = 0) -> int:
        """``ops->unmap_pages(ops, iova, pgsize, pgcount, gather)``: returns bytes unmapped.

        ``gather_cb(iova, size, leaf_size)`` is called where the driver adds to the IOTLB gather:
        ARM once per run of cleared PTEs (io-pgtable's per-PTE ``io_pgtable_tlb_add_page``, all of
        ``leaf_size``), VT-d once per call with the (rounded) size, AMD once with the bytes unmapped
        when non-zero. The IOMMU domain turns these into the driver's gather helper. One
        ``pte_clear`` event per call (``count`` = PTEs cleared). Semantics: each format's docstring.
        """
        self.last_freed = 0
        if count < 1 or not pgsize or pgsize & (pgsize - 1):
            raise ValueError(f"unmap_pages: pgsize {pgsize:#x} / pgcount {count} invalid")
        n, cleared, gat = self._unmap(iova, pgsize, count, cpu)
        if self.log is not None:
            self.log.emit_values(LAYER, self.FN["unmap"], "pte_clear", n, cpu, (iova, pgsize, count), cleared)
        if gat is not None and gather_cb is not None:
            gather_cb(*gat)
        return n

    # -- bulk leaf writes (no kernel analogue: many map_pages/unmap_pages calls of one granule) ----
    def _leaf_groups(self, iovas: np.ndarray):
        """Split granule-aligned IOVAs by leaf table, in order of first touch."""
        lvl, rep = self._pgsz.get(self.granule, (None, None))
        if lvl is None or rep != 1 or lvl == 0:
            return None
        span = self._block[lvl - 1]
        keys = iovas // np.uint64(span)
        perm = np.argsort(keys, kind="stable")
        sk = keys[perm]
        starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
        ends = np.append(starts[1:], len(perm))
        order = np.argsort(perm[starts], kind="stable")  # groups in order of first touch
        idx = (iovas >> np.uint64(self._sh[lvl])) & np.uint64(self._mask[lvl])
        groups = [(int(sk[starts[g]]) * span, perm[starts[g]:ends[g]]) for g in order.tolist()]
        return lvl, groups, idx.astype(np.intp)

    @staticmethod
    def _has_duplicates(a: np.ndarray) -> bool:
        s = np.sort(a)
        return bool((s[1:] == s[:-1]).any())

    def map_leaves_bulk(self, iovas: np.ndarray, paddrs: np.ndarray, prot: int, cpu: int = 0) -> bool:
        """Many ``map_pages(iova, paddr, granule, 1, prot)`` calls at once, in array order: the same
        table pages (allocated in order of first touch, each a ``table_pages`` event) and the same
        PTE values. The ``pte_writes`` tallies are the caller's. Returns False, writing nothing, when
        any slot is taken, covered by a block, out of range or the arrays are not unique/aligned."""
        iovas = np.asarray(iovas, dtype=np.uint64)
        paddrs = np.asarray(paddrs, dtype=np.uint64)
        g = np.uint64(self.granule - 1)
        n = len(iovas)
        if (n == 0 or len(paddrs) != n or ((iovas | paddrs) & g).any() or not prot & (IOMMU_READ | IOMMU_WRITE)
                or int(iovas.max()) + self.granule > 1 << self.ias or int(paddrs.max()) >> self.oas
                or self._has_duplicates(iovas)):
            return False
        grouped = self._leaf_groups(iovas)
        if grouped is None:
            return False
        lvl, groups, idx = grouped
        tables = []
        for base, sel in groups:  # validate everything before writing anything
            t, blk = self._find(base, lvl)
            if blk >= 0 or (t is not None and t.ent[idx[sel]].any()):
                return False
            tables.append(t)
        bits = np.uint64(self._leaf_bits(prot, lvl, 1))
        enc = self._enc_vec(paddrs)
        for (base, sel), t in zip(groups, tables, strict=True):
            if t is None:
                t = self._alloc_path(base, lvl, cpu)
            t.ent[idx[sel]] = enc[sel] | bits
        self._leaves += n
        return True

    def clear_leaves_bulk(self, iovas: np.ndarray) -> bool:
        """Clear granule-size leaf PTEs (many ``unmap_pages(iova, granule, 1)`` that each find a present
        leaf). Returns False, clearing nothing, unless every IOVA holds a granule leaf."""
        iovas = np.asarray(iovas, dtype=np.uint64)
        if len(iovas) == 0 or (iovas & np.uint64(self.granule - 1)).any() or self._has_duplicates(iovas):
            return False
        grouped = self._leaf_groups(iovas)
        if grouped is None:
            return False
        lvl, groups, idx = grouped
        tables = []
        for base, sel in groups:
            t, blk = self._find(base, lvl)
            if t is None or blk >= 0 or not t.ent[idx[sel]].all():
                return False
            tables.append(t)
        for (_, sel), t in zip(groups, tables, strict=True):
            t.ent[idx[sel]] = 0
        self._leaves -= len(iovas)
        return True

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.fmt}/{self.driver} granule={self.granule:#x} ias={self.ias} "
                f"levels={self.nlevels} leaves={self._leaves} tables={self._ntables}>")

