"""The book in a real browser: JupyterLab and Voila driven by Playwright in Debian's Chromium.

- ``test_jupyterlab_granule_explorer``: JupyterLab on a free 127.0.0.1 port with a token opens
  ``01-iova-granule-and-offset.ipynb``, runs all cells, switches the granule explorer's Dropdown from 4K to
  64K and sees the IOVA length it shows change (0x4000 -> 0x10000 for phys 0x1234, size 0x3000).
- ``test_voila_granule_explorer``: the same notebook as a Voila app (code hidden), same interaction.

Screenshots go to ``tests/artifacts/`` (git-ignored). Without a Chromium these tests skip, saying why;
with ``CI=true`` they fail instead. Each test runs its own server with its own port, token, Jupyter
directories and Chromium profile, in its own xdist group, and always stops the server (SIGTERM to its
process group, wait, SIGKILL if it lingers).

JupyterLab serves a *copy* of ``notebooks/`` (``data/`` linked next to it) with autosave off, so running
the book in the browser can never write outputs into the committed notebooks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import jupyter_env, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "01-iova-granule-and-offset.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# the 4K -> 64K footprint of phys 0x1234, size 0x3000: iova_align(granule, iova_offset + size)
EXPECTED = {"4K": "0x4000", "64K": "0x10000"}

pytestmark = pytest.mark.browser


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _chromium() -> str | None:
    """$IOVALAB_CHROMIUM when set (only it), else Debian's /usr/bin/chromium or one on PATH."""
    if "IOVALAB_CHROMIUM" in os.environ:
        cands = [os.environ["IOVALAB_CHROMIUM"]]
    else:
        cands = ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _skip_or_fail(msg: str) -> None:
    if _ci():
        pytest.fail(msg + " -- CI=true, so this is a failure, not a skip")
    pytest.skip(msg)


@pytest.fixture
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        _skip_or_fail(f"Playwright is not importable ({e}); pip install -e '.[dev]'")
    exe = _chromium()
    if exe is None:
        _skip_or_fail("no Chromium found (looked for $IOVALAB_CHROMIUM, else /usr/bin/chromium, chromium, "
                      "chromium-browser on PATH); install Debian's: apt-get install -y chromium")
    return exe


@pytest.fixture
def notebook_path() -> Path:
    path = ROOT / "notebooks" / NOTEBOOK
    if not path.exists():
        pytest.fail(f"{path} does not exist")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _http_status(url: str) -> int | None:
    """Status of a GET without following redirects (a redirect to "/" would start a Voila kernel)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@contextmanager
def _server(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, ready_url: str,
            ready_status: tuple[int, ...] = (200,), timeout: float = 90):
    """Start a server in its own process group; yield once ``ready_url`` answers; always stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if _http_status(ready_url) in ready_status:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        stop_process_group(proc)


try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:   # conftest skips collecting this module then, unless CI=true
    PlaywrightTimeout = TimeoutError


@contextmanager
def _browser(exe: str, profile: Path, width: int = 1280, height: int = 1400):
    """A Chromium page; ``page.iovalab_requests`` lists every URL the page asked for (any frame)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        requests: list[str] = []
        ctx.on("request", lambda r: requests.append(r.url))
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.iovalab_requests = requests
            yield page
        finally:
            ctx.close()


def _external(urls: list[str]) -> list[str]:
    """The requests that left 127.0.0.1 (data:, blob: and about: never leave the page)."""
    out = []
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        if parts.scheme in ("data", "blob", "about", "chrome-extension"):
            continue
        if parts.hostname not in ("127.0.0.1", "localhost"):
            out.append(u)
    return sorted(set(out))


def _root_args() -> list[str]:
    return ["--allow-root"] if os.geteuid() == 0 else []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- interacting with the granule explorer (same DOM in JupyterLab and Voila) --------------------

def _explorer(page, timeout_ms: int):
    """The granule Dropdown's <select> and the output area that holds it (its HTML/Label text)."""
    select = page.locator(".widget-dropdown select").filter(
        has=page.locator("option", has_text=re.compile(r"^\s*64\s*K", re.I))).first
    select.wait_for(state="attached", timeout=timeout_ms)
    # JupyterLab 4 skips rendering cells out of view (content-visibility), and innerText reads rendering
    select.scroll_into_view_if_needed()
    select.wait_for(state="visible", timeout=timeout_ms)
    box = select.locator("xpath=ancestor::*[contains(concat(' ', @class, ' '), ' jp-OutputArea-output ')][1]")
    if not box.count() or not _iova_length(box.inner_text()):
        box = page.locator("body")   # controls and readout in different outputs: watch the whole page
    return box, select


