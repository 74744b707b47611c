"""The package's own data, read with :mod:`importlib.resources` so that an installed wheel works anywhere.

``iovalab/data/`` holds the workload presets (``scenarios/``), the cost model (``cost-model.csv``), the
kernel-oracle reference traces (``kernel-traces/``) and the real kernel captures (``real/``), each folder
with a README saying where its files came from. In a checkout, ``data/`` at the top level is a link to it.

No kernel analogue: this is plumbing, the bottom layer (it imports nothing of the package).
"""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["data_file", "data_dir", "resolve_data_paths"]


def data_dir(*parts: str) -> Traversable:
    """The bundled data folder ``iovalab/data/<parts>`` (a :class:`~importlib.resources.abc.Traversable`)."""
    node = files("iovalab").joinpath("data")
    for p in parts:
        node = node.joinpath(p)
    return node


def data_file(*parts: str) -> Path:
    """A bundled data file as a path (pip installs packages unzipped); ``FileNotFoundError`` naming it and the
    folder's files if it is missing."""
    node = data_dir(*parts)
    if not node.is_file():
        parent = data_dir(*parts[:-1])
        known = sorted(c.name for c in parent.iterdir()) if parent.is_dir() else []
        raise FileNotFoundError(f"no bundled data file {'/'.join(parts)!r}; in that folder: "
                                f"{', '.join(known) or 'none'}")
    return Path(str(node))


def resolve_data_paths(arg: str) -> list[Path]:
    """What a command-line path argument names: the file itself when it exists, else the bundled data file(s)
    it names relative to the data folder (``data/real/strict-smp1.trace`` or ``real/strict-smp1.trace``),
    shell patterns included (``data/kernel-traces/*.jsonl``, which a shell outside a checkout leaves as it is).

    Returns ``[]`` when nothing matches, so the caller can name the argument in its error.
    """
    p = Path(arg)
    if p.exists():
        return [p]
    rel = arg.replace("\\", "/")
    if rel.startswith("./"):
        rel = rel[2:]
    if rel.startswith("data/"):
        rel = rel[len("data/"):]
    parts = [x for x in rel.split("/") if x]
    if not parts or any(x == ".." for x in parts):
        return []
    folder = data_dir(*parts[:-1])
    if not folder.is_dir():
        return []
    return sorted(Path(str(c)) for c in folder.iterdir() if c.is_file() and fnmatch.fnmatchcase(c.name, parts[-1]))
