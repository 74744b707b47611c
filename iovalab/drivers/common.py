"""Shared machinery of the driver scenarios: the run context, steps, bookkeeping memory, dma-direct.

No single kernel file: this is the part of a driver that is the same for NVMe, HMM and VFIO - a
device, a DMA domain, the driver's own records of what it mapped, and (for ``api="direct"``) the
no-IOMMU DMA path of ``kernel/dma/direct.h``. Scenarios call only the DMA layer's public entry
points (:class:`~iovalab.kernel.dma_iommu.DmaDomain` methods ``dma_map_page``, ``dma_map_sg``, ``dma_iova_*``,
``dma_get_merge_boundary``, ``advance_time``); they never touch the IOVA allocator or page tables.

Bookkeeping memory: bytes of host memory the driver keeps *because of the mapping* for as long as the
mapping lives (``bookkeeping_bytes`` is the peak of the sum over live mappings). Sizes are for
x86-64 (LP64, ``dma_addr_t`` 64-bit with ``CONFIG_ARCH_DMA_ADDR_T_64BIT``):

=========================== ====== ===========================================================================
C object                    bytes  source / layout
=========================== ====== ===========================================================================
``struct scatterlist``      32     include/linux/scatterlist.h: ``unsigned long page_link`` 8, ``unsigned int
                                   offset`` 4, ``unsigned int length`` 4, ``dma_addr_t dma_address`` 8,
                                   ``unsigned int dma_length`` 4 (``CONFIG_NEED_SG_DMA_LENGTH``, selected on
                                   x86-64), ``unsigned int dma_flags`` 4 (``CONFIG_NEED_SG_DMA_FLAGS``). Without
                                   ``dma_flags`` the 4 bytes are tail padding (the header's own comment: "On 64-bit
                                   architectures there is a 4-byte padding in struct scatterlist"), so 32 either way.
``struct sg_table``         16     scatterlist.h: ``struct scatterlist *sgl`` 8, ``unsigned int nents`` 4,
                                   ``unsigned int orig_nents`` 4.
``struct sg_append_table``  32     scatterlist.h: ``struct sg_table sgt`` 16, ``struct scatterlist *prv`` 8,
                                   ``unsigned int total_nents`` 4 + 4 padding.
``struct dma_iova_state``   16     include/linux/dma-mapping.h: ``dma_addr_t addr`` 8, ``u64 __size`` 8.
``struct nvme_dma_vec``     16     drivers/nvme/host/pci.c (6.17): ``dma_addr_t addr`` 8, ``unsigned int len``
                                   4 + 4 padding.
``struct page *``           8      a pointer (``page_list`` arrays of mlx5 vfio).
``dma_addr_t``              8      ``CONFIG_ARCH_DMA_ADDR_T_64BIT`` (HMM ``dma_list``).
``unsigned long``           8      HMM ``pfn_list`` entry (include/linux/hmm-dma.h).
=========================== ====== ===========================================================================

What is *not* counted as bookkeeping: device-visible descriptor memory (NVMe PRP/SGL lists from
``dma_pool``; the mlx5 mkey MTT), which is reported in the scenario's device view instead, and fixed
per-device pools (mempool elements are sized for the worst case; the count here is what a mapping
actually uses).

The **direct** path (:class:`DirectDma`) stands for a device with no IOMMU in its way
(``dma_map_direct()``: no ``dma_map_ops``, no IOMMU DMA domain): ``dma_map_page`` is
``dma_direct_map_page`` = ``phys_to_dma(dev, phys)`` (x86-64: the physical address itself), no IOVA,
no page table, no IOTLB; ``dma_iova_try_alloc`` returns false (``!use_dma_iommu(dev)``);
``dma_get_merge_boundary`` is 0 (no ``get_merge_boundary`` op); ``dma_need_unmap`` is false for a
coherent device that never bounced (``dev->dma_skip_sync`` and no ``CONFIG_DMA_API_DEBUG``), so
drivers that ask it skip their unmaps. Its calls are recorded in the same event log (layer
``dma-direct``, kind ``dma_api_calls``) so that every run has one log.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DMA_BIDIRECTIONAL, DmaDomain, DmaIovaState
from iovalab.kernel.events import Counters, EventLog
from iovalab.kernel.p2pdma import p2pdma_from_params
from iovalab.kernel.version import behaves
from iovalab.kernel.units import DMA_MAPPING_ERROR, parse_int

__all__ = [
    "SIZEOF", "APIS", "Bookkeeping", "DirectDma", "ScenarioResult", "ScenarioContext", "Step",
    "make_device", "make_domain", "int_param", "as_context", "make_run",
]

#: Sizes (bytes, x86-64) of the C objects the scenarios count as bookkeeping; see the module table.
SIZEOF: dict[str, int] = {
    "struct scatterlist": 32,
    "struct sg_table": 16,
    "struct sg_append_table": 32,
    "struct dma_iova_state": 16,
    "struct nvme_dma_vec": 16,
    "struct page *": 8,
    "dma_addr_t": 8,
    "unsigned long": 8,
}

#: Every mapping path a scenario may be run under (each scenario accepts a subset).
APIS = ("page", "sg", "iova", "direct")

#: A step: a small dict describing one driver-level action (see :meth:`ScenarioContext.step`).
Step = dict


#: Largest value of each scenario parameter (the rest: ``PARAM_MAX``). Bounds on the work one preset can
#: ask for, so that no preset runs for more than a few seconds: 2^22 pages is 16 GiB of 4 KiB pages, the
#: largest HMM workload the book scales to (``iovalab bench``: about 3 s and 0.5 GB); 64 MiB is the largest
#: NVMe transfer with a 4 KiB MPS and MDTS 14 (NVMe 2.0 sec. 5.15.2.1);
#: physical bases (16 TiB) and strides (16 MiB) keep every address below 2^45, inside every modelled
#: format's output width (ARM LPAE: 48 bits).
PARAM_BOUNDS: dict[str, int] = {
    "npages": 1 << 22, "faults": 1 << 20, "passes": 64, "ios": 1 << 12, "run_pages": 1 << 18,
    "length": 1 << 26, "offset": 1 << 26, "entry_size": 1 << 30, "stride": 1 << 24, "base": 1 << 44,
    "mdts": 20, "seed": (1 << 32) - 1, "sgl_threshold": 1 << 32, "virt_boundary_mask": (1 << 32) - 1,
}
#: Largest value of a parameter not in :data:`PARAM_BOUNDS` (``u64``).
PARAM_MAX = (1 << 64) - 1


def int_param(params: dict, key: str, default: int | None = None) -> int:
    """``params[key]`` as an int (``"0x1000"``, ``"4K"`` and ints accepted) within ``0..`` its bound
    (:data:`PARAM_BOUNDS`); ValueError names the key and the rule."""
    if not isinstance(params, dict):
        raise ValueError(f"scenario parameters holding {key!r} must be an object, not {params!r}")
    if key not in params:
        if default is None:
            raise ValueError(f"scenario parameter {key!r} is required")
        return default
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"scenario parameter {key!r}: {v!r} is not a number (use an int, 0x-hex or 4K/2M/1G)")
    try:
        n = parse_int(v)
    except ValueError as e:
        raise ValueError(f"scenario parameter {key!r}: {e}") from None
    hi = PARAM_BOUNDS.get(key, PARAM_MAX)
    if not 0 <= n <= hi:
        raise ValueError(f"scenario parameter {key!r}: {n:#x} is outside 0..{hi:#x}")
    return n


# --------------------------------------------------------------------------------------------
class Bookkeeping:
    """Host memory a driver keeps per live mapping: current and peak bytes, with a breakdown.

    ``add(what, nbytes)`` when the driver allocates the record, ``remove(what, nbytes)`` when it frees
    it. ``peak`` is the largest total seen; ``peak_breakdown`` the per-item bytes at that moment.
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.items: dict[str, int] = {}
        self.peak_breakdown: dict[str, int] = {}

    def add(self, what: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"bookkeeping {what!r}: {nbytes} bytes must be >= 0")
        if not nbytes:
            return
        self.items[what] = self.items.get(what, 0) + nbytes
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
            self.peak_breakdown = {k: v for k, v in self.items.items() if v}

    def remove(self, what: str, nbytes: int) -> None:
        if not nbytes:
            return
        have = self.items.get(what, 0)
        if nbytes > have:
            raise ValueError(f"bookkeeping {what!r}: freeing {nbytes} bytes but only {have} are held")
        self.items[what] = have - nbytes
        self.current -= nbytes


