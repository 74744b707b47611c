"""Seeded homework problems whose answers the simulator computes, in the spirit of OSTEP's simulators.

No kernel analogue. Every problem is generated from ``(seed, index)`` alone, so its id (``s7-p03``)
is enough to regenerate it; the answer is never stored: :meth:`Problem.solve` runs the question's
calls on a fresh :class:`~iovalab.kernel.dma_iommu.DmaDomain` (or :func:`~iovalab.kernel.iommu.split_pages`, or the NVMe
scenario) and reads the result, and :meth:`Problem.check` compares a learner's answer with it and
returns the simulator's derivation.

Problem kinds (:data:`KINDS`; each question text says how to write the answer; generators, questions
and solvers live in :mod:`~iovalab.lab.exercise_alloc`, :mod:`~iovalab.lab.exercise_map`,
:mod:`~iovalab.lab.exercise_misuse` and :mod:`~iovalab.lab.exercise_workload`, on :mod:`~iovalab.lab.exercise_base`):

=================  =================================================================================
``reserve_len``    reserved IOVA length of ``dma_iova_try_alloc`` / ``dma_map_page`` (dma-iommu.c)
``tree_footprint`` bytes the rbtree node holds after ``alloc_iova_fast`` rounding (iova.c)
``try_alloc_addr`` ``state->addr`` returned by ``dma_iova_try_alloc`` after some earlier mappings
``map_page_addr``  the address ``dma_map_page`` returns after some earlier mappings
``next_alloc``     the next address after maps and unmaps (per-CPU rcache reuse, iova.c)
``attempt``        which ``iommu_dma_alloc_iova`` attempt succeeds: below 4 GiB or full width
``pgsize_split``   the ``iommu_pgsize`` split of an ``iommu_map`` (iommu.c)
``nvme_prp``       PRP data pointers of an NVMe request on the 6.17 IOVA path (drivers/nvme/host/pci.c)
``invalidations``  unmap-side IOTLB invalidations of a workload under a mapping path, strict or lazy
``map_calls``      ``iommu:map`` events (``iommu_map_nosync`` calls) of a workload under a path
``api_calls``      driver-visible DMA API calls of a workload under a path
``errno``          what ``dma_iova_link`` returns for a (mis)use (dma-iommu.c, iommu.c)
``lazy_reuse``     when an unmapped IOVA goes back to the allocator, strict vs lazy (flush queue)
``rcache_bin``     which rcache bin a freed IOVA lands in (``order_base_2`` of the size at free time)
``link_iova``      which IOVA a ``dma_iova_link`` maps
``misuse_map``     what ``iommu_map`` over a mapped page returns per driver (6.17, ``follow_kernel``)
``misuse_unmap``   what ``iommu_unmap`` over a hole returns per driver (6.17, ``follow_kernel``)
=================  =================================================================================

Command line: ``python -m iovalab quiz --seed S --count N [--json] [--answers]`` and
``python -m iovalab quiz --check ID ANSWER`` (:func:`cli`).
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from iovalab.kernel.units import errname, hx, parse_int
from iovalab.lab import exercise_alloc, exercise_map, exercise_misuse, exercise_workload
from iovalab.lab.exercise_base import Kind
from iovalab.lab.notation import format_split, parse_errno, parse_split

__all__ = ["KINDS", "Problem", "Verdict", "generate", "problem", "make_problem", "parse_id",
           "wrong_answer", "cli"]


# ================================================================================ answer types
def _fmt(atype: str, v: Any) -> str:
    if atype == "hex":
        return hx(v)
    if atype == "int":
        return str(v)
    if atype == "errno":
        return "0" if v == 0 else errname(v)
    if atype == "split":
        return format_split(v)
    if atype == "list":
        return ", ".join(hx(x) for x in v)
    if atype == "bin":
        return str(v)
    return str(v)


_CHOICES = {"below 4 GiB": ("below", "32", "low", "first", "sac"),
            "full width": ("full", "64", "48", "high", "second", "dac", "above")}


def _parse(atype: str, text: str) -> Any:
    t = str(text).strip()
    if atype in ("hex", "int"):
        return parse_int(t)
    if atype == "errno":
        return parse_errno(t)
    if atype == "split":
        return parse_split(t)
    if atype == "list":
        return [parse_int(x) for x in re.split(r"[,\s;]+", t) if x]
    if atype == "bin":
        if t.lower() in ("tree", "none", "rbtree", "-", "no"):
            return "tree"
        return parse_int(t)
    if atype == "choice":
        # whole words only, and the answer must point at exactly one choice ("full width below 4GiB"
        # names both and is refused, where a substring test read it as "below 4 GiB")
        low = " ".join(t.lower().split())
        tokens = set(re.findall(r"[a-z]+|\d+", low))
        hits = [canon for canon, words in _CHOICES.items()
                if low == canon.lower() or tokens & set(words) or tokens >= set(canon.lower().split())]
        if len(hits) == 1:
            return hits[0]
        why = "names both" if hits else "names neither"
        raise ValueError(f"{text!r} {why}: answer 'below 4 GiB' or 'full width'")
    raise ValueError(atype)


# ================================================================================ kinds
#: Every kind, in the order a seed's shuffle starts from (so this order is part of what a problem id
#: means). The kinds themselves live in their families' modules.
_ORDER = ("reserve_len", "tree_footprint", "try_alloc_addr", "map_page_addr", "next_alloc", "attempt",
          "pgsize_split", "nvme_prp", "invalidations", "map_calls", "api_calls", "errno", "lazy_reuse",
          "rcache_bin", "link_iova", "misuse_map", "misuse_unmap")
_FAMILIES: dict[str, Kind] = {**exercise_alloc.KINDS, **exercise_map.KINDS, **exercise_workload.KINDS,
                              **exercise_misuse.KINDS}
if sorted(_FAMILIES) != sorted(_ORDER):  # pragma: no cover - a kind added to a family but not to _ORDER
    raise ImportError(f"exercise kinds {sorted(set(_FAMILIES) ^ set(_ORDER))} are not both in a family and in _ORDER")
KINDS: dict[str, Kind] = {name: _FAMILIES[name] for name in _ORDER}


# ================================================================================ problems
@dataclass
class Verdict:
    """Result of :meth:`Problem.check`: ``correct``, the canonical ``expected`` answer text, the
    learner's ``given`` text, ``error`` (why the answer could not be read) and the ``derivation``."""

    correct: bool
    expected: str
    given: str
    derivation: str
    error: str | None = None

    def text(self) -> str:
        if self.correct:
            return "correct"
        if self.error:
            head = (f"cannot read your answer {self.given!r}: {self.error}\n"
                    f"the simulator's answer: {self.expected}")
        else:
            head = f"wrong: you answered {self.given}, the simulator's answer is {self.expected}"
        return head + "\n" + self.derivation


