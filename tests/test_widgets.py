"""widgets: panels driven headlessly through .value, Button.click() and set_state() (as a browser would)."""

from __future__ import annotations

import html
import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from iovalab.book import widgets  # noqa: E402
from iovalab.lab import explain  # noqa: E402


def text(panel) -> str:
    """The panel's HTML with the inline styles of table cells dropped (``<td style=..>`` -> ``<td>``)."""
    return re.sub(r"<(t[dh]) [^>]*>", r"<\1>", panel.text.value)


def iova_len(panel) -> str:
    m = re.search(r"IOVA length = iova_align\(size \+ off\)</td><td>(0x[0-9a-f]+)<", text(panel))
    assert m, panel.text.value
    return m.group(1)


# --- granule explorer ------------------------------------------------------------------------------
def test_granule_4k_to_64k_changes_iova_length():
    g = widgets.GranuleExplorer(granule=0x1000, phys=0x1234, size=0x3000)
    assert iova_len(g) == "0x4000"
    first = g.image.value
    g.granule.value = 0x10000
    assert iova_len(g) == "0x10000"
    assert "0xffff1234" in g.text.value                  # dma_map_page's address on a fresh 64K domain
    assert g.image.value != first and bytes(g.image.value).startswith(b"\x89PNG")


def test_granule_explorer_set_state_like_a_browser():
    g = widgets.GranuleExplorer()
    g.granule.set_state({"index": 1})                    # a Dropdown change from the front end
    assert g.granule.value == 0x4000 and iova_len(g) == "0x8000"
    g.size.set_state({"value": "0x100"})
    assert iova_len(g) == "0x4000"
    g.phys.set_state({"value": "16K"})                   # units are accepted
    assert "<td>phys</td><td>0x4000</td>" in text(g)


def test_granule_explorer_bad_input_is_reported_not_raised():
    g = widgets.GranuleExplorer()
    before = g.footprint
    g.phys.value = "twelve"
    assert 'class="iovalab-err"' in g.text.value and "'twelve' is not a number" in html.unescape(g.text.value)
    assert g.footprint is before
    g.phys.value = "0x1234"
    g.size.value = "0"
    assert "must be &gt; 0" in g.text.value
    g.phys.value, g.size.value = "0x1234", "0x3000"
    assert iova_len(g) == "0x4000"


# --- mask explorer ---------------------------------------------------------------------------------
def test_mask_explorer_fallback_and_failure():
    m = widgets.MaskExplorer(mask_bits=64, count=6, free_below_4g=0x4000)
    assert "Using 48-bit DMA addresses" in m.text.value
    assert "0xfffffffff000" in m.text.value
    m.mask_bits.value = 32
    assert "Using" not in m.text.value
    assert "2 allocation(s) failed" in m.text.value and "max32_alloc_size" in m.text.value
    m.forcedac.value = True                              # a 32-bit limit never tries 32-bit-first anyway
    assert "2 allocation(s) failed" in m.text.value


def test_mask_explorer_controls_via_set_state():
    m = widgets.MaskExplorer(mask_bits=64, count=2, free_below_4g=None)
    assert m.walk.allocs[0].iova == 0xFFFFF000
    m.forcedac.set_state({"value": True})
    assert m.walk.allocs[0].iova == 0xFFFFFFFFF000
    m.mask_bits.set_state({"index": explain.MASK_BITS.index(40)})
    assert m.walk.allocs[0].iova == 0xFFFFFFF000
    m.bus_limit.set_state({"index": 2})                  # 36 bits
    assert m.walk.allocs[0].iova == 0xFFFFFF000
    m.count.set_state({"value": 5})
    assert len(m.walk.allocs) == 5
    m.count.value = 99                                   # clamps to the slider's max, does not raise
    assert len(m.walk.allocs) == 16
    m.granules.value = 3                                 # rounded to 4 granules: 4-aligned
    assert m.walk.allocs[0].size == 0x3000 and m.walk.allocs[0].iova % 0x4000 == 0


# --- scenario player -------------------------------------------------------------------------------
def shown(p) -> str:
    return re.search(r"step (\d+) of (\d+)", p.text.value).group(0)


def test_player_buttons_slider_and_play():
    p = widgets.ScenarioPlayer("nvme-spec-example", "iova")
    n = len(p.rec.bounds) - 1
    assert shown(p) == f"step 0 of {n}"
    p.next.click()
    assert p.step.value == 1 and shown(p) == f"step 1 of {n}"
    assert "dma_iova_try_alloc" in p.text.value
    p.last.click()
    assert shown(p) == f"step {n} of {n}" and "dma_iova_destroy" in p.text.value
    p.back.click()
    assert shown(p) == f"step {n - 1} of {n}"
    p.first.click()
    assert shown(p) == f"step 0 of {n}"
    p.back.click()                                      # clamps at 0
    assert p.step.value == 0
    p.step.value = 3
    assert shown(p) == f"step 3 of {n}" and "dma_iova_link" in p.text.value
    p.step.set_state({"value": 2})                      # a slider drag from the front end
    assert shown(p) == f"step 2 of {n}"
    p.play.value = 5                                    # Play is linked to the slider
    assert p.step.value == 5 and shown(p) == f"step 5 of {n}"


