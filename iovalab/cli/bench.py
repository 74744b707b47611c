"""``python -m iovalab bench``: measure the speed budgets on this machine.

No kernel analogue. Every figure is measured here, now, with wall-clock time (``time.perf_counter``),
best of several runs where noted; large workloads run in a child process so that their peak memory
(``ru_maxrss``) is their own. Budgets (from the project's speed issue):

=========================  ==========================================================  ===========
key                        what                                                        budget
=========================  ==========================================================  ===========
alloc_op_us                pre-parsed ops of iova-4k.jsonl, results compared, best/5   <= 3 us
trace_replay_us_per_op     the same with JSON parsing and state checks included        (reported)
alloc_fast_free_fast_us    a warm rcache alloc_iova_fast + free_iova_fast pair         (reported)
model_page_request_us      dma_map_page + dma_unmap_page of one 4 KiB page on the       (reported)
                           replay's VT-d domain, events kept, strict, 6.17, best/5
model_two_step_request_us  dma_iova_try_alloc + 4 dma_iova_link + dma_iova_sync +       (reported)
                           dma_iova_destroy, the same domain; ``_73`` keys: kernel 7.3
hmm_1gib_s / 4 / 16        hmm-1gib-random end to end, and its 4 and 16 GiB versions   1 GiB <= 1 s
hmm_16gib_peak_mb          peak RSS of the 16 GiB run (its own process)                < 1000 MB
real_trace_replay_s        replay-ftrace data/real/strict-smp1.trace                   <= 2 s
replay_lines_per_s         parse + replay (allocations and every line) of a capture of  >= 100,000
                           1,000,000 lines exported from a simulated run, own process
replay_peak_mb             peak RSS of that replay (its own process)                   (reported)
widget_redraw_ms_p50/p95   50 headless control changes per widget, worst widget        p95 <= 50 ms
book_exec_s                every notebook executed in a fresh kernel                   <= 60 s
browser_settle_ms_p50/p95  ``--browser`` only: JupyterLab + Chromium, 30 changes per     p95 <= 150 ms
                           widget, change -> image and text settled, worst widget
=========================  ==========================================================  ===========
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from iovalab.resources import data_file

__all__ = ["BUDGETS", "run_bench", "cli"]

ROOT = Path(__file__).resolve().parents[2]    # a checkout's top level (the book's notebooks/), if any

#: key -> (budget, comparison) ; "le" means the value must be <= budget
BUDGETS = {
    "alloc_op_us": (3.0, "le"),
    "hmm_1gib_s": (1.0, "le"),
    "hmm_16gib_peak_mb": (1000.0, "lt"),
    "real_trace_replay_s": (2.0, "le"),
    "replay_lines_per_s": (100_000.0, "ge"),
    "widget_redraw_ms_p95": (50.0, "le"),
    "book_exec_s": (60.0, "le"),
}


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
def bench_alloc(repeat: int = 5) -> dict:
    """Allocator replay of iova-4k.jsonl: pre-parsed (ops as tuples) and with parsing."""
    from iovalab.kernel.iova import IovaDomain
    from iovalab.kernel.events import EventLog
    from iovalab.trace.reference import check_trace, read_trace

    path = data_file("kernel-traces", "iova-4k.jsonl")
    lines = read_trace(path)
    header = lines[0][1]
    ops = []
    for _, o in lines[1:]:
        k = o["op"]
        if k == "alloc":
            ops.append((0, o["size"], o["limit_pfn"], o["size_aligned"], o["expect"]))
        elif k == "alloc_fast":
            ops.append((1, o["size"], o["limit_pfn"], True, o["expect"]))
        elif k == "free":
            ops.append((2, o["pfn"], 0, 0, None))
        elif k == "free_fast":
            ops.append((3, o["pfn"], o["size"], 0, None))
        elif k == "reserve":
            ops.append((4, o["pfn_lo"], o["pfn_hi"], 0, None))
    best = float("inf")
    for _ in range(repeat):
        dom = IovaDomain(header["granule"], header["start_pfn"], log=EventLog(keep=False))
        alloc, fast = dom.alloc_iova, dom.alloc_iova_fast
        free, free_fast, reserve = dom.free_iova, dom.free_iova_fast, dom.reserve_iova
        bad = 0
        t = time.perf_counter()
        for k, a, b, c, exp in ops:
            if k == 1:
                bad += fast(a, b, c) != exp
            elif k == 0:
                node = alloc(a, b, c)
                bad += (node.pfn_lo if node else None) != exp
            elif k == 3:
                free_fast(a, b)
            elif k == 2:
                free(a)
            else:
                reserve(a, b)
        best = min(best, time.perf_counter() - t)
        if bad:
            raise RuntimeError(f"allocator replay: {bad} mismatches")
    t = time.perf_counter()
    res = check_trace(path)
    with_parse = time.perf_counter() - t
    # warm rcache pair
    dom = IovaDomain(0x1000, 1, log=EventLog(keep=False))
    p = dom.alloc_iova_fast(1, 0xFFFFF)
    dom.free_iova_fast(p, 1)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        dom.free_iova_fast(dom.alloc_iova_fast(1, 0xFFFFF), 1)
    pair = (time.perf_counter() - t) / n
    return {"alloc_op_us": round(best / len(ops) * 1e6, 3),
            "alloc_ops": len(ops),
            "trace_replay_us_per_op": round(with_parse / res.ops * 1e6, 3),
            "alloc_fast_free_fast_us": round(pair * 1e6, 3)}


def bench_model(repeat: int = 5, n: int = 2000) -> dict:
    """The model's DMA API per request, as a line-level replay drives it (``check_lines``): the VT-d
    domain of a replayed capture (:meth:`iovalab.trace.system.SystemConfig.make_domain`, 4 KiB granule,
    the x86 MSI window reserved), strict, an event log that keeps events, cleared after each request."""
    from iovalab.kernel.device import DMA_TO_DEVICE, Device
    from iovalab.kernel.dma_iova import DmaIovaState
    from iovalab.kernel.events import EventLog
    from iovalab.kernel.units import DMA_BIT_MASK
    from iovalab.trace.system import SystemConfig

    out = {}
    for kernel, suffix in (("6.17", ""), ("7.3", "_73")):
        log = EventLog(keep=True)
        dom = SystemConfig(kernel=kernel, reserve=[(0xFEE00000, 0xFEEFFFFF)]).make_domain(strict=True, ncpus=1,
                                                                                           log=log)
        dev = Device(name="0000:00:01.0", dma_mask=DMA_BIT_MASK(64), is_pci=True)
        page = two = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            for i in range(n):
                addr = dom.dma_map_page(dev, 0x100000 + (i % 64) * 0x1000, 0x1000, DMA_TO_DEVICE)
                dom.dma_unmap_page(dev, addr, 0x1000, DMA_TO_DEVICE)
                log.clear()
            page = min(page, time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(n):
                state = DmaIovaState()
                phys = 0x200000 + (i % 8) * 0x10000
                dom.dma_iova_try_alloc(dev, state, phys, 0x4000)
                for k in range(4):
                    dom.dma_iova_link(dev, state, phys + k * 0x1000, k * 0x1000, 0x1000)
                dom.dma_iova_sync(dev, state, 0, 0x4000)
                dom.dma_iova_destroy(dev, state, 0x4000)
                log.clear()
            two = min(two, time.perf_counter() - t)
        out[f"model_page_request_us{suffix}"] = round(page / n * 1e6, 2)
        out[f"model_two_step_request_us{suffix}"] = round(two / n * 1e6, 2)
    return out


def _hmm_child(gib: int) -> dict:
    """Run in a child: the hmm-1gib-random preset scaled to ``gib`` GiB, end to end."""
    from iovalab.lab.scenarios import load_preset, run_scenario

    preset = load_preset("hmm-1gib-random")
    preset = json.loads(json.dumps(preset))
    params = preset.setdefault("parameters", {})
    for key in ("npages", "pages", "nr_pages"):
        if key in params:
            params[key] = params[key] * gib
            break
    else:
        params["npages"] = 262144 * gib
    t = time.perf_counter()
    res = run_scenario(preset, api="iova", keep_events=False)
    dt = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": dt, "peak_mb": peak_kb / 1024, "iova_allocs": res.counters.iova_allocs,
            "pte_writes": res.counters.pte_writes}


def _replay_child(path: str) -> dict:
    """Run in a child: parse and replay (``lines=True``, as ``replay-ftrace`` does) one capture."""
    from iovalab.trace.replay import replay_file

    t = time.perf_counter()
    res = replay_file(path, lines=True)      # what replay-ftrace runs: a stream, allocations and every line
    dt = time.perf_counter() - t
    assert res.lines is not None
    return {"seconds": dt, "lines": res.nr_lines, "mismatched": res.mismatched, "differ": res.lines.differ,
            "passes": res.passes, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_big_replay(lines: int = 1_000_000) -> dict:
    """``replay_lines_per_s`` / ``replay_peak_mb``: a capture of ``lines`` lines exported from a
    simulated run (:func:`iovalab.trace.bigtrace.write_sim_capture`, one range in three kept live),
    replayed in its own process."""
    import tempfile

    from iovalab.trace.bigtrace import write_sim_capture

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sim.trace")
        _progress(f"writing a {lines:,}-line capture of a simulated run")
        write_sim_capture(path, lines, keep_every=3)
        _progress("replaying it (own process)")
        p = subprocess.run([sys.executable, "-c", f"import json; from iovalab.cli.bench import _replay_child; "
                            f"print(json.dumps(_replay_child({path!r})))"], capture_output=True, text=True)
    if p.returncode:
        return {"replay_lines_per_s": None, "replay_error": p.stderr.strip().splitlines()[-1:] or ["failed"]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"replay_lines_per_s": round(r["lines"] / r["seconds"]), "replay_peak_mb": round(r["peak_mb"], 1),
            "replay_capture_lines": r["lines"], "replay_capture_differ": r["differ"] + r["mismatched"]}


def bench_hmm(sizes=(1, 4, 16)) -> dict:
    out: dict[str, object] = {}
    for gib in sizes:
        _progress(f"hmm-1gib-random scaled to {gib} GiB (own process)")
        p = subprocess.run([sys.executable, "-c",
                            f"import json; from iovalab.cli.bench import _hmm_child; "
                            f"print(json.dumps(_hmm_child({gib})))"],
                           capture_output=True, text=True)
        if p.returncode:
            out[f"hmm_{gib}gib_s"] = None
            out[f"hmm_{gib}gib_error"] = p.stderr.strip().splitlines()[-1:] or ["failed"]
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out[f"hmm_{gib}gib_s"] = round(r["seconds"], 3)
        out[f"hmm_{gib}gib_peak_mb"] = round(r["peak_mb"], 1)
    return out


def bench_real_trace() -> dict:
    from iovalab.trace.ftrace import parse_ftrace
    from iovalab.trace.replay import replay_capture

    path = data_file("real", "strict-smp1.trace")
    t = time.perf_counter()
    res = replay_capture(parse_ftrace(path), path=str(path))
    dt = time.perf_counter() - t
    return {"real_trace_replay_s": round(dt, 3), "real_trace_matched": res.matched,
            "real_trace_allocations": res.allocations}


def bench_widgets(changes: int = 50) -> dict:
    """Drive every widget headlessly: ``changes`` control changes each, redraw included (Agg)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from iovalab.book import widgets
    except ImportError as e:
        return {"widget_redraw_ms_p50": None, "widget_error": str(e)}
    cases = getattr(widgets, "bench_cases", None)
    if cases is None:
        return {"widget_redraw_ms_p50": None, "widget_error": "widgets.bench_cases() missing"}
    worst: tuple[float, float, str] | None = None
    per = {}
    for name, make, changer in cases():
        w = make()
        times = []
        for i in range(changes):
            t = time.perf_counter()
            changer(w, i)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p50 = statistics.median(times)
        p95 = times[max(0, int(round(0.95 * len(times))) - 1)]
        per[name] = (round(p50, 2), round(p95, 2))
        if worst is None or p95 > worst[1]:
            worst = (p50, p95, name)
    if worst is None:
        return {"widget_redraw_ms_p50": None, "widget_error": "widgets.bench_cases() is empty"}
    return {"widget_redraw_ms_p50": round(worst[0], 2), "widget_redraw_ms_p95": round(worst[1], 2),
            "widget_worst": worst[2], "widget_each_ms_p50_p95": per}


