"""The book runs: every notebook top to bottom in a fresh kernel, and every notebook is shaped like a chapter.

- ``test_notebook_runs[NAME]``: executes ``notebooks/NAME`` with nbclient in a fresh ``python3`` kernel that
  is this venv's interpreter (checked from inside the kernel), cwd = ``notebooks/``, with the Jupyter
  directories isolated under a temporary folder. A cell that raises fails the test with the notebook name,
  the cell number, its source and the error, unless the cell is tagged ``raises-exception``
  (``skip-execution`` cells are skipped, as nbclient does). The seconds are printed and listed in the
  session summary; only a generous per-cell timeout limits them.
- ``test_notebook_is_stripped[NAME]``: the file as committed has no outputs, no execution counts and no
  saved widget state.
- ``test_notebook_has_chapter_shape[NAME]``: the first markdown cell says what you will learn, the
  prerequisites and a time estimate; a "Self-check" heading with at least two questions closes the notebook.

Notebooks are found by globbing ``notebooks/*.ipynb`` at collection time: a new notebook is a new test.
"""

from __future__ import annotations

import os
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT = int(os.environ.get("IOVALAB_CELL_TIMEOUT", "600"))   # generous: a hang, not a slow cell
STARTUP_TIMEOUT = 120

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROBE = "import sys as _s; print(repr((_s.executable, _s.prefix)))"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NB_DIR / name, as_version=4)


def _error_message(name: str, index: int, cell, err) -> str:
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        e = errors[-1]
        detail = _ANSI.sub("", "\n".join(e.get("traceback", []))) or f"{e.get('ename')}: {e.get('evalue')}"
    else:
        detail = _ANSI.sub("", str(err))
    number = sum(1 for c in _read(name).cells[: index + 1] if c.cell_type == "code")
    return (f"{name}: cell {index} (code cell #{number}) raised\n"
            f"---- source ----\n{cell.source}\n---- error ----\n{detail}")


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, isolated_jupyter, record_property):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = _read(name)
    probe = nbformat.v4.new_code_cell(_PROBE)
    nb.cells.append(probe)  # in memory only: runs last, in the same kernel
    current = {"index": 0}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            startup_timeout=STARTUP_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(NB_DIR)}},
                            on_cell_start=on_cell_start)
    failure = None
    t0 = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        i = current["index"]
        failure = (_error_message(name, i, nb.cells[i], err) if i < len(nb.cells) - 1
                   else f"{name}: the kernel failed after the last cell: {err}")
    finally:
        seconds = time.perf_counter() - t0
        record_property("iovalab_timing", (f"notebook {name}", seconds))
        print(f"{name}: {seconds:.1f} s")
    if failure:
        pytest.fail(failure, pytrace=False)

    # in an app view (Voila: code hidden) a bare `0` or `(8, 1)` means nothing: every result a cell
    # leaves carries its own caption (iovalab.book.tables.shown / show_table) or is a figure or widget
    bare = [(i, o["data"]["text/plain"][:60]) for i, c in enumerate(nb.cells[:-1]) for o in c.get("outputs", [])
            if o.get("output_type") == "execute_result" and set(o.get("data", {})) <= {"text/plain"}]
    assert not bare, f"{name}: cells leave uncaptioned results (cell, text): {bare}"

    text = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream")
    executable, prefix = eval(text.strip())  # noqa: S307 - our own repr of two strings
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), (
        f"{name} ran in {executable} (prefix {prefix}), not this venv's python {sys.executable}")
    assert Path(executable).resolve() == Path(sys.executable).resolve(), executable


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    """Committed notebooks carry no outputs, execution counts or widget state (strip before committing)."""
    nb = _read(name)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; clear them before committing"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state in the notebook metadata"
    raw = json.loads((NB_DIR / name).read_text(encoding="utf-8"))
    no_id = [i for i, c in enumerate(raw["cells"]) if "id" not in c]
    assert not no_id, f"{name}: cells {no_id} have no id (nbformat 4.5 requires one; a future nbformat refuses them)"


# --- chapter shape ----------------------------------------------------------------------------------

_LEARN = re.compile(r"\b(you(?:'ll| will)\s+(?:learn|see|be able)|learn(?:ing)?\b|goals?\b|objectives?\b"
                    r"|by the end|what you will)", re.I)
_PREREQ = re.compile(r"\b(pre-?requisites?|prereqs?\b|requires?\b|assumes?\b|before (?:you )?(?:start|begin)"
                     r"|you (?:should|need to) (?:know|have)|background\b|read (?:first|before))", re.I)
