"""Exercise kinds about the IOVA allocator: reserved length and tree footprint
(``drivers/iommu/dma-iommu.c`` ``dma_iova_try_alloc``/``__iommu_dma_map``, ``drivers/iommu/iova.c``
``alloc_iova_fast``), the address a call returns after earlier maps and frees (rcache reuse), which
``iommu_dma_alloc_iova`` attempt succeeds, and which rcache bin a freed IOVA lands in.

No kernel analogue: generators, questions and solvers; every answer is read from the simulator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from iovalab.kernel.dma_iommu import DmaIovaState
from iovalab.kernel.units import DMA_BIT_MASK, hx
from iovalab.lab.derivation import evaluate, fresh_domain, make_device
from iovalab.lab.exercise_base import Kind, dom_text, draw_granule, draw_phys, draw_size, event_lines

__all__ = ["KINDS"]


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


def _gen_reserve(rng: random.Random) -> dict:
    g = draw_granule(rng)
    return dict(api=rng.choice(["try_alloc", "map_page"]), granule=g, phys=draw_phys(rng, g), size=draw_size(rng, g))


def _q_reserve(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    return (f"On {dom_text(p['granule'])}, a 64-bit PCI device calls {fn}, phys={hx(p['phys'])}, "
            f"size={hx(p['size'])}). How many bytes of IOVA does the call ask iommu_dma_alloc_iova() for "
            "(the reserved length, before alloc_iova_fast rounds anything)? Answer in bytes, hex (0x...) "
            "or decimal.")


def _solve_eval(p: dict, quantity: str) -> tuple[Any, list[str]]:
    o = evaluate(p["api"], phys=p["phys"], size=p["size"], granule=p["granule"])
    return o.values[quantity], o.derivation().splitlines()


def _q_tree(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    return (f"On {dom_text(p['granule'])}, a 64-bit PCI device calls {fn}, phys={hx(p['phys'])}, "
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
        hist.append({"op": rng.choice(["map_page", "map_page", "try_alloc"]), "phys": draw_phys(rng, g),
                     "size": size})
        live.append(len(hist) - 1)
    return hist


def _gen_addr(api: str, frees: bool) -> Callable[[random.Random], dict]:
    def gen(rng: random.Random) -> dict:
        g = draw_granule(rng)
        dev = _device(rng) if api == "try_alloc" else _device(rng, pci=True, forcedac=False, mask_bits=64)
        n = rng.randrange(1 if frees else 0, 5) + (2 if frees else 0)
        size = draw_size(rng, g) if rng.random() < 0.7 else rng.randrange(1, 3 * g)
        return dict(api=api, granule=g, device=dev, history=_gen_history(rng, n, g, frees),
                    phys=draw_phys(rng, g), size=size)
    return gen


def _replayed(p: dict):
    """A fresh domain and device with the problem's history replayed: ``(dom, dev, derivation lines)``."""
    dom = fresh_domain(p["granule"])
    dev = _mkdev(p["device"])
    lines = [f"replay on {dom_text(p['granule'])}, {_dev_text(p['device'])}:"]
    _replay(dom, dev, p["history"], lines)
    return dom, dev, lines


def _q_addr(p: dict) -> str:
    fn = "dma_iova_try_alloc(dev, &state" if p["api"] == "try_alloc" else "dma_map_page(dev"
    what = "state->addr" if p["api"] == "try_alloc" else "the DMA address it returns"
    return (f"On {dom_text(p['granule'])}, {_dev_text(p['device'])} has done: {_ops_text(p['history'])}. "
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
    lines += event_lines(dom.log.since(mark))
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
    return dict(granule=g, device=dev, history=hist, phys=draw_phys(rng, g), size=size)


def _q_attempt(p: dict) -> str:
    return (f"On {dom_text(p['granule'])} with a 48-bit aperture, {_dev_text(p['device'])} has done: "
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
    lines += event_lines(evs)
    ok = [e for e in evs if e.func == "iommu_dma_alloc_iova" and e.kind == "step" and e.result]
    return (ok[-1].args["attempt"] if ok else "none"), lines


def _gen_bin(rng: random.Random) -> dict:
    case = rng.randrange(3)
    g = 0x1000
    n = rng.choice([rng.randrange(1, 9), rng.randrange(9, 40)])
    size = n * g - rng.randrange(0, g)
    mapped = rng.randrange(1, n + 1) * g if n > 1 else size
    return dict(case=["map_page", "destroy", "free"][case], phys=rng.randrange(0x100, 0x40000) * 0x10000,
                size=size, mapped=min(mapped, size))


def _q_bin(p: dict) -> str:
    head = f"On {dom_text(0x1000)}, a 64-bit PCI device "
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
    lines += event_lines(evs, ("dma", "iova"))
    ins = [e for e in evs if e.kind == "rcache_insert"]
    if ins:
        lines.append(f"free_iova_fast(size {ins[-1].args['size']} granules): order_base_2 = bin "
                     f"{ins[-1].args['bin']}   [drivers/iommu/iova.c iova_rcache_insert]")
        return ins[-1].args["bin"], lines
    fr = [e for e in evs if e.func == "free_iova_fast"]
    lines.append(f"free_iova_fast(size {fr[-1].args['size']} granules): order_base_2 >= 6: not cached, "
                 "removed from the rbtree   [drivers/iommu/iova.c free_iova_fast]")
    return "tree", lines


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
    Kind("rcache_bin", "Which rcache bin", "bin", _gen_bin, _q_bin, _solve_bin),
]}
