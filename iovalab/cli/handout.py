"""``python -m iovalab handout``: the executed book as static HTML, readable without a kernel or a network.

No kernel analogue: this is the book's delivery tool. Every notebook in ``notebooks/`` is executed top to
bottom in a fresh ``python3`` kernel (nbclient, working directory ``notebooks/``) and exported with
nbconvert's ``HTMLExporter`` (lab template) into one self-contained HTML file per notebook, plus an
``index.html``:

- figures are embedded as ``data:image/png`` (outputs already are; ``embed_images`` also inlines images
  that markdown cells link to);
- no script is loaded from a CDN: the template's require.js, MathJax, Mermaid and widget-manager
  ``<script>`` tags are left out, so the pages read the same offline (TeX stays as written);
- widget views cannot render statically (their state lives in a running kernel): each one is replaced by
  a visible note saying so, and the index page says it too.

A notebook whose cell raises (unless tagged ``raises-exception``) is reported and left out; the command
then exits with status 1 after building the rest.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import html
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["NOTEBOOKS_DIR", "WIDGET_NOTE", "select_notebooks", "execute_notebook", "export_html",
           "build_handout", "cli"]

#: the book in a checkout (``<top>/notebooks``); an installed wheel has no book: pass ``--notebooks DIR``
NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT = 600
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("Interactive widget: it needs a running kernel, so it is not shown in this static "
               "handout. Run the notebook in JupyterLab (<code>make lab</code>) or as an app "
               "(<code>make workshop</code>) to use it.")

# lab template minus every remote <script>: require.js, widget manager, MathJax, Mermaid
_TEMPLATE_NAME = "iovalab_handout.html.j2"
_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
.iovalab-handout-bar { font: 14px/1.4 system-ui, sans-serif; padding: 6px 12px; margin: 0 0 8px 0;
  background: #f3f6fa; border-bottom: 1px solid #d0d7de; }
.iovalab-widget-note { font: 13px/1.4 system-ui, sans-serif; padding: 6px 10px; border: 1px dashed #9aa4ae;
  background: #fafbfc; color: #3b4450; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
<div class="iovalab-handout-bar"><a href="index.html">&larr; iovalab handout index</a>
&middot; static copy: widgets are not interactive here</div>
{%- endblock body_header -%}
"""


def select_notebooks(notebooks_dir: Path, only: Iterable[str] | None = None) -> list[Path]:
    """The notebooks to build, sorted by name.

    only: names or shell patterns (``01-*``, ``03-map-page-path``, ``02-the-iova-allocator.ipynb``);
    each must match at least one notebook, else ``ValueError`` naming it.
    """
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise ValueError(f"notebooks directory {notebooks_dir} does not exist")
    paths = sorted(notebooks_dir.glob("*.ipynb"))
    if not only:
        return paths
    chosen: set[Path] = set()
    for pattern in only:
        pats = [pattern] if pattern.endswith(".ipynb") else [pattern, pattern + ".ipynb"]
        hits = [p for p in paths if any(fnmatch.fnmatchcase(p.name, q) for q in pats)]
        if not hits:
            raise ValueError(f"--only {pattern!r} matches no notebook in {notebooks_dir} "
                             f"(have: {', '.join(p.stem for p in paths) or 'none'})")
        chosen.update(hits)
    return sorted(chosen)


def execute_notebook(path: Path, timeout: int = CELL_TIMEOUT):
    """Execute ``path`` top to bottom in a fresh ``python3`` kernel whose cwd is the notebook's folder.

    Returns the executed ``NotebookNode``; raises nbclient's ``CellExecutionError`` when a cell raises
    (cells tagged ``raises-exception`` may raise, ``skip-execution`` cells are skipped).
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=timeout, startup_timeout=120,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    return nb


def _replace_widget_views(nb) -> int:
    """Swap every widget view output for a visible note; drop the saved widget state. Returns the count."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_MIME in data:
                data.clear()
                data["text/html"] = f'<div class="iovalab-widget-note">{WIDGET_NOTE}</div>'
                data["text/plain"] = "[interactive widget: not shown in the static handout]"
                n += 1
    nb.metadata.pop("widgets", None)
    return n


def export_html(nb, title: str | None = None) -> str:
    """Static HTML of an executed notebook: lab look, images embedded, no remote scripts."""
    import jinja2
    from nbconvert import HTMLExporter

    _replace_widget_views(nb)
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _TEMPLATE})])
    exporter.template_file = _TEMPLATE_NAME
    resources = {"metadata": {"name": title}} if title else None
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body


