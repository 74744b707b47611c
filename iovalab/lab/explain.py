"""The numbers behind the lab book's widgets, as plain functions (no drawing, no widgets).

No kernel analogue: this module is the "show your working" layer between the model
(:mod:`iovalab.kernel.dma_iommu`, :mod:`iovalab.kernel.iova`) and the views (:mod:`iovalab.book.viz`,
:mod:`iovalab.book.widgets`). Every number a widget shows comes from a function here, so a plain cell can
produce it with the same call:

* :func:`footprint` - the IOVA arithmetic of ``__iommu_dma_map()`` / ``dma_iova_try_alloc()``
  (``drivers/iommu/dma-iommu.c``) and the size rounding of ``alloc_iova_fast()``
  (``drivers/iommu/iova.c``) for one buffer, checked against a fresh domain;
* :func:`mask_walk` - where successive IOVA allocations of one device land
  (``iommu_dma_alloc_iova()``: clamping, the 32-bit-first attempt and its permanent fallback);
* :func:`record` and :func:`state_at` - a recorded event log and the state it implies after ``k``
  events (IOVA ranges, page-table occupancy, IOTLB, counters), for the step-through players;
* :func:`compare_paths` and :func:`scaling` - counters and *modelled* time of the three mapping
  paths (``page``: ``dma_map_page`` per segment, ``sg``: one ``dma_map_sg``, ``iova``: the two-step
  API) on the same workload.

Layering: imports :mod:`iovalab.kernel.events`, :mod:`iovalab.kernel.units`, :mod:`iovalab.kernel.iova`,
:mod:`iovalab.kernel.device`, :mod:`iovalab.kernel.dma_iommu`, :mod:`iovalab.lab.cost` and (when present)
:mod:`iovalab.lab.scenarios`; never :mod:`iovalab.book.viz` or :mod:`iovalab.book.widgets`.
"""

from __future__ import annotations

from dataclasses import dataclass

from iovalab.kernel.iommu import GRANULE_PRESETS
from iovalab.kernel.iova import iova_rcache_bin, iova_rcache_roundup
from iovalab.kernel.units import (
    DMA_BIT_MASK, DMA_MAPPING_ERROR, MAX_MAP_SIZE, SZ_4K, SZ_64K, bits_per, hx, iova_align, iova_offset, is_power_of_2,
    roundup_pow_of_two,
)
from iovalab.lab.explain_steps import (
    DEMO_WORKLOADS, LEADING_EVENTS, P2P_WORKLOADS, PATH_TITLES, PATHS, PLAYER_PRESETS, PLAYER_VARIANTS,
    Recording, describe_event, describe_events, hexify, p2p_map_type, p2p_rows, p2p_summary, player_workloads,
    preset_dict, prot_names, record, recording_state, run_segments, step_bounds, workload_paths,
)
from iovalab.lab.step_state import StepState, Timeline, state_at

__all__ = [
    "GRANULE_PRESETS", "Footprint", "footprint",
    "MASK_BITS", "BUS_LIMIT_BITS", "MaskAlloc", "MaskWalk", "preset_granule", "mask_walk",
    "PATHS", "PATH_TITLES", "DEMO_WORKLOADS", "run_segments", "Recording", "record", "LEADING_EVENTS",
    "step_bounds", "PLAYER_VARIANTS", "PLAYER_PRESETS", "preset_dict", "player_workloads", "workload_paths",
    "P2P_WORKLOADS", "p2p_map_type", "p2p_summary", "p2p_rows", "prot_names",
    "StepState", "state_at", "Timeline", "recording_state", "describe_event", "describe_events", "hexify",
    "COST_PRESET", "path_totals", "compare_paths", "COMPARE_PRESETS", "compare_workloads", "compare_workload",
    "scattered_pages", "scaling", "with_cost_preset", "sensitivity_text",
]

#: the kernel version this module's texts and derivations describe (6.17; 7.3 differences:
#: iovalab.kernel.version.DIFFERENCES)
TEXT_KERNEL = "6.17"
#: and the flush-queue timer they count in whole milliseconds: CONFIG_HZ=1000 (10 ms = 10 jiffies)
TEXT_HZ = 1000



