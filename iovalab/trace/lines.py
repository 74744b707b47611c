"""Every ``iommu:map`` / ``iommu:unmap`` line of a capture, redone through the simulator's DMA API.

For each request, the path that mapped it is read from the trace's own evidence (the ``dma:*`` event
that closed its allocation, :func:`iovalab.trace.steps.reconstruct`); the simulator is driven through
that path with the request's physical addresses, in file order, and every ``map`` line it would trace
(iova, paddr, size) and every ``unmap`` line (iova, size, unmapped_size) is compared with the kernel's:

* ``dma_map_phys`` (7.3) / ``dma_map_page`` (6.x): ``dma_map_page(phys_addr, size, dir)``
  (``__iommu_dma_map``: one granule-aligned IOVA, one ``iommu_map``), ``dma_unmap_page`` at the unmap;
  the ``dma_addr`` is compared too.
* ``dma_map_sg`` (6.12 NVMe): ``iommu_dma_map_sg`` of the traced ``phys_addrs``. The event does not
  carry each entry's length; only its granule-aligned extent decides the lines (``iova_align(length +
  iova_offset)``, concatenated, one ``map`` per physically contiguous run), and the map lines give
  that extent, so each entry is taken to end at its last granule's end: the ``map``/``unmap`` lines
  are then the kernel's arithmetic, the merged DMA segments are not checked (only the first
  ``dma_addr``). ``dma_unmap_sg`` at the unmap.
* two-step (map lines under one unmap with no ``dma:*`` event; 7.3 ``blk_rq_dma_map_iter_start``):
  ``dma_iova_try_alloc`` of the unmap's size, one ``dma_iova_link`` per map line, ``dma_iova_sync``,
  ``dma_iova_destroy(mapped_len)`` at the unmap (7.3: unlink + free).
* ``dma_alloc``: ``iommu_dma_alloc_iova`` with the coherent mask and one ``iommu_map`` per map line
  of the traced paddr (the simulator's own ``dma_alloc_coherent`` would pick its own memory).
* the software-MSI doorbell (:class:`~iovalab.trace.system.SystemConfig` ``msi_doorbell``):
  ``iommu_dma_get_msi_page`` = ``iommu_dma_alloc_iova`` of one granule + ``iommu_map`` with
  ``IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO``.

Lines no modelled path accounts for (other ``dma:*`` kinds, unmaps of ranges never seen mapped) are
counted under their own row and as not reproduced, never skipped. Frees run in file order, except
the interrupt-context frees the allocation replay moved after an allocation (``reorders``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iovalab.kernel.device import DMA_BIDIRECTIONAL, Device
from iovalab.kernel.dma_iommu import ScatterEntry
from iovalab.kernel.dma_iova import DmaIovaState, dma_info_to_prot
from iovalab.kernel.event_schema import Kind
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_WRITE
from iovalab.kernel.units import DMA_BIT_MASK, DmaError, iova_offset
from iovalab.trace.ftrace import DMA_DIRECTIONS, FtraceCapture, TraceLine
from iovalab.trace.steps import Allocation, reconstruct
from iovalab.trace.system import SystemConfig, infer_system

__all__ = ["PathLines", "LineCheck", "LineChecker", "check_lines", "sg_entries_from_lines", "PATHS", "MAX_MISMATCHES"]

#: what a map line and an unmap line show, compared field by field
_MAP_ARGS = ("iova", "paddr", "size")
_UNMAP_ARGS = ("iova", "size", "unmapped_size")
#: mismatch texts a :class:`LineCheck` keeps (every mismatch is counted)
MAX_MISMATCHES = 200

#: rows of the per-path table, in print order
PATHS = ("dma_map_phys", "dma_map_page", "dma_map_sg", "two-step", "dma_alloc", "msi doorbell", "not modelled")


@dataclass
class PathLines:
    requests: int = 0
    lines: int = 0
    reproduced: int = 0


@dataclass
class LineCheck:
    """Result of :func:`check_lines`."""

    lines: int = 0                    # map + unmap lines of the capture
    reproduced: int = 0
    dma_addrs: int = 0                # dma_addr values compared (single mappings, first of an sg list)
    dma_addrs_ok: int = 0
    paths: dict[str, PathLines] = field(default_factory=lambda: {p: PathLines() for p in PATHS})
    mismatches: list[str] = field(default_factory=list)

    @property
    def differ(self) -> int:
        return self.lines - self.reproduced

    @property
    def ok(self) -> bool:
        return self.differ == 0 and self.dma_addrs_ok == self.dma_addrs

    def summary(self) -> str:
        """The ``LINES:`` line of ``replay-ftrace``."""
        return f"LINES: {self.lines} map/unmap lines, {self.reproduced} reproduced, {self.differ} differ"

    def table(self) -> list[str]:
        rows = [f"{'path':<14} {'requests':>8} {'lines':>6} {'reproduced':>10}"]
        for name, p in self.paths.items():
            if p.requests or p.lines:
                rows.append(f"{name:<14} {p.requests:>8} {p.lines:>6} {p.reproduced:>10}")
        if self.dma_addrs:
            rows.append(f"dma_addr values: {self.dma_addrs_ok} of {self.dma_addrs} reproduced")
        return rows

    def as_dict(self) -> dict:
        return {"lines": self.lines, "reproduced": self.reproduced, "differ": self.differ,
                "dma_addrs": self.dma_addrs, "dma_addrs_ok": self.dma_addrs_ok,
                "paths": {k: vars(v) for k, v in self.paths.items()}, "mismatches": self.mismatches[:20]}


def _path(a: Allocation, system: SystemConfig) -> str:
    if a.kind in ("dma_map_phys", "dma_map_page", "dma_map_sg", "dma_alloc"):
        return a.kind
    if a.kind == "?":
        if a.freed_at is None and system.msi_doorbell and system.msi_doorbell[0] == a.base:
            return "msi doorbell"
        return "two-step"
    return "not modelled"


def sg_entries_from_lines(phys: list[int], maps: list[TraceLine], granule: int) -> list[ScatterEntry] | None:
    """The scatterlist ``iommu_dma_map_sg`` was given, as far as its lines depend on it: each entry
    from its traced phys to the end of the granule-aligned extent the map lines give it (None when
    the lines and the phys_addrs do not fit together)."""
    starts: list[int] = []          # IOVA offset of each entry's aligned start
    j, off, base = 0, 0, maps[0].fields["iova"] if maps else 0
    for p in phys:
        pa = p - iova_offset(granule, p)
        while j < len(maps):
            f = maps[j].fields
            if f["paddr"] + off <= pa < f["paddr"] + f["size"]:
                off = pa - f["paddr"]
                break
            j, off = j + 1, 0
        else:
            return None
        starts.append(maps[j].fields["iova"] - base + off)
        off += granule
    end = maps[-1].fields["iova"] + maps[-1].fields["size"] - base
    bounds = starts[1:] + [end]
    ents = [ScatterEntry(p, b - s - iova_offset(granule, p)) for p, s, b in zip(phys, starts, bounds, strict=True)]
    return ents if all(e.length > 0 for e in ents) else None


def _mismatch(path: str, kernel: list[TraceLine], want: list[tuple], sim: list[tuple]) -> str:
    """One line saying where the simulator's lines part from the kernel's (the first that differs)."""
    def show(t: tuple | None) -> str:
        return "none" if t is None else "(" + ", ".join(hex(x) for x in t) + ")"
    i = next((j for j, (w, s) in enumerate(zip(want, sim, strict=False)) if w != s), min(len(want), len(sim)))
    k = kernel[min(i, len(kernel) - 1)]
    return (f"line {k.lineno}: {path} {k.event}: the kernel traced {len(want)} line(s), the simulator {len(sim)}; "
            f"first difference: kernel {show(want[i] if i < len(want) else None)}, "
            f"simulator {show(sim[i] if i < len(sim) else None)}")


def _flushes(events) -> list[tuple[str, int, int]]:
    """The IOTLB invalidations among ``events``: (function, start, end) - ``iommu_iotlb_sync`` of a
    range, ``iommu_flush_iotlb_all`` of the domain (drivers/iommu/iommu.c, 6.17 and 7.3.4)."""
    return [(e.func, e.args.get("start", 0), e.args.get("end", 0)) for e in events
            if e.kind == "iotlb_invalidations"]


def check_lines(cap: FtraceCapture, system: SystemConfig | None = None, *, cpus: int | None = None,
                strict: bool = True, reorders: dict[int, int] | None = None,
                record: dict[int, dict] | None = None) -> LineCheck:
    """Redo every mapping of ``cap`` through the simulator's DMA API and compare its ``map`` and
    ``unmap`` lines (module doc). ``reorders``: ``{allocation line: k}`` from the allocation replay,
    the ``k`` frees just before that allocation done after it. ``record``: a dict filled with one
    entry per request, keyed by its first map line: ``path``, the kernel's and the simulator's
    ``maps`` (iova, paddr, size) and ``unmaps`` (iova, size, unmapped_size), the simulator's IOTLB
    flushes while mapping and unmapping it (``sim_flushes``: function, start, end), and ``dma_addr``
    (kernel, simulator) when the path returns one."""
    system = system or infer_system(cap)
    ncpus = cpus or system.cpus or (max(cap.cpus) + 1 if cap.cpus else 1)
    chk = LineChecker(system, ncpus=ncpus, strict=strict, record=record)
    reorders = reorders or {}
    pending: list[TraceLine] = []
    for st in reconstruct(cap, system.granule):
        kind = st[0]
        if kind == "alloc":
            a = st[1]
            k = reorders.get(a.lineno, 0)
            head, tail = (pending[:len(pending) - k], pending[len(pending) - k:]) if k else (pending, [])
            for ln in head:
                chk.unmap(ln)
            chk.request(a)
            for ln in tail:
                chk.unmap(ln)
            pending = []
        elif kind == "free" or kind == "unmatched":
            pending.append(st[-1])
        elif kind == "link":
            chk.link(st[1], st[2])
    for ln in pending:
        chk.unmap(ln)
    return chk.result


class LineChecker:
    """The simulator's DMA API driven request by request, in the order the allocation replay chose
    (:mod:`iovalab.trace.replay`), comparing each ``map``/``unmap`` line (module doc; no kernel
    analogue). ``request`` at an allocation, ``link`` for a map line that extends a request already
    redone, ``unmap`` for each unmap line."""

    def __init__(self, system: SystemConfig, *, ncpus: int, strict: bool = True,
                 record: dict[int, dict] | None = None) -> None:
        self.system = system
        self.g = system.granule
        # only the events the comparison and the record read: the rest are tallied, not built
        self.log = EventLog(keep=True, kinds=(Kind.IOMMU_MAP_CALLS, Kind.IOMMU_UNMAP, Kind.IOTLB_INVALIDATIONS))
        self.dom = system.make_domain(strict=strict, ncpus=ncpus, log=self.log)
        self.result = LineCheck()
        self.record = record
        self.devs: dict[str, Device] = {}
        self.live: dict[int, tuple] = {}         # kernel base -> (path, how to undo it)
        self.rec_by_base: dict[int, dict] = {}   # kernel base -> its ``record`` entry, until unmapped
        self.cur: dict = {}                      # the ``record`` entry of the request being redone

    def device(self, name: str) -> Device:
        devs = self.devs
        if name not in devs:
            devs[name] = Device(name=name, dma_mask=DMA_BIT_MASK(64), is_pci=True)
        return devs[name]

    def _compare(self, path: str, kernel: list[TraceLine], fields: tuple[str, ...], sim: list[tuple]) -> None:
        res = self.result
        if len(fields) == 3:
            k0, k1, k2 = fields
            want = [(f[k0], f[k1], f[k2]) for f in (ln.fields for ln in kernel)]
        else:
            want = [tuple(ln.fields[k] for k in fields) for ln in kernel]
        p = res.paths[path]
        p.lines += len(kernel)
        res.lines += len(kernel)
        ok = sum(1 for w, s in zip(want, sim, strict=False) if w == s) if len(sim) == len(want) else 0
        p.reproduced += ok
        res.reproduced += ok
        if ok < len(want) and len(res.mismatches) < MAX_MISMATCHES:
            res.mismatches.append(_mismatch(path, kernel, want, sim))

    def _cmp_addr(self, ln: TraceLine, want: int, got: int) -> None:
        res = self.result
        self.cur["dma_addr"] = (want, got)
        res.dma_addrs += 1
        if want == got:
            res.dma_addrs_ok += 1
        elif len(res.mismatches) < MAX_MISMATCHES:
            res.mismatches.append(f"line {ln.lineno}: {ln.event} dma_addr {want:#x}, simulator {got:#x}")

    def _refused(self, text: str) -> None:
        if len(self.result.mismatches) < MAX_MISMATCHES:
            self.result.mismatches.append(text)

    def request(self, a: Allocation) -> None:
        """Redo request ``a`` (its allocation, all its map lines so far) through its path."""
        path = _path(a, self.system)
        maps = a.maps
        res = self.result
        if path == "not modelled":
            res.paths[path].requests += 1
            self._compare(path, maps, ("iova",), [])
            return
        log = self.log           # empty: every request and unmap clears it
        undo: tuple = ()
        self.cur = {}
        try:
            undo = self._redo(a, path, maps, a.closer, a.cpu)
        except (ValueError, DmaError) as e:
            self._refused(f"line {a.lineno}: {path}: the simulator refused: {e}")
        res.paths[path].requests += 1
        since = log.events
        sim = [e.pick(_MAP_ARGS) for e in since if e.kind == "iommu_map_calls"]
        self._compare(path, maps, _MAP_ARGS, sim)
        if self.record is not None:
            entry = {"path": path, "kernel_maps": [(m.fields["iova"], m.fields["paddr"], m.fields["size"])
                                                   for m in maps],
                     "sim_maps": sim, "kernel_unmaps": [], "sim_unmaps": [], "sim_flushes": _flushes(since),
                     **self.cur}
            self.record[a.lineno] = entry
            self.rec_by_base[a.base] = entry
        log.clear()
        self.live[a.base] = (path, undo)     # until its unmap (a range never unmapped stays)

    def _redo(self, a: Allocation, path: str, maps: list[TraceLine], ev: TraceLine | None, cpu: int) -> tuple:
        """Map request ``a`` through ``path``; returns how to unmap it."""
        dom, g = self.dom, self.g
        undo: tuple = ()
        if path in ("dma_map_phys", "dma_map_page"):
            assert ev is not None, f"{path} is chosen from its dma:* event"
            f = ev.fields
            dev, d = self.device(f["device"]), DMA_DIRECTIONS[f["dir"]]
            got = dom.dma_map_page(dev, f["phys_addr"], f["size"], d, cpu=cpu)
            self._cmp_addr(ev, f["dma_addr"], got)
            undo = ("single", dev, got, f["size"], d)
        elif path == "dma_map_sg":
            assert ev is not None
            f = ev.fields
            dev, d = self.device(f["device"]), DMA_DIRECTIONS[f["dir"]]
            sgl = sg_entries_from_lines(f["phys_addrs"], maps, g)
            if sgl is not None and len(f["phys_addrs"]) == f.get("nents", len(f["phys_addrs"])) and \
                    dom.dma_map_sg(dev, sgl, d, cpu=cpu):
                self._cmp_addr(ev, f["dma_addrs"][0], sgl[0].dma_address)
                undo = ("sg", dev, sgl, d)
            else:
                self._refused(f"line {ev.lineno}: dma_map_sg: the scatterlist does not follow "
                              "from its phys_addrs and map lines")
        elif path == "two-step":
            dev = self.device("0000:00:01.0" if not self.devs else next(iter(self.devs)))
            state = DmaIovaState()
            dom.dma_iova_try_alloc(dev, state, maps[0].fields["paddr"], a.size, cpu=cpu)
            for m in maps:
                dom.dma_iova_link(dev, state, m.fields["paddr"], m.fields["iova"] - a.base, m.fields["size"],
                                  cpu=cpu)
            dom.dma_iova_sync(dev, state, 0, a.size, cpu=cpu)
            undo = ("iova", dev, state)
        elif path in ("dma_alloc", "msi doorbell"):
            dev = self.device(ev.fields["device"] if ev is not None else "0000:00:01.0")
            mask = dev.coherent_dma_mask if path == "dma_alloc" else dev.dma_get_mask()
            assert mask is not None, f"{dev.name}: no DMA mask"
            iova = dom.iommu_dma_alloc_iova(a.size, mask, dev, cpu)
            prot = self._prot(path, dev)
            for m in maps:
                dom.iommu.iommu_map(iova + m.fields["iova"] - a.base, m.fields["paddr"], m.fields["size"], prot,
                                    cpu=cpu)
            if ev is not None:
                self._cmp_addr(ev, ev.fields["dma_addr"], iova + iova_offset(g, ev.fields["dma_addr"]))
            undo = ("mapped", iova)
        return undo

    @staticmethod
    def _prot(path: str, dev: Device) -> int:
        return dma_info_to_prot(DMA_BIDIRECTIONAL, dev.coherent, 0) if path == "dma_alloc" else \
            IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO

    def link(self, a: Allocation, ln: TraceLine) -> None:
        """A map line of request ``a`` after the request was redone (a late ``dma_iova_link``, or one
        more ``iommu_map`` of a coherent or doorbell range)."""
        path, undo = self.live.get(a.base, (_path(a, self.system), ()))
        f = ln.fields
        try:
            if undo and undo[0] == "iova":
                _, dev, state = undo
                self.dom.dma_iova_link(dev, state, f["paddr"], f["iova"] - a.base, f["size"], cpu=ln.cpu)
                self.dom.dma_iova_sync(dev, state, f["iova"] - a.base, f["size"], cpu=ln.cpu)
            elif undo and undo[0] == "mapped":
                dev = self.device("0000:00:01.0")
                self.dom.iommu.iommu_map(undo[1] + f["iova"] - a.base, f["paddr"], f["size"],
                                         self._prot(path, dev), cpu=ln.cpu)
        except (ValueError, DmaError) as e:
            self._refused(f"line {ln.lineno}: {path}: the simulator refused: {e}")
        sim = [e.pick(_MAP_ARGS) for e in self.log.events if e.kind == "iommu_map_calls"]
        self._compare(path if undo else "not modelled", [ln], _MAP_ARGS, sim)
        self.log.clear()

    def unmap(self, ln: TraceLine) -> None:
        """Redo the unmap on line ``ln`` through the path that mapped its range."""
        path, undo = self.live.pop(ln.fields["iova"], ("not modelled", ()))
        dom, log = self.dom, self.log
        cpu = ln.cpu
        try:
            if undo and undo[0] == "single":
                _, dev, addr, size, d = undo
                dom.dma_unmap_page(dev, addr, size, d, cpu=cpu)
            elif undo and undo[0] == "sg":
                _, dev, sgl, d = undo
                dom.dma_unmap_sg(dev, sgl, d, cpu=cpu)
            elif undo and undo[0] == "iova":
                _, dev, state = undo
                dom.dma_iova_destroy(dev, state, ln.fields["size"], cpu=cpu)
        except (ValueError, DmaError) as e:
            self._refused(f"line {ln.lineno}: unmap: the simulator refused: {e}")
        since = log.events
        sim = [e.pick(_UNMAP_ARGS) for e in since if e.kind == "iommu_unmap"]
        self._compare(path, [ln], _UNMAP_ARGS, sim)
        entry = self.rec_by_base.pop(ln.fields["iova"], None)
        if entry is not None:
            entry["kernel_unmaps"].append((ln.fields["iova"], ln.fields["size"], ln.fields["unmapped_size"]))
            entry["sim_unmaps"].extend(sim)
            entry["sim_flushes"].extend(_flushes(since))
        log.clear()
