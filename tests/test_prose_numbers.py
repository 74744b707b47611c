# ruff: noqa: E501  (ALLOWED quotes whole lines of the notebooks' prose)
"""No number in the book's prose goes stale silently (issue 11).

Every number-bearing token in a markdown cell of ``notebooks/*.ipynb`` (hex such as ``0xfffff000``, sizes
such as ``4 KiB`` / ``64K`` / ``2 MiB``, counts, percentages, ``ns`` figures, ...) must be covered by
exactly one of:

* a **claim** of :data:`CLAIMS`: ``(notebook, phrase, function)``. The phrase is quoted from the notebook
  with the simulator's result(s) marked ``«like this»``; the function calls the simulator or the lab API
  and returns that number (or a tuple, one per marked number, in order), compared for equality. Numbers
  of the phrase that are not marked are the inputs of that computation (they appear in the function).
* an **allowance** of :data:`ALLOWED`: ``(notebook, phrase, reason)`` for numbers that are not simulator
  outputs (a kernel constant named as a definition, the input of the cell below, a count of code lines),
  quoted with its phrase so that it covers only that sentence;
* a **rule** of :data:`RULES`: a regular expression for the few kinds of number that are never simulator
  output anywhere in the book (kernel versions, chapter numbers, time estimates, dates, commit and
  message ids).

A new number in prose that none of these covers fails :func:`test_every_prose_number_is_accounted_for`
with the notebook, the cell and the phrase around it. :func:`test_no_stale_phrase` fails when a quoted
phrase no longer occurs in its notebook (the sentence was rewritten: re-check and re-quote it).

Numbers are read from markdown cells with fenced code blocks and link targets blanked out; a digit run
that is part of an identifier (``smmuv3``, ``cached32_node``, ``order_base_2``) is not a number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))

_UNIT = {"K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}
# a number: hex, 1,234,567, 12 or 1.5, with an optional size/time unit; not inside an identifier
# ('x' may touch a count: 2x2M, 1x4K).
_NUMBER = re.compile(
    r"(?<![A-Za-wyz_\d.])(?<![^0-9]x)"
    r"(?P<num>0x[0-9a-fA-F]+|\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)"
    r"(?:\s?(?P<unit>KiB|MiB|GiB|K|M|G|ns|ms|%)(?![A-Za-z]))?"
    r"(?![A-Za-wyz_\d])")
_FENCE = re.compile(r"```.*?```", re.S)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_MARK = re.compile(r"«([^»]*)»")
# a count spelled out in prose ("three PTEs", "**one** unmap") may be marked as a result too
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}


def _blank(m: re.Match) -> str:
    return re.sub(r"[^\n]", " ", m.group(0))


def cell_text(source: str) -> str:
    """The prose of a markdown cell: fenced code and link targets blanked (positions kept)."""
    return _LINK_TARGET.sub(lambda m: "]" + _blank(m)[1:], _FENCE.sub(_blank, source))


def value(num: str, unit: str | None) -> float | int:
    """The value of one token: ``0x1000`` -> 4096, ``4 KiB`` -> 4096, ``3,500`` -> 3500, ``6.17`` -> 6.17."""
    if num.startswith("0x"):
        v: float | int = int(num, 16)
    elif "." in num:
        v = float(num)
    else:
        v = int(num.replace(",", ""))
    return v * _UNIT[unit] if unit in _UNIT else v


def marked_value(mark: str) -> float | int | None:
    """The value of one «mark»: a number token, or a count spelled out (``three``, ``Eight``)."""
    if mark.lower() in _WORDS:
        return _WORDS[mark.lower()]
    toks = numbers(mark)
    return toks[0][2] if len(toks) == 1 else None


def numbers(text: str) -> list[tuple[int, int, float | int]]:
    """``[(start, end, value), ...]`` of every number token of ``text``."""
    return [(m.start(), m.end(), value(m.group("num"), m.group("unit"))) for m in _NUMBER.finditer(text)]


def markdown_cells(name: str) -> list[tuple[int, str]]:
    nb = json.loads((NB_DIR / name).read_text())
    return [(i, cell_text("".join(c["source"]) if isinstance(c["source"], list) else c["source"]))
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]


# --------------------------------------------------------------------------------------------------------
# The simulator's answers (lazy imports: collection must not need the package's optional parts).

def _fp(granule: int, phys: int, size: int):
    from iovalab.lab import explain
    return explain.footprint(granule, phys, size)


def _ctr(preset: str, api: str, counter: str) -> int:
    from iovalab.lab.scenarios import run_scenario
    return int(getattr(run_scenario(preset, api, keep_events=False).counters, counter))


def _nvme_demo():
    from iovalab.lab import explain
    segs = explain.DEMO_WORKLOADS["nvme-demo"][1]
    return explain.path_totals(segs, "iova")


def _p2p(workload: str, path: str = "iova") -> dict:
    from iovalab.lab import explain
    return explain.p2p_summary(workload, path)


def _p2p_segments(workload: str) -> int:
    from iovalab.lab.scenarios import run_scenario
    return len(run_scenario(workload, "iova").device_view[0]["segments"])


def _p2p_host_bridge_prot() -> int:
    """The prot of every ``iommu_map_nosync`` of the host-bridge P2P read on the IOVA path (one value)."""
    from iovalab.lab.scenarios import run_scenario
    res = run_scenario("nvme-p2p-read-bar-host-bridge", "iova")
    (prot,) = {e.args["prot"] for e in res.log.events if e.kind == "iommu_map_calls"}
    return prot


def _sg_dip() -> tuple[int, ...]:
    from iovalab.lab import explain
    sg = explain.scaling((256, 512), contiguous=True)["paths"]["sg"]
    return (sg["pte_writes"][1], sg["table_pages"][1], sg["table_pages"][0],
            int(round(sg["modelled_ns"][0], -2)), int(round(sg["modelled_ns"][1], -1)))


def _walk(n: int = 4) -> tuple[int, ...]:
    from iovalab.lab import explain
    return tuple(a.iova for a in explain.mask_walk(64, count=n).allocs)



def _cap():
    """The real arm64 capture redone by the simulator (lab.captures), cached."""
    from iovalab.lab import captures
    if not hasattr(_cap, "run"):
        _cap.run = captures.run_capture()   # type: ignore[attr-defined]
        _cap.space = captures.iova_space(_cap.run)   # type: ignore[attr-defined]
    return _cap.run, _cap.space   # type: ignore[attr-defined]


def _offset_mod_short() -> int:
    """The smallest modulus of offset_evidence that does not explain every dma_map_phys line."""
    from iovalab.lab.captures import offset_evidence
    e = offset_evidence(_cap()[0])
    return min(m for m, k in e.offset_mod.items() if k < e.requests)
def _ch02_tree() -> tuple[int, ...]:
    """Chapter 02 cell 2: alloc_iova_fast(1), (1), (2), (3); the node of the 3-granule request."""
    from iovalab.kernel.iova import IovaDomain
    iovad = IovaDomain(0x1000, start_pfn=1)
    pfn = [iovad.alloc_iova_fast(n, 0xFFFFF) for n in (1, 1, 2, 3)][-1]
    node = iovad.find_iova(pfn)
    assert node is not None
    return node.size, node.pfn_lo, node.pfn_hi


def _ch02_hole() -> int:
    """Chapter 02 cell 5: alloc_iova(3, size_aligned) leaves a hole above it (granules between two nodes)."""
    from iovalab.kernel.iova import IovaDomain
    raw = IovaDomain(0x1000, start_pfn=1)
    nodes = [raw.alloc_iova(n, 0xFFFFF, True) for n in (1, 1, 2, 3, 1)]
    assert all(n is not None for n in nodes)
    return nodes[2].pfn_lo - nodes[3].pfn_hi - 1  # type: ignore[union-attr]


def _ch02_magazines() -> tuple[int, ...]:
    """Chapter 02 cells 15 and 17: (prev, depot magazines, depot magazine size, loaded) of CPU0's bin 0."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    dom, dev = DmaDomain("intel-vtd", ncpus=2), Device.nvme()
    a = dom.dma_map_page(dev, 0x10000000, 0x1000, cpu=0)
    dom.dma_unmap_page(dev, a, 0x1000, cpu=0)
    dom.dma_map_page(dev, 0x10000000, 0x1000, cpu=0)
    dom.dma_map_page(dev, 0x20000000, 0x1000, cpu=1)
    addrs = [dom.dma_map_page(dev, 0x40000000 + i * 0x1000, 0x1000) for i in range(300)]
    for x in addrs:
        dom.dma_unmap_page(dev, x, 0x1000)
    bin0 = dom.iovad.rcache_summary()[0]
    (loaded, prev), _cpu1 = bin0["cpus"]
    return prev, bin0["depot"], dom.iovad.rcaches[0].depot[0].size, loaded


