"""The address-space views of the lab book's widgets: one buffer's IOVA footprint, a player frame
(allocator nodes, leaf PTEs, IOTLB entries over an IOVA window) and the DMA-mask walk.

No kernel analogue. Each view is a :class:`~iovalab.book.viz_base.View` (one figure built once, the
changing artists moved in place by ``update``). Views read model state and :mod:`iovalab.lab.explain`
results; they compute nothing about the model.
"""

from __future__ import annotations

import math

from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.book.viz_base import COLORS, COUNTER_LABELS, FONT, View, hex_label, hex_ticks, strip_spines

__all__ = ["FootprintView", "StepView", "MaskView"]


def _ARROW(style: str, lw: float) -> dict:  # noqa: N802 - reads like the constant it almost is
    """Arrow properties for annotations redrawn every frame: not clipped against the label's box nor
    shrunk (matplotlib's bezier splitting for that cost about 20 ms a frame, more than the bars)."""
    return dict(arrowstyle=style, lw=lw, patchA=None, patchB=None, shrinkA=0, shrinkB=0)


def _rect(x0: float, x1: float, y0: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# --------------------------------------------------------------------------------------------
class FootprintView(View):
    """The IOVA footprint of one buffer (:class:`~iovalab.lab.explain.Footprint`), drawn to scale on
    a normalised axis (0 = node start, 1 = node end): start pad, buffer, tail pad, and the part of
    the node that ``alloc_iova_fast``'s power-of-two rounding allocates but nothing maps. Granule
    boundaries are dotted; tick labels are IOVAs of a fresh domain in hex."""

    _PARTS = (("start pad (iova_offset)", "pad", "//"), ("buffer (size)", "data", None),
              ("tail pad", "pad", "\\\\"), ("allocated, not mapped", "waste", "xx"))

    def __init__(self, *, blit: bool = True):
        # 6.6 in wide, the legend under the bar: readable when shrunk into a narrow notebook column
        super().__init__(6.6, 2.8, blit=blit)
        ax = self.ax = self.fig.add_axes((0.08, 0.40, 0.84, 0.42))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.45, 1.25)
        ax.set_yticks([])
        ax.set_xticks([])
        strip_spines(ax)
        self.rects = [self.dyn(ax.add_patch(Rectangle((0, 0.2), 0, 0.6, facecolor=COLORS[c], hatch=h, lw=0.8,
                                                      edgecolor="black", zorder=3 if c == "data" else 2)))
                      for _, c, h in self._PARTS]
        # grid, ticks, tick labels and the axis label change only with the node (granule, size):
        # drawn on the cached "slow" layer, so a phys change redraws only the bars and a few texts
        # granule boundaries: dotted, drawn over the bars (zorder 4, and after them in a blit frame)
        self.grid = self.dyn(ax.add_collection(LineCollection([], colors="#222222", linewidths=1.0,
                                                              linestyles=(0, (1.5, 2.0)), zorder=4)))
        xt = ax.get_xaxis_transform()
        self.ticks = self.dyn(ax.add_collection(LineCollection([], colors="black", linewidths=0.8,
                                                               transform=xt, clip_on=False)), slow=True)
        self.ticklabels = [self.dyn(ax.text(0, -0.05, "", transform=xt, ha="center", va="top",
                                            fontsize=FONT - 0.5), slow=True) for _ in range(9)]
        self._slow_key: tuple | None = None
        self.span = self.dyn(ax.annotate("", xy=(1, 0.9), xytext=(0, 0.9),
                                         arrowprops=_ARROW("<->", 0.8)))
        self.span_text = self.dyn(ax.text(0.5, 0.93, "", ha="center", va="bottom", fontsize=FONT))
        self.addr = self.dyn(ax.annotate("", xy=(0, 0.2), xytext=(0, -0.3), ha="center", va="top",
                                         fontsize=FONT, arrowprops=_ARROW("->", 0.8)))
        self.xlabel = self.dyn(self.fig.text(0.5, 0.21, "", ha="center", fontsize=FONT), slow=True)
        self.title = self.dyn(self.fig.text(0.5, 0.92, "", ha="center", fontsize=FONT + 1))
        self.fig.legend(handles=[Patch(facecolor=COLORS[c], edgecolor="black", hatch=h, label=label)
                                 for label, c, h in self._PARTS]
                        + [Line2D([], [], color="#222222", lw=1.0, ls=(0, (1.5, 2.0)), label="granule boundary")],
                        loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=3, fontsize=FONT - 0.5, frameon=False,
                        columnspacing=1.2, handlelength=1.5)

    def update(self, fp) -> FootprintView:
        g = fp.granule
        total = fp.node_bytes
        base = fp.fresh_iova if fp.preset else 0
        widths = [fp.iova_offset, fp.size, fp.tail, fp.waste]
        x = 0.0
        for r, w in zip(self.rects, widths, strict=True):
            f = w / total
            shown = max(f, 0.006) if w else 0.0  # a sliver stays visible; numbers are in the table
            r.set_x(x)
            r.set_width(shown)
            r.set_visible(w > 0)
            x += f
        n = fp.node_granules
        key = (g, total, base, n, fp.preset, fp.fresh_iova if fp.preset else None)
        if key != self._slow_key:
            self._slow_key = key
            self.touch()
        self.grid.set_segments([[(i * g / total, 0.1), (i * g / total, 0.9)] for i in range(n + 1)]
                               if n <= 64 else [])
        pos = hex_ticks(base, base + total, max_ticks=6, step=g if n <= 8 else None)
        for i, t in enumerate(self.ticklabels):
            if i < len(pos):
                t.set_x((pos[i] - base) / total)
                t.set_text(hex_label(pos[i]))
                t.set_visible(True)
            else:
                t.set_visible(False)
        self.ticks.set_segments([[((p - base) / total, 0), ((p - base) / total, -0.03)] for p in pos])
        end = fp.iova_len / total
        self.span.xy = (end, 0.9)
        self.span.set_position((0, 0.9))
        self.span_text.set_x(end / 2)
        self.span_text.set_text(f"iova_align(size + iova_offset) = {fp.iova_len:#x}")
        if fp.preset:
            xa = (fp.fresh_addr - base) / total
            self.addr.xy = (xa, 0.2)
            self.addr.set_position((min(max(xa, 0.1), 0.9), -0.3))
            self.addr.set_text(f"DMA address {fp.fresh_addr:#x}")
            self.addr.set_visible(True)
            self.xlabel.set_text(f"IOVA on a fresh {fp.preset} domain (node {fp.fresh_iova:#x}, "
                                 f"{n} granule{'s' if n > 1 else ''})")
        else:
            self.addr.set_visible(False)
            self.xlabel.set_text("offset in the IOVA node")
        self.title.set_text(f"granule {g:#x}: phys {fp.phys:#x}, size {fp.size:#x} -> {fp.granules} granule(s) "
                            f"mapped, node of {n} granule(s)")
        return self


