"""Check a statement about ``dma_iova_try_alloc`` / ``dma_map_page`` / ``dma_iova_link`` by running it.

Mirrors the arithmetic of ``drivers/iommu/dma-iommu.c`` (``dma_iova_try_alloc``, ``__iommu_dma_map``,
``iommu_dma_alloc_iova``, ``dma_iova_link``/``__dma_iova_link``), ``drivers/iommu/iova.c``
(``alloc_iova_fast``, ``__alloc_and_insert_iova_range``), ``include/linux/iova.h`` (``iova_offset``,
``iova_align``, ``iova_size``) and ``drivers/iommu/iommu.c`` (``iommu_map_nosync``/``iommu_pgsize``),
but computes nothing itself: :func:`evaluate` runs the call on a fresh
:class:`~iovalab.kernel.dma_iommu.DmaDomain` with a fresh :class:`~iovalab.kernel.device.Device` and reads every number
from the simulator's state and event log. Each derivation step shows the kernel formula as text
with the simulator's numbers filled in, and says whether the formula, evaluated independently,
gives the same number (``agrees``); a disagreement would be a simulator bug and is printed loudly.

Two ways to ask (see :func:`check`)::

    check("try_alloc reserves 0x4000 and returns 0xffffc234", phys=0x1234, size=0x3000)
    check(api="try_alloc", granule=0x1000, phys=0x1234, size=0x3000,
          expect_iova_len=0x4000, expect_addr=0xffffc234)

"Reserved length" (``iova_len``) is what the caller's arithmetic asks ``iommu_dma_alloc_iova`` for,
``iova_align(size + iova_offset(phys))``; "tree footprint" (``tree_len``) is what the allocator
then holds in its rbtree: ``alloc_iova_fast`` rounds requests below 32 granules up to a power of
two. Both are reported.

No kernel analogue as a whole: this is the reviewer's notebook, not kernel code. It also holds the
small drivers of the review-lab notebook (``notebooks/09-reviewer-lab.ipynb``): :func:`hint_effect`,
:func:`iova_space_use`, :func:`path_counts`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
from iovalab.kernel.events import Event
from iovalab.kernel.iommu import GRANULE_PRESETS, IommuDomain, split_pages
from iovalab.kernel.iova import iova_rcache_roundup
from iovalab.kernel.units import (
    DMA_BIT_MASK, DMA_MAPPING_ERROR, EIO, ERRNO_NAMES, MAX_MAP_SIZE, DmaError, errname, hx, iova_align,
    iova_offset, parse_int, roundup_pow_of_two,
)

__all__ = [
    "APIS", "QUANTITIES", "PRESET_BY_GRANULE", "Step", "Outcome", "Clause", "ClaimResult",
    "fresh_domain", "make_device", "evaluate", "parse_statement", "check",
    "format_split", "parse_split", "parse_errno",
    "hint_effect", "SPACE_POLICIES", "iova_space_use", "unaligned_buffers", "aligned_pages", "path_counts",
    "indirect_calls", "dma_api_calls_by_func",
    "table",
]

#: API names :func:`check` accepts, and the kernel entry point each runs.
APIS = {"try_alloc": "dma_iova_try_alloc", "map_page": "dma_map_page",
        "link": "dma_iova_try_alloc + dma_iova_link"}
_API_ALIASES = {"try_alloc": "try_alloc", "dma_iova_try_alloc": "try_alloc", "alloc": "try_alloc",
                "map_page": "map_page", "dma_map_page": "map_page", "map": "map_page",
                "link": "link", "dma_iova_link": "link"}

#: Quantities a claim can be about (``expect_<name>=`` in the keyword form).
QUANTITIES = {
    "ok": "the call succeeded (try_alloc returned true / map_page no DMA_MAPPING_ERROR / link returned 0)",
    "addr": "try_alloc: state->addr; map_page: the returned DMA address; link: state->addr",
    "off": "iova_offset(phys): the sub-granule offset carried into the address",
    "iova_len": "reserved length: iova_align(size + off) bytes asked of iommu_dma_alloc_iova",
    "tree_len": "tree footprint: bytes the rbtree node holds (alloc_iova_fast rounds < 32 granules "
                "up to a power of two)",
    "iova_base": "the granule-aligned IOVA the allocator returned",
    "attempt": "which iommu_dma_alloc_iova attempt succeeded: 'below 4 GiB' or 'full width'",
    "map_iova": "map_page: IOVA mapped (= iova_base); link: IOVA dma_iova_link mapped",
    "map_len": "bytes mapped: map_page iova_len; link: iova_align(size + pad)",
    "map_phys": "physical address the mapping starts at (phys - offset in the granule)",
    "pages": "the iommu_pgsize split of the mapping: [(count, pgsize), ...]",
    "errno": "link: 0 or the -errno dma_iova_link returned",
    "inside": "link: the linked range lies inside the reserved IOVA (the kernel does not check)",
}

#: Default IOMMU preset for each granule (granule = ``1 << __ffs(pgsize_bitmap)``).
PRESET_BY_GRANULE = GRANULE_PRESETS  # the kernel model's map, under its old name

_SRC = {
    "init": "drivers/iommu/dma-iommu.c iommu_dma_init_domain",
    "offset": "include/linux/iova.h iova_offset",
    "align_try": "drivers/iommu/dma-iommu.c dma_iova_try_alloc (iova_align: include/linux/iova.h)",
    "align_map": "drivers/iommu/dma-iommu.c __iommu_dma_map (iova_align: include/linux/iova.h)",
    "limit": "drivers/iommu/dma-iommu.c iommu_dma_alloc_iova",
    "fast": "drivers/iommu/iova.c alloc_iova_fast",
    "tree": "drivers/iommu/iova.c __alloc_and_insert_iova_range",
    "dma_addr": "include/linux/iova.h iova_dma_addr; drivers/iommu/dma-iommu.c iommu_dma_alloc_iova",
    "state": "drivers/iommu/dma-iommu.c dma_iova_try_alloc",
    "ret_map": "drivers/iommu/dma-iommu.c __iommu_dma_map",
    "size": "include/linux/iova.h iova_size",
    "map": "drivers/iommu/iommu.c iommu_map_nosync / iommu_pgsize",
    "sync_map": "drivers/iommu/iommu.c iommu_sync_map",
    "link": "drivers/iommu/dma-iommu.c dma_iova_link / __dma_iova_link",
    "contract": "Documentation/core-api/dma-api.rst Part Ie (not checked by the kernel)",
}


# ------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One derivation step: ``text`` with the simulator's numbers, the kernel ``source``, and
    ``agrees``: True/False when a formula was evaluated independently and compared, None if not."""

    text: str
    source: str
    agrees: bool | None = None
    note: str = ""

    def line(self, n: int) -> str:
        mark = {True: "", None: "", False: "   !! formula disagrees with the simulator"}[self.agrees]
        extra = f" ({self.note})" if self.note else ""
        return f"{n:>3}. {self.text}{extra}   [{self.source}]{mark}"


