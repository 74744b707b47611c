"""The blitted figure machinery the lab book's views share (the drawing half of :mod:`iovalab.book.viz`).

No kernel analogue. A :class:`View` builds one :class:`~matplotlib.figure.Figure` once - axes, ticks,
legend - and keeps the parts that change (patches, collections, lines, texts) as artists that the
subclass's ``update`` moves in place. With ``blit=True`` the static part is rendered once and each frame
only redraws the changing artists onto a copy of it (Agg blitting), so a widget redraw costs a few
milliseconds plus the PNG encoding. With ``blit=False`` (what the ``viz.draw_*`` functions use) the
same figure is an ordinary one, so a plain cell and a widget show the same drawing. Also here: the one
colour per thing every drawing uses, the counters' display names and hex axis labels.

The views themselves: :mod:`iovalab.book.viz_views` (address-space views) and
:mod:`iovalab.book.viz_paths` (the mapping paths compared).
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["COLORS", "COUNTER_LABELS", "FONT", "hex_label", "hex_ticks", "strip_spines", "View"]

COLORS = {
    "in use": "#1f77b4", "cached": "#2ca02c", "queued": "#ff7f0e", "reserved": "#9e9e9e",
    "data": "#1f77b4", "pad": "#d9d9d9", "waste": "#ffffff", "mapped": "#8c564b",
    "iotlb": "#17becf", "stale": "#d62728", "fail": "#d62728", "below 4 GiB": "#1f77b4",
    "full width": "#ff7f0e", "focus": "#ffe066", "counter": "#9e9e9e", "counter changed": "#ff7f0e",
    "page": "#1f77b4", "sg": "#ff7f0e", "iova": "#2ca02c", "unflushed": "#f4a6a6",
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


def strip_spines(ax, keep=("bottom",)) -> None:
    """Hide every spine of ``ax`` but those named in ``keep``."""
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
