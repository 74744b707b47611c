"""The real Linux 7.3.4 captures next to the simulator, for the book (issues 12 and 16).

Every function takes the capture's ``name`` (a path under ``data/``, default :data:`ARM64_64K`):
:data:`ARM64_64K` is ``data/real/v734-arm64-64k-strict-smp1.trace`` (arm64, ``CONFIG_ARM64_64K_PAGES``,
Arm SMMUv3, strict, one vCPU); :data:`X86_VTD` is ``data/real/v734-strict-smp1.trace`` (x86_64, emulated
Intel VT-d + NVMe, strict, one vCPU). Every number here comes from two sources only: the capture's own
``iommu:map`` / ``iommu:unmap`` / ``dma_map_phys`` lines and the simulator redoing each of its
requests through the path that mapped it (:func:`iovalab.trace.lines.check_lines`, which uses
:func:`iovalab.trace.steps.reconstruct` and :func:`iovalab.trace.system.infer_system`); nothing is
re-derived here.

* :func:`small_read` - one 4 KiB ``O_DIRECT`` read: ``__iommu_dma_map()`` (drivers/iommu/dma-iommu.c,
  7.3) maps ``iova_align(size + iova_offset(phys))`` = one whole 64 KiB granule and returns
  ``iova + iova_offset(phys)``: the offset lives only in the DMA address.
* :func:`two_step_request` - one request of ``blk_rq_dma_map_iter_start()`` (block/blk-mq-dma.c, 7.3):
  ``dma_iova_try_alloc`` of whole granules, one ``dma_iova_link`` per segment, one unmap by
  ``dma_iova_destroy``.
* :func:`iova_space` - the IOVA space the whole workload used: the kernel at 64 KiB, the simulator at
  64 KiB, and the simulator re-running the same requests on a 4 KiB granule / 4 KiB ``PAGE_SIZE``
  domain (``smmuv3-4k``).
* :func:`iova_timeline` / :func:`differences` - every request in capture order, kernel and simulator
  side by side (the reviewer's view of a whole capture).
* :func:`lazy_rerun` - the capture's requests redone in a strict and in a lazy (flush-queue) domain at
  their traced times (:func:`iovalab.trace.rerun.rerun_capture`), next to what the README of
  ``data/real/v734-strict-smp1`` reports for the lazy boot of the same workload (:data:`LAZY_BOOT`).
* :func:`offset_evidence` - "PAGE_SIZE vs granule": ``iova_offset(iovad, phys)`` is
  ``phys & iova_mask(iovad)`` with ``iova_mask = iovad->granule - 1`` (include/linux/iova.h, 7.3), read
  from every ``dma_map_phys`` line of the capture.

No kernel analogue: this is the lab's reading of a capture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from iovalab.kernel.units import SZ_4K
from iovalab.resources import data_file
from iovalab.trace.ftrace import FtraceCapture, parse_ftrace
from iovalab.trace.lines import LineCheck, check_lines
from iovalab.trace.rerun import Rerun, reach, rerun_capture
from iovalab.trace.steps import reconstruct
from iovalab.trace.system import SystemConfig, infer_system

__all__ = ["ARM64_64K", "X86_VTD", "CAPTURES", "capture_name", "RequestLines", "CaptureRun",
           "load_capture", "run_capture", "small_read",
           "two_step_request", "IovaSpace", "iova_space", "TimelineRow", "iova_timeline", "differences",
           "OffsetEvidence", "offset_evidence", "LAZY_BOOT", "LazyRerun", "lazy_rerun"]

#: the bundled captures (package data)
ARM64_64K = ("real", "v734-arm64-64k-strict-smp1.trace")
X86_VTD = ("real", "v734-strict-smp1.trace")
#: short names the book may use for them
CAPTURES = {"arm64-64k": ARM64_64K, "x86-vtd": X86_VTD}


def capture_name(name: str | tuple[str, ...]) -> tuple[str, ...]:
    """``name`` as a path under ``data/``: a short name of :data:`CAPTURES`, a file name under
    ``data/real/`` (``"v734-strict-smp1.trace"``) or a tuple of path parts; else ValueError."""
    if isinstance(name, tuple) and name and all(isinstance(p, str) for p in name):
        return name
    if isinstance(name, str) and name:
        if name in CAPTURES:
            return CAPTURES[name]
        if name.endswith(".trace") and "/" not in name:
            return ("real", name)
    raise ValueError(f"capture {name!r} is not one of {sorted(CAPTURES)}, a data/real/*.trace file name "
                     "or a tuple of path parts under data/")


@dataclass
class RequestLines:
    """One request: the kernel's lines and the simulator's, as :func:`check_lines` recorded them."""

    lineno: int                               # its first map line in the capture
    path: str                                 # dma_map_phys | two-step | dma_alloc | msi doorbell | ...
    kernel_maps: list[tuple[int, int, int]]   # (iova, paddr, size)
    sim_maps: list[tuple[int, int, int]]
    kernel_unmaps: list[tuple[int, int, int]]  # (iova, size, unmapped_size)
    sim_unmaps: list[tuple[int, int, int]]
    dma_addr: tuple[int, int] | None = None   # (kernel, simulator), single mappings only
    event: dict | None = None                 # the closing dma:* line's fields (dma_map_phys: phys_addr, size)
    sim_flushes: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (function, start, end)

    @property
    def same(self) -> bool:
        return (self.kernel_maps == self.sim_maps and self.kernel_unmaps == self.sim_unmaps
                and (self.dma_addr is None or self.dma_addr[0] == self.dma_addr[1]))

    def rows(self) -> list[dict]:
        """A table: one row per line, kernel and simulator side by side (hex strings)."""
        out = []
        for k, s in zip(self.kernel_maps, self.sim_maps + [None] * len(self.kernel_maps), strict=False):
            out.append({"line": "map", "kernel iova": hex(k[0]), "kernel size": hex(k[2]), "kernel paddr": hex(k[1]),
                        "simulator iova": hex(s[0]) if s else "-", "simulator size": hex(s[2]) if s else "-",
                        "simulator paddr": hex(s[1]) if s else "-"})
        if self.dma_addr is not None:
            out.append({"line": "dma_addr", "kernel iova": hex(self.dma_addr[0]),
                        "simulator iova": hex(self.dma_addr[1])})
        for k, s in zip(self.kernel_unmaps, self.sim_unmaps + [None] * len(self.kernel_unmaps), strict=False):
            out.append({"line": "unmap", "kernel iova": hex(k[0]), "kernel size": hex(k[1]),
                        "simulator iova": hex(s[0]) if s else "-", "simulator size": hex(s[1]) if s else "-"})
        return out


@dataclass
class CaptureRun:
    """The capture, the system the simulator ran, its line check and every request's lines."""

    capture: FtraceCapture
    system: SystemConfig
    check: LineCheck
    requests: list[RequestLines]


