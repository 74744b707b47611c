"""Issue 15, command line: one-line errors instead of tracebacks, bounded inputs, exact answers."""

import copy
import json

import pytest

from iovalab.cli import main
from iovalab.drivers import load_preset, valid_apis
from iovalab.lab.exercises import MAX_PROBLEMS, _parse, generate, problem
from iovalab.lab.scenarios import run_scenario

H = '{"kind":"iova-trace","granule":4096}'
DMA_H = ('{"kind":"dma-iova-trace","granule":4096,"pgsize_bitmap":4096,"aperture_end":281474976710655,'
         '"device":{"dma_mask":18446744073709551615}}')


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("body, match", [
    ((H, '{"op":"alloc","size":"1","limit_pfn":1000,"size_aligned":true,"expect":999}'), "size '1'"),
    ((H, '{"op":"alloc","size":NaN,"limit_pfn":1000,"size_aligned":true,"expect":999}'), "NaN"),
    ((H, '{"op":"free","pfn":"x"}'), "pfn 'x'"),
    ((H, '{"op":"free","pfn":77}'), "no IOVA range holds pfn 0x4d"),
    ((DMA_H, '{"op":"unmap_page","dma_addr":4096,"size":4096}'), "IOVA 0x1000 is not mapped"),
    ((H, '{"op":"check","ranges":5}'), "cannot replay"),
    (('{"kind":["iova-trace"],"granule":4096}',), "unknown trace kind"),
    (('{"a":' + "[" * 100000 + "]" * 100000 + "}",), "nested too deeply"),
])
def test_check_trace_bad_files_give_one_line(tmp_path, capsys, body, match):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(body) + "\n")
    code, out, err = run(capsys, "check-trace", str(f))
    assert code == 2 and match in err and err.count("\n") == 1 and err.startswith(f"error: {f}:")


def test_check_trace_non_utf8(tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    f.write_bytes(H.encode() + b"\n\xff\xfe\n")
    code, _, err = run(capsys, "check-trace", str(f))
    assert code == 2 and f"{f}:2: not UTF-8" in err


def test_check_trace_show_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check-trace", "--show", "-5", "x.jsonl"])
    assert e.value.code == 2 and "-5 must be >= 0" in capsys.readouterr().err


def test_quiz_answer_starting_with_dash(capsys):
    pid = next(p.id for p in generate(1, 30) if p.atype == "errno")
    p = problem(pid)
    code, out, _ = run(capsys, "quiz", "--check", pid, p.answer if p.answer.startswith("-") else "-EIO")
    assert code in (0, 1) and out.strip()
    code, out, _ = run(capsys, "quiz", "--check", "s1-p02", "-EINVAL", "--json")
    assert code in (0, 1)


@pytest.mark.parametrize("pid", ["s1-p99999999", f"s1-p{MAX_PROBLEMS + 1}", "s1-p9999999999999"])
def test_quiz_problem_numbers_are_bounded(capsys, pid):
    code, _, err = run(capsys, "quiz", "--check", pid, "X")
    assert code == 2 and "error:" in err


def test_quiz_count_is_bounded(capsys):
    code, _, err = run(capsys, "quiz", "--count", str(MAX_PROBLEMS + 1))
    assert code == 2 and str(MAX_PROBLEMS) in err


@pytest.mark.parametrize("text, want", [("below 4 GiB", "below 4 GiB"), ("below 4GiB", "below 4 GiB"),
                                        ("32-bit", "below 4 GiB"), ("full width", "full width"),
                                        ("64", "full width")])
def test_choice_answers_match_whole_words(text, want):
    assert _parse("choice", text) == want


@pytest.mark.parametrize("text", ["full width below 4GiB", "fullwidth-ish", "unlimited"])
def test_choice_answers_naming_both_or_neither_are_refused(text):
    with pytest.raises(ValueError, match="answer 'below 4 GiB' or 'full width'"):
        _parse("choice", text)


def test_handout_out_at_an_existing_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    code, _, err = run(capsys, "handout", "--out", str(f))
    assert code == 2 and "is not a directory" in err and f.read_text() == "keep me"


def test_handout_only_naming_nothing(tmp_path, capsys):
    code, _, err = run(capsys, "handout", "--only", ",,,", "--out", str(tmp_path / "h"))
    assert code == 2 and "names no notebook" in err and not (tmp_path / "h").exists()


def test_scenario_takes_only_bundled_names(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(load_preset("nvme-4k-read")))
    code, _, err = run(capsys, "scenario", str(f))
    assert code == 2 and "is not a preset name" in err


BAD = [None, "x", 1.5, [], {}, -1, True, 2 ** 70, [[1, 2]], "1T", "16T", [[2 ** 62, 2 ** 62]]]


def _leaf_paths(o, pre=()):
    if isinstance(o, dict):
        for k, v in o.items():
            if pre or k not in ("name", "description", "source"):
                yield pre + (k,)
                yield from _leaf_paths(v, pre + (k,))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nvme-spec-example", "nvme-128k-scattered", "hmm-16mib-strided",
                                  "vfio-migration-4mib"])
def test_mutated_presets_raise_value_errors(name):
    """Every field set to every wrong type either runs (bounded) or raises ValueError, never another error."""
    base = load_preset(name)
    for path in _leaf_paths(base):
        for bad in BAD:
            p = copy.deepcopy(base)
            o = p
            for k in path[:-1]:
                o = o[k]
            o[path[-1]] = bad
            try:
                run_scenario(p, api=valid_apis(p)[0], keep_events=False)
            except ValueError as e:
                assert str(e), (path, bad)



# ------------------------------------------------------------------ widgets
def test_granule_explorer_refuses_huge_sizes_and_unmappable_phys():
    from iovalab.book.widgets import GranuleExplorer

    g = GranuleExplorer()
    good = g.footprint
    g.size.value = "4T"
    assert g.footprint is good and "64 GiB" in g.text.value and g.image.value == b""
    with g.batch():
        g.size.value = "0x1000"
        g.granule.value = 0x4000   # the SMMUv3 16K preset: 48-bit output addresses
    good = g.footprint
    g.phys.value = hex(1 << 48)
    assert g.footprint is good and "paddr &gt;&gt; oas 48" in g.text.value and g.image.value == b""
    g.phys.value = "0x1234"
    assert g.footprint.phys == 0x1234 and g.footprint.fresh_addr == 0xFFFFD234  # one 16K granule
    assert g.image.value


def test_claim_panel_refuses_a_terabyte_map():
    from iovalab.book.quizwidget import ClaimPanel

    c = ClaimPanel()
    c.statement.value = "map_page(phys=0x1000, size=1T) uses 1 IOVA"
    assert c.last is None and "64 GiB" in c.result.value