def test_player_images_change_with_the_step():
    p = widgets.ScenarioPlayer("nvme-spec-example", "page")
    a = p.image.value
    p.next.click()
    assert p.image.value != a


def test_player_workload_path_lazy_unit():
    p = widgets.ScenarioPlayer("nvme-spec-example", "sg")
    p.workload.value = "hmm-256k-strided"                # no sg path for HMM: the path follows
    assert tuple(p.path.options) == ("page", "iova") and p.path.value == "page"
    assert p.rec.workload == "hmm-256k-strided" and p.step.value == 0
    p.workload.value = "demo:pages-8"
    p.path.value = "page"
    p.lazy.value = True
    assert "lazy (DMA-FQ)" in p.text.value
    p.last.click()
    assert "fq_flush_timeout" in p.text.value
    p.back.click()
    assert "stale" in p.text.value and "(8 stale)" in p.text.value
    p.unit.set_state({"index": 1})                        # single events
    assert p.step.max == len(p.rec.events) - p.rec.setup
    p.step.value = 1
    assert "1 event(s)" in p.text.value


def test_player_rejects_unknown_workload():
    with pytest.raises(ValueError):
        widgets.ScenarioPlayer("no-such-workload")


def test_compare_players_share_workload_and_mode():
    c = widgets.ComparePlayers("nvme-spec-example", ("page", "iova"))
    assert c.left.rec.path == "page" and c.right.rec.path == "iova"
    c.workload.value = "nvme-128k-scattered"
    assert c.left.rec.workload == c.right.rec.workload == "nvme-128k-scattered"
    c.lazy.value = True
    assert not c.left.rec.strict and not c.right.rec.strict
    c.right.last.click()
    assert c.right.step.value == c.right.step.max and c.left.step.value == 0


def _steps_text(p) -> list[str]:
    """The player's text at every step, clicked through with the > button from the first."""
    p.first.click()
    out = [p.text.value]
    while p.step.value < p.step.max:
        p.next.click()
        out.append(p.text.value)
    return out


def test_p2p_players_bus_address_against_host_bridge():
    """Chapter 05's P2P section: on the left (PCI_P2PDMA_MAP_BUS_ADDR) no step maps anything in the
    IOMMU; on the right (THRU_HOST_BRIDGE) the map steps show IOMMU_MMIO; the shared path moves both."""
    c = widgets.CompareWorkloads(explain.P2P_WORKLOADS, "iova")
    assert "PCI_P2PDMA_MAP_BUS_ADDR" in c.heads[0].value and "THRU_HOST_BRIDGE" in c.heads[1].value
    assert c.left.path.layout.display == "none"          # one path menu for both
    left, right = _steps_text(c.left), _steps_text(c.right)
    assert not any("iommu_map_nosync" in t for t in left)
    assert any("blk_dma_map_bus" in t for t in left)
    maps = [t for t in right if "iommu_map_nosync" in t]
    assert len(maps) == 4 and all("IOMMU_WRITE|IOMMU_MMIO" in t and "IOMMU_CACHE" not in t for t in maps)
    assert c.right.image.value and c.left.view.cmax == c.right.view.cmax
    c.path.value = "sg"                                  # the scatterlist path: no IOMMU_MMIO
    assert c.left.rec.path == c.right.rec.path == "sg"
    maps = [t for t in _steps_text(c.right) if "iommu_map_nosync" in t]
    assert maps and all("IOMMU_CACHE" in t and "IOMMU_MMIO" not in t for t in maps)
    assert not any("iommu_map_nosync" in t for t in _steps_text(c.left))
    c.lazy.value = True
    assert not c.left.rec.strict and not c.right.rec.strict
    with pytest.raises(ValueError, match="path"):
        widgets.CompareWorkloads(explain.P2P_WORKLOADS, "direct")


# --- comparisons -----------------------------------------------------------------------------------
def test_path_comparison_text_and_modelled_label():
    pc = widgets.PathComparison("nvme-128k-scattered")
    t = text(pc)
    assert "modelled" in t and "not a measurement" in t
    row = re.search(r"<td>iova_allocs</td><td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>", t)
    assert row.groups() == ("32", "1", "1")
    first = pc.image.value
    pc.cost_preset.value = "arm-smmuv3"
    assert "arm-smmuv3" in pc.text.value and pc.image.value != first
    pc.workload.set_state({"index": pc.workload.options.index("demo:pages-8")})
    assert re.search(r"<td>iova_allocs</td><td>8</td>", text(pc))


def test_scaling_explorer():
    s = widgets.ScalingExplorer("iova_allocs")
    assert "<th>page: iova_allocs</th>" in text(s)
    assert re.search(r"<tr><td>512</td><td>512</td><td>1</td><td>1</td>", text(s))
    s.contiguous.value = True
    s.kind.value = "iommu_map_calls"
    assert re.search(r"<tr><td>512</td><td>512</td><td>1</td><td>512</td>", text(s))


