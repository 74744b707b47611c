"""Reusable figures for the lab book's widgets (the drawing half of :mod:`iovalab.book.viz`).

No kernel analogue. A view builds one :class:`~matplotlib.figure.Figure` once - axes, ticks,
legend - and keeps the parts that change (patches, collections, lines, texts) as artists that
:meth:`update` moves in place. With ``blit=True`` the static part is rendered once and each frame
only redraws the changing artists onto a copy of it (Agg blitting), so a widget redraw costs a few
milliseconds plus the PNG encoding. With ``blit=False`` (what the ``viz.draw_*`` functions use) the
same figure is an ordinary one, so a plain cell and a widget show the same drawing.

Views read model state and :mod:`iovalab.lab.explain` results; they compute nothing about the model.
"""

from __future__ import annotations

from typing import Any

import io
import math

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.lab.explain import PATH_TITLES, PATHS

__all__ = [
    "COLORS", "COUNTER_LABELS", "hex_label", "hex_ticks", "View", "FootprintView", "StepView", "MaskView",
    "PathsView", "ScalingView",
]

#: One colour per thing, used by every drawing.
COLORS = {
    "in use": "#1f77b4", "cached": "#2ca02c", "queued": "#ff7f0e", "reserved": "#9e9e9e",
    "data": "#1f77b4", "pad": "#d9d9d9", "waste": "#ffffff", "mapped": "#8c564b",
    "iotlb": "#17becf", "stale": "#d62728", "fail": "#d62728", "below 4 GiB": "#1f77b4",
    "full width": "#ff7f0e", "focus": "#ffe066", "counter": "#9e9e9e", "counter changed": "#ff7f0e",
    "page": "#1f77b4", "sg": "#ff7f0e", "iova": "#2ca02c",
}
#: Short display names of the counters (:data:`~iovalab.kernel.event_schema.COUNTER_KINDS`).
COUNTER_LABELS = {
    "iova_allocs": "IOVA allocs", "iova_frees": "IOVA frees", "rcache_hits": "rcache hits",
    "iommu_map_calls": "iommu_map calls", "pte_writes": "PTE writes", "table_pages": "table pages",
    "iotlb_syncs": "iotlb_sync_map", "iotlb_invalidations": "IOTLB invalidations",
    "swiotlb_bounces": "swiotlb bounces", "dma_api_calls": "DMA API calls",
}
FONT = 8


def hex_label(x: float) -> str:
    """``0x...``; beyond 32 bits with ``_`` every 4 digits (``0x1_0000_0000``)."""
    v = int(round(x))
    if v < 0:
        return "-" + hex_label(-v)
    return f"{v:#x}" if v < 1 << 32 else "0x" + f"{v:_x}"


