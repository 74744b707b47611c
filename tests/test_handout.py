"""Delivery without JupyterLab: the static handout (``python -m iovalab handout``) and ``make workshop``.

- ``test_handout_exports_static_pages``: a small notebook with a figure, a widget and a failing sibling,
  built through ``build_handout``: one HTML per notebook that ran, figures as ``data:image/png``, widget views
  replaced by a note, no remote ``<script>``, an index that lists the chapters and says widgets do not render.
- ``test_handout_cli_on_the_book``: ``python -m iovalab handout --out TMP --only A,B`` on two real notebooks
  (the full book is already executed once by test_notebooks.py; building all of it again here would double
  that cost).
- ``test_make_workshop_serves_the_book``: ``make workshop`` serves ``notebooks/`` with Voila on 127.0.0.1:
  the tree lists every notebook, and a chapter renders as an app: widgets, no code.
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import jupyter_env, stop_process_group

from iovalab.cli.handout import WIDGET_MIME, build_handout, select_notebooks

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=[\"']?(?:https?:)?//", re.I)


def _write_nb(path: Path, cells) -> None:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_select_notebooks(tmp_path):
    for name in ["00-start-here", "01-iova-granule-and-offset", "02-the-iova-allocator"]:
        _write_nb(tmp_path / f"{name}.ipynb", [])
    names = lambda only: [p.stem for p in select_notebooks(tmp_path, only)]  # noqa: E731
    assert names(None) == ["00-start-here", "01-iova-granule-and-offset", "02-the-iova-allocator"]
    assert names(["02-the-iova-allocator", "00-start-here.ipynb"]) == ["00-start-here", "02-the-iova-allocator"]
    assert names(["0[12]-*"]) == ["01-iova-granule-and-offset", "02-the-iova-allocator"]
    with pytest.raises(ValueError, match="03-map"):
        select_notebooks(tmp_path, ["03-map"])
    with pytest.raises(ValueError, match="does not exist"):
        select_notebooks(tmp_path / "nope")


def test_handout_exports_static_pages(tmp_path, isolated_jupyter):
    src = tmp_path / "nbs"
    src.mkdir()
    _write_nb(src / "01-demo.ipynb", [
        nbformat.v4.new_markdown_cell("# 01 Demo chapter\n\nText with `code`."),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                                  "ax.plot([0, 1], [1, 0])\nplt.show()"),
        nbformat.v4.new_code_cell("import ipywidgets as W\nW.Dropdown(options=['4K', '64K'])"),
        nbformat.v4.new_code_cell("print('granule', 0x1000)"),
    ])
    _write_nb(src / "02-broken.ipynb", [nbformat.v4.new_code_cell("raise ValueError('granule 0x3000')")])
    lines: list[str] = []
    written, failed = build_handout(tmp_path / "out", notebooks_dir=src, progress=lines.append)

    assert failed == ["02-broken.ipynb"]
    assert [p.name for p in written] == ["index.html", "01-demo.html"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["01-demo.html", "index.html"]
    assert any("[1/2] 01-demo.ipynb: executed in" in m for m in lines), lines
    assert any("[2/2] 02-broken.ipynb: FAILED" in m and "granule 0x3000" in m for m in lines), lines

    page = (tmp_path / "out" / "01-demo.html").read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/]{100}', page)
    assert "granule 4096" in page                          # executed: the stream output is there
    assert WIDGET_MIME not in page and "not shown in this static" in page
    assert not REMOTE_SCRIPT.search(page), REMOTE_SCRIPT.search(page).group(0)
    assert "<title>01 Demo chapter</title>" in page and 'href="index.html"' in page

    index = (tmp_path / "out" / "index.html").read_text()
    assert 'href="01-demo.html"' in index and "01 Demo chapter" in index
    assert "Widgets are not interactive here" in index
    assert "02-broken.ipynb" in index and "02-broken.html" not in index
    assert not REMOTE_SCRIPT.search(index)


def _book_pair() -> list[str]:
    """Two real notebooks for the CLI test: the granule chapter and the first other one that draws."""
    names = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    first = [n for n in names if n.startswith("01-")] or names[:1]
    drawing = [n for n in names if n not in first
               and re.search(r"\bviz\.|plt\.|\.plot\(|draw_|figure", (NB_DIR / n).read_text())]
    return first + (drawing or [n for n in names if n not in first])[:1]


@pytest.mark.slow
@pytest.mark.xdist_group("handout")
def test_handout_cli_on_the_book(tmp_path):
    pair = _book_pair()
    if len(pair) < 2:
        pytest.fail(f"need two notebooks in {NB_DIR}, found {pair}")
    env = dict(os.environ, **jupyter_env(tmp_path / "home"))
    out = tmp_path / "handout"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "iovalab", "handout", "--out", str(out),
                        "--only", ",".join(Path(n).stem for n in pair)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout, f"handout of {pair}: {time.perf_counter() - t0:.1f} s", sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html", *(Path(n).stem + ".html" for n in pair)])
    assert re.search(r"\[2/2\] \S+: executed in [\d.]+ s", r.stdout), r.stdout
    pages = {n: (out / (Path(n).stem + ".html")).read_text() for n in pair}
    for n, page in pages.items():
        assert not REMOTE_SCRIPT.search(page), n
        assert WIDGET_MIME not in page, n
    with_png = [n for n, page in pages.items() if "data:image/png;base64," in page]
    assert with_png, f"no embedded figure in {pair}"
    index = (out / "index.html").read_text()
    assert all(f'href="{Path(n).stem}.html"' in index for n in pair)


# --- make workshop -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_address() -> str | None:
    """This machine's outbound IPv4 address, if it has one (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_make_workshop_command_is_local_voila_over_notebooks():
    r = subprocess.run(["make", "-n", "workshop", "WORKSHOP_PORT=9999"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    cmd = [line for line in r.stdout.splitlines() if "voila" in line]
    assert cmd, r.stdout + r.stderr
    assert "-m voila notebooks " in cmd[-1] + " "
    assert "--Voila.ip=127.0.0.1" in cmd[-1] and "--port=9999" in cmd[-1]
    assert "0.0.0.0" not in r.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("workshop")
def test_make_workshop_serves_the_book(tmp_path):
    names = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    if not names:
        pytest.fail(f"no notebooks in {NB_DIR}")
    port = _free_port()
    env = dict(os.environ, **jupyter_env(tmp_path / "home"), BROWSER="true")
    log = tmp_path / "workshop.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-s", "workshop", f"WORKSHOP_PORT={port}", f"PYTHON={sys.executable}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(base + "/voila/api/contents", timeout=5) as resp:
                    contents = json.load(resp)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        listed = sorted(c["name"] for c in contents["content"] if c["type"] == "notebook")
        assert listed == names
        with urllib.request.urlopen(base + "/", timeout=30) as resp:
            assert resp.status == 200 and "voila" in resp.read().decode().lower()
        chapter = next((n for n in names if n.startswith("01-")), names[0])
        with urllib.request.urlopen(f"{base}/voila/render/{chapter}", timeout=300) as resp:
            page = resp.read().decode()
        nb = nbformat.read(NB_DIR / chapter, as_version=4)
        code = [c.source.strip() for c in nb.cells if c.cell_type == "code" and len(c.source.strip()) > 30]
        assert WIDGET_MIME in page, "the chapter's widgets are not in the Voila page"
        assert not re.search(r'class="[^"]*\bjp-InputArea-editor\b', page), "Voila showed a code editor"
        assert not any(src[:30] in page or html.escape(src[:30]) in page for src in code), "Voila showed code"
        assert f"http://127.0.0.1:{port}/" in log.read_text()
        other = _non_loopback_address()
        if other:   # bound to loopback only: this machine's other address does not answer
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=3).close()
    finally:
        stop_process_group(proc)