def bench_book() -> dict:
    import nbformat
    from nbclient import NotebookClient

    total = 0.0
    each = {}
    if not (ROOT / "notebooks").is_dir():
        raise FileNotFoundError(f"{ROOT / 'notebooks'}: the book is not in this installation (bench --book "
                                "runs from a checkout)")
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        _progress(f"executing {nb_path.name}")
        nb = nbformat.read(nb_path, as_version=4)
        t = time.perf_counter()
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
        dt = time.perf_counter() - t
        each[nb_path.stem] = round(dt, 2)
        total += dt
    return {"book_exec_s": round(total, 2), "book_each_s": each}


def run_bench(quick: bool = False) -> dict:
    out: dict = {"machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()}}
    _progress("allocator trace replay")
    out.update(bench_alloc())
    _progress("model DMA API per request")
    out.update(bench_model())
    out.update(bench_hmm((1, 4) if quick else (1, 4, 16)))
    if quick:
        out["hmm_16gib_s"] = None
        out["hmm_16gib_peak_mb"] = None
    _progress("real ftrace capture replay")
    out.update(bench_real_trace())
    out.update(bench_big_replay(200_000 if quick else 1_000_000))
    _progress("widget redraws")
    out.update(bench_widgets(20 if quick else 50))
    if quick:
        out["book_exec_s"] = None
    else:
        out.update(bench_book())
    verdicts = {}
    for key, (budget, how) in BUDGETS.items():
        v = out.get(key)
        verdicts[key] = None if v is None else (v <= budget if how == "le" else v >= budget if how == "ge"
                                                else v < budget)
    g1, g4, g16 = out.get("hmm_1gib_s"), out.get("hmm_4gib_s"), out.get("hmm_16gib_s")
    if g1 and g4:
        out["hmm_growth_4x"] = round(g4 / g1, 2)
    if g1 and g16:
        out["hmm_growth_16x"] = round(g16 / g1, 2)
    out["budgets_hold"] = verdicts
    return out


def cli(args) -> int:
    if getattr(args, "browser", False):
        from iovalab.cli.bench_browser import BUDGET_P95_MS, bench_browser

        out = bench_browser(progress=_progress)
        out["budgets_hold"] = {"browser_settle_ms_p95": out["browser_settle_ms_p95"] <= BUDGET_P95_MS}
        BUDGETS.setdefault("browser_settle_ms_p95", (BUDGET_P95_MS, "le"))
    else:
        out = run_bench(quick=args.quick)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'measure':<28} {'value':>12}  budget")
    for key, v in out.items():
        if key in ("budgets_hold", "machine") or isinstance(v, dict):
            continue
        b = BUDGETS.get(key)
        verdict = ""
        if b and v is not None:
            ok = out["budgets_hold"][key]
            verdict = f"{'<=' if b[1] == 'le' else '<'} {b[0]:g}  {'holds' if ok else 'MISSED'}"
        print(f"{key:<28} {('-' if v is None else v)!s:>12}  {verdict}")
    return 0