def _option_label(select, rx: str) -> str:
    """The label of the first option that starts with ``rx`` (r"4\\s*K" finds "4 KiB (0x1000)")."""
    labels = [o.inner_text().strip() for o in select.locator("option").all()]
    for label in labels:
        if re.match(rx, label, re.I):
            return label
    pytest.fail(f"no option matching {rx!r} in the granule Dropdown: {labels}")


def _iova_length(text: str) -> str | None:
    """The last hex number on the line that names the IOVA length ("IOVA length = ...\t0x4000")."""
    for line in text.splitlines():
        if re.search(r"\bIOVA[\s_]+len(gth)?\b", line, re.I):
            hexes = re.findall(r"0x[0-9a-f]+", line, re.I)
            if hexes:
                return hexes[-1].lower()
    return None


def _wait_for_length(page, box, expected: str, timeout_ms: int) -> str:
    """Poll the explorer's text until the IOVA length it shows is ``expected``; return that text."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        text = box.inner_text()
        if _iova_length(text) == expected:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"the explorer never showed IOVA length {expected}; it shows:\n{text}")
        page.wait_for_timeout(100)


def _settle(page, box, quiet_ms: int = 600, timeout_ms: int = 15_000) -> None:
    """Wait until the explorer's images stop changing (the figure arrives after the table), so the
    screenshot shows one consistent state."""
    srcs = "el => Array.from(el.querySelectorAll('img')).map(i => i.src).join(' ')"
    last, stable_since, deadline = None, time.monotonic(), time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        now = box.evaluate(srcs)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_ms / 1000:
            return
        page.wait_for_timeout(100)


def _change_granule_and_check(page, shot: Path, timeout_ms: int = 60_000) -> tuple[str, str]:
    box, select = _explorer(page, timeout_ms)
    small, big = _option_label(select, r"4\s*K"), _option_label(select, r"64\s*K")
    # the explorer's phys/size boxes (if it has them): the buffer of the expected numbers
    for label, value in (("phys", "0x1234"), ("size", "0x3000")):
        entry = box.locator(".widget-text").filter(
            has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{label}\s*$", re.I))).locator("input")
        if entry.count():
            entry.first.fill(value)
            entry.first.press("Enter")
    if select.evaluate("s => s.options[s.selectedIndex].text").strip() != small:
        select.select_option(label=small)
    before = _wait_for_length(page, box, EXPECTED["4K"], timeout_ms)
    _settle(page, box)
    select.scroll_into_view_if_needed()
    page.screenshot(path=str(shot.with_name(shot.name.replace("64K", "4K"))), full_page=True)
    select.select_option(label=big)
    try:
        after = _wait_for_length(page, box, EXPECTED["64K"], timeout_ms)
        _settle(page, box)
    finally:   # JupyterLab scrolls inside the notebook panel: bring the explorer into the picture
        select.scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=True)
    assert after != before
    return before, after


# --- JupyterLab --------------------------------------------------------------------------------------

LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
}


def _lab_wait_idle(page, timeout_ms: int) -> None:
    """Wait until the kernel is idle in both the toolbar indicator and the status bar. A notebook
    without kernelspec metadata first asks which kernel to start: take the default (the venv's python3)."""
    idle = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']")
    status_idle = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle"))
    select_kernel = page.locator(".jp-Dialog", has_text="Select Kernel").locator(
        "button", has_text=re.compile(r"^\s*Select\s*$"))
    deadline = time.monotonic() + timeout_ms / 1000
    while not (idle.count() and status_idle.count() and status_idle.first.is_visible()):
        if time.monotonic() > deadline:
            pytest.fail("the notebook's kernel never became idle; status bar: "
                        + page.locator(".jp-StatusBar-Left").inner_text())
        if select_kernel.count():
            select_kernel.first.click()
        page.wait_for_timeout(200)


def _lab_run_all(page, timeout_ms: int = 180_000) -> None:
    """Run All Cells the way that proved reliable here: wait for the toolbar's idle indicator and the
    status bar's "Idle", then Run All; if the first code cell's prompt has not left "[ ]" a few seconds
    later (the run was silently dropped), do it again. Then wait for the prompt's number. The prompt is
    read with textContent: once scrolled out of view, a cell is not rendered and its innerText is empty."""
    prompt = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").first
    for _attempt in range(5):
        _lab_wait_idle(page, timeout_ms)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:   # started: "[*]" or already "[1]"
            page.wait_for_function("el => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                   arg=prompt.element_handle(), timeout=8_000)
        except PlaywrightTimeout:
            continue
        page.wait_for_function("el => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(),
                               timeout=timeout_ms)
        return
    pytest.fail("Run All Cells never started the first code cell (5 attempts)")


@pytest.mark.xdist_group("browser-jupyterlab")
def test_jupyterlab_granule_explorer(tmp_path, chromium, notebook_path, record_property):
    t0 = time.perf_counter()
    ARTIFACTS.mkdir(exist_ok=True)
    before_sha = _sha(notebook_path)
    argv, env, book, base, token = _lab(tmp_path)
    with _server(argv, env=env, cwd=book, log=tmp_path / "jupyterlab.log",
                 ready_url=f"{base}/api/status?token={token}"):
        # the token is required: without it the API answers 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/status", timeout=5)
        assert e.value.code == 403
        with _browser(chromium, tmp_path / "chromium-profile") as page:
            try:
                page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}", timeout=60_000)
                page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
                _lab_run_all(page)
                before, after = _change_granule_and_check(page, ARTIFACTS / "jupyterlab-01-granule-64K.png")
            except BaseException:   # keep what a failure looked like, for CI's artifacts
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"))
                shutil.copy(tmp_path / "jupyterlab.log", ARTIFACTS / "jupyterlab-failure.log")
                raise
            assert not _external(page.iovalab_requests), (
                f"JupyterLab fetched from outside 127.0.0.1: {_external(page.iovalab_requests)}")
            print("JupyterLab explorer, 4K:", before.replace("\n", " | "))
            print("JupyterLab explorer, 64K:", after.replace("\n", " | "))
    assert _sha(notebook_path) == before_sha, "the committed notebook was modified by the browser run"
    seconds = time.perf_counter() - t0
    record_property("iovalab_timing", ("browser JupyterLab", seconds))
    print(f"JupyterLab browser test: {seconds:.1f} s")


# --- Voila ---------------------------------------------------------------------------------------------

@pytest.mark.xdist_group("browser-voila")
def test_voila_granule_explorer(tmp_path, chromium, notebook_path, record_property):
    t0 = time.perf_counter()
    ARTIFACTS.mkdir(exist_ok=True)
    env = dict(os.environ, **jupyter_env(tmp_path / "home"))
    port = _free_port()
    env.update(_workshop_env())
    argv = [sys.executable, "-m", "voila", str(notebook_path), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", *WORKSHOP_ARGS]
    base = f"http://127.0.0.1:{port}"
    with _server(argv, env=env, cwd=ROOT, log=tmp_path / "voila.log", ready_url=f"{base}/api/status",
                 ready_status=(200, 302, 403)):
        with _browser(chromium, tmp_path / "chromium-profile") as page:
            page.goto(base + "/", timeout=120_000)
            before, after = _change_granule_and_check(page, ARTIFACTS / "voila-01-granule-64K.png",
                                                      timeout_ms=120_000)
            # Voila hides code: no code cell input is on the page
            assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor").count() == 0
            assert not _external(page.iovalab_requests), (
                f"Voila fetched from outside 127.0.0.1: {_external(page.iovalab_requests)}")
            print("Voila explorer, 4K:", before.replace("\n", " | "))
            print("Voila explorer, 64K:", after.replace("\n", " | "))
    seconds = time.perf_counter() - t0
    record_property("iovalab_timing", ("browser Voila", seconds))
    print(f"Voila browser test: {seconds:.1f} s")


# --- the workshop page is offline (issue 14, point 10) ------------------------------------------------

#: what ``make workshop`` adds to Voila: the iovalab template (Voila's lab template minus its CDN links)
WORKSHOP_ARGS = ["--template=iovalab"]


def _workshop_env() -> dict[str, str]:
    return {"JUPYTER_PATH": str(ROOT / "iovalab" / "data")}


def test_make_workshop_uses_the_offline_template():
    make = (ROOT / "Makefile").read_text()
    line = next(x for x in make.splitlines() if "-m voila" in x)
    assert all(a in line for a in WORKSHOP_ARGS) and "iovalab/data" in line, line
    assert (ROOT / "iovalab" / "data" / "voila" / "templates" / "iovalab" / "conf.json").is_file()


@pytest.mark.xdist_group("browser-voila")
def test_voila_workshop_is_offline(tmp_path, chromium):
    """``make workshop``'s Voila: the tree page and a chapter with widgets load nothing from outside
    127.0.0.1 (Voila's stock templates link font-awesome from cdn.jsdelivr.net)."""
    ARTIFACTS.mkdir(exist_ok=True)
    env = dict(os.environ, **jupyter_env(tmp_path / "home"))
    env.update(_workshop_env())
    port = _free_port()
    argv = [sys.executable, "-m", "voila", str(ROOT / "notebooks"), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", *WORKSHOP_ARGS]
    base = f"http://127.0.0.1:{port}"
    with _server(argv, env=env, cwd=ROOT, log=tmp_path / "voila.log", ready_url=f"{base}/voila/static/voila.js",
                 ready_status=(200, 304)):
        with _browser(chromium, tmp_path / "chromium-profile") as page:
            page.goto(base + "/", timeout=120_000)
            page.get_by_text("00-start-here.ipynb").first.wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(ARTIFACTS / "voila-tree.png"))
            page.goto(f"{base}/voila/render/00-start-here.ipynb", timeout=120_000)
            page.locator(".widget-dropdown select").first.wait_for(timeout=120_000)
            page.locator(".jupyter-widgets img, .widget-image").first.wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(ARTIFACTS / "voila-00.png"), full_page=True)
            ext = _external(page.iovalab_requests)
            assert page.iovalab_requests, "no request recorded: the check would be vacuous"
    assert not ext, f"the workshop pages fetched from outside 127.0.0.1: {ext}"


# --- laptop width: the side-by-side players keep their controls (issue 14, point 5) ----------------

def _lab(tmp_path):
    book = tmp_path / "book"
    shutil.copytree(ROOT / "notebooks", book / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    (book / "data").symlink_to(ROOT / "data", target_is_directory=True)
    settings = tmp_path / "app-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))
    env = dict(os.environ, **jupyter_env(tmp_path / "home"))
    port, token = _free_port(), secrets.token_hex(16)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={book}",
            f"--LabServerApp.app_settings_dir={settings}", "--ServerApp.port_retries=0", *_root_args()]
    base = f"http://127.0.0.1:{port}"
    return argv, env, book, base, token


@contextmanager
def _lab_chapter(tmp_path, chromium, nb: str, *, width: int, height: int):
    """JupyterLab serving a copy of the book, and Chromium at ``width`` x ``height`` with chapter ``nb``
    open (file browser showing) and all its cells run; yields the page (a screenshot if that fails)."""
    ARTIFACTS.mkdir(exist_ok=True)
    argv, env, book, base, token = _lab(tmp_path)
    with _server(argv, env=env, cwd=book, log=tmp_path / "jupyterlab.log",
                 ready_url=f"{base}/api/status?token={token}"):
        with _browser(chromium, tmp_path / "chromium-profile", width=width, height=height) as page:
            try:
                _open_and_run(page, base, nb, token)
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / f"jupyterlab-{nb.split('-')[0]}-{width}-open-failure.png"))
                raise
            yield page


