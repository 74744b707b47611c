"""ipywidgets panels of the lab book: controls -> a config -> the model -> a drawing.

No kernel analogue and no model logic: each panel reads its controls, calls one function of
:mod:`iovalab.lab.explain` (which drives the model), writes the numbers into an ``HTML`` widget and
the drawing (a reused :mod:`iovalab.book.viz_base` view, rendered to PNG) into an ``Image`` widget.
Anything a panel shows comes from a plain call a cell can make too:

================================  ============================================================
panel                             the same in a plain cell
================================  ============================================================
:class:`GranuleExplorer`          ``explain.footprint(g, phys, size)``, ``viz.draw_footprint(fp)``
:class:`MaskExplorer`             ``explain.mask_walk(...)``, ``viz.draw_address_map(walk)``
:class:`ScenarioPlayer`           ``rec = explain.record(w, path)``, ``rec.state(k)``,
                                  ``viz.draw_step(state, rec.window)``
:class:`ComparePlayers`           two of the above on one workload
:class:`PathComparison`           ``explain.compare_workload(w)``, ``viz.draw_paths(res)``
:class:`ScalingExplorer`          ``explain.scaling(...)``, ``viz.draw_scaling(scale, kind)``
================================  ============================================================

Every control is an attribute (``panel.granule.value = 0x10000`` works headless, as a browser
change does); results go to ``panel.text`` (HTML: prints inside observers are lost in JupyterLab)
and ``panel.image``. The ``*_html`` functions build those texts and are public for tests and cells.
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from functools import lru_cache

import ipywidgets as W

from iovalab.lab import explain
from iovalab.kernel.units import hx, parse_int
from iovalab.book.viz_paths import PathsView, ScalingView
from iovalab.book.viz_views import FootprintView, MaskView, StepView

__all__ = [
    "GranuleExplorer", "MaskExplorer", "ScenarioPlayer", "ComparePlayers", "CompareWorkloads", "PathComparison",
    "ScalingExplorer",
    "footprint_html", "mask_html", "step_html", "compare_html", "scaling_html", "cached_record", "bench_cases",
]

_IMG = dict(max_width="100%", height="auto")   # natural size (no blur), shrinks in narrow columns
_S = {"description_width": "initial"}
def _row() -> W.Layout:
    return W.Layout(flex_flow="row wrap", align_items="center")
_TD = "padding:1px 10px 1px 0;font-family:monospace;font-size:12px;border:none;text-align:left"
_CSS = ("<style>.iovalab-t td{padding:1px 8px;font-family:monospace;font-size:12px}"
        ".iovalab-t th{text-align:left;padding:1px 8px;font-size:12px}"
        ".iovalab-err{color:#b00020;font-weight:bold}.iovalab-note{color:#8a4b00;font-size:12px}"
        ".iovalab-ev{font-family:monospace;font-size:12px;line-height:1.35;margin:2px 0}"
        ".iovalab-stale{opacity:0.25;filter:grayscale(1)}</style>")


def _table(rows, head: tuple[str, ...] | None = None, *, numbers: bool = False) -> str:
    """``numbers``: every column is numeric (right-aligned, never broken) and the headers wrap at their
    spaces, so a column is as wide as its longest header word or value (as :mod:`iovalab.book.tables`)."""
    # inline styles: JupyterLab's rendered-HTML table rules would otherwise win over a class
    td = _TD.replace("text-align:left", "text-align:right;white-space:nowrap") if numbers else _TD
    th = _TD.replace("font-family:monospace;", "font-weight:bold;")
    if numbers:
        th = th.replace("text-align:left", "text-align:right;white-space:normal;vertical-align:bottom")
    out = ['<table class="iovalab-t" style="border-collapse:collapse;margin:4px 0">']
    if head:
        out.append("<tr>" + "".join(f'<th style="{th}">{html.escape(h)}</th>' for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td style="{td}">{html.escape(str(c))}</td>' for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _wrap(inner: str) -> str:
    """Every panel text: a normal line height (the HTML widget's is 28px). The styles are not repeated in
    every update (a new <style> element makes the browser recompute the style of the whole page, on
    every step of a player): each panel carries them once, in :func:`_styles`."""
    return f'<div style="line-height:1.4">{inner}</div>'


def _styles() -> W.HTML:
    """The panel's stylesheet, sent once (an invisible HTML widget: a <style> element applies anyway)."""
    return W.HTML(_CSS, layout=W.Layout(display="none"))


def _error(msg: str) -> str:
    return _wrap(f'<div class="iovalab-err">{html.escape(msg)}</div>'
                 "<div class='iovalab-note'>The figure is greyed out: it shows the last valid input, not this one."
                 "</div>")


def _set_stale(image: W.Image, stale: bool) -> None:
    """Grey out (``stale``) or restore a panel's figure: after bad input the old drawing no longer holds
    (the panel keeps its last valid result, as the model keeps its state on a refused call)."""
    if stale:
        image.add_class("iovalab-stale")
    else:
        image.remove_class("iovalab-stale")


def _image() -> W.Image:
    return W.Image(format="png", layout=W.Layout(**_IMG))


class _Batch:
    """``with panel.batch(): ...`` sets several controls and refreshes once at the end."""

    _held = False

    def refresh(self) -> None:
        """Redraw from the controls' current values (each panel defines it)."""
        raise NotImplementedError

    @contextmanager
    def batch(self):
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            self.refresh()

    def _changed(self, change=None) -> None:
        if not self._held:
            self.refresh()


# --------------------------------------------------------------------------------------------
def footprint_html(fp: explain.Footprint) -> str:
    """The :class:`GranuleExplorer` text: every number of the footprint, in hex."""
    return _wrap(_table(fp.rows(), ("quantity", "value")))


class GranuleExplorer(_Batch, W.VBox):
    """Granule and offset: the IOVA footprint of ``[phys, phys + size)`` (``__iommu_dma_map``,
    ``dma_iova_try_alloc``: drivers/iommu/dma-iommu.c) and what a fresh domain returns.

    Controls: ``granule`` (Dropdown 4K/16K/64K), ``phys`` and ``size`` (Text, hex or ``4K``-style,
    applied on Enter or focus loss). Output: ``text`` (HTML table), ``image``.
    """

    def __init__(self, granule: int = 0x1000, phys: int = 0x1234, size: int = 0x3000):
        self.granule = W.Dropdown(options=[("4 KiB (0x1000)", 0x1000), ("16 KiB (0x4000)", 0x4000),
                                           ("64 KiB (0x10000)", 0x10000)], value=granule, description="granule",
                                    style=_S)
        self.phys = W.Text(value=hx(phys), description="phys", style=_S, continuous_update=False)
        self.size = W.Text(value=hx(size), description="size", style=_S, continuous_update=False)
        self.text = W.HTML()
        self.image = _image()
        self.view = FootprintView()
        self.footprint: explain.Footprint | None = None
        for c in (self.granule, self.phys, self.size):
            c.observe(self._changed, names="value")
        super().__init__([W.HBox([self.granule, self.phys, self.size], layout=_row()), self.image, self.text,
                          _styles()])
        self.refresh()


    def refresh(self) -> None:
        try:
            fp = explain.footprint(self.granule.value, parse_int(self.phys.value), parse_int(self.size.value))
        except ValueError as e:   # the error replaces the table and the figure (they showed other
            self.image.value = b""  # inputs); ``footprint`` keeps the last good result
            self.text.value = _error(str(e))
            _set_stale(self.image, True)
            return
        self.footprint = fp
        self.text.value = footprint_html(fp)
        self.image.value = self.view.update(fp).png()
        _set_stale(self.image, False)


# --------------------------------------------------------------------------------------------
def _setup_rows(walk: explain.MaskWalk) -> list[tuple[str, str]]:
    """``walk.rows()`` with the Python booleans written as the kernel's C does: ``true``/``false``
    (``dev->iommu->pci_32bit_workaround = !iommu_dma_forcedac`` in ``iommu_setup_dma_ops()``,
    drivers/iommu/dma-iommu.c, 6.17)."""
    why = ("PCI device, no iommu.forcedac=1" if walk.pci and not walk.forcedac
           else "iommu.forcedac=1" if walk.pci else "not a PCI device")
    return [(k, f"{v.lower()} ({why})" if v in ("True", "False") else v) for k, v in walk.rows()]


def mask_html(walk: explain.MaskWalk) -> str:
    """The :class:`MaskExplorer` text: the set-up and one row per allocation."""
    rows = []
    for a in walk.allocs:
        what = a.notice or (f"failed: {a.why}" if not a.iova and a.why else "")
        rows.append((a.index, hx(a.iova) if a.iova else "0 (failed)", hx(a.size), a.attempt, a.source or "-",
                     what))
    notes = ""
    if walk.notices:
        notes += f"<p><b>dev_notice:</b> {html.escape(walk.notices[0])} - from now on this device never tries " \
                 "below 4 GiB first (<code>pci_32bit_workaround = false</code>).</p>"
    if walk.failures:
        notes += (f"<p><b>{walk.failures} allocation(s) failed</b>: <code>dma_iova_try_alloc</code> returns false "
                  "(<code>dma_map_page</code> would return <code>DMA_MAPPING_ERROR</code>).</p>")
    return _wrap(_table(_setup_rows(walk), ("set-up", "value")) + notes
                 + _table(rows, ("#", "IOVA", "size", "attempt", "from", "notice")))


class MaskExplorer(_Batch, W.VBox):
    """DMA mask, bus limit, PCI and ``iommu.forcedac``: where successive IOVA allocations land
    (``iommu_dma_alloc_iova``, drivers/iommu/dma-iommu.c) on a fresh ``preset`` domain.

    Controls: ``mask_bits``, ``bus_limit``, ``free_below_4g`` (Dropdowns), ``pci``, ``forcedac``
    (Checkboxes), ``count`` and ``granules`` (IntSliders: how many allocations, how many granules
    each). Output: ``text``, ``image``.
    """

    FREE = (("all of it", None), ("16 KiB", 0x4000), ("none", 0))
    BUS = (0, 32, 36, 40, 48)

    def __init__(self, mask_bits: int = 64, count: int = 8, free_below_4g: int | None = 0x4000, *,
                 preset: str = "intel-vtd"):
        self.preset = preset
        self.mask_bits = W.Dropdown(options=list(explain.MASK_BITS), value=mask_bits, description="mask bits", style=_S)
        self.bus_limit = W.Dropdown(options=[("none", 0)] + [(f"{b} bits", b) for b in self.BUS if b],
                                    value=0, description="bus limit", style=_S)
        self.free_below_4g = W.Dropdown(options=list(self.FREE), value=free_below_4g, description="free < 4 GiB",
                                        style=_S)
        self.pci = W.Checkbox(value=True, description="PCI device", style=_S, indent=False)
        self.forcedac = W.Checkbox(value=False, description="iommu.forcedac=1", style=_S, indent=False)
        self.count = W.IntSlider(value=count, min=1, max=16, description="allocations", style=_S)
        self.granules = W.IntSlider(value=1, min=1, max=32, description="granules each", style=_S)
        self.text = W.HTML()
        self.image = _image()
        self.view = MaskView(capacity=count)
        self.walk: explain.MaskWalk | None = None
        for c in (self.mask_bits, self.bus_limit, self.free_below_4g, self.pci, self.forcedac, self.count,
                  self.granules):
            c.observe(self._changed, names="value")
        super().__init__([W.HBox([self.mask_bits, self.bus_limit, self.free_below_4g], layout=_row()),
                          W.HBox([self.pci, self.forcedac, self.count, self.granules], layout=_row()),
                          self.image, self.text, _styles()])
        self.refresh()


    def refresh(self) -> None:
        g = explain.preset_granule(self.preset)
        try:
            walk = explain.mask_walk(self.mask_bits.value, pci=self.pci.value, forcedac=self.forcedac.value,
                                     bus_limit_bits=self.bus_limit.value, count=self.count.value,
                                     size=self.granules.value * g, free_below_4g=self.free_below_4g.value,
                                     preset=self.preset)
        except ValueError as e:
            self.text.value = _error(str(e))
            _set_stale(self.image, True)
            return
        self.walk = walk
        self.text.value = mask_html(walk)
        self.image.value = self.view.update(walk).png()
        _set_stale(self.image, False)


# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=48)
def cached_record(workload: str, path: str, strict: bool) -> explain.Recording:
    """:func:`iovalab.lab.explain.record`, remembered (recordings are read-only)."""
    return explain.record(workload, path, strict=strict)


_LAYER = {"iova": "iova.c", "iommu": "iommu.c", "pgtable": "pgtable", "dma": "dma-iommu", "swiotlb": "swiotlb",
          "driver": "driver", "dma-direct": "dma-direct"}


def step_html(rec: explain.Recording, step: int, state: explain.StepState, unit: str = "call",
              max_events: int = 40) -> str:
    """The player text: what the step was, every event in it (kernel function, arguments, result,
    indented by call depth), and the state after it."""
    nsteps = len(rec.steps(unit))
    lines = []
    evs = state.current
    for e in evs[:max_events]:
        pad = "&nbsp;" * (2 * e.depth)
        tag = f"[{_LAYER.get(e.layer, e.layer)}]"
        text = html.escape(explain.describe_event(e))
        if e.depth == 0 and e.kind == "dma_api_calls":
            text = f"<b>{text}</b>"
        lines.append(f"{pad}<span style='color:#777'>{tag}</span> {text}")
    if len(evs) > max_events:
        lines.append(f"... {len(evs) - max_events} more event(s)")
    mode = "strict" if rec.strict else "lazy (DMA-FQ)"
    in_use = sum(1 for *_, s in state.nodes if s == "in use")
    cached = sum(1 for *_, s in state.nodes if s == "cached")
    queued = sum(1 for *_, s in state.nodes if s == "queued")
    summary = (f"IOVA nodes: {in_use} in use, {cached} in rcaches, {queued} in flush queues; "
               f"leaf PTEs: {len(state.mapped)}; page-table pages: {state.tables}; "
               f"IOTLB entries: {len(state.iotlb)} ({state.stale} stale); "
               f"unmapped but not yet invalidated: {len(state.unflushed)} range(s)")
    notes = "".join(f"<div class='iovalab-note'>{html.escape(n)}</div>" for n in state.notices[-3:])
    head = (f"<b>{html.escape(rec.workload)}</b>, path <b>{rec.path}</b> ({explain.PATH_TITLES[rec.path]}), {mode} "
            f"- step {step} of {nsteps - 1} ({len(evs)} event(s))")
    events = "<br>".join(lines) or "(no kernel-visible event)"
    return _wrap(f"<div>{head}</div><div><b>{html.escape(rec.label(step, unit))}</b></div>"
                 f"<div class='iovalab-ev' style='font-family:monospace;font-size:12px;margin:2px 0'>{events}</div>"
                 f"<div style='font-size:12px'>{summary}</div>{notes}")


class ScenarioPlayer(_Batch, W.VBox):
    """Step through one recorded workload: first / back / next / last, a step slider and Play.

    Controls: ``workload``, ``path``, ``unit`` (Dropdowns), ``lazy`` (Checkbox), ``first``, ``back``,
    ``next``, ``last`` (Buttons), ``step`` (IntSlider), ``play`` (Play, linked to ``step``).
    Output: ``text`` (the step's events in words and the state), ``image`` (IOVA nodes, page table,
    IOTLB, counters). The whole log is recorded once (:func:`cached_record`); a step is a view of it.
    """

    UNITS = (("driver action / API call", "call"), ("single event", "event"))

    def __init__(self, workload: str = "nvme-spec-example", path: str = "iova", *, strict: bool = True,
                 compact: bool = False):
        """``compact``: a narrower figure, and no ``workload``/``lazy`` row (a parent such as
        :class:`ComparePlayers` shows shared ones and links them)."""
        names = explain.player_workloads()
        if workload not in names:
            raise ValueError(f"workload {workload!r} is not one of {names}")
        self.workload = W.Dropdown(options=names, value=workload, description="workload", style=_S)
        paths = explain.workload_paths(workload)
        self.path = W.Dropdown(options=list(paths), value=path if path in paths else paths[0], description="path",
                               style=_S)
        self.lazy = W.Checkbox(value=not strict, description="lazy (DMA-FQ)", style=_S, indent=False)
        self.unit = W.Dropdown(options=list(self.UNITS), value="call", description="step by", style=_S)
        self.first = W.Button(description="|<", tooltip="first step", layout=W.Layout(width="44px"))
        self.back = W.Button(description="<", tooltip="previous step", layout=W.Layout(width="44px"))
        self.next = W.Button(description=">", tooltip="next step", layout=W.Layout(width="44px"))
        self.last = W.Button(description=">|", tooltip="last step", layout=W.Layout(width="44px"))
        self.step = W.IntSlider(value=0, min=0, max=1, description="step", style=_S, continuous_update=True,
                                layout=W.Layout(width="420px"))
        self.play = W.Play(value=0, min=0, max=1, interval=800, description="play")
        W.link((self.play, "value"), (self.step, "value"))
        self.text = W.HTML()
        self.image = _image()
        self.view = StepView(compact=compact)
        self.rec: explain.Recording | None = None
        self.state: explain.StepState | None = None
        self.final_max = 0
        #: players drawn side by side (:class:`ComparePlayers`): their counter bars share one scale
        self.peers: list[ScenarioPlayer] = []
        self._busy = False
        self.first.on_click(lambda b: self._go(0))
        self.back.on_click(lambda b: self._go(self.step.value - 1))
        self.next.on_click(lambda b: self._go(self.step.value + 1))
        self.last.on_click(lambda b: self._go(self.step.max))
        self.step.observe(self._stepped, names="value")
        self.workload.observe(self._workload_changed, names="value")
        for c in (self.path, self.lazy, self.unit):
            c.observe(self._changed, names="value")
        # controls keep their size in a narrow column (a laptop with the sidebar open): rows wrap, no
        # control shrinks (flex 0 0 auto), so the slider never collapses to a dot nor a button is cut off
        for c in (self.first, self.back, self.next, self.last, self.step, self.play, self.path, self.unit,
                  self.workload, self.lazy):
            c.layout.flex = "0 0 auto"
        if compact:   # workload and lazy belong to the parent (ComparePlayers)
            self.step.layout.width = "240px"
            self.path.layout.width = "150px"
            self.unit.layout.width = "250px"
            top = [W.HBox([self.path, self.unit], layout=_row())]
        else:
            top = [W.HBox([self.workload, self.path], layout=_row()), W.HBox([self.lazy, self.unit], layout=_row())]
        nav = W.HBox([self.first, self.back, self.next, self.last, self.step, self.play], layout=_row())
        super().__init__(top + [nav, self.image, self.text, _styles()])
        self.refresh()

    def _go(self, k: int) -> None:
        self.step.value = max(self.step.min, min(self.step.max, k))

    def _changed(self, change=None) -> None:
        if not self._busy and not self._held:
            self.refresh()

    def _workload_changed(self, change=None) -> None:
        paths = explain.workload_paths(self.workload.value)
        self._busy = True
        try:
            keep = self.path.value
            self.path.options = list(paths)
            self.path.value = keep if keep in paths else paths[0]
        finally:
            self._busy = False
        self._changed()

    def refresh(self) -> None:
        """Record (or fetch) the workload for the current controls and show step 0."""
        rec = cached_record(self.workload.value, self.path.value, not self.lazy.value)
        self.rec = rec
        n = len(rec.steps(self.unit.value))
        final = rec.state(len(rec.bounds) - 1)
        self.view.set_window(rec.window)
        self.final_max = max(final.counters.as_dict().values()) or 1
        common = max([self.final_max] + [p.final_max for p in self.peers])
        self.view.set_counter_max(common)
        for p in self.peers:   # one scale for both sides: "32" is as long on the left as on the right
            if p.rec is not None and p.view.cmax != self.view.cmax:
                p.view.set_counter_max(common)
                p.show(p.step.value)
        self._busy = True
        try:
            self.step.max = max(1, n - 1)
            self.play.max = self.step.max
            self.step.value = 0
        finally:
            self._busy = False
        self.show(0)

    def _stepped(self, change=None) -> None:
        if not self._busy and not self._held:
            self.show(self.step.value)

    def show(self, k: int) -> None:
        """Draw step ``k`` (clamped); what a slider move or button click does."""
        rec = self.rec
        if rec is None:     # nothing recorded yet (a refresh failed): nothing to draw
            return
        unit = self.unit.value
        k = max(0, min(k, len(rec.steps(unit)) - 1))
        st = rec.state(k, unit)
        self.state = st
        self.text.value = step_html(rec, k, st, unit)
        title = f"{rec.workload} / {rec.path}: step {k}"
        self.image.value = self.view.update(st, title).png()


class ComparePlayers(W.VBox):
    """Two :class:`ScenarioPlayer` side by side on the same workload, e.g. ``page`` against ``iova``.

    ``workload`` and ``lazy`` are shared; ``left`` and ``right`` are the players (each with its own
    ``path`` and stepping controls).
    """

    def __init__(self, workload: str = "nvme-spec-example", paths: tuple[str, str] = ("page", "iova"), *,
                 strict: bool = True):
        self.left = ScenarioPlayer(workload, paths[0], strict=strict, compact=True)
        self.right = ScenarioPlayer(workload, paths[1], strict=strict, compact=True)
        self.workload = W.Dropdown(options=explain.player_workloads(), value=workload, description="workload", style=_S)
        self.lazy = W.Checkbox(value=not strict, description="lazy (DMA-FQ)", style=_S, indent=False)
        self.left.peers, self.right.peers = [self.right], [self.left]
        self.left.refresh()   # now that both exist: one counter scale for the two
        for p in (self.left, self.right):
            W.link((self.workload, "value"), (p.workload, "value"))
            W.link((self.lazy, "value"), (p.lazy, "value"))
        # two columns while each gets 400 px; below that they stack, each keeping its controls' size
        cols = [W.VBox([p], layout=W.Layout(flex="1 1 400px", min_width="400px")) for p in (self.left, self.right)]
        both = W.HBox(cols, layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__([W.HBox([self.workload, self.lazy], layout=_row()), both])


class CompareWorkloads(W.VBox):
    """Two :class:`ScenarioPlayer` side by side on two workloads under one path, e.g. the P2P read
    (:data:`~iovalab.lab.explain.P2P_WORKLOADS`) with a bus address against through the host bridge.

    ``path`` and ``lazy`` are shared (the players' own path menus are hidden); ``left`` and ``right``
    are the players, each headed by ``heads[i]`` (its workload and, for a P2P workload, the map type)."""

    def __init__(self, workloads: tuple[str, str] = ("nvme-p2p-read-bar", "nvme-p2p-read-bar-host-bridge"),
                 path: str = "iova", *, strict: bool = True):
        paths = [p for p in explain.workload_paths(workloads[0]) if p in explain.workload_paths(workloads[1])]
        if path not in paths:
            raise ValueError(f"path {path!r} is not one both workloads {workloads} run with: {paths}")
        self.left = ScenarioPlayer(workloads[0], path, strict=strict, compact=True)
        self.right = ScenarioPlayer(workloads[1], path, strict=strict, compact=True)
        self.path = W.Dropdown(options=paths, value=path, description="path", style=_S)
        self.lazy = W.Checkbox(value=not strict, description="lazy (DMA-FQ)", style=_S, indent=False)
        self.left.peers, self.right.peers = [self.right], [self.left]
        self.left.refresh()   # one counter scale for the two
        self.heads = []
        for p, w in zip((self.left, self.right), workloads, strict=True):
            W.link((self.path, "value"), (p.path, "value"))
            W.link((self.lazy, "value"), (p.lazy, "value"))
            p.path.layout.display = "none"
            self.heads.append(W.HTML(_wrap(f"<b>{html.escape(w)}</b>" + _map_type_note(w))))
        cols = [W.VBox([h, p], layout=W.Layout(flex="1 1 400px", min_width="400px"))
                for h, p in zip(self.heads, (self.left, self.right), strict=True)]
        both = W.HBox(cols, layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__([W.HBox([self.path, self.lazy], layout=_row()), both])


def _map_type_note(workload: str) -> str:
    """A second line with the ``PCI_P2PDMA_MAP_...`` type of a P2P workload (else "no P2P memory"): both
    heads take two lines, so the two players' controls line up."""
    t = explain.p2p_map_type(workload)
    return f"<br><code>{t}</code>" if t else "<br>(no P2P memory)"


# --------------------------------------------------------------------------------------------
def compare_html(results: dict) -> str:
    """The :class:`PathComparison` text: counters and MODELLED ns per path, plus the runs' notes."""
    from iovalab.kernel.event_schema import COUNTER_KINDS
    paths = [p for p in explain.PATHS if p in results]
    rows = [[k] + [results[p]["counters"].as_dict()[k] for p in paths] for k in COUNTER_KINDS]
    rows.append(["modelled ns (not measured)"] + [f"{results[p]['modelled'].total:,.0f}" for p in paths])
    notes = []
    for p in paths:
        for n in results[p].get("notes", [])[:2]:
            notes.append(f"<li>{p}: {html.escape(n)}</li>")
    preset = results[paths[0]]["modelled"].preset if paths else ""
    return _wrap(_table(rows, ("counter", *paths))
                 + f"<p style='font-size:12px'>Modelled with cost preset <code>{html.escape(preset)}</code> from "
                   "data/cost-model.csv: sourced or assumed per-operation costs, not a measurement.</p>"
                 + (f"<ul style='font-size:12px'>{''.join(notes)}</ul>" if notes else ""))


@lru_cache(maxsize=64)
def _compare(workload: str, strict: bool) -> dict:
    return explain.compare_workload(workload, strict=strict)


@lru_cache(maxsize=16)
def _scaling(npages: tuple, contiguous: bool, strict: bool) -> dict:
    return explain.scaling(npages, contiguous=contiguous, strict=strict)


class PathComparison(_Batch, W.VBox):
    """The mapping paths on one workload: counters and MODELLED time as bars.

    Controls: ``workload``, ``cost_preset`` (Dropdowns), ``lazy`` (Checkbox). Output: ``text``,
    ``image``. Results are computed once per (workload, lazy) and kept.
    """

    def __init__(self, workload: str = "nvme-128k-scattered", *, strict: bool = True):
        from iovalab.lab.cost import load_cost_model

        names = explain.compare_workloads()
        self.workload = W.Dropdown(options=names, value=workload if workload in names else names[0],
                                   description="workload", style=_S)
        presets = load_cost_model().presets
        self.cost_preset = W.Dropdown(options=list(presets), value=presets[0], description="cost preset", style=_S)
        self.lazy = W.Checkbox(value=not strict, description="lazy (DMA-FQ)", style=_S, indent=False)
        self.text = W.HTML()
        self.image = _image()
        self.view = PathsView()
        self.results: dict | None = None
        for c in (self.workload, self.cost_preset, self.lazy):
            c.observe(self._changed, names="value")
        super().__init__([W.HBox([self.workload, self.cost_preset, self.lazy], layout=_row()), self.image, self.text,
                          _styles()])
        self.refresh()


    def refresh(self) -> None:
        base = _compare(self.workload.value, not self.lazy.value)
        cp = self.cost_preset.value
        res = {p: {**r, "modelled": r["modelled_all"][cp]} for p, r in base.items()}
        self.results = res
        self.text.value = compare_html(res)
        self.image.value = self.view.update(res).png()


def scaling_html(scale: dict, kind: str) -> str:
    """The :class:`ScalingExplorer` text: the plotted numbers as a table."""
    paths = list(scale["paths"])
    npages = list(enumerate(scale["npages"]))
    counts = [[n] + [scale["paths"][p][kind][i] for p in paths] for i, n in npages]
    ns = [[n] + [f"{scale['paths'][p]['modelled_ns'][i]:,.0f}" for p in paths] for i, n in npages]
    # two tables side by side that wrap one under the other in a narrow column (1024 px with the file
    # browser open): one wide table of seven columns needed a sideways scroll there
    return _wrap('<div style="display:flex;flex-wrap:wrap;column-gap:28px;align-items:flex-start">'
                 + _table(counts, ("pages", *[f"{p}: {kind}" for p in paths]), numbers=True)
                 + _table(ns, ("pages", *[f"{p}: modelled ns" for p in paths]), numbers=True) + "</div>")


class ScalingExplorer(_Batch, W.VBox):
    """How the counters and the MODELLED time of one request grow with its size, per path.

    Controls: ``kind`` (the counter), ``cost_preset`` (Dropdowns), ``contiguous``, ``lazy``
    (Checkboxes). Output: ``text`` (the numbers), ``image`` (log-log lines).
    """

    NPAGES = tuple(2 ** i for i in range(10))

    def __init__(self, kind: str = "iommu_map_calls", *, contiguous: bool = False, strict: bool = True):
        from iovalab.lab.cost import load_cost_model
        from iovalab.kernel.event_schema import COUNTER_KINDS

        self.kind = W.Dropdown(options=[k for k in COUNTER_KINDS if k != "swiotlb_bounces"], value=kind,
                               description="counter", style=_S)
        presets = load_cost_model().presets
        self.cost_preset = W.Dropdown(options=list(presets), value=presets[0], description="cost preset", style=_S)
        self.contiguous = W.Checkbox(value=contiguous, description="physically contiguous pages", style=_S,
                                     indent=False)
        self.lazy = W.Checkbox(value=not strict, description="lazy (DMA-FQ)", style=_S, indent=False)
        self.text = W.HTML()
        self.image = _image()
        self.view = ScalingView()
        self.scale: dict | None = None
        for c in (self.kind, self.cost_preset, self.contiguous, self.lazy):
            c.observe(self._changed, names="value")
        super().__init__([W.HBox([self.kind, self.cost_preset], layout=_row()),
                          W.HBox([self.contiguous, self.lazy], layout=_row()),
                          self.image, self.text, _styles()])
        self.refresh()


    def refresh(self) -> None:
        self.scale = explain.with_cost_preset(_scaling(self.NPAGES, self.contiguous.value, not self.lazy.value),
                                              self.cost_preset.value)
        self.text.value = scaling_html(self.scale, self.kind.value)
        self.image.value = self.view.update(self.scale, self.kind.value).png()


# ------------------------------------------------------------------------------------------------
def bench_cases():
    """``(name, make, change)`` per widget for ``python -m iovalab bench``: ``change(w, i)`` makes the
    i-th control change (always a new value, so the observer and the redraw run)."""

    def cycle(options):
        opts = [o[1] if isinstance(o, tuple) else o for o in options]
        return lambda ctl, i: setattr(ctl, "value", opts[(opts.index(ctl.value) + 1) % len(opts)])

    def granule(w, i):
        if i % 2:
            cycle(w.granule.options)(w.granule, i)
        else:
            w.phys.value = hx(0x1000 + 0x10 * (i + 1))

    def mask(w, i):
        cycle(w.mask_bits.options)(w.mask_bits, i)

    def player(w, i):
        w.step.value = (w.step.value + 1) % (w.step.max + 1)

    def compare(w, i):
        p = w.left if i % 2 else w.right
        p.step.value = (p.step.value + 1) % (p.step.max + 1)

    def paths(w, i):
        cycle(w.cost_preset.options)(w.cost_preset, i)

    def scaling(w, i):
        cycle(w.kind.options)(w.kind, i)

    return [("GranuleExplorer", GranuleExplorer, granule), ("MaskExplorer", MaskExplorer, mask),
            ("ScenarioPlayer", ScenarioPlayer, player), ("ComparePlayers", ComparePlayers, compare),
            ("PathComparison", PathComparison, paths), ("ScalingExplorer", ScalingExplorer, scaling)]
