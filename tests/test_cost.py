"""iovalab.lab.cost: the shipped CSV, loader errors, modelled_ns arithmetic, sensitivity."""

import csv
import re

import pytest

from iovalab.lab.cost import (
    CSV_COLUMNS,
    OPERATIONS,
    CostModelError,
    default_cost_model_path,
    load_cost_model,
)
from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.kernel.events import Counters, EventLog

PRESETS = ("x86-vtd", "arm-smmuv3", "smmu-noncoherent")
V_LEVEL = re.compile(r"\b(V-txt|V-exc|V-abs|2nd|NV)\b")


def write_csv(path, costs, presets=("p",), drop=(), extra_rows=()):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for preset in presets:
            for op in OPERATIONS:
                if (op, preset) in drop:
                    continue
                w.writerow([op, preset, costs.get(op, 0), "assumed", "test"])
        for r in extra_rows:
            w.writerow(r)
    return path


# -- the shipped file ---------------------------------------------------------------------------
def test_shipped_csv_parses_with_all_presets_and_operations():
    m = load_cost_model()
    assert m.path == default_cost_model_path() and m.path.name == "cost-model.csv"
    assert set(PRESETS) <= set(m.presets)
    for preset in m.presets:
        for op in OPERATIONS:
            assert m.cost(op, preset) >= 0
    assert len(m.rows) == len(m.presets) * len(OPERATIONS)


def test_shipped_rows_cite_a_source_or_say_assumed():
    m = load_cost_model()
    for r in m.rows:
        assert r.source.strip(), f"line {r.line}: empty source"
        assert r.note.strip(), f"line {r.line}: every row explains itself"
        if r.source != "assumed":
            assert V_LEVEL.search(r.source), f"line {r.line}: cited source without a V level"


def test_shipped_header_is_exact():
    with open(default_cost_model_path(), newline="") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS


def test_derived_figures_match_their_arithmetic():
    m = load_cost_model()
    assert m.cost("iotlb_invalidation", "smmu-noncoherent") == round((67.291 - 5.385) / 511 * 1000)
    assert m.cost("pte_write", "smmu-noncoherent") == round((148.9 - 1.723) / 255 * 1000)
    assert m.cost("iommu_map_call", "smmu-noncoherent") == round(1723 - 577)
    assert m.cost("pte_write", "arm-smmuv3") == round(800 / 256, 1)
    assert m.cost("iotlb_invalidation", "arm-smmuv3") == round((21.2 - 0.6) / 255 * 1000)
    assert m.cost("sync_wait", "arm-smmuv3") == 240
    assert m.cost("sync_wait", "x86-vtd") == 800 / 2.5
    assert m.cost("iotlb_invalidation", "x86-vtd") == round((2131 - 800) / 2.5)
    assert "2nd" in m.source("iotlb_invalidation", "x86-vtd")  # the secondhand figure says so
    assert "SECONDHAND" in m.note("iotlb_invalidation", "x86-vtd")


def test_operations_map_to_counter_names():
    for plus, minus in OPERATIONS.values():
        assert plus in COUNTER_KINDS or plus == "swiotlb_copy"
        assert minus is None or minus in COUNTER_KINDS


# -- loader errors ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CostModelError, match="not found") as e:
        load_cost_model(tmp_path / "nope.csv")
    assert "nope.csv" in str(e.value)