def hex_ticks(lo: int, hi: int, max_ticks: int = 7, step: int | None = None) -> list[int]:
    """Tick positions at multiples of a power of two, at most ``max_ticks`` + 1 of them."""
    span = max(1, hi - lo)
    if step is None:
        step = 1 << max(0, math.ceil(math.log2(span / max(1, max_ticks - 1))))
    first = -(-lo // step) * step
    ticks = list(range(first, hi + 1, step))
    if len(ticks) > max_ticks + 1:
        ticks = ticks[:: math.ceil(len(ticks) / max_ticks)]
    return ticks


def _strip(ax, keep=("bottom",)) -> None:
    for name, s in ax.spines.items():
        s.set_visible(name in keep)


class View:
    """Base: a figure with an Agg canvas, static artists and changing artists.

    Changing artists are registered with :meth:`dyn`; ``slow=True`` marks one that changes only now
    and then (tick labels of a new window): those are drawn once onto a second cached background
    after :meth:`touch`, so an ordinary frame redraws only the per-step artists.
    """

    def __init__(self, width: float, height: float, *, dpi: int | None = None, blit: bool = True):
        # a widget frame (blit) is re-encoded on every change: 90 dpi keeps the PNG small; a figure of a
        # plain cell is drawn once, at 110 dpi, so its text reads at 12-13 px in a notebook column
        self.fig = Figure(figsize=(width, height), dpi=dpi or (90 if blit else 110))
        self.canvas = FigureCanvasAgg(self.fig)
        self.blit = blit
        self._dynamic: list = []
        self._slow: list = []
        self._bg = None
        self._bg2 = None

    def dyn(self, artist, slow: bool = False):
        """Register ``artist`` as changing from frame to frame (or now and then, ``slow``)."""
        if self.blit:
            artist.set_animated(True)
        (self._slow if slow else self._dynamic).append(artist)
        return artist

    def invalidate(self) -> None:
        """The static part changed (limits, ticks): render it again on the next frame."""
        self._bg = None
        self._bg2 = None

    def touch(self) -> None:
        """A ``slow`` artist changed: redraw that layer on the next frame."""
        self._bg2 = None

    def _draw(self, artists) -> None:
        renderer = self.canvas.get_renderer()
        for a in artists:
            if a.get_visible():
                a.draw(renderer)

    def png(self) -> bytes:
        """The current frame as PNG bytes."""
        canvas = self.canvas
        if not self.blit:
            buf = io.BytesIO()
            self.fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
            return buf.getvalue()
        if self._bg is None:
            canvas.draw()
            self._bg = canvas.copy_from_bbox(self.fig.bbox)
        if self._bg2 is None:
            canvas.restore_region(self._bg)
            self._draw(self._slow)
            self._bg2 = canvas.copy_from_bbox(self.fig.bbox)
        else:
            canvas.restore_region(self._bg2)
        self._draw(self._dynamic)
        return _encode(canvas)


def _encode(canvas) -> bytes:
    """A widget frame as PNG: opaque, reduced to a 128-colour palette (flat charts and anti-aliased
    text need no more), which encodes faster than RGBA and is 2-3 times smaller to send, base64-wrap and
    decode in the browser (what a person waits for after a change)."""
    from PIL import Image

    w, h = canvas.get_width_height(physical=True)
    im = Image.frombuffer("RGBA", (w, h), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    buf = io.BytesIO()
    im.quantize(128, method=Image.Quantize.FASTOCTREE).save(buf, "png", compress_level=1)
    return buf.getvalue()


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
        super().__init__(9.0, 2.4, blit=blit)
        ax = self.ax = self.fig.add_axes((0.03, 0.32, 0.68, 0.50))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.45, 1.25)
        ax.set_yticks([])
        ax.set_xticks([])
        _strip(ax)
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
        self.xlabel = self.dyn(self.fig.text(0.37, 0.12, "", ha="center", fontsize=FONT), slow=True)
        self.title = self.dyn(self.fig.text(0.37, 0.92, "", ha="center", fontsize=FONT + 1))
        self.fig.legend(handles=[Patch(facecolor=COLORS[c], edgecolor="black", hatch=h, label=label)
                                 for label, c, h in self._PARTS]
                        + [Line2D([], [], color="#222222", lw=1.0, ls=(0, (1.5, 2.0)), label="granule boundary")],
                        loc="upper left", bbox_to_anchor=(0.73, 0.85), fontsize=FONT - 0.5, frameon=False)

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
COLORS["unflushed"] = "#f4a6a6"


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
        super().__init__(*((6.4, 4.8) if compact else (10.5, 2.9)), blit=blit)
        fig = self.fig
        self.compact = compact
        self.ax = ax = fig.add_axes((0.16, 0.68, 0.80, 0.25) if compact else (0.08, 0.19, 0.48, 0.68))
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
        else:
            self.legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.565, 0.90),
                                     fontsize=FONT - 1, frameon=False)
        self.cax = cax = fig.add_axes((0.30, 0.04, 0.50, 0.33) if compact else (0.835, 0.12, 0.14, 0.75))
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
        _strip(cax, ("left", "bottom"))
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
        super().__init__(9.5, 3.1, blit=blit)
        self.ax = ax = self.fig.add_axes((0.07, 0.2, 0.62, 0.68))
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
        self.fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.71, 0.9), fontsize=FONT - 0.5,
                        frameon=False)
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
        if n > self.capacity:
            self.set_capacity(n)
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


# --------------------------------------------------------------------------------------------
_OPS = ("iova_alloc_rcache", "iova_alloc_tree", "iova_free", "pte_write", "table_page", "iommu_map_call",
        "iotlb_sync", "iotlb_invalidation", "sync_wait", "swiotlb_copy_per_byte", "dma_api_call")


