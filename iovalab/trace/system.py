"""The traced system, read from a capture's own evidence: IOMMU, IOVA granule, kernel ``PAGE_SIZE``,
reserved IOVA regions, CPUs.

A replay must build the DMA domain ``iommu_dma_init_domain()`` (drivers/iommu/dma-iommu.c, 6.17 and
7.3) built for the traced device. :func:`infer_system` decides each parameter from the capture's
lines and the model of the kernel, never from the IOVAs the kernel chose, and records every decision
with its evidence (a :class:`Decision`); a decision the evidence does not force is marked a guess.
Options (``--iommu``, ``--page-size``, ``--reserve``) override the inference.

* IOVA granule = ``1 << __ffs(domain->pgsize_bitmap)`` (``iommu_dma_init_domain``). ``__iommu_map()``
  / ``__iommu_unmap()`` (drivers/iommu/iommu.c) refuse ranges not aligned to it, so it divides every
  ``map``/``unmap`` line's IOVA and size; a single mapping (``__iommu_dma_map``) maps
  ``iova_align(size + iova_offset(phys))`` at ``dma_addr - iova_offset(dma_addr)``, which tells the
  granules that divide the lines apart (a 4 KiB buffer maps one whole 64 KiB granule).
* IOMMU: VT-d when the capture has ``intel_iommu`` events; an Arm SMMUv3 (io-pgtable-arm LPAE)
  when the granule is above 4 KiB (VT-d and AMD v1 have a 4 KiB smallest page; LPAE's granule is
  the CPU's ``PAGE_SIZE`` when the SMMU offers it, ``arm_lpae_restrict_pgsizes()``), or when a
  software-MSI doorbell is mapped: ``iommu_dma_prepare_msi()`` -> ``iommu_dma_get_msi_page()``
  allocates one granule of IOVA and maps the interrupt controller's doorbell (GICv3 ITS
  ``GITS_TRANSLATER``) with no ``dma:*`` event, never unmapped. VT-d otherwise (a guess).
* ``PAGE_SIZE``: 4 KiB on x86-64. On arm64 ``init_iova_domain()`` (drivers/iommu/iova.c) has
  ``BUG_ON(granule > PAGE_SIZE)`` and 64 KiB is the largest page; nvme-pci caps a request at
  ``dma_opt_mapping_size()`` = ``iova_rcache_range()`` = ``PAGE_SIZE << 5`` (drivers/nvme/host/pci.c
  ``nvme_pci_alloc_dev``), so the largest two-step IOVA range bounds it from below.
* Reserved regions (``iova_reserve_iommu_regions``): the x86 interrupt window 0xfee00000-0xfeefffff
  (``IOMMU_RESV_MSI``) on VT-d and AMD; SMMUv3's ``IOMMU_RESV_SW_MSI`` region is skipped there ("We
  ARE the software that manages these"), its doorbell is an ordinary allocation. PCI host-bridge
  windows (``iova_reserve_pci_windows``) are not in a capture: pass them with ``--reserve``.
* CPUs: the trace header's ``#P:`` (per-CPU rcaches and flush queues), else the highest CPU seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from iovalab.kernel.dma_iommu import DmaDomain
from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import PRESETS, IommuDomain
from iovalab.kernel.iova import iova_rcache_range
from iovalab.kernel.units import SZ_4K, SZ_16K, SZ_64K
from iovalab.kernel.version import CONFIG_HZ_VALUES, DEFAULT_HZ, DEFAULT_KERNEL, check_kernel
from iovalab.trace.ftrace import FtraceCapture
from iovalab.trace.evidence import GRANULE_CANDIDATES, CaptureEvidence
from iovalab.trace.steps import GRANULE, MAX_GRANULE, Allocation, alignment_of, reconstruct

__all__ = ["Decision", "SystemConfig", "TwoStepFacts", "infer_kernel", "infer_system", "parse_range", "IOMMU_CHOICES",
           "PAGE_SIZES"]

#: granules io-pgtable-arm offers (arm_lpae_restrict_pgsizes) and the LPAE preset of each
_LPAE_PRESET = {SZ_4K: "smmuv3-4k", SZ_16K: "smmuv3-16k", SZ_64K: "smmuv3-64k"}
#: ``--iommu`` values: every IOMMU preset, plus ``vtd`` and ``smmuv3`` (the LPAE preset of the granule)
IOMMU_CHOICES = ("vtd", "smmuv3", *sorted(PRESETS))
#: kernel page sizes the model knows (x86-64: 4K; arm64: 4K, 16K, 64K)
PAGE_SIZES = (SZ_4K, SZ_16K, SZ_64K)
#: intel_iommu trace events (drivers/iommu/intel/trace.h)
_VTD_EVENTS = ("qi_submit", "prq_report", "cache_tag_assign", "cache_tag_unassign", "cache_tag_flush_range",
               "cache_tag_flush_all", "cache_tag_flush_range_np")
_X86_MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)


@dataclass
class Decision:
    """One parameter of the simulated system: its value, why, and whether the evidence forces it."""

    what: str
    value: str
    evidence: str
    guess: bool = False

    def __str__(self) -> str:
        return f"{self.what}: {self.value}{' (a guess)' if self.guess else ''}: {self.evidence}"


@dataclass
class SystemConfig:
    """The traced system as the replay models it (see the module doc)."""

    iommu: str = "intel-vtd"        # IommuDomain preset
    arch: str = "x86_64"
    granule: int = GRANULE          # IOVA granule, bytes
    page_size: int = SZ_4K          # the kernel's PAGE_SIZE
    reserve: list[tuple[int, int]] = field(default_factory=list)   # (start, end inclusive) byte ranges
    msi_doorbell: tuple[int, int] | None = None   # (iova, paddr) of a software-MSI doorbell map
    max_request: int = 0            # largest two-step (dma_iova_*) IOVA range unmapped
    cpus: int | None = None         # #P: of the trace header
    kernel: str = "6.17"            # the modelled kernel version (iovalab.kernel.version)
    hz: int = DEFAULT_HZ            # CONFIG_HZ: the flush-queue timer's ticks (--hz; no trace line shows it)
    decisions: list[Decision] = field(default_factory=list)

    @property
    def guesses(self) -> list[Decision]:
        return [d for d in self.decisions if d.guess]

    def describe(self) -> str:
        door = f", MSI doorbell at {self.msi_doorbell[0]:#x}" if self.msi_doorbell else ""
        res = ", ".join(f"{a:#x}-{b:#x}" for a, b in self.reserve) or "none"
        return (f"{self.arch} {self.iommu}, IOVA granule {self.granule // 1024} KiB, PAGE_SIZE "
                f"{self.page_size // 1024} KiB, reserved {res}{door}, Linux {self.kernel} model")

    def model_key(self) -> tuple:
        """What the simulated system is built from (the decisions' evidence texts aside)."""
        return (self.iommu, self.arch, self.granule, self.page_size, tuple(self.reserve), self.msi_doorbell,
                self.cpus, self.kernel, self.hz)

    def as_dict(self) -> dict:
        return {"iommu": self.iommu, "arch": self.arch, "granule": self.granule, "page_size": self.page_size,
                "reserve": [list(r) for r in self.reserve], "msi_doorbell": self.msi_doorbell,
                "max_request": self.max_request, "cpus": self.cpus, "kernel": self.kernel, "hz": self.hz,
                "decisions": [vars(d) for d in self.decisions]}

    def make_domain(self, *, strict: bool, ncpus: int, log: EventLog) -> DmaDomain:
        """``iommu_dma_init_domain()`` for this system: granule, PAGE_SIZE, reserved regions, rcaches."""
        iommu = IommuDomain.preset(self.iommu, log=log, kernel=self.kernel)
        return DmaDomain(iommu, strict=strict, ncpus=ncpus, log=log, reserve=self.reserve,
                         page_size=self.page_size, kernel=self.kernel, hz=self.hz)


def parse_range(text: str) -> tuple[int, int]:
    """``"0x10000000-0x3efeffff"`` -> ``(0x10000000, 0x3efeffff)`` (inclusive end, as
    ``/sys/kernel/iommu_groups/*/reserved_regions`` and the console's host-bridge lines print it)."""
    lo, sep, hi = text.partition("-")
    try:
        a, b = int(lo, 0), int(hi, 0)
    except ValueError:
        a = b = -1
    if not sep or a < 0 or b < 0:
        raise ValueError(f"--reserve {text!r}: expected START-END, two non-negative integers")
    if a > b:
        raise ValueError(f"--reserve {text!r}: START is above END")
    return a, b


def _infer_granule(ev: CaptureEvidence) -> Decision:
    align = alignment_of(ev.align_bits)
    n = ev.map_lines
    fits = [g for g in GRANULE_CANDIDATES if g <= align and ev.single_fits[g]]
    if not n:
        return Decision("granule", "4 KiB", "no map/unmap lines: the smallest granule", guess=True)
    if not fits:   # no granule explains the single mappings: keep the alignment, say so
        return Decision("granule", f"{align // 1024} KiB", f"every one of {n} map/unmap lines is a multiple "
                        f"of it, but no granule gives __iommu_dma_map's iova_align(size + iova_offset) for all "
                        f"{ev.singles} single mappings", guess=True)
    g = max(fits)
    small = ev.single_small[g]
    text = (f"every one of {n} map/unmap lines is a multiple of it at an address aligned to it "
            f"(__iommu_map refuses less); {ev.singles} single mappings map iova_align(size + iova_offset) "
            f"for it, {small} of them smaller than one granule mapping a whole one")
    if len(fits) > 1:
        return Decision("granule", f"{g // 1024} KiB", text + f"; {', '.join(f'{x // 1024} KiB' for x in fits)}"
                        " fit as well: the largest is used", guess=True)
    return Decision("granule", f"{g // 1024} KiB", text)


class TwoStepFacts:
    """What a capture's steps tell about two-step users (no kernel analogue), gathered as the steps go
    by: the software-MSI doorbell, ``(iova, paddr)`` of the first one-granule mapping with no ``dma:*``
    event that is never unmapped (``iommu_dma_get_msi_page``), and the largest two-step range unmapped
    (nvme-pci's requests). Memory: the doorbell candidates still mapped."""

    def __init__(self, granule: int) -> None:
        self.granule = granule
        self.max_request = 0
        self._candidates: dict[int, Allocation] = {}   # id -> one-granule two-step range, in step order

    def feed(self, st: tuple) -> None:
        kind = st[0]
        if kind == "alloc":
            a = st[1]
            if a.kind == "?" and a.size == self.granule and a.freed_at is None:
                self._candidates[id(a)] = a
        elif kind == "free":
            a = st[1]
            self._candidates.pop(id(a), None)
            if a.kind == "?":
                self.max_request = max(self.max_request, a.size)

    def doorbell(self) -> tuple[int, int] | None:
        a = next((c for c in self._candidates.values() if c.kind == "?"), None)
        return (a.base, a.first_paddr) if a is not None else None


def _two_step_facts(steps: Iterable[tuple], granule: int) -> tuple[tuple[int, int] | None, int]:
    """``(doorbell, max_request)`` of :class:`TwoStepFacts` over ``steps``."""
    facts = TwoStepFacts(granule)
    for st in steps:
        facts.feed(st)
    return facts.doorbell(), facts.max_request


def infer_kernel(cap: FtraceCapture | CaptureEvidence, kernel: str | None = None) -> Decision:
    """The modelled kernel version (:mod:`iovalab.kernel.version`) for ``cap``, with its evidence.

    7.3: ``dma:dma_map_phys``/``dma_unmap_phys`` events (7.3.4 kernel/dma/mapping.c: ``dma_map_page_attrs``
    calls ``dma_map_phys``, whose tracepoint replaces ``dma_map_page``'s), or ``cache_tag_flush_range``
    lines without a ``pages`` field (7.3.4 drivers/iommu/intel/trace.h). 6.17: ``dma_map_page``/
    ``dma_unmap_page`` events, ``pages`` in the flush lines or ``cache_tag_flush_all`` (the forms before
    7.3). Neither: :data:`~iovalab.kernel.version.DEFAULT_KERNEL`, marked a guess. Evidence for both
    versions: ValueError (unless ``kernel`` is given)."""
    if kernel is not None:
        return Decision("kernel", check_kernel(kernel), "given (--kernel)")
    ev = cap if isinstance(cap, CaptureEvidence) else CaptureEvidence.of_capture(cap)
    c = ev.counts
    new, old = [], []
    phys = [k for k in ("dma_map_phys", "dma_unmap_phys") if c.get(k)]
    if phys:
        new.append(f"{' and '.join(phys)} events")
    page = [k for k in ("dma_map_page", "dma_unmap_page") if c.get(k)]
    if page:
        old.append(f"{' and '.join(page)} events")
    if ev.flush_without_pages:
        new.append(f"{ev.flush_without_pages} cache_tag_flush_range lines without pages")
    if ev.flush_with_pages:
        old.append(f"{ev.flush_with_pages} cache_tag_flush_range lines with pages")
    if c.get("cache_tag_flush_all", 0):
        old.append("cache_tag_flush_all events")
    if new and old:
        raise ValueError(f"the capture shows both 7.3 ({'; '.join(new)}) and pre-7.3 ({'; '.join(old)}) "
                         "trace forms: give --kernel")
    if new:
        return Decision("kernel", "7.3", f"{'; '.join(new)} (Linux 7.3 trace forms)")
    if old:
        return Decision("kernel", "6.17", f"{'; '.join(old)} (trace forms before 7.3; the 6.17 model)")
    return Decision("kernel", DEFAULT_KERNEL, "no dma:* map event and no IOTLB flush line tells the version",
                    guess=True)


def infer_system(cap: FtraceCapture | CaptureEvidence, *, iommu: str | None = None, page_size: int | None = None,
                 reserve: list[tuple[int, int]] | None = None, kernel: str | None = None,
                 hz: int | None = None, steps: Callable[[int], Iterable[tuple]] | None = None,
                 facts: TwoStepFacts | None = None) -> SystemConfig:
    """The simulated system for ``cap`` (module doc): an in-memory capture, or the
    :class:`~iovalab.trace.evidence.CaptureEvidence` of one read as a stream together with ``steps``,
    which gives the capture's steps (:func:`~iovalab.trace.steps.iter_steps`) for a granule: they are
    read only when no ``intel_iommu`` event settles the IOMMU (for the doorbell and the largest
    two-step range), unless ``facts`` already gathered those from the steps of the inferred granule.
    ``iommu`` (one of :data:`IOMMU_CHOICES`), ``page_size`` (bytes) and ``reserve``
    (extra ``(start, end)`` byte ranges) override the inference; ``hz`` is ``CONFIG_HZ`` (default 250,
    which no trace line shows); a bad value raises ``ValueError`` naming it and the rule."""
    if iommu is not None and iommu not in IOMMU_CHOICES:
        raise ValueError(f"--iommu {iommu!r} is not one of {', '.join(IOMMU_CHOICES)}")
    if hz is not None and hz not in CONFIG_HZ_VALUES:
        raise ValueError(f"--hz {hz!r}: CONFIG_HZ is one of {', '.join(map(str, CONFIG_HZ_VALUES))}")
    if page_size is not None and page_size not in PAGE_SIZES:
        raise ValueError(f"--page-size {page_size!r}: the kernel's PAGE_SIZE is one of 4096, 16384, 65536")
    if isinstance(cap, CaptureEvidence):
        ev = cap
        if steps is None and facts is None:
            raise ValueError("infer_system of a CaptureEvidence needs steps= (the capture's steps per granule)")
    else:
        ev = CaptureEvidence.of_capture(cap)
        steps = partial(reconstruct, cap)
    d: list[Decision] = []
    kd = infer_kernel(ev, kernel)
    d.append(kd)
    gd = _infer_granule(ev)
    d.append(gd)
    granule = int(gd.value.split()[0]) * 1024
    vtd = [k for k in _VTD_EVENTS if ev.counts.get(k)]
    # the doorbell and the largest two-step range need the steps; with intel_iommu events (no software
    # MSI doorbell on VT-d, and a 4 KiB PAGE_SIZE) they decide nothing, so a stream is not read again
    if vtd and iommu is None:
        door, max_req = None, 0
    elif facts is not None and facts.granule == granule:
        door, max_req = facts.doorbell(), facts.max_request
    elif steps is not None:
        door, max_req = _two_step_facts(steps(granule), granule)
    else:
        raise ValueError(f"the steps were gathered for a {facts.granule if facts else 0:#x} granule, "
                         f"the capture's is {granule:#x}: pass steps=")
    if iommu is not None:
        name = {"vtd": "intel-vtd", "smmuv3": _LPAE_PRESET.get(granule, "smmuv3-4k")}.get(iommu, iommu)
        d.append(Decision("iommu", name, "given (--iommu)"))
    elif vtd:
        name = "intel-vtd"
        d.append(Decision("iommu", name, f"the capture has intel_iommu events ({', '.join(vtd)})"))
    elif granule > GRANULE:
        name = _LPAE_PRESET[granule]
        d.append(Decision("iommu", name, f"Arm SMMUv3 (io-pgtable-arm LPAE): a {granule // 1024} KiB granule; "
                          "VT-d and AMD v1 have a 4 KiB smallest page"))
    elif door is not None:
        name = _LPAE_PRESET[granule]
        d.append(Decision("iommu", name, "Arm SMMUv3 (io-pgtable-arm LPAE): a software-MSI doorbell is mapped "
                          "(iommu_dma_get_msi_page); VT-d and AMD remap interrupts instead"))
    else:
        name = "intel-vtd"
        d.append(Decision("iommu", name, "a 4 KiB granule, no doorbell mapping, no intel_iommu events "
                          "(the capture's IOMMU left no other mark)", guess=True))
    bitmap = PRESETS[name]["pgsize_bitmap"]
    if bitmap & -bitmap != granule:
        raise ValueError(f"--iommu {iommu!r}: preset {name} has a {(bitmap & -bitmap) // 1024} KiB granule, "
                         f"the capture's map lines a {granule // 1024} KiB one")
    x86 = PRESETS[name]["fmt"] == "x86-64"
    arch = "x86_64" if x86 else "arm64"
    if door is not None:
        d.append(Decision("msi", f"doorbell {door[0]:#x} -> {door[1]:#x}", "one granule mapped with no dma:* "
                          "event and never unmapped (iommu_dma_prepare_msi -> iommu_dma_get_msi_page)"))
    # largest two-step range: nvme-pci's max_hw_sectors <= dma_opt_mapping_size() = PAGE_SIZE << 5
    low = next((p for p in PAGE_SIZES if p >= granule and iova_rcache_range(p) + granule >= max_req),
               SZ_64K)
    if page_size is not None:
        if x86 and page_size != SZ_4K:
            raise ValueError(f"--page-size {page_size}: {name} is an x86-64 IOMMU, whose PAGE_SIZE is 4096")
        if page_size < granule:
            raise ValueError(f"--page-size {page_size}: below the IOVA granule {granule} "
                             "(init_iova_domain: BUG_ON(granule > PAGE_SIZE))")
        page = page_size
        d.append(Decision("page_size", f"{page // 1024} KiB", "given (--page-size)"))
    elif x86:
        page = SZ_4K
        d.append(Decision("page_size", "4 KiB", "x86-64 has 4 KiB pages only"))
    elif granule == MAX_GRANULE:
        page = SZ_64K
        d.append(Decision("page_size", "64 KiB", "init_iova_domain needs PAGE_SIZE >= the 64 KiB granule, "
                          "arm64's largest page"))
    else:
        page = low
        d.append(Decision("page_size", f"{page // 1024} KiB", "arm_lpae_restrict_pgsizes makes the granule "
                          "the CPU's PAGE_SIZE when the SMMU offers it" + (
                              f"; the largest two-step range {max_req // 1024} KiB is within "
                              "PAGE_SIZE << 5 (nvme-pci's dma_opt_mapping_size) + one granule"
                              if max_req else ""), guess=True))
    regions = list(reserve or [])
    if x86:
        regions.append(_X86_MSI_WINDOW)
        d.append(Decision("reserved", "0xfee00000-0xfeefffff", "the x86 interrupt window (IOMMU_RESV_MSI "
                          "of the VT-d/AMD driver, reserved by iova_reserve_iommu_regions)"))
    for a, b in reserve or ():
        d.append(Decision("reserved", f"{a:#x}-{b:#x}", "given (--reserve)"))
    cpus = ev.nr_cpus
    if cpus:
        d.append(Decision("cpus", str(cpus), "the trace header's #P:"))
    elif ev.cpus:
        d.append(Decision("cpus", str(max(ev.cpus) + 1), "the highest CPU seen (no #P: header)", guess=True))
    return SystemConfig(iommu=name, arch=arch, granule=granule, page_size=page, reserve=regions,
                        msi_doorbell=door, max_request=max_req, cpus=cpus, kernel=kd.value,
                        hz=DEFAULT_HZ if hz is None else hz, decisions=d)
