"""Recordings for the lab book's players (part of :mod:`iovalab.lab.explain`).

No kernel analogue. A workload - a scenario preset of :mod:`iovalab.lab.scenarios` (NVMe, HMM, VFIO
drivers) or a small demo request - is run once on a fresh domain with every event kept
(:func:`record`), and cut into steps (one driver action or API call each, :func:`step_bounds`); a
player then shows step ``k`` as :func:`iovalab.lab.step_state.state_at` of the first events: the IOVA
allocator nodes, the leaf PTEs, the IOTLB and the counters that the *event descriptions* imply.
Nothing is re-simulated, so what a player shows is exactly what the log says the kernel code did.

Layering: imports :mod:`iovalab.kernel.event_schema`, :mod:`iovalab.kernel.device`,
:mod:`iovalab.kernel.dma_iommu`, :mod:`iovalab.lab.step_state` and :mod:`iovalab.lab.scenarios`; never
:mod:`iovalab.book.viz` or :mod:`iovalab.book.widgets`.
"""

from __future__ import annotations

import textwrap

from dataclasses import dataclass, field

from iovalab.lab.step_state import StepState, Timeline

__all__ = [
    "PATHS", "PATH_TITLES", "DEMO_WORKLOADS", "run_segments", "Recording", "record", "LEADING_EVENTS",
    "step_bounds", "PLAYER_VARIANTS", "PLAYER_PRESETS", "preset_dict", "player_workloads", "workload_paths",
    "recording_state", "describe_events", "hexify", "P2P_WORKLOADS", "prot_names", "p2p_map_type", "p2p_summary",
    "p2p_rows",
]

#: the kernel version this module's texts and derivations describe (6.17; 7.3 differences:
#: iovalab.kernel.version.DIFFERENCES)
TEXT_KERNEL = "6.17"
#: and the flush-queue timer they count in whole milliseconds: CONFIG_HZ=1000 (10 ms = 10 jiffies)
TEXT_HZ = 1000

PATHS = ("page", "sg", "iova")
PATH_TITLES = {
    "page": "dma_map_page per segment",
    "sg": "one dma_map_sg",
    "iova": "two-step dma_iova_* API",
}

#: Built-in demo workloads: one request each, ``[(phys, length), ...]`` in bytes. ``nvme-demo`` is
#: a four-segment NVMe read through ``blk_rq_dma_map_iova()`` (block/blk-mq-dma.c, 6.17): an unaligned
#: first segment, a partial last one.
DEMO_WORKLOADS: dict[str, tuple[str, tuple[tuple[int, int], ...]]] = {
    "nvme-demo": ("NVMe-like request: 4 segments, unaligned start, partial last page",
                  ((0x12345200, 0xE00), (0x20000000, 0x1000), (0x30000000, 0x3000), (0x40000000, 0x800))),
    "pages-8": ("8 scattered 4 KiB pages (HMM/VFIO-like page array)",
                tuple((0x80000000 + i * 0x3000, 0x1000) for i in range(8))),
    "contig-64k": ("one physically contiguous 64 KiB buffer in 16 page segments",
                   tuple((0x90000000 + i * 0x1000, 0x1000) for i in range(16))),
}