def _ch03_map():
    """Chapter 03 cells 2, 6 and 10: a strict VT-d domain, map 0x2000 at 0x12345678, unmap, map 4 MiB."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    dom, dev = DmaDomain("intel-vtd"), Device.nvme()
    mark = dom.log.mark()
    addr = dom.dma_map_page(dev, 0x12345678, 0x2000)
    small = [e.args for e in dom.log.since(mark) if e.kind == "pte_writes"]
    node = dom.iovad.find_iova(addr >> 12)
    dom.dma_unmap_page(dev, addr, 0x2000)
    mark = dom.log.mark()
    big = dom.dma_map_page(dev, 0x40000000, 0x400000)
    large = [e.args for e in dom.log.since(mark) if e.kind == "pte_writes"]
    return dom, node, small, big, large


def _ch03_small() -> tuple[int, ...]:
    _, node, small, _, _ = _ch03_map()
    (pte,) = small
    fp = _fp(0x1000, 0x12345678, 0x2000)
    return (fp.granules, fp.iova_offset, pte["pgcount"], pte["paddr"],
            pte["paddr"] + pte["pgsize"] * pte["pgcount"] - 1, fp.granules, node.size)


def _ch03_big() -> tuple[int, ...]:
    _, _, _, big, large = _ch03_map()
    fp = _fp(0x1000, 0x40000000, 0x400000)
    (pte,) = large
    return fp.granules, fp.align_granules, big, pte["pgcount"], pte["pgsize"]


def _ch03_pgsize() -> tuple[int, ...]:
    dom, _, _, big, _ = _ch03_map()
    return dom.iommu.iommu_pgsize(big, 0x40000000, 0x400000)


def _ch03_lazy() -> tuple[int, ...]:
    from iovalab.lab import explain
    s = explain.record("demo:pages-8", "page", strict=True)
    lz = explain.record("demo:pages-8", "page", strict=False)
    return (s.state(len(s.bounds) - 1).counters.iotlb_invalidations,
            lz.state(len(lz.bounds) - 1).counters.iotlb_invalidations)


def _ch04_state() -> tuple[int, ...]:
    from iovalab.lab import explain
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
    dom, dev = DmaDomain("intel-vtd"), Device.nvme()
    phys = explain.DEMO_WORKLOADS["nvme-demo"][1][0][0]
    state = DmaIovaState()
    assert dom.dma_iova_try_alloc(dev, state, phys, 0x5600)
    pad = _fp(0x1000, phys, 0x5600).iova_offset
    return state.addr - pad, pad


def _nvme_prps() -> tuple[int, ...]:
    from iovalab.lab.scenarios import run_scenario
    view = run_scenario("nvme-spec-example", api="iova").device_view[0]
    (prps,) = view["prp_lists"]
    return view["prp1"], prps["entries"][0], prps["entries"][-1]


def _blk_can_dma_map_iova(iommu: str) -> tuple[int, ...]:
    """``(virt_boundary, merge_boundary, (virt_boundary + 1) & merge_boundary)`` as the NVMe driver's
    ``blk_can_dma_map_iova()`` step reports them for nvme-spec-example on ``iommu``."""
    from iovalab.lab import explain
    from iovalab.lab.scenarios import iter_scenario
    pre = explain.preset_dict("nvme-spec-example")
    pre["iommu"] = iommu
    # the prose states 6.17's rule; 7.3.4 tests req_phys_gap_mask(req) instead (blk_iova_gap_mask)
    for step in iter_scenario(pre, "iova", kernel="6.17"):
        m = re.search(r"blk_can_dma_map_iova: \(virt_boundary (0x[0-9a-f]+) \+ 1\) & merge_boundary "
                      r"(0x[0-9a-f]+) = (0x[0-9a-f]+)", step.get("what", ""))
        if m:
            return tuple(int(g, 16) for g in m.groups())
    raise AssertionError(f"no blk_can_dma_map_iova step on {iommu}")


def _vfio(api: str):
    from iovalab.lab.scenarios import run_scenario
    return run_scenario("vfio-migration-4mib", api=api)


def _vfio_nents() -> int:
    (n,) = [e.args["nents"] for e in _vfio("sg").log.events if e.kind == "driver" and "nents" in e.args
            and "dir" in e.args]
    return n


def _vfio_bookkeeping() -> tuple[int, ...]:
    iova, page, sg = (_vfio(api).bookkeeping for api in ("iova", "page", "sg"))
    assert iova == page, (iova, page)
    sgl = sg["struct scatterlist (incl. chain slots)"]
    return (iova["page_list (struct page * per page)"], sum(iova.values()), _vfio_nents(), sgl // 32, sgl,
            sum(sg.values()))


def _vfio_unwind(kernel: str = "6.17") -> tuple[int, ...]:
    """Chapter 07 cells 9 (6.17) and 11 (7.3): reserve 8 pages, link 4, then register_dma_pages()'s unwind."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState
    from iovalab.kernel.iova import iova_rcache_bin
    dom, dev = DmaDomain("intel-vtd", kernel=kernel), Device.mlx5()
    state = DmaIovaState()
    dom.dma_iova_try_alloc(dev, state, 0, 8 * 0x1000)
    node = dom.iovad.find_iova(state.addr >> 12)
    for i in range(4):
        dom.dma_iova_link(dev, state, 0x40000000 + i * 0x3000, i * 0x1000, 0x1000)
    mark = dom.log.mark()
    dom.dma_iova_destroy(dev, state, 4 * 0x1000)
    ev = dom.log.since(mark)
    unmaps = [e.args for e in ev if e.kind == "pte_clear"]
    syncs = [e for e in ev if e.kind == "iotlb_invalidations"]
    (free,) = [e.args for e in ev if e.kind == "iova_frees"]
    (ins,) = [e.args for e in ev if e.kind == "rcache_insert"]
    return (len(unmaps), unmaps[0]["pgcount"], len(syncs), free["size"], free["size"] * dom.granule,
            node.size, ins["bin"], iova_rcache_bin(node.size))


def _hint(phys: int, size: int) -> dict:
    from iovalab.lab.review import hint_effect
    return hint_effect(phys, size, granule=0x1000)


def _per_request(kind: str) -> tuple[int, int]:
    """Chapter 08's scaling: ``kind`` per request on the ``sg`` and ``iova`` paths (one value whatever
    *n*), while the ``page`` path makes *n*."""
    from iovalab.lab import explain
    n = (1, 8, 64)
    paths = explain.scaling(n)["paths"]
    assert list(paths["page"][kind]) == list(n), paths["page"][kind]
    sg, iova = set(paths["sg"][kind]), set(paths["iova"][kind])
    assert len(sg) == 1 and len(iova) == 1, (sg, iova)
    return sg.pop(), iova.pop()


def _x86():
    """The real x86 VT-d + NVMe 7.3.4 capture redone by the simulator (lab.captures), cached."""
    from iovalab.lab import captures
    if not hasattr(_x86, "run"):
        _x86.run = captures.run_capture(name="x86-vtd")   # type: ignore[attr-defined]
    return _x86.run   # type: ignore[attr-defined]


def _rerun():
    """Chapter 12's lazy rerun: the strict rerun's reach, the lazy rerun's reach and timer runs; the lazy
    boot's figures the sentence compares them with (381, 387 pages; 25 flushes) are the README's,
    :data:`iovalab.lab.captures.LAZY_BOOT`, checked here as the inputs they are."""
    from iovalab.lab import captures
    r = captures.lazy_rerun("x86-vtd")
    boot = captures.LAZY_BOOT
    assert (boot["pages"], boot["pages_iotlb_run"], boot["domain_flushes_iotlb_run"]) == (381, 387, 25)
    (s_low, s_pages), (l_low, l_pages) = r.strict.reach(), r.lazy.reach()
    return s_low, s_pages, l_low, l_pages, r.lazy.timer_flushes