def _open_and_run(page, base: str, nb: str, token: str) -> None:
    """Open chapter ``nb`` in JupyterLab with the file browser showing, as a learner has it, and run
    all its cells."""
    page.goto(f"{base}/lab/tree/notebooks/{nb}?token={token}", timeout=60_000)
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    _open_sidebar(page)
    _lab_run_all(page)


def _open_sidebar(page) -> None:
    """Make sure the left sidebar (the file browser) is open, as a learner has it."""
    if not page.locator(".jp-FileBrowser:visible").count():
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab").first.click()
    page.locator(".jp-FileBrowser").first.wait_for(state="visible", timeout=30_000)


@pytest.mark.xdist_group("browser-jupyterlab")
@pytest.mark.parametrize("width", [1024, 1400])
def test_side_by_side_players_keep_their_controls(tmp_path, chromium, width):
    """07's side-by-side players in JupyterLab with the file browser open: every stepping button is
    wholly visible and at least 36 px wide, the step slider at least 200 px, at 1024 and 1400 px."""
    nb = "07-vfio.ipynb"
    with _lab_chapter(tmp_path, chromium, nb, width=width, height=900) as page:
        try:
            first = page.locator("button[title='first step']")
            first.nth(1).wait_for(timeout=60_000)
            first.nth(0).scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-07-players-{width}.png"))
            boxes = page.evaluate("""() => Array.from(document.querySelectorAll(
                    "button[title='first step']")).slice(0, 2).map(b => {
                const player = b.closest('.widget-vbox');
                const row = b.parentElement;
                const col = player.parentElement.getBoundingClientRect();
                const r = el => { const x = el.getBoundingClientRect(); return [x.left, x.right, x.width]; };
                const btns = Array.from(row.querySelectorAll(':scope > button')).map(r);
                const slider = row.querySelector('.widget-slider, .widget-hslider');
                return {col: [col.left, col.right], btns, slider: slider ? r(slider) : null};
            })""")
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-players-{width}-failure.png"))
            raise
    assert len(boxes) == 2, boxes
    for b in boxes:
        lo, hi = b["col"]
        assert b["btns"], b
        for left, right, w in b["btns"]:
            assert w >= 36 and left >= lo - 1 and right <= hi + 1, f"a button is squeezed or cut off: {b}"
        assert b["slider"] and b["slider"][2] >= 200, f"the step slider collapsed: {b}"