# --------------------------------------------------------------------------------------------
class DirectDma:
    """The dma-direct path of a device with no IOMMU (``kernel/dma/direct.h``, ``kernel/dma/mapping.c``).

    Model limits: no swiotlb (the device can reach every physical address it is given: a buffer above
    its mask is refused with a ``warn`` event and ``DMA_MAPPING_ERROR`` instead of being bounced);
    ``phys_to_dma`` is the identity (x86-64, no ``dma_range_map``).
    """

    def __init__(self, log: EventLog):
        self.log = log

    def _api(self, func: str, dev: Device, cpu: int, result, **args) -> None:
        self.log.emit("dma-direct", func, "dma_api_calls", result, cpu=cpu, dev=dev.name, **args)

    def dma_get_merge_boundary(self, dev: Device) -> int:
        """``dma_get_merge_boundary(dev)`` (kernel/dma/mapping.c): 0 without a ``get_merge_boundary`` op."""
        return 0

    def dma_need_unmap(self, dev: Device) -> bool:
        """``dma_need_unmap(dev)`` (kernel/dma/mapping.c): for dma-direct, ``!dev->dma_skip_sync``
        (``CONFIG_DMA_API_DEBUG`` taken as off)."""
        return not dev.dma_skip_sync

    def dma_iova_try_alloc(self, dev: Device, state: DmaIovaState, phys: int, size: int, cpu: int = 0) -> bool:
        """``dma_iova_try_alloc()`` (drivers/iommu/dma-iommu.c): ``memset(state, 0)``, then false
        because ``!use_dma_iommu(dev)`` (the ``!CONFIG_IOMMU_DMA`` stub in dma-mapping.h is false too)."""
        state.addr = 0
        state.size_field = 0
        self._api("dma_iova_try_alloc", dev, cpu, False, phys=phys, size=size, reason="no IOMMU (dma-direct)")
        return False

    def dma_map_page(self, dev: Device, phys: int, size: int, dir: int = DMA_BIDIRECTIONAL, attrs: int = 0,
                     cpu: int = 0) -> int:
        """``dma_map_page_attrs()`` -> ``dma_direct_map_page()``: ``phys_to_dma(dev, phys)``."""
        if size <= 0:
            raise ValueError(f"dma_map_page: size {size} must be > 0")
        if phys + size - 1 > dev.dma_get_mask():
            self.log.warn("dma-direct", "dma_direct_map_page", 0,
                          f"buffer {phys:#x}+{size:#x} is above the DMA mask {dev.dma_get_mask():#x}: "
                          "the kernel would bounce it through swiotlb (not modelled)", cpu=cpu)
            addr = DMA_MAPPING_ERROR
        else:
            addr = phys
        self._api("dma_map_page", dev, cpu, addr, dir=dir, phys=phys, size=size, attrs=attrs)
        return addr

    def dma_unmap_page(self, dev: Device, dma_addr: int, size: int, dir: int = DMA_BIDIRECTIONAL,
                       attrs: int = 0, cpu: int = 0) -> None:
        """``dma_unmap_page_attrs()`` -> ``dma_direct_unmap_page()``: nothing to undo for a coherent
        device that did not bounce (only the call and its trace event)."""
        self._api("dma_unmap_page", dev, cpu, None, dir=dir, dma_addr=dma_addr, size=size, attrs=attrs)


