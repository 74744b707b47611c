"""No tracked file of the project cites a file the project does not contain.

The project's notes (a kernel summary, a design card, a survey of published cost figures) were working
documents outside the repository; a reader has none of them. Citations go to the kernel source
(``drivers/iommu/iova.c: alloc_iova_fast()``, with a version) or to the original public source of a figure
(author, title, Message-ID, commit or URL). This test scans every file ``git ls-files`` lists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match itself.
FORBIDDEN = {
    "the project's kernel notes": re.compile("kernel" + r"-spec", re.I),
    "the design card": re.compile("DESIGN" + r"\.md"),
    "the cost-figure survey": re.compile("cost" + r"-anchors", re.I),
    "a section of an unshipped note": re.compile("\u00a7" + r"\s*\d"),
    "a sibling folder of the checkout": re.compile(r"\.\./" + "shared"),
    "an absolute path on the authors' machine": re.compile(r"(?<![\w.~-])/(?:" + "work|home|Users|root|opt"
                                                           + r")/[\w.-]"),
}

# Relative links in Markdown (``[text](target)``) must name a tracked file.
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _text(rel: str) -> str | None:
    p = ROOT / rel
    if p.is_symlink() or not p.is_file():
        return None
    raw = p.read_bytes()
    if b"\0" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_scan_sees_the_project():
    files = _tracked()
    assert {"README.md", "pyproject.toml", "iovalab/kernel/iova.py", "notebooks/02-the-iova-allocator.ipynb",
            "iovalab/data/cost-model.csv", "tests/test_citations.py"} <= set(files)


@pytest.mark.parametrize("what,pattern", list(FORBIDDEN.items()), ids=list(FORBIDDEN))
def test_no_citation_of_a_file_the_project_lacks(what, pattern):
    hits = []
    for rel in _tracked():
        text = _text(rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:160]}")
    assert not hits, f"{len(hits)} citation(s) of {what}:\n" + "\n".join(hits[:40])


@pytest.mark.parametrize("pattern", list(FORBIDDEN.values()), ids=list(FORBIDDEN))
def test_the_patterns_catch_what_they_name(pattern):
    samples = {
        "kernel": "see kernel" + "-spec \u00a72.7", "DESIGN": "DESIGN" + ".md lists it", "cost": "cost" + "-anchors.md",
        "\u00a7": "(\u00a7" + "4.6)", r"\.\./": "../" + "shared/x.md", "(?<!": "/" + "work/shared/notes.md",
    }
    assert any(pattern.search(s) for s in samples.values())
    assert not pattern.search("drivers/iommu/iova.c: alloc_iova_fast() (6.17), /sys/kernel/tracing, /dev/null")


def test_markdown_links_resolve():
    tracked = set(_tracked())
    bad = []
    for rel in tracked:
        if not rel.endswith((".md", ".ipynb")):
            continue
        text = _text(rel) or ""
        for target in MD_LINK.findall(text):
            target = target.strip("<>").split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # anchor only, or a URL
                continue
            resolved = (ROOT / rel).parent / unquote(target)
            try:
                name = str(resolved.resolve().relative_to(ROOT.resolve()))
            except ValueError:
                bad.append(f"{rel}: {target} (outside the repository)")
                continue
            if name not in tracked and not any(t.startswith(name.rstrip("/") + "/") for t in tracked):
                bad.append(f"{rel}: {target}")
    assert not bad, "links to files the repository lacks:\n" + "\n".join(bad)
