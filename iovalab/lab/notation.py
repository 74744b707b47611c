"""How the lab writes and reads its numbers: ``iommu_pgsize`` splits (``"36x4K, 165x2M"``), errnos
(``-EIO``), and plain-text tables (hex for address-like columns).

No kernel analogue; errnos are named as ``include/uapi/asm-generic/errno-base.h`` names them. Used by
the claim checker (:mod:`iovalab.lab.claims`), the derivations (:mod:`iovalab.lab.derivation`), the
exercises and the book's tables.
"""

from __future__ import annotations

import re
from typing import Any

from iovalab.kernel.units import ERRNO_NAMES, parse_int

__all__ = ["HEX_WORDS", "format_split", "parse_split", "parse_errno", "table"]


def format_split(pages: list[tuple[int, int]]) -> str:
    """``[(36, 0x1000), (165, 0x200000)]`` -> ``"36x4K, 165x2M"``."""
    def sz(n: int) -> str:
        for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
            if n >= 1 << shift and n % (1 << shift) == 0:
                return f"{n >> shift}{unit}"
        return hex(n)
    return ", ".join(f"{c}x{sz(p)}" for c, p in pages)


def parse_split(text: str) -> list[tuple[int, int]]:
    """Parse ``"36x4K, 165x2M"`` (also ``36*4K``, ``36 x 0x1000``) into ``[(count, pgsize), ...]``."""
    out = []
    for item in str(text).replace(";", ",").split(","):
        item = item.strip().replace("×", "x").replace("*", "x")
        if not item:
            continue
        for m in re.finditer(r"x", item):
            left, right = item[:m.start()].strip(), item[m.end():].strip()
            try:
                out.append((parse_int(left), parse_int(right)))
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"{item!r} is not COUNTxPGSIZE (e.g. 3x4K, 2x2M)")
    if not out:
        raise ValueError(f"{text!r}: no COUNTxPGSIZE items")
    return out


def parse_errno(text: str | int) -> int:
    """``-EIO``/``EIO``/``-5``/``5``/``0``/``success`` -> ``-5``/``0`` (errnos are negative)."""
    if isinstance(text, int):
        return -abs(text)
    s = str(text).strip().upper().lstrip("-")
    if s in ("0", "SUCCESS", "OK", "NONE"):
        return 0
    for num, name in ERRNO_NAMES.items():
        if s == name:
            return -num
    try:
        return -abs(int(s, 0))
    except ValueError:
        raise ValueError(f"{text!r} is not an errno (write -EIO, EINVAL, -22 or 0)") from None


#: column names that hold addresses or sizes, shown in hex by :func:`table`
HEX_WORDS = ("phys", "size", "addr", "iova", "reserved", "tree", "pad", "len", "end", "base", "granule")


def table(rows: list[dict], columns: list[str] | None = None, hex_cols: set[str] | None = None) -> str:
    """Plain-text table of ``rows``: ints in hex for the columns in ``hex_cols`` (default: names
    containing phys, size, addr, iova, reserved, tree, pad, len, end, base, granule), decimal
    otherwise; floats rounded; booleans yes/no."""
    if not rows:
        return "(no rows)"
    cols = columns or list(rows[0])

    def is_hex(k: str) -> bool:
        return k in hex_cols if hex_cols is not None else any(w in k for w in HEX_WORDS)

    def cell(k: str, v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return {True: "yes", False: "no", None: "-"}[v]
        if isinstance(v, int):
            return hex(v) if is_hex(k) else f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.0f}" if v == int(v) or abs(v) >= 100 else f"{v:,.1f}"
        return str(v)
    body = [[cell(k, r.get(k)) for k in cols] for r in rows]
    w = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    out = ["  ".join(c.rjust(w[i]) for i, c in enumerate(cols)), "  ".join("-" * x for x in w)]
    out += ["  ".join(b[i].rjust(w[i]) for i in range(len(cols))) for b in body]
    return "\n".join(out)