def _cmp_step(steps: list[Step], text: str, sim: Any, formula: Any, source: str, note: str = "") -> Any:
    """Append a step whose right-hand side is the simulator's value ``sim``; ``formula`` is the same
    quantity computed from the kernel formula; they must agree."""
    steps.append(Step(text, source, sim == formula, note))
    return sim


@dataclass
class Outcome:
    """What one simulated call did: ``values`` (see :data:`QUANTITIES`), the derivation ``steps``,
    the ``events`` it logged, and a one-line ``setup`` description."""

    api: str
    params: dict
    values: dict
    steps: list[Step]
    events: list[Event]
    setup: str
    domain: DmaDomain | None = None

    @property
    def consistent(self) -> bool:
        """Every formula step agreed with the simulator."""
        return all(s.agrees is not False for s in self.steps)

    def derivation(self) -> str:
        return "\n".join([f"Derivation ({self.setup}):"] + [s.line(i + 1) for i, s in enumerate(self.steps)])


# ------------------------------------------------------------------------------------------------
def fresh_domain(granule: int | None = None, iommu: str | IommuDomain | None = None, *,
                 strict: bool = True, ncpus: int = 1, reserve_msi: bool = False) -> DmaDomain:
    """A fresh DMA domain: ``iommu`` preset (default by ``granule``: 4K ``intel-vtd``, 16K
    ``smmuv3-16k``, 64K ``smmuv3-64k``). ValueError when the two disagree."""
    if iommu is None:
        g = 0x1000 if granule is None else granule
        if g not in PRESET_BY_GRANULE:
            raise ValueError(f"granule {g!r} must be one of {', '.join(map(hex, PRESET_BY_GRANULE))} "
                             "(or pass iommu= a preset whose smallest page size is the granule)")
        iommu = PRESET_BY_GRANULE[g]
    dom = DmaDomain(iommu, strict=strict, ncpus=ncpus, reserve_msi=reserve_msi)
    if granule is not None and dom.granule != granule:
        raise ValueError(f"granule {granule:#x} does not match IOMMU {iommu!r}, whose granule "
                         f"(1 << __ffs(pgsize_bitmap)) is {dom.granule:#x}")
    return dom


