"""Draw the IOVA space a real capture's workload used, at 64 KiB and at 4 KiB pages.

No kernel analogue: a view over :func:`iovalab.lab.captures.iova_space` (rows of
:class:`~iovalab.lab.captures.IovaSpace`). Pure function: rows in, matplotlib ``Figure`` out; nothing
is computed here except unit conversions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PATH_ORDER", "plot_iova_space"]

#: the bars' stacking order (bottom to top)
PATH_ORDER = ("dma_map_phys", "two-step", "dma_alloc", "msi doorbell")
_COLOURS = {"dma_map_phys": "#4c72b0", "two-step": "#dd8452", "dma_alloc": "#55a868", "msi doorbell": "#8172b3"}


def plot_iova_space(rows: list[Any], title: str | None = None):
    """Two panels, one bar per row (kernel 64 KiB, simulator 64 KiB, simulator 4 KiB):

    * left: IOVA mapped over the whole workload (sum of every ``map`` line's size, MiB), stacked by the
      path that mapped it;
    * right: the IOVA range the workload reached, from its lowest mapped IOVA to 4 GiB (KiB).

    Returns the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 2]})
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
    ax.set_xlabel("IOVA mapped over the workload (MiB, sum of map lines)")
    ax.set_xlim(0, max(left) * 1.3 if max(left) else 1)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    spans = [r.span / 1024 for r in rows]
    ax2.barh(y, spans, color="#999999", height=0.6)
    for yy, r in zip(y, rows, strict=True):
        ax2.text(r.span / 1024, yy, f" {r.lowest:#x}", va="center", fontsize=9)
    ax2.set_yticks(y, [""] * len(rows))
    ax2.set_xlabel("IOVA range reached: lowest IOVA to 4 GiB (KiB)")
    ax2.set_xlim(0, max(spans) * 1.45 if max(spans) else 1)
    for a in (ax, ax2):
        a.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title or "IOVA space of the capture's workload: 64 KiB pages (real and simulated) vs 4 KiB",
                 fontsize=11)
    fig.tight_layout()
    return fig
