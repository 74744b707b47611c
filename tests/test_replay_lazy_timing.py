"""A lazy capture without flush lines, with a real capture's timing (trace.rerun): the real captures'
requests (paths, sizes, physical addresses, timestamps) redone in a lazy (flush-queue) domain of the
simulator and exported without IOTLB flush lines at the times they were traced. ``replay-ftrace``
must infer lazy from the capture alone (IOVA reuse) and place the flush-queue timer from the
timestamps so that every allocation and line matches."""

from __future__ import annotations

import pytest

from iovalab.resources import data_file
from iovalab.trace.ftrace import parse_ftrace
from iovalab.trace.replay import replay_file
from iovalab.trace.rerun import rerun_capture
from iovalab.trace.steps import reconstruct


@pytest.mark.parametrize("capture, hz", [("v734-strict-smp1.trace", 250), ("v734-strict-smp1.trace", 1000),
                                         ("strict-smp1.trace", 250)])
def test_lazy_capture_with_real_timing_replays_exactly(tmp_path, capture, hz):
    run = rerun_capture(parse_ftrace(data_file("real", capture)), strict=False, hz=hz)
    assert run.skipped == 0 and run.timer_flushes > 10
    out = tmp_path / "lazy.trace"
    run.export(out)
    res = replay_file(out, overrides={"hz": hz})
    assert res.mode == "lazy" and res.passes == 1 and "lazy: no IOTLB flush line, but only" in res.mode_inferred
    assert res.timer_flushes > 10                      # the flush-queue timer ran, placed from the timestamps
    assert res.allocations == len(run.allocations) > 1000 and res.mismatched == 0, res.mismatches[:3]
    assert res.lines is not None and res.lines.differ == 0, res.lines.mismatches[:3]
    # the wrong HZ places the timer elsewhere: some allocations differ (the timestamps matter)
    wrong = replay_file(out, overrides={"hz": 1250 - hz}, lines=False)
    assert wrong.mismatched > 0


def test_strict_rerun_is_the_capture():
    """Strict, the rerun hands out exactly the kernel's IOVAs (the capture is strict)."""
    cap = parse_ftrace(data_file("real", "v734-strict-smp1.trace"))
    run = rerun_capture(cap, strict=True)
    kernel = [(st[1].base, st[1].size) for st in reconstruct(cap, 0x1000) if st[0] == "alloc"]
    assert [(iova & ~0xFFF, size) for _, iova, size in run.allocations] == kernel


def test_lazy_rerun_reaches_where_the_real_lazy_boot_did():
    """data/real/v734-strict-smp1/README.md: the lazy boot of the same workload (v734-lazy-smp1) reached
    0xffe70000, 381 distinct 4 KiB pages (387 in the run with iotlb tracing); the strict one 0xffeb0000,
    312. The strict boot's requests rerun lazy at their own times reach the lazy boot's lowest IOVA."""
    cap = parse_ftrace(data_file("real", "v734-strict-smp1.trace"))
    lowest, pages = rerun_capture(cap, strict=False).reach()
    assert lowest == 0xFFE70000 and 370 <= pages <= 400
    assert rerun_capture(cap, strict=True).reach() == (0xFFEB0000, 312)


def test_rerun_refuses_a_bad_mode():
    with pytest.raises(ValueError, match="strict 'yes' must be True or False"):
        rerun_capture(parse_ftrace(data_file("real", "v734-strict-smp1.trace")), strict="yes")  # type: ignore[arg-type]