def make_device(mask: int = DMA_BIT_MASK(64), pci: bool = True, forcedac: bool = False,
                bus_dma_limit: int = 0, **kw) -> Device:
    """A :class:`~iovalab.kernel.device.Device` with the given streaming/coherent mask."""
    return Device(name="0000:01:00.0", dma_mask=mask, is_pci=pci, forcedac=forcedac,
                  bus_dma_limit=bus_dma_limit, **kw)


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


def _pages_of(ev: Event) -> list[tuple[int, int]]:
    return [(c[3], c[2]) for c in ev.args.get("chunks", [])]


# ------------------------------------------------------------------------------------------------
def _alloc_steps(dom: DmaDomain, dev: Device, evs: list[Event], phys: int, size: int, mask: int,
                 steps: list[Step], values: dict, who: str, result: int | None) -> int | None:
    """Steps shared by try_alloc and map_page: offset, reserved length, the allocation attempts,
    rounding, the tree walk, base address and tree footprint. Returns the IOVA base or None."""
    g = dom.granule
    shift = g.bit_length() - 1
    bitmap = dom.iommu.pgsize_bitmap
    steps.append(Step(f"granule = 1 << __ffs(pgsize_bitmap {bitmap:#x}) = {dom.granule:#x}", _SRC["init"],
                      dom.granule == (bitmap & -bitmap)))
    attempts = [e for e in evs if e.func == "iommu_dma_alloc_iova" and e.kind == "step"]
    won = [a for a in attempts if a.result]
    text = f"off = iova_offset(phys) = {phys:#x} & {g - 1:#x} = "
    if result is not None and won:   # the simulator's offset: returned address - allocated IOVA
        off = _cmp_step(steps, text + f"{result - won[-1].result:#x}", result - won[-1].result,
                        iova_offset(g, phys), _SRC["offset"])
    else:
        off = iova_offset(g, phys)
        steps.append(Step(text + f"{off:#x}", _SRC["offset"], None, "formula only: the call failed"))
    values["off"] = off
    if not attempts:
        steps.append(Step(f"{who} did not reach iommu_dma_alloc_iova", _SRC["state"]))
        return None
    asked = attempts[0].args["size"]
    src = _SRC["align_try"] if who == "dma_iova_try_alloc" else _SRC["align_map"]
    values["iova_len"] = _cmp_step(
        steps, f"reserved length iova_len = iova_align(size + off) = ALIGN({size:#x} + {off:#x}, {g:#x}) "
        f"= {asked:#x}", asked, iova_align(g, size + off), src)
    # dma_limit and the attempts
    lim = dom.dma_limit_for(dev, mask)
    first = lim > DMA_BIT_MASK(32) and (dev.is_pci and not dev.forcedac)
    why = (f"dma_limit = min(mask {mask:#x}, bus_dma_limit {dev.bus_dma_limit:#x} if set, aperture_end "
           f"{dom.iommu.aperture_end:#x}) = {lim:#x}; ")
    why += ("> DMA_BIT_MASK(32) and PCI without forcedac: try below 4 GiB first" if first else
            "no 32-bit-first attempt (" + ("limit already <= 4 GiB" if lim <= DMA_BIT_MASK(32)
                                           else "not PCI" if not dev.is_pci else "forcedac") + ")")
    steps.append(Step(why, _SRC["limit"], first == (attempts[0].args["attempt"] == "below 4 GiB")))
    iova = 0
    for a in attempts:
        limit_pfn = a.args["limit"] >> shift
        fast = [e for e in evs if e.func == "alloc_iova_fast" and e.args.get("limit_pfn") == limit_pfn
                and e.seq < a.seq]
        n = asked >> shift
        rounded = iova_rcache_roundup(n)
        tree = [e for e in evs if e.kind == "tree_alloc" and e.seq < a.seq
                and e.args["limit_pfn"] == limit_pfn + 1]
        sim_rounded = tree[-1].args["size"] if tree else rounded
        _cmp_step(steps, f"attempt '{a.args['attempt']}': alloc_iova_fast(size {n} granule(s), limit_pfn "
                  f"{limit_pfn:#x}): " + (f"{n} < 32 -> roundup_pow_of_two({n}) = {sim_rounded}" if n < 32
                                          else f"{n} >= 32 granules: not rounded"),
                  sim_rounded, rounded, _SRC["fast"])
        if tree:
            pfn = tree[-1].result
            align = roundup_pow_of_two(rounded)
            formula = ((limit_pfn + 1 - rounded) & ~(align - 1)) if limit_pfn + 1 >= rounded else None
            _cmp_step(steps, f"top-down, size-aligned on a fresh tree: new_pfn = "
                      f"(limit_pfn + 1 - {rounded}) & ~{align - 1:#x} = ({limit_pfn + 1:#x} - {rounded:#x}) "
                      f"& ~{align - 1:#x} = {pfn:#x}",
                      pfn, formula, _SRC["tree"])
        elif fast and fast[-1].kind == "iova_allocs":
            steps.append(Step(f"served from the rcache: pfn {fast[-1].result:#x}", _SRC["fast"]))
        else:
            steps.append(Step(f"no free range of {rounded} granule(s) at or below pfn {limit_pfn:#x}: "
                              "the attempt fails", _SRC["tree"]))
        if a.result:
            iova = a.result
            values["attempt"] = a.args["attempt"]
            break
    if not iova:
        steps.append(Step("every attempt failed: iommu_dma_alloc_iova returns 0", _SRC["limit"]))
        return None
    pfn = iova >> shift
    _cmp_step(steps, f"iova = pfn << shift = {pfn:#x} << {shift} = {iova:#x}", iova, pfn << shift,
              _SRC["dma_addr"])
    values["iova_base"] = iova
    node = dom.iovad.find_iova(pfn)
    assert node is not None, f"no IOVA node holds pfn {pfn:#x}, just allocated"
    tl = (node.pfn_hi - node.pfn_lo + 1) << shift
    n = asked >> shift
    values["tree_len"] = _cmp_step(
        steps, f"tree footprint = iova_size(node) << shift = ({node.pfn_hi:#x} - {node.pfn_lo:#x} + 1) "
        f"<< {shift} = {tl:#x} "
        f"({'rounded up from ' + hex(asked) if tl != asked else 'same as the reserved length'})",
        tl, (iova_rcache_roundup(n)) << shift, _SRC["size"])
    return iova


