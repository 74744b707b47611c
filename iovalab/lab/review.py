"""The drivers of the review-lab notebook (``notebooks/09-reviewer-lab.ipynb``): what the ``dma_iova_try_alloc``
hint changes (:func:`hint_effect`), IOVA space held under caller policies (:func:`iova_space_use`), and
the calls, driver callbacks and modelled cost of one I/O under each mapping path (:func:`path_counts`).

No kernel analogue; every number comes from simulator runs on fresh domains
(:func:`iovalab.lab.derivation.evaluate`, :func:`~iovalab.lab.derivation.fresh_domain`) and their event
logs.
"""

from __future__ import annotations

import random
from typing import Any

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaIovaState
from iovalab.kernel.events import Event
from iovalab.kernel.units import DmaError, errname, iova_offset
from iovalab.lab.derivation import evaluate, fresh_domain, make_device

__all__ = ["hint_effect", "SPACE_POLICIES", "iova_space_use", "unaligned_buffers", "aligned_pages", "path_counts",
           "indirect_calls", "dma_api_calls_by_func"]


def hint_effect(phys: int, size: int, granule: int | None = None, **dev: Any) -> dict:
    """What passing the real ``phys`` vs 0 to ``dma_iova_try_alloc`` changes, for a buffer at
    ``phys`` of ``size`` bytes that is then linked with ``dma_iova_link(phys, offset 0, size)``
    (every number from two simulator runs on fresh domains).

    Keys: ``pad`` (``iova_offset(phys)``, the start pad ``dma_iova_link`` maps below
    ``state->addr``), ``reserved_phys``/``reserved_0`` (reserved length), ``tree_phys``/``tree_0``
    (tree footprint), ``addr_phys``/``addr_0`` (``state->addr``), ``link_phys``/``link_0`` (what
    ``dma_iova_link`` returned: 0 or -errno), ``link_iova_0`` (the IOVA it tried to map after the 0
    hint), ``same_reservation`` (both hints reserve the same length), ``safe_0`` (the 0 hint works:
    same reservation and the link succeeds inside it)."""
    a = evaluate("link", phys=phys, size=size, granule=granule, **dev)
    b = evaluate("link", phys=phys, size=size, granule=granule, hint=0, **dev)
    va, vb = a.values, b.values
    tried = [e for e in b.events if e.func == "iommu_map_nosync"]
    return dict(phys=phys, size=size, granule=a.params["granule"], pad=va["off"],
                reserved_phys=va["iova_len"], reserved_0=vb["iova_len"],
                tree_phys=va["tree_len"], tree_0=vb["tree_len"],
                addr_phys=va["addr"], addr_0=vb["addr"],
                link_phys=va["errno"], link_0=vb["errno"],
                link_iova_0=tried[-1].args["iova"] if tried else None,
                same_reservation=va["iova_len"] == vb["iova_len"],
                safe_0=vb["errno"] == 0 and bool(vb.get("inside")) and va["iova_len"] == vb["iova_len"])