def _lines(rows) -> str:
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def _check_granule(granule: int) -> None:
    if not isinstance(granule, int) or not is_power_of_2(granule) or not SZ_4K <= granule <= SZ_64K:
        raise ValueError(f"granule {granule!r} must be a power of two from 0x1000 to 0x10000 "
                         "(init_iova_domain: granule <= PAGE_SIZE, power of two)")


@dataclass(frozen=True)
class Footprint:
    """The IOVA footprint of one buffer ``[phys, phys + size)`` mapped with IOVA granule ``granule``.

    Arithmetic of ``__iommu_dma_map()`` and ``dma_iova_try_alloc()`` (drivers/iommu/dma-iommu.c),
    ``alloc_iova_fast()`` and ``__alloc_and_insert_iova_range()`` (drivers/iommu/iova.c):

    * ``iova_offset = phys & (granule - 1)``: the start pad, kept in the DMA address;
    * ``iova_len = iova_align(size + iova_offset)``: bytes of IOVA asked for (and mapped by
      ``dma_map_page``);
    * ``tail = iova_len - iova_offset - size``: the unused bytes after the buffer;
    * ``granules = iova_len / granule``; ``node_granules``: what ``alloc_iova_fast`` really takes
      from the tree (rounded up to a power of two below 32 granules); the node starts on a multiple
      of ``roundup_pow_of_two(node_granules)`` granules (``align_granules``);
    * ``rcache_bin = order_base_2(node_granules)`` when below 6, else None (never cached).

    ``fresh_*`` fields are what a fresh strict domain with that granule returns for a 64-bit PCI
    device: the IOVA node, the ``dma_map_page`` DMA address (= ``state->addr`` of
    ``dma_iova_try_alloc``) and the PTEs ``dma_map_page`` writes (``try_alloc`` writes none).
    """

    granule: int
    phys: int
    size: int
    iova_offset: int
    iova_len: int
    tail: int
    granules: int
    node_granules: int
    align_granules: int
    rcache_bin: int | None
    phys_base: int
    fresh_iova: int = 0
    fresh_addr: int = 0
    fresh_node: tuple[int, int] = (0, 0)
    fresh_ptes: int = 0
    fresh_map_calls: int = 0
    fresh_pgsizes: tuple[tuple[int, int], ...] = ()
    preset: str = ""

    @property
    def node_bytes(self) -> int:
        """Bytes of IOVA the allocator node spans (``node_granules * granule``)."""
        return self.node_granules * self.granule

    @property
    def waste(self) -> int:
        """Bytes of the node that are allocated but never mapped (power-of-two rounding)."""
        return self.node_bytes - self.iova_len

    def describe(self) -> str:
        """:meth:`rows` as aligned text lines (for ``print`` in a cell)."""
        return _lines(self.rows())

    def rows(self) -> list[tuple[str, str]]:
        """``[(label, value), ...]`` in display order, numbers in hex (what the widget shows)."""
        g = self.granule
        rows = [
            ("granule", hx(g)),
            ("phys", hx(self.phys)),
            ("size", hx(self.size)),
            ("iova_offset(phys)  (start pad)", hx(self.iova_offset)),
            ("IOVA length = iova_align(size + off)", hx(self.iova_len)),
            ("tail pad", hx(self.tail)),
            ("granules mapped by dma_map_page", hx(self.granules)),
            ("node granules (alloc_iova_fast rounding)", hx(self.node_granules)),
            ("node alignment (granules)", hx(self.align_granules)),
            ("rcache bin", "none (>= 32 granules: never cached)" if self.rcache_bin is None
             else str(self.rcache_bin)),
        ]
        if self.preset:
            lo, hi = self.fresh_node
            rows += [
                (f"fresh {self.preset}: IOVA node", f"{hx(lo * g)}-{hx((hi + 1) * g - 1)}"),
                ("dma_map_page returns / state.addr", hx(self.fresh_addr)),
                ("PTEs written by dma_map_page", hx(self.fresh_ptes)),
                ("PTEs written by dma_iova_try_alloc", "0x0"),
            ]
        return rows


