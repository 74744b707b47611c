"""Draw the IOVA space a real capture's workload used: at 64 KiB and at 4 KiB pages, and over time.

No kernel analogue: views over :func:`iovalab.lab.captures.iova_space` (rows of
:class:`~iovalab.lab.captures.IovaSpace`), :func:`iovalab.lab.captures.iova_timeline` (rows of
:class:`~iovalab.lab.captures.TimelineRow`) and :func:`iovalab.lab.captures.lazy_rerun`. Pure
functions: rows in, matplotlib ``Figure`` out; nothing is computed here except unit conversions and
each run's lowest IOVA.
"""

from __future__ import annotations

import textwrap
from typing import Any

from iovalab.book.viz_base import COLORS

__all__ = ["PATH_ORDER", "plot_iova_space", "plot_iova_timeline", "plot_rerun"]

#: the bars' stacking order (bottom to top)
PATH_ORDER = ("dma_map_phys", "two-step", "dma_alloc", "msi doorbell")
#: the same colours as the other chapters' figures (:data:`~iovalab.book.viz_base.COLORS`): one mapping per
#: call is the ``page`` path's blue, the two-step API the ``iova`` path's green
_COLOURS = {"dma_map_phys": COLORS["page"], "two-step": COLORS["iova"], "dma_alloc": "#9467bd",
            "msi doorbell": "#7f7f7f"}


def plot_iova_space(rows: list[Any], title: str | None = None):
    """Two panels, one bar per row (kernel 64 KiB, simulator 64 KiB, simulator 4 KiB):

    * left: IOVA mapped over the whole workload (sum of every ``map`` line's size, MiB), stacked by the
      path that mapped it;
    * right: the IOVA range the workload reached, from its lowest mapped IOVA to 4 GiB (KiB).

    Returns the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.6, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names = [r.who for r in rows]
    y = list(range(len(rows)))[::-1]
    left = [0.0] * len(rows)
    for path in PATH_ORDER:
        vals = [r.by_path.get(path, 0) / 2**20 for r in rows]
        if any(vals):
            ax.barh(y, vals, left=left, color=_COLOURS[path], label=path, height=0.6)
            left = [a + b for a, b in zip(left, vals, strict=True)]
    for yy, r in zip(y, rows, strict=True):
        ax.text(r.mapped_bytes / 2**20, yy, f" {r.mapped_bytes / 2**20:.1f} MiB", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlabel("IOVA mapped over the workload\n(MiB, sum of map lines)", fontsize=9)
    ax.set_xlim(0, max(left) * 1.3 if max(left) else 1)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    spans = [r.span / 1024 for r in rows]
    ax2.barh(y, spans, color="#999999", height=0.6)
    for yy, r in zip(y, rows, strict=True):
        ax2.text(r.span / 1024, yy, f" {r.lowest:#x}", va="center", fontsize=9)
    ax2.set_yticks(y, [""] * len(rows))
    ax2.set_xlabel("IOVA range reached:\nlowest IOVA to 4 GiB (KiB)", fontsize=9)
    ax2.set_xlim(0, max(spans) * 1.45 if max(spans) else 1)
    for a in (ax, ax2):
        a.spines[["top", "right"]].set_visible(False)
    fig.suptitle(textwrap.fill(title or "IOVA space of the capture's workload: 64 KiB pages (real and "
                               "simulated) vs 4 KiB", 64), fontsize=10)
    fig.tight_layout()
    return fig


def plot_iova_timeline(rows: list[Any], title: str | None = None):
    """One panel, one column per request in capture order (x): the IOVA range the kernel's map lines
    covered, drawn as a bar from its lowest IOVA down from 4 GiB (y, KiB below 4 GiB), coloured by the
    path that mapped it; the simulator's lowest IOVA for the same request as a black tick on it; a
    request whose simulator lines differ from the kernel's gets a red cross (the legend counts them).

    Returns the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    top = 1 << 32
    for path in PATH_ORDER:
        mine = [r for r in rows if r.path == path]
        if not mine:
            continue
        ax.vlines([r.index for r in mine], [(top - r.kernel_iova - r.kernel_bytes) / 1024 for r in mine],
                  [(top - r.kernel_iova) / 1024 for r in mine], colors=_COLOURS[path], linewidth=1.2,
                  label=f"kernel: {path} ({len(mine)})")
    sim = [r for r in rows if r.sim_iova is not None]
    ax.scatter([r.index for r in sim], [(top - r.sim_iova) / 1024 for r in sim], marker="_", s=14,
               color="black", linewidths=0.8, label=f"simulator: lowest IOVA ({len(sim)})", zorder=3)
    bad = [r for r in rows if not r.same]
    ax.scatter([r.index for r in bad], [(top - r.kernel_iova) / 1024 for r in bad], marker="x", s=60,
               color="red", zorder=4, label=f"simulator differs ({len(bad)})")
    ax.invert_yaxis()
    ax.set_xlabel("request, in capture order")
    ax.set_ylabel("IOVA: KiB below 4 GiB")
    ax.set_xlim(-1, len(rows))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False, ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(textwrap.fill(title or "IOVA space over the capture: kernel bars, simulator ticks, "
                               "differences crossed", 64), fontsize=10)
    fig.tight_layout()
    return fig


def plot_rerun(rerun: Any, title: str | None = None):
    """One panel: every allocation over time (x: ms since the first), as its IOVA (y: KiB below 4 GiB),
    for the capture (strict, grey) and the simulator's lazy rerun of the same requests (orange), from a
    :class:`~iovalab.lab.captures.LazyRerun`; dashed lines at each run's lowest IOVA.

    Returns the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    top = 1 << 32
    t0 = min(t for t, _, _ in rerun.kernel) if rerun.kernel else 0.0
    for who, allocs, colour, size in (("kernel, strict (this capture)", rerun.kernel, "#7f7f7f", 10),
                                      ("simulator, lazy rerun", rerun.lazy.allocations, COLORS["queued"], 6)):
        low = min(iova for _, iova, _ in allocs) if allocs else top
        ax.scatter([(t - t0) * 1000 for t, _, _ in allocs], [(top - iova) / 1024 for _, iova, _ in allocs],
                   s=size, color=colour, linewidths=0,
                   label=f"{who}: {len(allocs)} allocations, lowest IOVA {low:#x} (dashed)")
        ax.axhline((top - low) / 1024, color=colour, linestyle="--", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first allocation (the capture's clock)")
    ax.set_ylabel("IOVA: KiB below 4 GiB")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False, ncol=1)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(textwrap.fill(title or "The same requests, strict (kernel) and lazy (simulator)", 64),
                 fontsize=10)
    fig.tight_layout()
    return fig
