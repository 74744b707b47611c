"""``iovalab replay-ftrace FILE``: a kernel ftrace capture replayed through the simulator, as a
command (no kernel analogue): the inferred system and its evidence, allocations per phase, the per-path
line table, ``LINES:`` and ``TOTAL:``; exit status 0 iff no allocation and no line differs. The replay
itself is :func:`iovalab.trace.replay.replay_file`.
"""

from __future__ import annotations

import json
import sys
import textwrap

from iovalab.kernel.iova import MAX_CPUS
from iovalab.trace.replay import replay_file
from iovalab.trace.system import parse_range

__all__ = ["cli"]


#: the width the mode and system explanations are wrapped at (a terminal, the book's terminal view)
_WIDTH = 100


def _stderr_progress(text: str) -> None:
    print(f"replay-ftrace: {text}", file=sys.stderr, flush=True)


def cli(args) -> int:
    """``python -m iovalab replay-ftrace FILE [--cpus N] [--strict|--lazy] [--iommu NAME]
    [--page-size BYTES] [--reserve START-END]... [--json]``: the inferred system and its evidence,
    allocations per phase, the per-path line table, ``LINES:`` and ``TOTAL:``; exit status 0 iff no
    allocation and no line differs."""
    from iovalab.resources import resolve_data_paths
    from iovalab.trace.ftrace import FtraceParseError

    if args.cpus is not None and not 1 <= args.cpus <= MAX_CPUS:
        print(f"error: --cpus {args.cpus}: must be 1..{MAX_CPUS} (NR_CPUS of x86_64 CONFIG_MAXSMP)",
              file=sys.stderr)
        return 2
    found = resolve_data_paths(args.file)
    if len(found) != 1:
        print(f"error: {args.file}: no such file, nor one bundled data file of that name (bundled: "
              "real/*.trace)", file=sys.stderr)
        return 2
    try:
        overrides = {"iommu": args.iommu, "page_size": args.page_size, "hz": getattr(args, "hz", None),
                     "reserve": [parse_range(r) for r in args.reserve], "kernel": getattr(args, "kernel", None)}
        res = replay_file(found[0], cpus=args.cpus, mode=args.mode, lines=True, overrides=overrides,
                          progress=_stderr_progress if sys.stderr.isatty() else None)
    except FtraceParseError as e:
        print(f"error: {args.file}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {args.file}: {e}", file=sys.stderr)
        return 2
    res.path = args.file
    system = res.system
    assert system is not None
    lines = res.lines
    assert lines is not None
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
    else:
        print(f"{args.file}: {res.cpus} CPU(s), {res.mode}")
        print(textwrap.fill(res.mode_inferred, _WIDTH, initial_indent="mode: ", subsequent_indent="    "))
        print(textwrap.fill(system.describe(), _WIDTH, initial_indent="system: ", subsequent_indent="        "))
        for d in system.decisions:
            print(textwrap.fill(str(d), _WIDTH, initial_indent="    ", subsequent_indent="        "))
        print(f"{'phase':<62} {'allocs':>6} {'matched':>7} {'reord':>5} {'mismatch':>8}")
        for p in res.phases:
            if not p.allocations:
                continue
            print(f"{p.name[:62]:<62} {p.allocations:>6} {p.matched:>7} {p.reordered:>5} "
                  f"{p.mismatched:>8}")
            if p.first_mismatch:
                print(f"    first mismatch: {p.first_mismatch}")
        if res.unmatched_unmaps:
            print(f"unmaps of ranges never seen mapped: {res.unmatched_unmaps}")
        if res.timer_flushes:
            print(f"flush-queue timer runs placed from the timestamps (HZ={system.hz}): {res.timer_flushes}")
        if res.passes > 1:
            print(f"replayed {res.passes} times (the whole capture decided otherwise than its first lines)")
        if res.reorders:
            print(f"reordered allocations (moved before interrupt-context frees) at lines: "
                  f"{', '.join(map(str, res.reorders[:20]))}")
        for row in lines.table():
            print(row)
        for m in lines.mismatches[:5]:
            print(f"    {m}")
        print(lines.summary())
    print(f"TOTAL: {res.allocations} allocations, {res.matched} matched ({res.reordered} reordered), "
          f"{res.mismatched} mismatched")
    return 0 if res.mismatched == 0 and lines.ok else 1
