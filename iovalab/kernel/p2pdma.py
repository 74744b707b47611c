"""PCI peer-to-peer DMA: how a DMA mapping treats a page that is another device's BAR.

Mirrors Linux 7.3.4 ``include/linux/pci-p2pdma.h`` and ``drivers/pci/p2pdma.c``:

* ``enum pci_p2pdma_map_type`` (:data:`PCI_P2PDMA_MAP_UNKNOWN` ... :data:`PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`,
  the kernel's order and values);
* ``struct p2pdma_provider`` (the BAR's owner and ``bus_offset``) with the published BAR range of its
  ``struct pci_p2pdma_pagemap`` (:class:`P2pdmaProvider`), and the per-client cache of map types
  (``pci_p2pdma::map_types``, an xarray keyed by ``map_types_idx(client)``);
* ``calc_map_type_and_dist()``: BUS_ADDR when provider and client share an upstream bridge with no ACS
  redirect on the path, else through the host bridge, which is NOT_SUPPORTED unless the CPU or the host
  bridge is on the allowlist (``cpu_supports_p2pdma()``, ``host_bridge_whitelist()``);
* ``pci_p2pdma_map_type()``, ``__pci_p2pdma_update_state()``, ``pci_p2pdma_state()`` (the state is
  recomputed only when a page of another provider comes by: ``state->mem`` changes) and
  ``pci_p2pdma_bus_addr_map()`` (``paddr + provider->bus_offset``).

What the callers do with the answer (7.3.4): ``PCI_P2PDMA_MAP_BUS_ADDR`` - the device is programmed with
the bus address, nothing is mapped in the IOMMU and nothing is unmapped (block/blk-mq-dma.c:
``blk_dma_map_bus()``, include/linux/blk-mq-dma.h: ``blk_rq_dma_unmap()``, mm/hmm.c:
``hmm_dma_map_pfn()``, drivers/iommu/dma-iommu.c: ``iommu_dma_map_sg()``);
``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`` - an ordinary IOVA / two-step mapping, to which the block layer and
HMM add ``DMA_ATTR_MMIO`` (so ``IOMMU_MMIO`` in the PTE, no CPU cache maintenance, no swiotlb;
``iommu_dma_map_sg()`` maps such a segment with the caller's attrs, regular IOVAs);
``PCI_P2PDMA_MAP_NOT_SUPPORTED`` - an error (``BLK_STS_INVAL`` in the block layer, ``-EREMOTEIO`` in
``iommu_dma_map_sg()``, ``DMA_MAPPING_ERROR`` from ``hmm_dma_map_pfn()``).

The topology is not modelled as a tree of bridges: a provider names one of :data:`TOPOLOGIES`, which
says what ``calc_map_type_and_dist()``'s walk would find between it and every client. The model of
P2P follows 7.3.4 only (:data:`~iovalab.kernel.version.DIFFERENCES` has no 6.17 form of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iovalab.kernel.units import hx

__all__ = [
    "PCI_P2PDMA_MAP_UNKNOWN", "PCI_P2PDMA_MAP_NONE", "PCI_P2PDMA_MAP_NOT_SUPPORTED", "PCI_P2PDMA_MAP_BUS_ADDR",
    "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE", "MAP_TYPE_NAMES", "TOPOLOGIES", "P2pdmaProvider", "P2pdmaPages",
    "PciP2pdmaMapState", "calc_map_type_and_dist", "pci_p2pdma_map_type", "pci_p2pdma_state",
    "pci_p2pdma_bus_addr_map", "p2pdma_from_params",
]

#: ``enum pci_p2pdma_map_type`` (include/linux/pci-p2pdma.h, 7.3.4), same values.
PCI_P2PDMA_MAP_UNKNOWN = 0
PCI_P2PDMA_MAP_NONE = 1
PCI_P2PDMA_MAP_NOT_SUPPORTED = 2
PCI_P2PDMA_MAP_BUS_ADDR = 3
PCI_P2PDMA_MAP_THRU_HOST_BRIDGE = 4

MAP_TYPE_NAMES = {
    PCI_P2PDMA_MAP_UNKNOWN: "PCI_P2PDMA_MAP_UNKNOWN", PCI_P2PDMA_MAP_NONE: "PCI_P2PDMA_MAP_NONE",
    PCI_P2PDMA_MAP_NOT_SUPPORTED: "PCI_P2PDMA_MAP_NOT_SUPPORTED", PCI_P2PDMA_MAP_BUS_ADDR: "PCI_P2PDMA_MAP_BUS_ADDR",
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE: "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE",
}

#: What ``calc_map_type_and_dist()`` finds between provider and client: (share an upstream bridge,
#: an ACS-redirecting bridge on the path, the host bridge or CPU is on the P2P allowlist).
TOPOLOGIES: dict[str, tuple[bool, bool, bool]] = {
    "switch": (True, False, True),                     # both below one PCIe switch: BUS_ADDR
    "switch_acs_redirect": (True, True, True),         # ACS redirect forces the host bridge
    "host_bridge": (False, False, True),               # different root ports, allowlisted host bridge
    "host_bridge_not_allowlisted": (False, False, False),
}


def calc_map_type_and_dist(common_upstream: bool, acs_redirect: bool, host_bridge_allowlisted: bool) -> int:
    """``calc_map_type_and_dist()`` (drivers/pci/p2pdma.c, 7.3.4), on the walk's findings: a common
    upstream bridge and no ACS redirect -> BUS_ADDR; otherwise the transfer goes through the host
    bridge, THRU_HOST_BRIDGE when ``cpu_supports_p2pdma() || host_bridge_whitelist()``, else
    NOT_SUPPORTED. (The distance is not modelled.)"""
    if common_upstream and not acs_redirect:
        return PCI_P2PDMA_MAP_BUS_ADDR
    return PCI_P2PDMA_MAP_THRU_HOST_BRIDGE if host_bridge_allowlisted else PCI_P2PDMA_MAP_NOT_SUPPORTED


@dataclass
class P2pdmaProvider:
    """``struct p2pdma_provider`` (``owner``, ``bus_offset``) plus the BAR range its
    ``pci_p2pdma_add_resource()`` published as ``MEMORY_DEVICE_PCI_P2PDMA`` pages, the topology towards
    every client, and ``pci_p2pdma::map_types`` (the cache ``calc_map_type_and_dist()`` fills)."""

    owner: str
    bar_phys: int
    size: int
    bus_offset: int
    topology: str = "switch"
    map_types: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"p2p topology {self.topology!r} is not one of {', '.join(TOPOLOGIES)}")
        if self.size <= 0 or self.bar_phys < 0 or self.bar_phys & 0xFFF or self.size & 0xFFF:
            raise ValueError(f"p2p BAR {hx(self.bar_phys)}+{hx(self.size)}: base and size must be page aligned "
                             "and the size > 0 (pci_p2pdma_add_resource maps whole pages)")
        if self.bus_offset < 0 or self.bar_phys + self.size + self.bus_offset > 1 << 64:
            raise ValueError(f"p2p bus_offset {hx(self.bus_offset)} must be >= 0 and keep bus addresses in u64")

    def contains(self, phys: int) -> bool:
        return self.bar_phys <= phys < self.bar_phys + self.size


class P2pdmaPages:
    """The P2P pages of the simulated machine: ``is_pci_p2pdma_page(page)`` and ``page_pgmap(page)``
    (include/linux/memremap.h) answered from the registered providers' BAR ranges."""

    def __init__(self, providers: list[P2pdmaProvider] | None = None):
        self.providers: list[P2pdmaProvider] = []
        for p in providers or []:
            self.add(p)

    def add(self, p: P2pdmaProvider) -> None:
        for q in self.providers:
            if p.bar_phys < q.bar_phys + q.size and q.bar_phys < p.bar_phys + p.size:
                raise ValueError(f"p2p BAR {hx(p.bar_phys)}+{hx(p.size)} of {p.owner} overlaps "
                                 f"{hx(q.bar_phys)}+{hx(q.size)} of {q.owner}")
        self.providers.append(p)

    def provider_of(self, phys: int) -> P2pdmaProvider | None:
        """The provider whose P2P page holds ``phys`` (None: ``!is_pci_p2pdma_page(page)``)."""
        for p in self.providers:
            if p.contains(phys):
                return p
        return None

    def __bool__(self) -> bool:
        return bool(self.providers)


