"""iovalab: a kernel-exact simulator of Linux's IOVA-based DMA mapping, and the lab book built on it.

Layers (imports point down only; the README has the module <-> kernel-file table):

* :mod:`iovalab.kernel` - the model, one module per kernel file (``iova.c``, ``iommu.c``, page-table
  formats, ``swiotlb.c``, ``dma-iommu.c``), over the typed event log;
* :mod:`iovalab.drivers` - the DMA API's users (NVMe with ``blk-mq-dma.c``, HMM, VFIO mlx5);
* :mod:`iovalab.trace` - ftrace in and out, replay of real captures, kernel-oracle reference traces;
* :mod:`iovalab.lab` - explanations, claims, exercises, modelled cost;
* :mod:`iovalab.book` - the notebooks' views and widgets; :mod:`iovalab.cli` - the command line.

The names below are the public API, stable across internal moves: import them from ``iovalab``.
"""

from iovalab.drivers.common import ScenarioResult
from iovalab.kernel.device import Device
from iovalab.kernel.dma_iommu import DmaDomain, ScatterEntry
from iovalab.kernel.dma_iova import DmaIovaState
from iovalab.kernel.events import Counters, Event, EventLog
from iovalab.kernel.iommu import IommuDomain
from iovalab.kernel.iova import IovaDomain
from iovalab.kernel.units import DMA_BIT_MASK, DMA_MAPPING_ERROR, DmaError

__version__ = "0.1.0"

__all__ = [
    "Counters", "DMA_BIT_MASK", "DMA_MAPPING_ERROR", "Device", "DmaDomain", "DmaError", "DmaIovaState", "Event",
    "EventLog", "IommuDomain", "IovaDomain", "ScatterEntry", "ScenarioResult", "check", "run_scenario",
    "list_presets", "__version__",
]


def check(*args, **kwargs):
    """Check a claim about dma_iova_try_alloc / dma_map_page / dma_iova_link (see :func:`iovalab.lab.claims.check`)."""
    from iovalab.lab.claims import check as _check
    return _check(*args, **kwargs)


def run_scenario(*args, **kwargs) -> ScenarioResult:
    """Run a workload preset with modelled cost (see :func:`iovalab.lab.scenarios.run_scenario`)."""
    from iovalab.lab.scenarios import run_scenario as _run
    return _run(*args, **kwargs)


def list_presets() -> list[str]:
    """Names of the bundled workload presets (see :func:`iovalab.drivers.list_presets`)."""
    from iovalab.drivers import list_presets as _list
    return _list()
