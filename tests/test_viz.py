"""viz / viz_base / viz_views / viz_paths: figures carry the expected artists, labels and hex ticks;
views redraw in place."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from iovalab.book import viz  # noqa: E402
from iovalab.lab import explain  # noqa: E402
from iovalab.kernel.device import Device  # noqa: E402
from iovalab.kernel.dma_iommu import DmaDomain, DmaIovaState  # noqa: E402
from iovalab.book.viz_base import hex_label, hex_ticks  # noqa: E402
from iovalab.book.viz_views import FootprintView, StepView  # noqa: E402


def texts(fig: Figure) -> list[str]:
    """Every visible text of a drawn figure (titles, tick labels, legends, annotations)."""
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_hex_label_and_ticks():
    assert hex_label(0xFFFFC000) == "0xffffc000"
    assert hex_label(1 << 32) == "0x1_0000_0000"
    assert hex_label(-0x10) == "-0x10"
    t = hex_ticks(0xFFFF0000, 0x100000000, max_ticks=6)
    step = t[1] - t[0]
    assert step & (step - 1) == 0 and all(x % step == 0 for x in t)
    assert t[0] >= 0xFFFF0000 and t[-1] <= 0x100000000 and len(t) <= 7


def test_draw_footprint_labels_and_scale():
    fp = explain.footprint(0x1000, 0x1234, 0x3000)
    fig = viz.draw_footprint(fp)
    assert isinstance(fig, Figure)
    tx = texts(fig)
    assert "DMA address 0xffffc234" in tx
    assert "iova_align(size + iova_offset) = 0x4000" in tx
    assert {"0xffffc000", "0xffffd000", "0xffffe000", "0xfffff000", "0x1_0000_0000"} <= set(tx)
    assert any("granule 0x1000" in t for t in tx)
    view = FootprintView(blit=False).update(fp)
    pad, data, tail, waste = view.rects
    assert data.get_x() == pytest.approx(0x234 / 0x4000)
    assert data.get_width() == pytest.approx(0x3000 / 0x4000)
    assert not waste.get_visible()                       # 4 granules: no rounding
    fp5 = explain.footprint(0x1000, 0, 0x5000)           # 5 granules in a node of 8
    view.update(fp5)
    assert waste.get_visible() and waste.get_width() == pytest.approx(3 / 8)
    assert not pad.get_visible()


def test_footprint_tiny_buffer_stays_visible():
    view = FootprintView(blit=False).update(explain.footprint(0x10000, 0x1FF0, 0x20))
    assert view.rects[1].get_width() >= 0.006


def test_draw_iova_space_and_rcache():
    dom = DmaDomain("intel-vtd", ncpus=2)
    dev = Device.nvme()
    states = []
    for n in (1, 1, 2):
        s = DmaIovaState()
        dom.dma_iova_try_alloc(dev, s, 0, n * 0x1000)
        states.append(s)
    dom.dma_iova_free(dev, states[1])
    assert viz.domain_nodes(dom.iovad) == [(0xFFFFC000, 0xFFFFE000, "in use"), (0xFFFFE000, 0xFFFFF000, "cached"),
                                          (0xFFFFF000, 0x100000000, "in use")]
    fig = viz.draw_iova_space(dom.iovad, title="t")
    tx = texts(fig)
    assert {"in use", "cached", "cached32_node"} <= set(tx)
    assert all(t.startswith("0x") for t in (x.get_text() for x in fig.axes[0].get_xticklabels()) if t)
    fig = viz.draw_rcache(dom.iovad)
    tx = texts(fig)
    assert "bin 0: 1 granule" in tx and "CPU1\nprev" in tx and "depot" in tx
    assert tx.count("1") >= 1                           # the one cached pfn of bin 0 on CPU0


def test_draw_address_map():
    w = explain.mask_walk(64, count=6, free_below_4g=0x4000)
    fig = viz.draw_address_map(w)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    tx = texts(fig)
    assert "Using 48-bit DMA addresses" in tx
    assert any("0x1_0000_0000" in t for t in tx)        # the 4 GiB tick, in hex
    lines = {line.get_label(): line for line in ax.get_lines()}
    pts = [line for line in ax.get_lines() if line.get_marker() == "o"]
    xs = sorted(x for line in pts for x in line.get_xdata())
    assert xs[0] == pytest.approx(0xFFFFC000) and xs[-1] == pytest.approx(0xFFFFFFFFF000)
    assert lines  # the limit lines exist


def test_draw_step_lanes_counters_and_hex_ticks():
    rec = explain.record("demo:nvme-demo", "page")
    s = rec.state(4)                                     # after the four dma_map_page calls
    view = StepView(rec.window, 10, blit=False).update(s, "after 4 maps")
    labels = [t.get_text() for t in view.xticklabels if t.get_visible()]
    assert len(labels) >= 3 and all(t.startswith("0x") for t in labels)
    assert "0x1_0000_0000" in labels
    fig = viz.draw_step(s, rec.window, title="after 4 maps")
    ax = fig.axes[0]
    tx = texts(fig)
    assert "after 4 maps" in tx and "IOVA nodes" in tx and "IOTLB invalidations" in tx
    cols = [c for c in ax.collections if isinstance(c, PolyCollection)]
    sizes = sorted(len(c.get_paths()) for c in cols)
    assert sizes[-1] == 6                                 # six leaf PTEs (and four nodes)
    assert 4 in sizes


def test_step_view_blit_changes_frames_and_keeps_size():
    rec = explain.record("demo:nvme-demo", "iova")
    v = StepView(rec.window, 10)
    a = v.update(rec.state(0), "a").png()
    b = v.update(rec.state(len(rec.bounds) - 1), "b").png()
    assert a != b and png_size(a) == png_size(b)
    v.set_window((0, 1 << 33))                           # new static part
    c = v.update(rec.state(1), "c").png()
    assert png_size(c) == png_size(a)


def test_step_view_merges_thousands_of_leaves():
    rec = explain.record("vfio-migration-4mib", "iova")
    s = rec.state(len(rec.bounds) - 3)                    # all 1024 pages linked
    assert len(s.mapped) == 1024
    v = StepView(rec.window, 10, blit=False).update(s)
    assert len(v.mapped.get_paths()) == 1                 # one contiguous run drawn


def test_draw_paths_and_scaling():
    res = explain.compare_workload("nvme-128k-scattered")
    fig = viz.draw_paths(res)
    tx = texts(fig)
    assert "32" in tx                                     # the page path's 32 IOVA allocations
    assert any("MODELLED" in t for t in tx) and any("ns" in t for t in tx)
    v = viz.PathsView(blit=False).update(res)
    j = v.kinds.index("iova_allocs")
    assert v.bars["page"][j].get_height() == pytest.approx(1.0)
    assert v.bars["iova"][j].get_height() == pytest.approx(1 / 32)
    sc = explain.scaling((1, 2, 4, 8))
    fig = viz.draw_scaling(sc, "iova_allocs")
    ax = fig.axes[0]
    data = {tuple(line.get_ydata()) for line in ax.get_lines() if len(line.get_xdata())}
    assert (1, 2, 4, 8) in data                             # page: one IOVA per page
    assert any("modelled" in t.lower() for t in texts(fig))


def test_ipython_formatter(monkeypatch):
    calls = {}

    class Fmt:
        def for_type(self, typ, func):
            calls["type"] = typ
            calls["png"] = func(viz.new_figure(2, 1))

    class Shell:
        display_formatter = type("D", (), {"formatters": {"image/png": Fmt()}})()

    import IPython
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    viz._register_ipython_formatter()
    assert calls["type"] is Figure and calls["png"].startswith(b"\x89PNG")
