"""iovalab.lab.claims, .derivation, .notation (the reviewer's claim checker) and .review (the review-lab drivers),
and iovalab.book.viz_replay."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iovalab
from iovalab.lab.claims import check, parse_statement
from iovalab.lab.derivation import evaluate
from iovalab.lab.notation import parse_errno, table
from iovalab.lab.review import aligned_pages, hint_effect, iova_space_use, path_counts, unaligned_buffers

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ thread
def test_review_thread_arithmetic(capsys):
    r = check("try_alloc reserves 0x4000 and returns 0xffffc234", phys=0x1234, size=0x3000)
    out = capsys.readouterr().out
    assert r.ok and bool(r) and out.count("✓") == 2 and "✗" not in out
    assert "iova_offset(phys) = 0x1234 & 0xfff = 0x234   [include/linux/iova.h iova_offset]" in out
    assert "ALIGN(0x3000 + 0x234, 0x1000) = 0x4000" in out
    assert r.outcome.values["attempt"] == "below 4 GiB" and r.outcome.consistent


def test_reserved_length_versus_tree_footprint():
    r = check(api="try_alloc", granule=0x1000, phys=0, size=0x3000, expect_iova_len=0x3000,
              expect_tree_len=0x4000, expect_addr=0xFFFFC000, quiet=True)
    assert r.ok
    text = r.text()
    assert "roundup_pow_of_two(3) = 4" in text and "rounded up from 0x3000" in text
    # keyword form of the thread's numbers, with the kernel-doc name of the quantity
    assert check(api="dma_iova_try_alloc", phys=0x1234, size=0x3000, expect_iova_len=0x4000,
                 expect_dma_addr=0xFFFFC234, quiet=True).ok


def test_false_claim_gives_cross_and_derivation(capsys):
    r = check("try_alloc(phys=0x1234, size=0x3000) reserves 0x3000", granule=0x1000)
    out = capsys.readouterr().out
    assert not r.ok and not bool(r)
    assert out.startswith("✗") and "simulator: iova_len = 0x4000" in out and "Derivation" in out
    assert "[drivers/iommu/iova.c __alloc_and_insert_iova_range]" in out


def test_derivation_numbers_come_from_the_simulator():
    o = evaluate("try_alloc", phys=0x1234, size=0x3000)
    funcs = {e.func for e in o.events}
    assert {"iommu_dma_alloc_iova", "alloc_iova_fast", "dma_iova_try_alloc"} <= funcs
    tree = [e for e in o.events if e.kind == "tree_alloc"]
    assert tree[0].result == 0xFFFFC and f"{tree[0].result:#x}" in o.derivation()
    assert all(s.source for s in o.steps) and all(s.agrees is not False for s in o.steps)


@settings(max_examples=80, deadline=None)
@given(api=st.sampled_from(["try_alloc", "map_page", "link"]),
       granule=st.sampled_from([0x1000, 0x4000, 0x10000]),
       phys=st.integers(0, (1 << 40) - 1), size=st.integers(1, 1 << 22),
       mask_bits=st.sampled_from([32, 39, 48, 64]), pci=st.booleans(), forcedac=st.booleans())
def test_formulas_always_agree_with_the_simulator(api, granule, phys, size, mask_bits, pci, forcedac):
    o = evaluate(api, phys=phys, size=size, granule=granule, mask=(1 << mask_bits) - 1, pci=pci,
                 forcedac=forcedac)
    assert o.consistent, o.derivation()
    v = o.values
    assert v["ok"]
    off = phys & (granule - 1)
    assert v["iova_len"] == -(-(size + off) // granule) * granule
    assert v["addr"] == v["iova_base"] + off
    assert v["tree_len"] >= v["iova_len"]


def test_map_page_split_and_link_claims(capsys):
    assert check("map_page(phys=0x40200000, size=0x401000) splits into 2x2M, 1x4K", quiet=True)
    assert not check("map_page(phys=0x40200000, size=0x401000) splits into 1x4K, 2x2M", quiet=True)
    assert check("link(phys=0x1234, size=0x3000) maps at 0xffffc000 and maps 0x4000 and inside", quiet=True)
    # a 0 hint with an unaligned phys: state->addr - pad is not granule-aligned -> iommu_map_nosync -EINVAL
    r = check("link(phys=0x1234, size=0x3000, hint=0) fails with -EINVAL", quiet=True)
    assert r.ok and "pr_err('unaligned: ...')" in r.text()
    assert check("link(phys=0x1234, size=0x3000, offset=0x1000) fails with EIO", quiet=True)
    assert check("try_alloc(size=0x1000, mask=0xffffffff, pci=False) allocates full width", quiet=True)
    assert check("try_alloc(size=0x1000) allocates below 4 GiB and returns 0xfffff000", quiet=True)
    assert check("try_alloc(size=0x1000, forcedac=true) returns 0xfffffffff000", quiet=True)
    assert check("try_alloc(size=0x5000) reserves at most 0x5000 and footprint more than 0x5000", quiet=True)
    assert check("try_alloc(size=0x3000, granule=0x10000) reserves 0x10000", quiet=True)
    assert capsys.readouterr().out == ""


def test_statement_errors():
    for bad in ("", "try_alloc wobbles 3", "try_alloc reserves banana", "try_alloc(phys) reserves 1",
                "try_alloc reserves 1 and map_page returns 2"):
        with pytest.raises(ValueError):
            check(bad, size=0x1000, quiet=True)
    with pytest.raises(ValueError):
        check("try_alloc reserves 0x1000", quiet=True)                 # no size
    with pytest.raises(ValueError):
        check(api="try_alloc", size=0x1000, expect_nonsense=1, quiet=True)
    with pytest.raises(ValueError):
        check("try_alloc(size=0x1000) reserves 0x1000", size=0x2000, quiet=True)
    with pytest.raises(ValueError):
        check("try_alloc reserves 0x1000", size=0x1000, granule=0x2000, quiet=True)
    api, params, clauses = parse_statement("dma_map_page(phys=0x10, size=4K) returns 0xfffff010; offset 0x10")
    assert api == "map_page" and params == {"phys": 0x10, "size": 0x1000}
    assert [c.quantity for c in clauses] == ["addr", "off"]
    assert parse_errno("-EIO") == parse_errno("5") == parse_errno("EIO") == -5 and parse_errno("0") == 0


def test_lazy_export():
    assert iovalab.check("try_alloc reserves 0x2000", phys=0x800, size=0x1000, quiet=True).ok


# ------------------------------------------------------------------------------------------------ lab
def test_hint_effect_cases():
    crossing = hint_effect(0x1234, 0x3000)
    assert (crossing["reserved_phys"], crossing["reserved_0"]) == (0x4000, 0x3000)
    assert crossing["link_phys"] == 0 and crossing["link_0"] == -22 and not crossing["safe_0"]
    same = hint_effect(0x1234, 0x2DCC)            # off + size ends on a granule boundary
    assert same["same_reservation"] and not same["safe_0"]      # same length, but the link still fails
    aligned = hint_effect(0x1000, 0x3000)
    assert aligned["safe_0"] and aligned["addr_0"] == aligned["addr_phys"]
    # 4 KiB granule on a 64 KiB-page kernel: 4K-aligned is enough, PAGE_SIZE (64K) alignment is not needed
    g4k = hint_effect(0x12345000, 0x3000, iommu="smmuv3-4k")
    assert g4k["granule"] == 0x1000 and g4k["safe_0"]
    g64k = hint_effect(0x12341000, 0x3000, granule=0x10000)
    assert g64k["pad"] == 0x1000 and not g64k["safe_0"] and g64k["link_0"] == -22


def test_iova_space_use_policies():
    rows = {r["policy"]: r for r in iova_space_use(unaligned_buffers(60, seed=3))}
    unaligned = sum(1 for p, _ in unaligned_buffers(60, seed=3) if p & 0xFFF)
    assert rows["zero"]["link_errors"] == f"{unaligned} x -EINVAL" and rows["zero"]["linked"] == 60 - unaligned
    assert rows["offset"]["reserved"] == rows["zero, caller pads by off"]["reserved"]
    assert rows["zero"]["reserved"] <= rows["offset"]["reserved"] < rows["zero, worst-case pad"]["reserved"]
    assert rows["offset"]["tree"] >= rows["offset"]["reserved"]
    flat = {r["policy"]: r for r in iova_space_use(aligned_pages(30))}
    assert flat["offset"]["reserved"] == flat["zero"]["reserved"] == 30 * 0x1000
    assert flat["zero"]["link_errors"] == "none"
    assert "policy" in table(list(flat.values()))


def test_path_counts():
    reqs = [[(0x100000 * (i + 1) + 0x1000 * j, 0x1000) for j in (0, 2, 4, 6)] for i in range(3)]
    res = path_counts(reqs, paths=("page", "sg", "iova"))
    page, sg, iova = (res[k]["counters"] for k in ("page", "sg", "iova"))
    assert page.dma_api_calls == 2 * 12 and iova.dma_api_calls == 12 + 3 * 3 and sg.dma_api_calls == 6
    assert page.iova_allocs == 12 and iova.iova_allocs == 3
    assert page.iotlb_invalidations == 12 and iova.iotlb_invalidations == 3
    assert page.iommu_map_calls == iova.iommu_map_calls == 12
    assert page.iotlb_syncs == 12 and iova.iotlb_syncs == 3
    assert res["page"]["indirect"]["map_pages"] == 12 and res["iova"]["indirect"]["iotlb_sync"] == 3
    assert res["page"]["modelled"].total > res["iova"]["modelled"].total > 0


# ------------------------------------------------------------------------------------------------ replay
def test_replay_figure_and_summary(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from iovalab.trace.ftrace import parse_ftrace
    from iovalab.trace.replay import replay_capture
    from iovalab.book.viz_replay import plot_replay, replay_summary
    path = ROOT / "data" / "real" / "strict-smp1.trace"
    cap = parse_ftrace(path)
    res = replay_capture(cap, path=str(path))
    s = replay_summary(res)
    assert s["kernel"] == s["simulator"] == s["identical"] > 1000 and s["first_difference"] is None
    assert s["total"].startswith("TOTAL: ") and "0 mismatched" in s["total"]
    fig = plot_replay(res, cap)
    assert len(fig.axes) == 2
    fig.savefig(tmp_path / "replay.png")
    assert (tmp_path / "replay.png").stat().st_size > 10000
    json.dumps(s)


def test_unknown_api_is_named():
    """Regression: an unknown ``api`` used to be reported as "got None"."""
    with pytest.raises(ValueError, match="'dma_frobnicate'"):
        evaluate("dma_frobnicate", size=0x1000)