@dataclass
class Problem:
    """One generated problem. ``answer`` / ``derivation`` are computed on first use by running the
    simulator (never stored in the id or the parameters)."""

    id: str
    seed: int
    index: int
    kind: str
    params: dict
    question: str
    _solution: tuple | None = field(default=None, repr=False)

    @property
    def atype(self) -> str:
        return KINDS[self.kind].atype

    def solve(self) -> tuple[Any, list[str]]:
        if self._solution is None:
            self._solution = KINDS[self.kind].solve(self.params)
        return self._solution

    @property
    def value(self) -> Any:
        return self.solve()[0]

    @property
    def answer(self) -> str:
        """The simulator's answer in canonical text form (what ``--answers`` prints)."""
        return _fmt(self.atype, self.value)

    @property
    def derivation(self) -> str:
        return "\n".join(self.solve()[1])

    def check(self, answer: str | int) -> Verdict:
        """Compare a learner's answer (hex or decimal numbers; lists comma-separated) with the
        simulator's."""
        given = str(answer).strip()
        try:
            v = _parse(self.atype, given)
        except ValueError as e:
            return Verdict(False, self.answer, given, self.derivation, str(e))
        return Verdict(v == self.value, self.answer, given, self.derivation)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "question": self.question, "answer": self.answer}