# --- 09's tables in JupyterLab at 1400 px with the file browser open (issue 14, point 3) -----------

@pytest.mark.xdist_group("browser-jupyterlab")
def test_reviewer_lab_tables_readable(tmp_path, chromium):
    """Every word of every table cell of 09 is laid out on one line (no "sour/ce"), and every link
    shows its whole URL."""
    nb = "09-reviewer-lab.ipynb"
    with _lab_chapter(tmp_path, chromium, nb, width=1400, height=1000) as page:
        try:
            _lab_wait_idle(page, 180_000)
            tables = page.locator(".iovalab-table")
            tables.nth(6).wait_for(state="attached", timeout=120_000)
            report = []
            for i in range(tables.count()):
                t = tables.nth(i)
                t.scroll_into_view_if_needed()
                page.wait_for_timeout(150)
                if i in (1, 4):
                    page.screenshot(path=str(ARTIFACTS / f"jupyterlab-09-table{i}-1400.png"))
                report += t.evaluate("""el => {
                    const bad = [];
                    for (const td of el.querySelectorAll('td, th')) {
                        const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
                        let n;
                        while ((n = walker.nextNode())) {
                            const re = /\\S+/g; let m;
                            while ((m = re.exec(n.data))) {
                                const r = document.createRange();
                                r.setStart(n, m.index); r.setEnd(n, m.index + m[0].length);
                                const tops = new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top)));
                                if (tops.size > 1) bad.push('broken word: ' + m[0]);
                            }
                        }
                        for (const a of td.querySelectorAll('a'))
                            if (a.textContent !== a.getAttribute('href')) bad.push('cut URL: ' + a.textContent);
                    }
                    return bad;
                }""")
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-09-failure.png"))
            raise
    assert not report, report