def run_segments(dom, dev, segments, path: str, *, device_dma: bool = True, cpu: int = 0) -> None:
    """Map ``segments`` (``[(phys, length), ...]``, one I/O request) with ``path``, let the device
    read them (``device_dma``: :meth:`~iovalab.kernel.iommu.IommuDomain.device_access`, fills the IOTLB),
    then unmap. A tiny driver, no kernel analogue beyond the call sequences it makes:

    * ``page``: ``dma_map_page`` per segment, ``dma_unmap_page`` per segment (what a driver without
      the new API, or the block layer's ``blk_dma_map_direct`` fallback, does);
    * ``sg``: one ``dma_map_sg`` of the list, one ``dma_unmap_sg`` (``iommu_dma_map_sg``);
    * ``iova``: ``dma_iova_try_alloc`` of the total, ``dma_iova_link`` per segment at the running
      offset, one ``dma_iova_sync``, one ``dma_iova_destroy`` (``blk_rq_dma_map_iova`` /
      ``blk_rq_dma_unmap``, block/blk-mq-dma.c).
    """
    from iovalab.kernel.dma_iommu import ScatterEntry

    if path not in PATHS:
        raise ValueError(f"path {path!r} is not one of {PATHS}")
    if not segments:
        raise ValueError("segments: empty request")
    iommu = dom.iommu
    if path == "page":
        addrs = [dom.dma_map_page(dev, p, n, cpu=cpu) for p, n in segments]
        if device_dma:
            for a, (_, n) in zip(addrs, segments, strict=True):
                iommu.device_access(a, n, cpu=cpu)
        for a, (_, n) in zip(addrs, segments, strict=True):
            dom.dma_unmap_page(dev, a, n, cpu=cpu)
    elif path == "sg":
        sgl = [ScatterEntry(p, n) for p, n in segments]
        ents = dom.dma_map_sg(dev, sgl, cpu=cpu)
        if device_dma:
            for s in sgl[:ents]:
                iommu.device_access(s.dma_address, s.dma_length, cpu=cpu)
        dom.dma_unmap_sg(dev, sgl, cpu=cpu)
    else:
        from iovalab.kernel.dma_iommu import DmaIovaState
        total = sum(n for _, n in segments)
        st = DmaIovaState()
        if not dom.dma_iova_try_alloc(dev, st, segments[0][0], total, cpu=cpu):
            return
        off = 0
        for p, n in segments:
            dom.dma_iova_link(dev, st, p, off, n, cpu=cpu)
            off += n
        dom.dma_iova_sync(dev, st, 0, off, cpu=cpu)
        if device_dma:
            iommu.device_access(st.addr, off, cpu=cpu)
        dom.dma_iova_destroy(dev, st, off, cpu=cpu)


@dataclass
class Recording:
    """A workload run once with every event kept (see :func:`record`).

    ``events`` is the whole log (domain set-up first); ``bounds`` the exclusive end index of each
    step when stepping by driver action / API call (step 0 ends after the domain set-up);
    ``labels`` one line per step saying what the driver did (scenario steps) or which call it was;
    ``window`` an IOVA byte range ``[lo, hi)`` that holds every IOVA node the run allocates;
    ``result`` the :class:`~iovalab.drivers.common.ScenarioResult` for scenario recordings.
    """

    workload: str
    path: str
    strict: bool
    granule: int
    events: list
    bounds: list[int]
    labels: list[str]
    window: tuple[int, int]
    title: str = ""
    result: object = None
    _timeline: Timeline | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def setup(self) -> int:
        return self.bounds[0]

    def steps(self, unit: str = "call") -> list[int]:
        """Exclusive end indexes of the steps: ``"call"`` (one driver action or API call with
        everything it did inside) or ``"event"`` (every event; step 0 is still the set-up)."""
        if unit == "call":
            return self.bounds
        if unit == "event":
            return [self.setup] + list(range(self.setup + 1, len(self.events) + 1))
        raise ValueError(f"step unit {unit!r} is not 'call' or 'event'")

    def label(self, step: int, unit: str = "call") -> str:
        """What step ``step`` is, in words."""
        b = self.steps(unit)
        step = max(0, min(step, len(b) - 1))
        if unit == "call":
            return self.labels[step]
        if step == 0:
            return self.labels[0]
        e = self.events[b[step] - 1]
        return f"{e.layer}: {e.func}"

    def find(self, text: str, *, last: bool = False) -> int:
        """Index of the first (or ``last``) step whose label contains ``text``; ValueError if none."""
        hits = [i for i, lab in enumerate(self.labels) if text in lab]
        if not hits:
            raise ValueError(f"no step of {self.workload}/{self.path} mentions {text!r}")
        return hits[-1] if last else hits[0]

    def state(self, step: int, unit: str = "call") -> StepState:
        """:class:`StepState` after step ``step`` (0-based, clamped), from a checkpointed replay."""
        if self._timeline is None:
            self._timeline = Timeline(self.events, self.granule)
        b = self.steps(unit)
        step = max(0, min(step, len(b) - 1))
        return self._timeline.state(b[step], start=b[step - 1] if step else 0)


