"""Check a statement about ``dma_iova_try_alloc`` / ``dma_map_page`` / ``dma_iova_link`` by running it.

A claim is read into clauses (:func:`parse_statement`: ``[api] VERB [OP] VALUE``, joined by ``and``),
the call is run on a fresh domain by :func:`iovalab.lab.derivation.evaluate` (which reads every
number from the simulator and derives it from the kernel formulas, citing each kernel function), and
each clause is judged against the simulator's value (:class:`ClaimResult`).

Two ways to ask (see :func:`check`)::

    check("try_alloc reserves 0x4000 and returns 0xffffc234", phys=0x1234, size=0x3000)
    check(api="try_alloc", granule=0x1000, phys=0x1234, size=0x3000,
          expect_iova_len=0x4000, expect_addr=0xffffc234)

No kernel analogue: this is the reviewer's notebook, not kernel code. The drivers of the review-lab
notebook (``notebooks/09-reviewer-lab.ipynb``) are :mod:`iovalab.lab.review`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from iovalab.kernel.units import errname, hx, parse_int
from iovalab.lab.derivation import API_ALIASES, QUANTITIES, Outcome, evaluate
from iovalab.lab.notation import format_split, parse_errno, parse_split

__all__ = ["Clause", "ClaimResult", "parse_statement", "check"]


_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_OP_WORDS = [("at most", "<="), ("at least", ">="), ("more than", ">"), ("less than", "<"),
             ("fewer than", "<"), ("exactly", "=="), ("==", "=="), ("!=", "!="), ("<=", "<="),
             (">=", ">="), ("=", "=="), ("<", "<"), (">", ">")]
_VERBS = [  # (regex at the clause start, quantity, fixed expected value or None)
    (r"succeeds?$", "ok", True), (r"fails?$", "ok", False),
    (r"fails?\s+with\b", "errno", None), (r"(?:returns?\s+)?errno\b", "errno", None),
    (r"reserves?\b", "iova_len", None),
    (r"(?:occupies|holds|uses)\b", "tree_len", None),
    (r"(?:has\s+)?(?:a\s+)?(?:tree\s+)?footprint(?:\s+of|\s+is)?\b", "tree_len", None),
    (r"maps\s+at\b", "map_iova", None), (r"maps\s+phys\b", "map_phys", None), (r"maps\b", "map_len", None),
    (r"(?:splits?\s+into|pages?\s*(?:are|is|=)?)\s*", "pages", None),
    (r"allocates?\s+below\s+4\s*gi?b\b", "attempt", "below 4 GiB"),
    (r"allocates?\s+(?:full[- ]width|above\s+4\s*gi?b)\b", "attempt", "full width"),
    (r"(?:starts?\s+at|base\s*(?:is)?)\b", "iova_base", None),
    (r"offset\s*(?:is)?\b", "off", None),
    (r"(?:links?\s+)?inside\b", "inside", True), (r"(?:links?\s+)?outside\b", "inside", False),
    (r"(?:returns?|gives?)\s+(?:true|false)\b", "ok", None),
    (r"(?:returns?|gives?)\b(?:\s+address)?", "addr", None),
]


@dataclass
class Clause:
    """One ``quantity op expected`` test and its outcome."""

    quantity: str
    op: str
    expected: Any
    actual: Any = None
    ok: bool = False
    text: str = ""

    def show(self, v: Any) -> str:
        if self.quantity == "pages":
            return format_split(v) if v is not None else "None"
        if self.quantity == "errno":
            return "None" if v is None else ("0" if v == 0 else errname(v))
        if isinstance(v, bool) or not isinstance(v, int):
            return str(v)
        return hx(v)

    def line(self, api: str) -> str:
        mark = "✓" if self.ok else "✗"
        want = self.text or f"{self.quantity} {self.op} {self.show(self.expected)}"
        return f"{mark} {api}: {want}   (simulator: {self.quantity} = {self.show(self.actual)})"


def _parse_value(quantity: str, text: str) -> Any:
    t = re.sub(r"\s*(bytes?|B)\s*$", "", text.strip().rstrip(".")).strip()
    if quantity == "pages":
        return parse_split(t)
    if quantity == "errno":
        return parse_errno(t)
    if quantity in ("ok", "inside"):
        if t.lower() in ("true", "yes", "1"):
            return True
        if t.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"{text!r} is not true/false")
    if quantity == "attempt":
        low = t.lower()
        if "below" in low or "32" in low:
            return "below 4 GiB"
        if "full" in low or "64" in low or "above" in low:
            return "full width"
        raise ValueError(f"{text!r} is not 'below 4 GiB' or 'full width'")
    return parse_int(t.split()[0] if t else t)


def _parse_kwargs(text: str) -> dict:
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{part.strip()!r}: write name=value inside the parentheses")
        k, v = (x.strip() for x in part.split("=", 1))
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
        elif k == "iommu":
            out[k] = v.strip("'\"")
        else:
            out[k] = parse_int(v)
    return out


def parse_statement(statement: str) -> tuple[str | None, dict, list[Clause]]:
    """Split ``"try_alloc(phys=0x1234, size=0x3000) reserves 0x4000 and returns 0xffffc234"`` into
    ``(api, params, clauses)``. Clauses are joined by ``and`` / ``;``; each is ``[api] VERB [OP]
    VALUE`` with VERB one of reserves, returns, occupies/footprint, maps [at], splits into, allocates
    below 4 GiB / full width, starts at, offset, succeeds, fails [with ERRNO], inside/outside and OP
    one of = == != < <= > >= "at most" "at least" "more than" "less than" "exactly"."""
    api = None
    params: dict = {}
    clauses = []
    for raw in re.split(r"\s+and\s+|;", statement.strip()):
        s = raw.strip()
        if not s:
            continue
        m = re.match(r"([A-Za-z_]+)\s*(\(([^)]*)\))?\s*", s)
        if m and m.group(1).lower() in API_ALIASES:
            a = API_ALIASES[m.group(1).lower()]
            if api is not None and a != api:
                raise ValueError(f"one API per statement: {api} and {a}")
            api = a
            if m.group(3):
                params.update(_parse_kwargs(m.group(3)))
            s = s[m.end():]
        for rx, quantity, fixed_value in _VERBS:
            vm = re.match(rx, s, re.IGNORECASE)
            if vm:
                q, fixed, rest = quantity, fixed_value, s[vm.end():].strip()
                break
        else:
            raise ValueError(f"cannot read the clause {raw.strip()!r}: expected a verb like reserves, "
                             "returns, occupies, maps, splits into, allocates below 4 GiB, fails with")
        if q == "ok" and fixed is None:   # "returns true/false"
            fixed = "true" in s.lower().split()
        op = "=="
        for word, sym in _OP_WORDS:
            if rest.lower().startswith(word):
                op, rest = sym, rest[len(word):].strip()
                break
        expected = fixed if fixed is not None else _parse_value(q, rest)
        clauses.append(Clause(q, op, expected, text=raw.strip()))
    if not clauses:
        raise ValueError(f"{statement!r}: nothing to check")
    return api, params, clauses


@dataclass
class ClaimResult:
    """The verdict: ``ok`` (every clause holds), the clauses, and the simulator :class:`Outcome`."""

    statement: str
    clauses: list[Clause]
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.clauses)

    def __bool__(self) -> bool:
        return self.ok

    def text(self) -> str:
        lines = [c.line(self.outcome.api) for c in self.clauses]
        lines.append(self.outcome.derivation())
        if not self.outcome.consistent:
            lines.append("!! a kernel formula disagrees with the simulator above: please report this")
        return "\n".join(lines)

    __str__ = text

    def __repr__(self) -> str:
        return f"<ClaimResult {'✓' if self.ok else '✗'} {self.statement!r}>"


_PARAMS = ("size", "phys", "granule", "mask", "pci", "forcedac", "bus_dma_limit", "iommu", "hint", "offset",
           "link_size")


def check(statement: str | None = None, *, api: str | None = None, quiet: bool = False,
          **kw: Any) -> ClaimResult:
    """Evaluate a claim about one call on a fresh domain; print ✓/✗ and the derivation.

    Text form: ``check("try_alloc reserves 0x4000 and returns 0xffffc234", phys=0x1234,
    size=0x3000)`` (parameters may also go in the statement: ``"try_alloc(phys=0x1234,
    size=0x3000) reserves 0x4000"``). Keyword form: ``check(api="try_alloc", phys=0x1234,
    size=0x3000, expect_iova_len=0x4000, expect_addr=0xffffc234)``; ``expect_<q>`` for every ``q``
    in :data:`QUANTITIES`. Parameters: ``size`` (required), ``phys`` (0), ``granule`` (0x1000) or
    ``iommu`` (preset), ``mask`` (DMA_BIT_MASK(64)), ``pci`` (True), ``forcedac`` (False),
    ``bus_dma_limit`` (0); for ``link``: ``hint`` (try_alloc's phys, default ``phys``),
    ``offset`` (0), ``link_size`` (``size - offset``). Returns a :class:`ClaimResult` (truthy when
    every clause holds); ``quiet=True`` skips the printing.
    """
    clauses: list[Clause] = []
    params: dict[str, Any] = {}
    if statement:
        s_api, s_params, clauses = parse_statement(statement)
        if s_api and api and API_ALIASES.get(api) != s_api:
            raise ValueError(f"api={api!r} but the statement is about {s_api}")
        api = api or s_api
        params.update(s_params)
    for k, v in kw.items():
        if k.startswith("expect_"):
            q = k[len("expect_"):]
            if q == "dma_addr":
                q = "addr"
            if q not in QUANTITIES:
                raise ValueError(f"{k}: unknown quantity {q!r}; one of {', '.join(QUANTITIES)}")
            if isinstance(v, str):
                v = _parse_value(q, v)
            clauses.append(Clause(q, "==", v))
        elif k in _PARAMS:
            if k in params and params[k] != v:
                raise ValueError(f"{k} is {params[k]!r} in the statement but {v!r} as a keyword")
            params[k] = v
        else:
            raise ValueError(f"unknown argument {k!r}: parameters are {', '.join(_PARAMS)}, "
                             "expectations expect_<quantity>")
    if not clauses:
        raise ValueError("nothing to check: give a statement or expect_<quantity>= keywords")
    if "size" not in params:
        raise ValueError("size= is required (bytes)")
    out = evaluate(api or "try_alloc", **params)
    for c in clauses:
        if c.quantity not in out.values:
            raise ValueError(f"{c.quantity!r} is not defined for {out.api} (have: {', '.join(out.values)})")
        c.actual = out.values[c.quantity]
        try:
            c.ok = c.actual is not None and _OPS[c.op](c.actual, c.expected)
        except TypeError:
            c.ok = False
    res = ClaimResult(statement or ", ".join(f"{c.quantity} == {c.show(c.expected)}" for c in clauses),
                      clauses, out)
    if not quiet:
        print(res.text())
    return res