def evaluate(api: str = "try_alloc", *, size: int, phys: int = 0, granule: int | None = None,
             mask: int = DMA_BIT_MASK(64), pci: bool = True, forcedac: bool = False,
             bus_dma_limit: int = 0, iommu: str | None = None, hint: int | None = None,
             offset: int = 0, link_size: int | None = None, keep_domain: bool = False) -> Outcome:
    """Run one call on a fresh domain and device; return its :class:`Outcome`.

    :param api: ``"try_alloc"`` (``dma_iova_try_alloc(dev, state, phys, size)``), ``"map_page"``
        (``dma_map_page`` of ``phys``/``size``) or ``"link"`` (``dma_iova_try_alloc(dev, state, hint,
        size)`` then ``dma_iova_link(dev, state, phys, offset, link_size)``; ``hint`` defaults to
        ``phys``, ``link_size`` to ``size - offset``).
    :param granule: IOVA granule (picks the IOMMU preset) or ``iommu=`` a preset name.
    :param mask: ``dma_get_mask(dev)``; ``pci``/``forcedac``/``bus_dma_limit``: the device.
    """
    name = _API_ALIASES.get(str(api).lower())
    if name is None:
        raise ValueError(f"api must be one of {', '.join(APIS)} (got {api!r})")
    api = name
    for name, v in (("size", size), ("phys", phys), ("offset", offset)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} {v!r} must be a non-negative int")
    if size == 0 and api != "try_alloc":
        raise ValueError("size must be > 0")
    if size > MAX_MAP_SIZE:
        raise ValueError(f"size {size:#x} is above {MAX_MAP_SIZE:#x} (64 GiB), the simulator's bound for one "
                         "mapping (MAX_MAP_SIZE)")
    dom = fresh_domain(granule, iommu)
    dev = make_device(mask, pci, forcedac, bus_dma_limit)
    g = dom.granule
    kind = "PCI" if pci else "platform"
    setup = (f"fresh {dom.iommu.pgsize_bitmap:#x}-bitmap domain, granule {g:#x}, strict; {kind} device, "
             f"mask {mask:#x}" + (", forcedac" if forcedac else "") +
             (f", bus_dma_limit {bus_dma_limit:#x}" if bus_dma_limit else ""))
    params = dict(api=api, size=size, phys=phys, granule=g, mask=mask, pci=pci, forcedac=forcedac,
                  bus_dma_limit=bus_dma_limit, hint=hint, offset=offset, link_size=link_size)
    mark = dom.log.mark()
    steps: list[Step] = []
    values: dict[str, Any] = {}
    if api == "map_page":
        addr = dom.dma_map_page(dev, phys, size)
        evs = dom.log.since(mark)
        values["ok"] = addr != DMA_MAPPING_ERROR
        iova = _alloc_steps(dom, dev, evs, phys, size, mask, steps, values, "dma_map_page",
                            addr if values["ok"] else None)
        if values["ok"]:
            assert iova is not None, "dma_map_page succeeded, so an IOVA was allocated"
            off = values["off"]
            maps = [e for e in evs if e.kind == "iommu_map_calls"]
            m = maps[-1]
            values.update(map_iova=m.args["iova"], map_phys=m.args["paddr"], map_len=m.args["size"],
                          pages=_pages_of(m))
            formula = [(c, p) for (_, _, p, c) in split_pages(dom.iommu.pgsize_bitmap, iova, phys - off,
                                                              values["iova_len"])]
            _cmp_step(steps, f"iommu_map(iova {iova:#x}, paddr phys - off = {phys - off:#x}, size "
                      f"{values['iova_len']:#x}): iommu_pgsize steps {format_split(values['pages'])}",
                      values["pages"], formula, _SRC["map"])
            syncs = [e for e in evs if e.kind == "iotlb_syncs"]
            if syncs:
                cb = syncs[-1].args.get("callback")
                flush = " (flushes)" if syncs[-1].args.get("flushed") else ""
                steps.append(Step(f"iommu_sync_map -> {cb or 'no iotlb_sync_map callback'}{flush}",
                                  _SRC["sync_map"]))
            values["addr"] = _cmp_step(steps, f"return iova + off = {iova:#x} + {off:#x} = {addr:#x}",
                                       addr, iova + off, _SRC["ret_map"])
        else:
            values["addr"] = DMA_MAPPING_ERROR
            steps.append(Step("dma_map_page returns DMA_MAPPING_ERROR", _SRC["ret_map"]))
    else:
        st = DmaIovaState()
        h = phys if (api == "try_alloc" or hint is None) else hint
        ok = dom.dma_iova_try_alloc(dev, st, h, size)
        evs = dom.log.since(mark)
        values["ok"] = ok
        if size == 0:
            steps.append(Step("WARN_ON_ONCE(!size): return false", _SRC["state"]))
            values["addr"] = 0
        else:
            iova = _alloc_steps(dom, dev, evs, h, size, mask, steps, values, "dma_iova_try_alloc",
                                st.addr if ok else None)
            if ok:
                values["addr"] = _cmp_step(
                    steps, f"state->addr = iova + off = {iova:#x} + {values['off']:#x} = {st.addr:#x}; "
                    f"state->__size = {size:#x}", st.addr, iova + values["off"], _SRC["state"])
            else:
                values["addr"] = 0
                steps.append(Step("return false (state zeroed: dma_use_iova() is false)", _SRC["state"]))
        if api == "link" and ok:
            _link_steps(dom, dev, st, phys, offset, size, link_size, steps, values)
        elif api == "link":
            values["errno"] = None
    out = Outcome(api, params, values, steps, dom.log.since(mark), setup, dom if keep_domain else None)
    return out


