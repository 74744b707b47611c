"""Real-capture replay (`replay-ftrace`) and the simulator's own ftrace export, read back and replayed."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaDomain, ScatterEntry
from iovalab.trace.bigtrace import map_request, unmap_request
from iovalab.trace.ftrace import parse_ftrace
from iovalab.trace.ftrace_write import (
    format_dma_map_page, format_dma_unmap_page, format_fields, format_line, format_map, format_unmap, write_ftrace,
)
from iovalab.trace.evidence import CaptureEvidence, IovaReuse
from iovalab.trace.replay import (
    events_to_ftrace, export_ftrace, infer_mode, iova_reuse, needs_reuse, reconstruct, replay_capture, replay_file,
)
from iovalab.trace.steps import Allocation
from iovalab.kernel.units import DMA_BIT_MASK

REAL = Path(__file__).resolve().parent.parent / "data" / "real" / "strict-smp1.trace"


@pytest.fixture(scope="module")
def real():
    return parse_ftrace(REAL)


def test_real_capture_every_allocation_matched(real):
    res = replay_capture(real, path=str(REAL))
    assert (res.allocations, res.matched, res.mismatched) == (1215, 1215, 0)
    assert res.reordered == 1 and res.reorders == [10518]
    # no flush line: strict from the IOVAs that come straight back; the one that does not is the
    # interrupt-context free the replay reorders (traced between the allocation and its map line)
    assert res.cpus == 1 and res.mode == "strict" and "guess" not in res.mode_inferred
    assert "1144 of 1145 IOVAs freed by a dma_unmap_* path came back" in res.mode_inferred
    assert "(1 other(s), freed in interrupt context just before" in res.mode_inferred
    # the kernel's and the simulator's IOVA sequences coincide
    assert [k[1] for k in res.kernel_iovas] == [s[1] for s in res.sim_iovas]
    assert min(k[1] for k in res.kernel_iovas) == 0xFFEB0000  # lowest IOVA mapped (README table)
    phases = {p.name: p for p in res.phases}
    assert phases["WORKLOAD: direct read bs=1048576 count=8"].allocations == 64  # 8 x 8 x 128 KiB


def test_real_capture_cli_total_line():
    p = subprocess.run([sys.executable, "-m", "iovalab", "replay-ftrace", str(REAL)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == \
        "TOTAL: 1215 allocations, 1215 matched (1 reordered), 0 mismatched"
    assert "direct read bs=4096 count=128" in p.stdout


def test_lazy_assumption_does_not_fit_the_strict_capture(real):
    res = replay_capture(real, mode="lazy")
    assert res.mismatched > 100  # a lazy domain would have marched downward


def test_reconstruct_sizes_from_unmaps(real):
    steps = reconstruct(real)
    allocs = [s[1] for s in steps if s[0] == "alloc"]
    sizes = {a.size for a in allocs}
    assert 0x11000 in sizes and 0x20000 in sizes  # the 68 KiB tail of a 196 KiB read, 128 KiB requests
    assert all(a.size % 0x1000 == 0 and a.size > 0 for a in allocs)
    assert sum(1 for s in steps if s[0] == "unmatched") == 0


def test_mismatch_is_reported_with_line(tmp_path):
    lines = REAL.read_text().splitlines()
    # make the kernel "choose" another IOVA for the 4 KiB read at the first dma_map_page after the marker
    i = next(n for n, ln in enumerate(lines) if "direct read bs=4096" in ln)
    j = next(n for n in range(i, len(lines)) if ": map: " in lines[n])
    lines[j] = lines[j].replace("0x00000000fffdf000 - 0x00000000fffe0000", "0x00000000fff00000 - 0x00000000fff01000")
    bad = tmp_path / "edited.trace"
    bad.write_text("\n".join(lines) + "\n")
    p = subprocess.run([sys.executable, "-m", "iovalab", "replay-ftrace", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert f"line {j + 1}:" in p.stdout and "first mismatch" in p.stdout


# ---------------------------------------------------------------------------- round trips
def _nvme_like_run(strict=True, ncpus=1, seed=5):
    """A run configured like the traced system: VT-d, MSI window reserved, PCI 64-bit NVMe."""
    dom = DmaDomain("intel-vtd", strict=strict, ncpus=ncpus, reserve_msi=True, kernel="6.17", hz=1000)
    dev = Device.nvme(name="0000:00:01.0")
    rng = random.Random(seed)
    dom.dma_alloc_coherent(dev, 512)
    inflight = []
    phys = 0x2000_0000
    for _ in range(400):
        cpu = rng.randrange(ncpus)
        inflight.append(map_request(dom, dev, rng, phys, cpu))
        phys += 0x40000
        while inflight and (len(inflight) > 6 or rng.random() < 0.4):
            unmap_request(dom, dev, inflight.pop(rng.randrange(len(inflight))), rng.randrange(ncpus))
        if not strict and rng.random() < 0.05:
            dom.advance_time(10, cpu=rng.randrange(ncpus))
    return dom


@pytest.mark.parametrize("strict, ncpus", [(True, 1), (True, 2), (False, 1), (False, 2)])
def test_export_parse_replay_round_trip(tmp_path, strict, ncpus):
    dom = _nvme_like_run(strict, ncpus)
    path = tmp_path / "sim.trace"
    n = export_ftrace(dom.log.events, path, nr_cpus=ncpus)
    cap = parse_ftrace(path)
    assert cap.nr_cpus == ncpus and cap.unknown_count == 0 and n > 400
    # loss-free: every parsed line formats back to the same text
    for ln in cap.lines:
        if ln.system != "intel_iommu":  # the VT-d flush lines are kept as text
            assert ln.raw.endswith(format_fields(ln.event, ln.fields))
    res = replay_capture(cap)
    assert res.mode == ("strict" if strict else "lazy")
    assert res.allocations == dom.log.counters().iova_allocs
    assert res.matched == res.allocations and res.mismatched == 0, res.mismatches[:3]


def test_lazy_queue_full_flushes_round_trip(tmp_path):
    """300 unmaps without a timer tick: the simulator's queue-full flush (exported in the unmap's
    context) and a later timer flush (softirq) both replay exactly."""
    dom = DmaDomain("intel-vtd", strict=False, reserve_msi=True, kernel="6.17", hz=1000)
    dev = Device.nvme(name="0000:00:01.0")
    addrs = [dom.dma_map_page(dev, 0x1000_0000 + i * 0x2000, 4096) for i in range(300)]
    for a in addrs:
        dom.dma_unmap_page(dev, a, 4096)
    assert dom.fq_flush_start_cnt == 1
    again = [dom.dma_map_page(dev, 0x3000_0000 + i * 0x2000, 4096) for i in range(300)]
    dom.advance_time(11)      # HZ=1000: 10 jiffies, run one tick later
    for a in again[:50]:
        dom.dma_unmap_page(dev, a, 4096)
    dom.advance_time(11)
    dom.dma_map_page(dev, 0x5000_0000, 4096)
    export_ftrace(dom.log.events, tmp_path / "lazy.trace")
    cap = parse_ftrace(tmp_path / "lazy.trace")
    flush_ctx = [ln.in_softirq for ln in cap.lines if ln.event == "cache_tag_flush_all"]
    assert flush_ctx.count(False) == 1 and flush_ctx.count(True) >= 2
    res = replay_capture(cap)
    assert res.mode == "lazy" and res.allocations == 601 and res.mismatched == 0, res.mismatches[:3]


def test_export_order_matches_kernel_event_order():
    dom = DmaDomain("intel-vtd")
    dev = Device(dma_mask=DMA_BIT_MASK(64))
    a = dom.dma_map_page(dev, 0x1234000, 4096)
    dom.dma_unmap_page(dev, a, 4096)
    sgl = [ScatterEntry(0x100000, 0x1000), ScatterEntry(0x300000, 0x1000)]
    dom.dma_map_sg(dev, sgl)
    dom.dma_unmap_sg(dev, sgl)
    events = [ln.split(": ")[1].split(":")[0].strip() for ln in events_to_ftrace(dom.log.events, iotlb_events=False)]
    assert events == ["map", "dma_map_page", "unmap", "dma_unmap_page",
                      "map", "map", "dma_map_sg", "dma_unmap_sg", "unmap"]


_X = 0xFFFFF000


def _timer_capture(path, b_at_ms: float, b_iova: int, c_iova: int) -> None:
    """A lazy 6.12-form capture without flush lines: A is mapped at ``_X`` and unmapped at 100.01 ms
    (queue_iova arms the flush-queue timer), B is mapped at ``b_at_ms`` and unmapped 5 us later, C is
    mapped at 130 ms; the IOVAs B and C get are given."""
    rows = [(100.000, "map", format_map(_X, 0x10000000, 4096)),
            (100.005, "dma_map_page", format_dma_map_page("0000:00:01.0", 2, _X, 4096, 0x10000000, 0)),
            (100.010, "unmap", format_unmap(_X, 4096, 4096)),
            (100.011, "dma_unmap_page", format_dma_unmap_page("0000:00:01.0", 2, _X, 4096, 0)),
            (b_at_ms, "map", format_map(b_iova, 0x20000000, 4096)),
            (b_at_ms + 0.002, "dma_map_page", format_dma_map_page("0000:00:01.0", 2, b_iova, 4096, 0x20000000, 0)),
            (b_at_ms + 0.005, "unmap", format_unmap(b_iova, 4096, 4096)),
            (b_at_ms + 0.006, "dma_unmap_page", format_dma_unmap_page("0000:00:01.0", 2, b_iova, 4096, 0)),
            (130.000, "map", format_map(c_iova, 0x30000000, 4096)),
            (130.005, "dma_map_page", format_dma_map_page("0000:00:01.0", 2, c_iova, 4096, 0x30000000, 0))]
    # every line in task context: the trace leaves no order open (no interrupt-context free to move)
    lines = [format_line("fio", 300, 0, ".....", f"{ms / 1000:.6f}", ev, text) for ms, ev, text in rows]
    write_ftrace(lines, path, header=True, nr_cpus=1)


# The kernel at HZ=250: A's unmap at 100.01 ms is in jiffy 25; mod_timer(jiffies + msecs_to_jiffies(10)) =
# 28, and calc_index() files it in bucket 29, so fq_flush_timeout runs at 116 ms. B before that cannot reuse
# A's IOVA, and both are freed at 116 ms (C reuses B's, the rcache is LIFO); B after it reuses A's, its own
# unmap at 116.1 ms arms a timer that runs at 132 ms, so C at 130 ms gets a new IOVA.
@pytest.mark.parametrize("b_at_ms, b_iova, c_iova", [(113.0, _X - 0x1000, _X - 0x1000),
                                                     (115.9, _X - 0x1000, _X - 0x1000),
                                                     (116.1, _X, _X - 0x1000)])
def test_lazy_capture_without_flush_lines_follows_the_kernels_timer(tmp_path, b_at_ms, b_iova, c_iova):
    """No flush line: an IOVA freed by dma_unmap_page does not come back to the next allocation on its
    CPU (B does not get A's, or C does not get B's), which a strict rcache would give, so the capture
    is lazy; one replay places the flush-queue timer from the timestamps as the kernel runs it, and
    says how it placed it."""
    _timer_capture(tmp_path / "t.trace", b_at_ms, b_iova, c_iova)
    res = replay_file(tmp_path / "t.trace", lines=True)
    assert res.mode == "lazy" and res.passes == 1
    assert "lazy: no IOTLB flush line, but only" in res.mode_inferred
    assert "HZ=250" in res.mode_inferred and "a guess: no line marks a tick" in res.mode_inferred
    assert (res.allocations, res.matched, res.mismatched) == (3, 3, 0), res.mismatches
    assert res.lines is not None and res.lines.differ == 0, res.lines.mismatches
    # at HZ=1000 the timers run 11 ms after arming: before B at 113 ms (B would reuse A's IOVA), and
    # for B unmapped at 116.1 ms before C at 130 ms (C would reuse B's): one allocation differs either way
    res = replay_file(tmp_path / "t.trace", mode="lazy", overrides={"hz": 1000})
    assert res.mismatched == 1 and res.system is not None and res.system.hz == 1000


def test_hz_is_checked(tmp_path):
    _timer_capture(tmp_path / "t.trace", 113.0, _X - 0x1000, _X - 0x1000)
    with pytest.raises(ValueError, match="--hz 99: CONFIG_HZ is one of"):
        replay_file(tmp_path / "t.trace", overrides={"hz": 99})


def test_replay_ftrace_says_how_it_placed_the_timer(tmp_path):
    _timer_capture(tmp_path / "t.trace", 113.0, _X - 0x1000, _X - 0x1000)
    p = subprocess.run([sys.executable, "-m", "iovalab", "replay-ftrace", str(tmp_path / "t.trace")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "flush-queue timer runs placed from the timestamps (HZ=250): 1" in p.stdout
    assert "replayed 2 times" not in p.stdout and "lazy: no IOTLB flush line, but only 1 of 2 IOVAs" in p.stdout


def _run_without_flush_lines(tmp_path, strict: bool, ncpus: int):
    dom = _nvme_like_run(strict, ncpus)
    path = tmp_path / f"{'strict' if strict else 'lazy'}{ncpus}.trace"
    export_ftrace(dom.log.events, path, nr_cpus=ncpus, iotlb_events=False)
    return dom, path


@pytest.mark.parametrize("strict, ncpus", [(True, 1), (True, 2), (False, 1), (False, 2)])
def test_mode_without_flush_lines_comes_from_iova_reuse(tmp_path, strict, ncpus):
    """No IOTLB flush line: the mode is read off whether freed IOVAs come straight back, and the capture
    is replayed once, in that mode (the simulator is never run to choose it). Strict matches; the
    export's clock is 10 us a line, not the simulator's, so a lazy one cannot place its timer (the
    hand-made captures above check that)."""
    dom, path = _run_without_flush_lines(tmp_path, strict, ncpus)
    cap = parse_ftrace(path)
    ev = CaptureEvidence.of_capture(cap)
    assert needs_reuse(ev)
    reuse = iova_reuse(reconstruct(cap, 0x1000), 0x1000)
    assert reuse.pairs > 50
    if strict:
        assert reuse.not_reused == 0 and reuse.reused == reuse.pairs - reuse.open
    else:
        assert reuse.not_reused * 100 >= reuse.pairs
    mode, why = infer_mode(ev, reuse)
    assert mode == ("strict" if strict else "lazy") and "no IOTLB flush line" in why
    res = replay_file(path, lines=False)
    assert res.mode == mode and res.passes == 1 and res.allocations == dom.log.counters().iova_allocs
    if strict:
        assert res.mismatched == 0, res.mismatches[:3]


def _step_alloc(cpu, base, size, lineno, task_before=0):
    return ("alloc", Allocation(lineno, cpu, base, size, kind="dma_map_page", task_before=task_before,
                                size_hint=size))


def _step_free(cpu, base, size, lineno, irq=True, kind="dma_map_page"):
    return ("free", Allocation(1, cpu, base, size, kind=kind), cpu, irq, lineno, 0.0, None)


def test_iova_reuse_pairs():
    """The pairs: a free, then the next allocation of its rcache bin on its CPU. A free by the two-step
    API (no dma:* event) or another bin or CPU makes no pair; an interrupt-context free traced after the
    allocation's last task line is open; bins at or above IOVA_RANGE_CACHE_MAX_SIZE are never cached."""
    r = IovaReuse(0x1000)
    r.feed(_step_free(0, 0xF000, 0x3000, 10))        # bin 2
    r.feed(_step_alloc(0, 0xF000, 0x4000, 20, 15))   # bin 2, same base: reused
    r.feed(_step_free(0, 0xE000, 0x1000, 30))
    r.feed(_step_alloc(1, 0xE000, 0x1000, 40, 35))   # other CPU: no pair
    r.feed(_step_alloc(0, 0xD000, 0x1000, 50, 45))   # not reused, free at 30 before task line 45
    r.feed(_step_free(0, 0xC000, 0x1000, 60))
    r.feed(_step_alloc(0, 0xB000, 0x1000, 62, 55))   # free at 60 after task line 55: open
    r.feed(_step_free(0, 0xA000, 0x1000, 70, kind="?"))
    r.feed(_step_alloc(0, 0x9000, 0x1000, 80, 75))   # two-step free: no pair
    r.feed(_step_free(0, 0x100000, 0x40000, 90))     # 64 granules: never cached
    r.feed(_step_alloc(0, 0x200000, 0x40000, 99, 95))
    r.feed(_step_free(0, 0x8000, 0x1000, 100))
    r.feed(("alloc", Allocation(110, 0, 0x7000, 0x1000, kind="dma_map_page")))   # never unmapped: size unsure
    assert (r.pairs, r.reused, r.not_reused, r.open) == (3, 1, 1, 1)
    assert r.mode() is not None and r.mode()[0] == "lazy"
    assert IovaReuse(0x1000).mode() is None


def test_strict_is_kept_below_one_pair_in_a_hundred():
    r = IovaReuse(0x1000)
    for i in range(200):
        r.feed(_step_free(0, 0x10000, 0x1000, 10 * i + 1))
        r.feed(_step_alloc(0, 0x10000 if i else 0x20000, 0x1000, 10 * i + 5, 10 * i + 3))
    assert (r.pairs, r.not_reused) == (200, 1)
    mode = r.mode()
    assert mode is not None and mode[0] == "strict" and "199 of 200" in mode[1]


def test_given_mode_is_replayed_as_given(tmp_path):
    """--strict on a lazy capture without flush lines: replayed strict once, the differences reported
    (no second replay in another mode)."""
    _, path = _run_without_flush_lines(tmp_path, False, 1)
    res = replay_file(path, mode="strict", lines=False)
    assert res.mode == "strict" and res.mode_inferred == "strict (given)" and res.passes == 1
    assert res.mismatched > 0