def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", cell.source, re.M)
            if m:
                title = re.sub(r"(\*\*|__|\*)(\S.*?)\1", r"\2", m.group(1))   # **bold**, *em*
                return title.replace("`", "").strip()
    return fallback


def _index_html(entries: list[tuple[str, str, str]], failed: list[str]) -> str:
    rows = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(stem)}</a> &mdash; {html.escape(title)}</li>'
                     for stem, href, title in entries)
    fail = ""
    if failed:
        fail = ("<p><strong>Not included</strong> (a cell raised while building): "
                + ", ".join(html.escape(f) for f in failed) + "</p>")
    from importlib.metadata import version

    __version__ = version("iovalab")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>iovalab handout</title>
<style>body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }}
.note {{ background: #f3f6fa; border: 1px solid #d0d7de; padding: .6rem 1rem; }}</style></head>
<body>
<h1>iovalab &mdash; Linux's IOVA-based DMA mapping, as a lab book</h1>
<p>The static handout: every notebook executed top to bottom, with its outputs and figures
embedded in the page. It reads offline, with no kernel and no network.</p>
<div class="note"><p><strong>Widgets are not interactive here.</strong> Widget views (the explorers,
sliders and step-through players) need a running Python kernel, so a static page cannot render them;
each one is replaced by a note. Formulas appear as TeX source (no MathJax is loaded). To use the
widgets, run the book: <code>make lab</code> (JupyterLab) or <code>make workshop</code> (the
notebooks as apps, code hidden).</p></div>
<h2>Chapters</h2>
<ol>
{rows}
</ol>
{fail}
<p><small>Built by <code>python -m iovalab handout</code>, iovalab {html.escape(__version__)},
{stamp}.</small></p>
</body></html>
"""


def build_handout(out: Path, notebooks_dir: Path = NOTEBOOKS_DIR, only: Iterable[str] | None = None,
                  timeout: int = CELL_TIMEOUT, progress: Callable[[str], None] = print) -> tuple[list[Path], list[str]]:
    """Execute and export the selected notebooks into ``out``; write ``out/index.html``.

    Returns (the HTML files written, index first; the names of notebooks that failed).
    """
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    out = Path(out)
    paths = select_notebooks(notebooks_dir, only)
    if not paths:
        raise ValueError(f"no notebooks in {notebooks_dir}")
    out.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, str, str]] = []
    written: list[Path] = []
    failed: list[str] = []
    t_all = time.perf_counter()
    for i, path in enumerate(paths, 1):
        t0 = time.perf_counter()
        progress(f"[{i}/{len(paths)}] {path.name}: executing")
        try:
            nb = execute_notebook(path, timeout=timeout)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            failed.append(path.name)
            first = str(err).strip().splitlines()
            progress(f"[{i}/{len(paths)}] {path.name}: FAILED after {time.perf_counter() - t0:.1f} s: "
                     + (first[-1] if first else type(err).__name__))
            continue
        t1 = time.perf_counter()
        title = _title(nb, path.stem)
        target = out / f"{path.stem}.html"
        target.write_text(export_html(nb, title=title), encoding="utf-8")
        written.append(target)
        entries.append((path.stem, target.name, title))
        progress(f"[{i}/{len(paths)}] {path.name}: executed in {t1 - t0:.1f} s, exported in "
                 f"{time.perf_counter() - t1:.1f} s -> {target} ({target.stat().st_size // 1024} KiB)")
    index = out / "index.html"
    index.write_text(_index_html(entries, failed), encoding="utf-8")
    progress(f"handout: {len(written)} notebook(s) + {index} in {time.perf_counter() - t_all:.1f} s"
             + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return [index, *written], failed


def cli(args: argparse.Namespace) -> int:
    """``python -m iovalab handout --out DIR [--only NAME[,NAME...]]``: 0 if every notebook built."""
    groups = getattr(args, "only", None) or []
    only = [p.strip() for group in groups for p in group.split(",") if p.strip()]
    if groups and not only:
        print(f"error: --only {','.join(groups)!r} names no notebook (give names or patterns, comma-separated)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out}: exists and is not a directory (the handout is a folder of HTML pages)",
              file=sys.stderr)
        return 2
    src = Path(getattr(args, "notebooks", None) or NOTEBOOKS_DIR)
    if not src.is_dir() or not any(src.glob("*.ipynb")):
        print(f"error: --notebooks {src}: no notebooks there (the book ships in a checkout's notebooks/, "
              "not in the installed package)", file=sys.stderr)
        return 2
    try:
        _, failed = build_handout(out, notebooks_dir=src, only=only or None,
                                  progress=lambda m: print(m, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0