# --------------------------------------------------------------------------------------------
_DEVICE_PRESETS = ("nvme", "thunderbolt_nvme", "mlx5", "legacy_32bit", "plain")


def make_device(spec: str | dict | Device | None, default: str = "nvme") -> Device:
    """A :class:`~iovalab.kernel.device.Device` from a preset name (``"nvme"``, ``"mlx5"``, ``"thunderbolt_nvme"``,
    ``"legacy_32bit"``, ``"plain"``) or ``{"preset": name, <Device field>: value, ...}``."""
    if isinstance(spec, Device):
        return spec
    if spec is None:
        spec = default
    kw: dict[str, Any] = {}
    if isinstance(spec, dict):
        kw = dict(spec)
        spec = kw.pop("preset", default)
    if not isinstance(spec, str):
        raise ValueError(f"device {spec!r} must be a device preset name or an object with \"preset\"")
    name = spec.replace("-", "_")
    if name not in _DEVICE_PRESETS:
        raise ValueError(f"device preset {spec!r} is not one of {', '.join(_DEVICE_PRESETS)}")
    for k in ("dma_mask", "coherent_dma_mask", "bus_dma_limit", "min_align_mask", "seg_boundary",
              "max_seg_size"):
        if k in kw and isinstance(kw[k], str):
            kw[k] = int_param(kw, k)
    try:
        if name == "plain":
            return Device(**kw)
        return getattr(Device, name)(**kw)
    except TypeError as e:   # an unknown field name
        raise ValueError(f"device {spec!r}: {e}") from None