@dataclass
class PciP2pdmaMapState:
    """``struct pci_p2pdma_map_state`` (include/linux/pci-p2pdma.h, 7.3.4): ``mem`` and ``map``.
    Zeroed (``mem`` None, ``map`` UNKNOWN) as ``memset(&iter->p2pdma, 0, ...)`` leaves it."""

    mem: P2pdmaProvider | None = None
    map: int = PCI_P2PDMA_MAP_UNKNOWN


def pci_p2pdma_map_type(provider: P2pdmaProvider, client: str, client_is_pci: bool = True) -> int:
    """``pci_p2pdma_map_type(provider, dev)`` (drivers/pci/p2pdma.c, 7.3.4): NOT_SUPPORTED for a non-PCI
    client, else the cached type for this client or ``calc_map_type_and_dist()`` (which caches it)."""
    if not client_is_pci:
        return PCI_P2PDMA_MAP_NOT_SUPPORTED
    t = provider.map_types.get(client, PCI_P2PDMA_MAP_UNKNOWN)
    if t == PCI_P2PDMA_MAP_UNKNOWN:
        t = calc_map_type_and_dist(*TOPOLOGIES[provider.topology])
        provider.map_types[client] = t
    return t


def pci_p2pdma_state(state: PciP2pdmaMapState, pages: P2pdmaPages | None, client: str, phys: int,
                     client_is_pci: bool = True) -> int:
    """``pci_p2pdma_state(state, dev, page)`` (include/linux/pci-p2pdma.h, 7.3.4): NONE for an ordinary
    page; for a P2P page ``__pci_p2pdma_update_state()`` (drivers/pci/p2pdma.c) recomputes ``state->map``
    only when the page belongs to another provider than ``state->mem``, and the map type is returned."""
    prov = pages.provider_of(phys) if pages else None
    if prov is None:
        return PCI_P2PDMA_MAP_NONE
    if state.mem is not prov:
        state.mem = prov
        state.map = pci_p2pdma_map_type(prov, client, client_is_pci)
    return state.map


