"""Kernel trace text, written: the lines of tracefs ``trace`` for the IOMMU/DMA events, byte for byte
as the kernel prints them, and a whole ``trace`` file with its header. :mod:`iovalab.trace.ftrace` reads
them back (the formats and their kernel sources are listed there).

Mirrors ``kernel/trace/trace_output.c`` (``trace_print_context``), ``kernel/trace/trace.c``
(``print_trace_header``) and the ``TP_printk`` formats of ``include/trace/events/iommu.h``,
``dma.h`` and ``swiotlb.h``.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

from iovalab.trace.ftrace import LINE_PREFIX, DMA_DIRECTIONS, DMA_TRACE_MAX_ENTRIES, TraceLine, decode_dma_attrs
from iovalab.kernel.units import U64_MASK
from iovalab.kernel.version import behaves, check_kernel

__all__ = [
    "format_line", "format_map", "format_unmap", "format_io_page_fault", "format_dma_map_page",
    "format_dma_unmap_page", "format_dma_map_sg", "format_dma_unmap_sg", "format_dma_alloc",
    "format_dma_free", "format_swiotlb_bounced", "format_fields", "write_ftrace", "HEADER_LEGEND_IRQ",
    "HEADER_LEGEND", "events_to_ftrace", "export_ftrace",
]

_U32_MASK = 0xFFFFFFFF


# -- writer ------------------------------------------------------------------------------------

def _u64(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U64_MASK:
        raise ValueError(f"{name}={v!r}: must be an int in 0..2**64-1 (u64)")
    return v


def _word(name: str, v: Any, empty_ok: bool = False) -> str:
    if not isinstance(v, str) or any(c.isspace() for c in v) or (not v and not empty_ok):
        raise ValueError(f"{name}={v!r}: must be a{'' if empty_ok else ' non-empty'} string "
                         "without white space")
    return v


def _dir(v: str | int) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        for name, n in DMA_DIRECTIONS.items():
            if n == v:
                return name
        raise ValueError(f"dir={v!r}: enum dma_data_direction is 0..3")
    return _word("dir", v)


def _attrs(v: str | int) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return decode_dma_attrs(v)
    return _word("attrs", v, empty_ok=True)


def _arr(name: str, values: Iterable[int], limit: int = U64_MASK) -> str:
    vals = list(values)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
            raise ValueError(f"{name}: element {v!r} out of range 0..{limit:#x}")
    return "{" + ",".join(f"0x{v:x}" for v in vals) + "}"


def format_map(iova: int, paddr: int, size: int) -> str:
    """Text of ``iommu:map`` (include/trace/events/iommu.h; ``u64 iova, u64 paddr, size_t size``)."""
    _u64("iova", iova), _u64("paddr", paddr), _u64("size", size)
    return (f"IOMMU: iova=0x{iova:016x} - 0x{(iova + size) & U64_MASK:016x} "
            f"paddr=0x{paddr:016x} size={size}")


def format_unmap(iova: int, size: int, unmapped_size: int) -> str:
    """Text of ``iommu:unmap`` (``u64 iova, size_t size, size_t unmapped_size``)."""
    _u64("iova", iova), _u64("size", size), _u64("unmapped_size", unmapped_size)
    return (f"IOMMU: iova=0x{iova:016x} - 0x{(iova + size) & U64_MASK:016x} "
            f"size={size} unmapped_size={unmapped_size}")


def format_io_page_fault(driver: str, device: str, iova: int, flags: int) -> str:
    """Text of ``iommu:io_page_fault`` (``report_iommu_fault``; ``int flags``, printed ``0x%04x``)."""
    _word("driver", driver, empty_ok=True), _word("device", device), _u64("iova", iova)
    if isinstance(flags, bool) or not isinstance(flags, int) or not -(1 << 31) <= flags <= _U32_MASK:
        raise ValueError(f"flags={flags!r}: must be a 32-bit int")
    return f"IOMMU:{driver} {device} iova=0x{iova:016x} flags=0x{flags & _U32_MASK:04x}"


def format_dma_map_page(dev: str, dir: str | int, dma_addr: int, size: int, phys_addr: int,
                        attrs: str | int = "") -> str:
    """Text of the ``dma_map`` class (``dma_map_page``/``_resource``, 6.18 ``dma_map_phys``).

    ``dev``: ``dev_name(dev)``; ``dir``: name or ``enum dma_data_direction``; ``dma_addr``:
    ``dma_addr_t``; ``size``: ``size_t``; ``phys_addr``: ``phys_addr_t``; ``attrs``: text or
    ``unsigned long`` (decoded with :func:`decode_dma_attrs`).
    """
    _word("dev", dev), _u64("dma_addr", dma_addr), _u64("size", size), _u64("phys_addr", phys_addr)
    return (f"{dev} dir={_dir(dir)} dma_addr={dma_addr:x} size={size} "
            f"phys_addr={phys_addr:x} attrs={_attrs(attrs)}")


def format_dma_unmap_page(dev: str, dir: str | int, dma_addr: int, size: int,
                          attrs: str | int = "") -> str:
    """Text of the ``dma_unmap`` class (``dma_unmap_page``/``_resource``, 6.18 ``dma_unmap_phys``)."""
    _word("dev", dev), _u64("dma_addr", dma_addr), _u64("size", size)
    return f"{dev} dir={_dir(dir)} dma_addr={dma_addr:x} size={size} attrs={_attrs(attrs)}"


def format_dma_map_sg(dev: str, dir: str | int, dma_addrs: Iterable[int], sizes: Iterable[int],
                      phys_addrs: Iterable[int], attrs: str | int = "", *,
                      full_nents: int | None = None, full_ents: int | None = None,
                      counts: bool = True) -> str:
    """Text of ``dma:dma_map_sg``.

    ``dma_addrs``/``sizes``: the ``ents`` mapped segments (``sg_dma_address``/``sg_dma_len``,
    ``unsigned int``); ``phys_addrs``: the ``nents`` input entries (``sg_phys``).
    ``counts=True`` gives the 6.12.y/mainline layout (as in ``data/real``): ``nents=%d/%d
    ents=%d/%d`` = traced/full, arrays cut to :data:`DMA_TRACE_MAX_ENTRIES` and ``" [TRUNCATED]"``
    when cut; ``full_nents``/``full_ents`` give the full counts when the arrays passed are already
    cut (default: their lengths). ``counts=False`` gives the upstream 6.12.0 layout (no counts).
    """
    _word("dev", dev)
    da, sz, pa = list(dma_addrs), list(sizes), list(phys_addrs)
    if len(da) != len(sz):
        raise ValueError(f"dma_addrs has {len(da)} entries but sizes has {len(sz)}: one size per segment")
    head = f"{dev} dir={_dir(dir)}"
    if counts:
        n = len(pa) if full_nents is None else full_nents
        e = len(da) if full_ents is None else full_ents
        for label, full, arr in (("full_nents", n, pa), ("full_ents", e, da)):
            if isinstance(full, bool) or not isinstance(full, int) or full < 0:
                raise ValueError(f"{label}={full!r}: must be an int >= 0")
            want = min(full, DMA_TRACE_MAX_ENTRIES)
            if len(arr) != full and len(arr) != want:
                raise ValueError(f"{label}={full}: the array has {len(arr)} entries, "
                                 f"expected {full} or min({full}, {DMA_TRACE_MAX_ENTRIES})")
        nt, et = min(n, DMA_TRACE_MAX_ENTRIES), min(e, DMA_TRACE_MAX_ENTRIES)
        da, sz, pa = da[:et], sz[:et], pa[:nt]
        trunc = " [TRUNCATED]" if (n > DMA_TRACE_MAX_ENTRIES or e > DMA_TRACE_MAX_ENTRIES) else ""
        head += f" nents={nt}/{n} ents={et}/{e}{trunc}"
    return (f"{head} dma_addrs={_arr('dma_addrs', da)} sizes={_arr('sizes', sz, _U32_MASK)} "
            f"phys_addrs={_arr('phys_addrs', pa)} attrs={_attrs(attrs)}")


def format_dma_unmap_sg(dev: str, dir: str | int, phys_addrs: Iterable[int],
                        attrs: str | int = "") -> str:
    """Text of ``dma:dma_unmap_sg`` (only ``sg_phys`` of the ``nents`` entries; no DMA address)."""
    _word("dev", dev)
    return f"{dev} dir={_dir(dir)} phys_addrs={_arr('phys_addrs', phys_addrs)} attrs={_attrs(attrs)}"


def format_dma_alloc(dev: str, dir: str | int | None, dma_addr: int, size: int,
                     virt_addr: str = "(____ptrval____)", flags: str = "GFP_KERNEL",
                     attrs: str | int = "") -> str:
    """Text of ``dma:dma_alloc`` (also ``dma_alloc_pages``/``dma_alloc_sgt_err``).

    ``virt_addr`` is the ``%p`` text (hashed: ``(____ptrval____)``); ``flags`` the
    ``show_gfp_flags`` text; ``dir=None`` leaves the ``dir=`` word out.
    """
    _word("dev", dev), _u64("dma_addr", dma_addr), _u64("size", size)
    _word("virt_addr", virt_addr), _word("flags", flags)
    d = "" if dir is None else f" dir={_dir(dir)}"
    return (f"{dev}{d} dma_addr={dma_addr:x} size={size} virt_addr={virt_addr} "
            f"flags={flags} attrs={_attrs(attrs)}")


def format_dma_free(dev: str, dir: str | int | None, dma_addr: int, size: int,
                    virt_addr: str = "(____ptrval____)", attrs: str | int = "") -> str:
    """Text of ``dma:dma_free`` (also ``dma_free_pages``)."""
    _word("dev", dev), _u64("dma_addr", dma_addr), _u64("size", size), _word("virt_addr", virt_addr)
    d = "" if dir is None else f" dir={_dir(dir)}"
    return f"{dev}{d} dma_addr={dma_addr:x} size={size} virt_addr={virt_addr} attrs={_attrs(attrs)}"


def format_swiotlb_bounced(dev: str, dma_mask: int, dev_addr: int, size: int,
                           force: str = "NORMAL") -> str:
    """Text of ``swiotlb:swiotlb_bounced`` (``dev_addr`` = the original physical address)."""
    _word("dev", dev), _u64("dma_mask", dma_mask), _u64("dev_addr", dev_addr), _u64("size", size)
    _word("force", force)
    return f"dev_name: {dev} dma_mask={dma_mask:x} dev_addr={dev_addr:x} size={size} {force}"


def format_fields(event: str, fields: dict[str, Any]) -> str:
    """Event text from a parsed ``fields`` dict (the inverse of parsing, for the events the writer
    knows: iommu ``map``/``unmap``/``io_page_fault``, the ``dma_map``/``dma_unmap`` classes,
    ``dma_map_sg``, ``dma_unmap_sg``, ``dma_alloc``/``dma_free`` classes, ``swiotlb_bounced``,
    ``tracing_mark_write``)."""
    f = fields
    try:
        if event == "map":
            return format_map(f["iova"], f["paddr"], f["size"])
        if event == "unmap":
            return format_unmap(f["iova"], f["size"], f["unmapped_size"])
        if event == "io_page_fault":
            return format_io_page_fault(f["driver"], f["device"], f["iova"], f["flags"])
        if event in ("dma_map_page", "dma_map_resource", "dma_map_phys"):
            return format_dma_map_page(f["device"], f["dir"], f["dma_addr"], f["size"],
                                       f["phys_addr"], f["attrs"])
        if event in ("dma_unmap_page", "dma_unmap_resource", "dma_unmap_phys"):
            return format_dma_unmap_page(f["device"], f["dir"], f["dma_addr"], f["size"], f["attrs"])
        if event == "dma_map_sg":
            has = "nents" in f
            return format_dma_map_sg(f["device"], f["dir"], f["dma_addrs"], f["sizes"],
                                     f["phys_addrs"], f["attrs"], counts=has,
                                     full_nents=f.get("nents"), full_ents=f.get("ents"))
        if event == "dma_unmap_sg":
            return format_dma_unmap_sg(f["device"], f["dir"], f["phys_addrs"], f["attrs"])
        if event in ("dma_alloc", "dma_alloc_pages", "dma_alloc_sgt_err"):
            return format_dma_alloc(f["device"], f.get("dir"), f["dma_addr"], f["size"],
                                    f["virt_addr"], f["flags"], f["attrs"])
        if event in ("dma_free", "dma_free_pages"):
            return format_dma_free(f["device"], f.get("dir"), f["dma_addr"], f["size"],
                                   f["virt_addr"], f["attrs"])
        if event == "swiotlb_bounced":
            return format_swiotlb_bounced(f["device"], f["dma_mask"], f["dev_addr"], f["size"],
                                          f["force"])
        if event == "tracing_mark_write":
            return str(f["text"])
    except KeyError as e:
        raise ValueError(f"format_fields({event!r}): field {e.args[0]!r} missing") from None
    raise ValueError(f"format_fields: no writer for event {event!r}")


def _timestamp(ts: float | int | str) -> str:
    if isinstance(ts, str):
        if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", ts, re.ASCII):
            raise ValueError(f"timestamp={ts!r}: must look like SECS.USECS or a counter value")
        if "." in ts:
            secs, frac = ts.split(".")
            return f"{secs:>5}.{frac}"
        return f"{ts:>12}"
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp={ts!r}: must be a finite number of seconds >= 0")
    return f"{ts:12.6f}"


def format_line(task: str, pid: int, cpu: int, flags: str | None, timestamp: float | str,
                event: str, text: str, *, tgid: int | None = None) -> str:
    """One trace line as ``trace_print_context`` lays it out (kernel/trace/trace_output.c).

    ``"%16s-%-7d "`` task and pid, ``"(%7d) "`` TGID when given, ``"[%03d] "`` CPU, the flags
    column (``None`` = no ``irq-info`` column), ``" %5lu.%06lu: "`` timestamp (a float in
    seconds; a ``str`` is used as is, padded like the kernel), then ``"event: text"``.
    """
    if not isinstance(task, str) or not task or "\n" in task or task != task.strip():
        raise ValueError(f"task={task!r}: must be a non-empty name without surrounding white space")
    for name, v in (("pid", pid), ("cpu", cpu)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r}: must be an int >= 0")
    if flags is not None and (not isinstance(flags, str) or not 4 <= len(flags) <= 5
                              or any(c.isspace() for c in flags)):
        raise ValueError(f"flags={flags!r}: must be the 4- or 5-character latency column or None")
    if not isinstance(event, str) or not re.fullmatch(r"\w+", event, re.ASCII):
        raise ValueError(f"event={event!r}: must be an event name ([A-Za-z0-9_]+)")
    if not isinstance(text, str) or "\n" in text:
        raise ValueError(f"text={text!r}: must be a one-line string")
    tg = "" if tgid is None else f"({tgid:7d}) "
    fl = "" if flags is None else flags
    return f"{task:>16}-{pid:<7d} {tg}[{cpu:03d}] {fl} {_timestamp(timestamp)}: {event}: {text}"


#: Column legend ``print_func_help_header_irq`` writes when the flags column is on.
HEADER_LEGEND_IRQ = (
    "#                                _-----=> irqs-off/BH-disabled\n"
    "#                               / _----=> need-resched\n"
    "#                              | / _---=> hardirq/softirq\n"
    "#                              || / _--=> preempt-depth\n"
    "#                              ||| / _-=> migrate-disable\n"
    "#                              |||| /     delay\n"
    "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |         |   |||||     |         |\n")
#: Legend without the flags column (``print_func_help_header``; spacing from general knowledge).
HEADER_LEGEND = (
    "#           TASK-PID     CPU#     TIMESTAMP  FUNCTION\n"
    "#              | |         |         |         |\n")


def write_ftrace(lines: Iterable[str | TraceLine], path_or_file: str | os.PathLike | IO[str],
                 header: bool = True, *, tracer: str = "nop", nr_cpus: int | None = None) -> int:
    """Write event lines (formatted ``str`` lines or :class:`TraceLine`, whose ``raw`` is written)
    as a tracefs ``trace`` file; returns the number of event lines.

    The header copies the kernel's: ``# tracer:``, ``# entries-in-buffer/entries-written: N/N
    #P:cpus`` (``nr_cpus`` defaults to 1 + the highest CPU in the lines) and the column legend.
    """
    out = [ln.raw if isinstance(ln, TraceLine) else ln for ln in lines]
    for i, s in enumerate(out):
        if not isinstance(s, str) or "\n" in s:
            raise ValueError(f"lines[{i}]={s!r}: must be a one-line str or a TraceLine")
    buf = io.StringIO()
    if header:
        max_cpu, any_flags = 0, False
        for s in out:
            m = LINE_PREFIX.fullmatch(s)
            if m:
                max_cpu = max(max_cpu, int(m.group("cpu")))
                any_flags = any_flags or m.group("flags") is not None
        cpus = max_cpu + 1 if nr_cpus is None else nr_cpus
        buf.write(f"# tracer: {tracer}\n#\n"
                  f"# entries-in-buffer/entries-written: {len(out)}/{len(out)}   #P:{cpus}\n#\n")
        buf.write(HEADER_LEGEND_IRQ if any_flags or not out else HEADER_LEGEND)
    for s in out:
        buf.write(s)
        buf.write("\n")
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="\n") as f:
            f.write(buf.getvalue())
    else:
        path_or_file.write(buf.getvalue())
    return len(out)


# --------------------------------------------------------------------------------------------
_IRQ = "d.h.."
_TASK = "....."


def events_to_ftrace(events, *, start: float = 100.0, step_us: int = 10, task: str = "iovalab",
                     pid: int = 4242, iotlb_events: bool = True, kernel: str = "6.17",
                     times: Sequence[float] | None = None) -> list[str]:
    """A simulator run (its event list) as kernel ftrace text lines, in the formats of
    ``include/trace/events/iommu.h`` (``map``, ``unmap``), ``include/trace/events/dma.h`` (6.12:
    ``dma_map_page``, ``dma_unmap_page``, ``dma_map_sg``, ``dma_unmap_sg``, ``dma_alloc``) and, with
    ``iotlb_events``, the VT-d ``cache_tag_flush_range``/``cache_tag_flush_all`` invalidations.

    Unmaps and their ``dma_unmap_*`` lines get the hard-irq flags a completion interrupt shows;
    timestamps advance ``step_us`` per line, from ``start``; with ``times`` (seconds, one per event:
    when the simulated run did it, e.g. its :attr:`~iovalab.kernel.dma_iommu.DmaDomain.now_ms`), a line
    is at its event's time, or ``step_us`` after the line before when that is later. Event order is
    the log's, which is the kernel's: ``map`` before ``dma_map_*``, ``dma_unmap_sg`` before its
    ``unmap``, ``unmap`` before ``dma_unmap_page``.

    ``kernel`` chooses the text forms (:data:`iovalab.kernel.version.DIFFERENCES`): ``"6.17"`` as
    above; ``"7.3"`` writes ``dma_map_phys``/``dma_unmap_phys`` for page mappings,
    ``cache_tag_flush_range`` without ``pages``, and a domain-wide flush as a ``cache_tag_flush_range``
    over ``[0x0-0xffffffffffffffff]`` with mask 0x34 (drivers/iommu/intel/cache.c, trace.h, 7.3.4).
    """
    check_kernel(kernel)
    new_form = behaves(kernel, "flush_tag_no_pages")
    phys_ev = behaves(kernel, "dma_map_phys")
    out = []
    t = [int(start * 1e6)]

    def line(cpu, flags, event, text):
        ts = f"{t[0] // 1_000_000}.{t[0] % 1_000_000:06d}"
        t[0] += step_us
        out.append(format_line(task, pid, cpu, flags, ts, event, text))

    events = list(events)
    if times is not None and len(times) != len(events):
        raise ValueError(f"times: {len(times)} values for {len(events)} events (one time per event)")
    for n, e in enumerate(events):
        if times is not None:
            t[0] = max(t[0], round(times[n] * 1e6))
        a, k, f = e.args, e.kind, e.func
        if k == "iommu_map_calls":
            line(e.cpu, _TASK, "map", format_map(a["iova"], a["paddr"], a["size"]))
        elif k == "iommu_unmap":
            line(e.cpu, _IRQ, "unmap", format_unmap(a["iova"], a["size"], a["unmapped_size"]))
        elif k == "iotlb_invalidations" and iotlb_events:
            if a.get("scope") == "all":
                # the flush-queue timer runs in softirq; a queue-full flush in the unmap's context
                why = next((x.args.get("why") for x in events[n + 1:n + 4] if x.kind == "fq_flush"), None)
                flags = _IRQ if why == "queue full" else "d.s2."
                if new_form:   # cache_tag_flush_range(domain, 0, ULONG_MAX, 0): mask 52 (0x34)
                    line(e.cpu, flags, "cache_tag_flush_range",
                         "dmar0 dmar0[0] type iotlb did 3 [0x0-0xffffffffffffffff] addr 0x0 mask 0x34")
                else:
                    line(e.cpu, flags, "cache_tag_flush_all", "dmar0/dmar0 type iotlb did 3 pasid 0 ref 1")
            elif "start" in a:
                lo, hi = a["start"], a["end"]
                pages = (hi - lo + 1) >> 12
                pg = "" if new_form else f" pages {pages:#x}"
                line(e.cpu, "d.h1.", "cache_tag_flush_range",
                     f"dmar0 dmar0[0] type iotlb did 3 [{lo:#x}-{hi:#x}] addr {lo:#x}{pg} "
                     f"mask {max(pages - 1, 0).bit_length():#x}")
        elif k == "dma_api_calls":
            dev = a.get("dev", "0000:00:01.0")
            d = a.get("dir", 0)
            if f in ("dma_map_page", "dma_map_phys"):
                line(e.cpu, _TASK, "dma_map_phys" if phys_ev else "dma_map_page",
                     format_dma_map_page(dev, d, e.result, a["size"], a["phys"], a.get("attrs", 0)))
            elif f in ("dma_unmap_page", "dma_unmap_phys"):
                line(e.cpu, _IRQ, "dma_unmap_phys" if phys_ev else "dma_unmap_page",
                     format_dma_unmap_page(dev, d, a["dma_addr"], a["size"], a.get("attrs", 0)))
            elif f == "dma_map_sg" and e.result:
                line(e.cpu, _TASK, "dma_map_sg",
                     format_dma_map_sg(dev, d, a["dma_addrs"], a["sizes"], a["phys"], 0))
            elif f == "dma_unmap_sg":
                line(e.cpu, _IRQ, "dma_unmap_sg", format_dma_unmap_sg(dev, d, a["phys"], 0))
            elif f == "dma_alloc":
                line(e.cpu, _TASK, "dma_alloc", format_dma_alloc(dev, d, e.result, a["size"]))
    return out


def export_ftrace(events, path, *, nr_cpus: int = 1, **kw) -> int:
    """Write :func:`events_to_ftrace` lines with the kernel's ``trace`` file header; returns lines."""
    lines = events_to_ftrace(events, **kw)
    return write_ftrace(lines, path, header=True, nr_cpus=nr_cpus)
