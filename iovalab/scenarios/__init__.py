"""Driver workloads that drive the DMA layer: NVMe (:mod:`.nvme`), HMM (:mod:`.hmm`), VFIO mlx5 (:mod:`.vfio`).

No single kernel file: each scenario module names the driver code it mirrors. A scenario is a
*driver*: it calls only the DMA layer's public entry points (``dma_map_page``, ``dma_map_sg``,
``dma_iova_*`` of :class:`~iovalab.dma.DmaDomain`), never the IOVA allocator or the page tables, and
every kernel-visible step lands in the run's one event log (``result.log``, the domain's ``log``).

Entry points:

* :func:`run_scenario` - run a preset (name from ``data/scenarios/NAME.json`` or a dict) under one
  mapping path (``api``: ``"page"``, ``"sg"``, ``"iova"``, ``"direct"``) to completion ->
  :class:`~iovalab.scenarios.common.ScenarioResult`.
* :func:`iter_scenario` - the same as a generator of steps for step-through players: one small dict per
  driver-level action (``driver``, ``what``, ``events`` since the previous step, ``counters`` delta,
  plus details); the last step has ``driver == "done"`` and carries ``result``.
* :func:`list_presets`, :func:`load_preset`, :func:`valid_apis`, and :func:`cli` for
  ``python -m iovalab scenario``.

The modelled cost (``result.modelled``) comes from :mod:`iovalab.cost` and is MODELLED, not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator
from pathlib import Path

from . import hmm, nvme, vfio
from .common import APIS, ScenarioContext, ScenarioResult, Step

__all__ = [
    "APIS", "SCENARIOS", "ScenarioResult", "presets_dir", "list_presets", "load_preset", "valid_apis",
    "iter_scenario", "run_scenario", "cli", "COUNTER_KEYS",
]

#: scenario name -> module (each has ``APIS``, ``iter_steps(ctx)``, ``run(ctx, cost_preset)``)
SCENARIOS = {"nvme": nvme, "hmm": hmm, "vfio": vfio}
_DEFAULT_DEVICE = {"nvme": "nvme", "hmm": "mlx5", "vfio": "mlx5"}

#: keys the CLI prints (``--json``: one object with these plus ``modelled_ns``)
COUNTER_KEYS = ("iova_allocs", "iova_frees", "rcache_hits", "iommu_map_calls", "pte_writes", "table_pages",
                "iotlb_syncs", "iotlb_invalidations", "swiotlb_bounces", "dma_api_calls", "bookkeeping_bytes")


def presets_dir() -> Path:
    """``<repo>/data/scenarios``."""
    return Path(__file__).resolve().parent.parent.parent / "data" / "scenarios"


def list_presets() -> list[str]:
    """Names of the presets in ``data/scenarios/*.json``, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_preset(name: str) -> dict:
    """``data/scenarios/NAME.json`` as a dict; ValueError naming the known presets if it is missing."""
    path = presets_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no scenario preset {name!r}; known: {', '.join(list_presets())}")
    with path.open(encoding="utf-8") as f:
        preset = json.load(f)
    _check_preset(preset, str(path))
    return preset


def _check_preset(preset: dict, where: str) -> None:
    if not isinstance(preset, dict):
        raise ValueError(f"{where}: a preset must be a JSON object")
    sc = preset.get("scenario")
    if sc not in SCENARIOS:
        raise ValueError(f"{where}: scenario {sc!r} is not one of {', '.join(SCENARIOS)}")
    if not isinstance(preset.get("parameters", {}), dict):
        raise ValueError(f"{where}: 'parameters' must be an object")


def valid_apis(preset: str | dict) -> tuple[str, ...]:
    """The mapping paths a preset's scenario accepts."""
    p = load_preset(preset) if isinstance(preset, str) else preset
    _check_preset(p, p.get("name", "<preset>") if isinstance(p, dict) else "<preset>")
    return SCENARIOS[p["scenario"]].APIS


def _context(preset: str | dict, api: str, strict: bool, keep_events: bool, fine: bool) -> ScenarioContext:
    p = load_preset(preset) if isinstance(preset, str) else preset
    _check_preset(p, p.get("name", "<preset>"))
    mod = SCENARIOS[p["scenario"]]
    if api not in mod.APIS:
        raise ValueError(f"api {api!r} does not apply to the {p['scenario']} scenario "
                         f"(preset {p.get('name', '<dict>')!r}); valid: {', '.join(mod.APIS)}")
    return ScenarioContext(p, api, strict=strict, keep_events=keep_events, fine=fine,
                           default_device=_DEFAULT_DEVICE[p["scenario"]])


def iter_scenario(preset: str | dict, api: str = "iova", strict: bool = True, keep_events: bool = True,
                  cost_preset: str | None = None, fine: bool = True) -> Generator[Step, None, ScenarioResult]:
    """Step-by-step run of a preset: yields one step dict per driver-level action; the last step has
    ``driver == "done"`` and ``result`` (the :class:`ScenarioResult`, also the generator's return value).

    ``fine=False`` yields only per-phase steps (faster for large workloads). Arguments as
    :func:`run_scenario`.
    """
    ctx = _context(preset, api, strict, keep_events, fine)
    mod = SCENARIOS[ctx.preset["scenario"]]
    yield from mod.iter_steps(ctx)
    result = ctx.finish(cost_preset)
    ctx._driver = "done"
    yield ctx.step(f"done: {result.counters.iova_allocs} IOVA alloc(s), {result.counters.iommu_map_calls} map "
                   f"call(s), {result.counters.iotlb_syncs} sync(s), {result.counters.iotlb_invalidations} "
                   f"invalidation(s); bookkeeping {result.bookkeeping_bytes} B", result=result)
    return result


def run_scenario(preset: str | dict, api: str = "iova", strict: bool = True, keep_events: bool = True,
                 cost_preset: str | None = None) -> ScenarioResult:
    """Run a preset to completion under one mapping path.

    :param preset: a name from :func:`list_presets` or a preset dict (same shape as the JSON files).
    :param api: ``"page"`` | ``"sg"`` | ``"iova"`` | ``"direct"`` (see :func:`valid_apis`); a value the
        scenario does not support raises ValueError naming the valid ones.
    :param strict: strict (``IOMMU_DOMAIN_DMA``) or lazy (``DMA_FQ``) domain.
    :param keep_events: keep every event (False: tallies only, for large workloads).
    :param cost_preset: one cost-model preset for ``result.modelled`` (default: all of them).
    """
    ctx = _context(preset, api, strict, keep_events, fine=False)
    return SCENARIOS[ctx.preset["scenario"]].run(ctx, cost_preset)


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
                           cost_preset=args.cost_preset)
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
    print(f"scenario {res.name} ({preset['scenario']}), api={res.api}, {mode}")
    for k in COUNTER_KEYS:
        print(f"  {k:<22} {summary[k]:>14,}")
    if res.modelled:
        print("modelled time (MODELLED from data/cost-model.csv, not measured):")
        for p, b in res.modelled.items():
            print(f"  {p:<22} {b['total']:>14,.1f} ns modelled")
    for n in res.notes:
        print(f"note: {n}")
    return 0