@pytest.mark.parametrize("row,match", [
    (["pte_write", "q", "abc", "assumed", ""], r":\d+: ns 'abc' is not a number"),
    (["pte_write", "q", "-1", "assumed", ""], r":\d+: ns '-1' must be"),
    (["pte_write", "q", "nan", "assumed", ""], r":\d+: ns 'nan' must be"),
    (["pte_write", "q", "1", "", ""], r":\d+: empty source"),
    (["pte_writes", "q", "1", "assumed", ""], r":\d+: unknown operation 'pte_writes'"),
    (["pte_write", "p", "1", "assumed", ""], r":\d+: duplicate \(pte_write, p\)"),
    (["pte_write", "q", "1", "assumed"], r":\d+: 4 fields"),
    (["pte_write", "", "1", "assumed", ""], r":\d+: empty preset"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, match):
    path = write_csv(tmp_path / "c.csv", {}, extra_rows=[row])
    with pytest.raises(CostModelError, match=match) as e:
        load_cost_model(path)
    msg = str(e.value)
    assert str(path) in msg
    assert f":{len(OPERATIONS) + 2}:" in msg  # header + 11 rows, then the bad one


def test_bad_header_and_missing_operation(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("operation,preset,cost,source,note\n")
    with pytest.raises(CostModelError, match=r"h.csv:1: header"):
        load_cost_model(p)
    p2 = write_csv(tmp_path / "m.csv", {}, presets=("a", "b"), drop={("sync_wait", "b")})
    with pytest.raises(CostModelError, match="preset 'b' has no row for sync_wait"):
        load_cost_model(p2)
    p3 = tmp_path / "e.csv"
    p3.write_text("")
    with pytest.raises(CostModelError, match="empty file"):
        load_cost_model(p3)


# -- arithmetic ---------------------------------------------------------------------------------
COSTS = {"iova_alloc_rcache": 2, "iova_alloc_tree": 30, "iova_free": 3, "pte_write": 1, "table_page": 500,
         "iommu_map_call": 50, "iotlb_sync": 5, "iotlb_invalidation": 100, "sync_wait": 200,
         "swiotlb_copy_per_byte": 0.5, "dma_api_call": 10}


@pytest.fixture
def model(tmp_path):
    return load_cost_model(write_csv(tmp_path / "c.csv", COSTS, presets=("p", "q")))


def run_counters():
    return Counters(iova_allocs=10, iova_frees=8, rcache_hits=7, iommu_map_calls=10, pte_writes=40,
                    table_pages=2, iotlb_syncs=10, iotlb_invalidations=4, swiotlb_bounces=1,
                    dma_api_calls=18)


def test_modelled_ns_arithmetic_on_hand_made_counters(model):
    b = model.modelled_ns(run_counters(), "p")
    expected = {"iova_alloc_rcache": 7 * 2, "iova_alloc_tree": 3 * 30, "iova_free": 8 * 3,
                "pte_write": 40 * 1, "table_page": 2 * 500, "iommu_map_call": 10 * 50, "iotlb_sync": 10 * 5,
                "iotlb_invalidation": 4 * 100, "sync_wait": 4 * 200, "swiotlb_copy_per_byte": 0,
                "dma_api_call": 18 * 10}
    for op, ns in expected.items():
        assert b[op] == ns
    assert b["total"] == sum(expected.values()) == 3098
    assert b.total == 3098 and b.counts["iova_alloc_tree"] == 3
    assert "modelled" in b.label and "not measured" in b.label
    assert b.notes and "swiotlb" in b.notes[0]  # Counters cannot carry copy bytes
    assert "modelled" in b.table().splitlines()[0] and "total (modelled)" in b.table()


def test_modelled_ns_swiotlb_bytes_from_dict_and_log(model):
    d = dict(run_counters().as_dict(), swiotlb_copy=1000, warn=3)
    assert model.modelled_ns(d, "p")["swiotlb_copy_per_byte"] == 500
    assert model.modelled_ns(d, "p")["total"] == 3098 + 500
    log = EventLog()
    log.tally("swiotlb_copy", 300)
    log.tally("dma_api_calls")
    b = model.modelled_ns(log, "p")
    assert b["swiotlb_copy_per_byte"] == 150 and b["dma_api_call"] == 10 and b["total"] == 160
    assert b.notes == []


def test_modelled_ns_errors(model):
    with pytest.raises(ValueError, match="unknown preset 'zz'"):
        model.modelled_ns(run_counters(), "zz")
    with pytest.raises(ValueError, match="iova_alloc_tree.*negative"):
        model.modelled_ns(Counters(iova_allocs=1, rcache_hits=2), "p")
    with pytest.raises(TypeError):
        model.modelled_ns([1, 2], "p")
    with pytest.raises(ValueError, match="unknown operation"):
        model.cost("pte_writes", "p")


def test_shipped_model_orders_presets_sensibly():
    """Same counters: the non-coherent SMMU preset is modelled far costlier per map than x86-vtd."""
    m = load_cost_model()
    c = run_counters()
    assert m.modelled_ns(c, "smmu-noncoherent")["total"] > 5 * m.modelled_ns(c, "x86-vtd")["total"]


# -- sensitivity --------------------------------------------------------------------------------
def test_sensitivity_picks_pte_write_when_it_dominates(model):
    a = Counters(pte_writes=10, iotlb_invalidations=1, dma_api_calls=1)
    b = Counters(pte_writes=1010, iotlb_invalidations=2, dma_api_calls=1)
    s = model.sensitivity(a, b, "p", factor=2.0)
    # D = 1000 * 1 + 1 * (100 + 200) = 1300
    assert s.diff_ns == 1300
    pte = s.per_operation["pte_write"]
    assert pte.contribution_ns == 1000 and pte.count_delta == 1000
    assert pte.diff_scaled_up_ns == 2300 and pte.diff_scaled_down_ns == 800 and pte.swing_ns == 1500
    assert s.per_operation["sync_wait"].swing_ns == 300
    assert s.per_operation["dma_api_call"].swing_ns == 0
    assert s.dominant == "pte_write"
    assert "modelled" in s.label and all("modelled" in line for line in s.describe().splitlines())


def test_sensitivity_picks_invalidation_and_detects_sign_flip(model):
    # B saves 300 PTE writes but pays 2 more invalidations (+ waits): B - A = -300 + 2*300 = +300
    a = Counters(pte_writes=400, iotlb_invalidations=1)
    b = Counters(pte_writes=100, iotlb_invalidations=3)
    s = model.sensitivity(a, b, "p", factor=4.0)
    assert s.diff_ns == 300
    assert s.dominant == "sync_wait"  # 2 x 200 ns share: the largest swing
    assert s.per_operation["sync_wait"].swing_ns == pytest.approx(400 * (4 - 0.25))
    assert s.per_operation["iotlb_invalidation"].swing_ns == pytest.approx(200 * 3.75)
    # pte_write share is -300: with that cost x4 the difference is 300 - 300 * 3 = -600 (A dearer)
    assert s.per_operation["pte_write"].diff_scaled_up_ns == -600
    assert s.per_operation["pte_write"].flips_sign is True
    # sync_wait share is +400: with that cost /4 the difference is 300 - 400 * 0.75 = 0 (a tie)
    assert s.per_operation["sync_wait"].diff_scaled_down_ns == 0
    assert s.per_operation["sync_wait"].flips_sign is True
    assert s.per_operation["dma_api_call"].flips_sign is False


def test_sensitivity_nothing_differs_and_bad_factor(model):
    s = model.sensitivity(run_counters(), run_counters(), "p")
    assert s.diff_ns == 0 and s.dominant is None
    for f in (1, 0.5, float("inf")):
        with pytest.raises(ValueError, match="factor"):
            model.sensitivity(run_counters(), run_counters(), "p", factor=f)


def test_sensitivity_on_shipped_model_strict_vs_batched_sync():
    """Per-page strict sync (HMM-style) vs one sync for the window: the waits dominate on SMMUv3."""
    m = load_cost_model()
    per_page = Counters(iommu_map_calls=256, pte_writes=256, iotlb_invalidations=256, dma_api_calls=512)
    batched = Counters(iommu_map_calls=256, pte_writes=256, iotlb_invalidations=1, dma_api_calls=257)
    s = m.sensitivity(batched, per_page, "arm-smmuv3")
    assert s.diff_ns > 0 and s.dominant == "sync_wait"
