"""What every exercise kind shares: the :class:`Kind` record (generate, question, solve) and the
drawing and wording helpers of the problem generators (:mod:`iovalab.lab.exercises`).

No kernel analogue. The families of kinds are :mod:`iovalab.lab.exercise_alloc` (the IOVA allocator),
:mod:`iovalab.lab.exercise_map` (page-table splits, ``dma_iova_link``, NVMe PRPs) and
:mod:`iovalab.lab.exercise_workload` (whole workloads: counters and the flush queue).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Kind", "GRANULE_TEXT", "draw_granule", "draw_phys", "draw_size", "dom_text", "event_lines"]

#: How a question names each IOVA granule.
GRANULE_TEXT = {0x1000: "4 KiB", 0x4000: "16 KiB", 0x10000: "64 KiB"}


def draw_granule(rng: random.Random) -> int:
    """An IOVA granule: 4 KiB most often, then 64 KiB, then 16 KiB."""
    return rng.choices([0x1000, 0x4000, 0x10000], [7, 1, 2])[0]


def draw_phys(rng: random.Random, g: int, aligned: bool | None = None) -> int:
    """A physical address, granule-aligned when ``aligned`` (a quarter of the time when None)."""
    page = rng.randrange(0x100, 0x40000) * 0x10000
    if aligned is None:
        aligned = rng.random() < 0.25
    if aligned:
        return page + rng.randrange(0, 0x10000, g)
    return page + rng.choice([rng.randrange(1, g), rng.randrange(512, g, 512) if g > 512 else 0]) or page + 8


def draw_size(rng: random.Random, g: int) -> int:
    """A buffer size from a few bytes to 70 granules, often not a whole number of granules."""
    return rng.choice([rng.randrange(1, 4 * g), rng.randrange(1, 40) * g - rng.randrange(0, g),
                       rng.randrange(1, 9) * g, rng.randrange(30, 70) * g])


def dom_text(g: int) -> str:
    """How a question describes the fresh domain of granule ``g``."""
    name = {0x1000: "Intel VT-d domain (4K|2M|1G pages", 0x4000: "SMMUv3 domain (16K|32M pages",
            0x10000: "SMMUv3 domain (64K|512M pages"}[g]
    return f"a fresh strict {name}, IOVA granule {GRANULE_TEXT[g]}, nothing reserved, one CPU)"


def event_lines(evs, layers=("dma", "iova")) -> list[str]:
    """Derivation lines: the events of ``layers``, indented by call depth."""
    return ["    " + "  " * e.depth + e.describe() for e in evs if e.layer in layers]


@dataclass
class Kind:
    """One problem kind: ``generate(rng) -> params``, ``question(params) -> text``,
    ``solve(params) -> (answer, derivation lines)``; ``atype`` = answer type."""

    name: str
    title: str
    atype: str
    generate: Callable[[random.Random], dict]
    question: Callable[[dict], str]
    solve: Callable[[dict], tuple[Any, list[str]]]
