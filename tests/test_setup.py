"""The two set-up commands and the project layout (design card's top level)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import stop_process_group

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
        assert "../" + "shared" not in p.read_text(), p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHAPTERS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)


def test_lab_copy_and_reset_book(tmp_path):
    """The learner's copy: made from the pristine book, never overwritten on start; reset one chapter or all."""
    lab = tmp_path / "my-book"
    assert _make("lab-copy", f"LAB_DIR={lab}").returncode == 0
    assert sorted(p.name for p in lab.glob("*.ipynb")) == CHAPTERS
    edited = {"03-map-page-path.ipynb": '{"edited": 3}', "04-two-step-api.ipynb": '{"edited": 4}'}
    for name, text in edited.items():
        (lab / name).write_text(text)
    (lab / "05-nvme.ipynb").unlink()                        # a chapter the copy lacks (new in the book)
    assert _make("lab-copy", f"LAB_DIR={lab}").returncode == 0
    assert (lab / "03-map-page-path.ipynb").read_text() == edited["03-map-page-path.ipynb"]   # work kept
    assert (lab / "05-nvme.ipynb").read_bytes() == (ROOT / "notebooks/05-nvme.ipynb").read_bytes()

    r = _make("reset-book", f"LAB_DIR={lab}", "CHAPTER=03-map-page-path")
    assert r.returncode == 0, r.stderr
    assert (lab / "03-map-page-path.ipynb").read_bytes() == (ROOT / "notebooks/03-map-page-path.ipynb").read_bytes()
    assert (lab / "04-two-step-api.ipynb").read_text() == edited["04-two-step-api.ipynb"]     # only that one

    bad = _make("reset-book", f"LAB_DIR={lab}", "CHAPTER=99-nope")
    assert bad.returncode != 0 and "99-nope" in bad.stdout and "03-map-page-path" in bad.stdout
    assert (lab / "04-two-step-api.ipynb").read_text() == edited["04-two-step-api.ipynb"]     # unchanged

    (lab / "scratch.txt").write_text("mine")
    assert _make("reset-book", f"LAB_DIR={lab}").returncode == 0
    assert sorted(p.name for p in lab.iterdir() if p.suffix == ".ipynb") == CHAPTERS
    for name in CHAPTERS:
        assert (lab / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes(), name
    assert not (lab / "scratch.txt").exists()


def test_reset_book_refuses_the_pristine_book():
    for target in ["notebooks", "./notebooks/", "."]:
        r = _make("reset-book", f"LAB_DIR={target}")
        assert r.returncode != 0 and "must be a folder of its own" in r.stdout, target
    assert (ROOT / "notebooks" / CHAPTERS[0]).exists()


def test_my_notebooks_is_git_ignored():
    assert "my-notebooks/" in (ROOT / ".gitignore").read_text().split()
    assert "LAB_DIR ?= my-notebooks" in (ROOT / "Makefile").read_text()


@pytest.mark.slow
def test_make_lab_starts_jupyterlab_with_token(tmp_path):
    """`make lab` (with the venv already there) serves the learner's copy on 127.0.0.1 and requires the token."""
    port = _free_port()
    lab = tmp_path / "my-book"
    lab.mkdir()
    (lab / "marker.txt").write_text("the learner's folder")
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable,
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), IPYTHONDIR=str(tmp_path / "ipy"),
               HOME=str(tmp_path), BROWSER="true")
    proc = subprocess.Popen(["make", "-s", "lab", f"PORT={port}", f"LAB_DIR={lab}"],
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
        listing = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5))
        served = sorted(c["name"] for c in listing["content"])
        assert "marker.txt" in served and set(CHAPTERS) <= set(served), served   # root is the copy, not notebooks/
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=5)
        assert e.value.code == 403
    finally:
        stop_process_group(proc)


def test_make_test_runs_the_type_checker():
    """`make test` runs ruff, then mypy on the package (config in pyproject.toml), then pytest."""
    make = (ROOT / "Makefile").read_text()
    body = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/ruff check ." in body and "$(BIN)/mypy" in body and "pytest" in body
    assert body.index("mypy") < body.index("pytest")
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert conf["tool"]["mypy"]["packages"] == ["iovalab"]
    assert any(r.startswith("mypy") for r in conf["project"]["optional-dependencies"]["dev"])