def test_plain_functions_give_what_the_panels_show():
    g = widgets.GranuleExplorer(granule=0x4000, phys=0x10, size=0x10)
    assert g.text.value == widgets.footprint_html(explain.footprint(0x4000, 0x10, 0x10))
    m = widgets.MaskExplorer(mask_bits=40, count=3, free_below_4g=None)
    assert m.text.value == widgets.mask_html(explain.mask_walk(40, count=3))
    p = widgets.ScenarioPlayer("nvme-4k-read", "page")
    p.step.value = 1
    rec = explain.record("nvme-4k-read", "page")
    assert p.text.value == widgets.step_html(rec, 1, rec.state(1))


# --- issue 14: what a learner meets ------------------------------------------------------------------
def test_bad_input_greys_the_figure_and_good_input_restores_it():
    g = widgets.GranuleExplorer()
    assert "iovalab-stale" not in g.image._dom_classes
    g.size.value = "0"
    assert "iovalab-err" in g.text.value and "greyed out" in g.text.value
    assert "iovalab-stale" in g.image._dom_classes, "the old figure still looks valid after bad input"
    g.size.value = "0x3000"
    assert "iovalab-stale" not in g.image._dom_classes and iova_len(g) == "0x4000"
    m = widgets.MaskExplorer()
    m.refresh()
    assert "iovalab-stale" not in m.image._dom_classes


def test_side_by_side_players_share_one_counter_scale_and_both_have_a_legend():
    cp = widgets.ComparePlayers("vfio-migration-256k", ("page", "iova"))
    finals = [max(p.rec.state(len(p.rec.bounds) - 1).counters.as_dict().values()) for p in (cp.left, cp.right)]
    assert finals[0] != finals[1]              # the two paths really differ in scale
    assert cp.left.view.cmax == cp.right.view.cmax == max(finals)
    cp.right.path.value = "sg" if "sg" in cp.right.path.options else "page"
    finals = [max(p.rec.state(len(p.rec.bounds) - 1).counters.as_dict().values()) for p in (cp.left, cp.right)]
    assert cp.left.view.cmax == cp.right.view.cmax == max(finals)
    for p in (cp.left, cp.right):
        labels = [t.get_text() for t in p.view.legend.get_texts()]
        assert "IOVA in use" in labels and "stale IOTLB entry" in labels, labels


def test_player_controls_do_not_shrink():
    p = widgets.ScenarioPlayer(compact=True)
    for c in (p.first, p.back, p.next, p.last, p.step, p.play):
        assert c.layout.flex == "0 0 auto", c
    nav = p.children[1]
    assert nav.layout.flex_flow == "row wrap"


def test_answer_list_hidden_until_asked():
    from iovalab.book.quizwidget import AnswerList, QuizPanel

    q = QuizPanel(seed=3, count=4)
    a = AnswerList(quiz=q)
    assert a.answers.value == ""
    a.button.click()
    shown = html.unescape(a.answers.value)
    assert all(f"{p.id}  {p.answer}" in shown for p in q.problems)
    q.seed.value = 4                            # new problems: the old answers no longer hold
    assert a.answers.value == ""


def test_paths_legend_lists_only_paths_that_ran():
    from iovalab.book.viz_paths import PathsView

    v = PathsView(blit=False).update(explain.compare_workload("hmm-16mib-strided"))
    labels = [t.get_text() for t in v.path_legend.get_texts()]
    assert labels and not any(t.startswith("sg") for t in labels), labels
    assert "sg" not in [t.get_text() for t in v.mx.get_yticklabels()]


def test_tables_never_break_inside_a_word_and_keep_urls_whole():
    from iovalab.book.tables import show_table, shown

    url = "https://lore.kernel.org/all/20240517003728.251115-1-tina.zhang@intel.com/"
    rows = [{"operation": "iotlb_invalidation", "ns_each": 1200.0,
             "source": f"Tina Zhang, 'Batch IOTLB' ({url}), V-txt"},
            {"operation": "pte_write", "ns_each": 3.1, "source": "assumed"}]
    t = show_table(rows, hex_cols=set(), caption="modelled cost")
    h = t._repr_html_()
    assert f'<a href="{url}"' in h and f">{url}</a>" in h          # whole, not cut at 60 characters
    assert "word-break:normal" in h and "overflow-wrap:normal" in h and "overflow-x:auto" in h
    assert "break-all" not in h and "anywhere" not in h
    assert h.count("white-space:nowrap") >= 4                     # identifiers and numbers stay on one line
    assert "modelled cost" in h and "iotlb_invalidation" in t.text()
    s = shown("IOTLB invalidations (strict, lazy)", (8, 1))
    assert repr(s).startswith("IOTLB invalidations (strict, lazy):") and "(8, 1)" in s._repr_html_()


def test_panel_updates_carry_no_stylesheet():
    """A <style> in every text update makes the browser restyle the whole page on each step: the
    stylesheet is sent once per panel, the updates carry none."""
    for _name, make, change in widgets.bench_cases():
        w = make()
        change(w, 0)
        panels = [w.left, w.right] if hasattr(w, "left") else [w]
        for p in panels:
            assert "<style" not in p.text.value
            assert any(type(c).__name__ == "HTML" and "<style>" in c.value for c in p.children)