class PathsView(View):
    """Left: the counters of the three paths as grouped bars, each group scaled to its largest
    path (the bars are labelled with the counts). Right: MODELLED time of each path as a bar split
    by cost-model operation, as a share of the slowest path, with the modelled total in ns."""

    def __init__(self, *, blit: bool = True):
        super().__init__(11.0, 3.2, blit=blit)
        fig = self.fig
        self.kinds = [k for k in COUNTER_KINDS if k != "swiotlb_bounces"]
        ax = self.ax = fig.add_axes((0.06, 0.34, 0.42, 0.56))
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.5, 1.0])
        ax.set_yticklabels(["0", "50%", "100%"], fontsize=FONT)
        ax.set_xlim(-0.6, len(self.kinds) - 0.4)
        ax.set_xticks(range(len(self.kinds)))
        ax.set_xticklabels([COUNTER_LABELS[k] for k in self.kinds], fontsize=FONT, rotation=25,
                           ha="right")
        ax.set_ylabel("share of the largest path", fontsize=FONT)
        ax.set_title("counters per path, same workload (labels: the counts)", fontsize=FONT + 1)
        _strip(ax, ("left", "bottom"))
        w = 0.8 / len(PATHS)
        self.bars = {}
        self.labels = {}
        for i, p in enumerate(PATHS):
            xs = [j + (i - (len(PATHS) - 1) / 2) * w for j in range(len(self.kinds))]
            self.bars[p] = [self.dyn(ax.add_patch(Rectangle((x - w / 2, 0), w, 0, facecolor=COLORS[p])), slow=True)
                            for x in xs]
            self.labels[p] = [self.dyn(ax.text(x, 0, "", ha="center", va="bottom", fontsize=FONT + 0.5,
                                               rotation=90), slow=True) for x in xs]
        self._counts: dict | None = None
        self._present: tuple | None = None
        self.path_legend: Any = None
        mx = self.mx = fig.add_axes((0.56, 0.34, 0.26, 0.56))
        mx.set_xlim(0, 1.45)
        mx.set_ylim(-0.6, len(PATHS) - 0.4)
        mx.set_yticks(range(len(PATHS)))
        mx.set_yticklabels(list(PATHS), fontsize=FONT)
        mx.invert_yaxis()
        mx.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        mx.set_xticklabels(["0", "25%", "50%", "75%", "100%"], fontsize=FONT - 0.5)
        mx.set_xlabel("share of the slowest path's modelled time", fontsize=FONT)
        _strip(mx, ("left", "bottom"))
        cmap = matplotlib.colormaps["tab20"]
        self.op_colors = {op: cmap(i) for i, op in enumerate(_OPS)}
        self.segs = {p: [self.dyn(mx.add_patch(Rectangle((0, i - 0.3), 0, 0.6, facecolor=self.op_colors[op])))
                         for op in _OPS] for i, p in enumerate(PATHS)}
        self.totals = {p: self.dyn(mx.text(0, i, "", va="center", fontsize=FONT)) for i, p in enumerate(PATHS)}
        self.mtitle = self.dyn(mx.text(0.5, 1.03, "", transform=mx.transAxes, ha="center", va="bottom",
                                       fontsize=FONT + 1))
        fig.legend(handles=[Patch(color=self.op_colors[op], label=op) for op in _OPS], loc="upper left",
                   bbox_to_anchor=(0.84, 0.92), fontsize=FONT - 0.5, frameon=False, title="modelled operation",
                   title_fontsize=FONT)

    def _set_present(self, present: tuple) -> None:
        """Legend and row labels list only the paths the workload runs on (06 has no ``sg``)."""
        if present == self._present:
            return
        self._present = present
        if self.path_legend is not None:
            self.path_legend.remove()
        self.path_legend = self.fig.legend(
            handles=[Patch(color=COLORS[p], label=f"{p}: {PATH_TITLES[p]}") for p in present],
            fontsize=FONT, frameon=False, loc="lower left", bbox_to_anchor=(0.02, 0.0), ncols=3)
        self.mx.set_yticks([i for i, p in enumerate(PATHS) if p in present])
        self.mx.set_yticklabels(list(present), fontsize=FONT)
        self.invalidate()

    def update(self, results: dict) -> PathsView:
        self._set_present(tuple(p for p in PATHS if p in results))
        counts = {p: (results[p]["counters"].as_dict() if p in results else {}) for p in PATHS}
        if counts != self._counts:    # the counter bars change with the workload, not the cost preset
            self._counts = counts
            self._update_counts(counts, results)
            self.touch()
        self._update_modelled(results)
        return self

    def _update_counts(self, counts: dict, results: dict) -> None:
        for j, k in enumerate(self.kinds):
            top = max([counts[p].get(k, 0) for p in PATHS] + [0])
            for p in PATHS:
                v = counts[p].get(k, 0)
                h = v / top if top else 0.0
                self.bars[p][j].set_height(h)
                lab = self.labels[p][j]
                lab.set_y(h + 0.02)
                lab.set_text(f"{v:,}" if p in results else "")

    def _update_modelled(self, results: dict) -> None:
        totals = {p: results[p]["modelled"].total for p in PATHS if p in results}
        top = max(totals.values()) if totals and max(totals.values()) > 0 else 1.0
        for p in PATHS:
            x = 0.0
            m = results[p]["modelled"] if p in results else {}
            for op, seg in zip(_OPS, self.segs[p], strict=True):
                w = m.get(op, 0.0) / top
                seg.set_x(x)
                seg.set_width(w)
                x += w
            self.totals[p].set_x(x + 0.02)
            self.totals[p].set_text(f"{totals.get(p, 0):,.0f} ns" if p in totals else "")
        preset = next((results[p]["modelled"].preset for p in PATHS if p in results), "")
        self.mtitle.set_text(f"MODELLED time (not measured), cost preset {preset!r}")