def make_domain(spec: str | dict | None, *, strict: bool, keep_events: bool, ncpus: int = 1) -> DmaDomain:
    """A :class:`~iovalab.kernel.dma_iommu.DmaDomain` from an IOMMU preset name or ``{"preset": name, "reserve_msi":
    bool, "ncpus": int, "single_queue": bool, "page_size": int, "kernel": "6.17"|"7.3", "hz": int}``; a fresh
    :class:`~iovalab.kernel.events.EventLog`."""
    kw: dict[str, Any] = {}
    if spec is None:
        spec = "intel-vtd"
    if isinstance(spec, dict):
        kw = dict(spec)
        spec = kw.pop("preset", "intel-vtd")
    if not isinstance(spec, str):
        raise ValueError(f"iommu {spec!r} must be an IOMMU preset name or an object with \"preset\"")
    allowed = {"reserve_msi", "ncpus", "single_queue", "dma_debug", "dma_debug_version", "hz", "check_contract",
               "page_size", "follow_kernel", "kernel"}
    bad = set(kw) - allowed
    if bad:
        raise ValueError(f"iommu options {sorted(bad)} are not among {sorted(allowed)}")
    for flag in ("reserve_msi", "single_queue", "dma_debug", "check_contract", "follow_kernel"):
        if flag in kw and not isinstance(kw[flag], bool):
            raise ValueError(f"iommu option {flag!r}: {kw[flag]!r} must be true or false")
    ncpus = kw.pop("ncpus", ncpus)
    if isinstance(ncpus, bool) or not isinstance(ncpus, int) or not 1 <= ncpus <= 64:
        raise ValueError(f"iommu option 'ncpus': {ncpus!r} must be an int in 1..64")
    return DmaDomain(spec, strict=strict, ncpus=ncpus, log=EventLog(keep=keep_events), **kw)


