"""replay-ftrace does work linear (n log n) in the capture, and bounds its CPU counts (issue 15, items 4-5).

No clocks: the work is counted in executed Python lines (``sys.settrace``), which is deterministic.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from iovalab.kernel.dma_iommu import DmaDomain
from iovalab.kernel.device import Device
from iovalab.kernel.iova import MAX_CPUS, IovaDomain
from iovalab.trace.bigtrace import write_sim_capture
from iovalab.trace.ftrace import FtraceParseError, parse_ftrace
from iovalab.trace.ftrace_write import format_line, format_map, format_unmap, write_ftrace
from iovalab.trace.replay import replay_capture
from iovalab.trace.steps import reconstruct


def _work(fn) -> int:
    """Python lines executed by ``fn()``."""
    n = 0

    def tracer(frame, event, arg):
        nonlocal n
        n += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return n


def _many_live(n: int) -> list[str]:
    """``n`` two-step requests (two map lines each, no dma:* event) that all stay live, then are
    unmapped: the IOVAs a 4 KiB VT-d domain hands out top-down, size-aligned, below the MSI window."""
    out, t = [], 0
    base = 0x1_0000_0000

    def line(flags, event, text):
        nonlocal t
        t += 1
        out.append(format_line("fio", 100, 0, flags, f"{100 + t // 1_000_000}.{t % 1_000_000:06d}", event, text))

    bases = []
    for k in range(n):
        base -= 0x2000
        bases.append(base)
        line(".....", "map", format_map(base, 0x4000_0000 + 0x4000 * k, 0x1000))
        line(".....", "map", format_map(base + 0x1000, 0x4000_2000 + 0x4000 * k, 0x1000))
    for b in bases:
        line("d.h..", "unmap", format_unmap(b, 0x2000, 0x2000))
    return out


@pytest.fixture(scope="module")
def live_caps(tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    caps = {}
    for n in (300, 600):
        p = d / f"live{n}.trace"
        write_ftrace(_many_live(n), p, nr_cpus=1)
        caps[n] = parse_ftrace(p)
    return caps


def test_many_live_ranges_replay_exactly(live_caps):
    res = replay_capture(live_caps[600], lines=True)
    assert res.allocations == 600 and res.mismatched == 0, res.mismatches[:3]
    assert res.lines is not None and res.lines.ok and res.lines.differ == 0


def test_reconstruct_work_is_linear_in_live_ranges(live_caps):
    # the old newest-first scan of every open allocation made this 4x for 2x the lines
    w1 = _work(lambda: reconstruct(live_caps[300]))
    w2 = _work(lambda: reconstruct(live_caps[600]))
    assert w2 < 2.3 * w1, (w1, w2)


def test_replay_work_is_linear_in_live_ranges(live_caps):
    w1 = _work(lambda: replay_capture(live_caps[300], lines=True))
    w2 = _work(lambda: replay_capture(live_caps[600], lines=True))
    assert w2 < 2.3 * w1, (w1, w2)


def test_exported_run_with_growing_live_set_replays_linearly(tmp_path):
    work, lines = [], []
    for n in (3000, 6000):
        p = tmp_path / f"sim{n}.trace"
        lines.append(write_sim_capture(p, n, keep_every=1))
        cap = parse_ftrace(p)
        res = replay_capture(cap, lines=True)
        assert res.mismatched == 0 and res.lines is not None and res.lines.differ == 0, res.mismatches[:3]
        work.append(_work(lambda cap=cap: replay_capture(cap, lines=True)))
    assert work[1] / lines[1] < 1.15 * work[0] / lines[0], (work, lines)


def test_reserve_iova_walk_starts_at_the_request():
    iovad = IovaDomain(0x1000, ncpus=1)
    for k in range(2000):
        iovad.reserve_iova(0x10000 + 4 * k, 0x10000 + 4 * k + 1)
    w_low = _work(lambda: iovad.reserve_iova(0x100, 0x101))
    w_mid = _work(lambda: iovad.reserve_iova(0x10000 + 4 * 1000 + 2, 0x10000 + 4 * 1000 + 2))
    assert w_mid < 3 * w_low + 50, (w_low, w_mid)
    assert iovad.overlaps(0x10000 + 4 * 1000, 0x10000 + 4 * 1000) and not iovad.overlaps(0x102, 0x10000 - 1)


# ------------------------------------------------------------------------------------ CPU bounds
def test_per_cpu_state_is_made_on_first_use():
    dom = DmaDomain("intel-vtd", strict=False, ncpus=MAX_CPUS)
    assert all(not r.cpu_rcaches.touched() for r in dom.iovad.rcaches) and not dom.fqs.touched()
    dev = Device(name="0000:00:01.0")
    a = dom.dma_map_page(dev, 0x1234000, 0x1000, cpu=MAX_CPUS - 1)
    dom.dma_unmap_page(dev, a, 0x1000, cpu=MAX_CPUS - 1)
    assert [c for c, _ in dom.fqs.touched()] == [MAX_CPUS - 1]
    with pytest.raises(ValueError, match="ncpus"):
        IovaDomain(0x1000, ncpus=MAX_CPUS + 1)


def _trace(tmp_path, cpu_col="000", p=1, iova=0xFFFFF000, size=0x1000, unmap=False):
    lines = [f"          fio-1  [{cpu_col}] .....   100.000000: map: {format_map(iova, 0x12345000, size)}"]
    if unmap:
        lines.append(f"          fio-1  [{cpu_col}] d.h..   100.000010: unmap: {format_unmap(iova, size, size)}")
    path = tmp_path / "t.trace"
    path.write_text(f"# tracer: nop\n#\n# entries-in-buffer/entries-written: {len(lines)}/{len(lines)}   #P:{p}\n#\n"
                    + "\n".join(lines) + "\n")
    return path


def test_parser_refuses_cpus_beyond_nr_cpus(tmp_path):
    with pytest.raises(FtraceParseError, match="CPU 999999 is beyond NR_CPUS"):
        parse_ftrace(_trace(tmp_path, cpu_col="999999"))
    with pytest.raises(FtraceParseError, match="#P:999999 is beyond NR_CPUS"):
        parse_ftrace(_trace(tmp_path, p=999999))
    cap = parse_ftrace(_trace(tmp_path, p=999999), strict=False)
    assert cap.nr_cpus is None and cap.bad_lines == 1


@pytest.mark.parametrize("case, args, expect", [
    ("cpu-col", {"cpu_col": "999999"}, "CPU 999999 is beyond NR_CPUS"),
    ("header", {"p": 999999}, "#P:999999 is beyond NR_CPUS"),
    ("wrap", {"iova": 0xFFFFFFFFFFFFF000, "size": 0x2000}, "wraps past 2^64"),
    ("lazy-cpu", {"cpu_col": "005", "p": 2, "unmap": True, "extra": ["--lazy"]}, "CPU 5 is beyond the 2 CPUs"),
    ("cpus-neg", {"extra": ["--cpus", "-3"]}, "--cpus -3: must be 1..8192"),
    ("cpus-huge", {"extra": ["--cpus", "2000000"]}, "--cpus 2000000: must be 1..8192"),
])
def test_replay_ftrace_one_line_errors(tmp_path, case, args, expect):
    extra = args.pop("extra", [])
    p = subprocess.run([sys.executable, "-m", "iovalab", "replay-ftrace", str(_trace(tmp_path, **args)), *extra],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert expect in p.stderr