# --------------------------------------------------------------------------------------------
class ScalingView(View):
    """Left: one counter against the pages per request, one line per path. Right: MODELLED time
    per request against the pages per request. Log-log axes whose ranges depend only on the request
    sizes, so changing the counter or the cost preset never moves them."""

    def __init__(self, *, blit: bool = True):
        super().__init__(10.0, 3.0, blit=blit)
        fig = self.fig
        self.ax = ax = fig.add_axes((0.08, 0.17, 0.39, 0.7))
        self.mx = mx = fig.add_axes((0.58, 0.17, 0.39, 0.7))
        for a in (ax, mx):
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.xaxis.set_major_formatter(FuncFormatter(lambda x, pos: f"{int(x)}"))
            a.xaxis.set_minor_formatter(NullFormatter())
            a.tick_params(labelsize=FONT - 0.5)
            a.grid(True, which="major", lw=0.3, color="#dddddd")
            a.set_xlabel("4 KiB pages per request", fontsize=FONT)
            _strip(a, ("left", "bottom"))
        mx.set_ylabel("modelled ns per request", fontsize=FONT)
        self.ylabel = self.dyn(fig.text(0.015, 0.52, "", rotation=90, va="center", fontsize=FONT), slow=True)
        self.title = self.dyn(ax.text(0.5, 1.03, "", transform=ax.transAxes, ha="center", va="bottom",
                                      fontsize=FONT + 1), slow=True)
        self.mtitle = self.dyn(mx.text(0.5, 1.03, "", transform=mx.transAxes, ha="center", va="bottom",
                                       fontsize=FONT + 1))
        self.lines = {p: self.dyn(ax.plot([], [], "-o", ms=3, color=COLORS[p])[0], slow=True) for p in PATHS}
        self._left: tuple | None = None
        self.mlines = {p: self.dyn(mx.plot([], [], "-o", ms=3, color=COLORS[p])[0]) for p in PATHS}
        ax.legend(handles=[Line2D([], [], color=COLORS[p], marker="o", ms=3, label=f"{p}: {PATH_TITLES[p]}")
                           for p in PATHS], loc="upper left", fontsize=FONT - 1, frameon=False)
        self.limits: tuple[float, float, float, float] | None = None

    def _set_limits(self, xs) -> None:
        """Fixed by the request sizes only: counts per request are at most a few per page and
        modelled time at most ~20 us per page, so redraws never move the axes."""
        lo, hi = max(1, min(xs)) / 1.4, max(xs) * 1.4
        top = 10.0 ** math.ceil(math.log10(4 * max(xs)))
        mtop = 10.0 ** math.ceil(math.log10(2e4 * max(xs)))
        lim = (lo, hi, top, mtop)
        if lim == self.limits:
            return
        self.limits = lim
        step = max(1, math.ceil((math.log2(hi) - math.log2(lo)) / 7))
        for a, yl in ((self.ax, (0.5, top)), (self.mx, (100, mtop))):
            a.set_xlim(lo, hi)
            a.set_ylim(*yl)
            a.xaxis.set_major_locator(FixedLocator([2.0 ** b for b in range(0, int(math.log2(hi)) + 1, step)]))
        self.invalidate()

    def update(self, scale: dict, kind: str = "iommu_map_calls") -> ScalingView:
        xs = scale["npages"]
        self._set_limits(xs)
        layout = "contiguous" if scale.get("contiguous") else "scattered"
        left = (kind, layout, tuple(xs), tuple(tuple(s[kind]) for s in scale["paths"].values()))
        if left != self._left:       # the counter side does not depend on the cost preset
            self._left = left
            for p in PATHS:
                s = scale["paths"].get(p)
                self.lines[p].set_data(xs, [max(v, 0.6) for v in s[kind]] if s else [])
                if s is None:
                    self.lines[p].set_data([], [])
            self.ylabel.set_text(f"{COUNTER_LABELS[kind]} per request")
            self.title.set_text(f"{COUNTER_LABELS[kind]}, {layout} pages")
            self.touch()
        for p in PATHS:
            s = scale["paths"].get(p)
            if s is None:
                self.mlines[p].set_data([], [])
            else:
                self.mlines[p].set_data(xs, [max(v, 101.0) for v in s["modelled_ns"]])
        self.mtitle.set_text(f"MODELLED time, cost preset {scale.get('cost_preset', '')!r} (not measured)")
        return self