def _is_hw(e) -> bool:
    return e.func in ("device_access", "report_iommu_fault")


#: Entry points whose top-level event comes *before* the work they do, as the kernel's trace
#: does (``dma_unmap_sg_attrs`` emits ``trace_dma_unmap_sg`` before unmapping); every other entry
#: point records its top-level event last.
LEADING_EVENTS = frozenset({"dma_unmap_sg"})


def step_bounds(events, setup: int = 0) -> list[int]:
    """Group events into steps: the set-up, then one step per top-level (``depth == 0``) event
    with the nested events it caused (before it, or after it for :data:`LEADING_EVENTS`), and
    each run of consecutive device DMA events (``device_access``, ``report_iommu_fault``)."""
    bounds = [setup]
    n = len(events)
    i = setup
    while i < n:
        e = events[i]
        if e.depth == 0 and _is_hw(e):
            while i + 1 < n and events[i + 1].depth == 0 and _is_hw(events[i + 1]):
                i += 1
        elif e.depth == 0 and e.func in LEADING_EVENTS:
            while i + 1 < n and events[i + 1].depth > 0:
                i += 1
        elif e.depth > 0:
            i += 1
            continue
        bounds.append(i + 1)
        i += 1
    if bounds[-1] != n:
        bounds.append(n)
    return bounds


