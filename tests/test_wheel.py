"""The package stands alone: a wheel built from the tracked files, installed into a fresh venv, works from a
directory outside the checkout (issue 11's acceptance test).

Offline by construction: the wheel is built with ``--no-build-isolation`` (the dev extra brings the
setuptools it needs) and installed with ``--no-deps --no-index``; the fresh venv sees the running venv's
site-packages (numpy, matplotlib, ...) through a ``.pth`` file, so nothing is downloaded. That ``.pth`` adds
the directory only: the running venv's editable ``iovalab`` hook (itself a ``.pth`` there) is not run, and
the test checks that ``iovalab`` is imported from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _copy_tracked(dest: Path) -> None:
    """The checkout as a clone would have it: tracked files only, symlinks kept as links."""
    for rel in _tracked():
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.exists():
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, the fresh venv's bin folder, a working directory outside any checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv, elsewhere = tmp / "src", tmp / "dist", tmp / "venv", tmp / "elsewhere"
    _copy_tracked(src)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(dist)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr   # license: the PEP 639 form
    (wheel,) = dist.glob("iovalab-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (Path(purelib) / "zz-test-deps.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    inst = subprocess.run([str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    elsewhere.mkdir()
    return wheel, venv / "bin", elsewhere


def _run(installed, *argv: str) -> str:
    _, bin_dir, cwd = installed
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["MPLBACKEND"] = "Agg"
    exe = str(bin_dir / argv[0]) if (bin_dir / argv[0]).exists() else argv[0]
    p = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_wheel_holds_the_package_data_and_license(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p for p in _tracked() if p.startswith("iovalab/data/")]
    assert len(data) > 20
    missing = [p for p in data if p not in names]
    assert not missing, missing
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta


def test_import_comes_from_the_fresh_venv(installed):
    out = _run(installed, "python", "-c",
               "import iovalab, iovalab.resources as r; print(iovalab.__file__); print(r.data_file('cost-model.csv'))")
    venv = installed[1].parent
    for line in out.split():
        assert Path(line).resolve().is_relative_to(venv.resolve()), out


def test_scenario_prints_counters_and_modelled_cost(installed):
    out = _run(installed, "iovalab", "scenario", "nvme-4k-read")
    assert "iova_allocs" in out and "modelled time" in out
    assert "x86-vtd" in out and "ns modelled" in out
    listing = _run(installed, "iovalab", "scenario")
    assert "nvme-4k-read" in listing


def test_python_dash_m_works_too(installed):
    out = _run(installed, "python", "-m", "iovalab", "scenario", "nvme-128k-scattered", "--api", "iova")
    assert "modelled time" in out


def test_quiz_and_its_check(installed):
    items = json.loads(_run(installed, "iovalab", "quiz", "--seed", "7", "--count", "3", "--json", "--answers"))
    assert len(items) == 3
    first = items[0]
    ok = _run(installed, "iovalab", "quiz", "--seed", "7", "--check", first["id"], str(first["answer"]))
    assert ok.splitlines()[0] == "correct", ok


def test_check_trace_on_the_bundled_reference_traces(installed):
    out = _run(installed, "iovalab", "check-trace", "data/kernel-traces/*.jsonl")   # no shell: the pattern
    lines = out.strip().splitlines()
    assert len(lines) >= 5, out                                                   # 4 files + TOTAL
    assert lines[-1].startswith("TOTAL") and lines[-1].endswith(" 0 mismatches"), out


@pytest.mark.parametrize("capture", ["strict-smp1.trace", "v734-strict-smp1.trace",
                                     "v734-arm64-64k-strict-smp1.trace"])
def test_replay_ftrace_on_the_bundled_real_capture(installed, capture):
    out = _run(installed, "iovalab", "replay-ftrace", f"data/real/{capture}")
    total = [ln for ln in out.splitlines() if ln.startswith("TOTAL")]
    assert total and total[-1].endswith(" 0 mismatched"), out[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("LINES:")]
    assert lines and lines[-1].endswith(" 0 differ"), out[-2000:]


def test_scenario_under_either_kernel(installed):
    for kernel in ("6.17", "7.3"):
        out = _run(installed, "iovalab", "scenario", "nvme-196k-read", "--kernel", kernel)
        assert "iova_allocs" in out, out


def test_check_and_presets_from_python(installed):
    out = _run(installed, "python", "-c",
               "import iovalab\n"
               "r = iovalab.check('try_alloc reserves 0x4000 and returns 0xffffc234', phys=0x1234, size=0x3000,"
               " quiet=True)\n"
               "print(bool(r))\n"
               "print(len(iovalab.list_presets()))\n")
    flag, count = out.split()
    assert flag == "True"
    assert int(count) >= 10