# --------------------------------------------------------------------------------------------
_LANES = ("IOVA nodes", "page table", "IOTLB")
_LANE_Y = {name: 2 - i for i, name in enumerate(_LANES)}
_LANE_LEGEND = (("in use", "IOVA in use"), ("cached", "IOVA in an rcache"),
                ("queued", "IOVA in a flush queue"), ("reserved", "IOVA reserved"), ("mapped", "leaf PTE"),
                ("iotlb", "IOTLB entry (device DMA)"), ("stale", "stale IOTLB entry"),
                ("unflushed", "unmapped, not yet invalidated"), ("focus", "touched by this step"))


def _merged(items, limit: int = 256):
    """Adjacent ``(start, end, key)`` items with the same key merged into runs - only when there
    are more than ``limit`` of them (drawing thousands of slivers is slow and shows nothing more)."""
    if len(items) <= limit:
        return items
    out: list = []
    for a, b, k in items:
        if out and out[-1][1] == a and out[-1][2] == k:
            out[-1] = (out[-1][0], b, k)
        else:
            out.append((a, b, k))
    return out


class StepView(View):
    """A player frame: three aligned lanes over an IOVA window - allocator nodes (by status),
    leaf PTEs, IOTLB entries (red = stale: unmapped but not yet invalidated) - with the range the
    current step touched shaded, and the running counters (changed ones highlighted)."""

    def __init__(self, window: tuple[int, int] = (0xFFFF0000, 0x100000000), counter_max: float = 10,
                 *, blit: bool = True, compact: bool = False):
        # both layouts stack the lanes over the legend and the counters, so the figure is at most 7.6 in
        # wide: shrunk into a 1024 px window's notebook column (about 590 px with the file browser open)
        # its text stays at 8-9 px; the former 10.5 in single row came out at half size, 6 px
        super().__init__(*((6.4, 4.8) if compact else (7.6, 4.2)), blit=blit)
        fig = self.fig
        self.compact = compact
        self.ax = ax = fig.add_axes((0.16, 0.68, 0.80, 0.25) if compact else (0.13, 0.65, 0.84, 0.28))
        ax.set_ylim(0, 3)
        ax.set_yticks([_LANE_Y[n] + 0.5 for n in _LANES])
        ax.set_yticklabels(list(_LANES), fontsize=FONT)
        ax.tick_params(axis="y", length=0)
        for y in (1, 2):
            ax.axhline(y, color="#cccccc", lw=0.5)
        ax.set_xlabel("IOVA", fontsize=FONT, labelpad=16)
        self.focus = self.dyn(ax.add_patch(Rectangle((0, 0), 0, 3, facecolor=COLORS["focus"], alpha=0.6, lw=0)))
        self.nodes = self.dyn(ax.add_collection(PolyCollection([], edgecolors="black", linewidths=0.5)))
        self.reserved = self.dyn(ax.add_collection(PolyCollection([], facecolors=COLORS["reserved"],
                                                                  edgecolors="black", linewidths=0.5,
                                                                  hatch="//")))
        self.mapped = self.dyn(ax.add_collection(PolyCollection([], facecolors=COLORS["mapped"],
                                                                edgecolors="white", linewidths=0.4)))
        self.unflushed = self.dyn(ax.add_collection(PolyCollection([], facecolors=COLORS["unflushed"],
                                                                   edgecolors=COLORS["stale"], linewidths=0.6,
                                                                   hatch="xx")))
        self.iotlb = self.dyn(ax.add_collection(PolyCollection([], edgecolors="white", linewidths=0.4)))
        self.title = self.dyn(ax.text(0.5, 1.03, "", transform=ax.transAxes, ha="center", va="bottom",
                                      fontsize=FONT + 1))
        self.four_g = self.dyn(ax.axvline(1 << 32, color="black", ls="--", lw=0.8), slow=True)
        # x ticks are "slow" artists: a new window redraws them once, never the static background
        ax.set_xticks([])
        xt = ax.get_xaxis_transform()
        self.xticks = self.dyn(ax.add_collection(LineCollection([], colors="black", linewidths=0.8, transform=xt,
                                                                clip_on=False)), slow=True)
        self.xticklabels = [self.dyn(ax.text(0, -0.04, "", transform=xt, ha="center", va="top",
                                             fontsize=FONT - 0.5), slow=True) for _ in range(8)]
        handles = [Patch(facecolor=COLORS[k], edgecolor=COLORS["stale"] if k == "unflushed" else "black",
                         lw=0.5, hatch={"reserved": "//", "unflushed": "xx"}.get(k), label=v)
                   for k, v in _LANE_LEGEND]
        if compact:   # side by side: the same legend under each player's lanes
            self.legend = fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.565), ncols=3,
                                     fontsize=FONT - 1, frameon=False, columnspacing=1.0, handlelength=1.5)
        else:         # one player: the legend in two columns under the lanes, the counters beside it
            self.legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.02, 0.45), ncols=2,
                                     fontsize=FONT - 1, frameon=False, columnspacing=1.0, handlelength=1.5)
        self.cax = cax = fig.add_axes((0.30, 0.04, 0.50, 0.33) if compact else (0.76, 0.03, 0.19, 0.42))
        kinds = list(COUNTER_KINDS)
        ys = list(range(len(kinds)))[::-1]
        self.kinds = kinds
        self.bars = [self.dyn(cax.add_patch(Rectangle((0, y - 0.35), 0, 0.7, facecolor=COLORS["counter"])))
                     for y in ys]
        self.values = [self.dyn(cax.text(0, y, "0", va="center", fontsize=FONT - 1)) for y in ys]
        cax.set_yticks(ys)
        cax.set_yticklabels([COUNTER_LABELS[k] for k in kinds], fontsize=FONT - 0.5)
        cax.set_ylim(-0.6, len(kinds) - 0.4)
        cax.set_xticks([])
        strip_spines(cax, ("left", "bottom"))
        self.ctitle = self.dyn(cax.text(0.5, 1.02, "", transform=cax.transAxes, ha="center", va="bottom",
                                        fontsize=FONT + 0.5))
        self.set_window(window)
        self.set_counter_max(counter_max)

    def set_window(self, window: tuple[int, int]) -> None:
        if getattr(self, "window", None) == tuple(window):
            return
        lo, hi = window
        self.ax.set_xlim(lo, hi)
        ticks = hex_ticks(lo, hi, max_ticks=6)
        self.xticks.set_segments([[(t, 0), (t, -0.02)] for t in ticks])
        for i, t in enumerate(self.xticklabels):
            t.set_visible(i < len(ticks))
            if i < len(ticks):
                t.set_x(ticks[i])
                t.set_text(hex_label(ticks[i]))
        self.four_g.set_visible(lo < 1 << 32 <= hi)
        self.window = (lo, hi)
        self.touch()

    def set_counter_max(self, m: float) -> None:
        if getattr(self, "cmax", None) == max(1.0, float(m)):
            return
        self.cmax = max(1.0, float(m))
        self.cax.set_xlim(0, self.cmax * 1.3)  # no x ticks: the background does not depend on it

    def update(self, state, title: str = "") -> StepView:
        lo, hi = self.window
        y = _LANE_Y

        def clip(a, b, lane):
            return _rect(max(a, lo), min(b, hi), y[lane] + 0.15, y[lane] + 0.85)

        inside = [(a, b, st) for a, b, st in state.nodes if b > lo and a < hi]
        live = _merged([(a, b, st) for a, b, st in inside if st != "reserved"])
        self.nodes.set_verts([clip(a, b, "IOVA nodes") for a, b, _ in live])
        self.nodes.set_facecolors([COLORS[st] for *_, st in live])
        self.reserved.set_verts([clip(a, b, "IOVA nodes") for a, b, st in inside if st == "reserved"])
        mapped = _merged([(a, a + s, 0) for a, s, *_ in state.mapped if a + s > lo and a < hi])
        self.mapped.set_verts([clip(a, b, "page table") for a, b, _ in mapped])
        self.unflushed.set_verts([clip(a, b, "IOTLB") for a, b in state.unflushed if b > lo and a < hi])
        tl = _merged([(a, a + s, st) for a, s, _, st in state.iotlb if a + s > lo and a < hi])
        self.iotlb.set_verts([clip(a, b, "IOTLB") for a, b, _ in tl])
        self.iotlb.set_facecolors([COLORS["stale" if st else "iotlb"] for *_, st in tl])
        if state.focus:
            a, b = state.focus
            width = max(min(b, hi) - max(a, lo), (hi - lo) * 0.004)
            self.focus.set_x(max(a, lo))
            self.focus.set_width(width)
            self.focus.set_visible(b > lo and a < hi)
        else:
            self.focus.set_visible(False)
        self.title.set_text(title)
        d = state.counters.as_dict()
        for k, bar, txt in zip(self.kinds, self.bars, self.values, strict=True):
            v = d.get(k, 0)
            bar.set_width(min(v, self.cmax * 1.3))
            bar.set_facecolor(COLORS["counter changed" if k in state.changed else "counter"])
            txt.set_x(min(v, self.cmax * 1.3) + self.cmax * 0.02)
            txt.set_text(str(v))
        self.ctitle.set_text(f"counters after {state.k} events")
        return self


