"""iovalab.lab.exercises and iovalab.book.quizwidget: seeded problems, simulator-computed answers, the quiz CLI,
agreement with the kernel-oracle traces, and the widget callbacks driven headlessly."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iovalab.lab.notation import format_split, parse_split
from iovalab.lab.exercises import KINDS, cli, generate, make_problem, parse_id, problem, wrong_answer

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "data" / "kernel-traces"
SEEDS = [0, 1, 7, 42, 2024]


def _ns(**kw):
    base = dict(seed=1, count=10, json=False, answers=False, check=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def problems():
    return {s: generate(s, 30) for s in SEEDS}


# ------------------------------------------------------------------------------------------------ basics
def test_every_answer_checks_and_a_perturbed_one_fails(problems):
    for ps in problems.values():
        for p in ps:
            v = p.check(p.answer)
            assert v.correct, (p.id, p.kind, p.answer, v.text())
            bad = wrong_answer(p)
            assert bad != p.answer
            v = p.check(bad)
            assert not v.correct and v.expected == p.answer, (p.id, bad)
            assert v.derivation and "wrong" in v.text()


def test_same_seed_same_problems_and_answers(problems):
    again = generate(7, 30)
    assert [(p.id, p.kind, p.question, p.answer) for p in again] == \
           [(p.id, p.kind, p.question, p.answer) for p in problems[7]]
    assert [p.question for p in generate(8, 30)] != [p.question for p in again]


def test_thirty_distinct_problems_covering_every_kind(problems):
    for s, ps in problems.items():
        assert len({p.question for p in ps}) == 30
        assert [p.id for p in ps] == [f"s{s}-p{i:02d}" for i in range(1, 31)]
        assert {p.kind for p in ps} == set(KINDS)
    assert len(KINDS) >= 10
    assert len({p.question for p in generate(3, 60)}) == 60


def test_id_regenerates_the_problem(problems):
    for p in problems[42][::7]:
        q = problem(p.id)
        assert (q.kind, q.params, q.question, q.answer) == (p.kind, p.params, p.question, p.answer)
    assert parse_id("s-3-p07") == (-3, 7)
    for bad in ("s7p3", "x7-p03", "s7-p00", ""):
        with pytest.raises(ValueError):
            parse_id(bad)


def test_numbers_in_hex_or_decimal(problems):
    p = next(p for p in problems[1] if p.atype == "hex")
    assert p.check(str(p.value)).correct          # decimal
    assert p.check(p.answer.upper().replace("0X", "0x")).correct
    n = next(p for p in problems[1] if p.atype == "int")
    assert n.check(hex(n.value)).correct
    assert not n.check("twelve").correct and n.check("twelve").error


def test_multi_value_answer_forms():
    p = make_problem("pgsize_split", dict(preset="intel-vtd", bitmap=0x40201000, iova=0x1FF000, paddr=0x3FF000,
                                          size=0x401000))
    assert p.value == [(1, 0x1000), (2, 0x200000)]              # iommu.c iommu_pgsize() example
    for text in ("1x4K, 2x2M", "1 x 0x1000; 2*2M", "1×4096,2x2097152"):
        assert p.check(text).correct, text
    assert not p.check("2x2M, 1x4K").correct


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.sampled_from([0x1000, 0x4000, 0x10000, 0x200000, 1 << 30])),
                min_size=1, max_size=6))
def test_split_text_round_trip(items):
    assert parse_split(format_split(items)) == items


# ------------------------------------------------------------------------------------------------ kinds
def test_review_thread_arithmetic_as_problems():
    p = make_problem("reserve_len", dict(api="try_alloc", granule=0x1000, phys=0x1234, size=0x3000))
    assert p.answer == "0x4000"
    t = make_problem("tree_footprint", dict(api="try_alloc", granule=0x1000, phys=0, size=0x3000))
    assert t.answer == "0x4000"                                   # 3 granules rounded to 4 in the tree
    r = make_problem("reserve_len", dict(api="try_alloc", granule=0x1000, phys=0, size=0x3000))
    assert r.answer == "0x3000"
    a = make_problem("try_alloc_addr", dict(api="try_alloc", granule=0x1000, history=[], phys=0x1234,
                                            size=0x3000, device=dict(mask_bits=64, pci=True)))
    assert a.answer == "0xffffc234"


def test_nvme_prp_worked_example():
    """The four-segment NVMe read of notebooks/04:
    {0x12345200+0xE00, 0x20000000+0x1000, 0x30000000+0x3000, 0x40000000+0x800}."""
    p = make_problem("nvme_prp", dict(segments=[[0x12345200, 0xE00], [0x20000000, 0x1000],
                                                [0x30000000, 0x3000], [0x40000000, 0x800]]))
    assert p.value == [0xFFFF8200, 0xFFFF9000, 0xFFFFA000, 0xFFFFB000, 0xFFFFC000, 0xFFFFD000]


def test_errno_cases():
    base = dict(size=0x4000, link_size=0x800)
    assert make_problem("errno", dict(base, case=1, hint=0x10200, phys=0x12200, offset=0x1e00)).answer == "-EIO"
    assert make_problem("errno", dict(base, case=2, hint=0, phys=0x10200, offset=0)).answer == "-EINVAL"
    assert make_problem("errno", dict(base, case=3, hint=0x10000, phys=0x20000, offset=0x200)).answer == "-EINVAL"
    assert make_problem("errno", dict(base, case=4, hint=0x10200, phys=0x20000, offset=0xe00)).answer == "0"


def test_lazy_reuse_timeline():
    def when(strict, times, target):
        return make_problem("lazy_reuse", dict(strict=strict, n=len(times), unmap_times=times, target=target)).value
    assert when(True, [3, 8], 2) == 8                    # strict: freed at the unmap
    # lazy: the timer armed at 3 ms expires at jiffy 13; calc_index (kernel/time/timer.c) runs it at 14
    assert when(False, [3], 1) == 14
    assert when(False, [3, 8], 2) == 14                  # the timer armed by buffer 1 frees buffer 2 too
    assert when(False, [3, 14], 2) == 25                 # after the first flush a new timer is armed (at 14)
    assert when(False, [0] * 260, 100) == 0              # the 256th queue_iova finds the ring full and flushes
    assert when(False, [0] * 260, 258) == 11


def test_rcache_bin_uses_the_size_at_free_time():
    # 8 granules reserved, only 2 linked and destroyed: binned by order_base_2(2) = 1, not 3
    p = make_problem("rcache_bin", dict(case="destroy", phys=0x100000, size=0x8000, mapped=0x2000))
    assert p.value == 1
    assert make_problem("rcache_bin", dict(case="free", phys=0x100000, size=0x8000, mapped=0)).value == 3
    assert make_problem("rcache_bin", dict(case="map_page", phys=0x100000, size=33 * 0x1000,
                                           mapped=0)).value == "tree"


def test_attempt_permanent_fallback():
    dev = dict(mask_bits=64, pci=True, forcedac=False, bus_limit_bits=0)
    small = dict(granule=0x1000, device=dev, phys=0, size=0x1000)
    assert make_problem("attempt", dict(small, history=[])).value == "below 4 GiB"
    # a 5 GiB reservation cannot fit below 4 GiB: the device drops to full width for good
    big = [{"op": "try_alloc", "phys": 0, "size": 5 << 30}]
    assert make_problem("attempt", dict(small, history=big)).value == "full width"
    assert make_problem("attempt", dict(small, history=[], device=dict(dev, forcedac=True))).value == "full width"


def test_workload_counts():
    reqs = [[[0x100000, 0x1000], [0x101000, 0x1000], [0x300000, 0x1000]]]
    def val(kind, path, strict=True):
        return make_problem(kind, dict(path=path, strict=strict, requests=reqs)).value
    assert val("api_calls", "page") == 6 and val("api_calls", "sg") == 2 and val("api_calls", "iova") == 6
    assert val("map_calls", "page") == 3 and val("map_calls", "sg") == 2 and val("map_calls", "iova") == 3
    assert val("invalidations", "page") == 3 and val("invalidations", "iova") == 1
    assert val("invalidations", "page", strict=False) == 0


# ------------------------------------------------------------------------------------------------ traces
def _sections(path):
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "kind" in rec:
            out.append((rec, []))
        else:
            out[-1][1].append(rec)
    return out


def _history(ops):
    """Trace ops -> exercise history (unmap/free refer to the op that mapped)."""
    hist, live = [], {}
    for op in ops:
        k = op["op"]
        if k in ("map_page", "try_alloc"):
            addr = (op["expect"] or {}).get("dma_addr" if k == "map_page" else "addr")
            live[addr] = len(hist)
            hist.append({"op": k, "phys": op["phys"], "size": op["size"]})
        elif k == "unmap_page":
            hist.append({"op": "unmap_page", "ref": live.pop(op["dma_addr"])})
        else:
            hist.append({"op": "free", "ref": live.pop(op["addr"])})
    return hist


def _dev(header):
    d = header["device"]
    return dict(mask_bits=d["dma_mask"].bit_length(), pci=d["pci"], forcedac=d["forcedac"],
                bus_limit_bits=d["bus_dma_limit"].bit_length())


def test_addresses_agree_with_dma_iova_trace_section_1():
    """The first try_alloc and map_page problems after a prefix of section 1 (fresh 4K PCI domain)."""
    header, ops = _sections(TRACES / "dma-iova.jsonl")[0]
    assert header["granule"] == 0x1000 and header["device"]["pci"]
    checked = 0
    for i, op in enumerate(ops[:60]):
        if op["op"] not in ("try_alloc", "map_page") or op["expect"] is None:
            continue
        kind = "try_alloc_addr" if op["op"] == "try_alloc" else "map_page_addr"
        want = op["expect"]["addr" if op["op"] == "try_alloc" else "dma_addr"]
        p = make_problem(kind, dict(api=op["op"], granule=0x1000, device=_dev(header), history=_history(ops[:i]),
                                    phys=op["phys"], size=op["size"]))
        assert p.value == want, (i, op)
        assert p.check(hex(want)).correct
        checked += 1
    assert checked >= 20


def test_reserved_lengths_agree_with_every_dma_iova_section():
    for header, ops in _sections(TRACES / "dma-iova.jsonl"):
        g = header["granule"]
        for op in [o for o in ops if o["op"] in ("try_alloc", "map_page") and o["expect"]][:15]:
            p = make_problem("reserve_len", dict(api=op["op"], granule=g, phys=op["phys"], size=op["size"]))
            assert p.value == op["expect"]["iova_len"], (g, op)


def test_pgsize_split_agrees_with_pgsize_trace():
    ops = [json.loads(x) for x in (TRACES / "pgsize.jsonl").read_text().splitlines()[1:]]
    for op in ops[:150]:
        p = make_problem("pgsize_split", dict(preset="trace", bitmap=op["pgsize_bitmap"], iova=op["iova"],
                                              paddr=op["paddr"], size=op["size"]))
        assert p.value == [(c, pg) for _, _, pg, c in op["expect"]], op


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_check_in_process(capsys, problems):
    p = problems[7][4]
    assert cli(_ns(check=[p.id, p.answer])) == 0
    assert capsys.readouterr().out.strip() == "correct"
    assert cli(_ns(check=[p.id, wrong_answer(p)])) == 1
    out = capsys.readouterr().out
    assert out.startswith("wrong") and p.answer in out and len(out.splitlines()) > 2
    assert cli(_ns(check=["bogus", "1"])) == 2


def test_cli_text_and_json(capsys):
    assert cli(_ns(seed=5, count=12, answers=True)) == 0
    out = capsys.readouterr().out
    assert out.count("\n  answer: ") == 12 and "s5-p12" in out
    assert cli(_ns(seed=5, count=12)) == 0
    assert "\n  answer: " not in capsys.readouterr().out
    assert cli(_ns(seed=5, count=30, json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 30 and all(set(d) == {"id", "kind", "question", "answer"} for d in data)
    assert cli(_ns(seed=5, count=0)) == 2


def test_cli_subprocess_round_trip():
    run = [sys.executable, "-m", "iovalab", "quiz"]
    out = subprocess.run(run + ["--seed", "11", "--count", "3", "--json"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    first = json.loads(out)[2]
    ok = subprocess.run(run + ["--seed", "11", "--check", first["id"], first["answer"]], capture_output=True,
                        text=True, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.strip() == "correct"
    bad = subprocess.run(run + ["--check", first["id"], wrong_answer(problem(first["id"]))],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "wrong" in bad.stdout


# ------------------------------------------------------------------------------------------------ widgets
def test_quiz_panel_headless():
    from iovalab.book.quizwidget import QuizPanel
    q = QuizPanel(seed=9, count=5)
    p = q.current
    assert p.id == "s9-p01" and p.id in q.question.value
    q.answer.value = p.answer                        # Enter in the box checks at once
    assert "correct" in q.feedback.value and q.last.correct
    q.answer.value = wrong_answer(p)
    assert "✗" in q.feedback.value and not q.last.correct
    q.derivation_button.click()
    assert p.answer in q.derivation.value and q.derivation_button.description == "Hide derivation"
    q.derivation_button.click()
    assert q.derivation.value == ""
    q.next_button.click()
    assert q.current.id == "s9-p02" and q.answer.value == "" and q.feedback.value == ""
    q.prev_button.click()
    q.prev_button.click()
    assert q.current.id == "s9-p05"
    q.answer.value = "not a number at all"
    assert "cannot read" in q.feedback.value
    q.seed.value = 10
    assert q.current.id == "s10-p01" and len(q.picker.options) == 5
    q.count.value = 7
    assert len(q.picker.options) == 7
    q.answer.value = q.current.answer
    q.check_button.click()
    assert q.last.correct


def test_claim_panel_headless():
    from iovalab.book.quizwidget import ClaimPanel
    c = ClaimPanel()
    c.check_button.click()
    assert c.last.ok and "✓" in c.result.value
    c.statement.value = "try_alloc(phys=0, size=0x3000) reserves 0x4000"
    assert not c.last.ok and "✗" in c.result.value and "iova_offset" in c.result.value
    c.statement.value = "this is not a claim"
    assert c.last is None and "cannot read" in c.result.value