def _link_steps(dom: DmaDomain, dev: Device, st: DmaIovaState, phys: int, offset: int, size: int,
                link_size: int | None, steps: list[Step], values: dict) -> None:
    g = dom.granule
    lsize = link_size if link_size is not None else (size - offset if offset < size else size)
    pad = iova_offset(g, phys)
    mark = dom.log.mark()
    try:
        errno = dom.dma_iova_link(dev, st, phys, offset, lsize)
    except DmaError as e:
        errno = e.errno
    evs = dom.log.since(mark)
    values["errno"] = errno
    values["ok"] = errno == 0
    rule = bool(pad and offset > 0)
    _cmp_step(steps, f"dma_iova_link(phys {phys:#x}, offset {offset:#x}, size {lsize:#x}): pad = "
              f"iova_offset(phys) = {pad:#x}; pad && offset > 0 is {rule}"
              + (" -> WARN_ON_ONCE, -EIO" if rule else ""),
              errno == -EIO, rule, _SRC["link"])
    want_iova = st.addr + offset - pad
    want_len = iova_align(g, lsize + pad)
    maps = [e for e in evs if e.func == "iommu_map_nosync"]
    if rule or not maps:
        values.update(map_iova=None, map_len=0, map_phys=None, pages=[], inside=None)
        return
    m = maps[-1]
    a_iova, a_phys, a_len = m.args["iova"], m.args["paddr"], m.args["size"]
    _cmp_step(steps, f"__dma_iova_link: IOVA state->addr + offset - pad = {st.addr:#x} + {offset:#x} - "
              f"{pad:#x} = {a_iova:#x} -> phys - pad = {a_phys:#x}, length iova_align(size + pad) = "
              f"ALIGN({lsize:#x} + {pad:#x}, {g:#x}) = {a_len:#x}",
              (a_iova, a_phys, a_len), (want_iova, phys - pad, want_len), _SRC["link"])
    if m.kind == "pr_err":
        steps.append(Step(f"iommu_map_nosync: (iova | paddr | size) not {g:#x}-aligned (iova {a_iova:#x}) -> "
                          f"pr_err('unaligned: ...'), {errname(errno)}; nothing is mapped", _SRC["map"]))
        values.update(map_iova=None, map_len=0, map_phys=None, pages=[], inside=None)
        return
    values.update(map_iova=a_iova, map_phys=a_phys, map_len=a_len, pages=_pages_of(m))
    if values["pages"]:
        steps.append(Step(f"iommu_map_nosync: iommu_pgsize steps {format_split(values['pages'])} "
                          "(no iotlb_sync_map: that is dma_iova_sync's job)", _SRC["map"]))
    base, length = values["iova_base"], values["iova_len"]
    inside = base <= a_iova and a_iova + a_len <= base + length
    values["inside"] = inside
    where = "lies inside" if inside else "is OUTSIDE"
    steps.append(Step(f"linked [{a_iova:#x}, {a_iova + a_len:#x}) {where} the reserved "
                      f"[{base:#x}, {base + length:#x})", _SRC["contract"]))


