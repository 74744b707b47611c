"""replay_file: a capture replayed as a stream gives replay_capture's answer with bounded memory."""

from __future__ import annotations

import re

import pytest

from iovalab.trace.bigtrace import write_sim_capture
from iovalab.trace.ftrace import iter_ftrace, parse_ftrace
from iovalab.trace.ftrace_write import format_line, format_unmap
from iovalab.trace.replay import replay_capture, replay_file
from iovalab.trace.steps import iter_steps


def _figures(res):
    return (res.mode, res.allocations, res.matched, res.reordered, res.mismatched, res.frees, res.flushes,
            res.lines.lines, res.lines.reproduced, res.system.model_key())


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "sim.trace"
    write_sim_capture(path, 12_000, keep_every=3, ncpus=1)
    return path


def test_stream_gives_the_in_memory_answer(sim):
    whole = replay_capture(parse_ftrace(sim), lines=True)
    assert whole.mismatched == 0 and whole.lines.differ == 0 and whole.allocations > 1500
    for lookahead in (4096, 1000):     # the replay starts after 2 * lookahead lines, decisions so far
        res = replay_file(sim, lookahead=lookahead)
        assert _figures(res) == _figures(whole) and res.passes == 1
        assert res.nr_lines == whole.lines.lines + sum(1 for ln in parse_ftrace(sim).lines
                                                       if ln.event not in ("map", "unmap")) + 12


def test_the_whole_capture_decides(sim, tmp_path):
    """The replay starts with what the first 2 * lookahead lines say; when the whole capture says
    otherwise (here: a second CPU seen only at the end of a capture without a #P: header), it is
    replayed again with the whole capture's decisions, and gives replay_capture's answer."""
    text = sim.read_text().replace("#P:1", "")
    late = format_line("kworker", 7, 1, "d.h..", "999.000000", "unmap", format_unmap(0x1000, 4096, 4096))
    path = tmp_path / "late-cpu.trace"
    path.write_text(text + late + "\n")
    res = replay_file(path, lookahead=1000)
    whole = replay_capture(parse_ftrace(path), lines=True)
    assert whole.cpus == 2 and res.cpus == 2 and res.passes == 2
    assert _figures(res) == _figures(whole) and res.unmatched_unmaps == whole.unmatched_unmaps == 1


def test_steps_hold_a_bounded_window(sim):
    """iter_steps reads at most about 2 * lookahead lines ahead of the step it hands out, whatever the
    length of the capture: the memory does not grow with it."""
    read = [0]

    def source():
        for ln in iter_ftrace(sim):
            read[0] = ln.lineno
            yield ln

    lookahead = 500
    worst = 0
    for st in iter_steps(source(), 0x1000, lookahead=lookahead, keep_maps=False):
        at = st[1].lineno if st[0] in ("alloc", "link") else st[4] if st[0] == "free" else None
        if at is not None and read[0] < 12_000:      # before the end, when the rest is flushed out
            worst = max(worst, read[0] - at)
    assert lookahead <= worst <= 2 * lookahead + 1


def test_bad_lookahead_is_refused(sim):
    with pytest.raises(ValueError, match="lookahead 0 must be an int >= 1"):
        list(iter_steps(iter_ftrace(sim), 0x1000, lookahead=0))


def test_mode_from_iova_reuse_is_the_whole_captures(sim, tmp_path):
    """Without flush lines the mode comes from IOVA reuse: the stream decides from its first lines,
    gathers the whole capture's pairs as it replays, and says the whole capture's figures, in one pass
    (an allocation unmapped beyond the lookahead is left out, so the count may be a little lower than
    the in-memory replay's)."""
    path = tmp_path / "no-flush.trace"
    path.write_text("".join(x for x in sim.read_text().splitlines(keepends=True) if "cache_tag_flush" not in x))
    whole = replay_capture(parse_ftrace(path), lines=True)
    res = replay_file(path, lookahead=1000)
    assert whole.mode == res.mode == "strict" and res.passes == 1
    pairs = re.compile(r"(\d+) of (\d+) IOVAs freed by a dma_unmap_\* path came back")
    got, want = pairs.search(res.mode_inferred), pairs.search(whole.mode_inferred)
    assert got is not None and want is not None and got[1] == got[2] and want[1] == want[2]
    assert int(want[2]) - 5 <= int(got[2]) <= int(want[2]) and int(got[2]) > 600
    assert _figures(res) == _figures(whole) and res.mismatched == 0
