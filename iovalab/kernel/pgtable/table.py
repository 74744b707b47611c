"""The table tree every IO page-table format builds, and read-only queries over it.

A :class:`Table` is one table page: its PTEs as a numpy ``uint64`` array in the format's real
encoding, and its child tables by index. The functions below only read a tree (``root`` plus the
per-level block sizes); they have no kernel analogue beyond ``arm_lpae_pgtable_walk`` and the VT-d
debugfs page-table dump, and serve contract checks and views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["Table", "tables_in_order", "find_mapped", "first_unmapped", "mapped_ranges", "occupancy"]

#: up to this many entries of one table, the walks below read them as Python ints (a numpy reduction
#: costs more than the loop over a few entries); the answer is the same either way
_FEW = 32

#: ``decode(ptes, iovas, level) -> (phys, prot)`` arrays for the leaf PTEs of one table.
DecodeVec = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class Table:
    """One table page: ``ent`` (the PTEs), ``kids`` (index -> child table), level, IOVA base."""

    __slots__ = ("ent", "kids", "lvl", "base", "phys")

    def __init__(self, n: int, lvl: int, base: int, phys: int):
        self.ent = np.zeros(n, dtype=np.uint64)
        self.kids: dict[int, Table] = {}
        self.lvl = lvl
        self.base = base
        self.phys = phys


def tables_in_order(root: Table) -> Iterator[Table]:
    """Every table, depth first, children in index order."""
    stack = [root]
    while stack:
        t = stack.pop()
        yield t
        stack.extend(t.kids[j] for j in sorted(t.kids, reverse=True))


def find_mapped(root: Table, block: Sequence[int], granule: int, lo: int, hi: int, limit: int) -> list[int]:
    """Up to ``limit`` granule addresses in ``[lo, hi)`` that a leaf maps, ascending; walks only
    the tables that exist."""
    out: list[int] = []
    g = granule

    def walk(t: Table) -> None:
        bsz = block[t.lvl]
        first = max(lo, t.base)
        last = min(hi, t.base + bsz * len(t.ent))
        if first >= last:
            return
        a = (first - t.base) // bsz
        b = (last - t.base + bsz - 1) // bsz
        ent = t.ent[a:b]
        if b - a <= _FEW:
            present = [j for j, v in enumerate(ent.tolist()) if v]
        else:
            present = np.flatnonzero(ent).tolist()
        for j in present:
            k = t.kids.get(a + j)
            if k is not None:
                walk(k)
            else:
                start = max(first, t.base + (a + j) * bsz)
                end = min(last, t.base + (a + j + 1) * bsz)
                out.extend(range(start, min(end, start + g * (limit - len(out))), g))
            if len(out) >= limit:
                return

    walk(root)
    return out[:limit]


def first_unmapped(root: Table, block: Sequence[int], granule: int, lo: int, hi: int) -> int | None:
    """Lowest granule address in ``[lo, hi)`` with no leaf, or None (walks existing tables)."""

    def walk(t: Table, first: int, last: int) -> int | None:
        bsz = block[t.lvl]
        a = (first - t.base) // bsz
        b = (last - t.base + bsz - 1) // bsz
        ent = t.ent[a:b]
        if b - a <= _FEW:
            vals = ent.tolist()
            j = vals.index(0) if 0 in vals else None
        else:
            j = None if ent.all() else int(np.flatnonzero(ent == 0)[0])
        upto = b if j is None else a + j  # entries before the first empty one
        kids = t.kids
        if upto - a <= _FEW:
            below = [x for x in range(a, upto) if x in kids] if kids else []
        else:
            below = sorted(x for x in kids if a <= x < upto)
        for k_idx in below:
            k = t.kids[k_idx]
            r = walk(k, max(first, k.base), min(last, k.base + bsz))
            if r is not None:
                return r
        if j is None:
            return None
        return max(first, t.base + (a + j) * bsz) & ~(granule - 1)

    return walk(root, lo, hi)


def _table_leaves(t: Table, block: Sequence[int], decode: DecodeVec):
    """Arrays ``(iova, phys, prot)`` of the leaf PTEs of one table, in IOVA order."""
    nz = np.flatnonzero(t.ent)
    if t.kids:
        nz = nz[~np.isin(nz, np.fromiter(t.kids, dtype=np.int64, count=len(t.kids)))]
    if not len(nz):
        return None
    v = t.ent[nz]
    iov = np.uint64(t.base) + nz.astype(np.uint64) * np.uint64(block[t.lvl])
    phys, prot = decode(v, iov, t.lvl)
    return iov, phys, prot


def mapped_ranges(root: Table, block: Sequence[int], decode: DecodeVec,
                  merge: bool = True) -> list[tuple[int, int, int, int]]:
    """``[(iova, phys, size, prot), ...]`` in IOVA order: runs contiguous in both IOVA and physical
    space with equal prot (``merge=True``), or one tuple per leaf PTE."""
    parts = []
    for t in tables_in_order(root):
        r = _table_leaves(t, block, decode)
        if r is not None:
            parts.append((*r, np.full(len(r[0]), block[t.lvl], dtype=np.uint64)))
    if not parts:
        return []
    iov, phys, prot, size = (np.concatenate([p[k] for p in parts]) for k in range(4))
    order = np.argsort(iov, kind="stable")
    iov, phys, prot, size = iov[order], phys[order], prot[order], size[order]
    if not merge:
        return list(zip(iov.tolist(), phys.tolist(), size.tolist(), prot.tolist(), strict=True))
    brk = np.flatnonzero((iov[1:] != iov[:-1] + size[:-1]) | (phys[1:] != phys[:-1] + size[:-1])
                         | (prot[1:] != prot[:-1])) + 1
    starts = np.concatenate(([0], brk)).astype(np.int64)
    ends = np.concatenate((brk, [len(iov)])).astype(np.int64)
    csum = np.concatenate(([0], np.cumsum(size, dtype=np.uint64))).astype(np.uint64)
    runs = csum[ends] - csum[starts]
    return list(zip(iov[starts].tolist(), phys[starts].tolist(), runs.tolist(), prot[starts].tolist(),
                    strict=True))


def occupancy(root: Table, block: Sequence[int]) -> list[dict]:
    """Per populated top-level entry: ``index``, ``iova`` base, ``span``, ``leaf_ptes``, ``mapped``
    bytes, ``table_pages`` (for drawing)."""
    out = []
    span = block[0]
    for j in np.flatnonzero(root.ent).tolist():
        k = root.kids.get(j)
        if k is None:
            out.append({"index": j, "iova": j * span, "span": span, "leaf_ptes": 1, "mapped": span,
                        "table_pages": 0})
            continue
        leaves = mapped = tables = 0
        stack = [k]
        while stack:
            x = stack.pop()
            tables += 1
            nl = int(np.count_nonzero(x.ent)) - len(x.kids)
            leaves += nl
            mapped += nl * block[x.lvl]
            stack.extend(x.kids.values())
        out.append({"index": j, "iova": j * span, "span": span, "leaf_ptes": leaves, "mapped": mapped,
                    "table_pages": tables})
    return out