# --------------------------------------------------------------------------------------------
class MaskView(View):
    """Where each allocation of a :func:`~iovalab.lab.explain.mask_walk` landed, on a log2 address axis
    from 4 KiB to 2^64, with the 4 GiB line, the DMA mask, the bus limit, the aperture end and the
    effective limit. Failed allocations are red crosses at the left edge."""

    _LINES = (("4 GiB", "black", "--"), ("dma_mask + 1", "#7f7f7f", ":"), ("bus_dma_limit + 1", "#8c564b", ":"),
              ("aperture_end + 1", "#9467bd", "-."), ("effective limit + 1", "#d62728", "-"))

    def __init__(self, capacity: int = 16, *, blit: bool = True):
        super().__init__(7.6, 3.8, blit=blit)   # the legend under the axes: readable in a narrow column
        self.ax = ax = self.fig.add_axes((0.09, 0.38, 0.82, 0.53))
        ax.set_xscale("log", base=2)
        self.lo_x = 2.0 ** 12
        ax.set_xlim(self.lo_x, 2.0 ** 64 * 1.3)
        ax.xaxis.set_major_locator(FixedLocator([2.0 ** b for b in (12, 20, 32, 48, 64)]))
        ax.xaxis.set_minor_locator(FixedLocator([2.0 ** b for b in range(12, 65, 4)]))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda x, pos: f"2^{int(round(math.log2(x)))}\n{hex_label(x)}"))
        ax.tick_params(axis="x", labelsize=FONT - 1)
        ax.tick_params(axis="y", labelsize=FONT)
        ax.set_xlabel("IOVA (log2 scale)", fontsize=FONT)
        ax.set_ylabel("allocation #", fontsize=FONT)
        self.lines = [self.dyn(ax.axvline(1.0, color=c, ls=ls, lw=1.0)) for _, c, ls in self._LINES]
        self.points = {k: self.dyn(ax.plot([], [], "o" if k != "failed" else "x", ms=5 if k != "failed" else 7,
                                           color=COLORS["fail" if k == "failed" else k])[0])
                       for k in ("below 4 GiB", "full width", "failed")}
        self.notice = self.dyn(ax.annotate("", xy=(1, 0), xytext=(2.0 ** 14, 0), fontsize=FONT, va="center",
                                           arrowprops=_ARROW("->", 0.7)))
        self.title = self.dyn(ax.text(0.5, 1.03, "", transform=ax.transAxes, ha="center", va="bottom",
                                      fontsize=FONT + 1))
        handles = [Line2D([], [], color=c, ls=ls, label=label) for label, c, ls in self._LINES]
        for key, marker, label in (("below 4 GiB", "o", "IOVA from the 32-bit-first try"),
                                   ("full width", "o", "IOVA from the try at the full limit"),
                                   ("fail", "x", "failed (no IOVA)")):
            handles.append(Line2D([], [], color=COLORS[key], marker=marker, ls="", label=label))
        self.fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=2,
                        fontsize=FONT - 0.5, frameon=False, columnspacing=1.5)
        self.capacity = 0
        self.set_capacity(capacity)

    def set_capacity(self, n: int) -> None:
        n = max(1, int(n))
        if n == self.capacity:
            return
        self.capacity = n
        self.ax.set_ylim(n - 0.5, -0.5)
        self.ax.yaxis.set_major_locator(FixedLocator(list(range(0, n, max(1, math.ceil(n / 16))))))
        self.invalidate()

    def update(self, walk) -> MaskView:
        n = len(walk.allocs)
        self.set_capacity(n)        # the y axis runs over the allocations drawn, no empty rows below
        values = [2.0 ** 32, walk.dma_mask + 1.0, walk.bus_dma_limit + 1.0 if walk.bus_dma_limit else None,
                  walk.aperture_end + 1.0, walk.dma_limit + 1.0]
        for line, v in zip(self.lines, values, strict=True):
            line.set_visible(v is not None)
            if v is not None:
                line.set_xdata([v, v])
        for k, art in self.points.items():
            pts = [(float(a.iova) if a.iova else self.lo_x * 1.5, a.index) for a in walk.allocs
                   if (a.attempt if a.iova else "failed") == k]
            art.set_data([p[0] for p in pts], [p[1] for p in pts])
        first = next((a for a in walk.allocs if a.notice), None)
        if first is not None:
            self.notice.xy = (float(first.iova) if first.iova else self.lo_x, first.index)
            self.notice.set_position((2.0 ** 14, first.index + (0.5 if first.index < n - 1 else -0.5)))
            self.notice.set_text(first.notice)
            self.notice.set_visible(True)
        else:
            self.notice.set_visible(False)
        self.title.set_text(f"{walk.preset}: {n} x {walk.allocs[0].size:#x} bytes, "
                            f"{'PCI' if walk.pci else 'non-PCI'}{', iommu.forcedac=1' if walk.forcedac else ''}, "
                            f"effective limit {hex_label(walk.dma_limit)}")
        return self