CLAIMS: list[tuple[str, str, Callable[[], Any]]] = [
    ("12-linux-7.3-real-capture.ipynb", "The strict rerun gives exactly this capture's reach («0xffeb0000», «312» pages). "
     "The lazy rerun reaches\n«0xffe70000», where the real lazy boot stopped, with «388» distinct pages against its 381 "
     "(387 in the run that\ntraced flushes), and its timer ran «24» times against that run's 25 domain-wide flushes.",
     _rerun),
    ("12-linux-7.3-real-capture.ipynb", "All «7697» map/unmap lines come out of the simulator as the kernel wrote them",
     lambda: (_x86().check.reproduced if _x86().check.reproduced == _x86().check.lines else -1)),
    ("09-reviewer-lab.ipynb", "a real «64K»-page kernel", lambda: _cap()[0].system.page_size),
    ("09-reviewer-lab.ipynb", "A «4 KiB» modulus explains just the buffers whose offset inside the granule is below one «4 KiB» page",
     lambda: (_offset_mod_short(),) * 2),
    ("09-reviewer-lab.ipynb", "a «64K»-page kernel behind a «4K»-granule SMMU",
     lambda: (_cap()[0].system.page_size, _cap()[1][2].granule)),
    ("09-reviewer-lab.ipynb", "### IOVA space of the whole workload, «64K» pages vs «4K»",
     lambda: (_cap()[1][0].granule, _cap()[1][2].granule)),
    ("09-reviewer-lab.ipynb", "a «4 KiB» granule with a «4 KiB» `PAGE_SIZE`, next to the kernel and the simulator at «64 KiB»",
     lambda: (_cap()[1][2].granule, _cap()[1][2].granule, _cap()[1][1].granule)),
    ("09-reviewer-lab.ipynb", "the real and simulated «64K» runs", lambda: _cap()[1][1].granule),
    ("00-start-here.ipynb", "one node of «8» granules", lambda: _fp(0x1000, 0x200, 0x5600).node_granules),
    ("00-start-here.ipynb", "a single address, `«0xffff8200»`", lambda: _fp(0x1000, 0x200, 0x5600).fresh_addr),
    ("01-iova-granule-and-offset.ipynb", "starts `«0x234»` bytes into a 4 KiB granule and ends `«0xdcc»` bytes",
     lambda: (_fp(0x1000, 0x1234, 0x3000).iova_offset, _fp(0x1000, 0x1234, 0x3000).tail)),
    ("01-iova-granule-and-offset.ipynb", "the IOVA node `«0xffffc000»`-`0xffffffff` («4» granules)",
     lambda: (_fp(0x1000, 0x1234, 0x3000).fresh_iova, _fp(0x1000, 0x1234, 0x3000).node_granules)),
    ("01-iova-granule-and-offset.ipynb", "the DMA address\n`«0xffffc234»`", lambda: _fp(0x1000, 0x1234, 0x3000).fresh_addr),
    ("01-iova-granule-and-offset.ipynb", "`0x3234` becomes `«0x4000»`", lambda: _fp(0x1000, 0x1234, 0x3000).iova_len),
    ("01-iova-granule-and-offset.ipynb", "The IOVA footprint grows from `«0x4000»` to `«0x10000»` bytes",
     lambda: (_fp(0x1000, 0x1234, 0x3000).iova_len, _fp(0x10000, 0x1234, 0x3000).iova_len)),
    ("01-iova-granule-and-offset.ipynb", "becomes `«0xffff1234»`", lambda: _fp(0x10000, 0x1234, 0x3000).fresh_addr),
    ("01-iova-granule-and-offset.ipynb", "Two granules, `«0x2000»` bytes", lambda: _fp(0x1000, 0x1ff0, 0x20).iova_len),
    ("01-iova-granule-and-offset.ipynb", "a 65-granule mapping starts on a «128»-granule boundary",
     lambda: _fp(0x1000, 0, 65 * 0x1000).align_granules),
    ("01-iova-granule-and-offset.ipynb", "aligns the node to «8» granules; «3» granules stay unmapped",
     lambda: (_fp(0x1000, 0, 0x5000).align_granules, _fp(0x1000, 0, 0x5000).waste // 0x1000)),
    ("02-the-iova-allocator.ipynb", "`«0xfffff000»`, `«0xffffe000»`, `«0xffffd000»`, `«0xffffc000»`", _walk),
    ("04-two-step-api.ipynb", "`iova_align(0x5600 + 0x200) = «0x6000»`: «6» granules, rounded to a node of «8» at `«0xffff8000»`",
     lambda: (_fp(0x1000, 0x200, 0x5600).iova_len, _fp(0x1000, 0x200, 0x5600).granules,
              _fp(0x1000, 0x200, 0x5600).node_granules, _fp(0x1000, 0x200, 0x5600).fresh_iova)),
    ("05-nvme.ipynb", "allocates «32» IOVAs, syncs «32» times and invalidates «32» times",
     lambda: tuple(_ctr("nvme-128k-scattered", "page", c) for c in ("iova_allocs", "iotlb_syncs", "iotlb_invalidations"))),
    ("05-nvme.ipynb", "links «32» times", lambda: _ctr("nvme-128k-scattered", "iova", "iommu_map_calls")),
    ("05-nvme.ipynb", "«1» allocation, «4» map calls (one per `dma_iova_link()`), «1» sync and «1» invalidation",
     lambda: tuple(_nvme_demo().get(k, 0) for k in ("iova_allocs", "iommu_map_calls", "iotlb_syncs", "iotlb_invalidations"))),
    ("05-nvme.ipynb", "are the same read, «2» requests of\n«two» chunks of the BAR each",
     lambda: (_p2p("nvme-p2p-read-bar")["requests"], _p2p_segments("nvme-p2p-read-bar"))),
    ("05-nvme.ipynb", "`iommu_map_nosync(...)` with `prot=«0x12» (IOMMU_WRITE|IOMMU_MMIO)`", _p2p_host_bridge_prot),
    ("05-nvme.ipynb", "passes `DMA_ATTR_MMIO`, so all «4» map calls carry `IOMMU_MMIO`",
     lambda: _p2p("nvme-p2p-read-bar-host-bridge", "iova")["with IOMMU_MMIO"]),
    ("05-nvme.ipynb", "so its «4» map calls carry\n`IOMMU_CACHE` and no `IOMMU_MMIO`",
     lambda: _p2p("nvme-p2p-read-bar-host-bridge", "sg")["with IOMMU_CACHE"]
     if not _p2p("nvme-p2p-read-bar-host-bridge", "sg")["with IOMMU_MMIO"] else -1),
    ("06-hmm.ipynb", "«4096»: HMM syncs each page", lambda: _ctr("hmm-16mib-strided", "iova", "iotlb_syncs")),
    ("08-cost-and-scaling.ipynb", "**one** PTE write instead of 512, and no last-level table page («2» instead of «3»). "
     "The modelled time falls from about «3,500 ns» (256 pages) to\nabout «2,210 ns»", lambda: _sg_dip()[1:]),
    ("01-iova-granule-and-offset.ipynb", "the same address, `«0x4»` PTEs against none", lambda: _fp(0x1000, 0x1234, 0x3000).fresh_ptes),
    ("02-the-iova-allocator.ipynb", "- the 3-granule request was rounded to «4» by `alloc_iova_fast()` before it reached the tree (chapter 01),\n"
     "  so it fills `«0xffff8»`-`«0xffffb»`.", _ch02_tree),
    ("02-the-iova-allocator.ipynb", "Three granules aligned to 4 leave «one» granule free", _ch02_hole),
    ("02-the-iova-allocator.ipynb", "«127» pfns in `prev`, «one» full magazine («127») in the depot, the other «46» in `loaded`",
     _ch02_magazines),
    ("03-map-page-path.ipynb", "The buffer `0x12345678`-`0x12347677` touches «three» 4 KiB granules (offset `«0x678»`), so «three» PTEs map\n"
     "`«0x12345000»`-`«0x12347fff»`; the allocator rounded «3» granules to a node of «4».", _ch03_small),
    ("03-map-page-path.ipynb", "(«1024» granules: no rounding, but\naligned to «1024»; here `«0xff800000»`, because the node of the first "
     "mapping still sits in the rcache and the\nwalk starts below it), so VT-d maps it with **«two»** «2 MiB» entries:", _ch03_big),
    ("03-map-page-path.ipynb", "Both addresses are 2 MiB aligned and the bitmap has 2M (4K|2M|1G); 1 GiB pages do not fit, "
     "so `iommu_pgsize()` returns «2 MiB» with count «2».", _ch03_pgsize),
    ("03-map-page-path.ipynb", "«Eight» invalidations (one per `dma_unmap_page()`) in the strict domain, «one» `flush_iotlb_all` in the lazy",
     _ch03_lazy),
    ("04-two-step-api.ipynb", "`state->addr = «0xffff8000» + «0x200»`", _ch04_state),
    ("05-nvme.ipynb", "PRP1 `«0xffff8200»` carries the first segment's offset; the PRP list `«0xffff9000»` ... `«0xffffd000»` has",
     _nvme_prps),
    ("05-nvme.ipynb", "`(queue_virt_boundary + 1) & dma_get_merge_boundary(dev)` is «0» (NVMe's virt boundary «0xfff», VT-d's merge\n"
     "   boundary «0xfff»)", lambda: _blk_can_dma_map_iova("intel-vtd")[2:] + _blk_can_dma_map_iova("intel-vtd")[:2]),
    ("05-nvme.ipynb", "On an SMMU with 64 KiB pages the merge boundary is «0xffff», and\n`(0xfff + 1) & 0xffff != 0`",
     lambda: _blk_can_dma_map_iova("smmuv3-64k")[1]),
    ("05-nvme.ipynb", "`blk_can_dma_map_iova()` needs `(virt_boundary + 1) & merge_boundary == 0`; with a 4 KiB virt boundary and a «0xffff» merge boundary it is «0x1000», so the block layer falls back",
     lambda: _blk_can_dma_map_iova("smmuv3-64k")[1:]),
    ("07-vfio.ipynb", "so «256» entries for runs of 4", _vfio_nents),
    ("07-vfio.ipynb", "page, 1024 x 8 = «8192» bytes, plus the 16-byte `struct dma_iova_state` embedded in the buffer (there even\n"
     "when the `dma_map_page()` fallback runs): «8208». The pre-6.16 `sg` path keeps no page list but a\n"
     "`struct sg_append_table` (32 bytes) and its scatterlist: «256» entries for 1024 pages in runs of 4, allocated\n"
     "128 slots at a time with the last slot of a full chunk used as the chain link, so «258» slots of 32 bytes =\n"
     "«8256»; «8288» in all. The MTT (8 bytes per page)", lambda: _vfio_bookkeeping()),
    ("07-vfio.ipynb", "Read the events (Linux 6.17, which `kernel=\"6.17\"` selects): **«one»** unmap of the 4 linked pages (`pgcount=«0x4»`),\n«one» IOTLB sync, and the IOVA freed "
     "with size «4» granules, `iova_align(mapped_len + pad)` = «0x4000», although\n`dma_iova_try_alloc()` reserved «8»: the "
     "tree node goes, but the rcache files the range under bin «2» (4\ngranules) instead of bin «3» (8). No page-table entry of pages 4-7 existed", _vfio_unwind),
    ("07-vfio.ipynb", "Under 7.3 the unmap and its sync are the same, but the IOVA is freed with the reserved size, «8»\n"
     "granules, so the rcache files it under bin «3», the bin it was allocated from.",
     lambda: (_vfio_unwind("7.3")[3], _vfio_unwind("7.3")[6])),
    ("09-reviewer-lab.ipynb", "With `phys = 0` the *reserved length* is `«0x3000»` («three» granules), but the *tree footprint* is `«0x4000»`",
     lambda: (_hint(0, 0x3000)["reserved_phys"], _hint(0, 0x3000)["reserved_phys"] // 0x1000, _hint(0, 0x3000)["tree_phys"])),
    ("09-reviewer-lab.ipynb", "`(0x1234, 0x3000)`: `iova_align(0x3000 + 0x234) = «0x4000»` with the real `phys`, `«0x3000»` with 0. "
     "`(0x1234, 0x2dcc)`: `0x2dcc + 0x234 = «0x3000»` ends on a boundary, so `«0x3000»` either way.",
     lambda: (_hint(0x1234, 0x3000)["reserved_phys"], _hint(0x1234, 0x3000)["reserved_0"],
              _hint(0x1234, 0x2dcc)["reserved_phys"], _hint(0x1234, 0x2dcc)["reserved_0"])),
    ("08-cost-and-scaling.ipynb", "and invalidations stay at «1» on the `sg` and `iova` paths and grow linearly on the `page` path",
     lambda: tuple({v for k in ("iova_allocs", "iotlb_invalidations") for v in _per_request(k)})),
    ("08-cost-and-scaling.ipynb", "`page`: n (one per `dma_unmap_page()`); `sg`: «1» (one `dma_unmap_sg()`); `iova`: «1» (one `dma_iova_destroy()`).",
     lambda: _per_request("iotlb_invalidations")),
]

# Reasons of ALLOWED. INPUT: the numbers of the line are the example's inputs (a phys, a size, a preset's
# page count), kernel constants or struct sizes quoted as definitions (magazine of 127 pfns, 256 flush-queue
# slots, 10 ms timer, 8-byte dma_addr_t), arguments of a quoted kernel call or list numbering. A result
# of the simulator has no allowance: it is a claim (test_allowances_are_not_results).
INPUT = "input of the example, kernel constant or definition (not a simulator output)"
HINT = "the hint value 0 passed to dma_iova_try_alloc() (an argument, not a result)"

ALLOWED: list[tuple[str, str, str]] = [
    ("12-linux-7.3-real-capture.ipynb", "Here is the first request whose range is 64 KiB", INPUT),
    ("12-linux-7.3-real-capture.ipynb", "with `CONFIG_HZ=250` (the captured\nkernel's config)", INPUT),
    ("12-linux-7.3-real-capture.ipynb", "`mod_timer(jiffies + msecs_to_jiffies(10))` in `queue_iova()`", INPUT),
    ("12-linux-7.3-real-capture.ipynb", 'runs the same 196 KiB read through the two-step API', INPUT),
    ('00-start-here.ipynb', 'Chapters 01-04 build on each other; 05-07 can be read in any order after 04; 08 needs 03-05.',
     INPUT),
    ('00-start-here.ipynb', 'Below, an NVMe read of four scattered buffers (0x5600 bytes; the first starts 0x200 bytes into its page)',
     INPUT),
    ('00-start-here.ipynb', 'and 02 explain every one of those numbers, 04 and 05 how the driver got there.',
     INPUT),
    ('00-start-here.ipynb', 'The granule explorer shows the IOVA footprint of one buffer. Change the granule from 4 KiB to 64 KiB, or',
     INPUT),
    ('00-start-here.ipynb', 'type a new `phys` or `size` (hex, decimal, or `16K`) and press Enter.',
     INPUT),
    ('00-start-here.ipynb', '`intel-vtd` for 4 KiB, the same Intel VT-d as the picture above, and an Arm SMMUv3 (`smmuv3-16k`,',
     INPUT),
    ('00-start-here.ipynb', '`smmuv3-64k`) for 16 and 64 KiB, the granules only arm64\'s page tables offer. Its x-axis label names the',
     INPUT),
    ('00-start-here.ipynb', 'From the iovalab simulator, which follows the kernel functions step by step. Call the same function in a cell, e.g. `explain.footprint(0x1000, 0x1234, 0x3000)` for what the granule explorer shows.',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '- why a 5-granule mapping occupies 8 granules of IOVA space (`alloc_iova_fast()` rounding);',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'An IOMMU maps whole granules (the smallest page its page table supports). A buffer of `0x3000` bytes at',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'physical address `0x1234` starts `0x234` bytes into a 4 KiB granule and ends `0xdcc` bytes short of one.',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'on a fresh domain; the buffer sits `0x234` bytes into it, so the device is given the DMA address',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '- `iova_offset(iovad, phys) = phys & (granule - 1)`: the start pad, here `0x234`;',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '1UL << order, base_pfn)`. Intel VT-d supports 4K|2M|1G, so its granule is 4 KiB; an Arm SMMUv3 using a',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '64 KiB translation granule supports 64K|512M, so its IOVA granule is 64 KiB.',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '`drivers/iommu/iova.c: init_iova_domain()` has `BUG_ON(granule > PAGE_SIZE)`: 16 KiB and 64 KiB granules',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'exist only on kernels with 16 KiB or 64 KiB pages (arm64). `io-pgtable-arm` picks the granule that matches',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'The offset of `0x1234` inside a 64 KiB granule is all of `0x1234`, and `0x1234 + 0x3000` rounds up to a',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'whole `0x10000`. The IOVA footprint grows from `0x4000` to `0x10000` bytes; the DMA address on a fresh',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'A footprint of 5 granules does not take 5 granules of IOVA space. `drivers/iommu/iova.c:',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'alloc_iova_fast()` rounds any request below 32 granules (`1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`) up to a',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '1)`). The 3 granules after the mapped part are allocated, unmapped, and unusable until the node is freed:',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'From 32 granules up there is no rounding (the rcache does not cache such sizes), but the node is still',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '- `phys = 0x1ff0`, `size = 0x20`: 32 bytes that straddle a granule boundary;',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '- `size = 0x5000` with `phys = 0`, then `phys = 0x10`: when does the node double?',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '0). The entries come later, with `dma_iova_link()` (chapter 04). The last rows of `describe()` above show',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '**1. With a 4 KiB granule, how many granules does a 32-byte buffer at phys 0x1ff0 need, and how long is its IOVA range?**',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', 'Two granules, `0x2000` bytes: `iova_offset = 0xff0`, `0xff0 + 0x20 = 0x1010`, rounded up to `0x2000`. Check: `explain.footprint(0x1000, 0x1ff0, 0x20).iova_len`.',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '**2. A mapping needs 5 granules. How many granules of IOVA space does the allocator node take, and why?**',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '8. `alloc_iova_fast()` rounds sizes below 32 granules up to a power of two (so the range fits an rcache size bin) and `__alloc_and_insert_iova_range()` aligns the node to 8 granules; 3 granules stay unmapped.',
     INPUT),
    ('01-iova-granule-and-offset.ipynb', '**3. Can a kernel with 4 KiB pages use a 64 KiB IOVA granule?**',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'We ask `alloc_iova_fast()` for 1, 1, 2 and 3 granules below 4 GiB (`limit_pfn = 0xfffff`, inclusive),',
     INPUT),
    ('02-the-iova-allocator.ipynb', '`alloc_iova()` does not round. Three granules aligned to 4 leave one granule free, and the next allocation',
     INPUT),
    ('02-the-iova-allocator.ipynb', '`iommu_setup_dma_ops()` unless the boot option `iommu.forcedac=1`), it first tries `alloc_iova_fast(...,',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'Here only 16 KiB of IOVA space below 4 GiB is free (the rest was reserved at domain set-up, as',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'The VT-d aperture ends at `2^48 - 1`, so a 64-bit mask becomes a 48-bit limit, hence "Using **48**-bit".',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'Try it: change the mask, tick `iommu.forcedac=1`, pick a bus limit, untick "PCI device".',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'cache: `iova_rcache_insert()` picks the bin `order_base_2(size)` (6 bins: 1, 2, 4, 8, 16, 32 granules)',
     INPUT),
    ('02-the-iova-allocator.ipynb', "and pushes the pfn into that CPU's `loaded` magazine (127 pfns). The node **stays in the tree**.",
     INPUT),
    ('02-the-iova-allocator.ipynb', 'empty one. 300 single-granule frees on CPU0:',
     INPUT),
    ('02-the-iova-allocator.ipynb', '`iova_depot_work_func()` (every 100 ms) returns depot magazines to the tree only while the depot holds',
     INPUT),
    ('02-the-iova-allocator.ipynb', 'to the tree and tries once more. Below, a 32-bit device on a domain with 16 KiB free below 4 GiB maps and',
     INPUT),
    ('02-the-iova-allocator.ipynb', '**2. Why does a 3-granule `alloc_iova_fast()` take 4 granules, and where can it start?**',
     INPUT),
    ('02-the-iova-allocator.ipynb', '`alloc_iova_fast()` rounds sizes below 32 granules up to a power of two for the rcache bins; the tree walk aligns the start to that size, so the node starts on a multiple of 4 granules.',
     INPUT),
    ('03-map-page-path.ipynb', '- how `iommu_pgsize()` chooses page sizes (and when one page-table entry maps 2 MiB);',
     INPUT),
    ('03-map-page-path.ipynb', 'A fresh VT-d domain (strict), an NVMe controller, and 0x2000 bytes at physical `0x12345678`. The event log',
     INPUT),
    ('03-map-page-path.ipynb', 'start. A 4 MiB buffer at physical `0x40000000` gets a 4 MiB-aligned IOVA (1024 granules: no rounding, but',
     INPUT),
    ('03-map-page-path.ipynb', 'unaligned example of drivers/iommu/iommu.c: `iommu_pgsize()` (6.17): a 4 KiB head up to the 2 MiB boundary, then two 2 MiB pages:',
     INPUT),
    ('03-map-page-path.ipynb', 'skips the invalidation and calls `queue_iova()`: the IOVA waits in a per-CPU flush queue (256 slots)',
     INPUT),
    ('03-map-page-path.ipynb', 'until one `flush_iotlb_all` invalidates everything, from the 10 ms timer (`fq_flush_timeout()`) or when a',
     INPUT),
    ('03-map-page-path.ipynb', '**3. Why does a 4 MiB mapping from a 4 MiB-aligned IOVA to physical `0x40000000` need only two PTEs on VT-d?**',
     INPUT),
    ('04-two-step-api.ipynb', '| `dma_iova_destroy(dev, state, mapped_len, dir, attrs)` | unmap `[0, mapped_len)`, free the IOVA | free | unmap | sync or flush queue |',
     INPUT),
    ('04-two-step-api.ipynb', 'Four segments of an NVMe read (block/blk-mq-dma.c: `blk_rq_dma_map_iova()`, 6.17): 0x5600 bytes, the first starting at offset 0x200.',
     INPUT),
    ('04-two-step-api.ipynb', 'One-shot users (NVMe, VFIO) call `dma_iova_destroy()`: one unmap over `[0, mapped_len)`, one',
     INPUT),
    ('04-two-step-api.ipynb', '`WARN_ON_ONCE(pad && offset > 0)` and `-EIO`. The simulator records the WARN, raises `DmaError`, and',
     INPUT),
    ('04-two-step-api.ipynb', '**A size of 0.** `dma_iova_try_alloc()` warns (`WARN_ON_ONCE(!size)`) and returns false; the state is',
     INPUT),
    ('04-two-step-api.ipynb', 'the state then carries `DMA_IOVA_USE_SWIOTLB` (bit 63 of `__size`) so that unlink copies data back.',
     INPUT),
    ('04-two-step-api.ipynb', "Each link maps whole granules from `phys - pad`, at `state->addr + offset - pad`. With `offset > 0` that granule would overlap the previous range's last granule; the kernel refuses with WARN_ON_ONCE and `-EIO`.",
     INPUT),
    ('05-nvme.ipynb', '- what changes for a 128 KiB read of scattered pages.',
     INPUT),
    ('05-nvme.ipynb', '1. `blk_rq_dma_map_iter_start()`: first segment; `blk_can_dma_map_iova()` checks',
     INPUT),
    ('05-nvme.ipynb', '2. `dma_iova_try_alloc(dev, state, first.paddr, payload)`: one IOVA for the whole request;',
     INPUT),
    ('05-nvme.ipynb', '3. `blk_rq_dma_map_iova()`: `dma_iova_link()` per physical segment at the running offset, one',
     INPUT),
    ('05-nvme.ipynb', '4. `nvme_pci_setup_data_prp()`: PRP1 = `state->addr` (the only unaligned PRP), then one 4 KiB-aligned PRP per',
     INPUT),
    ('05-nvme.ipynb', '5. completion, `nvme_unmap_data()` -> `blk_rq_dma_unmap()` -> `dma_iova_destroy(mapped_len = payload)`.',
     INPUT),
    ('05-nvme.ipynb', '## A 128 KiB read of scattered pages',
     INPUT),
    ('05-nvme.ipynb', '`nvme-128k-scattered`: 32 pages, each its own physical chunk. The page path (`blk_dma_map_direct()`, one',
     INPUT),
    ('05-nvme.ipynb', 'and one sync too, but a scatterlist of 32 bytes per segment to build and keep.',
     INPUT),
    ('05-nvme.ipynb', 'Why 128 KiB? Behind an IOMMU the NVMe driver caps a request at `dma_opt_mapping_size()` =',
     INPUT),
    ('05-nvme.ipynb', '`iova_rcache_range()` = `PAGE_SIZE << 5` (`max_hw_sectors`), and the block layer splits larger I/O:',
     INPUT),
    ('05-nvme.ipynb', '`(0xfff + 1) & 0xffff != 0`: `blk_can_dma_map_iova()` is false, so every segment is mapped with',
     INPUT),
    ('05-nvme.ipynb', "Only PRP1. `dma_iova_try_alloc()` is given the first segment's physical address, so `state->addr` keeps its offset (`0x200`); every later page of the contiguous range is 4 KiB aligned.",
     INPUT),
    ('05-nvme.ipynb', '**4. A 4 KiB read: which path does it take?**',
     INPUT),
    ('06-hmm.ipynb', '`hmm_dma_map_alloc(dev, map, nr_entries, dma_entry_size)` calls `dma_iova_try_alloc(dev, &map->state, 0,',
     INPUT),
    ('06-hmm.ipynb', 'idx * entry_size, entry_size, DMA_BIDIRECTIONAL, 0)` **and** `dma_iova_sync(dev, state, idx *',
     INPUT),
    ('06-hmm.ipynb', '`hmm-256k-strided` is a player-sized version of the `hmm-16mib-strided` preset: 64 pages faulted with',
     INPUT),
    ('06-hmm.ipynb', 'stride 16, then pages 0-7 invalidated, then tear-down.',
     INPUT),
    ('06-hmm.ipynb', 'The whole 256 KiB window is one IOVA node from the start; the page table fills in as faults arrive,',
     INPUT),
    ('06-hmm.ipynb', '## At 16 MiB',
     INPUT),
    ('06-hmm.ipynb', "The full preset (4096 pages). Counters and modelled time per path, then the driver's bookkeeping: the",
     INPUT),
    ('06-hmm.ipynb', 'IOVA path needs no `dma_list` (8 bytes per entry) because the address is computed.',
     INPUT),
    ('06-hmm.ipynb', '**2. How many `dma_iova_sync()` calls does faulting 4096 pages cost, and how does that compare with VFIO (chapter 07)?**',
     INPUT),
    ('06-hmm.ipynb', 'The `dma_list` entry, 8 bytes (`dma_addr_t`) per page; `pfn_list` (8 bytes per entry) is needed on both paths.',
     INPUT),
    ('07-vfio.ipynb', '`register_dma_pages(mdev, npages, page_list, mkey_in, state, dir)`: if `dma_iova_try_alloc(dev, state, 0,',
     INPUT),
    ('07-vfio.ipynb', 'i * PAGE_SIZE, PAGE_SIZE, dir, 0)`, write MTT entry *i* = `state->addr + i * PAGE_SIZE`, and after the',
     INPUT),
    ('07-vfio.ipynb', 'loop call `dma_iova_sync(dev, state, 0, mapped)` **once**. `unregister_dma_pages()` is one',
     INPUT),
    ('07-vfio.ipynb', '`dma_iova_destroy(dev, state, npages * PAGE_SIZE, dir, 0)`. If `dma_iova_try_alloc()` fails, every page is',
     INPUT),
    ('07-vfio.ipynb', '`vfio-migration-256k` is a player-sized version of the `vfio-migration-4mib` preset: 64 pages, in runs',
     INPUT),
    ('07-vfio.ipynb', '## At 4 MiB',
     INPUT),
    ('07-vfio.ipynb', '1024 pages. The `sg` variant builds a scatterlist from the page array',
     INPUT),
    ('07-vfio.ipynb', 'run) and 32 bytes per scatterlist entry to keep.',
     INPUT),
    ('07-vfio.ipynb', 'How to read it. `iova` and `page` keep the same host memory: `page_list`, one `struct page *` (8 bytes) per',
     INPUT),
    ('07-vfio.ipynb', 'is `dma_iova_destroy(dev, state, i * PAGE_SIZE, dir, 0)`: one unmap of the *i* linked pages and the IOVA',
     INPUT),
    ('07-vfio.ipynb', 'free. With `i == 0`, `dma_iova_destroy()` sees `mapped_len == 0` and only calls `dma_iova_free()`. Note the',
     INPUT),
    ('07-vfio.ipynb', "The simulator never runs out of memory, so above the loop stops at page 4 by hand, where the kernel's",
     INPUT),
    ('07-vfio.ipynb', '**1. How many `dma_iova_sync()` calls does registering a 1024-page buffer make?**',
     INPUT),
    ('07-vfio.ipynb', 'One, after all 1024 links, over `[0, mapped)`.',
     INPUT),
    ('07-vfio.ipynb', '**2. Why is the IOVA range of a 4 MiB buffer never cached in an rcache when it is freed?**',
     INPUT),
    ('07-vfio.ipynb', 'It is 1024 granules; `iova_rcache_insert()` caches only bins below 6 (up to 32 granules), so `free_iova_fast()` returns it to the tree.',
     INPUT),
    ('07-vfio.ipynb', '**3. What does `dma_iova_destroy(dev, state, 0, dir, 0)` do?**',
     INPUT),
    ('07-vfio.ipynb', 'Nothing is linked, so it only frees the IOVA: `mapped_len == 0` calls `dma_iova_free()`.',
     INPUT),
    ('07-vfio.ipynb', '`iommu_map_sg()` merges physically contiguous entries into one `iommu_map_nosync()` per run (runs of 4 pages here); `register_dma_pages()` links page by page.',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'One run, operation by operation: the NVMe 128 KiB read on the IOVA path.',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'One request of *n* scattered 4 KiB pages, *n* = 1 ... 1024, on each path. Per-request IOVA allocations',
     INPUT),
    ('08-cost-and-scaling.ipynb', '**Why the `sg` curve dips at 512 contiguous pages** (tick *physically contiguous pages*): 512 pages are',
     INPUT),
    ('08-cost-and-scaling.ipynb', '2 MiB. The allocator aligns an IOVA range to its size (`alloc_iova(..., size_aligned=true)`) and the pages',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'start on a 2 MiB boundary, so `iommu_pgsize()` picks the 2 MiB page size: **one** PTE write instead of 512,',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'about 2,210 ns, then grows again by one PTE per further 2 MiB. Read `pte_writes` and `table_pages` in the',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'The simulator has batch paths for big linear workloads. A 256 MiB VFIO migration buffer (65,536 pages),',
     INPUT),
    ('08-cost-and-scaling.ipynb', 'IOVA against scatterlist, and a 16 MiB HMM region, IOVA against the page fallback (allocations, map calls,',
     INPUT),
    ('09-reviewer-lab.ipynb', '# 09 · Reviewer lab: every question of the patch-05 thread, re-runnable',
     INPUT),
    ('09-reviewer-lab.ipynb', 'In October 2024 the series that became the two-step DMA API posted patch 05, *"dma: Provide an interface to',
     INPUT),
    ('09-reviewer-lab.ipynb', '**Prerequisites:** notebooks 01 (granule and offset), 03 (map-page path) and 04 (two-step API), or',
     INPUT),
    ('09-reviewer-lab.ipynb', 'requests below 32 granules up to a power of two), `maps [at] X`, `splits into 2x2M, 1x4K`,',
     INPUT),
    ('09-reviewer-lab.ipynb', "The review thread's arithmetic: `dma_iova_try_alloc(phys=0x1234, size=0x3000)` with a 4 KiB granule on a fresh",
     INPUT),
    ('09-reviewer-lab.ipynb', '`alloc_iova_fast` rounds 3 granules up to 4 (and aligns the range to 4 granules). Both numbers matter: the',
     INPUT),
    ('09-reviewer-lab.ipynb', "entirely from the page path's one IOTLB invalidation plus wait per segment, costed from a *secondhand* 2015",
     INPUT),
    ('09-reviewer-lab.ipynb', 'that the first `dma_iova_link(phys, offset 0, ...)` can map `state->addr - pad` (with `pad = iova_offset(phys)`)',
     HINT),
    ('09-reviewer-lab.ipynb', '`size` alone. But it *always* matters for the link: after a 0 hint, `state->addr` is granule-aligned, so',
     HINT),
    ('09-reviewer-lab.ipynb', '`link_phys` / `link_0` are what `dma_iova_link(phys, 0, size)` returned after each hint (0 or -errno). The',
     HINT),
    ('09-reviewer-lab.ipynb', '> **A trap in reading the code.** `dma_iova_link()` alone suggests that after a 0 hint and an unaligned first `phys`',
     HINT),
    ('09-reviewer-lab.ipynb', 'The alternative to the hint is for the caller to do the offset arithmetic itself: reserve `size + pad` with a 0',
     HINT),
    ('09-reviewer-lab.ipynb', 'Passing 0 is safe exactly when the transfer starts on an IOVA **granule** boundary (`iova_offset(phys) == 0`).',
     HINT),
    ('09-reviewer-lab.ipynb', '* a 4 KiB-granule IOMMU (SMMUv3 `smmuv3-4k`) under a 64 KiB-page arm64 kernel: a buffer at `0x12345000` is not',
     INPUT),
    ('09-reviewer-lab.ipynb', 'PAGE_SIZE-aligned, yet a 0 hint is safe;',
     HINT),
    ('09-reviewer-lab.ipynb', 'First, what HMM and VFIO actually pass. Both reserve one window for the whole range with a **0** hint',
     HINT),
    ('09-reviewer-lab.ipynb', '(`hmm_dma_map_alloc`: `dma_iova_try_alloc(dev, state, 0, nr_entries * PAGE_SIZE)`; mlx5 vfio',
     HINT),
    ('09-reviewer-lab.ipynb', '`register_dma_pages`: `dma_iova_try_alloc(mdev->device, state, 0, npages * PAGE_SIZE)`) and link whole',
     HINT),
    ('09-reviewer-lab.ipynb', "page-aligned pages, so their offset is always 0. Read from the simulator's event logs of the two scenarios:",
     HINT),
    ('09-reviewer-lab.ipynb', 'Now per-buffer reservations (every buffer live at once in one fresh domain, each linked at offset 0), under four',
     HINT),
    ('09-reviewer-lab.ipynb', 'policies: pass the real `phys` (`offset`); pass 0 (`zero`: the link of an unaligned buffer fails, as section 2',
     HINT),
    ('09-reviewer-lab.ipynb', 'showed); pass 0 but reserve `size + pad` and link `phys - pad` (`zero, caller pads by off`); pass 0 and reserve',
     HINT),
    ('09-reviewer-lab.ipynb', 'What the numbers say: for HMM and VFIO the offset changes nothing (they are page-aligned and pass 0). For',
     HINT),
    ('09-reviewer-lab.ipynb', 'unaligned buffers the real offset reserves *more* than a 0 hint would, never less, and it is the only',
     HINT),
    ('09-reviewer-lab.ipynb', '0-hint-free way whose links succeed; it reserves exactly what a caller doing the arithmetic itself would, and',
     HINT),
    ('09-reviewer-lab.ipynb', '**1. With a 4 KiB granule, give a `(phys, size)` for which `dma_iova_try_alloc` reserves a different length with the real `phys` than with 0, and one for which it reserves the same. Check both with `check(...)`.**',
     HINT),
    ('09-reviewer-lab.ipynb', '**2. Why does `dma_iova_link` fail with `-EINVAL` after a 0 hint for an unaligned buffer, even when both hints reserve the same length?**',
     HINT),
    ('09-reviewer-lab.ipynb', 'After a 0 hint `state->addr` is granule-aligned; the first link maps `state->addr - pad` with `pad = iova_offset(phys)`, which is not granule-aligned, and `iommu_map_nosync()` refuses an unaligned IOVA (`pr_err("unaligned: ...")`, `-EINVAL`). The length was never the problem; the alignment of the start is.',
     HINT),
    ('09-reviewer-lab.ipynb', '**4. On a 64 KiB-page kernel with a 4 KiB-granule SMMU, is `phys = 0x10001000` safe to pass as 0? Why?**',
     INPUT),
    ('09-reviewer-lab.ipynb', 'Yes. Safety depends on `iova_offset(phys)`, the offset inside the IOVA *granule* (4 KiB here): `0x10001000 & 0xfff = 0`. It is not PAGE_SIZE (64 KiB) aligned, which does not matter: `check("try_alloc(phys=0x10001000, size=0x3000) returns 0xffffc000", iommu="smmuv3-4k")` ✓.',
     INPUT),
    ('09-reviewer-lab.ipynb', 'Nothing: both pass 0 (`hmm_dma_map_alloc`, mlx5 `register_dma_pages`) and link whole page-aligned pages, so the offset inside the granule is always 0 and the reserved length, the address and the links are the same as with the real `phys`.',
     HINT),
    ('10-exercises.ipynb', 'like `s7-p03` (seed 7, problem 3) that regenerates it anywhere, and the answer is never stored: the simulator',
     INPUT),
    ('10-exercises.ipynb', 'Answer forms: numbers in hex (`0x4000`) or decimal (`16384`); a split as comma-separated `COUNTxPGSIZE`',
     INPUT),
    ('10-exercises.ipynb', '(`3x4K, 2x2M`); a list of addresses comma-separated; an errno as `-EIO` (or `0`); a bin as `0`-`5` or `tree`;',
     INPUT),
    ('10-exercises.ipynb', 'another seed (`SEED + 1000`), answered deliberately wrong:',
     INPUT),
    ('10-exercises.ipynb', 'Your own answer; the usual ones are the power-of-two rounding of `alloc_iova_fast` (below 32 granules), the size alignment of the node, the start pad `iova_offset(phys)`, and the below-4-GiB attempt for a PCI device.',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', 'first report is printed (debugfs `num_errors` = 1); every report is counted in `error_count`. Here we',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', 'The driver maps 8 KiB and unmaps 4 KiB (a stale length variable). `__iommu_dma_unmap()` unmaps only',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', "4 KiB and frees the IOVA with the smaller size, so the allocator's 1-page cache gets it: the next 4 KiB",
     INPUT),
    ('11-when-it-goes-wrong.ipynb', 'On a non-coherent arm64 device (`dma_get_cache_alignment()` = 64), two live `DMA_FROM_DEVICE` mappings of',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', '(`dma_get_cache_alignment()` = 1) dma-debug stays silent, and `DMA_TO_DEVICE` mappings are never tracked.',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', '**1. A driver unmaps 4 KiB of an 8 KiB `dma_map_page()`. Does the kernel return an error?**',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', 'Nothing: the overlap is only reported when `dma_get_cache_alignment() >= L1_CACHE_BYTES`, and it is 1 on x86.',
     INPUT),
    ('11-when-it-goes-wrong.ipynb', 'already set"*, WARNs, **keeps the old PTE** and returns 0; AMD `iommu_v1_map_pages()` **replaces it',
     INPUT),   # the kernel's return value as the 6.17 source has it, quoted, not a simulator output
    ('11-when-it-goes-wrong.ipynb', 'VT-d reports success, yet the device still reaches the old page at 0x11000 (a stale translation in the',
     INPUT),   # the address the cell above maps first
]

RULES: list[tuple[str, str, str]] = [
    ("*", r"\b(?:Linux |kernel |before the |the |pre-|since |merged for |of )?[67]\.\d{1,2}(?:/[67]\.\d{1,2}|-[67]\.\d{1,2})?\b",
     "a kernel version (6.12, 6.16/6.17, 7.3)"),
    ("*", r"\*\*Time:\*\* (?:about )?\d+(?:-\d+)? min(?:utes)?", "the chapter's time estimate"),
    ("00-start-here.ipynb", r"\| (?:\d+ min|open-ended) \|", "the chapter table's time estimates"),
    ("*", r"\[\d\d · ", "a chapter number in a link title"),
    ("*", r"^# \d\d · ", "the chapter number in the title"),
    ("*", r"\b[Cc]hapters? \d\d(?:(?:, | and |-|, or )\d\d)*", "a chapter number"),
    ("*", r"\b[Nn]otebooks \d\d(?:-\d\d)?", "a chapter number"),
    ("*", r"^\*\*\d\. ", "the number of a self-check question"),
    ("*", r"^## \d\. ", "a section number"),
    ("*", r"\bsection \d\b", "a section number"),
    ("*", r"\b(?:32|48|64)(?:-bit| bits)\b|DMA_BIT_MASK\((?:32|64)\)|\bmask bits = 32\b|\b2\^48 - 1\b",
     "an address width named as a definition (DMA_BIT_MASK, the 48-bit VT-d aperture)"),
    ("*", r"\b1 << |\b1UL << |- 1\b|\+ 1\)", "the 1 of a quoted kernel formula (1 << order, size - 1)"),
    ("*", r"\b\d{1,2} (?:Oct|Apr) 20\d\d\b|\b(?:Oct|Apr|October) 20\d\d\b|\*secondhand\* 2015 figure",
     "a date"),
    ("*", r"`[\w.-]+@kernel\.(?:org|dk)`", "a lore Message-ID"),
    ("*", r"\bbelow(?:-| )4(?:-| )GiB\b|\b4 GiB\b", "the 32-bit boundary named (DMA_BIT_MASK(32) + 1)"),
    ("*", r"\b(?:4|8|16|64) KiB(?=[- ](?:granule|page|pages|virt boundary|translation|IOMMU|domain|alignment|aligned|"
           r"head|pages?-aligned|-aligned|mapping|IOMMU granule))|\b(?:4|16|64) KiB pages\b|\b4 KiB-aligned\b",
     "a granule or page size named as the setting (not a result)"),
    ("*", r"\bx86\b|\barm64\b", "an architecture name"),
    ("*", r"`check\(\"[^`]*\)`", "a claim the reader runs; test_inline_checks_hold runs it too"),
]


# --------------------------------------------------------------------------------------------------------

def _phrase_re(phrase: str) -> re.Pattern:
    """A quoted phrase (marks dropped) as a pattern; any run of white space matches any other (line breaks)."""
    return re.compile(r"\s+".join(re.escape(w) for w in _MARK.sub(r"\1", phrase).split()))


def _phrase_spans(text: str, phrase: str) -> list[tuple[int, int]]:
    return [m.span() for m in _phrase_re(phrase).finditer(text)]


def _rule_spans(text: str, pattern: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(pattern, text, re.M)]


def _applies(notebook: str, name: str) -> bool:
    return notebook == "*" or notebook == name


def covered_spans(name: str, text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for nb, phrase, _ in CLAIMS + ALLOWED:
        if nb == name:
            spans += _phrase_spans(text, phrase)
    for nb, pattern, _ in RULES:
        if _applies(nb, name):
            spans += _rule_spans(text, pattern)
    return spans


def _context(text: str, start: int, end: int, width: int = 50) -> str:
    a, b = max(0, start - width), min(len(text), end + width)
    return " ".join(text[a:b].split())


def uncovered() -> list[tuple[str, int, str, str]]:
    """``[(notebook, cell, token, phrase around it), ...]`` of every prose number nothing accounts for."""
    return [u for name in NOTEBOOKS for i, text in markdown_cells(name) for u in uncovered_in(name, i, text)]


def uncovered_in(name: str, cell: int, text: str) -> list[tuple[str, int, str, str]]:
    spans = covered_spans(name, text)
    return [(name, cell, text[s:e], _context(text, s, e))
            for s, e, _ in numbers(text) if not any(a <= s and e <= b for a, b in spans)]


def _notebook_prose(name: str) -> str:
    return "\n\n".join(t for _, t in markdown_cells(name))


# --------------------------------------------------------------------------------------------------------

def test_number_tokens():
    toks = [v for _, _, v in numbers("0xfffff000, 4 KiB and 64K, 2 MiB; 32 calls, 50%, 3,500 ns, 6.17, "
                                     "2x2M; smmuv3-4k cached32_node order_base_2 s7-p03 433a76207dcf")]
    assert toks == [0xfffff000, 4096, 65536, 2 << 20, 32, 50, 3500, 6.17, 2, 2 << 20]
    assert cell_text("a ```0x1``` [x](01-a.ipynb) 0x2") .split() == ["a", "[x]", "0x2"]


def test_every_prose_number_is_accounted_for():
    missing = uncovered()
    assert not missing, (
        f"{len(missing)} number(s) in notebook prose are neither registered claims nor allowed "
        "(add a CLAIMS entry computing it, or an ALLOWED entry saying why it is not a simulator output):\n"
        + "\n".join(f"  {nb} cell {cell}: {tok!r} in '{ctx}'" for nb, cell, tok, ctx in missing))


def test_a_new_number_is_reported():
    new = "A buffer of `0x3000` bytes at physical address `0x1234` uses 0x5000 bytes of IOVA on a 4 KiB granule."
    assert [tok for _, _, tok, _ in uncovered_in("01-iova-granule-and-offset.ipynb", 1, new)] == [
        "0x3000", "0x1234", "0x5000"]
    quoted = "the IOVA node `0xffffc000`-`0xffffffff` (4 granules) is what the allocator handed out"
    assert uncovered_in("01-iova-granule-and-offset.ipynb", 3, quoted) == []
    assert uncovered_in("02-the-iova-allocator.ipynb", 3, quoted)   # a claim covers only its own notebook


@pytest.mark.parametrize("nb,phrase", [(nb, p) for nb, p, _ in CLAIMS + ALLOWED])
def test_no_stale_phrase(nb, phrase):
    assert nb in NOTEBOOKS, f"{nb}: no such notebook"
    plain = _MARK.sub(r"\1", phrase)
    assert _phrase_re(phrase).search(_notebook_prose(nb)), f"{nb}: phrase no longer in the prose: {plain!r}"
    if phrase in [p for _, p, _ in ALLOWED]:
        assert numbers(plain), f"{nb}: allowed phrase holds no number: {plain!r}"


def test_every_claim_marks_a_number():
    for nb, phrase, _ in CLAIMS:
        marked = _MARK.findall(phrase)
        assert marked and all(marked_value(m) is not None for m in marked), f"{nb}: mark one number each: {phrase!r}"


@pytest.mark.parametrize("nb,phrase,fn", CLAIMS, ids=[f"{nb[:2]}:{p[:40]}" for nb, p, _ in CLAIMS])
def test_claim_matches_simulator(nb, phrase, fn):
    stated = tuple(marked_value(m) for m in _MARK.findall(phrase))
    got = fn()
    got = got if isinstance(got, tuple) else (got,)
    assert stated == got, f"{nb}: the prose says {stated} in {phrase!r}, the simulator {got}"


_INLINE_CHECK = re.compile(r"`(check\(\"[^`]*\))`")


def test_inline_checks_hold():
    """A ``check("...")`` the prose invites the reader to run is a claim: it must hold (✓)."""
    from iovalab.lab.claims import check
    found = 0
    for name in NOTEBOOKS:
        for i, text in markdown_cells(name):
            for call in _INLINE_CHECK.findall(text):
                found += 1
                result = eval(call, {"__builtins__": {}}, {"check": lambda *a, **k: check(*a, quiet=True, **k)})
                assert result.ok, f"{name} cell {i}: {call} does not hold:\n{result.text()}"
    assert found >= 2


def test_allowances_are_not_results():
    """Only INPUT and HINT allow a number: a simulator result stated in prose must be a claim."""
    assert {why for _, _, why in ALLOWED} <= {INPUT, HINT}