def _iova_window(events, granule: int) -> tuple[int, int]:
    lo: int | None = None
    hi: int | None = None
    for e in events:
        if e.kind == "tree_alloc":
            a = e.result * granule
            b = (e.result + e.args["size"]) * granule
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    if lo is None:   # nothing allocated (a P2P bus-address run): the top 64 KiB below 4 GiB, padded alike
        lo, hi = 0xFFFF0000, 0x100000000
    assert hi is not None
    span = hi - lo
    pad = max(granule, (span // 8) // granule * granule)
    return (max(0, lo - pad), hi + pad)


#: Player-sized variants of scenario presets: ``name -> (preset in data/scenarios, parameter
#: overrides)``. The HMM and VFIO presets map thousands of pages; a player needs tens.
PLAYER_VARIANTS: dict[str, tuple[str, dict]] = {
    "hmm-256k-strided": ("hmm-16mib-strided", {"npages": 64, "stride": 16, "invalidate": [[0, 8]]}),
    "vfio-migration-256k": ("vfio-migration-4mib", {"npages": 64}),
}
#: Workloads small enough for the step-through players: scenario presets (``data/scenarios``) and
#: :data:`PLAYER_VARIANTS`.
PLAYER_PRESETS = ("nvme-spec-example", "nvme-unaligned-12k", "nvme-4k-read", "nvme-128k-scattered",
                  "nvme-196k-read", "nvme-p2p-read-bar", "nvme-p2p-read-bar-host-bridge", "hmm-256k-strided",
                  "vfio-migration-256k")
#: The GPUDirect-Storage pattern under its two working P2P map types (bus address; through the host bridge).
P2P_WORKLOADS = ("nvme-p2p-read-bar", "nvme-p2p-read-bar-host-bridge")


def preset_dict(name: str) -> dict:
    """The scenario preset ``name`` as a dict: a file of ``data/scenarios`` or a
    :data:`PLAYER_VARIANTS` entry (the base preset with its parameters overridden)."""
    import copy

    from iovalab.lab.scenarios import load_preset

    if name in PLAYER_VARIANTS:
        base, over = PLAYER_VARIANTS[name]
        pre = copy.deepcopy(load_preset(base))
        pre["parameters"].update(copy.deepcopy(over))
        pre["name"] = name
        pre["description"] = f"{base} with {', '.join(f'{k}={v}' for k, v in over.items())} (player size)"
        return pre
    return load_preset(name)


def player_workloads() -> list[str]:
    """Workload names the players offer: the :data:`PLAYER_PRESETS` that exist, then the
    :data:`DEMO_WORKLOADS` (those include device DMA, so the IOTLB fills)."""
    try:
        from iovalab.lab.scenarios import list_presets
        have = set(list_presets()) | {n for n, (b, _) in PLAYER_VARIANTS.items() if b in list_presets()}
    except ImportError:  # pragma: no cover - scenarios are part of the package
        have = set()
    return [p for p in PLAYER_PRESETS if p in have] + [f"demo:{d}" for d in DEMO_WORKLOADS]


def workload_paths(workload: str) -> tuple[str, ...]:
    """The mapping paths (of :data:`PATHS`) a workload can run with."""
    if workload.startswith("demo:") or workload in DEMO_WORKLOADS:
        return PATHS
    from iovalab.lab.scenarios import valid_apis
    return tuple(p for p in PATHS if p in valid_apis(preset_dict(workload)))


def record(workload: str = "nvme-spec-example", path: str = "iova", *, strict: bool = True,
           preset: str = "intel-vtd", device=None) -> Recording:
    """Run ``workload`` once with ``path`` on a fresh domain and keep every event.

    :param workload: a scenario preset (``data/scenarios`` or :data:`PLAYER_VARIANTS`, run with
        :func:`iovalab.lab.scenarios.iter_scenario`: one step per driver action), ``"demo:NAME"`` or a
        :data:`DEMO_WORKLOADS` name (:func:`run_segments` with device DMA, one step per API call),
        or a ``[(phys, length), ...]`` list (a demo of those segments).
    :param path: ``"page"``, ``"sg"`` or ``"iova"``.
    :param strict: strict (``IOMMU_DOMAIN_DMA``) or lazy (DMA-FQ) domain.
    :param preset: IOMMU preset for demo workloads (scenario presets name their own).
    :param device: a :class:`~iovalab.kernel.device.Device` for demo workloads (default: ``Device.nvme()``).
    """
    if path not in PATHS:
        raise ValueError(f"path {path!r} is not one of {PATHS}")
    if isinstance(workload, str) and not workload.startswith("demo:") and workload not in DEMO_WORKLOADS:
        return _record_scenario(workload, path, strict)
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain

    if isinstance(workload, str):
        name = workload.removeprefix("demo:")
        if name not in DEMO_WORKLOADS:
            raise ValueError(f"demo workload {name!r} is not one of {sorted(DEMO_WORKLOADS)}")
        title, segments = DEMO_WORKLOADS[name]
        name = f"demo:{name}"
    else:
        segments = tuple((int(p), int(n)) for p, n in workload)
        title, name = f"{len(segments)} segments", "demo:custom"
    dom = DmaDomain(preset, strict=strict, kernel=TEXT_KERNEL, hz=TEXT_HZ)
    dev = device if device is not None else Device.nvme()
    setup = len(dom.log)
    run_segments(dom, dev, segments, path, device_dma=True)
    work = len(dom.log)
    if not strict and dom.fq_pending():
        dom.advance_time(max(0.0, dom.fq_timer_deadline - dom.now_ms))
    events = list(dom.log.events)
    bounds = step_bounds(events[:work], setup)
    labels = ["domain set-up (iommu_dma_init_domain)"]
    for i in range(1, len(bounds)):
        top = [e for e in events[bounds[i - 1]:bounds[i]] if e.depth == 0]
        e = top[-1] if top else events[bounds[i] - 1]
        if _is_hw(e):
            labels.append(f"device DMA through the IOMMU ({len(top)} granule access(es))")
        elif e.func in LEADING_EVENTS:
            labels.append(f"{e.func}(...)")
        else:
            labels.append(f"{e.func}(...)" + ("" if e.result is None else f" -> {_fmt(e.result)}"))
    if len(events) > work:
        bounds.append(len(events))
        labels.append(f"{dom.fq_timeout} ms later: fq_flush_timeout (the flush-queue timer): one flush_iotlb_all, "
                      "then the queued IOVAs are freed")
    return Recording(name, path, strict, dom.granule, events, bounds, labels, _iova_window(events, dom.granule),
                     title)


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)
    return hex(v)


def _record_scenario(name: str, path: str, strict: bool) -> Recording:
    from iovalab.lab.scenarios import iter_scenario

    pre = preset_dict(name)
    events: list = []
    bounds: list[int] = []
    labels: list[str] = []
    result = None
    for st in iter_scenario(pre, api=path, strict=strict, keep_events=True, fine=True):
        if st["driver"] == "done":
            result = st.get("result")
            if not st["events"]:
                break
        events.extend(st["events"])
        bounds.append(len(events))
        labels.append(f"{st['driver']}: {st['what']}")
    dom = getattr(result, "domain", None)
    granule = dom.granule if dom is not None else 0x1000
    return Recording(name, path, strict, granule, events, bounds, labels, _iova_window(events, granule),
                     pre.get("description", ""), result)


def recording_state(rec: Recording, step: int, unit: str = "call") -> StepState:
    """:class:`StepState` after step ``step`` of ``rec`` (same as ``rec.state(step, unit)``)."""
    return rec.state(step, unit)


def prot_names(prot: int) -> str:
    """``IOMMU_*`` bits of an ``iommu_map`` prot (include/linux/iommu.h): ``0x12`` ->
    ``"IOMMU_WRITE|IOMMU_MMIO"``."""
    from iovalab.kernel.iommu import IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE

    names = [n for n, b in (("IOMMU_READ", IOMMU_READ), ("IOMMU_WRITE", IOMMU_WRITE), ("IOMMU_CACHE", IOMMU_CACHE),
                            ("IOMMU_NOEXEC", IOMMU_NOEXEC), ("IOMMU_MMIO", IOMMU_MMIO), ("IOMMU_PRIV", IOMMU_PRIV))
             if prot & b]
    return "|".join(names) or "0"


def describe_event(e) -> str:
    """:meth:`~iovalab.kernel.events.Event.describe`, with a negative errno result named as the kernel's
    headers name it: ``-> -ENOMEM (-12)`` instead of ``-> -0xc``, and an ``iommu_map`` prot spelled out:
    ``prot=0x12 (IOMMU_WRITE|IOMMU_MMIO)``."""
    from iovalab.kernel.units import ERRNO_NAMES, errname

    text = e.describe()
    prot = e.args.get("prot")
    if isinstance(prot, int) and not isinstance(prot, bool):
        raw = f"prot={hex(prot)}"
        text = text.replace(raw, f"{raw} ({prot_names(prot)})", 1)
    r = e.result
    if isinstance(r, int) and not isinstance(r, bool) and r < 0 and -r in ERRNO_NAMES:
        raw = f" -> -{hex(-r)}"
        if text.endswith(raw):
            text = text[: -len(raw)] + f" -> {errname(r)} ({r})"
    return text


#: the widest line :func:`describe_events` writes (a notebook column at 1024 px holds about 75 characters)
DESCRIBE_WIDTH = 72


def describe_events(events, *, limit: int | None = None, width: int = DESCRIBE_WIDTH) -> str:
    """One line per event - the kernel function, its arguments and its result
    (:meth:`~iovalab.kernel.events.Event.describe`) - indented by call depth, tagged with the layer, and with
    the step kind after ``#`` when it is not a counter (``# rcache_miss``, ``# tree_free``, ``# warn``).
    ``limit`` keeps the first ``limit`` events and says how many were left out; a line longer than
    ``width`` continues on the next, indented, between two arguments."""
    events = list(events)
    shown = events if limit is None else events[:limit]
    from iovalab.kernel.event_schema import COUNTER_KINDS

    lines = []
    for e in shown:
        indent = "  " * e.depth
        text = f"{indent}[{e.layer}] {describe_event(e)}" + (
            "" if e.kind in COUNTER_KINDS or e.kind == "step" else f"  # {e.kind}")
        # wrapped between arguments, so that a notebook column (about 75 characters at 1024 px with
        # the file browser open) never breaks a number in two
        lines.extend(textwrap.wrap(text, width, subsequent_indent=indent + "      ", break_long_words=False,
                                   break_on_hyphens=False, drop_whitespace=True) or [text])
    if len(shown) < len(events):
        lines.append(f"... {len(events) - len(shown)} more event(s)")
    return "\n".join(lines)


def hexify(obj):
    """``obj`` with every int (not bool) written as a hex string, through dicts, lists and tuples -
    for printing driver views (PRP lists, MTT entries) the way the kernel's traces print them."""
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return hex(obj)
    if isinstance(obj, dict):
        return {k: hexify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(hexify(v) for v in obj)
    return obj


def p2p_map_type(workload: str) -> str | None:
    """The ``pci_p2pdma_map_type`` name a workload's ``p2p`` provider gives the device
    (``calc_map_type_and_dist()`` on its topology), or None for a workload without P2P memory."""
    from iovalab.kernel.p2pdma import MAP_TYPE_NAMES, TOPOLOGIES, calc_map_type_and_dist

    if workload.startswith("demo:") or workload in DEMO_WORKLOADS:
        return None
    p2p = preset_dict(workload)["parameters"].get("p2p")
    if not isinstance(p2p, dict):
        return None
    return MAP_TYPE_NAMES[calc_map_type_and_dist(*TOPOLOGIES[p2p.get("topology", "switch")])]


def p2p_summary(workload: str, path: str = "iova", *, strict: bool = True) -> dict:
    """What a P2P workload (:data:`P2P_WORKLOADS`) does on ``path``, counted from its event log: the map
    type ``pci_p2pdma_state()`` gave the controller, the requests, IOVA allocations, ``iommu_map`` calls
    (in all, with ``IOMMU_MMIO``, with ``IOMMU_CACHE``), ``iommu_unmap`` calls, and the DMA address the
    controller was given for the first request."""
    from iovalab.kernel.iommu import IOMMU_CACHE, IOMMU_MMIO
    from iovalab.lab.scenarios import run_scenario

    map_type = p2p_map_type(workload)
    if map_type is None:
        raise ValueError(f"workload {workload!r} has no 'p2p' parameter (as {', '.join(P2P_WORKLOADS)} have)")
    res = run_scenario(preset_dict(workload), path, strict=strict)
    maps = [e for e in res.log.events if e.kind == "iommu_map_calls"]
    return {
        "workload": workload, "path": path,
        "map type": map_type,
        "requests": len(res.device_view),
        "IOVA allocations": res.counters.iova_allocs,
        "iommu_map calls": len(maps),
        "with IOMMU_MMIO": sum(1 for e in maps if e.args["prot"] & IOMMU_MMIO),
        "with IOMMU_CACHE": sum(1 for e in maps if e.args["prot"] & IOMMU_CACHE),
        "iommu_unmap calls": sum(1 for e in res.log.events if e.kind == "iommu_unmap"),
        "first dma_addr": res.device_view[0]["dma_segments"][0][0],
    }


def p2p_rows(paths: tuple[str, ...] = ("iova", "page", "sg"), *, strict: bool = True) -> list[dict]:
    """:func:`p2p_summary` of both :data:`P2P_WORKLOADS` on each of ``paths``, as a narrow table's rows:
    the map type without its ``PCI_P2PDMA_MAP_`` prefix, IOVA allocations (``IOVAs``), ``iommu_map`` calls
    (``maps``; ``MMIO``, ``CACHE``: those whose prot has ``IOMMU_MMIO``, ``IOMMU_CACHE``) and the first DMA
    address the controller is given."""
    out = []
    for p in paths:
        for w in P2P_WORKLOADS:
            s = p2p_summary(w, p, strict=strict)
            out.append({"path": p, "map type": s["map type"].removeprefix("PCI_P2PDMA_MAP_"),
                        "IOVAs": s["IOVA allocations"], "maps": s["iommu_map calls"],
                        "MMIO": s["with IOMMU_MMIO"], "CACHE": s["with IOMMU_CACHE"],
                        "first DMA addr": s["first dma_addr"]})
    return out
