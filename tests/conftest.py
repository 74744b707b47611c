"""Shared test fixtures for the book's harness (notebooks, browser, handout).

Nothing here is autouse: tests that do not ask for a fixture run exactly as they would without this file.

- ``jupyter_env(base)`` / ``jupyter_dirs``: environment variables that put every Jupyter, IPython,
  JupyterLab, Chromium, matplotlib and XDG directory under a temporary folder, so no test writes into the
  real home directory or picks up a user's Jupyter configuration or kernel specs.
- ``isolated_jupyter``: applies those variables to ``os.environ`` for one test (kernels that nbclient starts
  inherit them).
- Browser test modules are not collected when Playwright cannot be imported, unless ``CI=true``: in CI a
  missing Playwright must be an error, not a silent skip.
- A terminal summary lists the seconds each notebook (and each browser test) took; tests report them with
  ``record_property("iovalab_timing", (label, seconds))``. That travels through pytest-xdist with the test
  report, so the summary is complete under ``-n 2`` as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMING_PROPERTY = "iovalab_timing"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


try:  # the guard the notes ask for: `pytest -m "not browser"` still imports browser modules
    import playwright.sync_api  # noqa: F401
except ImportError:
    collect_ignore_glob = [] if _ci() else ["test_browser*.py"]


def jupyter_env(base: Path) -> dict[str, str]:
    """Environment variables placing every per-user directory Jupyter touches under ``base``.

    ``JUPYTER_PATH`` is emptied so only the running venv's ``share/jupyter`` (and system dirs) supply
    kernel specs: kernel name ``python3`` then resolves to the venv's ipykernel spec, whose ``python``
    jupyter_client replaces with this interpreter (``sys.executable``).
    """
    base = Path(base)
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "jupyter-config",
        "JUPYTER_DATA_DIR": base / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": base / "jupyter-runtime",
        "IPYTHONDIR": base / "ipython",
        "JUPYTERLAB_SETTINGS_DIR": base / "lab-user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "lab-workspaces",
        "HOME": base / "home",
        "XDG_CONFIG_HOME": base / "home" / ".config",
        "XDG_CACHE_HOME": base / "home" / ".cache",
        "XDG_DATA_HOME": base / "home" / ".local" / "share",
        "XDG_RUNTIME_DIR": base / "xdg-runtime",
        "MPLCONFIGDIR": base / "matplotlib",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(dirs["XDG_RUNTIME_DIR"], 0o700)
    env = {k: str(v) for k, v in dirs.items()}
    env["JUPYTER_PATH"] = ""
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"   # silences a debugpy warning in every kernel
    return env


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM to its process group, then SIGKILL
    after 20 s (the one shutdown every server-starting test uses)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def jupyter_dirs(tmp_path_factory) -> dict[str, str]:
    """One isolated set of Jupyter directories per test session (per xdist worker)."""
    return jupyter_env(tmp_path_factory.mktemp("jupyter-home"))


@pytest.fixture
def isolated_jupyter(jupyter_dirs, monkeypatch) -> dict[str, str]:
    """Apply ``jupyter_dirs`` to ``os.environ`` for the duration of one test."""
    for k, v in jupyter_dirs.items():
        monkeypatch.setenv(k, v)
    return jupyter_dirs


# --- session summary of timings ------------------------------------------------------------------

_timings: list[tuple[str, float, str]] = []


def pytest_collection_modifyitems(config, items):
    """``fuzz_long`` tests run only when the marker expression names them (``pytest -m fuzz_long``)."""
    if "fuzz_long" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long fuzz run: select it with -m fuzz_long")
    for item in items:
        if "fuzz_long" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """Collect timings reported by tests (runs on the xdist controller too, with workers' reports)."""
    if report.when != "call":
        return
    for name, value in getattr(report, "user_properties", ()):
        if name == TIMING_PROPERTY:
            label, seconds = value
            _timings.append((str(label), float(seconds), report.outcome))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _timings or hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    tr.section("iovalab timings (seconds, wall clock)")
    width = max(len(label) for label, _, _ in _timings)
    for label, seconds, outcome in sorted(_timings):
        tr.write_line(f"{label:<{width}}  {seconds:7.1f}  {outcome}")
    nb = [s for label, s, _ in _timings if label.startswith("notebook ")]
    if nb:
        tr.write_line(f"{'notebooks: ' + str(len(nb)) + ' total':<{width}}  {sum(nb):7.1f}")
