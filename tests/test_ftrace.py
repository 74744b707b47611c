"""Tests for iovalab.trace.ftrace: parsing the real 6.12 capture, format variants, errors, fuzzing,
and the writer (exact kernel layout, loss-free round trips)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iovalab.trace.ftrace import (
    DMA_ATTR_NAMES,
    DMA_TRACE_MAX_ENTRIES,
    KNOWN_EVENTS,
    FtraceParseError,
    decode_dma_attrs,
    parse_dma_attrs,
    parse_ftrace,
    parse_line,
    phases,
)
from iovalab.trace.ftrace_write import (
    format_dma_alloc,
    format_dma_free,
    format_dma_map_page,
    format_dma_map_sg,
    format_dma_unmap_page,
    format_dma_unmap_sg,
    format_fields,
    format_io_page_fault,
    format_line,
    format_map,
    format_swiotlb_bounced,
    format_unmap,
    write_ftrace,
)

REAL = Path(__file__).resolve().parent.parent / "data" / "real" / "strict-smp1.trace"


@pytest.fixture(scope="module")
def cap():
    return parse_ftrace(REAL)


@pytest.fixture(scope="module")
def real_lines():
    return REAL.read_text(encoding="utf-8").split("\n")[:-1]


# -- the real capture ------------------------------------------------------------------------------

def test_real_counts_match_readme(cap):
    c = cap.counts
    assert (c["map"], c["unmap"], c["dma_map_page"], c["dma_map_sg"], c["dma_alloc"]) == (
        7085, 1208, 645, 563, 7)
    # README: each dma_unmap_* count equals its map counterpart; no free/sync/fault events.
    assert c["dma_unmap_page"] == 645 and c["dma_unmap_sg"] == 563
    assert c["tracing_mark_write"] == 24
    assert not {"dma_free", "dma_map_sg_err", "io_page_fault"} & set(c)
    assert not any(ev.startswith("dma_sync") for ev in c)
    assert cap.unknown_count == 0 and cap.bad_lines == 0 and cap.lost_events == 0


def test_real_header(cap):
    assert cap.tracer == "nop"
    assert (cap.entries_in_buffer, cap.entries_written, cap.nr_cpus) == (10740, 10740, 1)
    assert cap.event_lines == cap.entries_in_buffer == len(cap.lines)
    assert cap.cpus == [0]
    assert cap.nr_lines == 10752


def test_real_first_lines(cap):
    m = cap.lines[1]
    assert (m.lineno, m.task, m.pid, m.cpu, m.flags) == (14, "kworker/u4:1", 29, 0, ".....")
    assert (m.timestamp, m.timestamp_text, m.event, m.system) == (20.447681, "20.447681", "map", "iommu")
    assert (m.iova, m.iova_end, m.paddr, m.size) == (0xFFFFF000, 0x100000000, 0xA8FB000, 4096)
    assert not m.in_irq
    a = cap.lines[2]
    assert a.event == "dma_alloc" and a.fields == {
        "device": "0000:00:01.0", "dir": "BIDIRECTIONAL", "dma_addr": 0xFFFFF000, "size": 512,
        "virt_addr": "(____ptrval____)", "flags": "GFP_KERNEL", "attrs": ""}
    u = next(ln for ln in cap.lines if ln.event == "unmap")
    assert (u.lineno, u.flags, u.in_irq, u.in_hardirq, u.irqs_off) == (20, "d.h..", True, True, True)
    assert (u.iova, u.iova_end, u.size, u.unmapped_size) == (0xFFFFD000, 0xFFFFE000, 4096, 4096)


def test_real_readme_sg_example(cap):
    sg = next(ln for ln in cap.events("dma_map_sg") if ln.timestamp_text == "20.643215")
    assert sg.fields == {
        "device": "0000:00:01.0", "dir": "FROM_DEVICE", "nents_traced": 2, "nents": 2,
        "ents_traced": 1, "ents": 1, "truncated": False, "dma_addrs": [0xFFFDC000], "sizes": [0x2000],
        "phys_addrs": [0x3FFBB000, 0x3FF77000], "attrs": "NO_WARN"}
    i = cap.lines.index(sg)
    # README order: one map line per physically contiguous chunk, before the dma_map_sg line.
    assert [ln.event for ln in cap.lines[i - 2:i]] == ["map", "map"]
    assert [ln.paddr for ln in cap.lines[i - 2:i]] == sg.fields["phys_addrs"]
    us = next(ln for ln in cap.lines[i:] if ln.event == "dma_unmap_sg")
    assert us.fields["phys_addrs"] == sg.fields["phys_addrs"] and us.fields["attrs"] == ""
    assert us.task == "rcu_preempt" and us.flags == "d.h1." and us.in_irq


def test_real_observations(cap):
    maps = cap.events("map")
    assert min(m.iova for m in maps) == 0xFFEB0000
    assert all(m.iova_end == m.iova + m.size and m.iova_end <= 1 << 32 for m in maps)
    assert {ln.fields["device"] for ln in cap.lines if ln.system == "dma"} == {"0000:00:01.0"}
    assert all(u.size == u.unmapped_size for u in cap.events("unmap"))
    # completion-side unmaps run in interrupt context much more often than not
    assert sum(u.in_irq for u in cap.events("unmap")) > 1000


def test_real_every_line_reformats_exactly(cap):
    """Re-create each event text from its fields and the line from its prefix fields: the result
    must be the original line, byte for byte (proves the format strings and column widths)."""
    checked = {}
    for ln in cap.lines:
        text = format_fields(ln.event, ln.fields)
        assert text == ln.text, ln.lineno
        assert format_line(ln.task, ln.pid, ln.cpu, ln.flags, ln.timestamp, ln.event, text) == ln.raw
        checked[ln.event] = checked.get(ln.event, 0) + 1
    assert checked == cap.counts


def test_real_write_reproduces_file(cap):
    buf = io.StringIO()
    assert write_ftrace(cap.lines, buf) == 10740
    assert buf.getvalue() == REAL.read_text(encoding="utf-8")


def test_real_phases(cap):
    ph = phases(cap)
    assert len(ph) == 24                  # no events before the first marker
    assert ph[0].name == "insmod nvme modules" and ph[0].marker_lineno == 13
    assert ph[-1].name == "workload done" and ph[-1].start == ph[-1].stop
    assert ph[1].name == "nvme0n1 present" and ph[1].counts == {}
    assert sum(p.dma_count > 0 for p in ph) == 22          # README: "22 workload phases that do DMA"
    assert sum(p.map_count for p in ph) == 7085 and sum(p.unmap_count for p in ph) == 1208
    assert sum(p.dma_count for p in ph) == 2 * 645 + 2 * 563 + 7
    # 6 coherent allocations at probe; the 7th (GFP_ATOMIC, a PRP-list pool page) comes with the
    # first 3-page reads.
    assert ph[0].counts["dma_alloc"] == 6
    (late,) = [p for p in ph if "dma_alloc" in p.counts and p is not ph[0]]
    assert late.name == "direct read bs=12288 count=32 (3 pages)"
    assert cap.lines[late.start:late.stop][0].lineno > late.marker_lineno
    assert [ln.fields["flags"] for ln in cap.events("dma_alloc")] == ["GFP_KERNEL"] * 6 + ["GFP_ATOMIC"]
    p = ph[2]
    assert p.name == "direct read bs=512 count=64"
    assert (p.map_count, p.unmap_count, p.counts["dma_map_page"]) == (64, 64, 64)
    lines = cap.lines[p.start:p.stop]
    assert lines[0].lineno > p.marker_lineno and lines[-1].lineno == p.last_lineno
    assert all(ln.event != "tracing_mark_write" for ln in lines)
    for a, b in zip(ph, ph[1:], strict=False):
        assert a.stop + 1 == b.start and a.last_lineno < b.first_lineno


def test_phases_without_markers():
    cap = parse_ftrace([_line("map", format_map(0x1000, 0x2000, 4096))])
    (p,) = phases(cap)
    assert p.name == "(before first marker)" and p.marker_lineno is None and p.map_count == 1
    assert phases(parse_ftrace([])) == []


# -- other events and format variants -------------------------------------------------------------

def _line(event, text, flags=".....", task="t", pid=1, cpu=0, ts=1.0):
    return format_line(task, pid, cpu, flags, ts, event, text)


README_IOTLB = [
    "    kworker/u4:1-29      [000] d.h1.    17.923267: cache_tag_flush_range: dmar0 dmar0[0] "
    "type iotlb did 3 [0xffffd000-0xffffdfff] addr 0xffffd000 pages 0x1 mask 0x0",
    "    kworker/u4:1-29      [000] d..2.    17.910117: qi_submit: iotlb_inv dmar0: 0x300f2 "
    "0xfffff000 0x0 0x0",
    "    kworker/u4:1-30      [000] d.s2.    18.961940: cache_tag_flush_all: dmar0/dmar0 type iotlb "
    "did 3 pasid 0 ref 1",
]


def test_intel_iommu_events_from_readme():
    cap = parse_ftrace(README_IOTLB)
    f, q, a = cap.lines
    assert f.system == q.system == a.system == "intel_iommu"
    assert f.fields == {"iommu": "dmar0", "dev": "dmar0", "pasid": 0, "type": "iotlb", "domain_id": 3,
                        "start": 0xFFFFD000, "end": 0xFFFFDFFF, "addr": 0xFFFFD000, "pages": 1, "mask": 0}
    assert q.fields == {"type": "iotlb_inv", "iommu": "dmar0", "qw0": 0x300F2, "qw1": 0xFFFFF000,
                        "qw2": 0, "qw3": 0}
    assert a.fields == {"iommu": "dmar0", "dev": "dmar0", "type": "iotlb", "domain_id": 3, "pasid": 0,
                        "ref": 1}
    assert a.in_irq and a.in_softirq and not a.in_hardirq


def test_map_sg_spec_layout_and_truncated():
    old = "0000:01:00.0 dir=TO_DEVICE dma_addrs={0xfff00000} sizes={0x3000} phys_addrs={0x1000,0x5000} attrs="
    ln = parse_line(_line("dma_map_sg", old))
    assert "nents" not in ln.fields and ln.fields["phys_addrs"] == [0x1000, 0x5000]
    assert format_fields("dma_map_sg", ln.fields) == old
    assert format_dma_map_sg("0000:01:00.0", 1, [0xFFF00000], [0x3000], [0x1000, 0x5000], 0,
                             counts=False) == old
    phys = list(range(0x1000, 0x1000 * 201, 0x1000))
    text = format_dma_map_sg("d", "TO_DEVICE", [0xF0000000], [200 * 4096], phys, "SKIP_CPU_SYNC")
    assert " nents=128/200 ents=1/1 [TRUNCATED] dma_addrs=" in text
    ln = parse_line(_line("dma_map_sg", text))
    f = ln.fields
    assert (f["nents"], f["nents_traced"], f["truncated"], len(f["phys_addrs"])) == (
        200, DMA_TRACE_MAX_ENTRIES, True, 128)
    assert format_fields("dma_map_sg", f) == text


@pytest.mark.parametrize("event,text,expect", [
    ("dma_map_phys", "0000:00:01.0 dir=TO_DEVICE dma_addr=fff0 size=8 phys_addr=10 attrs=MMIO",
     {"dma_addr": 0xFFF0, "phys_addr": 0x10, "attrs": "MMIO"}),
    ("dma_unmap_resource", "d dir=NONE dma_addr=0 size=0 attrs=SKIP_CPU_SYNC|NO_WARN",
     {"dir": "NONE", "attrs": "SKIP_CPU_SYNC|NO_WARN"}),
    ("dma_alloc", "d dma_addr=fffff000 size=512 virt_addr=000000001234abcd flags=GFP_KERNEL|__GFP_ZERO "
     "attrs=", {"flags": "GFP_KERNEL|__GFP_ZERO"}),
    ("dma_free", "d dir=BIDIRECTIONAL dma_addr=fffff000 size=512 virt_addr=(____ptrval____) attrs=",
     {"dma_addr": 0xFFFFF000, "virt_addr": "(____ptrval____)"}),
    ("dma_sync_single_for_cpu", "d dir=FROM_DEVICE dma_addr=ffffd200 size=512",
     {"dma_addr": 0xFFFFD200, "size": 512}),
    ("dma_sync_sg_for_device", "d dir=TO_DEVICE dma_addrs={0x1000,0x3000} sizes={0x200,0x1000}",
     {"dma_addrs": [0x1000, 0x3000], "sizes": [0x200, 0x1000]}),
    ("dma_map_sg_err", "d dir=TO_DEVICE dma_addrs={0x1000} err=-12 attrs=", {"err": -12}),
    ("swiotlb_bounced", "dev_name: 0000:00:01.0 dma_mask=ffffffffffffffff dev_addr=3ffbb000 size=512 FORCE",
     {"dma_mask": 2**64 - 1, "dev_addr": 0x3FFBB000, "force": "FORCE"}),
    ("io_page_fault", "IOMMU:nvme 0000:00:01.0 iova=0x00000000fffff000 flags=0x0001",
     {"driver": "nvme", "device": "0000:00:01.0", "iova": 0xFFFFF000, "flags": 1}),
    ("add_device_to_group", "IOMMU: groupID=1 device=0000:00:01.0", {"group_id": 1}),
    ("tracing_mark_write", "WORKLOAD: x", {"text": "WORKLOAD: x"}),
])
def test_event_variants(event, text, expect):
    ln = parse_line(_line(event, text))
    assert ln.system == KNOWN_EVENTS[event]
    for k, v in expect.items():
        assert ln.fields[k] == v


def test_prefix_variants():
    raw = "            init-1     [000]    20.228920: map: " + format_map(0x1000, 0, 4096)
    ln = parse_line(raw)                        # irq-info off: no flags column
    assert ln.flags is None and not ln.in_irq and ln.timestamp == 20.228920
    assert format_line("init", 1, 0, None, 20.228920, "map", format_map(0x1000, 0, 4096)) == (
        "            init-1       [000]     20.228920: map: " + format_map(0x1000, 0, 4096))
    ln = parse_line("          <idle>-0     [001] d.h1  1234.000001: unmap: "
                    + format_unmap(0x1000, 4096, 4096))            # 4-character flags, pid %-5d
    assert (ln.task, ln.cpu, ln.flags, ln.in_hardirq) == ("<idle>", 1, "d.h1", True)
    t = format_line("Web Content", 4242, 3, ".....", 5.5, "map", "IOMMU: x", tgid=4200)
    assert t.startswith("     Web Content-4242    (   4200) [003] .....     5.500000: ")
    with pytest.raises(FtraceParseError):
        parse_line(t)                                              # map text is malformed
    ln = parse_line(t.replace("IOMMU: x", format_map(0, 0, 0)))
    assert (ln.task, ln.pid, ln.tgid) == ("Web Content", 4242, 4200)
    ln = parse_line("  a-b-7 (-------) [000] .....  123456789012: tracing_mark_write: hi")
    assert (ln.task, ln.pid, ln.tgid, ln.timestamp_text, ln.text) == ("a-b", 7, None, "123456789012", "hi")


def test_wide_columns_grow_like_printf():
    t = format_line("a_very_long_task_name", 123456789, 1234, "dNh2.", 123456.5, "map", "x")
    assert t == "a_very_long_task_name-123456789 [1234] dNh2. 123456.500000: map: x"
    assert format_line("t", 1, 0, ".....", "7.000001", "e", "") == (
        "               t-1       [000] .....     7.000001: e: ")


def test_source_kinds(tmp_path):
    lines = [_line("map", format_map(0x1000, 0x2000, 4096)), _line("unmap", format_unmap(0x1000, 4096, 4096))]
    text = "\r\n".join(lines) + "\r\n"                               # CRLF tolerated
    p = tmp_path / "t.trace"
    p.write_bytes(text.encode())
    for src in (p, str(p), text, text.encode(), io.StringIO(text), lines):
        cap = parse_ftrace(src)
        assert [ln.event for ln in cap.lines] == ["map", "unmap"]
        assert cap.lines[0].raw == lines[0] and cap.nr_lines == 2


def test_skipped_lines_are_accounted():
    lines = [
        "# tracer: nop", "", "   ", "##### CPU 1 buffer started ####",
        _line("sched_switch", "prev_comm=a prev_pid=1"),
        "CPU:1 [LOST 17 EVENTS]",
        _line("map", format_map(0x1000, 0x2000, 4096), cpu=1),
        " => __iommu_map+0x10/0x20",
        "<stack trace>",
    ]
    cap = parse_ftrace(lines)
    assert cap.unknown_count == 1 and cap.unknown_events == {"sched_switch": 1}
    assert cap.lost_events == 17 and cap.continuation_lines == 2
    assert cap.counts == {"map": 1} and cap.cpus == [1] and cap.tracer == "nop"


# -- malformed lines -------------------------------------------------------------------------------

GOOD_MAP = _line("map", format_map(0xFFFFF000, 0xA8FB000, 4096))


@pytest.mark.parametrize("bad,why", [
    (GOOD_MAP[:-3], "truncated"),
    (GOOD_MAP.replace("paddr=0x000000000a8fb000", "paddr=0x00000000zz8fb000"), "garbled hex"),
    (GOOD_MAP.replace("size=4096", "size=8192"), "end is not iova + size"),
    (GOOD_MAP.replace("size=4096", "size=" + "9" * 25), "too many digits"),
])
def test_malformed_known_event(bad, why):
    with pytest.raises(FtraceParseError) as ei:
        parse_ftrace(["# tracer: nop", GOOD_MAP, bad])
    e = ei.value
    assert (e.lineno, e.event) == (3, "map")
    assert "line 3" in str(e) and "'map'" in str(e) and "paddr=0x%016llx" in str(e)
    cap = parse_ftrace(["# tracer: nop", GOOD_MAP, bad], strict=False)
    assert cap.bad_lines == 1 and cap.counts == {"map": 1} and cap.errors[0].lineno == 3


def test_malformed_sg_counts_and_garbage_line():
    sg = format_dma_map_sg("d", "TO_DEVICE", [0x1000], [0x2000], [0x5000, 0x9000], "")
    with pytest.raises(FtraceParseError, match="nents=2/2 ents=1/1 but 1 phys_addrs"):
        parse_ftrace([_line("dma_map_sg", sg.replace("phys_addrs={0x5000,0x9000}", "phys_addrs={0x5000}"))])
    with pytest.raises(FtraceParseError, match="line 1: not a trace line"):
        parse_ftrace(["hello world"])
    cap = parse_ftrace(["hello world", GOOD_MAP], strict=False)
    assert cap.bad_lines == 1 and cap.errors[0].event is None and len(cap.lines) == 1


_REAL_SAMPLE = [
    GOOD_MAP,
    _line("unmap", format_unmap(0xFFFFD000, 4096, 4096), flags="d.h.."),
    _line("dma_map_sg", format_dma_map_sg("0000:00:01.0", "FROM_DEVICE", [0xFFFDC000], [0x2000],
                                          [0x3FFBB000, 0x3FF77000], "NO_WARN")),
    _line("dma_map_page", format_dma_map_page("0000:00:01.0", 2, 0xFFFFD000, 4096, 0xAAF9000, 0)),
    _line("dma_alloc", format_dma_alloc("0000:00:01.0", 0, 0xFFFFF000, 512)),
    README_IOTLB[0], README_IOTLB[1], README_IOTLB[2],
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=120), max_size=8))
def test_fuzz_random_text_never_crashes(lines):
    _never_crash(lines)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crashes(data):
    _never_crash(data.decode("utf-8", errors="replace").split("\n"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_REAL_SAMPLE), st.data())
def test_fuzz_mutated_real_lines(line, data):
    """Random edits of good lines: either still a valid line, or FtraceParseError."""
    s = line
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(s)))
        op = data.draw(st.sampled_from(["del", "ins", "cut"]))
        if op == "del":
            s = s[:i] + s[i + 1:]
        elif op == "ins":
            s = s[:i] + data.draw(st.sampled_from(list("0x9fz{},= -:[].\t\x00é"))) + s[i:]
        else:
            s = s[:i]
    _never_crash([s])


def _never_crash(lines):
    for strict in (True, False):
        try:
            cap = parse_ftrace(list(lines), strict=strict)
        except FtraceParseError:
            assert strict
            continue
        assert len(cap.lines) + cap.unknown_count + cap.bad_lines <= len(lines)
        phases(cap)


# -- writer ----------------------------------------------------------------------------------------

def test_writer_matches_readme_lines():
    text = format_map(0xFFFDC000, 0x3FFBB000, 4096)
    assert format_line("dd", 1673, 0, ".N...", 20.642677, "map", text) == (
        "              dd-1673    [000] .N...    20.642677: map: IOMMU: iova=0x00000000fffdc000 - "
        "0x00000000fffdd000 paddr=0x000000003ffbb000 size=4096")
    assert format_line("rcu_preempt", 18, 0, "d.h1.", 20.644446, "unmap",
                       format_unmap(0xFFFDC000, 8192, 8192)) == (
        "     rcu_preempt-18      [000] d.h1.    20.644446: unmap: IOMMU: iova=0x00000000fffdc000 - "
        "0x00000000fffde000 size=8192 unmapped_size=8192")
    assert format_dma_unmap_page("0000:00:01.0", "FROM_DEVICE", 0xFFFFD000, 4096, "") == (
        "0000:00:01.0 dir=FROM_DEVICE dma_addr=ffffd000 size=4096 attrs=")
    assert format_dma_unmap_sg("0000:00:01.0", 2, [0x3FFBB000, 0x3FF77000], 0) == (
        "0000:00:01.0 dir=FROM_DEVICE phys_addrs={0x3ffbb000,0x3ff77000} attrs=")
    assert format_map(2**64 - 4096, 0, 4096).startswith(
        "IOMMU: iova=0xfffffffffffff000 - 0x0000000000000000 ")      # u64 wrap, as the kernel
    assert format_io_page_fault("nvme", "0000:00:01.0", 0x1000, -1).endswith("flags=0xffffffff")
    assert format_swiotlb_bounced("d", 2**32 - 1, 0x1200, 512) == (
        "dev_name: d dma_mask=ffffffff dev_addr=1200 size=512 NORMAL")
    assert format_dma_free("d", None, 0x1000, 8) == "d dma_addr=1000 size=8 virt_addr=(____ptrval____) attrs="


@pytest.mark.parametrize("call", [
    lambda: format_map(-1, 0, 0),
    lambda: format_map(2**64, 0, 0),
    lambda: format_unmap(0, 1.5, 0),
    lambda: format_dma_map_page("0000 00", "TO_DEVICE", 0, 0, 0, ""),
    lambda: format_dma_map_page("d", 7, 0, 0, 0, ""),
    lambda: format_dma_map_page("d", "TO_DEVICE", 0, 0, 0, 1 << 64),
    lambda: format_dma_map_sg("d", 1, [1, 2], [1], [1]),
    lambda: format_dma_map_sg("d", 1, [1], [2**32], [1]),
    lambda: format_dma_map_sg("d", 1, [1], [1], [1, 2], full_nents=200),
    lambda: format_line(" t", 1, 0, ".....", 1.0, "map", ""),
    lambda: format_line("t", -1, 0, ".....", 1.0, "map", ""),
    lambda: format_line("t", 1, 0, "......", 1.0, "map", ""),
    lambda: format_line("t", 1, 0, ".....", float("nan"), "map", ""),
    lambda: format_line("t", 1, 0, ".....", "1.2.3", "map", ""),
    lambda: format_line("t", 1, 0, ".....", 1.0, "ma p", ""),
    lambda: format_line("t", 1, 0, ".....", 1.0, "map", "a\nb"),
    lambda: format_fields("qi_submit", {}),
    lambda: format_fields("map", {"iova": 0}),
    lambda: write_ftrace(["a\nb"], io.StringIO()),
])
def test_writer_rejects_bad_values(call):
    with pytest.raises(ValueError):
        call()


def test_attrs_decode_parse():
    assert decode_dma_attrs(0) == "" and parse_dma_attrs("") == 0
    assert decode_dma_attrs(0x120) == "SKIP_CPU_SYNC|NO_WARN"
    assert decode_dma_attrs((1 << 8) | (1 << 20) | 1) == "NO_WARN|0x100001"
    assert parse_dma_attrs("NO_WARN|0x100001") == (1 << 8) | (1 << 20) | 1
    for name, bit in DMA_ATTR_NAMES.items():
        assert parse_dma_attrs(decode_dma_attrs(bit)) == bit and decode_dma_attrs(bit) == name
    with pytest.raises(ValueError, match="unknown DMA attribute 'BOGUS'"):
        parse_dma_attrs("NO_WARN|BOGUS")


# hypothesis round trip: random events -> text -> parse -> same fields
_u64 = st.integers(0, 2**64 - 1)
_small = st.integers(0, 2**40)
_dev = st.from_regex(r"[0-9a-z:._-]{1,20}", fullmatch=True)
_dir = st.sampled_from(["BIDIRECTIONAL", "TO_DEVICE", "FROM_DEVICE", "NONE"])
_attrs = st.integers(0, 2**11 - 1).map(decode_dma_attrs)


@st.composite
def _event(draw):
    kind = draw(st.sampled_from(["map", "unmap", "dma_map_page", "dma_unmap_page", "dma_map_sg",
                                 "dma_unmap_sg", "dma_alloc", "dma_map_phys"]))
    if kind == "map":
        iova, paddr, size = draw(_u64), draw(_u64), draw(_u64)
        return kind, format_map(iova, paddr, size), {
            "iova": iova, "iova_end": (iova + size) % 2**64, "paddr": paddr, "size": size}
    if kind == "unmap":
        iova, size, un = draw(_u64), draw(_u64), draw(_u64)
        return kind, format_unmap(iova, size, un), {
            "iova": iova, "iova_end": (iova + size) % 2**64, "size": size, "unmapped_size": un}
    dev, d, attrs = draw(_dev), draw(_dir), draw(_attrs)
    if kind in ("dma_map_page", "dma_map_phys"):
        a, s, p = draw(_u64), draw(_small), draw(_u64)
        return kind, format_dma_map_page(dev, d, a, s, p, attrs), {
            "device": dev, "dir": d, "dma_addr": a, "size": s, "phys_addr": p, "attrs": attrs}
    if kind == "dma_unmap_page":
        a, s = draw(_u64), draw(_small)
        return kind, format_dma_unmap_page(dev, d, a, s, attrs), {
            "device": dev, "dir": d, "dma_addr": a, "size": s, "attrs": attrs}
    if kind == "dma_alloc":
        a, s = draw(_u64), draw(_small)
        return kind, format_dma_alloc(dev, d, a, s, attrs=attrs), {
            "device": dev, "dir": d, "dma_addr": a, "size": s, "virt_addr": "(____ptrval____)",
            "flags": "GFP_KERNEL", "attrs": attrs}
    phys = draw(st.lists(_u64, max_size=140))
    if kind == "dma_unmap_sg":
        return kind, format_dma_unmap_sg(dev, d, phys, attrs), {
            "device": dev, "dir": d, "phys_addrs": phys, "attrs": attrs}
    ents = draw(st.integers(0, len(phys)))
    da = draw(st.lists(_u64, min_size=ents, max_size=ents))
    sz = draw(st.lists(st.integers(0, 2**32 - 1), min_size=ents, max_size=ents))
    m = DMA_TRACE_MAX_ENTRIES
    return kind, format_dma_map_sg(dev, d, da, sz, phys, attrs), {
        "device": dev, "dir": d, "nents": len(phys), "nents_traced": min(len(phys), m),
        "ents": ents, "ents_traced": min(ents, m), "truncated": len(phys) > m,
        "dma_addrs": da[:m], "sizes": sz[:m], "phys_addrs": phys[:m], "attrs": attrs}


_task = st.from_regex(r"[A-Za-z0-9_/:.<>-]([A-Za-z0-9_/:. <>-]{0,13}[A-Za-z0-9_/:.<>-])?", fullmatch=True)
_flags = st.one_of(st.none(), st.from_regex(r"[.dDbX][.NnpBL][.hHsZz][.0-9a-f][.0-9a-f]", fullmatch=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_event(), _task, st.integers(0, 10**7), st.integers(0, 4095), _flags,
                          st.integers(0, 10**11)), max_size=12))
def test_roundtrip_writer_parser(items):
    out = [format_line(task, pid, cpu, flags, us / 1e6, ev, text)
           for (ev, text, _), task, pid, cpu, flags, us in items]
    buf = io.StringIO()
    write_ftrace(out, buf)
    cap = parse_ftrace(io.StringIO(buf.getvalue()))
    assert cap.entries_in_buffer == len(items) == len(cap.lines)
    assert cap.bad_lines == cap.unknown_count == 0
    for ln, ((ev, text, fields), task, pid, cpu, flags, us), raw in zip(cap.lines, items, out, strict=True):
        assert (ln.event, ln.fields, ln.text, ln.raw) == (ev, fields, text, raw)
        assert (ln.task, ln.pid, ln.cpu, ln.flags) == (task, pid, cpu, flags)
        assert ln.timestamp == us / 1e6 and ln.timestamp_text == f"{us // 10**6}.{us % 10**6:06d}"
        assert format_fields(ev, ln.fields) == text


def test_write_to_path(tmp_path):
    p = tmp_path / "out.trace"
    n = write_ftrace([GOOD_MAP, _line("map", format_map(0, 0, 4096), cpu=3)], p)
    cap = parse_ftrace(p)
    assert n == 2 and cap.nr_cpus == 4 and cap.entries_written == 2 and len(cap.lines) == 2
    write_ftrace([GOOD_MAP], p, header=False)
    assert p.read_text() == GOOD_MAP + "\n"


def test_the_map_unmap_shortcut_parses_as_the_generic_path(monkeypatch):
    """iter_ftrace reads map/unmap lines through one combined match; a line it does not take (or takes
    and finds odd) goes the generic way, so both give the same lines and the same errors."""
    import re

    from iovalab.resources import data_file
    from iovalab.trace import ftrace as F

    text = [ln.rstrip("\n") for ln in open(data_file("real", "v734-strict-smp1.trace"), encoding="utf-8")]
    odd = ["  dd-1  [000] ..... 1.000000: map: IOMMU: iova=0x0000000000001000 - 0x0000000000003000 "
           "paddr=0x0000000000005000 size=4096",                          # end is not iova + size
           "  dd-1  [000] ..... 1.000000: map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 "
           "size=4096 unmapped_size=4096"]                                # a map in the unmap format
    fast = list(F.iter_ftrace(text))
    monkeypatch.setattr(F, "_FAST_MAP_UNMAP", re.compile("(?!)"))
    assert list(F.iter_ftrace(text)) == fast and sum(ln.event in ("map", "unmap") for ln in fast) > 7000
    monkeypatch.undo()
    for bad in odd:
        with pytest.raises(F.FtraceParseError, match="malformed 'map' event"):
            list(F.iter_ftrace([bad]))