# ------------------------------------------------------------------------------------------------
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
        if m and m.group(1).lower() in _API_ALIASES:
            a = _API_ALIASES[m.group(1).lower()]
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
        if s_api and api and _API_ALIASES.get(api) != s_api:
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


# ------------------------------------------------------------------------------------------------
# Drivers of the review-lab notebook.
_HEX_WORDS = ("phys", "size", "addr", "iova", "reserved", "tree", "pad", "len", "end", "base", "granule")


def table(rows: list[dict], columns: list[str] | None = None, hex_cols: set[str] | None = None) -> str:
    """Plain-text table of ``rows``: ints in hex for the columns in ``hex_cols`` (default: names
    containing phys, size, addr, iova, reserved, tree, pad, len, end, base, granule), decimal
    otherwise; floats rounded; booleans yes/no."""
    if not rows:
        return "(no rows)"
    cols = columns or list(rows[0])

    def is_hex(k: str) -> bool:
        return k in hex_cols if hex_cols is not None else any(w in k for w in _HEX_WORDS)

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


def hint_effect(phys: int, size: int, granule: int | None = None, **dev: Any) -> dict:
    """What passing the real ``phys`` vs 0 to ``dma_iova_try_alloc`` changes, for a buffer at
    ``phys`` of ``size`` bytes that is then linked with ``dma_iova_link(phys, offset 0, size)``
    (every number from two simulator runs on fresh domains).

    Keys: ``pad`` (``iova_offset(phys)``, the start pad ``dma_iova_link`` maps below
    ``state->addr``), ``reserved_phys``/``reserved_0`` (reserved length), ``tree_phys``/``tree_0``
    (tree footprint), ``addr_phys``/``addr_0`` (``state->addr``), ``link_phys``/``link_0`` (what
    ``dma_iova_link`` returned: 0 or -errno), ``link_iova_0`` (the IOVA it tried to map after the 0
    hint), ``same_reservation`` (both hints reserve the same length), ``safe_0`` (the 0 hint works:
    same reservation and the link succeeds inside it)."""
    a = evaluate("link", phys=phys, size=size, granule=granule, **dev)
    b = evaluate("link", phys=phys, size=size, granule=granule, hint=0, **dev)
    va, vb = a.values, b.values
    tried = [e for e in b.events if e.func == "iommu_map_nosync"]
    return dict(phys=phys, size=size, granule=a.params["granule"], pad=va["off"],
                reserved_phys=va["iova_len"], reserved_0=vb["iova_len"],
                tree_phys=va["tree_len"], tree_0=vb["tree_len"],
                addr_phys=va["addr"], addr_0=vb["addr"],
                link_phys=va["errno"], link_0=vb["errno"],
                link_iova_0=tried[-1].args["iova"] if tried else None,
                same_reservation=va["iova_len"] == vb["iova_len"],
                safe_0=vb["errno"] == 0 and bool(vb.get("inside")) and va["iova_len"] == vb["iova_len"])