# --------------------------------------------------------------------------------------------
@dataclass
class ScenarioResult:
    """What one scenario run produced.

    ``counters``: :class:`~iovalab.kernel.events.Counters` of the whole run (from the one event log);
    ``bookkeeping_bytes``: peak host bytes of driver records (``bookkeeping``: the breakdown at the
    peak); ``device_view``: what the device is given (PRP/SGL per NVMe command, DMA addresses per HMM
    index, mlx5 MTT entries); ``domain``: the :class:`~iovalab.kernel.dma_iommu.DmaDomain` (``None`` for
    ``api="direct"``, which has no IOMMU); ``log``: the event log; ``modelled``: ``{cost preset:
    ModelledBreakdown}`` - MODELLED ns from data/cost-model.csv, not measured; ``notes``: what the
    reader should know about this run (kernel behaviours, model limits); ``extra``: scenario-specific
    numbers (e.g. NVMe descriptor bytes, the VFIO type1 counting note).
    """

    preset: dict
    api: str
    strict: bool
    counters: Counters
    bookkeeping_bytes: int
    bookkeeping: dict[str, int]
    device_view: Any
    domain: DmaDomain | None
    log: EventLog
    modelled: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    steps: int = 0

    @property
    def name(self) -> str:
        return self.preset.get("name", "<unnamed>")

    def summary(self) -> dict:
        """JSON-friendly dict: the counters, ``bookkeeping_bytes`` and ``modelled_ns`` (per cost preset)."""
        out: dict[str, Any] = {"preset": self.name, "scenario": self.preset.get("scenario"), "api": self.api,
                               "strict": self.strict}
        out.update(self.counters.as_dict())
        out["bookkeeping_bytes"] = self.bookkeeping_bytes
        out["modelled_ns"] = {p: round(b["total"], 3) for p, b in self.modelled.items()}
        return out


class ScenarioContext:
    """One run: the domain (or dma-direct), the device, the log, bookkeeping, steps.

    ``dma`` is what the driver calls: the :class:`~iovalab.kernel.dma_iommu.DmaDomain` or, for ``api="direct"``, a
    :class:`DirectDma`. ``fine``: yield a step after every driver-level action (players) or only per
    phase (``run``, large workloads).
    """

    def __init__(self, preset: dict, api: str, *, strict: bool = True, keep_events: bool = True,
                 fine: bool = True, default_device: str = "nvme"):
        self.preset = preset
        self.params = dict(preset.get("parameters", {}))
        self.api = api
        self.strict = strict
        self.fine = fine
        self.dev = make_device(preset.get("device"), default_device)
        self.direct = api == "direct"
        if self.direct:
            iommu = preset.get("iommu")
            opts = sorted({"dma_debug", "dma_debug_version", "hz", "check_contract", "follow_kernel"}
                          & set(iommu or {})) \
                if isinstance(iommu, dict) else []
            if opts:
                raise ValueError(f"options {opts} need an IOMMU DMA domain, but api='direct' has none "
                                 "(the dma-debug model hooks the dma-iommu.c paths; dma-direct is not modelled)")
            self.domain: DmaDomain | None = None
            self.log = EventLog(keep=keep_events)
            self.dma: Any = DirectDma(self.log)
        else:
            self.domain = make_domain(preset.get("iommu"), strict=strict, keep_events=keep_events)
            self.log = self.domain.log
            self.dma = self.domain
        #: the P2P pages of the machine (``p2p`` parameter; :mod:`iovalab.kernel.p2pdma`, modelled from 7.3.4)
        self.p2pdma = p2pdma_from_params(self.params.get("p2p"))
        if self.p2pdma and self.domain is not None and not behaves(self.domain.kernel, "dma_map_phys"):
            raise ValueError(f"scenario parameter 'p2p' needs kernel '7.3' (peer-to-peer DMA is modelled from "
                             f"Linux 7.3.4 drivers/pci/p2pdma.c), not {self.domain.kernel!r}")
        if self.p2pdma and self.domain is not None:   # what is_pci_p2pdma_page() answers in iommu_dma_map_sg
            self.domain.p2pdma = self.p2pdma
        self.bk = Bookkeeping()
        self.notes: list[str] = []
        self.extra: dict = {}
        self.device_view: Any = None
        self.nsteps = 0
        self._mark: tuple[int, dict[str, int]] = (0, {})   # the first step also carries the domain set-up
        self._driver = "setup"

    # -- DMA-layer questions a driver asks --------------------------------------------------------
    def dma_need_unmap(self) -> bool:
        """``dma_need_unmap(dev)``: true behind an IOMMU (``!dma_map_direct``), else dma-direct's answer."""
        return self.dma.dma_need_unmap(self.dev) if self.direct else True

    def dma_get_merge_boundary(self) -> int:
        return self.dma.dma_get_merge_boundary(self.dev)

    # -- steps ---------------------------------------------------------------------------------
    def begin(self, driver: str, calls: int = 1, **args: Any) -> None:
        """Record the start of a driver-level action (a ``driver`` event standing for ``calls`` calls of
        ``driver``, so per-phase and per-call runs tally the same) and name the next step."""
        self._driver = driver
        self.log.emit("driver", driver, "driver", None, count=calls, **args)

    def step(self, what: str, **info: Any) -> Step:
        """The step after the current driver action: events and counter deltas since the last step."""
        mark = self.log.mark()
        ev = self.log.events[self._mark[0]:mark[0]] if self.log.keep else []
        delta = Counters.from_totals(mark[1]) - Counters.from_totals(self._mark[1])
        self._mark = mark
        self.nsteps += 1
        st: Step = {"i": self.nsteps, "scenario": self.preset.get("scenario"), "api": self.api,
                    "driver": self._driver, "what": what, "events": ev, "counters": delta}
        st.update(info)
        return st

    def finish(self) -> ScenarioResult:
        """The run's result: counts, bookkeeping and the device view (``modelled`` is left empty: the lab
        layer, :func:`iovalab.lab.scenarios.run_scenario`, attaches modelled time)."""
        return ScenarioResult(
            preset=copy.deepcopy(self.preset), api=self.api, strict=self.strict, counters=self.log.counters(),
            bookkeeping_bytes=self.bk.peak, bookkeeping=dict(self.bk.peak_breakdown),
            device_view=self.device_view, domain=self.domain, log=self.log,
            notes=list(self.notes), extra=self.extra, steps=self.nsteps)

    def begin_done(self) -> None:
        """Name the final step of a run (``driver == "done"``)."""
        self._driver = "done"

    def settle(self) -> Generator[Step, None, None]:
        """Lazy domains: let the flush-queue timer fire (``advance_time``) so deferred IOVA frees and
        the ``flush_iotlb_all`` are in the counters; nothing in strict mode."""
        if self.domain is None or self.strict or not self.domain.fq_pending():
            return
        d = self.domain
        self.begin("fq_flush_timeout", pending=d.fq_pending())
        wait = max(0.0, d.fq_timer_deadline - d.now_ms)
        d.advance_time(wait)
        yield self.step(f"{wait:g} ms later (msecs_to_jiffies({d.fq_timeout}) at HZ={d.hz}, on a tick) the "
                        "flush-queue timer fires: one flush_iotlb_all, then the queued IOVAs are freed")


