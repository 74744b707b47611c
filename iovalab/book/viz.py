"""Drawings for the lab book: pure matplotlib functions, state in, Figure out.

No kernel analogue. Each function takes model state (an :class:`~iovalab.kernel.iova.IovaDomain`, a
:class:`~iovalab.lab.explain.Footprint`, a :class:`~iovalab.lab.explain.StepState`, counters...) and
draws it; nothing here changes or computes model state (the numbers come from the model and
:mod:`iovalab.lab.explain`). Addresses are labelled in hex. Figures are plain
:class:`matplotlib.figure.Figure` objects with an Agg canvas (no pyplot, no global state).

The drawings the widgets animate are the views of :mod:`iovalab.book.viz_views` (``FootprintView``,
``StepView``, ``MaskView``) and :mod:`iovalab.book.viz_paths` (``PathsView``, ``ScalingView``):
``draw_footprint``, ``draw_step``, ``draw_address_map``, ``draw_paths`` and ``draw_scaling`` build the
same view without blitting and return its figure, so a plain cell shows exactly what the widget shows.
``draw_iova_space`` and ``draw_rcache`` take an ``ax`` to draw into again.

In IPython a PNG formatter for :class:`~matplotlib.figure.Figure` is registered on import, so a
cell that ends with a figure shows it even without ``%matplotlib inline``.

Layering: imports :mod:`iovalab.kernel.units`, :mod:`iovalab.kernel.events`, :mod:`iovalab.lab.explain` (and reads
the objects it is given); never :mod:`iovalab.book.widgets`.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter

from iovalab.lab.explain import Footprint, MaskWalk, StepState
from iovalab.book.viz_base import COLORS, COUNTER_LABELS, FONT, hex_label, hex_ticks
from iovalab.book.viz_paths import PathsView, ScalingView
from iovalab.book.viz_views import FootprintView, MaskView, StepView

__all__ = [
    "COLORS", "COUNTER_LABELS", "new_figure", "figure_png", "hex_label", "set_hex_ticks",
    "draw_footprint", "domain_nodes", "draw_iova_space", "draw_rcache", "draw_address_map",
    "draw_step", "draw_paths", "draw_scaling",
    "FootprintView", "StepView", "MaskView", "PathsView", "ScalingView",
]

_FONT = FONT


def new_figure(width: float = 9.0, height: float = 3.0, dpi: int = 90) -> Figure:
    """A fresh :class:`~matplotlib.figure.Figure` with constrained layout and an Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (Agg; low zlib compression: widgets redraw often)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


_HEX = FuncFormatter(lambda x, pos: hex_label(x))


def set_hex_ticks(ax, lo: int, hi: int, axis: str = "x", max_ticks: int = 7, step: int | None = None) -> None:
    """Ticks at power-of-two multiples between ``lo`` and ``hi``, labelled in hex."""
    ticks = hex_ticks(lo, hi, max_ticks, step)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(_HEX)
    target.set_tick_params(labelsize=_FONT - 0.5)


def _ax(ax, width: float, height: float):
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.add_subplot()
    ax.clear()
    return ax.figure, ax


# --------------------------------------------------------------------------------------------
def draw_footprint(fp: Footprint) -> Figure:
    """The IOVA footprint of one buffer, to scale: start pad, data, tail pad (mapped by
    ``dma_map_page``), and the part of the allocator node that power-of-two rounding
    (``alloc_iova_fast``) reserves but nothing maps (:class:`~iovalab.book.viz_views.FootprintView`)."""
    return FootprintView(blit=False).update(fp).fig


# --------------------------------------------------------------------------------------------
def domain_nodes(iovad, queued_pfns=()) -> list[tuple[int, int, str]]:
    """``(start, end_exclusive, status)`` in bytes for every node of an
    :class:`~iovalab.kernel.iova.IovaDomain`: ``reserved``, ``cached`` (its pfn sits in a magazine or the
    depot), ``queued`` (in ``queued_pfns``, e.g. a flush queue) or ``in use``."""
    cached = iovad.cached_pfns()
    queued = set(queued_pfns)
    g = iovad.granule
    out = []
    for n in iovad.nodes():
        st = ("reserved" if n.reserved else "cached" if n.pfn_lo in cached
              else "queued" if n.pfn_lo in queued else "in use")
        out.append((n.pfn_lo * g, (n.pfn_hi + 1) * g, st))
    return out