def load_capture(name: str | tuple[str, ...] = ARM64_64K) -> FtraceCapture:
    """The bundled capture ``data/<name...>`` parsed (cached: the book and the tests read it often)."""
    return _load(capture_name(name))


@lru_cache(maxsize=4)
def _load(name: tuple[str, ...]) -> FtraceCapture:
    return parse_ftrace(data_file(*name))


def _requests(cap: FtraceCapture, record: dict[int, dict]) -> list[RequestLines]:
    pos = {ln.lineno: i for i, ln in enumerate(cap.lines)}
    out = []
    for lineno, r in sorted(record.items()):
        ev = None
        ln = cap.lines[pos[lineno]]
        # the dma:* line that closed a single mapping follows its map line on the same CPU
        if r["path"] in ("dma_map_phys", "dma_map_page", "dma_alloc"):
            for nxt in cap.lines[pos[lineno] + 1:]:
                if nxt.cpu == ln.cpu and nxt.event == r["path"]:
                    ev = dict(nxt.fields)
                    break
        out.append(RequestLines(lineno, r["path"], r["kernel_maps"], r["sim_maps"], r["kernel_unmaps"],
                                r["sim_unmaps"], r.get("dma_addr"), ev, r.get("sim_flushes", [])))
    return out


def run_capture(cap: FtraceCapture | None = None, system: SystemConfig | None = None,
                name: str | tuple[str, ...] = ARM64_64K) -> CaptureRun:
    """Redo every request of ``cap`` (default: the bundled capture ``name``) through the simulator with
    :func:`check_lines`; ``system`` (default: inferred from the capture) sets the simulated kernel."""
    cap = cap if cap is not None else load_capture(name)
    system = system or infer_system(cap)
    record: dict[int, dict] = {}
    chk = check_lines(cap, system, record=record)
    return CaptureRun(cap, system, chk, _requests(cap, record))


def _default_run(name: str | tuple[str, ...] = ARM64_64K) -> CaptureRun:
    return _run_of(capture_name(name))


@lru_cache(maxsize=2)
def _run_of(name: tuple[str, ...]) -> CaptureRun:
    return run_capture(name=name)


def small_read(run: CaptureRun | None = None, size: int = SZ_4K,
               name: str | tuple[str, ...] = ARM64_64K) -> RequestLines:
    """The first ``dma_map_phys`` request of ``size`` bytes whose buffer starts neither on a granule
    nor on a 4 KiB boundary (in the arm64 capture: the README's ``dma_addr=fff83610 size=4096``)."""
    run = run or _default_run(name)
    for r in run.requests:
        if r.path == "dma_map_phys" and r.event and r.event["size"] == size and r.event["dma_addr"] % SZ_4K:
            return r
    raise ValueError(f"no dma_map_phys request of {size} bytes at an offset inside a granule")