def footprint(granule: int, phys: int, size: int, *, fresh: bool = True) -> Footprint:
    """The IOVA footprint of ``[phys, phys + size)`` with IOVA granule ``granule`` (bytes).

    :param granule: IOVA granule, a power of two 0x1000..0x10000.
    :param phys: ``phys_addr_t`` start of the buffer.
    :param size: ``size_t`` bytes, > 0.
    :param fresh: also run ``dma_map_page`` and ``dma_iova_try_alloc`` on a fresh strict domain
        (preset :data:`GRANULE_PRESETS`) for a 64-bit PCI device and record what they return.

    Raises ``ValueError`` for a granule that is not a power of two in range, a negative ``phys`` or
    a ``size`` that is not positive.
    """
    _check_granule(granule)
    if not isinstance(phys, int) or phys < 0:
        raise ValueError(f"phys {phys!r} must be a non-negative int (phys_addr_t)")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size {size!r} must be > 0 (dma_map_page of 0 bytes is undefined)")
    if size > MAX_MAP_SIZE:
        raise ValueError(f"size {size:#x} is above {MAX_MAP_SIZE:#x} (64 GiB), the simulator's bound for one "
                         "mapping (MAX_MAP_SIZE)")
    off = iova_offset(granule, phys)
    length = iova_align(granule, size + off)
    n = length // granule
    node = iova_rcache_roundup(n)
    fp = Footprint(granule, phys, size, off, length, length - off - size, n, node, roundup_pow_of_two(node),
                   iova_rcache_bin(node), phys - off)
    if not fresh:
        return fp
    return _fresh(fp)


