"""Driver workloads with modelled time: the presets of :mod:`iovalab.drivers` run to completion, their
counters turned into MODELLED time by :mod:`iovalab.lab.cost`, and the ``scenario`` command.

No single kernel file: the drivers (``iovalab.drivers``) model the kernel; this module only adds the lab's
modelled cost (MODELLED, not measured) and the command line.

* :func:`run_scenario` - run a preset (a bundled name or a dict) under one mapping path (``api``:
  ``"page"``, ``"sg"``, ``"iova"``, ``"direct"``) -> :class:`~iovalab.drivers.common.ScenarioResult`
  with ``modelled`` filled in.
* :func:`iter_scenario` - the same as a generator of steps for step-through players.
* :func:`list_presets`, :func:`load_preset`, :func:`valid_apis` (from :mod:`iovalab.drivers`), and
  :func:`cli` for ``iovalab scenario``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator

from iovalab.drivers import APIS, SCENARIOS, iter_workload, list_presets, load_preset, run_workload, valid_apis
from iovalab.drivers.common import ScenarioResult, Step
from iovalab.kernel.events import EventLog
from iovalab.kernel.version import check_hz, check_kernel
from iovalab.lab.cost import CostModelError, load_cost_model

__all__ = [
    "APIS", "SCENARIOS", "ScenarioResult", "list_presets", "load_preset", "valid_apis",
    "iter_scenario", "run_scenario", "modelled_costs", "cli", "COUNTER_KEYS",
]

#: keys the CLI prints (``--json``: one object with these plus ``modelled_ns``)
COUNTER_KEYS = ("iova_allocs", "iova_frees", "rcache_hits", "iommu_map_calls", "pte_writes", "table_pages",
                "iotlb_syncs", "iotlb_invalidations", "swiotlb_bounces", "dma_api_calls", "bookkeeping_bytes")


def modelled_costs(log: EventLog, cost_preset: str | None) -> tuple[dict, list[str]]:
    """``{cost preset: ModelledBreakdown}`` of a run's log (all cost presets, or the one named).

    Returns ``({}, [note])`` when the cost model cannot be read; a bad preset name raises ValueError.
    """
    try:
        model = load_cost_model()
    except (CostModelError, OSError) as e:  # pragma: no cover - depends on the data file
        return {}, [f"modelled cost unavailable: {e}"]
    presets = model.presets if cost_preset is None else (cost_preset,)
    return {p: model.modelled_ns(log, p) for p in presets}, []


def _attach_cost(result: ScenarioResult, cost_preset: str | None) -> ScenarioResult:
    result.modelled, notes = modelled_costs(result.log, cost_preset)
    result.notes.extend(notes)
    return result


def with_kernel(preset: str | dict, kernel: str | None = None, hz: int | None = None) -> str | dict:
    """``preset`` whose IOMMU domain models ``kernel`` (``"6.17"``/``"7.3"``) at ``CONFIG_HZ`` ``hz``
    (None: leave the preset's own, by default 7.3 at HZ=250); bad values raise ValueError."""
    if kernel is None and hz is None:
        return preset
    p = dict(load_preset(preset) if isinstance(preset, str) else preset)
    spec = p.get("iommu") or "intel-vtd"
    spec = dict(spec) if isinstance(spec, dict) else {"preset": spec}
    if kernel is not None:
        spec["kernel"] = check_kernel(kernel)
    if hz is not None:
        spec["hz"] = check_hz(hz)
    p["iommu"] = spec
    return p


def iter_scenario(preset: str | dict, api: str = "iova", strict: bool = True, keep_events: bool = True,
                  cost_preset: str | None = None, fine: bool = True, kernel: str | None = None,
                  hz: int | None = None) -> Generator[Step, None, ScenarioResult]:
    """Step-by-step run of a preset: yields one step dict per driver-level action; the last step has
    ``driver == "done"`` and ``result`` (the :class:`ScenarioResult` with modelled cost, also the generator's
    return value). ``fine=False`` yields only per-phase steps (faster for large workloads). Arguments as
    :func:`run_scenario`.
    """
    gen = iter_workload(with_kernel(preset, kernel, hz), api, strict, keep_events, fine)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if step.get("driver") == "done":
            _attach_cost(step["result"], cost_preset)
        yield step


def run_scenario(preset: str | dict, api: str = "iova", strict: bool = True, keep_events: bool = True,
                 cost_preset: str | None = None, kernel: str | None = None, hz: int | None = None) -> ScenarioResult:
    """Run a preset to completion under one mapping path, with modelled cost.

    :param preset: a name from :func:`list_presets` or a preset dict (same shape as the JSON files).
    :param api: ``"page"`` | ``"sg"`` | ``"iova"`` | ``"direct"`` (see :func:`valid_apis`); a value the
        scenario does not support raises ValueError naming the valid ones.
    :param strict: strict (``IOMMU_DOMAIN_DMA``) or lazy (``DMA_FQ``) domain.
    :param keep_events: keep every event (False: tallies only, for large workloads).
    :param cost_preset: one cost-model preset for ``result.modelled`` (default: all of them).
    :param kernel, hz: the modelled kernel version and ``CONFIG_HZ`` (:func:`with_kernel`).
    """
    return _attach_cost(run_workload(with_kernel(preset, kernel, hz), api, strict, keep_events), cost_preset)


# -------------------------------------------------------------------------------------------- CLI
def cli(args: argparse.Namespace) -> int:
    """``python -m iovalab scenario [PRESET] [--api A] [--json] [--cost-preset P] [--lazy]``."""
    if not args.preset:
        for name in list_presets():
            p = load_preset(name)
            print(f"{name:<28} {p['scenario']:<5} apis: {','.join(valid_apis(p)):<20} {p.get('description', '')}")
        return 0
    try:
        preset = load_preset(args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    apis = valid_apis(preset)
    if args.api not in apis:
        print(f"error: --api {args.api!r} does not apply to scenario {preset['scenario']!r} (preset "
              f"{args.preset!r}); valid values: {', '.join(apis)}", file=sys.stderr)
        return 2
    try:
        res = run_scenario(preset, api=args.api, strict=not args.lazy, keep_events=False,
                           cost_preset=args.cost_preset, kernel=getattr(args, "kernel", None),
                           hz=getattr(args, "hz", None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = res.summary()
    if args.json:
        out = {k: summary[k] for k in ("preset", "scenario", "api", "strict")}
        out.update({k: summary[k] for k in COUNTER_KEYS})
        out["modelled_ns"] = summary["modelled_ns"]
        print(json.dumps(out, sort_keys=False))
        return 0
    mode = "strict" if res.strict else "lazy (flush queue)"
    print(f"scenario {res.name} ({preset['scenario']}), api={res.api}, {mode}, "
          f"kernel {res.domain.kernel if res.domain is not None else '(no IOMMU)'}")
    for k in COUNTER_KEYS:
        print(f"  {k:<22} {summary[k]:>14,}")
    if res.modelled:
        print("modelled time (MODELLED from the bundled cost model, not measured):")
        for p, b in res.modelled.items():
            print(f"  {p:<22} {b['total']:>14,.1f} ns modelled")
    for n in res.notes:
        print(f"note: {n}")
    return 0