def two_step_request(run: CaptureRun | None = None, size: int = 0x40000,
                     name: str | tuple[str, ...] = ARM64_64K) -> RequestLines:
    """The first two-step request whose IOVA range (the unmap) is ``size`` bytes (default 256 KiB: in
    the arm64 capture the 196 KiB read, four 64 KiB links)."""
    run = run or _default_run(name)
    for r in run.requests:
        if r.path == "two-step" and r.kernel_unmaps and r.kernel_unmaps[0][1] == size:
            return r
    raise ValueError(f"no two-step request with a {size:#x}-byte IOVA range")


@dataclass
class IovaSpace:
    """IOVA space a workload used, from map lines: one row of :func:`iova_space`."""

    who: str
    granule: int
    map_lines: int
    mapped_bytes: int        # sum of every map line's size
    pages_4k: int            # distinct 4 KiB pages of IOVA ever mapped
    lowest: int              # lowest IOVA mapped
    largest_request: int     # largest single request's mapped bytes
    by_path: dict[str, int] = dataclasses.field(default_factory=dict)   # mapped bytes per path

    @property
    def span(self) -> int:
        """Bytes from the lowest IOVA mapped to the top of the 32-bit space the allocator starts at."""
        return (1 << 32) - self.lowest

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _space(who: str, granule: int, reqs: list[RequestLines], sim: bool) -> IovaSpace:
    pages: set[int] = set()
    n = total = 0
    low = 1 << 64
    by_path: dict[str, int] = {}
    largest = 0
    for r in reqs:
        maps = r.sim_maps if sim else r.kernel_maps
        mine = sum(m[2] for m in maps)
        largest = max(largest, mine)
        by_path[r.path] = by_path.get(r.path, 0) + mine
        for iova, _, size in maps:
            n += 1
            total += size
            low = min(low, iova)
            pages.update(range(iova >> 12, (iova + size) >> 12))
    return IovaSpace(who, granule, n, total, len(pages), low, largest, by_path)


def iova_space(run: CaptureRun | None = None, run_4k: CaptureRun | None = None,
               name: str | tuple[str, ...] = ARM64_64K) -> list[IovaSpace]:
    """Three rows: the kernel's map lines (64 KiB granule), the simulator's at 64 KiB, and the
    simulator re-running the capture's requests on ``smmuv3-4k`` with a 4 KiB ``PAGE_SIZE``
    (single mappings of ``phys_addr, size``; two-step requests of the traced links, which on this
    kernel are whole 64 KiB pages of data; coherent buffers and the doorbell of their traced extent).
    The rows are named after the capture's own granule; on a 4 KiB capture the third row repeats it."""
    run = run or _default_run(name)
    run_4k = run_4k or run_capture(run.capture, dataclasses.replace(run.system, iommu="smmuv3-4k",
                                                                  granule=SZ_4K, page_size=SZ_4K))
    kib = f"{run.system.granule // 1024} KiB pages"
    return [_space(f"kernel, {kib}", run.system.granule, run.requests, False),
            _space(f"simulator, {kib}", run.system.granule, run.requests, True),
            _space("simulator, 4 KiB pages", run_4k.system.granule, run_4k.requests, True)]


@dataclass(frozen=True)
class TimelineRow:
    """One request of a capture, in capture order: where the kernel and the simulator put it."""

    index: int                 # its place among the capture's requests (0 = first)
    lineno: int                # its first map line
    path: str
    kernel_iova: int           # lowest IOVA of its map lines
    kernel_bytes: int          # sum of its map lines' sizes
    sim_iova: int | None       # the same for the simulator (None: it mapped nothing)
    sim_bytes: int
    same: bool                 # every map, unmap and dma_addr line equal (RequestLines.same)


def iova_timeline(run: CaptureRun | None = None, name: str | tuple[str, ...] = ARM64_64K) -> list[TimelineRow]:
    """Every request of the capture in order, kernel and simulator side by side: the reviewer's view of
    the IOVA space over time."""
    run = run or _default_run(name)
    out = []
    for i, r in enumerate(run.requests):
        out.append(TimelineRow(i, r.lineno, r.path, min(m[0] for m in r.kernel_maps),
                               sum(m[2] for m in r.kernel_maps),
                               min((m[0] for m in r.sim_maps), default=None), sum(m[2] for m in r.sim_maps),
                               r.same))
    return out


def differences(run: CaptureRun | None = None, name: str | tuple[str, ...] = ARM64_64K) -> list[RequestLines]:
    """The requests whose simulator lines differ from the kernel's (empty when every line is reproduced)."""
    run = run or _default_run(name)
    return [r for r in run.requests if not r.same]