def unaligned_buffers(n: int = 200, seed: int = 1, granule: int = 0x1000) -> list[tuple[int, int]]:
    """``n`` buffers ``(phys, size)`` with 512-byte-aligned start offsets inside the granule and sizes
    of 512 B .. 64 KiB in 512-byte steps (block-layer style: sector-aligned, not page-aligned)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        page = rng.randrange(0x100000, 0x400000) * granule
        out.append((page + rng.randrange(0, granule, 512), rng.randrange(1, 129) * 512))
    return out


def aligned_pages(n: int = 200, seed: int = 1, granule: int = 0x1000,
                  pages: int = 1) -> list[tuple[int, int]]:
    """``n`` page-aligned buffers of ``pages`` pages (HMM ``hmm_dma_map_pfn`` / VFIO mlx5 style)."""
    rng = random.Random(seed)
    return [(rng.randrange(0x100000, 0x400000) * granule, pages * granule) for _ in range(n)]


#: Policies of :func:`iova_space_use`: name -> (try_alloc hint, bytes asked, link phys, link size), as
#: functions of ``(phys, size, off, granule)``.
SPACE_POLICIES = {
    "offset": (lambda p, n, o, g: (p, n, p, n)),
    "zero": (lambda p, n, o, g: (0, n, p, n)),
    "zero, caller pads by off": (lambda p, n, o, g: (0, n + o, p - o, n + o)),
    "zero, worst-case pad": (lambda p, n, o, g: (0, n + g - 1, p - o, n + o)),
}


def iova_space_use(buffers: list[tuple[int, int]], granule: int | None = None, **dev: Any) -> list[dict]:
    """IOVA space held when every buffer gets its own ``dma_iova_try_alloc`` + one ``dma_iova_link``
    at offset 0 (all live at once in one fresh domain), under the :data:`SPACE_POLICIES`:

    * ``offset``: the merged API as meant: ``try_alloc(phys, size)``, ``link(phys, 0, size)``;
    * ``zero``: ``try_alloc(0, size)``, ``link(phys, 0, size)``: for an unaligned ``phys`` the link
      asks ``iommu_map_nosync`` for ``state->addr - pad``, which is not granule-aligned: -EINVAL;
    * ``zero, caller pads by off``: ``try_alloc(0, size + off)``, ``link(phys - off, 0, size + off)``: the
      caller does the offset arithmetic itself (and adds ``off`` to the DMA address it uses);
    * ``zero, worst-case pad``: a caller that does not know ``off`` when it reserves asks for
      ``size + granule - 1`` and links as the previous policy.

    Returns one row per policy: ``reserved`` (sum of reserved lengths), ``tree`` (sum of rbtree node
    sizes), ``linked`` and ``link_errors`` (with the errnos seen) — all read from the simulator."""
    rows = []
    for name, policy in SPACE_POLICIES.items():
        dom = fresh_domain(granule)
        g = dom.granule
        d = make_device(**dev)
        reserved = tree = linked = 0
        errors: dict[str, int] = {}
        for phys, size in buffers:
            hint, ask, lphys, lsize = policy(phys, size, iova_offset(g, phys), g)
            st = DmaIovaState()
            m = dom.log.mark()
            if not dom.dma_iova_try_alloc(d, st, hint, ask):
                raise RuntimeError(f"try_alloc of {ask:#x} failed: IOVA space exhausted")
            ev = [e for e in dom.log.since(m) if e.func == "iommu_dma_alloc_iova" and e.result]
            reserved += ev[-1].args["size"]
            node = dom.iovad.find_iova(ev[-1].result >> dom.iovad.shift)
            assert node is not None, "the IOVA just allocated is in the tree"
            tree += (node.pfn_hi - node.pfn_lo + 1) * g
            try:
                dom.dma_iova_link(d, st, lphys, 0, lsize)
                linked += 1
            except DmaError as e:
                errors[errname(e.errno)] = errors.get(errname(e.errno), 0) + 1
        rows.append(dict(policy=name, buffers=len(buffers), reserved=reserved, tree=tree, linked=linked,
                         link_errors=", ".join(f"{v} x {k}" for k, v in errors.items()) or "none"))
    return rows


def path_counts(requests: list[list[tuple[int, int]]], granule: int | None = None, preset: str = "x86-vtd",
                paths: tuple[str, ...] = ("page", "iova"), strict: bool = True) -> dict[str, dict]:
    """Run the same I/O requests (each a list of ``(phys, len)`` segments) through each mapping path on
    a fresh domain and an NVMe device; return per path the exact :class:`~iovalab.kernel.events.Counters`,
    the indirect driver calls read from the event log, and the modelled cost.

    Paths: ``page`` (``dma_map_page`` per segment, ``dma_unmap_page`` per segment, as the NVMe PRP
    path does for a non-coalesced request), ``sg`` (one ``dma_map_sg`` / ``dma_unmap_sg``), ``iova``
    (``dma_iova_try_alloc`` + ``dma_iova_link`` per segment + one ``dma_iova_sync`` + one
    ``dma_iova_destroy``, as ``blk_rq_dma_map_iter_start`` / ``blk_rq_dma_unmap`` do).
    Cost: :meth:`iovalab.lab.cost.CostModel.modelled_ns` for ``preset`` (MODELLED, not measured)."""
    from iovalab.lab.cost import load_cost_model
    from iovalab.kernel.dma_iommu import ScatterEntry
    model = load_cost_model()
    out: dict[str, dict] = {}
    for path in paths:
        dom = fresh_domain(granule, strict=strict)
        dev = Device.nvme()
        mark = dom.log.mark()
        for segs in requests:
            if path == "page":
                addrs = [dom.dma_map_page(dev, p, n) for p, n in segs]
                for a, (_, n) in zip(addrs, segs, strict=True):
                    dom.dma_unmap_page(dev, a, n)
            elif path == "sg":
                sgl = [ScatterEntry(p, n) for p, n in segs]
                dom.dma_map_sg(dev, sgl)
                dom.dma_unmap_sg(dev, sgl)
            elif path == "iova":
                total = sum(n for _, n in segs)
                st = DmaIovaState()
                if not dom.dma_iova_try_alloc(dev, st, segs[0][0], total):
                    raise RuntimeError("dma_iova_try_alloc failed")
                off = 0
                for p, n in segs:
                    dom.dma_iova_link(dev, st, p, off, n)
                    off += n
                dom.dma_iova_sync(dev, st, 0, total)
                dom.dma_iova_destroy(dev, st, total)
            else:
                raise ValueError(f"path {path!r} must be page, sg or iova")
        evs = dom.log.since(mark)
        c = dom.log.counters(since=mark)
        ind = indirect_calls(evs)
        cost = model.modelled_ns(c, preset)
        out[path] = dict(counters=c, indirect=ind, modelled=cost, requests=len(requests),
                         segments=sum(len(s) for s in requests), bytes=sum(n for s in requests for _, n in s))
    return out


def indirect_calls(evs: list[Event]) -> dict[str, int]:
    """Calls through ``struct iommu_domain_ops`` function pointers, counted from the event log:
    ``map_pages`` (one per ``iommu_pgsize`` step of each ``iommu_map_nosync``), ``unmap_pages`` (one
    per step of each ``__iommu_unmap``), ``iotlb_sync_map`` (drivers that have the callback),
    ``iotlb_sync`` and ``flush_iotlb_all``."""
    d = {"map_pages": 0, "unmap_pages": 0, "iotlb_sync_map": 0, "iotlb_sync": 0, "flush_iotlb_all": 0}
    for e in evs:
        if e.kind == "iommu_map_calls":
            d["map_pages"] += len(e.args.get("chunks", ()))
        elif e.kind == "iommu_unmap":
            d["unmap_pages"] += len(e.args.get("chunks", ()))
        elif e.kind == "iotlb_syncs" and e.args.get("callback"):
            d["iotlb_sync_map"] += 1
        elif e.kind == "iotlb_invalidations" and e.func == "iommu_iotlb_sync":
            d["iotlb_sync"] += 1
        elif e.kind == "iotlb_invalidations" and e.func == "iommu_flush_iotlb_all":
            d["flush_iotlb_all"] += 1
    d["total"] = sum(d.values())
    return d




def dma_api_calls_by_func(evs: list[Event]) -> dict[str, int]:
    """Driver-visible DMA API calls (``dma_api_calls`` events) by function name."""
    out: dict[str, int] = {}
    for e in evs:
        if e.kind == "dma_api_calls":
            out[e.func] = out.get(e.func, 0) + 1
    return out