def _nodes_window(nodes, granule: int) -> tuple[int, int]:
    use = [(a, b) for a, b, s in nodes if s != "reserved"] or [(a, b) for a, b, _ in nodes]
    if not use:
        return (0xFFFF0000, 0x100000000)
    lo = min(a for a, _ in use)
    hi = max(b for _, b in use)
    pad = max(granule, (hi - lo) // 16 // granule * granule)
    return (max(0, lo - pad), hi + pad)


def draw_iova_space(nodes, granule: int | None = None, window: tuple[int, int] | None = None, ax=None,
                    title: str | None = None, cached_nodes: dict[str, int] | None = None) -> Figure:
    """IOVA allocator nodes along a linear address bar, coloured by status.

    :param nodes: an :class:`~iovalab.kernel.iova.IovaDomain` or ``[(start, end_exclusive, status)]``.
    :param window: ``(lo, hi)`` bytes to show (default: around the non-reserved nodes).
    :param cached_nodes: ``{"cached_node": pfn, ...}`` markers (default for a domain: its
        ``cached_node`` and ``cached32_node`` when they are not the anchor).
    """
    from iovalab.kernel.iova import IOVA_ANCHOR, IovaDomain

    fig, ax = _ax(ax, 7.0, 2.0)   # 7 in + the legend: readable shrunk into a narrow notebook column
    if isinstance(nodes, IovaDomain):
        iovad = nodes
        granule = iovad.granule
        nodes = domain_nodes(iovad)
        if cached_nodes is None:
            cached_nodes = {k: v.pfn_lo for k, v in (("cached_node", iovad.cached_node),
                                                     ("cached32_node", iovad.cached32_node))
                            if v.pfn_lo != IOVA_ANCHOR}
    granule = granule or 0x1000
    lo, hi = window or _nodes_window(nodes, granule)
    seen = set()
    for a, b, st in nodes:
        if b <= lo or a >= hi:
            continue
        a2, b2 = max(a, lo), min(b, hi)
        ax.add_patch(Rectangle((a2, 0.25), b2 - a2, 0.5, facecolor=COLORS[st], edgecolor="black", lw=0.6,
                               hatch="//" if st == "reserved" else None))
        seen.add(st)
    if lo < 1 << 32 <= hi:
        ax.axvline(1 << 32, color="black", ls="--", lw=0.8)
        ax.text(1 << 32, 0.95, " 4 GiB", fontsize=_FONT, va="top")
    for i, (name, pfn) in enumerate(sorted((cached_nodes or {}).items())):
        x = pfn * granule
        if lo <= x <= hi:
            ax.annotate(name, xy=(x, 0.25), xytext=(x, -0.15 - 0.2 * i), fontsize=_FONT - 0.5, ha="center",
                        arrowprops=dict(arrowstyle="->", lw=0.7))
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, 1.0)
    ax.set_yticks([])
    set_hex_ticks(ax, lo, hi)
    ax.set_xlabel(f"IOVA (granule {granule:#x})", fontsize=_FONT)
    order = ["in use", "cached", "queued", "reserved"]
    ax.legend(handles=[Patch(facecolor=COLORS[s], edgecolor="black", hatch="//" if s == "reserved" else None,
                             label=s) for s in order if s in seen],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=_FONT, frameon=False)
    if title:
        ax.set_title(title, fontsize=_FONT + 1)
    for s in ("left", "right", "top"):
        ax.spines[s].set_visible(False)
    return fig


