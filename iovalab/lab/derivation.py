"""Run one ``dma_iova_try_alloc`` / ``dma_map_page`` / ``dma_iova_link`` call and derive every number.

Mirrors the arithmetic of ``drivers/iommu/dma-iommu.c`` (``dma_iova_try_alloc``, ``__iommu_dma_map``,
``iommu_dma_alloc_iova``, ``dma_iova_link``/``__dma_iova_link``), ``drivers/iommu/iova.c``
(``alloc_iova_fast``, ``__alloc_and_insert_iova_range``), ``include/linux/iova.h`` (``iova_offset``,
``iova_align``, ``iova_size``) and ``drivers/iommu/iommu.c`` (``iommu_map_nosync``/``iommu_pgsize``),
but computes nothing itself: :func:`evaluate` runs the call on a fresh
:class:`~iovalab.kernel.dma_iommu.DmaDomain` with a fresh :class:`~iovalab.kernel.device.Device` and reads every number
from the simulator's state and event log. Each derivation step shows the kernel formula as text
with the simulator's numbers filled in, and says whether the formula, evaluated independently,
gives the same number (``agrees``); a disagreement would be a simulator bug and is printed loudly.

"Reserved length" (``iova_len``) is what the caller's arithmetic asks ``iommu_dma_alloc_iova`` for,
``iova_align(size + iova_offset(phys))``; "tree footprint" (``tree_len``) is what the allocator
then holds in its rbtree: ``alloc_iova_fast`` rounds requests below 32 granules up to a power of
two. Both are reported (:data:`QUANTITIES`).

No kernel analogue as a whole: this is the reviewer's notebook, not kernel code. Claims about an
:class:`Outcome` are read and judged by :mod:`iovalab.lab.claims`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
from iovalab.kernel.events import Event
from iovalab.kernel.iommu import GRANULE_PRESETS, IommuDomain, split_pages
from iovalab.kernel.iova import iova_rcache_roundup
from iovalab.kernel.units import (
    DMA_BIT_MASK, DMA_MAPPING_ERROR, EIO, MAX_MAP_SIZE, DmaError, errname, iova_align, iova_offset,
    roundup_pow_of_two,
)
from iovalab.lab.notation import format_split

#: the kernel version this module's texts and derivations describe (6.17; 7.3 differences:
#: iovalab.kernel.version.DIFFERENCES)
TEXT_KERNEL = "6.17"
#: and the flush-queue timer they count in whole milliseconds: CONFIG_HZ=1000 (10 ms = 10 jiffies)
TEXT_HZ = 1000

__all__ = ["APIS", "API_ALIASES", "QUANTITIES", "Step", "Outcome", "fresh_domain", "make_device", "evaluate"]

#: API names :func:`evaluate` (and :func:`iovalab.lab.claims.check`) accepts, and the kernel entry point each runs.
APIS = {"try_alloc": "dma_iova_try_alloc", "map_page": "dma_map_page",
        "link": "dma_iova_try_alloc + dma_iova_link"}
#: Every name :func:`evaluate` and a claim's statement accept for an API -> its :data:`APIS` key.
API_ALIASES = {"try_alloc": "try_alloc", "dma_iova_try_alloc": "try_alloc", "alloc": "try_alloc",
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
        if g not in GRANULE_PRESETS:
            raise ValueError(f"granule {g!r} must be one of {', '.join(map(hex, GRANULE_PRESETS))} "
                             "(or pass iommu= a preset whose smallest page size is the granule)")
        iommu = GRANULE_PRESETS[g]
    dom = DmaDomain(iommu, strict=strict, ncpus=ncpus, reserve_msi=reserve_msi, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    if granule is not None and dom.granule != granule:
        raise ValueError(f"granule {granule:#x} does not match IOMMU {iommu!r}, whose granule "
                         f"(1 << __ffs(pgsize_bitmap)) is {dom.granule:#x}")
    return dom


def make_device(mask: int = DMA_BIT_MASK(64), pci: bool = True, forcedac: bool = False,
                bus_dma_limit: int = 0, **kw) -> Device:
    """A :class:`~iovalab.kernel.device.Device` with the given streaming/coherent mask."""
    return Device(name="0000:01:00.0", dma_mask=mask, is_pci=pci, forcedac=forcedac,
                  bus_dma_limit=bus_dma_limit, **kw)


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
    name = API_ALIASES.get(str(api).lower())
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