def _fresh(fp: Footprint) -> Footprint:
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState

    preset = GRANULE_PRESETS[fp.granule]
    dom = DmaDomain(preset, strict=True, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    dev = Device(name="0000:01:00.0")
    mark = dom.log.mark()
    addr = dom.dma_map_page(dev, fp.phys, fp.size)
    if addr == DMA_MAPPING_ERROR:
        why = "; ".join(str(e.args.get("rule") or e.args.get("msg") or e.args.get("message"))
                        for e in dom.log.since(mark) if e.kind in ("warn", "pr_err")) or "no IOVA"
        raise ValueError(f"dma_map_page of phys {fp.phys:#x} + {fp.size:#x} fails on {preset} "
                         f"(DMA_MAPPING_ERROR: {why})")
    evs = dom.log.since(mark)
    ptes = sum(e.count for e in evs if e.kind == "pte_writes")
    calls = sum(e.count for e in evs if e.kind == "iommu_map_calls")
    pgsizes = tuple((e.args.get("pgsize", 0), e.args.get("pgcount", 0)) for e in evs if e.kind == "pte_writes")
    base = addr - fp.iova_offset
    node = dom.iovad.find_iova(base // fp.granule)
    assert node is not None, f"dma_map_page's IOVA {base:#x} is not in the tree"
    # the two-step API on its own fresh domain reserves the same IOVA and writes nothing
    dom2 = DmaDomain(preset, strict=True, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    st = DmaIovaState()
    dom2.dma_iova_try_alloc(Device(name="0000:01:00.0"), st, fp.phys, fp.size)
    if st.addr != addr:  # pragma: no cover - would be a model bug
        raise AssertionError(f"try_alloc {st.addr:#x} != map_page {addr:#x} on fresh domains")
    return Footprint(**{**fp.__dict__, "fresh_iova": base, "fresh_addr": addr,
                        "fresh_node": (node.pfn_lo, node.pfn_hi), "fresh_ptes": ptes,
                        "fresh_map_calls": calls, "fresh_pgsizes": pgsizes, "preset": preset})



# --------------------------------------------------------------------------------------------
# Where allocations land: the DMA mask, the bus limit, the aperture and the 32-bit-first attempt

#: DMA mask widths the book offers (``DMA_BIT_MASK(n)``).
MASK_BITS = (32, 36, 39, 40, 44, 48, 52, 64)
#: Bus limits (``dev->bus_dma_limit``) the book offers, in address bits; 0 = none.
BUS_LIMIT_BITS = (0, 32, 36, 40, 44, 48)


@dataclass(frozen=True)
class MaskAlloc:
    """One ``dma_iova_try_alloc`` of a :func:`mask_walk`: ``iova`` is the IOVA base (0 = failed);
    ``attempt`` is ``"below 4 GiB"`` (the 32-bit-first try of ``iommu_dma_alloc_iova``),
    ``"full width"`` or ``"failed"``; ``source`` is ``"rcache"`` or ``"tree"``; ``notice`` the
    ``dev_notice`` printed during this call (``"Using 48-bit DMA addresses"``) or ``""``;
    ``why`` says why a failed call failed (``max32_alloc_size`` fast fail or no space)."""

    index: int
    iova: int
    size: int
    attempt: str
    source: str
    notice: str = ""
    why: str = ""


@dataclass(frozen=True)
class MaskWalk:
    """Result of :func:`mask_walk`: the device and domain set-up and every allocation in order.

    ``dma_limit`` is the effective limit ``iommu_dma_alloc_iova`` uses:
    ``min_not_zero(dma_mask, bus_dma_limit)`` clamped to the aperture end (``force_aperture``).
    """

    preset: str
    granule: int
    mask_bits: int
    pci: bool
    forcedac: bool
    bus_limit_bits: int
    dma_mask: int
    bus_dma_limit: int
    aperture_end: int
    dma_limit: int
    free_below_4g: int | None
    allocs: tuple[MaskAlloc, ...]

    @property
    def notices(self) -> list[str]:
        return [a.notice for a in self.allocs if a.notice]

    @property
    def failures(self) -> int:
        return sum(1 for a in self.allocs if not a.iova)

    def describe(self) -> str:
        """The set-up and one line per allocation, as text (for ``print`` in a cell)."""
        out = [_lines(self.rows()), ""]
        for a in self.allocs:
            where = hex(a.iova) if a.iova else f"failed ({a.why})"
            src = f" from the {a.source}" if a.source else ""
            note = f"   <- dev_notice: {a.notice}" if a.notice else ""
            out.append(f"#{a.index:<3} {where:<20} {a.attempt}{src}{note}")
        return "\n".join(out)

    def rows(self) -> list[tuple[str, str]]:
        """Set-up lines for display (hex)."""
        return [
            ("dma_mask", f"{hx(self.dma_mask)} (DMA_BIT_MASK({self.mask_bits}))"),
            ("bus_dma_limit", hx(self.bus_dma_limit) if self.bus_dma_limit else "0 (none)"),
            ("aperture_end", hx(self.aperture_end)),
            ("effective dma_limit", f"{hx(self.dma_limit)} ({bits_per(self.dma_limit)} bits)"),
            ("pci_32bit_workaround at probe", str(self.pci and not self.forcedac)),
            ("free IOVA below 4 GiB at start", "all" if self.free_below_4g is None else hx(self.free_below_4g)),
        ]


def preset_granule(preset: str) -> int:
    """The IOVA granule a DMA domain on IOMMU ``preset`` gets: ``1 << __ffs(pgsize_bitmap)``
    (``iommu_dma_init_domain``)."""
    from iovalab.kernel.iommu import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"IOMMU preset {preset!r} is not one of {sorted(PRESETS)}")
    bitmap = PRESETS[preset]["pgsize_bitmap"]
    return bitmap & -bitmap


def mask_walk(mask_bits: int = 64, *, pci: bool = True, forcedac: bool = False, bus_limit_bits: int = 0,
              count: int = 8, size: int = SZ_4K, free_below_4g: int | None = None,
              preset: str = "intel-vtd") -> MaskWalk:
    """Where ``count`` successive ``dma_iova_try_alloc(dev, state, 0, size)`` calls land.

    Models ``iommu_dma_alloc_iova()`` (drivers/iommu/dma-iommu.c) on a fresh strict domain: the
    limit is ``min_not_zero(dma_mask, bus_dma_limit)`` clamped to the aperture; a PCI device
    without ``iommu.forcedac=1`` first tries below 4 GiB (``alloc_iova_fast(..., DMA_BIT_MASK(32)
    >> shift, false)``) and, on the first failure, drops that try for good with
    ``dev_notice("Using %d-bit DMA addresses")``.

    :param mask_bits: ``DMA_BIT_MASK(mask_bits)`` as the streaming (and coherent) mask, 32..64.
    :param pci: ``dev_is_pci(dev)``; :param forcedac: the ``iommu.forcedac=1`` boot option.
    :param bus_limit_bits: ``bus_dma_limit = DMA_BIT_MASK(bus_limit_bits)``, 0 for none.
    :param count: number of allocations (1..1024); :param size: bytes each (> 0).
    :param free_below_4g: ``None`` (the whole 32-bit space is free) or the bytes left free just
        below 4 GiB: the rest of ``[granule, 4 GiB - free_below_4g)`` is reserved at domain set-up
        (``reserve_iova``, as ``iova_reserve_iommu_regions`` reserves windows), so the 32-bit space
        runs out after a few allocations.
    :param preset: IOMMU preset (:data:`iovalab.kernel.iommu.PRESETS`).
    """
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState

    if mask_bits not in range(32, 65):
        raise ValueError(f"mask_bits {mask_bits!r} must be 32..64 (DMA_BIT_MASK(n))")
    if bus_limit_bits and bus_limit_bits not in range(32, 65):
        raise ValueError(f"bus_limit_bits {bus_limit_bits!r} must be 0 (none) or 32..64")
    if not isinstance(count, int) or not 1 <= count <= 1024:
        raise ValueError(f"count {count!r} must be 1..1024")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size {size!r} must be > 0")
    reserve = []
    g = preset_granule(preset)
    if free_below_4g is not None:
        if not isinstance(free_below_4g, int) or free_below_4g < 0 or free_below_4g % g:
            raise ValueError(f"free_below_4g {free_below_4g!r} must be a multiple of the granule {g:#x}")
        top = (1 << 32) - free_below_4g
        if top > g:
            reserve.append((g, top - 1))
    dom = DmaDomain(preset, reserve=reserve, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    dev = Device(name="0000:01:00.0" if pci else "platform-dev", is_pci=pci, forcedac=forcedac,
                 dma_mask=DMA_BIT_MASK(mask_bits),
                 bus_dma_limit=DMA_BIT_MASK(bus_limit_bits) if bus_limit_bits else 0)
    limit = dom.dma_limit_for(dev, dev.dma_get_mask())
    allocs = []
    for i in range(count):
        mark = dom.log.mark()
        st = DmaIovaState()
        ok = dom.dma_iova_try_alloc(dev, st, 0, size)
        evs = dom.log.since(mark)
        notice = next((e.args["message"] for e in evs if e.kind == "dev_notice"), "")
        steps = [e for e in evs if e.func == "iommu_dma_alloc_iova" and e.kind == "step"]
        src = next((e.args.get("source", "") for e in evs
                    if e.func == "alloc_iova_fast" and e.kind == "iova_allocs"), "")
        why = ""
        if ok:
            attempt = steps[-1].args["attempt"] if steps else ""
        else:
            attempt = "failed"
            fails = [e.args.get("reason", "") for e in evs if e.kind == "alloc_fail"]
            why = fails[0] if fails else ""
        allocs.append(MaskAlloc(i, st.addr, size, attempt, src, notice, why))
    return MaskWalk(preset, g, mask_bits, pci, forcedac, bus_limit_bits, dev.dma_mask, dev.bus_dma_limit,
                    dom.iommu.aperture_end, limit, free_below_4g, tuple(allocs))



# --------------------------------------------------------------------------------------------
# Comparing the three paths: counters, modelled time, scaling

#: Cost-model preset (data/cost-model.csv) for each IOMMU preset.
COST_PRESET = {"intel-vtd": "x86-vtd", "intel-vtd-caching-mode": "x86-vtd", "amd-v1": "x86-vtd",
               "smmuv3-4k": "arm-smmuv3", "smmuv3-16k": "arm-smmuv3", "smmuv3-64k": "arm-smmuv3"}


def path_totals(segments, path: str, *, preset: str = "intel-vtd", strict: bool = True,
                repeat: int = 1, device=None) -> dict[str, int]:
    """Event tallies (``EventLog.totals``: every counter kind plus step kinds such as
    ``swiotlb_copy``) of mapping and unmapping ``segments`` ``repeat`` times with ``path`` on a
    fresh domain, without device DMA and without keeping events. The set-up is not counted."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    from iovalab.kernel.events import EventLog

    log = EventLog(keep=False)
    dom = DmaDomain(preset, strict=strict, log=log, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    dev = device if device is not None else Device.nvme()
    mark = log.mark()
    for _ in range(repeat):
        run_segments(dom, dev, segments, path, device_dma=False)
    base = mark[1]
    return {k: v - base.get(k, 0) for k, v in log.totals.items() if v - base.get(k, 0)}


def compare_paths(segments, *, preset: str = "intel-vtd", strict: bool = True, repeat: int = 1,
                  cost_preset: str | None = None, cost_model=None) -> dict[str, dict]:
    """Counters and modelled time of each path on the same workload.

    Returns ``{path: {"counters": Counters, "totals": dict, "modelled": ModelledBreakdown}}``;
    the breakdown is MODELLED (``data/cost-model.csv``), not measured.
    """
    from iovalab.lab.cost import load_cost_model
    from iovalab.kernel.events import Counters

    cm = cost_model if cost_model is not None else load_cost_model()
    cp = cost_preset or COST_PRESET.get(preset, "x86-vtd")
    out = {}
    for path in PATHS:
        totals = path_totals(segments, path, preset=preset, strict=strict, repeat=repeat)
        out[path] = {"counters": Counters.from_totals(totals), "totals": totals,
                     "modelled": cm.modelled_ns(totals, cp)}
    return out


#: Workloads the path comparison offers: scenario presets that run in about a second or less
#: (``data/scenarios``), then the demo workloads.
COMPARE_PRESETS = ("nvme-spec-example", "nvme-4k-read", "nvme-128k-scattered", "nvme-196k-read", "nvme-1m-direct",
                   "hmm-16mib-strided", "vfio-migration-4mib")


def compare_workloads() -> list[str]:
    """Names :func:`compare_workload` accepts in the widgets: existing :data:`COMPARE_PRESETS`, then
    ``demo:NAME`` for each :data:`DEMO_WORKLOADS` entry."""
    try:
        from iovalab.lab.scenarios import list_presets
        have = set(list_presets())
    except ImportError:  # pragma: no cover
        have = set()
    return [p for p in COMPARE_PRESETS if p in have] + [f"demo:{d}" for d in DEMO_WORKLOADS]


def compare_workload(workload: str, *, strict: bool = True, cost_preset: str | None = None,
                     cost_model=None) -> dict[str, dict]:
    """Counters and MODELLED time of every mapping path a workload supports.

    Scenario presets run through :func:`iovalab.lab.scenarios.run_scenario` (tallies only); ``demo:NAME``
    workloads through :func:`compare_paths`. Returns ``{path: {"counters": Counters, "modelled":
    ModelledBreakdown for cost_preset, "modelled_all": {cost preset: ModelledBreakdown}, "notes":
    [...]}}``. ``cost_preset`` defaults to the one matching the workload's IOMMU (x86-vtd for
    intel-vtd).
    """
    from iovalab.lab.cost import load_cost_model

    cm = cost_model if cost_model is not None else load_cost_model()
    out: dict[str, dict] = {}
    if workload.startswith("demo:") or workload in DEMO_WORKLOADS:
        name = workload.removeprefix("demo:")
        if name not in DEMO_WORKLOADS:
            raise ValueError(f"demo workload {name!r} is not one of {sorted(DEMO_WORKLOADS)}")
        segs = DEMO_WORKLOADS[name][1]
        cp = cost_preset or "x86-vtd"
        for path in PATHS:
            totals = path_totals(segs, path, strict=strict)
            from iovalab.kernel.events import Counters
            allm = {p: cm.modelled_ns(totals, p) for p in cm.presets}
            out[path] = {"counters": Counters.from_totals(totals), "modelled": allm[cp], "modelled_all": allm,
                         "notes": []}
        return out
    from iovalab.lab.scenarios import load_preset, run_scenario, valid_apis

    pre = load_preset(workload)
    cp = cost_preset or COST_PRESET.get(pre.get("iommu", "intel-vtd"), "x86-vtd")
    for path in PATHS:
        if path not in valid_apis(pre):
            continue
        res = run_scenario(workload, api=path, strict=strict, keep_events=False)
        allm = res.modelled or {p: cm.modelled_ns(res.log, p) for p in cm.presets}
        out[path] = {"counters": res.counters, "modelled": allm[cp], "modelled_all": allm,
                     "notes": list(res.notes)}
    return out


def scattered_pages(npages: int, page: int = SZ_4K, *, contiguous: bool = False,
                    base: int = 0x1_0000_0000) -> list[tuple[int, int]]:
    """``npages`` page segments: physically contiguous, or scattered (a one-page hole after each)."""
    if not isinstance(npages, int) or npages < 1:
        raise ValueError(f"npages {npages!r} must be >= 1")
    step = page if contiguous else 2 * page
    return [(base + i * step, page) for i in range(npages)]


def scaling(npages=(1, 2, 4, 8, 16, 32, 64, 128, 256), *, contiguous: bool = False,
            preset: str = "intel-vtd", strict: bool = True, cost_preset: str | None = None,
            cost_model=None) -> dict:
    """Counters and MODELLED ns of one request of ``n`` 4 KiB pages, for each ``n`` and path.

    Returns ``{"npages": [...], "cost_preset": ..., "contiguous": ..., "paths": {path: {counter:
    [per n], "modelled_ns": [per n, on cost_preset], "modelled_all": {cost preset: [per n]}}}}``.
    """
    from iovalab.lab.cost import load_cost_model
    from iovalab.kernel.event_schema import COUNTER_KINDS

    cm = cost_model if cost_model is not None else load_cost_model()
    cp = cost_preset or COST_PRESET.get(preset, "x86-vtd")
    if cp not in cm.presets:
        raise ValueError(f"unknown cost preset {cp!r}; known: {', '.join(cm.presets)}")
    ns = [int(n) for n in npages]
    paths: dict[str, dict] = {}
    for path in PATHS:
        series: dict = {k: [] for k in COUNTER_KINDS}
        series["modelled_all"] = {p: [] for p in cm.presets}
        for n in ns:
            t = path_totals(scattered_pages(n, contiguous=contiguous), path, preset=preset, strict=strict)
            for kk in COUNTER_KINDS:
                series[kk].append(t.get(kk, 0))
            for p in cm.presets:
                series["modelled_all"][p].append(cm.modelled_ns(t, p).total)
        series["modelled_ns"] = series["modelled_all"][cp]
        paths[path] = series
    return {"npages": ns, "paths": paths, "cost_preset": cp, "contiguous": contiguous}


def with_cost_preset(scale: dict, cost_preset: str) -> dict:
    """A :func:`scaling` result re-labelled for another cost preset (no re-run: the counts are the
    same, only ``modelled_ns`` changes)."""
    paths = {p: {**s, "modelled_ns": s["modelled_all"][cost_preset]} for p, s in scale["paths"].items()}
    return {**scale, "paths": paths, "cost_preset": cost_preset}


def sensitivity_text(sens, a: str, b: str, model=None) -> str:
    """:meth:`~iovalab.lab.cost.Sensitivity.describe` with run A and run B named, and the verdict the
    question "could one cost flip it?" asks for: which run is cheaper (modelled), and whether scaling
    any single cost by the factor reverses that (and whether that cost is ``assumed``)."""
    if sens.diff_ns == 0:
        cheaper = f"A ({a}) and B ({b}) cost the same (modelled)"
    else:
        cheap, dear = (a, b) if sens.diff_ns > 0 else (b, a)
        cheaper = f"{cheap} is cheaper than {dear} by {abs(sens.diff_ns):,.0f} ns (modelled)"
    flips = [s.operation for s in sens.per_operation.values() if s.flips_sign]

    def src(op: str) -> str:
        if model is None:
            return ""
        return " (assumed)" if model.source(op, sens.preset).strip().lower() == "assumed" else " (sourced)"
    if flips:
        verdict = (f"Verdict: yes, one cost can flip it: scaling {', '.join(op + src(op) for op in flips)} alone by "
                   f"x{sens.factor:g} or /{sens.factor:g} reverses which run is cheaper. Measure before concluding.")
    else:
        verdict = (f"Verdict: no single cost can flip it: no cost scaled alone by x{sens.factor:g} or "
                   f"/{sens.factor:g} makes the other run cheaper.")
    return "\n".join([f"A = {a}, B = {b}; D = modelled(B) - modelled(A)", sens.describe(), "", cheaper, verdict])
