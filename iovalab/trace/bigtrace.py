"""Big, valid ftrace captures made by exporting a simulated run (no kernel analogue).

:func:`write_sim_capture` drives a VT-d domain configured like the traced system of ``data/real``
(MSI window reserved, a PCI NVMe device with a 64-bit mask) through the classic API
(``dma_map_page``/``dma_map_sg``) and the two-step API (``dma_iova_try_alloc`` + ``dma_iova_link``),
and writes the kernel's lines (:func:`iovalab.trace.replay.events_to_ftrace`) as it goes, in
chunks, so a capture of millions of lines costs the memory of one chunk. ``keep_every=k`` leaves
every ``k``-th mapping mapped for good (a ring buffer, a registered memory region): the number of
live ranges then grows with the capture, the case where a replay that scans live state per line
turns quadratic. The replay of such a capture matches every allocation (tests check it).
"""

from __future__ import annotations

import os
import random
import shutil
from typing import IO

from iovalab.kernel.device import DMA_FROM_DEVICE, DMA_TO_DEVICE, Device
from iovalab.kernel.dma_iommu import DmaDomain, ScatterEntry
from iovalab.kernel.dma_iova import DmaIovaState
from iovalab.trace.ftrace_write import HEADER_LEGEND_IRQ, events_to_ftrace

__all__ = ["write_sim_capture", "map_request", "unmap_request"]

_STEP_US = 10


def write_sim_capture(path: str | os.PathLike, lines: int, *, ncpus: int = 1, strict: bool = True,
                      keep_every: int = 0, inflight: int = 32, seed: int = 1) -> int:
    """Write a capture of at least ``lines`` event lines to ``path``; returns the event lines written.

    ``keep_every``: every that many-th mapping is never unmapped (0: none); ``inflight``: the
    classic/two-step mappings in flight before the oldest random ones are unmapped."""
    if not isinstance(lines, int) or lines < 1:
        raise ValueError(f"lines {lines!r} must be an int >= 1")
    if not isinstance(keep_every, int) or keep_every < 0:
        raise ValueError(f"keep_every {keep_every!r} must be an int >= 0")
    dom = DmaDomain("intel-vtd", strict=strict, ncpus=ncpus, reserve_msi=True)
    dev = Device.nvme(name="0000:00:01.0")
    rng = random.Random(seed)
    live: list[tuple] = []
    written = 0
    phys = 0x2000_0000
    nmaps = 0
    body_path = os.fspath(path) + ".body"
    with open(body_path, "w", encoding="utf-8", newline="\n") as body:
        while written < lines:
            for _ in range(200):
                cpu = rng.randrange(ncpus)
                item = map_request(dom, dev, rng, phys, cpu)
                kind = item[0]
                phys = (phys + 0x40000) & ((1 << 46) - 1) or 0x2000_0000
                # kept for good: single mappings only (their dma_map_page line closes them; a
                # never-unmapped two-step range of one granule would read as an MSI doorbell)
                if not (keep_every and kind == "page" and nmaps % keep_every == 0):
                    live.append(item)
                while live and (len(live) > inflight or rng.random() < 0.4):
                    unmap_request(dom, dev, live.pop(rng.randrange(len(live))), rng.randrange(ncpus))
                if not strict and rng.random() < 0.05:
                    dom.advance_time(10, cpu=rng.randrange(ncpus))
                nmaps += kind == "page"
            if written + len(_lines(dom, written)) >= lines:   # the workload ends: nothing in flight
                while live:
                    unmap_request(dom, dev, live.pop(), 0)
            written += _drain(dom, body, written)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(f"# tracer: nop\n#\n# entries-in-buffer/entries-written: {written}/{written}   "
                  f"#P:{ncpus}\n#\n")
        out.write(HEADER_LEGEND_IRQ)
        with open(body_path, encoding="utf-8", newline="\n") as body_in:
            shutil.copyfileobj(body_in, out, 1 << 20)
    os.remove(body_path)
    return written


def map_request(dom: DmaDomain, dev: Device, rng: random.Random, phys: int, cpu: int) -> tuple:
    """One random NVMe-like request mapped at ``phys`` on ``cpu``: a ``dma_map_page`` of 512 B to 64 KiB
    (half of them), a ``dma_map_sg`` of 2-6 pages, or a two-step ``dma_iova_try_alloc`` + one
    ``dma_iova_link`` per page + ``dma_iova_sync``. Returns what :func:`unmap_request` undoes:
    ``(kind, handle, size)``."""
    kind = rng.choice(("page", "page", "sg", "iova"))
    if kind == "page":
        size = rng.choice((512, 4096, 8192, 0x10000))
        return ("page", dom.dma_map_page(dev, phys + rng.choice((0, 0x200)), size, DMA_FROM_DEVICE, cpu=cpu), size)
    if kind == "sg":
        sgl = [ScatterEntry(phys + k * 0x3000, 0x1000) for k in range(rng.randint(2, 6))]
        dom.dma_map_sg(dev, sgl, DMA_TO_DEVICE, cpu=cpu)
        return ("sg", sgl, 0)
    st = DmaIovaState()
    n = rng.randint(1, 8)
    dom.dma_iova_try_alloc(dev, st, 0, n * 0x1000, cpu=cpu)
    for k in range(n):
        dom.dma_iova_link(dev, st, phys + 0x100000 + 2 * k * 0x1000, k * 0x1000, 0x1000, cpu=cpu)
    dom.dma_iova_sync(dev, st, 0, n * 0x1000, cpu=cpu)
    return ("iova", st, n)


def unmap_request(dom: DmaDomain, dev: Device, item: tuple, cpu: int) -> None:
    """Unmap a request :func:`map_request` made, through the same path, on ``cpu``."""
    k, x, size = item
    if k == "page":
        dom.dma_unmap_page(dev, x, size, DMA_FROM_DEVICE, cpu=cpu)
    elif k == "sg":
        dom.dma_unmap_sg(dev, x, DMA_TO_DEVICE, cpu=cpu)
    else:
        dom.dma_iova_destroy(dev, x, size * 0x1000, cpu=cpu)


def _lines(dom: DmaDomain, written: int) -> list[str]:
    start_us = 100_000_000 + written * _STEP_US
    return events_to_ftrace(dom.log.events, start=start_us / 1e6, step_us=_STEP_US, kernel=dom.kernel)


def _drain(dom: DmaDomain, out: IO[str], written: int) -> int:
    """Write the log's events as lines (timestamps continuing from ``written`` lines) and clear it."""
    text = _lines(dom, written)
    dom.log.clear()
    for s in text:
        out.write(s)
        out.write("\n")
    return len(text)
