"""The two set-up commands and the project layout (design card's top level)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_layout():
    for name in ["notebooks", "iovalab", "data", "tests", "environment.yml", "README.md",
                 "pyproject.toml", "Makefile", ".ci/run"]:
        assert (ROOT / name).exists(), name
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_readme_shows_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    lab, test = text.find("make lab"), text.find("make test")
    assert 0 <= lab < 1500 and 0 <= test < 1500


#: PyPI name -> conda-forge name, where the two differ (none today; add them here, e.g. "torch": "pytorch").
CONDA_FORGE_NAMES: dict[str, str] = {}


def _pyproject_runtime() -> dict[str, str]:
    """{conda-forge name: version bounds} of pyproject's dependencies and its ``lab`` extra."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in [*meta["dependencies"], *meta["optional-dependencies"]["lab"]]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", req.strip())
        name = m.group(1).lower()
        out[CONDA_FORGE_NAMES.get(name, name)] = m.group(2).replace(" ", "")
    return out


def _environment_yml() -> tuple[dict[str, str], list[str]]:
    """(conda dependencies except python and pip, the pip section's lines) of environment.yml."""
    conda, pip, in_pip = {}, [], False
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and raw.startswith("      - "):
            pip.append(line.strip()[2:].strip())
            continue
        in_pip = False
        if raw.startswith("  - ") and not line.strip().startswith(("- conda-forge",)):
            spec = line.strip()[2:].strip()
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", spec)
            conda[m.group(1).lower()] = m.group(2).replace(" ", "")
    return conda, pip


def test_environment_yml_lists_the_runtime_dependencies_from_conda_forge():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and re.search(r"python=3\.1\d", text)
    conda, pip = _environment_yml()
    assert conda.pop("python").startswith("=3.1") and conda.pop("pip") == ""
    assert conda == _pyproject_runtime()             # same names, same bounds
    assert pip == ["-e ."], pip                     # pip adds the package itself, no extra to resolve


def test_tests_never_read_shared():
    for p in (ROOT / "tests").glob("*.py"):
        assert "../shared" not in p.read_text().replace('"../shared" not in', ""), p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_starts_jupyterlab_with_token(tmp_path):
    """`make lab` (with the venv already there) serves on 127.0.0.1 and requires the token."""
    port = _free_port()
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable,
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), IPYTHONDIR=str(tmp_path / "ipy"),
               HOME=str(tmp_path), BROWSER="true")
    proc = subprocess.Popen(["make", "-s", "lab", f"PORT={port}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        token = None
        out = []
        deadline = time.time() + 90
        while time.time() < deadline and token is None:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            out.append(line)
            m = re.search(rf"http://127\.0\.0\.1:{port}/(\S*)\?token=([0-9a-f]+)", line)
            if m:
                assert m.group(1) == "lab/tree/00-start-here.ipynb", line  # opens the first chapter
                token = m.group(2)
        assert token, "no tokenised URL printed:\n" + "".join(out[-30:])
        url = f"http://127.0.0.1:{port}/api/status"
        for _ in range(60):
            try:
                urllib.request.urlopen(url + f"?token={token}", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert urllib.request.urlopen(url + f"?token={token}", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=5)
        assert e.value.code == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
