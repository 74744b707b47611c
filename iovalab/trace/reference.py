"""Reference traces: read the kernel-produced JSON-Lines traces and replay them through the model.

The traces in ``data/kernel-traces/`` were produced by the kernel's own ``drivers/iommu/iova.c``,
``iommu_pgsize()`` (``drivers/iommu/iommu.c``) and the IOVA arithmetic of
``drivers/iommu/dma-iommu.c`` (format: ``data/kernel-traces/README.md``). Every ``expect`` is what
the kernel returned; :func:`check_trace` compares the simulator with each one and with every
``check`` state dump.

Kinds handled: ``iova-trace`` (raw allocator), ``pgsize-trace`` (page-size split) and
``dma-iova-trace`` (DMA layer). A header line (one with ``"kind"``) starts a fresh section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from iovalab.kernel.events import EventLog
from iovalab.kernel.iova import IovaDomain
from iovalab.kernel.units import DmaError

#: the reference traces were produced by the 6.17 kernel's own iova.c / iommu_pgsize() / dma-iommu.c
#: arithmetic: they are replayed under that model (Linux 7.3 changed dma_iova_destroy's free size)
REFERENCE_KERNEL = "6.17"

__all__ = ["TraceFormatError", "Mismatch", "TraceResult", "read_trace", "check_trace",
           "check_ops", "REPLAYERS"]


class TraceFormatError(ValueError):
    """A trace line that is not valid JSON or not a known op; names file and line number."""


@dataclass
class Mismatch:
    op_index: int          # 1-based operation number within the file (headers not counted)
    lineno: int            # line number in the file
    op: dict               # the operation as read
    expected: object
    got: object

    def __str__(self) -> str:
        op = {k: v for k, v in self.op.items() if k != "expect"}
        return (f"op {self.op_index} (line {self.lineno}) {json.dumps(op)}: expected "
                f"{json.dumps(self.expected)}, got {json.dumps(self.got)}")


@dataclass
class TraceResult:
    path: str
    ops: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    sections: int = 0

    @property
    def n_mismatches(self) -> int:
        return len(self.mismatches)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a kernel trace can hold (JSON has no NaN or Infinity)")


def read_trace(path: str | Path) -> list[tuple[int, dict]]:
    """Parse a JSON-Lines trace into ``[(lineno, obj), ...]``; blank lines are skipped.

    Raises :class:`TraceFormatError` naming file and line for a line that is not a JSON object.
    """
    out = []
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = raw[:e.start].count(b"\n") + 1
        raise TraceFormatError(f"{path}:{bad_line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") \
            from None
    rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:  # one C-level parse of the whole file; per-line parsing only to locate an error
        objs = json.loads("[" + ",".join(line for _, line in rows) + "]", parse_constant=_no_constant)
        if len(objs) != len(rows):
            raise ValueError("line count")
    except (ValueError, RecursionError):
        objs = None
    if objs is not None and all(type(o) is dict for o in objs):
        return [(n, o) for (n, _), o in zip(rows, objs, strict=True)]
    loads = json.loads
    for n, line in rows:
        try:
            obj = loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise TraceFormatError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:
            raise TraceFormatError(f"{path}:{n}: {e}") from None
        except RecursionError:
            raise TraceFormatError(f"{path}:{n}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    return out


# --------------------------------------------------------------------------------------------
# iova-trace
#: One section's replayer: an operation in, ``(expected, got)`` out, or None when there is nothing to compare.
_Run = Callable[[dict], tuple[object, object] | None]


def _iova_section(header: dict) -> _Run:
    """A replayer for one ``iova-trace`` section: returns a function op -> (expected, got)."""
    log = EventLog(keep=False)
    dom = IovaDomain(header["granule"], header.get("start_pfn", 1), log=log)

    def run(op: dict):
        kind = op["op"]
        if kind == "alloc":
            node = dom.alloc_iova(op["size"], op["limit_pfn"], op["size_aligned"])
            return op["expect"], (None if node is None else node.pfn_lo)
        if kind == "alloc_fast":
            return op["expect"], dom.alloc_iova_fast(op["size"], op["limit_pfn"], True)
        if kind == "free":
            dom.free_iova(op["pfn"])
            return None
        if kind == "free_fast":
            dom.free_iova_fast(op["pfn"], op["size"])
            return None
        if kind == "reserve":
            dom.reserve_iova(op["pfn_lo"], op["pfn_hi"])
            return None
        if kind == "check":
            exp = op["ranges"]
            got = dom.ranges()
            if len(exp) == len(got) and all(a[0] == b[0] and a[1] == b[1] and len(a) == 2
                                            for a, b in zip(exp, got, strict=True)):
                return None
            return [list(r) for r in exp], [list(r) for r in got]
        raise KeyError(kind)

    run.domain = dom  # type: ignore[attr-defined]
    return run


def _pgsize_section(header: dict) -> _Run:
    from iovalab.kernel.iommu import split_pages

    def run(op: dict):
        if op["op"] != "split":
            raise KeyError(op["op"])
        got = split_pages(op["pgsize_bitmap"], op["iova"], op["paddr"], op["size"])
        return op["expect"], [list(x) for x in got]

    return run


def _dma_section(header: dict) -> _Run:
    """Replayer for one ``dma-iova-trace`` section (data/kernel-traces/README.md).

    Domain as ``iommu_dma_init_domain()`` with the header's bitmap and aperture, strict, one CPU,
    no reservations; device from the header (PCI + !forcedac -> 32-bit-first workaround).
    """
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DMA_MAPPING_ERROR, DmaDomain, DmaIovaState
    from iovalab.kernel.dma_iova import dma_iova_range
    from iovalab.kernel.iommu import IommuDomain as _Iommu
    from iovalab.kernel.iommu import split_pages
    from iovalab.kernel.units import iova_align, iova_offset

    bitmap = header["pgsize_bitmap"]
    granule = header["granule"]
    aperture_end = header["aperture_end"]
    fmt = "x86-64" if granule == 0x1000 else "arm-lpae"
    ias = max(aperture_end.bit_length(), 32)
    log = EventLog(keep=True)
    # iommu_dma_init_domain: start_pfn = max(1, aperture_start >> order); honour a header that names
    # another start_pfn (or aperture_start) instead of assuming 0
    shift = granule.bit_length() - 1
    aperture_start = header.get("aperture_start", max(header.get("start_pfn", 1), 1) << shift
                                if header.get("start_pfn", 1) > 1 else 0)
    iommu = _Iommu(bitmap, fmt=fmt, ias=ias, aperture_start=aperture_start, aperture_end=aperture_end,
                   force_aperture=True, log=log, kernel=REFERENCE_KERNEL)
    dom = DmaDomain(iommu, strict=True, log=log, kernel=REFERENCE_KERNEL)
    d = header["device"]
    dev = Device(name="trace-dev", dma_mask=d["dma_mask"], bus_dma_limit=d.get("bus_dma_limit", 0),
                 is_pci=d.get("pci", True), forcedac=d.get("forcedac", False))
    states: dict[int, DmaIovaState] = {}

    def run(op: dict):
        k = op["op"]
        if k == "try_alloc":
            st = DmaIovaState()
            ok = dom.dma_iova_try_alloc(dev, st, op["phys"], op["size"])
            got: dict[str, object] | None = None
            if ok:
                base, length = dma_iova_range(st, dom.granule)
                got = {"addr": st.addr, "iova_len": length}
                states[st.addr] = st
            log.clear()
            return op["expect"], got
        if k == "free":
            st = states.pop(op["addr"])
            dom.dma_iova_free(dev, st)
            log.clear()
            return None
        if k == "map_page":
            mark = log.mark()
            addr = dom.dma_map_page(dev, op["phys"], op["size"])
            got = None
            if addr != DMA_MAPPING_ERROR:
                # what iommu_map() hands the driver for each map call (the trace's driver maps a
                # whole request per call; io-pgtable-arm would split at table ends, so
                # drivers/iommu/iommu.c: iommu_map_nosync() calls map_pages more than once)
                calls = [e for e in log.since(mark) if e.kind == "iommu_map_calls"]
                pages = [list(c) for e in calls
                         for c in split_pages(bitmap, e.args["iova"], e.args["paddr"], e.args["size"])]
                off = iova_offset(granule, op["phys"])
                got = {"dma_addr": addr, "iova_len": iova_align(granule, op["size"] + off), "pages": pages}
            log.clear()
            return op["expect"], got
        if k == "unmap_page":
            dom.dma_unmap_page(dev, op["dma_addr"], op["size"])
            log.clear()
            return None
        raise KeyError(k)

    run.domain = dom  # type: ignore[attr-defined]
    return run


#: trace kind -> factory(header) -> replayer(op) -> None | (expected, got)
REPLAYERS: dict[str, Callable[[dict], _Run]] = {
    "iova-trace": _iova_section,
    "pgsize-trace": _pgsize_section,
    "dma-iova-trace": _dma_section,
}


def check_ops(lines: Iterable[tuple[int, dict]], path: str = "<trace>",
              max_mismatches: int | None = None) -> TraceResult:
    """Replay parsed lines; every non-header line is one operation (state checks included)."""
    res = TraceResult(str(path))
    run = None
    for lineno, obj in lines:
        if "kind" in obj:
            factory = REPLAYERS.get(obj["kind"]) if isinstance(obj["kind"], str) else None
            if factory is None:
                raise TraceFormatError(f"{path}:{lineno}: unknown trace kind {obj['kind']!r} "
                                       f"(known: {', '.join(REPLAYERS)})")
            try:
                run = factory(obj)
            except (KeyError, TypeError, ValueError) as e:
                raise TraceFormatError(f"{path}:{lineno}: bad header: {e}") from None
            res.sections += 1
            continue
        if run is None:
            raise TraceFormatError(f"{path}:{lineno}: operation before any header line")
        res.ops += 1
        try:
            out = run(obj)
            if out is not None:
                expected, got = out
                differs = expected != got
        except KeyError as e:
            raise TraceFormatError(f"{path}:{lineno}: unknown op or missing field {e}") from None
        except (TypeError, ValueError, DmaError, IndexError, AttributeError, OverflowError, RecursionError) as e:
            # wrong field types, a free of what was never allocated, an unmap of what is not mapped
            # (DmaError): the trace cannot be replayed past this line
            raise TraceFormatError(f"{path}:{lineno}: cannot replay {_short(obj)}: {e}") from None
        if out is not None:
            if differs:
                res.mismatches.append(Mismatch(res.ops, lineno, obj, expected, got))
                if max_mismatches is not None and len(res.mismatches) >= max_mismatches:
                    break
    return res


def _short(obj: dict) -> str:
    text = json.dumps(obj)
    return text if len(text) <= 120 else text[:117] + "..."


def check_trace(path: str | Path, max_mismatches: int | None = None) -> TraceResult:
    """Read and replay one reference trace file."""
    return check_ops(read_trace(path), str(path), max_mismatches)