def draw_rcache(iovad, ax=None, title: str | None = None) -> Figure:
    """The per-CPU range caches of an :class:`~iovalab.kernel.iova.IovaDomain`: for each size bin
    (1, 2, 4 ... 32 granules) each CPU's ``loaded`` and ``prev`` magazines (filled part of
    ``IOVA_MAG_SIZE`` = 127 slots) and the number of full magazines in the depot
    (``drivers/iommu/iova.c``: ``iova_rcache_insert``, ``__iova_rcache_get``)."""
    from iovalab.kernel.iova import IOVA_MAG_SIZE

    fig, ax = _ax(ax, 7.0, 2.6)
    summ = iovad.rcache_summary()
    ncpu = len(summ[0]["cpus"])
    cols = 2 * ncpu + 1
    for row, b in enumerate(summ):
        y = len(summ) - 1 - row
        for c, (loaded, prev) in enumerate(b["cpus"]):
            for j, n in enumerate((loaded, prev)):
                x = 2 * c + j
                ax.add_patch(Rectangle((x + 0.05, y + 0.15), 0.9, 0.7, facecolor="white", edgecolor="black",
                                       lw=0.6))
                if n:
                    ax.add_patch(Rectangle((x + 0.05, y + 0.15), 0.9 * n / IOVA_MAG_SIZE, 0.7,
                                           facecolor=COLORS["cached"], lw=0))
                ax.text(x + 0.5, y + 0.5, str(n), ha="center", va="center", fontsize=_FONT)
        x = 2 * ncpu
        d = b["depot"]
        ax.add_patch(Rectangle((x + 0.05, y + 0.15), 0.9, 0.7, facecolor="#f0f0f0" if not d else "#c7e9c0",
                               edgecolor="black", lw=0.6))
        ax.text(x + 0.5, y + 0.5, f"{d} mag" if d else "empty", ha="center", va="center", fontsize=_FONT)
    ax.set_xlim(0, cols)
    ax.set_ylim(0, len(summ))
    ax.set_yticks([len(summ) - 1 - r + 0.5 for r in range(len(summ))])
    ax.set_yticklabels([f"bin {b['bin']}: {b['granules']} granule{'s' if b['granules'] > 1 else ''}"
                        for b in summ], fontsize=_FONT)
    ax.set_xticks([i + 0.5 for i in range(cols)])
    ax.set_xticklabels([f"CPU{c}\n{n}" for c in range(ncpu) for n in ("loaded", "prev")] + ["depot"],
                       fontsize=_FONT)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title or f"rcache: pfns per magazine (of {IOVA_MAG_SIZE}) and full magazines in the depot",
                 fontsize=_FONT + 1)
    return fig


# --------------------------------------------------------------------------------------------
def draw_address_map(walk: MaskWalk) -> Figure:
    """Where each allocation of a :func:`~iovalab.lab.explain.mask_walk` landed, on a log2 address axis
    (:class:`~iovalab.book.viz_views.MaskView`)."""
    return MaskView(capacity=max(1, len(walk.allocs)), blit=False).update(walk).fig


# --------------------------------------------------------------------------------------------
def draw_step(state: StepState, window: tuple[int, int], title: str = "", counter_max: float | None = None) -> Figure:
    """A player frame (:class:`~iovalab.book.viz_views.StepView`): IOVA nodes, leaf PTEs and IOTLB
    entries over ``window``, the range the step touched, and the counters so far."""
    m = counter_max if counter_max is not None else max(list(state.counters.as_dict().values()) + [1])
    return StepView(window, m, blit=False).update(state, title).fig


def draw_paths(results: dict) -> Figure:
    """Counters (bars, each group scaled to its largest path, labelled with the counts) and MODELLED
    time of the three paths on one workload (:class:`~iovalab.book.viz_paths.PathsView`); ``results`` as
    :func:`~iovalab.lab.explain.compare_workload` or :func:`~iovalab.lab.explain.compare_paths` return."""
    return PathsView(blit=False).update(results).fig


def draw_scaling(scale: dict, kind: str = "iommu_map_calls") -> Figure:
    """One counter and the MODELLED time per request against the pages per request, one line per
    path (:class:`~iovalab.book.viz_paths.ScalingView`); ``scale`` as :func:`~iovalab.lab.explain.scaling`."""
    return ScalingView(blit=False).update(scale, kind).fig


# --------------------------------------------------------------------------------------------
def _register_ipython_formatter() -> None:
    """Show :class:`~matplotlib.figure.Figure` results as PNG in IPython without pyplot."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is part of the lab extra
        return
    ip = get_ipython()
    if ip is None:
        return
    fmt = ip.display_formatter.formatters["image/png"]
    fmt.for_type(Figure, lambda fig: figure_png(fig))


_register_ipython_formatter()
