"""The command line: ``python -m iovalab COMMAND ...``.

Commands: ``check-trace`` (replay kernel reference traces), ``replay-ftrace`` (replay a real ftrace
capture), ``scenario`` (run a workload preset under a mapping path), ``quiz`` (seeded exercises),
``bench`` (measure speed budgets), ``handout`` (static HTML of the executed book), ``fuzz``
(random operation sequences with invariants).
Each command's module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from iovalab.book.tables import Terminal
from iovalab.resources import resolve_data_paths

__all__ = ["main"]


def _cmd_check_trace(args: argparse.Namespace) -> int:
    from iovalab.trace.reference import TraceFormatError, check_trace

    total_ops = total_bad = 0
    paths = []
    for arg in args.files:
        found = resolve_data_paths(arg)
        if not found:
            print(f"error: {arg}: no such file, nor a bundled data file of that name "
                  "(bundled: kernel-traces/*.jsonl)", file=sys.stderr)
            return 2
        paths.extend(found)
    for path in paths:
        try:
            res = check_trace(path)
        except TraceFormatError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        total_ops += res.ops
        total_bad += res.n_mismatches
        print(f"{path}: {res.ops} ops, {res.n_mismatches} mismatches")
        for m in res.mismatches[: args.show]:
            print(f"  {m}")
        if res.n_mismatches > args.show:
            print(f"  ... {res.n_mismatches - args.show} more")
    print(f"TOTAL: {total_ops} ops, {total_bad} mismatches")
    return 0 if total_bad == 0 else 1


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} must be >= 0")
    return n


def _quiz_argv(argv: list[str]) -> list[str]:
    """``quiz --check ID ANSWER`` with an ANSWER starting with '-' (``-EINVAL``, the form the question
    asks for): argparse would read it as an option, so both values are handed over as ``--check=`` parts."""
    argv = list(argv)
    if "quiz" not in argv:
        return argv
    for i in range(argv.index("quiz") + 1, len(argv) - 2):
        if argv[i] == "--check":
            return argv[:i] + [f"--check-id={argv[i + 1]}", f"--check-answer={argv[i + 2]}"] + argv[i + 3:]
    return argv


def _delegate(module: str, func: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        mod = importlib.import_module(f"iovalab.{module}")
        return getattr(mod, func)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iovalab",
                                description="Kernel-exact IOVA/DMA-mapping simulator and lab book tools.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check-trace", help="replay kernel reference traces (JSON Lines) and compare")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--show", type=_non_negative, default=5, help="mismatches to print per file (default 5)")
    c.set_defaults(func=_cmd_check_trace)

    r = sub.add_parser("replay-ftrace", help="replay a real kernel ftrace capture through the simulator")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--cpus", type=int, default=None, help="CPU count (default: inferred from the trace)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="mode", action="store_const", const="strict")
    mode.add_argument("--lazy", dest="mode", action="store_const", const="lazy")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--iommu", default=None, metavar="NAME",
                   help="the traced IOMMU: vtd, smmuv3 or a preset (default: inferred from the trace)")
    r.add_argument("--page-size", type=lambda t: int(t, 0), default=None, metavar="BYTES",
                   help="the traced kernel's PAGE_SIZE: 4096, 16384 or 65536 (default: inferred)")
    r.add_argument("--kernel", choices=("6.17", "7.3"), default=None,
                   help="the modelled kernel version (default: inferred from the trace's event forms)")
    r.add_argument("--hz", type=int, default=None,
                   help="the traced kernel's CONFIG_HZ, for the flush-queue timer of a lazy capture without "
                        "flush lines (default 250)")
    r.add_argument("--reserve", action="append", default=[], metavar="START-END",
                   help="reserve an IOVA byte range, e.g. a PCI host-bridge window from the console log "
                        "(repeatable)")
    r.set_defaults(func=_delegate("trace.replay_cli", "cli"), mode=None)

    s = sub.add_parser("scenario", help="run a workload preset under a mapping path")
    s.add_argument("preset", nargs="?", help="preset name (omit to list them)")
    s.add_argument("--api", default="iova", help="page | sg | iova | direct")
    s.add_argument("--json", action="store_true")
    s.add_argument("--cost-preset", default=None)
    s.add_argument("--lazy", action="store_true", help="lazy (flush-queue) domain instead of strict")
    s.add_argument("--kernel", choices=("6.17", "7.3"), default=None, help="modelled kernel (default 7.3)")
    s.add_argument("--hz", type=int, default=None, help="CONFIG_HZ of the flush-queue timer (default 250)")
    s.set_defaults(func=_delegate("lab.scenarios", "cli"))

    q = sub.add_parser("quiz", help="seeded exercises with answers computed by the simulator")
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--count", type=int, default=10)
    q.add_argument("--json", action="store_true")
    q.add_argument("--answers", action="store_true")
    q.add_argument("--check", nargs=2, metavar=("ID", "ANSWER"),
                   help="check an answer; ANSWER may start with '-' (e.g. -EINVAL)")
    q.add_argument("--check-id", help=argparse.SUPPRESS)
    q.add_argument("--check-answer", help=argparse.SUPPRESS)
    q.set_defaults(func=_delegate("lab.exercises", "cli"))

    b = sub.add_parser("bench", help="measure the speed budgets on this machine")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--browser", action="store_true",
                   help="only the browser latency: JupyterLab + Chromium, control change -> figure settled")
    b.set_defaults(func=_delegate("cli.bench", "cli"))

    h = sub.add_parser("handout", help="render the executed book to static HTML")
    h.add_argument("--out", default="build/handout")
    h.add_argument("--only", action="append", metavar="NAME[,NAME...]",
                   help="build only these notebooks (names or shell patterns; repeatable)")
    h.add_argument("--notebooks", default=None, metavar="DIR",
                   help="the book's folder (default: notebooks/ of the checkout this package is in)")
    h.set_defaults(func=_delegate("cli.handout", "cli"))

    f = sub.add_parser("fuzz", help="random operation sequences with invariants after every call")
    f.add_argument("--ops", type=int, default=100_000, help="operations in all (default 100000)")
    f.add_argument("--seed", type=int, default=1)
    f.set_defaults(func=_delegate("cli.fuzz", "cli"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_quiz_argv(sys.argv[1:] if argv is None else argv))
    if getattr(args, "check_id", None) is not None:
        args.check = [args.check_id, args.check_answer]
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0


def shown_run(argv: list[str]) -> Terminal:
    """Run ``iovalab ARGV...`` (:func:`main`) and return what it printed as a
    :class:`~iovalab.book.tables.Terminal`, for a notebook cell: the lines keep their width (a wide
    one scrolls) and the exit status is shown."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return Terminal("iovalab " + " ".join(shlex.quote(a) for a in argv), out.getvalue(), status)


if __name__ == "__main__":
    sys.exit(main())
