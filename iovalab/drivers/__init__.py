"""The DMA API's users: NVMe (:mod:`.nvme_pci`, over the block layer's :mod:`.blk_mq_dma`), HMM (:mod:`.hmm`,
``mm/hmm.c``) and VFIO mlx5 live migration (:mod:`.vfio_mlx5`).

A driver calls only the DMA layer's public entry points (``dma_map_page``, ``dma_map_sg``, ``dma_iova_*``
of :class:`~iovalab.kernel.dma_iommu.DmaDomain`), never the IOVA allocator or the page tables, and every
kernel-visible step lands in the run's one event log. Drivers produce *counts*; the lab layer
(:mod:`iovalab.lab.scenarios`) turns counts into modelled time.

Entry points: :func:`list_presets`, :func:`load_preset` (the bundled workload presets),
:func:`valid_apis`, :func:`iter_workload` (a generator of steps for players) and :func:`run_workload`.
"""

from __future__ import annotations

import json
from collections.abc import Generator

from iovalab.drivers import hmm, nvme_pci, vfio_mlx5
from iovalab.drivers.common import APIS, ScenarioContext, ScenarioResult, Step
from iovalab.resources import data_dir

__all__ = [
    "APIS", "SCENARIOS", "ScenarioResult", "list_presets", "load_preset", "check_preset", "valid_apis",
    "iter_workload", "run_workload",
]

#: scenario name -> driver module (each has ``APIS``, ``iter_steps(ctx)``, ``run(ctx)``)
SCENARIOS = {"nvme": nvme_pci, "hmm": hmm, "vfio": vfio_mlx5}
_DEFAULT_DEVICE = {"nvme": "nvme", "hmm": "mlx5", "vfio": "mlx5"}


def list_presets() -> list[str]:
    """Names of the bundled presets (``iovalab/data/scenarios/*.json``), sorted."""
    return sorted(c.name[:-5] for c in data_dir("scenarios").iterdir() if c.name.endswith(".json"))


def load_preset(name: str) -> dict:
    """The bundled preset ``NAME`` as a dict; ValueError naming the known presets if it is missing."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"preset {name!r} is not a preset name; known: {', '.join(list_presets())}")
    node = data_dir("scenarios", f"{name}.json")
    if not node.is_file():
        raise ValueError(f"no scenario preset {name!r}; known: {', '.join(list_presets())}")
    with node.open(encoding="utf-8") as f:
        preset = json.load(f)
    check_preset(preset, f"preset {name!r}")
    return preset


def check_preset(preset: object, where: str) -> None:
    """ValueError naming ``where`` unless ``preset`` is an object naming a known scenario."""
    if not isinstance(preset, dict):
        raise ValueError(f"{where}: a preset must be a JSON object")
    sc = preset.get("scenario")
    if not isinstance(sc, str) or sc not in SCENARIOS:
        raise ValueError(f"{where}: scenario {sc!r} is not one of {', '.join(SCENARIOS)}")
    if not isinstance(preset.get("parameters", {}), dict):
        raise ValueError(f"{where}: 'parameters' must be an object")


def valid_apis(preset: str | dict) -> tuple[str, ...]:
    """The mapping paths a preset's scenario accepts."""
    p = load_preset(preset) if isinstance(preset, str) else preset
    check_preset(p, p.get("name", "<preset>") if isinstance(p, dict) else "<preset>")
    return SCENARIOS[p["scenario"]].APIS


def _context(preset: str | dict, api: str, strict: bool, keep_events: bool, fine: bool) -> ScenarioContext:
    p = load_preset(preset) if isinstance(preset, str) else preset
    check_preset(p, p.get("name", "<preset>") if isinstance(p, dict) else "<preset>")
    mod = SCENARIOS[p["scenario"]]
    if api not in mod.APIS:
        raise ValueError(f"api {api!r} does not apply to the {p['scenario']} scenario "
                         f"(preset {p.get('name', '<dict>')!r}); valid: {', '.join(mod.APIS)}")
    return ScenarioContext(p, api, strict=strict, keep_events=keep_events, fine=fine,
                           default_device=_DEFAULT_DEVICE[p["scenario"]])


def iter_workload(preset: str | dict, api: str = "iova", strict: bool = True, keep_events: bool = True,
                  fine: bool = True) -> Generator[Step, None, ScenarioResult]:
    """Step-by-step run of a preset: one step dict per driver-level action; the last step has
    ``driver == "done"`` and ``result`` (the :class:`ScenarioResult`, also the generator's return value).
    ``fine=False`` yields only per-phase steps."""
    ctx = _context(preset, api, strict, keep_events, fine)
    mod = SCENARIOS[ctx.preset["scenario"]]
    yield from mod.iter_steps(ctx)
    result = ctx.finish()
    ctx.begin_done()
    yield ctx.step(f"done: {result.counters.iova_allocs} IOVA alloc(s), {result.counters.iommu_map_calls} map "
                   f"call(s), {result.counters.iotlb_syncs} sync(s), {result.counters.iotlb_invalidations} "
                   f"invalidation(s); bookkeeping {result.bookkeeping_bytes} B", result=result)
    return result


def run_workload(preset: str | dict, api: str = "iova", strict: bool = True,
                 keep_events: bool = True) -> ScenarioResult:
    """Run a preset to completion under one mapping path (counts only; no modelled cost)."""
    ctx = _context(preset, api, strict, keep_events, fine=False)
    return SCENARIOS[ctx.preset["scenario"]].run(ctx)