_TIME = re.compile(r"\b\d+(?:\s*(?:-|–|to)\s*\d+)?\s*(?:min(?:ute)?s?|h(?:ours?|rs?)?)\b\.?", re.I)
_SELF_CHECK = re.compile(r"^\s{0,3}#{1,6}\s*.*\bself[-\s]?check", re.I | re.M)
_QUESTION = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S|\?\s*\**\s*$")   # a list item, or a line ending in "?"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_chapter_shape(name):
    nb = _read(name)
    md = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.strip()]
    assert md, f"{name}: no markdown cells"
    first_i, first = md[0]
    assert first_i <= 1, f"{name}: the notebook should open with its markdown introduction"
    missing = [what for what, rx in (("what you will learn", _LEARN), ("prerequisites", _PREREQ),
                                     ("a time estimate (e.g. '20 min')", _TIME)) if not rx.search(first)]
    assert not missing, f"{name}: the first markdown cell does not state {', '.join(missing)}:\n{first}"

    heads = [i for i, src in md if _SELF_CHECK.search(src)]
    assert heads, f"{name}: no 'Self-check' heading"
    start = heads[-1]
    tail_window = max(4, len(nb.cells) // 4)
    assert start >= len(nb.cells) - tail_window, (
        f"{name}: the Self-check heading is in cell {start} of {len(nb.cells)}; it belongs to the last part")
    tail = "\n".join(c.source for c in nb.cells[start:] if c.cell_type == "markdown")
    tail = _SELF_CHECK.sub("", tail, count=1)
    n_questions = sum(1 for line in tail.splitlines() if _QUESTION.search(line))
    assert n_questions >= 2, f"{name}: the Self-check part holds {n_questions} question(s); expected at least 2"


# --- what a learner sees before asking ------------------------------------------------------------

def _all_output_text(nb) -> str:
    """Every text a reader of the executed notebook can see: streams, text/plain, text/html, and the
    string values of the saved widget state (HTML widgets, labels, text boxes)."""
    import html as _html
    import json

    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            data = o.get("data", {})
            for mime in ("text/plain", "text/html", "text/markdown"):
                v = data.get(mime, "")
                parts.append("".join(v) if isinstance(v, list) else v)
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for model in state.values():
        for v in model.get("state", {}).values():
            if isinstance(v, str):
                parts.append(v)
    parts.append(json.dumps(state))
    return _html.unescape("\n".join(parts))


@pytest.mark.notebook
def test_exercises_give_no_answer_away(isolated_jupyter):
    """Chapter 10 run top to bottom shows the learner's problems but none of their answers or
    derivations until a button is clicked."""
    from nbclient import NotebookClient

    from iovalab.lab.exercises import generate

    name = "10-exercises.ipynb"
    nb = _read(name)
    seed_cell = next(c.source for c in nb.cells if c.cell_type == "code" and "SEED, COUNT" in c.source)
    seed, count = eval(re.search(r"SEED, COUNT\s*=\s*(.+)", seed_cell).group(1))  # noqa: S307 - our notebook
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,
                   resources={"metadata": {"path": str(NB_DIR)}}).execute()
    text = _all_output_text(nb)
    problems = generate(seed, count)
    assert problems[0].question in text, "the executed chapter does not show the learner's problems"
    for p in problems:
        assert f"{p.id}  {p.answer}" not in text, f"{name}: the answer of {p.id} is shown before asking"
        assert p.derivation not in text, f"{name}: the derivation of {p.id} is shown before asking"
        assert f"answer is {p.answer}" not in text and f"answer: {p.answer}" not in text, p.id


# --- self-check answers ---------------------------------------------------------------------------

_DETAILS = re.compile(r"<details>\s*<summary>.*?</summary>(.*?)</details>", re.S | re.I)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_self_check_has_answers(name):
    """Every Self-check question is followed by a revealable answer (``<details>``) with content."""
    nb = _read(name)
    md = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    start = [i for i, src in md if _SELF_CHECK.search(src)][-1]
    tail = "\n".join(c.source for c in nb.cells[start:] if c.cell_type == "markdown")
    answers = [a.strip() for a in _DETAILS.findall(tail)]
    questions = re.findall(r"^\*\*\d+\.", tail, re.M) or re.findall(r"^\s*\d+[.)]\s+\S", tail, re.M)
    assert answers, f"{name}: the Self-check has no revealable answers (<details><summary>Answer</summary>...)"
    assert all(len(a) > 20 for a in answers), f"{name}: an empty or token answer in the Self-check"
    assert len(answers) >= len(questions), (
        f"{name}: {len(questions)} Self-check question(s) but {len(answers)} answer(s)")


def test_chapter_times_agree_with_the_map():
    """The time in each chapter's header is the one the map of 00 promises (and the README's)."""
    rows = re.findall(r"^\|\s*\[(\d\d) [^]]*\]\(([^)]+\.ipynb)\)\s*\|[^|]*\|\s*([^|]+?)\s*\|", _read(
        "00-start-here.ipynb").cells[2].source, re.M)
    assert len(rows) >= 10, rows
    readme = (NB_DIR / "README.md").read_text()
    for _num, file, when in rows:
        minutes = re.findall(r"\d+", when)
        if not minutes:
            continue
        first = next(c.source for c in _read(file).cells if c.cell_type == "markdown")
        header = _TIME.findall(first)
        stated = re.search(r"\*\*Time:?\*\*:?\s*([^\n]*)", first)
        assert stated, f"{file}: no **Time:** line"
        assert minutes[-1] in re.findall(r"\d+", stated.group(1)), (
            f"{file}: header says {stated.group(1)!r}, the map in 00 says {when!r}")
        row = re.search(rf"`{re.escape(file[:-6])}`[^\n]*\|\s*([^|\n]+?)\s*\|\s*$", readme, re.M)
        if row:
            assert minutes[-1] in row.group(1), f"notebooks/README.md says {row.group(1)!r} for {file}"
        assert header


def test_start_here_names_the_explorers_iommu():
    """00 shows VT-d in its picture and an SMMUv3 domain in the explorer: the text must say so."""
    from iovalab.lab.explain import GRANULE_PRESETS

    nb = _read("00-start-here.ipynb")
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "GranuleExplorer(" in c.source)
    after = nb.cells[i + 1].source
    named = re.findall(r"`((?:intel|amd|smmuv3)[-\w]*)`", after)
    assert named and all(GRANULE_PRESETS[g] in named for g in (0x1000, 0x4000, 0x10000)), after
    assert set(named) <= set(GRANULE_PRESETS.values()), f"00 names presets the explorer does not use: {named}"