@dataclass
class OffsetEvidence:
    """Every ``dma_map_phys`` line's ``dma_addr`` against ``iova + (phys_addr mod m)`` for each ``m``."""

    granule: int
    page_size: int
    requests: int                 # dma_map_phys requests
    unaligned: int                # of them, with a dma_addr not on a granule
    offset_mod: dict[int, int]    # modulus -> requests whose dma_addr = map iova + phys % modulus
    example: RequestLines | None = None

    def rows(self) -> list[dict]:
        return [{"offset = phys mod": hex(m), "dma_addr lines it explains": k, "of": self.requests}
                for m, k in self.offset_mod.items()]


def offset_evidence(run: CaptureRun | None = None, moduli: tuple[int, ...] = (0x1000, 0x4000, 0x10000),
                    name: str | tuple[str, ...] = ARM64_64K) -> OffsetEvidence:
    """Which modulus the kernel's DMA-address offset follows: for every ``dma_map_phys`` request, is
    ``dma_addr == first map iova + phys_addr % m``? ``iova_offset()`` (include/linux/iova.h, 7.3) says
    ``m`` = the IOVA granule."""
    run = run or _default_run(name)
    singles = [r for r in run.requests if r.path == "dma_map_phys" and r.event]
    counts = {m: sum(1 for r in singles if r.event is not None and
                     r.event["dma_addr"] == r.kernel_maps[0][0] + r.event["phys_addr"] % m) for m in moduli}
    g = run.system.granule
    unaligned = sum(1 for r in singles if r.event is not None and r.event["dma_addr"] % g)
    ex = next((r for r in singles if r.event is not None and r.event["phys_addr"] % g >= SZ_4K), None)
    return OffsetEvidence(g, run.system.page_size, len(singles), unaligned, counts, ex)


#: the lazy boot of the x86 workload, as data/real/v734-strict-smp1/README.md reports it (its table of
#: event counts: ``v734-lazy-smp1``, and ``v734-lazy-smp1-iotlb``, the run that also traced the flushes);
#: the capture itself is not bundled
LAZY_BOOT = {"lowest": 0xFFE70000, "pages": 381, "pages_iotlb_run": 387, "domain_flushes_iotlb_run": 25}


@dataclass
class LazyRerun:
    """:func:`lazy_rerun`: the capture, and its requests rerun strict and lazy."""

    name: tuple[str, ...]
    kernel: list[tuple[float, int, int]]     # the capture's allocations: (time, IOVA, size)
    kernel_reach: tuple[int, int]            # (lowest IOVA, distinct granules) its map lines cover
    strict: Rerun
    lazy: Rerun

    def rows(self) -> list[dict]:
        """One row per run: lowest IOVA, distinct granules mapped, flush-queue timer runs; and, for the
        x86 capture, the README's lazy boot (its flushes: the domain-wide ones of the run that traced
        them, in brackets)."""
        g = self.strict.system.granule
        pages = f"{g // 1024} KiB pages"
        rows = [{"run": "kernel: this capture (strict)", "lowest IOVA": f"{self.kernel_reach[0]:#x}",
                 pages: self.kernel_reach[1], "timer runs": "-"}]
        for who, r in (("simulator: strict rerun", self.strict), ("simulator: lazy rerun", self.lazy)):
            lowest, n = r.reach()
            rows.append({"run": who, "lowest IOVA": f"{lowest:#x}", pages: n, "timer runs": r.timer_flushes})
        if self.name == X86_VTD:
            rows.append({"run": "kernel: lazy boot (README)", "lowest IOVA": f"{LAZY_BOOT['lowest']:#x}",
                         pages: f"{LAZY_BOOT['pages']} ({LAZY_BOOT['pages_iotlb_run']})",
                         "timer runs": f"({LAZY_BOOT['domain_flushes_iotlb_run']})"})
        return rows


def lazy_rerun(name: str | tuple[str, ...] = X86_VTD) -> LazyRerun:
    """The capture ``name``'s requests redone strict and lazy at their own times
    (:func:`iovalab.trace.rerun.rerun_capture`; the system and its ``HZ`` as the replay infers them)."""
    return _lazy_rerun_of(capture_name(name))


@lru_cache(maxsize=2)
def _lazy_rerun_of(name: tuple[str, ...]) -> LazyRerun:
    cap = _load(name)
    system = infer_system(cap)
    strict, lazy = rerun_capture(cap, strict=True, system=system), rerun_capture(cap, strict=False, system=system)
    kernel = [(st[1].timestamp, st[1].base, st[1].size) for st in reconstruct(cap, system.granule) if st[0] == "alloc"]
    mapped = reach(((ln.fields["iova"], ln.fields["size"]) for ln in cap.lines if ln.event == "map"), system.granule)
    return LazyRerun(name, kernel, mapped, strict, lazy)
