"""Seeded homework problems whose answers the simulator computes, in the spirit of OSTEP's simulators.

No kernel analogue. Every problem is generated from ``(seed, index)`` alone, so its id (``s7-p03``)
is enough to regenerate it; the answer is never stored: :meth:`Problem.solve` runs the question's
calls on a fresh :class:`~iovalab.kernel.dma_iommu.DmaDomain` (or :func:`~iovalab.kernel.iommu.split_pages`, or the NVMe
scenario) and reads the result, and :meth:`Problem.check` compares a learner's answer with it and
returns the simulator's derivation.

Problem kinds (:data:`KINDS`; each question text says how to write the answer):

=================  =================================================================================
``reserve_len``    reserved IOVA length of ``dma_iova_try_alloc`` / ``dma_map_page`` (dma-iommu.c)
``tree_footprint`` bytes the rbtree node holds after ``alloc_iova_fast`` rounding (iova.c)
``try_alloc_addr`` ``state->addr`` returned by ``dma_iova_try_alloc`` after some earlier mappings
``map_page_addr``  the address ``dma_map_page`` returns after some earlier mappings
``next_alloc``     the next address after maps and unmaps (per-CPU rcache reuse, iova.c)
``attempt``        which ``iommu_dma_alloc_iova`` attempt succeeds: below 4 GiB or full width
``pgsize_split``   the ``iommu_pgsize`` split of an ``iommu_map`` (iommu.c)
``nvme_prp``       PRP data pointers of an NVMe request on the 6.17 IOVA path (drivers/nvme/host/pci.c)
``invalidations``  unmap-side IOTLB invalidations of a workload under a mapping path, strict or lazy
``map_calls``      ``iommu:map`` events (``iommu_map_nosync`` calls) of a workload under a path
``api_calls``      driver-visible DMA API calls of a workload under a path
``errno``          what ``dma_iova_link`` returns for a (mis)use (dma-iommu.c, iommu.c)
``lazy_reuse``     when an unmapped IOVA goes back to the allocator, strict vs lazy (flush queue)
``rcache_bin``     which rcache bin a freed IOVA lands in (``order_base_2`` of the size at free time)
``link_iova``      which IOVA a ``dma_iova_link`` maps
=================  =================================================================================

Command line: ``python -m iovalab quiz --seed S --count N [--json] [--answers]`` and
``python -m iovalab quiz --check ID ANSWER`` (:func:`cli`).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iovalab.lab.derivation import evaluate, fresh_domain, make_device
from iovalab.lab.notation import format_split, parse_errno, parse_split
from iovalab.lab.review import path_counts
from iovalab.kernel.dma_iommu import DmaIovaState
from iovalab.kernel.iommu import PRESETS, iommu_pgsize, split_pages
from iovalab.kernel.units import DMA_BIT_MASK, errname, fmt_size, hx, iova_offset, parse_int

__all__ = ["KINDS", "Kind", "Problem", "Verdict", "generate", "problem", "make_problem", "parse_id",
           "wrong_answer", "cli"]

_G = {0x1000: "4 KiB", 0x4000: "16 KiB", 0x10000: "64 KiB"}


# ================================================================================ answer types
def _fmt(atype: str, v: Any) -> str:
    if atype == "hex":
        return hx(v)
    if atype == "int":
        return str(v)
    if atype == "errno":
        return "0" if v == 0 else errname(v)
    if atype == "split":
        return format_split(v)
    if atype == "list":
        return ", ".join(hx(x) for x in v)
    if atype == "bin":
        return str(v)
    return str(v)


_CHOICES = {"below 4 GiB": ("below", "32", "low", "first", "sac"),
            "full width": ("full", "64", "48", "high", "second", "dac", "above")}


def _parse(atype: str, text: str) -> Any:
    t = str(text).strip()
    if atype in ("hex", "int"):
        return parse_int(t)
    if atype == "errno":
        return parse_errno(t)
    if atype == "split":
        return parse_split(t)
    if atype == "list":
        return [parse_int(x) for x in re.split(r"[,\s;]+", t) if x]
    if atype == "bin":
        if t.lower() in ("tree", "none", "rbtree", "-", "no"):
            return "tree"
        return parse_int(t)
    if atype == "choice":
        # whole words only, and the answer must point at exactly one choice ("full width below 4GiB"
        # names both and is refused, where a substring test read it as "below 4 GiB")
        low = " ".join(t.lower().split())
        tokens = set(re.findall(r"[a-z]+|\d+", low))
        hits = [canon for canon, words in _CHOICES.items()
                if low == canon.lower() or tokens & set(words) or tokens >= set(canon.lower().split())]
        if len(hits) == 1:
            return hits[0]
        why = "names both" if hits else "names neither"
        raise ValueError(f"{text!r} {why}: answer 'below 4 GiB' or 'full width'")
    raise ValueError(atype)


# ================================================================================ helpers
def _granule(rng: random.Random) -> int:
    return rng.choices([0x1000, 0x4000, 0x10000], [7, 1, 2])[0]


def _phys(rng: random.Random, g: int, aligned: bool | None = None) -> int:
    page = rng.randrange(0x100, 0x40000) * 0x10000
    if aligned is None:
        aligned = rng.random() < 0.25
    if aligned:
        return page + rng.randrange(0, 0x10000, g)
    return page + rng.choice([rng.randrange(1, g), rng.randrange(512, g, 512) if g > 512 else 0]) or page + 8


def _size(rng: random.Random, g: int) -> int:
    return rng.choice([rng.randrange(1, 4 * g), rng.randrange(1, 40) * g - rng.randrange(0, g),
                       rng.randrange(1, 9) * g, rng.randrange(30, 70) * g])


def _device(rng: random.Random, **force) -> dict:
    d = dict(mask_bits=64, pci=True, forcedac=False, bus_limit_bits=0)
    if rng.random() < 0.3:
        d["mask_bits"] = rng.choice([32, 39, 48])
    if rng.random() < 0.2:
        d["pci"] = False
    elif rng.random() < 0.15:
        d["forcedac"] = True
    d.update(force)
    return d


def _dev_text(d: dict) -> str:
    s = f"a {'PCI' if d['pci'] else 'platform (non-PCI)'} device with a {d['mask_bits']}-bit DMA mask"
    if d.get("forcedac"):
        s += ", booted with iommu.forcedac=1"
    if d.get("bus_limit_bits"):
        s += f", bus_dma_limit DMA_BIT_MASK({d['bus_limit_bits']})"
    return s


def _mkdev(d: dict):
    return make_device(DMA_BIT_MASK(d["mask_bits"]), d["pci"], d.get("forcedac", False),
                       DMA_BIT_MASK(d["bus_limit_bits"]) if d.get("bus_limit_bits") else 0)


def _dom_text(g: int) -> str:
    name = {0x1000: "Intel VT-d domain (4K|2M|1G pages", 0x4000: "SMMUv3 domain (16K|32M pages",
            0x10000: "SMMUv3 domain (64K|512M pages"}[g]
    return f"a fresh strict {name}, IOVA granule {_G[g]}, nothing reserved, one CPU)"


def _ops_text(history: list[dict]) -> str:
    if not history:
        return "no earlier mappings"
    out = []
    for i, op in enumerate(history):
        k = op["op"]
        if k in ("map_page", "try_alloc"):
            fn = "dma_map_page" if k == "map_page" else "dma_iova_try_alloc"
            out.append(f"#{i} {fn}(phys={hx(op['phys'])}, size={hx(op['size'])})")
        elif k == "unmap_page":
            out.append(f"#{i} dma_unmap_page of #{op['ref']}")
        elif k == "free":
            out.append(f"#{i} dma_iova_free of #{op['ref']}")
    return "; ".join(out)


def _replay(dom, dev, history: list[dict], lines: list[str]) -> list:
    """Run ``history`` (ops ``map_page``/``try_alloc`` with ``phys``/``size``, ``unmap_page``/``free``
    with ``ref`` = index of the op that mapped) and append one line per op with its result."""
    results: list = []
    for i, op in enumerate(history):
        k = op["op"]
        if k == "map_page":
            a = dom.dma_map_page(dev, op["phys"], op["size"])
            results.append(a)
            lines.append(f"#{i} dma_map_page(phys={hx(op['phys'])}, size={hx(op['size'])}) -> {hx(a)}")
        elif k == "try_alloc":
            st = DmaIovaState()
            ok = dom.dma_iova_try_alloc(dev, st, op["phys"], op["size"])
            results.append(st)
            lines.append(f"#{i} dma_iova_try_alloc(phys={hx(op['phys'])}, size={hx(op['size'])}) -> {ok}, "
                         f"state->addr = {hx(st.addr)}")
        elif k == "unmap_page":
            ref = history[op["ref"]]
            dom.dma_unmap_page(dev, results[op["ref"]], ref["size"])
            results.append(None)
            lines.append(f"#{i} dma_unmap_page({hx(results[op['ref']])}, {hx(ref['size'])}): IOVA freed")
        elif k == "free":
            dom.dma_iova_free(dev, results[op["ref"]])
            results.append(None)
            lines.append(f"#{i} dma_iova_free(state of #{op['ref']}): IOVA freed")
        else:
            raise ValueError(f"history op {k!r} must be map_page, try_alloc, unmap_page or free")
    return results


def _event_lines(evs, layers=("dma", "iova")) -> list[str]:
    return ["    " + "  " * e.depth + e.describe() for e in evs if e.layer in layers]


# ================================================================================ kinds
@dataclass
class Kind:
    """One problem kind: ``generate(rng) -> params``, ``question(params) -> text``,
    ``solve(params) -> (answer, derivation lines)``; ``atype`` = answer type."""

    name: str
    title: str
    atype: str
    generate: Callable[[random.Random], dict]
    question: Callable[[dict], str]
    solve: Callable[[dict], tuple[Any, list[str]]]


def _gen_reserve(rng: random.Random) -> dict:
    g = _granule(rng)
    return dict(api=rng.choice(["try_alloc", "map_page"]), granule=g, phys=_phys(rng, g), size=_size(rng, g))


def _q_reserve(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    return (f"On {_dom_text(p['granule'])}, a 64-bit PCI device calls {fn}, phys={hx(p['phys'])}, "
            f"size={hx(p['size'])}). How many bytes of IOVA does the call ask iommu_dma_alloc_iova() for "
            "(the reserved length, before alloc_iova_fast rounds anything)? Answer in bytes, hex (0x...) "
            "or decimal.")


def _solve_eval(p: dict, quantity: str) -> tuple[Any, list[str]]:
    o = evaluate(p["api"], phys=p["phys"], size=p["size"], granule=p["granule"])
    return o.values[quantity], o.derivation().splitlines()


def _q_tree(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    return (f"On {_dom_text(p['granule'])}, a 64-bit PCI device calls {fn}, phys={hx(p['phys'])}, "
            f"size={hx(p['size'])}). How many bytes of IOVA space does the allocator's rbtree node for it "
            "cover (its tree footprint)? Answer in bytes, hex or decimal.")


def _gen_history(rng: random.Random, n: int, g: int, frees: bool) -> list[dict]:
    hist: list[dict] = []
    live: list[int] = []
    for _ in range(n):
        if frees and live and rng.random() < 0.45:
            ref = live.pop(rng.randrange(len(live)))
            hist.append({"op": "unmap_page" if hist[ref]["op"] == "map_page" else "free", "ref": ref})
            continue
        size = rng.choice([rng.randrange(1, 3 * g), rng.randrange(1, 17) * g, rng.randrange(1, 5) * g])
        hist.append({"op": rng.choice(["map_page", "map_page", "try_alloc"]), "phys": _phys(rng, g),
                     "size": size})
        live.append(len(hist) - 1)
    return hist


def _gen_addr(api: str, frees: bool) -> Callable[[random.Random], dict]:
    def gen(rng: random.Random) -> dict:
        g = _granule(rng)
        dev = _device(rng) if api == "try_alloc" else _device(rng, pci=True, forcedac=False, mask_bits=64)
        n = rng.randrange(1 if frees else 0, 5) + (2 if frees else 0)
        size = _size(rng, g) if rng.random() < 0.7 else rng.randrange(1, 3 * g)
        return dict(api=api, granule=g, device=dev, history=_gen_history(rng, n, g, frees),
                    phys=_phys(rng, g), size=size)
    return gen


def _replayed(p: dict):
    """A fresh domain and device with the problem's history replayed: ``(dom, dev, derivation lines)``."""
    dom = fresh_domain(p["granule"])
    dev = _mkdev(p["device"])
    lines = [f"replay on {_dom_text(p['granule'])}, {_dev_text(p['device'])}:"]
    _replay(dom, dev, p["history"], lines)
    return dom, dev, lines