def as_context(obj: ScenarioContext | str | dict, api: str, scenario: str, default_device: str, *,
               strict: bool = True, keep_events: bool = True, fine: bool = True) -> ScenarioContext:
    """``obj`` if it is already a :class:`ScenarioContext`, else a new one for the preset ``obj`` (a name
    from data/scenarios or a dict), which must be a ``scenario`` preset."""
    if isinstance(obj, ScenarioContext):
        return obj
    if isinstance(obj, str):
        from iovalab.drivers import load_preset  # the package is loaded by the time a scenario runs
        obj = load_preset(obj)
    if not isinstance(obj, dict) or obj.get("scenario") != scenario:
        got = obj.get("scenario") if isinstance(obj, dict) else obj
        raise ValueError(f"expected a {scenario!r} preset, got {got!r}")
    return ScenarioContext(obj, api, strict=strict, keep_events=keep_events, fine=fine,
                           default_device=default_device)


def make_run(scenario: str, default_device: str, iter_steps):
    """The ``run()`` of a scenario module: :func:`iter_steps` (per-phase steps) to completion."""

    def run(ctx: ScenarioContext | str | dict, api: str = "iova", *,
            strict: bool = True, keep_events: bool = True) -> ScenarioResult:
        ctx = as_context(ctx, api, scenario, default_device, strict=strict, keep_events=keep_events, fine=False)
        for _ in iter_steps(ctx):
            pass
        return ctx.finish()

    run.__doc__ = (f"Run the {scenario} scenario's ``iter_steps`` (per-phase steps) to completion and return the "
                   f":class:`ScenarioResult`. ``ctx``: a :class:`ScenarioContext` or a {scenario} preset (name "
                   "or dict).")
    return run