def unaligned_buffers(n: int = 200, seed: int = 1, granule: int = 0x1000) -> list[tuple[int, int]]:
    """``n`` buffers ``(phys, size)`` with 512-byte-aligned start offsets inside the granule and sizes
    of 512 B .. 64 KiB in 512-byte steps (block-layer style: sector-aligned, not page-aligned)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        page = rng.randrange(0x100000, 0x400000) * granule
        out.append((page + rng.randrange(0, granule, 512), rng.randrange(1, 129) * 512))
    return out


def aligned_pages(n: int = 200, seed: int = 1, granule: int = 0x1000,
                  pages: int = 1) -> list[tuple[int, int]]:
    """``n`` page-aligned buffers of ``pages`` pages (HMM ``hmm_dma_map_pfn`` / VFIO mlx5 style)."""
    rng = random.Random(seed)
    return [(rng.randrange(0x100000, 0x400000) * granule, pages * granule) for _ in range(n)]


#: Policies of :func:`iova_space_use`: name -> (try_alloc hint, bytes asked, link phys, link size), as
#: functions of ``(phys, size, off, granule)``.
SPACE_POLICIES = {
    "offset": (lambda p, n, o, g: (p, n, p, n)),
    "zero": (lambda p, n, o, g: (0, n, p, n)),
    "zero, caller pads by off": (lambda p, n, o, g: (0, n + o, p - o, n + o)),
    "zero, worst-case pad": (lambda p, n, o, g: (0, n + g - 1, p - o, n + o)),
}


def iova_space_use(buffers: list[tuple[int, int]], granule: int | None = None, **dev: Any) -> list[dict]:
    """IOVA space held when every buffer gets its own ``dma_iova_try_alloc`` + one ``dma_iova_link``
    at offset 0 (all live at once in one fresh domain), under the :data:`SPACE_POLICIES`:

    * ``offset``: the merged API as meant: ``try_alloc(phys, size)``, ``link(phys, 0, size)``;
    * ``zero``: ``try_alloc(0, size)``, ``link(phys, 0, size)``: for an unaligned ``phys`` the link
      asks ``iommu_map_nosync`` for ``state->addr - pad``, which is not granule-aligned: -EINVAL;
    * ``zero, caller pads by off``: ``try_alloc(0, size + off)``, ``link(phys - off, 0, size + off)``: the
      caller does the offset arithmetic itself (and adds ``off`` to the DMA address it uses);
    * ``zero, worst-case pad``: a caller that does not know ``off`` when it reserves asks for
      ``size + granule - 1`` and links as the previous policy.

    Returns one row per policy: ``reserved`` (sum of reserved lengths), ``tree`` (sum of rbtree node
    sizes), ``linked`` and ``link_errors`` (with the errnos seen) — all read from the simulator."""
    rows = []
    for name, policy in SPACE_POLICIES.items():
        dom = fresh_domain(granule)
        g = dom.granule
        d = make_device(**dev)
        reserved = tree = linked = 0
        errors: dict[str, int] = {}
        for phys, size in buffers:
            hint, ask, lphys, lsize = policy(phys, size, iova_offset(g, phys), g)
            st = DmaIovaState()
            m = dom.log.mark()
            if not dom.dma_iova_try_alloc(d, st, hint, ask):
                raise RuntimeError(f"try_alloc of {ask:#x} failed: IOVA space exhausted")
            ev = [e for e in dom.log.since(m) if e.func == "iommu_dma_alloc_iova" and e.result]
            reserved += ev[-1].args["size"]
            node = dom.iovad.find_iova(ev[-1].result >> dom.iovad.shift)
            assert node is not None, "the IOVA just allocated is in the tree"
            tree += (node.pfn_hi - node.pfn_lo + 1) * g
            try:
                dom.dma_iova_link(d, st, lphys, 0, lsize)
                linked += 1
            except DmaError as e:
                errors[errname(e.errno)] = errors.get(errname(e.errno), 0) + 1
        rows.append(dict(policy=name, buffers=len(buffers), reserved=reserved, tree=tree, linked=linked,
                         link_errors=", ".join(f"{v} x {k}" for k, v in errors.items()) or "none"))
    return rows


def path_counts(requests: list[list[tuple[int, int]]], granule: int | None = None, preset: str = "x86-vtd",
                paths: tuple[str, ...] = ("page", "iova"), strict: bool = True) -> dict[str, dict]:
    """Run the same I/O requests (each a list of ``(phys, len)`` segments) through each mapping path on
    a fresh domain and an NVMe device; return per path the exact :class:`~iovalab.kernel.events.Counters`,
    the indirect driver calls read from the event log, and the modelled cost.

    Paths: ``page`` (``dma_map_page`` per segment, ``dma_unmap_page`` per segment, as the NVMe PRP
    path does for a non-coalesced request), ``sg`` (one ``dma_map_sg`` / ``dma_unmap_sg``), ``iova``
    (``dma_iova_try_alloc`` + ``dma_iova_link`` per segment + one ``dma_iova_sync`` + one
    ``dma_iova_destroy``, as ``blk_rq_dma_map_iter_start`` / ``blk_rq_dma_unmap`` do).
    Cost: :meth:`iovalab.lab.cost.CostModel.modelled_ns` for ``preset`` (MODELLED, not measured)."""
    from iovalab.lab.cost import load_cost_model
    from iovalab.kernel.dma_iommu import ScatterEntry
    model = load_cost_model()
    out: dict[str, dict] = {}
    for path in paths:
        dom = fresh_domain(granule, strict=strict)
        dev = Device.nvme()
        mark = dom.log.mark()
        for segs in requests:
            if path == "page":
                addrs = [dom.dma_map_page(dev, p, n) for p, n in segs]
                for a, (_, n) in zip(addrs, segs, strict=True):
                    dom.dma_unmap_page(dev, a, n)
            elif path == "sg":
                sgl = [ScatterEntry(p, n) for p, n in segs]
                dom.dma_map_sg(dev, sgl)
                dom.dma_unmap_sg(dev, sgl)
            elif path == "iova":
                total = sum(n for _, n in segs)
                st = DmaIovaState()
                if not dom.dma_iova_try_alloc(dev, st, segs[0][0], total):
                    raise RuntimeError("dma_iova_try_alloc failed")
                off = 0
                for p, n in segs:
                    dom.dma_iova_link(dev, st, p, off, n)
                    off += n
                dom.dma_iova_sync(dev, st, 0, total)
                dom.dma_iova_destroy(dev, st, total)
            else:
                raise ValueError(f"path {path!r} must be page, sg or iova")
        evs = dom.log.since(mark)
        c = dom.log.counters(since=mark)
        ind = indirect_calls(evs)
        cost = model.modelled_ns(c, preset)
        out[path] = dict(counters=c, indirect=ind, modelled=cost, requests=len(requests),
                         segments=sum(len(s) for s in requests), bytes=sum(n for s in requests for _, n in s))
    return out


def indirect_calls(evs: list[Event]) -> dict[str, int]:
    """Calls through ``struct iommu_domain_ops`` function pointers, counted from the event log:
    ``map_pages`` (one per ``iommu_pgsize`` step of each ``iommu_map_nosync``), ``unmap_pages`` (one
    per step of each ``__iommu_unmap``), ``iotlb_sync_map`` (drivers that have the callback),
    ``iotlb_sync`` and ``flush_iotlb_all``."""
    d = {"map_pages": 0, "unmap_pages": 0, "iotlb_sync_map": 0, "iotlb_sync": 0, "flush_iotlb_all": 0}
    for e in evs:
        if e.kind == "iommu_map_calls":
            d["map_pages"] += len(e.args.get("chunks", ()))
        elif e.kind == "iommu_unmap":
            d["unmap_pages"] += len(e.args.get("chunks", ()))
        elif e.kind == "iotlb_syncs" and e.args.get("callback"):
            d["iotlb_sync_map"] += 1
        elif e.kind == "iotlb_invalidations" and e.func == "iommu_iotlb_sync":
            d["iotlb_sync"] += 1
        elif e.kind == "iotlb_invalidations" and e.func == "iommu_flush_iotlb_all":
            d["flush_iotlb_all"] += 1
    d["total"] = sum(d.values())
    return d


def dma_api_calls_by_func(evs: list[Event]) -> dict[str, int]:
    """Driver-visible DMA API calls (``dma_api_calls`` events) by function name."""
    out: dict[str, int] = {}
    for e in evs:
        if e.kind == "dma_api_calls":
            out[e.func] = out.get(e.func, 0) + 1
    return out
