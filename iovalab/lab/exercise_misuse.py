"""Quiz kinds of the misuse family: what each IOMMU driver's own page-table code does when a driver maps
over a mapped range or unmaps over a hole (Linux 6.17, ``DmaDomain(follow_kernel=True)``).

No kernel analogue; the answers come from the simulated ``iommu_map``/``iommu_unmap`` (citations:
``drivers/iommu/intel/iommu.c`` ``__domain_mapping``/``intel_iommu_unmap``,
``drivers/iommu/amd/io_pgtable.c`` ``iommu_v1_map_pages``/``iommu_v1_unmap_pages``,
``drivers/iommu/io-pgtable-arm.c`` ``arm_lpae_init_pte``/``__arm_lpae_unmap``).
"""

from __future__ import annotations

import random
from typing import Any

from iovalab.kernel.dma_iommu import DmaDomain
from iovalab.kernel.units import hx
from iovalab.lab.exercise_base import Kind

__all__ = ["KINDS"]

_MISUSE_PRESETS = {"VT-d": "intel-vtd", "AMD v1": "amd-v1", "ARM LPAE (SMMUv3, 4K)": "smmuv3-4k"}


def _gen_misuse(rng: random.Random) -> dict:
    base = rng.randrange(0x10, 0x1000) * 0x10000
    n = rng.randrange(3, 9)
    return dict(driver=rng.choice(list(_MISUSE_PRESETS)), iova=base, pages=n, at=rng.randrange(1, n - 1),
                old=rng.randrange(0x100, 0x1000) * 0x10000, new=rng.randrange(0x1000, 0x2000) * 0x10000)


def _misuse_domain(p: dict):
    return DmaDomain(_MISUSE_PRESETS[p["driver"]], follow_kernel=True, kernel="6.17").iommu


def _q_misuse_map(p: dict) -> str:
    return (f"Under {p['driver']} (Linux 6.17), IOVA {hx(p['iova'] + p['at'] * 0x1000)} is already mapped (4 KiB, "
            f"to {hx(p['old'])}). A driver calls iommu_map(domain, {hx(p['iova'])}, {hx(p['new'])}, "
            f"{hx(p['pages'] * 0x1000)}, IOMMU_READ|IOMMU_WRITE) without unmapping first. What does iommu_map "
            "return (0 or -ERRNO)?")


def _solve_misuse_map(p: dict) -> tuple[Any, list[str]]:
    d = _misuse_domain(p)
    d.iommu_map(p["iova"] + p["at"] * 0x1000, p["old"], 0x1000, 3)
    ret = d.iommu_map(p["iova"], p["new"], p["pages"] * 0x1000, 3)
    said = [f"{e.func}: {e.args.get('rule', '')}" for e in d.log.of_kind("warn", "error") if e.layer == "pgtable"]
    at = p["iova"] + p["at"] * 0x1000
    phys = d.iommu_iova_to_phys(at)
    return ret, said + [f"the page table now maps {hx(at)} to {hx(phys) if phys else 'nothing'}"
                        " [intel/iommu.c __domain_mapping; amd/io_pgtable.c iommu_v1_map_pages; io-pgtable-arm.c "
                        "arm_lpae_init_pte]"]


def _q_misuse_unmap(p: dict) -> str:
    size, hole = hx(p["pages"] * 0x1000), hx(p["iova"] + p["at"] * 0x1000)
    return (f"Under {p['driver']} (Linux 6.17) a driver calls iommu_map(domain, {hx(p['iova'])}, {hx(p['old'])}, "
            f"{size}, IOMMU_READ|IOMMU_WRITE), then iommu_unmap(domain, {hole}, 0x1000), then "
            f"iommu_unmap(domain, {hx(p['iova'])}, {size}). How many bytes does the last call return?")


def _solve_misuse_unmap(p: dict) -> tuple[Any, list[str]]:
    d = _misuse_domain(p)
    d.iommu_map(p["iova"], p["old"], p["pages"] * 0x1000, 3)
    d.iommu_unmap(p["iova"] + p["at"] * 0x1000, 0x1000)
    mark = len(d.log.events)
    got = d.iommu_unmap(p["iova"], p["pages"] * 0x1000)
    warns = [f"WARN {e.func}: {e.args['rule']}" for e in d.log.events[mark:] if e.kind == "warn"]
    return got, (warns or ["no WARN fires"]) + [
        f"still mapped after it: {hx(sum(r[2] for r in d.pgtable.mapped_ranges()))} bytes "
        "[intel/iommu.c intel_iommu_unmap; amd/io_pgtable.c iommu_v1_unmap_pages; io-pgtable-arm.c __arm_lpae_unmap]"]


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("misuse_map", "Mapping over a mapped range", "errno", _gen_misuse, _q_misuse_map, _solve_misuse_map),
    Kind("misuse_unmap", "Unmapping over a hole", "hex", _gen_misuse, _q_misuse_unmap, _solve_misuse_unmap),
]}