def pci_p2pdma_bus_addr_map(provider: P2pdmaProvider, paddr: int) -> int:
    """``pci_p2pdma_bus_addr_map(provider, paddr)`` (include/linux/pci-p2pdma.h, 7.3.4): the PCI bus
    address of a P2P page, ``paddr + provider->bus_offset``."""
    return paddr + provider.bus_offset


def p2pdma_from_params(spec: object) -> P2pdmaPages:
    """The providers a scenario's ``p2p`` parameter describes: an object (or a list of them) with
    ``owner`` (``dev_name``), ``bar`` (CPU physical base of the published BAR range), ``size``,
    ``bus_offset`` (default 0) and ``topology`` (one of :data:`TOPOLOGIES`, default ``"switch"``).
    Numbers as ints or strings (``"0x..."``, ``"4K"`` is not accepted here). ValueError names the rule."""
    if spec is None:
        return P2pdmaPages()
    items = spec if isinstance(spec, list) else [spec]
    out = P2pdmaPages()
    for i, s in enumerate(items):
        if not isinstance(s, dict):
            raise ValueError(f"p2p[{i}] = {s!r} must be an object with owner, bar, size, bus_offset, topology")
        unknown = sorted(set(s) - {"owner", "bar", "size", "bus_offset", "topology"})
        if unknown:
            raise ValueError(f"p2p[{i}]: unknown key(s) {unknown}; known: owner, bar, size, bus_offset, topology")
        out.add(P2pdmaProvider(str(s.get("owner", f"p2p{i}")), _num(s, i, "bar"), _num(s, i, "size"),
                               _num(s, i, "bus_offset", 0), str(s.get("topology", "switch"))))
    return out


def _num(s: dict, i: int, key: str, default: int | None = None) -> int:
    v = s.get(key, default)
    if isinstance(v, str):
        try:
            v = int(v, 0)
        except ValueError:
            raise ValueError(f"p2p[{i}].{key} = {v!r} is not an integer") from None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"p2p[{i}].{key} = {v!r} must be a non-negative integer")
    return v