# --- chapter 05's P2P players (issue 12): what the learner should see, at laptop and desktop width ---------

@pytest.mark.xdist_group("browser-jupyterlab")
@pytest.mark.parametrize("width", [1024, 1400])
def test_nvme_p2p_players(tmp_path, chromium, width):
    """05's P2P section in JupyterLab with the file browser open: the two players' stepping buttons are
    wholly visible; one click on '>' shows blk_dma_map_bus on the left (bus address), and two on the
    right show an iommu_map_nosync with IOMMU_MMIO; the table under them fits the column. Screenshots:
    jupyterlab-05-p2p-WIDTH*.png."""
    nb = "05-nvme.ipynb"
    with _lab_chapter(tmp_path, chromium, nb, width=width, height=1000) as page:
        try:
            _lab_wait_idle(page, 180_000)
            head = page.locator(".jp-OutputArea-output", has_text="PCI_P2PDMA_MAP_THRU_HOST_BRIDGE").first
            head.wait_for(state="attached", timeout=120_000)
            nxt = head.locator("button[title='next step']")
            assert nxt.count() == 2, nxt.count()
            nxt.nth(0).scroll_into_view_if_needed()
            nxt.nth(0).click()
            nxt.nth(1).click()
            nxt.nth(1).click()
            page.wait_for_timeout(800)
            page.locator(".jp-MarkdownOutput h2", has_text="Peer-to-peer").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-05-p2p-{width}-intro.png"))
            nxt.nth(0).scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-05-p2p-{width}.png"))
            texts = [t.inner_text() for t in head.locator(".iovalab-ev").all()]
            boxes = head.evaluate("""el => Array.from(el.querySelectorAll("button[title='first step']"))
                .map(b => { const col = b.closest('.widget-vbox').parentElement.getBoundingClientRect();
                            return Array.from(b.parentElement.querySelectorAll(':scope > button')).map(x => {
                                const r = x.getBoundingClientRect();
                                return [r.width, r.left >= col.left - 1 && r.right <= col.right + 1]; }); })""")
            head.locator(".widget-html-content", has_text="step 2 of").first.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-05-p2p-{width}-text.png"))
            table = page.locator(".jp-OutputArea-output", has_text="explain.p2p_rows()").last
            table.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-05-p2p-{width}-table.png"))
            overflow = table.locator(".iovalab-table").evaluate("el => el.scrollWidth - el.clientWidth")
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"jupyterlab-05-p2p-{width}-failure.png"))
            raise
    assert len(texts) == 2, texts
    assert "blk_dma_map_bus" in texts[0] and "iommu_map_nosync" not in texts[0]
    assert "iommu_map_nosync" in texts[1] and "IOMMU_MMIO" in texts[1]
    assert len(boxes) == 2 and all(w >= 36 and inside for b in boxes for w, inside in b), boxes
    assert overflow <= 1, f"the P2P table needs a sideways scroll of {overflow} px"
