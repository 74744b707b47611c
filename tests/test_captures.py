"""iovalab.lab.captures and book.viz_captures: the real 64 KiB arm64 capture next to the simulator.

Every expected number is read from data/real/v734-arm64-64k-strict-smp1.trace (its README quotes them)."""

import pytest

from iovalab.lab import captures as c


@pytest.fixture(scope="module")
def run():
    return c.run_capture()


@pytest.fixture(scope="module")
def space(run):
    return c.iova_space(run)


def test_run_reproduces_every_line(run):
    assert run.check.ok and run.check.lines == 2328
    assert run.system.granule == run.system.page_size == 0x10000
    assert all(r.same for r in run.requests)
    assert {r.path for r in run.requests} == {"dma_map_phys", "two-step", "dma_alloc", "msi doorbell"}


def test_small_read_maps_one_whole_granule(run):
    r = c.small_read(run)
    # README: map iova=0xfff80000 size=65536 paddr=0x406a0000; dma_map_phys dma_addr=fff83610 size=4096
    assert r.event["size"] == 0x1000 and r.event["phys_addr"] == 0x406a3610
    assert r.kernel_maps == r.sim_maps == [(0xfff80000, 0x406a0000, 0x10000)]
    assert r.dma_addr == (0xfff83610, 0xfff83610)
    assert r.kernel_unmaps == r.sim_unmaps == [(0xfff80000, 0x10000, 0x10000)]
    rows = r.rows()
    assert [x["line"] for x in rows] == ["map", "dma_addr", "unmap"]
    assert rows[1]["kernel iova"] == rows[1]["simulator iova"] == "0xfff83610"


def test_small_read_refuses_a_size_never_read(run):
    with pytest.raises(ValueError, match="no dma_map_phys request of 3 bytes"):
        c.small_read(run, size=3)


def test_two_step_196k_read_is_four_granules_in_a_256k_slot(run):
    r = c.two_step_request(run)
    assert [m[0] for m in r.kernel_maps] == [0xffdc0000, 0xffdd0000, 0xffde0000, 0xffdf0000]
    assert [m[1] for m in r.kernel_maps] == [0x40720000, 0x40750000, 0x40780000, 0x40710000]
    assert r.sim_maps == r.kernel_maps and r.dma_addr is None
    assert r.kernel_unmaps == r.sim_unmaps == [(0xffdc0000, 0x40000, 0x40000)]
    assert r.kernel_maps[0][0] % 0x40000 == 0
    with pytest.raises(ValueError, match="0x30000"):
        c.two_step_request(run, size=0x30000)


def test_iova_space_64k_vs_4k(space):
    k, s64, s4 = space
    assert (k.map_lines, k.pages_4k, k.lowest) == (1283, 480, 0xffdc0000)   # README: 1283 maps, 480 pages
    assert (s64.map_lines, s64.mapped_bytes, s64.pages_4k, s64.lowest) == \
        (k.map_lines, k.mapped_bytes, k.pages_4k, k.lowest)
    assert k.mapped_bytes == sum(k.by_path.values()) == 85917696
    assert k.by_path["dma_map_phys"] == 962 * 0x10000            # all 962 single mappings are one granule
    assert s4.granule == 0x1000 and s4.by_path["dma_map_phys"] == 13541376
    assert s4.by_path["two-step"] == k.by_path["two-step"]       # the same 64 KiB page links
    assert s4.mapped_bytes < k.mapped_bytes and s4.lowest == 0xffe00000
    assert k.span == 0x100000000 - 0xffdc0000 and k.largest_request == 0x80000


def test_offset_follows_the_granule(run):
    e = c.offset_evidence(run)
    assert (e.requests, e.unaligned) == (962, 873)               # README: 873 of the 962 not 64 KiB-aligned
    assert e.offset_mod[0x10000] == 962                          # iova_offset = phys & (granule - 1)
    assert e.offset_mod[0x1000] == 89                            # mod 4 KiB explains only the aligned ones
    assert e.granule == e.page_size == 0x10000
    assert e.example is not None and e.example.event["phys_addr"] % 0x10000 >= 0x1000
    assert [r["dma_addr lines it explains"] for r in e.rows()] == [89, 953, 962]


def test_plot_iova_space(space):
    import matplotlib
    matplotlib.use("Agg")
    from iovalab.book.viz_captures import plot_iova_space
    fig = plot_iova_space(space)
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_yticklabels()] == [r.who for r in space]
    widths = sorted(round(p.get_width(), 3) for p in right.patches)
    assert widths == sorted(round(r.span / 1024, 3) for r in space)
    import matplotlib.pyplot as plt
    plt.close(fig)


