"""The mapping paths compared: the lab book's counter and MODELLED-time charts of ``page``, ``sg``
and ``iova`` on one workload (:class:`PathsView`) and against the request size (:class:`ScalingView`).

No kernel analogue. Each view is a :class:`~iovalab.book.viz_base.View`; the numbers are
:mod:`iovalab.lab.explain` results (counts from the simulator, times from the cost model).
"""

from __future__ import annotations

from typing import Any

import math

import matplotlib
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from iovalab.kernel.event_schema import COUNTER_KINDS
from iovalab.lab.explain import PATH_TITLES, PATHS
from iovalab.book.viz_base import COLORS, COUNTER_LABELS, FONT, View, strip_spines

__all__ = ["PathsView", "ScalingView"]


# --------------------------------------------------------------------------------------------
_OPS = ("iova_alloc_rcache", "iova_alloc_tree", "iova_free", "pte_write", "table_page", "iommu_map_call",
        "iotlb_sync", "iotlb_invalidation", "sync_wait", "swiotlb_copy_per_byte", "dma_api_call")


class PathsView(View):
    """Left: the counters of the three paths as grouped bars, each group scaled to its largest
    path (the bars are labelled with the counts). Right: MODELLED time of each path as a bar split
    by cost-model operation, as a share of the slowest path, with the modelled total in ns."""

    def __init__(self, *, blit: bool = True):
        # counters above, modelled time below: 7.6 in wide, so shrunk into a 1024 px window's notebook
        # column (about 590 px with the file browser open) the text stays at 8-9 px (11 in side by side: 6)
        super().__init__(7.6, 5.6, blit=blit)
        fig = self.fig
        self.kinds = [k for k in COUNTER_KINDS if k != "swiotlb_bounces"]
        ax = self.ax = fig.add_axes((0.09, 0.68, 0.89, 0.27))
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.5, 1.0])
        ax.set_yticklabels(["0", "50%", "100%"], fontsize=FONT)
        ax.set_xlim(-0.6, len(self.kinds) - 0.4)
        ax.set_xticks(range(len(self.kinds)))
        ax.set_xticklabels([COUNTER_LABELS[k] for k in self.kinds], fontsize=FONT, rotation=25,
                           ha="right")
        ax.set_ylabel("share of the largest path", fontsize=FONT)
        ax.set_title("counters per path, same workload (labels: the counts)", fontsize=FONT + 1)
        strip_spines(ax, ("left", "bottom"))
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
        mx = self.mx = fig.add_axes((0.09, 0.09, 0.55, 0.30))
        mx.set_xlim(0, 1.45)
        mx.set_ylim(-0.6, len(PATHS) - 0.4)
        mx.set_yticks(range(len(PATHS)))
        mx.set_yticklabels(list(PATHS), fontsize=FONT)
        mx.invert_yaxis()
        mx.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        mx.set_xticklabels(["0", "25%", "50%", "75%", "100%"], fontsize=FONT - 0.5)
        mx.set_xlabel("share of the slowest path's modelled time", fontsize=FONT)
        strip_spines(mx, ("left", "bottom"))
        cmap = matplotlib.colormaps["tab20"]
        self.op_colors = {op: cmap(i) for i, op in enumerate(_OPS)}
        self.segs = {p: [self.dyn(mx.add_patch(Rectangle((0, i - 0.3), 0, 0.6, facecolor=self.op_colors[op])))
                         for op in _OPS] for i, p in enumerate(PATHS)}
        self.totals = {p: self.dyn(mx.text(0, i, "", va="center", fontsize=FONT)) for i, p in enumerate(PATHS)}
        self.mtitle = self.dyn(mx.text(0.5, 1.03, "", transform=mx.transAxes, ha="center", va="bottom",
                                       fontsize=FONT + 1))
        fig.legend(handles=[Patch(color=self.op_colors[op], label=op) for op in _OPS], loc="upper left",
                   bbox_to_anchor=(0.72, 0.45), fontsize=FONT - 0.5, frameon=False, title="modelled operation",
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
            fontsize=FONT, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 0.53), ncols=2,
            columnspacing=1.5)
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
#: per path: hollow big circles under medium squares under small triangles, solid / dashed / dotted lines
_STYLE: dict[str, dict[str, Any]] = {"page": dict(marker="o", ms=7, mfc="none", mew=1.2, ls="-", lw=2.2),
          "sg": dict(marker="s", ms=4.5, mfc="none", mew=1.0, ls="--", lw=1.4),
          "iova": dict(marker="^", ms=3, ls=":", lw=1.2)}