def make_problem(kind: str, params: dict, id: str = "custom") -> Problem:
    """A problem of ``kind`` with explicit ``params`` (tests build trace-derived problems this way)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return Problem(id, -1, 0, kind, params, KINDS[kind].question(params))


#: Problems per seed: ids go up to ``sN-p1000``. Problem ``i`` is drawn so that it differs from problems
#: ``1..i-1``, so checking it regenerates those; the bound keeps that under about a second.
MAX_PROBLEMS = 1000


def _order(seed: int) -> list[str]:
    names = list(KINDS)
    random.Random(f"iovalab-quiz-order-{seed}").shuffle(names)
    return names


def generate(seed: int, count: int = 10) -> list[Problem]:
    """Problems 1..``count`` of ``seed``: kinds cycle through all of :data:`KINDS` in a seed-dependent
    order; parameters come from ``random.Random(f"{seed}:{index}:{attempt}")``; a question equal to an
    earlier one of the same seed is drawn again (next attempt), so all ``count`` questions differ."""
    if not isinstance(count, int) or not 1 <= count <= MAX_PROBLEMS:
        raise ValueError(f"count {count!r} must be in 1..{MAX_PROBLEMS} (MAX_PROBLEMS per seed)")
    order = _order(seed)
    seen: set[str] = set()
    out = []
    for i in range(1, count + 1):
        kind = KINDS[order[(i - 1) % len(order)]]
        for attempt in range(100):
            params = kind.generate(random.Random(f"{seed}:{i}:{attempt}"))
            q = kind.question(params)
            if q not in seen:
                break
        else:  # pragma: no cover - the parameter spaces are far larger than 100 draws
            raise RuntimeError(f"could not draw a new {kind.name} problem for s{seed}-p{i:02d}")
        seen.add(q)
        out.append(Problem(f"s{seed}-p{i:02d}", seed, i, kind.name, params, q))
    return out


def parse_id(pid: str) -> tuple[int, int]:
    """``"s7-p03"`` -> ``(7, 3)``; ValueError for anything else."""
    m = re.fullmatch(r"\s*s(-?\d{1,18})-p(\d{1,9})\s*", str(pid))
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"problem id {pid!r} must look like s7-p03 (seed 7, problem 3)")
    if int(m.group(2)) > MAX_PROBLEMS:
        raise ValueError(f"problem id {pid!r}: problem numbers go up to {MAX_PROBLEMS} (MAX_PROBLEMS per seed)")
    return int(m.group(1)), int(m.group(2))


def problem(pid: str) -> Problem:
    """Regenerate the problem with id ``pid``."""
    seed, index = parse_id(pid)
    return generate(seed, index)[-1]


def wrong_answer(p: Problem) -> str:
    """A plausible but wrong answer text (used by tests and the notebook's demo)."""
    v = p.value
    t = p.atype
    if t in ("hex", "int"):
        return _fmt(t, v + (0x1000 if t == "hex" else 1))
    if t == "errno":
        return "-EIO" if v != -5 else "0"
    if t == "choice":
        return "full width" if v == "below 4 GiB" else "below 4 GiB"
    if t == "split":
        c, pg = v[0]
        return format_split([(c + 1, pg)] + list(v[1:]))
    if t == "list":
        return _fmt("list", list(v[:-1]) + [v[-1] + 0x1000])
    if t == "bin":
        return "tree" if v != "tree" else "0"
    raise ValueError(t)


# ================================================================================ command line
def cli(args) -> int:
    """``python -m iovalab quiz --seed S --count N [--json] [--answers]`` / ``--check ID ANSWER``."""
    if getattr(args, "check", None):
        pid, ans = args.check
        try:
            p = problem(pid)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        v = p.check(ans)
        print(v.text())
        return 0 if v.correct else 1
    try:
        probs = generate(args.seed, args.count)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([p.as_dict() for p in probs], indent=1))
        return 0
    for p in probs:
        print(f"{p.id}  [{p.kind}] {KINDS[p.kind].title}")
        print(f"  {p.question}")
        if args.answers:
            print(f"  answer: {p.answer}")
        print()
    print(f"Check an answer: python -m iovalab quiz --check {probs[0].id} ANSWER"
          + ("" if args.answers else "   (add --answers to see them all)"))
    return 0
