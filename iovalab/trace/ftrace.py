"""Kernel trace text: read the lines of tracefs ``trace`` for the IOMMU/DMA events (writing them is
:mod:`iovalab.trace.ftrace_write`).

Mirrors the text the kernel prints, not a kernel data structure:

* the line prefix of ``kernel/trace/trace_output.c`` (``trace_print_context``: ``"%16s-%-7d "``,
  optional ``"(%7d) "`` TGID, ``"[%03d] "``, the ``trace_print_lat_fmt`` flags column when the
  ``irq-info`` option is on, ``" %5lu.%06lu"`` (or ``" %12llu"`` for counter clocks), ``": "``),
  then ``event_name: `` and the event's ``TP_printk`` text;
* the header of ``kernel/trace/trace.c`` (``print_trace_header`` / ``print_func_help_header_irq``);
* the ``TP_printk`` formats of ``include/trace/events/iommu.h`` (``map``, ``unmap``,
  ``io_page_fault``, group/domain events), ``include/trace/events/dma.h`` (``dma_map_page`` ...
  ``dma_sync_sg_for_device``), ``include/trace/events/swiotlb.h`` (``swiotlb_bounced``),
  ``drivers/iommu/intel/trace.h`` (``qi_submit``, ``cache_tag_*``) and the ``trace_marker``
  entry (``tracing_mark_write``).

Format variants accepted (the ``TP_printk`` formats of include/trace/events/{iommu,dma,swiotlb}.h
vs. the real 6.12.95 Debian capture in ``data/real``):

* ``dma_map_sg``: upstream 6.12.0 prints ``dir=%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s``;
  the stable/Debian 6.12.95 kernel (and mainline since) prints ``dir=%s nents=%d/%d ents=%d/%d%s
  dma_addrs=...`` where each pair is *traced/full* count (arrays capped at 128 entries,
  ``DMA_TRACE_MAX_ENTRIES``) and ``%s`` is ``" [TRUNCATED]"`` or empty. Both are parsed; the
  counts are only in ``fields`` when the line has them.
* ``dma_alloc``-class events are parsed with or without the ``dir=`` word.
* The flags column may be absent (``irq-info`` off), 4 characters (kernels before
  ``migrate-disable``, ~5.13) or 5 characters; a TGID column may be present.
* Timestamps may be ``secs.usecs`` (``global``/``local`` clocks) or a plain counter.
* Linux 7.3.4 (drivers/iommu/intel/trace.h): ``cache_tag_flush_range``/``_np`` print no ``pages``
  word (``fields`` then has no ``pages`` key), and a domain-wide flush is a ``cache_tag_flush_range``
  over ``[0x0-0xffffffffffffffff]`` (:func:`is_domain_flush`); ``dma_map_phys``/``dma_unmap_phys``
  replace ``dma_map_page``/``dma_unmap_page``; four more ``attrs`` names.

No kernel analogue for :func:`phases` (it splits a capture at ``WORKLOAD:`` marker lines).
This module reads lines and files; the event formats are :mod:`iovalab.trace.ftrace_formats`, writing is
:mod:`iovalab.trace.ftrace_write`, replaying a capture into the simulator :mod:`iovalab.trace.replay`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from iovalab.kernel.iova import MAX_CPUS
from iovalab.kernel.units import U64_MASK
from iovalab.trace.ftrace_formats import (
    DMA_ATTR_NAMES, DMA_DIRECTIONS, DMA_TRACE_MAX_ENTRIES, EVENT_FORMATS, KNOWN_EVENTS, decode_dma_attrs,
    parse_dma_attrs, parse_fields,
)

__all__ = [
    "LINE_PREFIX", "IRQ_CONTEXT",
    "KNOWN_EVENTS", "DMA_DIRECTIONS", "DMA_ATTR_NAMES", "DMA_TRACE_MAX_ENTRIES",
    "FtraceParseError", "TraceLine", "FtraceCapture", "Phase",
    "parse_ftrace", "iter_ftrace", "parse_line", "phases",
    "decode_dma_attrs", "is_domain_flush", "parse_dma_attrs",
]




class FtraceParseError(ValueError):
    """A line of a known event (or a line that is no event line at all) that does not parse.

    ``lineno`` (1-based), ``event`` (``None`` when the line prefix itself is unreadable),
    ``expected`` (the format that was expected) and ``line`` (the text) are kept as attributes.
    """

    def __init__(self, lineno: int, event: str | None, expected: str, line: str, why: str = ""):
        self.lineno = lineno
        self.event = event
        self.expected = expected
        self.line = line
        shown = line if len(line) <= 200 else line[:200] + "..."
        what = f"malformed {event!r} event" if event else "not a trace line"
        why = f" ({why})" if why else ""
        super().__init__(f"line {lineno}: {what}{why}: expected {expected}; got {shown!r}")


# -- one line ----------------------------------------------------------------------------------
#: the letters of the latency column's hardirq/softirq field that mean interrupt context
#: (kernel/trace/trace_output.c trace_print_lat_fmt: hardirq, hardirq in softirq, softirq, NMI)
IRQ_CONTEXT = "hHsZz"


@dataclass(slots=True)
class TraceLine:
    """One parsed event line.

    ``flags`` is the latency column (``"d.h1."``; ``None`` when the file has none);
    ``timestamp`` is in seconds (a counter value for non-time clocks) and ``timestamp_text`` its
    exact text; ``event`` the name before the event text (``"map"``); ``system`` from
    :data:`KNOWN_EVENTS`; ``fields`` the parsed values: ints for numbers, lists of ints for
    ``{..}`` arrays, strings for device/dir/attrs/flags and other words; ``raw`` the whole line
    without its newline; ``text`` what follows ``"event: "``; ``tgid`` when the TGID column is on.
    """

    lineno: int
    task: str
    pid: int
    cpu: int
    flags: str | None
    timestamp: float
    timestamp_text: str
    event: str
    system: str
    fields: dict[str, Any]
    raw: str
    text: str = ""
    tgid: int | None = None

    # -- context (trace_print_lat_fmt: irqs-off, need-resched, hardirq/softirq, preempt, migrate)
    @property
    def in_irq(self) -> bool:
        """Interrupt context: the hardirq/softirq column shows ``h``, ``H``, ``s`` (or NMI ``z``/``Z``)."""
        f = self.flags
        return f is not None and len(f) > 2 and f[2] in IRQ_CONTEXT

    @property
    def in_hardirq(self) -> bool:
        """Hard-irq context: ``h`` (hardirq), ``H`` (hardirq inside softirq) or ``Z`` (NMI in hardirq)."""
        f = self.flags
        return f is not None and len(f) > 2 and f[2] in "hHZ"

    @property
    def in_softirq(self) -> bool:
        """Soft-irq context: ``s``, or ``H`` (a hardirq that interrupted a softirq)."""
        f = self.flags
        return f is not None and len(f) > 2 and f[2] in "sH"

    @property
    def irqs_off(self) -> bool:
        """Interrupts were disabled (``d``, or ``D`` = irqs and BH off)."""
        f = self.flags
        return f is not None and len(f) > 0 and f[0] in "dD"

    # -- iommu:map / iommu:unmap helpers (None when the event has no such field)
    @property
    def iova(self) -> int | None:
        return self.fields.get("iova")

    @property
    def iova_end(self) -> int | None:
        """Exclusive end printed by ``map``/``unmap`` (``iova + size``)."""
        return self.fields.get("iova_end")

    @property
    def size(self) -> int | None:
        return self.fields.get("size")

    @property
    def paddr(self) -> int | None:
        return self.fields.get("paddr")

    @property
    def unmapped_size(self) -> int | None:
        return self.fields.get("unmapped_size")

    @property
    def device(self) -> str | None:
        return self.fields.get("device")


# -- regular expressions -------------------------------------------------------------------------

#: the part of a ``trace`` line before the event's text: task-pid, optional (tgid), [cpu], optional
#: latency flags, timestamp, event name (kernel/trace/trace_output.c print_trace_fmt / trace_print_context)
LINE_PREFIX = re.compile(
    r" *(?P<task>.+?)-(?P<pid>[0-9]{1,10}) +"
    r"(?:\( *(?P<tgid>[0-9]{1,10}|-+)\) +)?"
    r"\[(?P<cpu>[0-9]{1,6})\] +"
    r"(?:(?P<flags>[^ ]{4,5}) +)?"
    r"(?P<ts>[0-9]{1,20}(?:\.[0-9]{1,12})?): "
    r"(?P<event>\w+):(?: (?P<text>.*))?",
    re.ASCII)
_PREFIX_TEXT = LINE_PREFIX.pattern[:LINE_PREFIX.pattern.index("(?P<event>")]
#: the two most frequent lines, ``iommu:map`` and ``iommu:unmap``, in one match (no kernel analogue: a
#: shortcut of the generic prefix + event-format match, which still judges any line it does not take)
_FAST_MAP_UNMAP = re.compile(
    _PREFIX_TEXT + r"(?P<event>map|unmap): (?P<text>IOMMU: iova=0x([0-9a-fA-F]{1,16}) - 0x([0-9a-fA-F]{1,16}) "
    r"(?:paddr=0x([0-9a-fA-F]{1,16}) size=([0-9]{1,20})|size=([0-9]{1,20}) unmapped_size=([0-9]{1,20})))",
    re.ASCII)
#: CPU numbers are bounded by NR_CPUS: at most MAX_CPUS (8192, x86_64 CONFIG_MAXSMP's NR_CPUS; arm64's
#: Kconfig allows at most 4096). A larger "[CPU]" or "#P:" comes from no kernel, and the replay keeps
#: per-CPU state for every CPU, so it is refused.
_CPU_RULE = "{} is beyond NR_CPUS: at most " + str(MAX_CPUS) + " CPUs (x86_64 CONFIG_MAXSMP), numbered from 0"
_PREFIX_EXPECTED = "'TASK-PID [CPU] FLAGS SECS.USECS: EVENT: TEXT' (FLAGS optional)"
_LOST = re.compile(r"CPU:(?P<cpu>[0-9]{1,6}) \[LOST (?P<n>[0-9]{1,20}) EVENTS\]", re.ASCII)
_ENTRIES = re.compile(r"# entries-in-buffer/entries-written: (?P<buf>[0-9]{1,20})/(?P<written>[0-9]{1,20})"
                      r" +#P:(?P<cpus>[0-9]{1,6})", re.ASCII)
_TRACER = re.compile(r"# tracer: (?P<tracer>\S+)", re.ASCII)





def parse_line(line: str, lineno: int = 1) -> TraceLine | None:
    """Parse one event line of a known event; ``None`` for an unknown event.

    Raises :class:`FtraceParseError` when the line is no trace line, or when a known event's text
    does not match its kernel format. Comment/blank/``[LOST n EVENTS]`` lines are not handled here
    (see :func:`parse_ftrace`).
    """
    m = LINE_PREFIX.fullmatch(line)
    if m is None:
        raise FtraceParseError(lineno, None, _PREFIX_EXPECTED, line)
    event = m.group("event")
    system = KNOWN_EVENTS.get(event)
    if system is None:
        return None
    text = m.group("text") or ""
    fields, expected, why = parse_fields(event, text)
    if fields is None:
        raise FtraceParseError(lineno, event, expected, line, why)
    tgid = m.group("tgid")
    ts = m.group("ts")
    return TraceLine(lineno, m.group("task"), int(m.group("pid")), int(m.group("cpu")),
                     m.group("flags"), float(ts), ts, event, system, fields, line, text,
                     int(tgid) if tgid is not None and tgid[0] != "-" else None)


# -- a whole capture -----------------------------------------------------------------------------

@dataclass
class FtraceCapture:
    """A parsed trace file.

    Header: ``tracer`` (``# tracer: nop``), ``entries_in_buffer``/``entries_written`` and
    ``nr_cpus`` (``#P:``), each ``None`` when absent. ``lines``: every known-event line in file
    order (markers included); ``markers``: the ``tracing_mark_write`` lines (their ``text`` is the
    marker); ``counts``: known events by name; ``unknown_count``/``unknown_events``: event lines of
    other events, skipped; ``bad_lines``/``errors``: malformed lines skipped with ``strict=False``;
    ``lost_events``: sum of ``CPU:n [LOST m EVENTS]`` lines; ``continuation_lines``: `` => `` stack
    trace lines; ``cpus``: CPUs seen on known-event lines; ``nr_lines``: lines read.
    """

    tracer: str | None = None
    entries_in_buffer: int | None = None
    entries_written: int | None = None
    nr_cpus: int | None = None
    lines: list[TraceLine] = field(default_factory=list, repr=False)
    markers: list[TraceLine] = field(default_factory=list, repr=False)
    counts: dict[str, int] = field(default_factory=dict)
    unknown_count: int = 0
    unknown_events: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0
    errors: list[FtraceParseError] = field(default_factory=list, repr=False)
    lost_events: int = 0
    continuation_lines: int = 0
    cpus: list[int] = field(default_factory=list)
    nr_lines: int = 0
    source: str | None = None

    def events(self, *names: str) -> list[TraceLine]:
        """The lines of the named events, in file order (``cap.events('map', 'unmap')``)."""
        want = set(names)
        return [ln for ln in self.lines if ln.event in want]

    @property
    def event_lines(self) -> int:
        """Known + unknown event lines (equals ``entries_in_buffer`` for a complete ``trace`` file)."""
        return len(self.lines) + self.unknown_count + self.bad_lines


def _split(text: str) -> list[str]:
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()                 # the newline that ends the last line
    return parts


def _open_lines(source) -> tuple[Iterable[str], str | None, IO[str] | None]:
    """The lines of ``source`` one at a time (a file is read as it is iterated, never whole), its
    name, and the file to close afterwards."""
    if isinstance(source, str) and "\n" in source:
        return _split(source), None, None
    if isinstance(source, (str, os.PathLike)):
        f = open(source, encoding="utf-8", errors="replace", newline="\n")
        return f, os.fspath(source), f
    if isinstance(source, (bytes, bytearray)):
        return _split(bytes(source).decode("utf-8", errors="replace")), None, None
    name = getattr(source, "name", None)
    return source, name if isinstance(name, str) else None, None


def parse_ftrace(lines_or_path: str | os.PathLike | Iterable[str] | IO[str], *,
                 strict: bool = True) -> FtraceCapture:
    """Parse a tracefs ``trace`` text into a :class:`FtraceCapture` (every line kept in ``lines``).

    ``lines_or_path``: a path (``str``/``PathLike``; read as UTF-8 with replacement), trace text
    (a ``str`` containing a newline, or ``bytes``), or any iterable of lines (a list, an open text
    file). Comment (``#``) and blank lines are skipped, header values read from them. Lines of
    unknown events are counted and skipped. A line that is no trace line, or a known event whose
    text does not match its kernel format, raises :class:`FtraceParseError` (``strict=True``) or
    is counted in ``bad_lines`` and skipped (``strict=False``). :func:`iter_ftrace` reads the same
    lines one at a time, for captures too big to hold.
    """
    cap = FtraceCapture()
    lines, markers = cap.lines, cap.markers
    for tl in iter_ftrace(lines_or_path, strict=strict, into=cap):
        lines.append(tl)
        if tl.system == "ftrace":
            markers.append(tl)
    return cap


def iter_ftrace(lines_or_path: str | os.PathLike | Iterable[str] | IO[str], *, strict: bool = True,
                into: FtraceCapture | None = None) -> Iterator[TraceLine]:
    """The known-event lines of a ``trace`` text, one :class:`TraceLine` at a time, in file order
    (see :func:`parse_ftrace` for the sources and the errors). A file is read as it is iterated, so
    the memory does not grow with the capture. ``into``: a :class:`FtraceCapture` whose header values,
    ``counts``, ``cpus``, ``unknown_*``, ``bad_lines``/``errors``, ``lost_events`` and ``nr_lines``
    are filled as the lines go by (its ``lines`` are left alone); complete once the iterator ends."""
    src, name, to_close = _open_lines(lines_or_path)
    cap = into if into is not None else FtraceCapture()
    cap.source = name
    counts: dict[str, int] = cap.counts
    unknown: dict[str, int] = cap.unknown_events
    cpus: set[int] = set(cap.cpus)
    prefix = LINE_PREFIX.fullmatch
    fast = _FAST_MAP_UNMAP.fullmatch
    specs = EVENT_FORMATS
    lineno = 0
    try:
        for lineno, line in enumerate(src, 1):
            if line.__class__ is not str:
                if isinstance(line, (bytes, bytearray)):
                    line = bytes(line).decode("utf-8", errors="replace")
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            fm = fast(line) if "map: IOMMU: " in line else None
            if fm is not None:
                task, pid, tgid, cpu_s, flags, ts, event, text, a, b, paddr, size, usize, unmapped = fm.groups()
                # the same conversion and checks as the event's format (map: iova, end, paddr, size;
                # unmap: iova, end, size, unmapped_size); a line in the other event's shape is odd
                if (paddr is None) != (event == "map"):
                    fields = EVENT_FORMATS[event].fields_of((a, b, paddr, size) if paddr is not None
                                                            else (a, b, usize, unmapped))
                else:
                    fields = None
                cpu = int(cpu_s)
                if fields is not None and cpu < MAX_CPUS:
                    counts[event] = counts.get(event, 0) + 1
                    if cpu not in cpus:
                        cpus.add(cpu)
                        cap.cpus = sorted(cpus)
                    yield TraceLine(lineno, task, int(pid), cpu, flags, float(ts), ts, event, "iommu", fields, line,
                                    text, int(tgid) if tgid is not None and tgid[0] != "-" else None)
                    continue
                # anything odd: the generic path below says what is wrong
            m = prefix(line)
            if m is None:
                s = line.lstrip()
                if not s:
                    continue
                if s[0] == "#":
                    if _header(cap, s):
                        err = FtraceParseError(lineno, None, "'#P:CPUS' with CPUS <= NR_CPUS", line,
                                               _CPU_RULE.format(f"#P:{cap.nr_cpus}"))
                        cap.nr_cpus = None
                        if strict:
                            raise err
                        cap.bad_lines += 1
                        cap.errors.append(err)
                    continue
                lost = _LOST.fullmatch(s.rstrip())
                if lost is not None:
                    cap.lost_events += int(lost.group("n"))
                elif s.startswith("=>") or s == "<stack trace>" or s == "<user stack trace>":
                    cap.continuation_lines += 1
                elif strict:
                    raise FtraceParseError(lineno, None, _PREFIX_EXPECTED, line)
                else:
                    cap.bad_lines += 1
                    cap.errors.append(FtraceParseError(lineno, None, _PREFIX_EXPECTED, line))
                continue
            task, pid, tgid, cpu_s, flags, ts, event, text = m.groups()
            system = KNOWN_EVENTS.get(event)
            if system is None:
                cap.unknown_count += 1
                unknown[event] = unknown.get(event, 0) + 1
                continue
            text = text or ""
            if event in specs:
                parsed, expected, why = parse_fields(event, text)
                if parsed is None:
                    err = FtraceParseError(lineno, event, expected, line, why)
                    if strict:
                        raise err
                    cap.bad_lines += 1
                    cap.errors.append(err)
                    continue
                fields = parsed
            else:
                fields = {"text": text}
            cpu = int(cpu_s)
            if cpu >= MAX_CPUS:
                err = FtraceParseError(lineno, event, _PREFIX_EXPECTED, line, _CPU_RULE.format(f"CPU {cpu}"))
                if strict:
                    raise err
                cap.bad_lines += 1
                cap.errors.append(err)
                continue
            counts[event] = counts.get(event, 0) + 1
            if cpu not in cpus:
                cpus.add(cpu)
                cap.cpus = sorted(cpus)
            yield TraceLine(lineno, task, int(pid), cpu, flags, float(ts), ts, event, system, fields, line, text,
                            int(tgid) if tgid is not None and tgid[0] != "-" else None)
    finally:
        cap.nr_lines = lineno
        if to_close is not None:
            to_close.close()


def _header(cap: FtraceCapture, s: str) -> bool:
    """Read a header line; True when its ``#P:`` is beyond :data:`MAX_CPUS`."""
    if cap.tracer is None:
        m = _TRACER.match(s)
        if m:
            cap.tracer = m.group("tracer")
            return False
    if cap.entries_in_buffer is None:
        m = _ENTRIES.match(s)
        if m:
            cap.entries_in_buffer = int(m.group("buf"))
            cap.entries_written = int(m.group("written"))
            cap.nr_cpus = int(m.group("cpus"))
            return not 1 <= cap.nr_cpus <= MAX_CPUS
    return False


# -- phases ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Phase:
    """The lines between one ``WORKLOAD:`` marker and the next (no kernel analogue).

    ``name``: marker text after the prefix (``"(before first marker)"`` for events before any
    marker); ``marker_lineno``: the marker's line (``None`` for that leading phase);
    ``first_lineno``/``last_lineno``: first and last file line of the phase (marker included);
    ``start``/``stop``: slice of ``capture.lines`` holding the phase's event lines (the
    ``WORKLOAD`` marker itself excluded); ``counts``: known events in it by name.
    """

    name: str
    marker_lineno: int | None
    first_lineno: int
    last_lineno: int
    start: int
    stop: int
    counts: dict[str, int]

    @property
    def map_count(self) -> int:
        return self.counts.get("map", 0)

    @property
    def unmap_count(self) -> int:
        return self.counts.get("unmap", 0)

    @property
    def dma_count(self) -> int:
        """All ``dma:*`` events of the phase."""
        return sum(n for ev, n in self.counts.items() if KNOWN_EVENTS.get(ev) == "dma")


def phases(capture: FtraceCapture, prefix: str = "WORKLOAD:") -> list[Phase]:
    """Split ``capture.lines`` at the markers whose text starts with ``prefix``."""
    lines = capture.lines
    cuts = [i for i, ln in enumerate(lines)
            if ln.event == "tracing_mark_write" and ln.text.startswith(prefix)]
    out: list[Phase] = []

    def make(name: str, marker: TraceLine | None, start: int, stop: int) -> Phase:
        counts: dict[str, int] = {}
        for ln in lines[start:stop]:
            counts[ln.event] = counts.get(ln.event, 0) + 1
        first = marker.lineno if marker else lines[start].lineno
        last = lines[stop - 1].lineno if stop > start else first
        return Phase(name, marker.lineno if marker else None, first, last, start, stop, counts)

    head_stop = cuts[0] if cuts else len(lines)
    if head_stop > 0:
        out.append(make("(before first marker)", None, 0, head_stop))
    for k, i in enumerate(cuts):
        stop = cuts[k + 1] if k + 1 < len(cuts) else len(lines)
        out.append(make(lines[i].text[len(prefix):].strip(), lines[i], i + 1, stop))
    return out


# -- flush lines -------------------------------------------------------------------------------

def is_domain_flush(line: TraceLine) -> bool:
    """A domain-wide VT-d IOTLB flush (``flush_iotlb_all``): a 6.12 ``cache_tag_flush_all`` line, or a
    7.3 ``cache_tag_flush_range`` over ``[0x0-0xffffffffffffffff]`` (7.3.4 drivers/iommu/intel/cache.c:
    ``cache_tag_flush_all()`` calls ``cache_tag_flush_range(domain, 0, ULONG_MAX, 0)``)."""
    if line.event == "cache_tag_flush_all":
        return True
    f = line.fields
    return line.event == "cache_tag_flush_range" and f.get("start") == 0 and f.get("end") == U64_MASK