def _coincide(series: dict[str, list]) -> str:
    """A note naming the paths whose counts are equal at every size ("page = sg = iova"), or ""."""
    groups: list[list[str]] = []
    for p in PATHS:
        if p not in series:
            continue
        g = next((g for g in groups if list(series[g[0]]) == list(series[p])), None)
        if g is None:
            groups.append([p])
        else:
            g.append(p)
    same = [" = ".join(g) for g in groups if len(g) > 1]
    return ("equal, lines overlap: " + "; ".join(same)) if same else ""


class ScalingView(View):
    """Left: one counter against the pages per request, one line per path. Right: MODELLED time
    per request against the pages per request. Log-log axes whose ranges depend only on the request
    sizes, so changing the counter or the cost preset never moves them."""

    def __init__(self, *, blit: bool = True):
        super().__init__(7.6, 3.3, blit=blit)   # 7.6 in: readable shrunk into a narrow notebook column
        fig = self.fig
        self.ax = ax = fig.add_axes((0.10, 0.15, 0.37, 0.68))
        self.mx = mx = fig.add_axes((0.61, 0.15, 0.37, 0.68))
        for a in (ax, mx):
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.xaxis.set_major_formatter(FuncFormatter(lambda x, pos: f"{int(x)}"))
            a.xaxis.set_minor_formatter(NullFormatter())
            a.tick_params(labelsize=FONT - 0.5)
            a.grid(True, which="major", lw=0.3, color="#dddddd")
            a.set_xlabel("4 KiB pages per request", fontsize=FONT)
            strip_spines(a, ("left", "bottom"))
        mx.set_ylabel("modelled ns per request", fontsize=FONT)
        self.ylabel = self.dyn(fig.text(0.015, 0.52, "", rotation=90, va="center", fontsize=FONT), slow=True)
        self.title = self.dyn(ax.text(0.5, 1.03, "", transform=ax.transAxes, ha="center", va="bottom",
                                      fontsize=FONT + 1), slow=True)
        self.mtitle = self.dyn(mx.text(0.5, 1.03, "", transform=mx.transAxes, ha="center", va="bottom",
                                       fontsize=FONT + 1))
        # equal counts put lines on top of each other: each path has its own marker, size and dash, the
        # first drawn biggest, so where they coincide every one still shows (and the note names them)
        self.lines = {p: self.dyn(ax.plot([], [], color=COLORS[p], **_STYLE[p])[0], slow=True) for p in PATHS}
        self._left: tuple | None = None
        self.mlines = {p: self.dyn(mx.plot([], [], color=COLORS[p], **_STYLE[p])[0]) for p in PATHS}
        ax.legend(handles=[Line2D([], [], color=COLORS[p], label=f"{p}: {PATH_TITLES[p]}", **_STYLE[p])
                           for p in PATHS], loc="upper left", fontsize=FONT - 1, frameon=False)
        self.same = self.dyn(ax.text(0.03, 0.72, "", transform=ax.transAxes, ha="left", va="top",
                                     fontsize=FONT - 1, color="#444444"), slow=True)
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
            self.same.set_text(_coincide({p: s[kind] for p, s in scale["paths"].items()}))
            self.ylabel.set_text(f"{COUNTER_LABELS[kind]} per request")
            self.title.set_text(f"{COUNTER_LABELS[kind]}, {layout} pages")
            self.touch()
        for p in PATHS:
            s = scale["paths"].get(p)
            if s is None:
                self.mlines[p].set_data([], [])
            else:
                self.mlines[p].set_data(xs, [max(v, 101.0) for v in s["modelled_ns"]])
        self.mtitle.set_text(f"MODELLED time (not measured)\ncost preset {scale.get('cost_preset', '')!r}")
        return self