# --- the x86 VT-d + NVMe capture (issue 12), by name -------------------------------------------------

@pytest.fixture(scope="module")
def x86():
    return c.run_capture(name="x86-vtd")


def test_capture_name_forms():
    assert c.capture_name("x86-vtd") == c.X86_VTD == c.capture_name("v734-strict-smp1.trace")
    assert c.capture_name(c.ARM64_64K) == c.ARM64_64K
    for bad in ("nope", "", "real/v734-strict-smp1.trace", 7, ()):
        with pytest.raises(ValueError, match="capture"):
            c.capture_name(bad)


def test_x86_capture_reproduced_line_for_line(x86):
    # the capture's README: 7697 map/unmap lines; the simulator runs a 7.3 VT-d domain at 4 KiB
    assert x86.check.lines == x86.check.reproduced == 7697 and not x86.check.mismatches
    assert x86.system.kernel == "7.3" and x86.system.granule == 0x1000
    assert c.differences(x86) == []
    assert c.differences(name="x86-vtd") == []


def test_x86_two_step_request_one_unmap_one_flush(x86):
    r = c.two_step_request(x86, size=0x10000)
    assert r.path == "two-step" and r.same
    assert len(r.kernel_maps) == 15 and sum(m[2] for m in r.kernel_maps) == 0x10000   # one merged 8 KiB link
    assert r.kernel_unmaps == [(r.kernel_maps[0][0], 0x10000, 0x10000)]
    # dma_iova_destroy -> dma_iova_unlink: one iommu_iotlb_sync over the whole range (strict VT-d)
    base = r.kernel_maps[0][0]
    assert r.sim_flushes == [("iommu_iotlb_sync", base, base + 0x10000 - 1)]
    assert c.two_step_request(size=0x10000, name="x86-vtd").lineno == r.lineno


def test_x86_dma_map_phys_offset(x86):
    r = c.small_read(x86, size=512)
    assert r.event["dma_addr"] - r.kernel_maps[0][0] == r.event["phys_addr"] % 0x1000 == 0x800
    assert r.kernel_maps[0][2] == 0x1000


def test_iova_timeline_and_plot(x86):
    rows = c.iova_timeline(x86)
    assert len(rows) == len(x86.requests) and [r.index for r in rows] == list(range(len(rows)))
    assert all(r.same and r.sim_iova == r.kernel_iova and r.sim_bytes == r.kernel_bytes for r in rows)
    assert [r.lineno for r in rows] == sorted(r.lineno for r in rows)
    import matplotlib
    matplotlib.use("Agg")
    from iovalab.book.viz_captures import plot_iova_timeline
    fig = plot_iova_timeline(rows)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "simulator differs (0)" in labels and any(lab.startswith("kernel: two-step (") for lab in labels)
    import dataclasses
    marked = plot_iova_timeline([dataclasses.replace(rows[0], same=False)] + rows[1:])
    assert "simulator differs (1)" in marked.axes[0].get_legend_handles_labels()[1]


def test_lazy_rerun_rows_and_figure():
    """The x86 capture's requests rerun strict give the capture's own reach; lazy, they reach the lazy
    boot's lowest IOVA (data/real/v734-strict-smp1/README.md) and the timer runs; the figure shows both
    runs, each with its lowest IOVA."""
    import matplotlib
    matplotlib.use("Agg")
    from iovalab.book.viz_captures import plot_rerun
    r = c.lazy_rerun("x86-vtd")
    rows = r.rows()
    assert [row["run"] for row in rows][:3] == ["kernel: this capture (strict)", "simulator: strict rerun",
                                                "simulator: lazy rerun"]
    assert rows[0]["lowest IOVA"] == rows[1]["lowest IOVA"] == "0xffeb0000"
    assert rows[0]["4 KiB pages"] == rows[1]["4 KiB pages"] == 312
    assert rows[2]["lowest IOVA"] == rows[3]["lowest IOVA"] == "0xffe70000"
    # chapter 12 quotes these: 388 pages, 24 timer runs (the lazy boot: 381/387 pages, 25 domain-wide flushes)
    assert (rows[2]["4 KiB pages"], rows[2]["timer runs"]) == (388, 24)
    fig = plot_rerun(r)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 2 and "lowest IOVA 0xffeb0000" in labels[0] and "lowest IOVA 0xffe70000" in labels[1]
    assert len(c.lazy_rerun("arm64-64k").rows()) == 3     # no lazy boot figures for arm64