def _q_addr(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    what = "state->addr" if p["api"] == "try_alloc" else "the DMA address it returns"
    return (f"On {_dom_text(p['granule'])}, {_dev_text(p['device'])} has done: {_ops_text(p['history'])}. "
            f"It now calls {fn}, phys={hx(p['phys'])}, size={hx(p['size'])}). What is {what}? "
            "Answer in hex (0x...).")


def _solve_addr(p: dict) -> tuple[Any, list[str]]:
    dom, dev, lines = _replayed(p)
    mark = dom.log.mark()
    if p["api"] == "try_alloc":
        st = DmaIovaState()
        ok = dom.dma_iova_try_alloc(dev, st, p["phys"], p["size"])
        ans = st.addr if ok else 0
    else:
        ans = dom.dma_map_page(dev, p["phys"], p["size"])
    lines.append("the asked call, step by step:")
    lines += _event_lines(dom.log.since(mark))
    return ans, lines


def _gen_attempt(rng: random.Random) -> dict:
    case = rng.choice([0, 0, 0, 1, 2, 3, 4, 5, 6])
    g = 0x1000
    dev = dict(mask_bits=64, pci=True, forcedac=False, bus_limit_bits=0)
    hist: list[dict] = []
    size = rng.randrange(1, 64) * g
    if case == 1:
        dev["forcedac"] = True
    elif case == 2:
        dev["pci"] = False
        dev["mask_bits"] = rng.choice([39, 48, 64])
    elif case == 3:
        dev["mask_bits"] = 32
    elif case == 4:
        size = rng.choice([5, 6, 8]) << 30
    elif case == 5:
        hist = [{"op": "try_alloc", "phys": 0, "size": rng.choice([3, 5]) << 30}]
    elif case == 6:
        dev["bus_limit_bits"] = rng.choice([32, 40])
    if rng.random() < 0.5 and case not in (4, 5):
        hist = _gen_history(rng, rng.randrange(1, 3), g, False)
    return dict(granule=g, device=dev, history=hist, phys=_phys(rng, g), size=size)


def _q_attempt(p: dict) -> str:
    return (f"On {_dom_text(p['granule'])} with a 48-bit aperture, {_dev_text(p['device'])} has done: "
            f"{_ops_text(p['history'])}. It now calls dma_iova_try_alloc(dev, &state, phys={hx(p['phys'])}, "
            f"size={hx(p['size'])}). Which iommu_dma_alloc_iova() attempt gives it its IOVA: 'below 4 GiB' "
            "(the 32-bit-first attempt of PCI devices) or 'full width' (the attempt at the device's whole "
            "DMA limit, also the only attempt when there is no 32-bit-first one)?")


def _solve_attempt(p: dict) -> tuple[Any, list[str]]:
    dom, dev, lines = _replayed(p)
    lines.append(f"pci_32bit_workaround before the call: {dev.pci_32bit_workaround}")
    mark = dom.log.mark()
    st = DmaIovaState()
    dom.dma_iova_try_alloc(dev, st, p["phys"], p["size"])
    evs = dom.log.since(mark)
    lines += _event_lines(evs)
    ok = [e for e in evs if e.func == "iommu_dma_alloc_iova" and e.kind == "step" and e.result]
    return (ok[-1].args["attempt"] if ok else "none"), lines


_BITMAPS = {name: PRESETS[name]["pgsize_bitmap"]
            for name in ("intel-vtd", "smmuv3-64k", "smmuv3-16k", "amd-v1")}


def _gen_split(rng: random.Random) -> dict:
    preset = rng.choices(list(_BITMAPS), [5, 2, 1, 2])[0]
    bm = _BITMAPS[preset]
    g = bm & -bm
    sizes = [s for s in (1 << b for b in range(bm.bit_length())) if bm & s]
    big = sizes[1] if len(sizes) > 1 else g
    if preset == "amd-v1":
        big = rng.choice([0x10000, 0x200000, 0x100000])
    base_i = rng.randrange(1, 1 << 12) * big * 4
    co = rng.random() < 0.7
    head = rng.randrange(0, big // g) * g
    iova = base_i + head
    paddr = rng.randrange(1, 1 << 10) * big * 4 + (head if co else rng.randrange(0, big // g) * g)
    size = rng.randrange(0, 4) * big + rng.randrange(1, big // g + 1) * g
    if rng.random() < 0.3:
        size += big - head
    return dict(preset=preset, bitmap=bm, iova=iova, paddr=paddr, size=size)


def _q_split(p: dict) -> str:
    return (f"An IOMMU domain with pgsize_bitmap {hx(p['bitmap'])} ({p['preset']}) gets iommu_map(domain, "
            f"iova={hx(p['iova'])}, paddr={hx(p['paddr'])}, size={hx(p['size'])}). Which (count, page size) "
            "does each iommu_pgsize() step hand to ->map_pages, in order? Answer as comma-separated "
            "COUNTxPGSIZE items, e.g. '3x4K, 2x2M, 1x4K'.")


def _solve_split(p: dict) -> tuple[Any, list[str]]:
    steps = split_pages(p["bitmap"], p["iova"], p["paddr"], p["size"])
    lines = []
    rem = p["size"]
    for iova, paddr, pg, cnt in steps:
        merge = iova | paddr
        pgsize, count = iommu_pgsize(p["bitmap"], iova, paddr, rem)
        lines.append(f"iommu_pgsize(iova {hx(iova)}, paddr {hx(paddr)}, size {hx(rem)}): addr_merge "
                     f"{hx(merge)} (lowest set bit {hx(merge & -merge)}), largest page <= size: "
                     f"{hx(1 << (rem.bit_length() - 1))} -> pgsize {fmt_size(pgsize)}, count {count}   "
                     "[drivers/iommu/iommu.c iommu_pgsize]")
        assert (pgsize, count) == (pg, cnt)
        rem -= pg * cnt
    return [(c, pg) for (_, _, pg, c) in steps], lines


def _gen_prp(rng: random.Random) -> dict:
    n = rng.randrange(2, 6)
    segs = []
    off = rng.choice([0, rng.randrange(512, 4096, 512)])
    pages = [2 * x for x in rng.sample(range(0x8000, 0x20000), n)]   # never adjacent: no bio_vec merging
    for i, pg in enumerate(pages):
        phys = pg * 0x1000
        if i == 0:
            segs.append([phys + off, 0x1000 - off + rng.randrange(0, 2) * 0x1000])
        elif i == n - 1:
            segs.append([phys, rng.randrange(1, 17) * 512])
        else:
            segs.append([phys, rng.randrange(1, 4) * 0x1000])
    return dict(segments=segs)


def _q_prp(p: dict) -> str:
    segs = ", ".join(f"{hx(a)}+{hx(n)}" for a, n in p["segments"])
    return ("An NVMe controller without SGL support (Linux 6.17, fresh strict VT-d domain, 4 KiB granule) "
            f"gets one read whose bio_vecs are (phys+len): {segs}. The block layer maps it with the IOVA API "
            "(dma_iova_try_alloc + dma_iova_link per segment). List the DMA addresses the command's PRPs "
            "point at, in order: PRP1, then PRP2 if it points at data, else every entry of the PRP list "
            "(not the list's own address). Answer as comma-separated hex.")


def _solve_prp(p: dict) -> tuple[Any, list[str]]:
    from iovalab.lab.scenarios import run_scenario
    res = run_scenario({"name": "quiz", "scenario": "nvme", "parameters": {"segments": p["segments"]}},
                       api="iova")
    cmd = res.device_view[0]
    out = [cmd["prp1"]]
    if cmd["prp2_kind"] == "data":
        out.append(cmd["prp2"])
    elif cmd["prp2_kind"] == "list":
        for lst in cmd["prp_lists"]:
            out += lst["entries"]
    lines = [f"run_scenario(nvme, api='iova') on the segments: path {cmd['path']}, DMA segments "
             f"{', '.join(f'{hx(a)}+{hx(n)}' for a, n in cmd['dma_segments'])}",
             f"PRP1 = {hx(cmd['prp1'])} (first chunk = min(len, 4096 - (addr & 4095)))   "
             "[drivers/nvme/host/pci.c nvme_pci_setup_data_prp]",
             f"PRP2 is {cmd['prp2_kind']}" + (f": {hx(cmd['prp2'])}" if cmd['prp2_kind'] == "data" else "")]
    for lst in cmd.get("prp_lists", []):
        lines.append(f"PRP list ({lst['pool']} pool): {', '.join(hx(x) for x in lst['entries'])}")
    lines += _event_lines([e for e in res.log if e.kind in ("dma_api_calls", "iova_allocs")], ("dma", "iova"))
    return out, lines


def _gen_workload(rng: random.Random, lazy_ok: bool = True) -> dict:
    reqs = []
    big = rng.random() < 0.3
    r = rng.randrange(30, 45) if big else rng.randrange(1, 5)
    for _ in range(r):
        k = rng.randrange(2, 9)
        segs: list[list[int]] = []
        for _ in range(k):
            if segs and rng.random() < 0.3:
                segs.append([segs[-1][0] + segs[-1][1], 0x1000])
            else:
                segs.append([rng.randrange(0x10000, 0x400000) * 0x1000, 0x1000])
        reqs.append(segs)
    return dict(path=rng.choice(["page", "sg", "iova"]), strict=(not lazy_ok) or not big or rng.random() < 0.3,
                requests=reqs)


def _wl_text(p: dict) -> str:
    segs = sum(len(r) for r in p["requests"])
    contiguous = sum(1 for r in p["requests"] for a, b in zip(r, r[1:], strict=False) if a[0] + a[1] == b[0])
    desc = {"page": "dma_map_page per segment, then dma_unmap_page per segment",
            "sg": "one dma_map_sg of the whole list, then one dma_unmap_sg",
            "iova": "dma_iova_try_alloc, dma_iova_link per segment, one dma_iova_sync, then one "
                    "dma_iova_destroy"}
    mode = "strict" if p["strict"] else "lazy (flush queue: 255 usable slots per CPU, no time passes)"
    reqs = "; ".join("[" + ", ".join(hx(a) for a, _ in r) + "]" for r in p["requests"][:6])
    more = f" ... ({len(p['requests'])} requests)" if len(p["requests"]) > 6 else ""
    return (f"A fresh {mode} VT-d domain (4 KiB granule, no caching mode) and an NVMe device handle "
            f"{len(p['requests'])} request(s), {segs} segment(s) of 4 KiB in total ({contiguous} of them "
            f"physically contiguous with the previous one); each request is mapped and unmapped with "
            f"{desc[p['path']]}. Segment addresses per request: {reqs}{more}.")


def _solve_counter(counter: str) -> Callable[[dict], tuple[Any, list[str]]]:
    def solve(p: dict) -> tuple[Any, list[str]]:
        reqs = [[tuple(s) for s in r] for r in p["requests"]]
        res = path_counts(reqs, paths=(p["path"],), strict=p["strict"])
        c = res[p["path"]]["counters"]
        lines = [f"path_counts(..., paths=({p['path']!r},), strict={p['strict']}) on the simulator:",
                 "counters: " + ", ".join(f"{k}={v}" for k, v in c.as_dict().items()),
                 "driver callbacks: " + ", ".join(f"{k}={v}" for k, v in res[p["path"]]["indirect"].items())]
        return getattr(c, counter), lines
    return solve


def _q_inval(p: dict) -> str:
    return (_wl_text(p) + " How many unmap-side IOTLB invalidations (ranged iommu_iotlb_sync flushes plus "
            "flush_iotlb_all calls) happen in total? Answer a decimal count.")


def _q_mapcalls(p: dict) -> str:
    return (_wl_text(p) + " How many iommu:map trace events (iommu_map_nosync calls) happen in total? "
            "Answer a decimal count.")


def _q_apicalls(p: dict) -> str:
    return (_wl_text(p) + " How many driver-visible DMA API calls (map, unmap, try_alloc, link, sync, "
            "destroy ...) does the driver make in total? Answer a decimal count.")


def _gen_errno(rng: random.Random) -> dict:
    g = 0x1000
    case = rng.randrange(5)
    base = rng.randrange(0x100, 0x40000) * 0x10000
    off = rng.randrange(1, 8) * 512
    size = rng.randrange(2, 9) * g
    if case == 0:    # proper first link with offset
        return dict(case=case, hint=base + off, size=size, phys=base + off, offset=0, link_size=g - off)
    if case == 1:    # unaligned phys at offset > 0
        return dict(case=case, hint=base + off, size=size, phys=base + 2 * g + off, offset=g - off + g,
                    link_size=g - off)
    if case == 2:    # hint 0, unaligned link
        return dict(case=case, hint=0, size=size, phys=base + off, offset=0, link_size=g - off)
    if case == 3:    # aligned phys, offset not granule-aligned in IOVA
        return dict(case=case, hint=base, size=size, phys=base + 4 * g, offset=rng.randrange(1, 8) * 512,
                    link_size=g)
    return dict(case=case, hint=base + off, size=size, phys=base + 4 * g, offset=g - off, link_size=g)


def _q_errno(p: dict) -> str:
    return (f"On {_dom_text(0x1000)}, a 64-bit PCI device calls dma_iova_try_alloc(dev, &state, "
            f"phys={hx(p['hint'])}, size={hx(p['size'])}) (it succeeds), then dma_iova_link(dev, &state, "
            f"phys={hx(p['phys'])}, offset={hx(p['offset'])}, size={hx(p['link_size'])}, DMA_BIDIRECTIONAL, 0). "
            "What does dma_iova_link return? Answer 0 or an errno such as -EIO, -EINVAL, -ENOMEM.")


def _solve_errno(p: dict) -> tuple[Any, list[str]]:
    o = evaluate("link", phys=p["phys"], size=p["size"], hint=p["hint"], offset=p["offset"],
                 link_size=p["link_size"], granule=0x1000)
    return o.values["errno"], o.derivation().splitlines()


def _gen_lazy(rng: random.Random) -> dict:
    r = rng.random()
    if r < 0.15:
        n = rng.randrange(256, 300)
        return dict(strict=False, n=n, unmap_times=[0] * n, target=rng.choice([rng.randrange(1, 256),
                                                                                 rng.randrange(256, n + 1)]))
    n = rng.randrange(1, 5)
    times = sorted(rng.randrange(0, 30) for _ in range(n))
    return dict(strict=r < 0.35, n=n, unmap_times=times, target=rng.randrange(1, n + 1))


def _q_lazy(p: dict) -> str:
    mode = ("strict (IOMMU_DOMAIN_DMA)" if p["strict"] else
            "lazy (IOMMU_DOMAIN_DMA_FQ: one per-CPU flush queue of 256 slots, 255 usable, 10 ms timer)")
    if len(set(p["unmap_times"])) == 1 and p["n"] > 5:
        when = f"all {p['n']} are unmapped one after another at t={p['unmap_times'][0]} ms"
    else:
        when = "; ".join(f"buffer {i + 1} is unmapped at t={t} ms" for i, t in enumerate(p["unmap_times"]))
    return (f"A fresh {mode} VT-d domain, one CPU. At t=0 ms a device maps {p['n']} one-page buffers with "
            f"dma_map_page (buffer 1 first); then {when}. At what time t (whole ms) is buffer "
            f"{p['target']}'s IOVA handed back to the allocator (free_iova_fast), so that a new mapping could "
            "reuse it? Answer a decimal number of ms.")


def _solve_lazy(p: dict) -> tuple[Any, list[str]]:
    dom = fresh_domain(0x1000, strict=p["strict"])
    dev = make_device()
    addrs = [dom.dma_map_page(dev, (0x100000 + i) * 0x1000, 0x1000) for i in range(p["n"])]
    target_pfn = addrs[p["target"] - 1] >> 12
    lines = [f"mapped {p['n']} buffers at t=0: buffer {p['target']} has IOVA {hx(addrs[p['target'] - 1])}"]
    order = sorted(range(p["n"]), key=lambda i: (p["unmap_times"][i], i))
    t = 0
    k = 0
    freed_at = None
    while freed_at is None and t <= max(p["unmap_times"]) + 100:
        while k < len(order) and p["unmap_times"][order[k]] == t:
            i = order[k]
            mark = dom.log.mark()
            dom.dma_unmap_page(dev, addrs[i], 0x1000)
            evs = dom.log.since(mark)
            if p["n"] <= 10 or i + 1 == p["target"] or any(e.func == "fq_flush_iotlb" for e in evs):
                lines.append(f"t={t} ms: dma_unmap_page(buffer {i + 1}):")
                lines += [x for x in _event_lines(evs, ("dma",)) if "fq_" in x or "queue_iova" in x] or \
                    ["    (unmap, IOTLB sync, free_iova_fast)" if p["strict"] else "    queue_iova"]
            if any(e.func == "free_iova_fast" and e.args.get("pfn") == target_pfn for e in evs):
                freed_at = t
            k += 1
        if freed_at is not None:
            break
        mark = dom.log.mark()
        dom.advance_time(1)
        t += 1
        evs = dom.log.since(mark)
        if any(e.func == "fq_flush_iotlb" for e in evs):
            lines.append(f"t={t} ms: flush-queue timer fires: flush_iotlb_all, then free every entry queued "
                         "before that flush started   [drivers/iommu/dma-iommu.c fq_flush_timeout]")
        if any(e.func == "free_iova_fast" and e.args.get("pfn") == target_pfn for e in evs):
            freed_at = t
    lines.append(f"buffer {p['target']}'s IOVA (pfn {hx(target_pfn)}) reaches free_iova_fast at "
                 f"t={freed_at} ms")
    return freed_at, lines


def _gen_bin(rng: random.Random) -> dict:
    case = rng.randrange(3)
    g = 0x1000
    n = rng.choice([rng.randrange(1, 9), rng.randrange(9, 40)])
    size = n * g - rng.randrange(0, g)
    mapped = rng.randrange(1, n + 1) * g if n > 1 else size
    return dict(case=["map_page", "destroy", "free"][case], phys=rng.randrange(0x100, 0x40000) * 0x10000,
                size=size, mapped=min(mapped, size))


def _q_bin(p: dict) -> str:
    head = f"On {_dom_text(0x1000)}, a 64-bit PCI device "
    if p["case"] == "map_page":
        body = (f"calls dma_map_page(phys={hx(p['phys'])}, size={hx(p['size'])}) and later dma_unmap_page of "
                "the same buffer.")
    elif p["case"] == "destroy":
        body = (f"calls dma_iova_try_alloc(phys={hx(p['phys'])}, size={hx(p['size'])}), links only the first "
                f"{hx(p['mapped'])} bytes (dma_iova_link at offset 0) and then dma_iova_destroy(mapped_len="
                f"{hx(p['mapped'])}).")
    else:
        body = (f"calls dma_iova_try_alloc(phys={hx(p['phys'])}, size={hx(p['size'])}) and then "
                "dma_iova_free without linking anything.")
    return (head + body + " Into which per-CPU rcache bin does the freed IOVA go? Answer the bin number "
            "(0 = 1 granule, 1 = 2, ... 5 = 32 granules), or 'tree' if it goes straight back to the rbtree.")


def _solve_bin(p: dict) -> tuple[Any, list[str]]:
    dom = fresh_domain(0x1000)
    dev = make_device()
    if p["case"] == "map_page":
        a = dom.dma_map_page(dev, p["phys"], p["size"])
        mark = dom.log.mark()
        dom.dma_unmap_page(dev, a, p["size"])
    else:
        st = DmaIovaState()
        dom.dma_iova_try_alloc(dev, st, p["phys"], p["size"])
        if p["case"] == "destroy":
            dom.dma_iova_link(dev, st, p["phys"], 0, p["mapped"])
            mark = dom.log.mark()
            dom.dma_iova_destroy(dev, st, p["mapped"])
        else:
            mark = dom.log.mark()
            dom.dma_iova_free(dev, st)
    evs = dom.log.since(mark)
    lines = [f"allocation: {hx(dom.iovad.nodes()[0].pfn_lo << 12) if dom.iovad.nodes() else '-'}"]
    lines += _event_lines(evs, ("dma", "iova"))
    ins = [e for e in evs if e.kind == "rcache_insert"]
    if ins:
        lines.append(f"free_iova_fast(size {ins[-1].args['size']} granules): order_base_2 = bin "
                     f"{ins[-1].args['bin']}   [drivers/iommu/iova.c iova_rcache_insert]")
        return ins[-1].args["bin"], lines
    fr = [e for e in evs if e.func == "free_iova_fast"]
    lines.append(f"free_iova_fast(size {fr[-1].args['size']} granules): order_base_2 >= 6: not cached, "
                 "removed from the rbtree   [drivers/iommu/iova.c free_iova_fast]")
    return "tree", lines


def _gen_link(rng: random.Random) -> dict:
    g = _granule(rng)
    base = rng.randrange(0x100, 0x40000) * 0x10000
    off = rng.choice([0, rng.randrange(1, g // 512) * 512])
    len0 = g - off + rng.randrange(0, 3) * g
    len1 = rng.randrange(1, 4) * g
    second = rng.random() < 0.6
    return dict(granule=g, phys0=base + off, len0=len0, phys1=base + 0x100000 + rng.randrange(0, 16) * g,
                len1=len1, second=second)


def _q_link(p: dict) -> str:
    total = p["len0"] + p["len1"]
    s = (f"On {_dom_text(p['granule'])}, a 64-bit PCI device calls dma_iova_try_alloc(dev, &state, "
         f"phys={hx(p['phys0'])}, size={hx(total)}), then dma_iova_link(phys={hx(p['phys0'])}, offset=0, "
         f"size={hx(p['len0'])})")
    if p["second"]:
        s += (f" and dma_iova_link(phys={hx(p['phys1'])}, offset={hx(p['len0'])}, size={hx(p['len1'])}). "
              "At which IOVA does the second link's mapping start?")
    else:
        s += ". At which IOVA does that link's mapping start?"
    return s + " Answer in hex."


def _solve_link(p: dict) -> tuple[Any, list[str]]:
    total = p["len0"] + p["len1"]
    if not p["second"]:
        o = evaluate("link", phys=p["phys0"], size=total, offset=0, link_size=p["len0"], granule=p["granule"])
        return o.values["map_iova"], o.derivation().splitlines()
    dom = fresh_domain(p["granule"])
    dev = make_device()
    st = DmaIovaState()
    dom.dma_iova_try_alloc(dev, st, p["phys0"], total)
    lines = [f"dma_iova_try_alloc -> state->addr = {hx(st.addr)}"]
    dom.dma_iova_link(dev, st, p["phys0"], 0, p["len0"])
    mark = dom.log.mark()
    dom.dma_iova_link(dev, st, p["phys1"], p["len0"], p["len1"])
    m = [e for e in dom.log.since(mark) if e.kind == "iommu_map_calls"][-1]
    pad = iova_offset(dom.granule, p["phys1"])
    lines.append(f"second link: pad = iova_offset(phys) = {hx(pad)}; IOVA = state->addr + offset - pad = "
                 f"{hx(st.addr)} + {hx(p['len0'])} - {hx(pad)} = {hx(m.args['iova'])}   "
                 "[drivers/iommu/dma-iommu.c dma_iova_link]")
    lines += _event_lines(dom.log.since(mark), ("dma", "iommu"))
    return m.args["iova"], lines


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("reserve_len", "Reserved IOVA length", "hex", _gen_reserve, _q_reserve,
         lambda p: _solve_eval(p, "iova_len")),
    Kind("tree_footprint", "Tree footprint", "hex", _gen_reserve, _q_tree,
         lambda p: _solve_eval(p, "tree_len")),
    Kind("try_alloc_addr", "Address from dma_iova_try_alloc", "hex", _gen_addr("try_alloc", False), _q_addr,
         _solve_addr),
    Kind("map_page_addr", "Address from dma_map_page", "hex", _gen_addr("map_page", False), _q_addr,
         _solve_addr),
    Kind("next_alloc", "Next address after frees", "hex", _gen_addr("map_page", True), _q_addr, _solve_addr),
    Kind("attempt", "Below 4 GiB or full width", "choice", _gen_attempt, _q_attempt, _solve_attempt),
    Kind("pgsize_split", "iommu_pgsize split", "split", _gen_split, _q_split, _solve_split),
    Kind("nvme_prp", "NVMe PRP entries", "list", _gen_prp, _q_prp, _solve_prp),
    Kind("invalidations", "IOTLB invalidations of a workload", "int", _gen_workload, _q_inval,
         _solve_counter("iotlb_invalidations")),
    Kind("map_calls", "iommu:map events of a workload", "int", lambda r: _gen_workload(r, False), _q_mapcalls,
         _solve_counter("iommu_map_calls")),
    Kind("api_calls", "DMA API calls of a workload", "int", lambda r: _gen_workload(r, False), _q_apicalls,
         _solve_counter("dma_api_calls")),
    Kind("errno", "What dma_iova_link returns", "errno", _gen_errno, _q_errno, _solve_errno),
    Kind("lazy_reuse", "When is an IOVA reusable", "int", _gen_lazy, _q_lazy, _solve_lazy),
    Kind("rcache_bin", "Which rcache bin", "bin", _gen_bin, _q_bin, _solve_bin),
    Kind("link_iova", "Where dma_iova_link maps", "hex", _gen_link, _q_link, _solve_link),
]}


# ================================================================================ problems
@dataclass
class Verdict:
    """Result of :meth:`Problem.check`: ``correct``, the canonical ``expected`` answer text, the
    learner's ``given`` text, ``error`` (why the answer could not be read) and the ``derivation``."""

    correct: bool
    expected: str
    given: str
    derivation: str
    error: str | None = None

    def text(self) -> str:
        if self.correct:
            return "correct"
        if self.error:
            head = (f"cannot read your answer {self.given!r}: {self.error}\n"
                    f"the simulator's answer: {self.expected}")
        else:
            head = f"wrong: you answered {self.given}, the simulator's answer is {self.expected}"
        return head + "\n" + self.derivation


@dataclass
class Problem:
    """One generated problem. ``answer`` / ``derivation`` are computed on first use by running the
    simulator (never stored in the id or the parameters)."""

    id: str
    seed: int
    index: int
    kind: str
    params: dict
    question: str
    _solution: tuple | None = field(default=None, repr=False)

    @property
    def atype(self) -> str:
        return KINDS[self.kind].atype

    def solve(self) -> tuple[Any, list[str]]:
        if self._solution is None:
            self._solution = KINDS[self.kind].solve(self.params)
        return self._solution

    @property
    def value(self) -> Any:
        return self.solve()[0]

    @property
    def answer(self) -> str:
        """The simulator's answer in canonical text form (what ``--answers`` prints)."""
        return _fmt(self.atype, self.value)

    @property
    def derivation(self) -> str:
        return "\n".join(self.solve()[1])

    def check(self, answer: str | int) -> Verdict:
        """Compare a learner's answer (hex or decimal numbers; lists comma-separated) with the
        simulator's."""
        given = str(answer).strip()
        try:
            v = _parse(self.atype, given)
        except ValueError as e:
            return Verdict(False, self.answer, given, self.derivation, str(e))
        return Verdict(v == self.value, self.answer, given, self.derivation)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "question": self.question, "answer": self.answer}


def make_problem(kind: str, params: dict, id: str = "custom") -> Problem:
    """A problem of ``kind`` with explicit ``params`` (tests build trace-derived problems this way)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return Problem(id, -1, 0, kind, params, KINDS[kind].question(params))


#: Problems per seed: ids go up to ``sN-p1000``. Problem ``i`` is drawn so that it differs from problems
#: ``1..i-1``, so checking it regenerates those; the bound keeps that under about a second.
MAX_PROBLEMS = 1000


def _order(seed: int) -> list[str]:
    names = list(KINDS)
    random.Random(f"iovalab-quiz-order-{seed}").shuffle(names)
    return names


def generate(seed: int, count: int = 10) -> list[Problem]:
    """Problems 1..``count`` of ``seed``: kinds cycle through all of :data:`KINDS` in a seed-dependent
    order; parameters come from ``random.Random(f"{seed}:{index}:{attempt}")``; a question equal to an
    earlier one of the same seed is drawn again (next attempt), so all ``count`` questions differ."""
    if not isinstance(count, int) or not 1 <= count <= MAX_PROBLEMS:
        raise ValueError(f"count {count!r} must be in 1..{MAX_PROBLEMS} (MAX_PROBLEMS per seed)")
    order = _order(seed)
    seen: set[str] = set()
    out = []
    for i in range(1, count + 1):
        kind = KINDS[order[(i - 1) % len(order)]]
        for attempt in range(100):
            params = kind.generate(random.Random(f"{seed}:{i}:{attempt}"))
            q = kind.question(params)
            if q not in seen:
                break
        else:  # pragma: no cover - the parameter spaces are far larger than 100 draws
            raise RuntimeError(f"could not draw a new {kind.name} problem for s{seed}-p{i:02d}")
        seen.add(q)
        out.append(Problem(f"s{seed}-p{i:02d}", seed, i, kind.name, params, q))
    return out


def parse_id(pid: str) -> tuple[int, int]:
    """``"s7-p03"`` -> ``(7, 3)``; ValueError for anything else."""
    m = re.fullmatch(r"\s*s(-?\d{1,18})-p(\d{1,9})\s*", str(pid))
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"problem id {pid!r} must look like s7-p03 (seed 7, problem 3)")
    if int(m.group(2)) > MAX_PROBLEMS:
        raise ValueError(f"problem id {pid!r}: problem numbers go up to {MAX_PROBLEMS} (MAX_PROBLEMS per seed)")
    return int(m.group(1)), int(m.group(2))


def problem(pid: str) -> Problem:
    """Regenerate the problem with id ``pid``."""
    seed, index = parse_id(pid)
    return generate(seed, index)[-1]


def wrong_answer(p: Problem) -> str:
    """A plausible but wrong answer text (used by tests and the notebook's demo)."""
    v = p.value
    t = p.atype
    if t in ("hex", "int"):
        return _fmt(t, v + (0x1000 if t == "hex" else 1))
    if t == "errno":
        return "-EIO" if v != -5 else "0"
    if t == "choice":
        return "full width" if v == "below 4 GiB" else "below 4 GiB"
    if t == "split":
        c, pg = v[0]
        return format_split([(c + 1, pg)] + list(v[1:]))
    if t == "list":
        return _fmt("list", list(v[:-1]) + [v[-1] + 0x1000])
    if t == "bin":
        return "tree" if v != "tree" else "0"
    raise ValueError(t)


# ================================================================================ command line
def cli(args) -> int:
    """``python -m iovalab quiz --seed S --count N [--json] [--answers]`` / ``--check ID ANSWER``."""
    if getattr(args, "check", None):
        pid, ans = args.check
        try:
            p = problem(pid)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        v = p.check(ans)
        print(v.text())
        return 0 if v.correct else 1
    try:
        probs = generate(args.seed, args.count)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([p.as_dict() for p in probs], indent=1))
        return 0
    for p in probs:
        print(f"{p.id}  [{p.kind}] {KINDS[p.kind].title}")
        print(f"  {p.question}")
        if args.answers:
            print(f"  answer: {p.answer}")
        print()
    print(f"Check an answer: python -m iovalab quiz --check {probs[0].id} ANSWER"
          + ("" if args.answers else "   (add --answers to see them all)"))
    return 0


