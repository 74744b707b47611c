"""Exercise kinds about mapping: the ``iommu_pgsize`` split of an ``iommu_map``
(``drivers/iommu/iommu.c``), where ``dma_iova_link`` maps and what it returns
(``drivers/iommu/dma-iommu.c``), and the PRP entries of an NVMe request on the IOVA path
(``drivers/nvme/host/pci.c``).

No kernel analogue: generators, questions and solvers; every answer is read from the simulator.
"""

from __future__ import annotations

import random
from typing import Any

from iovalab.kernel.dma_iommu import DmaIovaState
from iovalab.kernel.iommu import IOMMU_READ, IOMMU_WRITE, PRESETS, IommuDomain, iommu_pgsize, split_pages
from iovalab.kernel.units import fmt_size, hx, iova_offset
from iovalab.lab.derivation import evaluate, fresh_domain, make_device
from iovalab.lab.exercise_base import Kind, dom_text, draw_granule, event_lines

__all__ = ["KINDS"]


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
            "does each ->map_pages call receive, in order? (A driver may map fewer pages than it is given - "
            "ARM io-pgtable stops at the end of a table - and iommu_map_nosync then calls iommu_pgsize "
            "again for the rest.) Answer as comma-separated COUNTxPGSIZE items, e.g. '3x4K, 2x2M, 1x4K'.")


def _solve_split(p: dict) -> tuple[Any, list[str]]:
    """The ``map_pages`` calls of a simulated ``iommu_map`` on the preset's domain (an ARM table end
    splits a run: ``__arm_lpae_map`` maps up to ``arm_lpae_max_entries`` and ``iommu_map_nosync``
    loops); a bitmap with no preset uses the side-effect-free :func:`split_pages`."""
    if p["preset"] in PRESETS:
        dom = IommuDomain.preset(p["preset"])
        assert dom.iommu_map(p["iova"], p["paddr"], p["size"], IOMMU_READ | IOMMU_WRITE) == 0
        steps = dom.log.of_kind("iommu_map_calls")[-1].args["chunks"]
    else:
        steps = split_pages(p["bitmap"], p["iova"], p["paddr"], p["size"])
    lines = []
    end = p["iova"] + p["size"]
    for i, (iova, paddr, pg, cnt) in enumerate(steps):
        rem = end - iova
        merge = iova | paddr
        pgsize, count = iommu_pgsize(p["bitmap"], iova, paddr, rem)
        lines.append(f"iommu_pgsize(iova {hx(iova)}, paddr {hx(paddr)}, size {hx(rem)}): addr_merge "
                     f"{hx(merge)} (lowest set bit {hx(merge & -merge)}), largest page <= size: "
                     f"{hx(1 << (rem.bit_length() - 1))} -> pgsize {fmt_size(pgsize)}, count {count}   "
                     "[drivers/iommu/iommu.c iommu_pgsize]")
        assert (pgsize, count) == (pg, cnt)
        nxt = steps[i + 1][0] if i + 1 < len(steps) else end
        if nxt - iova < pg * cnt:
            lines.append(f"  ->map_pages maps only {(nxt - iova) // pg} of them: the table ends at {hx(nxt)} "
                         "[drivers/iommu/io-pgtable-arm.c __arm_lpae_map, arm_lpae_max_entries]; "
                         "iommu_map_nosync loops [drivers/iommu/iommu.c]")
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
    lines += event_lines([e for e in res.log if e.kind in ("dma_api_calls", "iova_allocs")], ("dma", "iova"))
    return out, lines


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
    return (f"On {dom_text(0x1000)}, a 64-bit PCI device calls dma_iova_try_alloc(dev, &state, "
            f"phys={hx(p['hint'])}, size={hx(p['size'])}) (it succeeds), then dma_iova_link(dev, &state, "
            f"phys={hx(p['phys'])}, offset={hx(p['offset'])}, size={hx(p['link_size'])}, DMA_BIDIRECTIONAL, 0). "
            "What does dma_iova_link return? Answer 0 or an errno such as -EIO, -EINVAL, -ENOMEM.")


def _solve_errno(p: dict) -> tuple[Any, list[str]]:
    o = evaluate("link", phys=p["phys"], size=p["size"], hint=p["hint"], offset=p["offset"],
                 link_size=p["link_size"], granule=0x1000)
    return o.values["errno"], o.derivation().splitlines()


def _gen_link(rng: random.Random) -> dict:
    g = draw_granule(rng)
    base = rng.randrange(0x100, 0x40000) * 0x10000
    off = rng.choice([0, rng.randrange(1, g // 512) * 512])
    len0 = g - off + rng.randrange(0, 3) * g
    len1 = rng.randrange(1, 4) * g
    second = rng.random() < 0.6
    return dict(granule=g, phys0=base + off, len0=len0, phys1=base + 0x100000 + rng.randrange(0, 16) * g,
                len1=len1, second=second)


def _q_link(p: dict) -> str:
    total = p["len0"] + p["len1"]
    s = (f"On {dom_text(p['granule'])}, a 64-bit PCI device calls dma_iova_try_alloc(dev, &state, "
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
    lines += event_lines(dom.log.since(mark), ("dma", "iommu"))
    return m.args["iova"], lines


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("pgsize_split", "iommu_pgsize split", "split", _gen_split, _q_split, _solve_split),
    Kind("nvme_prp", "NVMe PRP entries", "list", _gen_prp, _q_prp, _solve_prp),
    Kind("errno", "What dma_iova_link returns", "errno", _gen_errno, _q_errno, _solve_errno),
    Kind("link_iova", "Where dma_iova_link maps", "hex", _gen_link, _q_link, _solve_link),
]}
