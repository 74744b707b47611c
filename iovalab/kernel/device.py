"""The device side of the DMA API: ``struct device`` DMA fields and the helpers that read them.

Mirrors: ``include/linux/dma-mapping.h`` (``dma_get_mask``, ``dma_set_mask_and_coherent``,
``dma_get_max_seg_size``, ``dma_get_seg_boundary``, ``dma_get_min_align_mask`` and their setters),
``kernel/dma/mapping.c`` (``dma_set_mask``, ``dma_set_coherent_mask``, ``dma_get_required_mask``,
``dma_addressing_limited``, ``dma_setup_need_sync``), ``include/linux/dma-map-ops.h``
(``dma_kmalloc_safe``, ``dma_kmalloc_size_aligned``, ``dma_kmalloc_needs_bounce``,
``dma_reset_need_sync``), ``drivers/iommu/dma-iommu.c`` (``dev_is_untrusted``,
``dev_use_swiotlb``, the ``pci_32bit_workaround`` set-up in ``iommu_setup_dma_ops``),
``drivers/pci/probe.c`` (``pci_device_add`` defaults) and ``include/linux/dma-direction.h``.

A :class:`Device` is a plain dataclass holding the fields the DMA/IOMMU layers read
(the per-device fields of ``struct device``, ``struct dev_iommu`` and ``struct pci_dev``
that drivers/iommu/dma-iommu.c and kernel/dma/mapping.c consult, 6.17). Everything here assumes the
device sits behind an IOMMU DMA domain (``use_dma_iommu(dev)`` true), which is the only case the
simulator models; where the answer would differ for dma-direct devices the docstring says so.

Model choices (all deliberate, none hides a kernel difference):

* ``forcedac`` is the global boot option ``iommu.forcedac=`` (``iommu_dma_forcedac``) kept per
  device for convenience; ``pci_32bit_workaround = is_pci and not forcedac`` as
  ``iommu_setup_dma_ops()`` sets it. The DMA layer clears it for good after the first failed
  32-bit IOVA attempt (``iommu_dma_alloc_iova``).
* Masks must be ``DMA_BIT_MASK(n)`` for ``1 <= n <= 64`` (``ValueError`` otherwise). The kernel's
  ``dma_set_mask`` only truncates to ``dma_addr_t`` and, for IOMMU-DMA devices, ``dma_supported()``
  accepts any value; the ``2^n - 1`` rule is the simulator's sanity check (every caller in the
  tree passes ``DMA_BIT_MASK(n)``), not a kernel rule.
* ``min_align_mask`` must be 0 or ``2^n - 1`` and ``seg_boundary`` must be ``2^n - 1``: swiotlb's
  slot search ``BUG_ON``\\s a boundary that is not of that form (``iommu_is_span_boundary``).
* Every device has ``dma_parms`` (PCI devices always do; platform devices do since ~5.9), so the
  setters never hit their ``WARN_ON_ONCE(!dev->dma_parms)``.
* ``CONFIG_SWIOTLB`` is taken as enabled (x86-64 and arm64 select it).
* Architecture knobs for the kmalloc bounce heuristic (``CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC``,
  ``ARCH_DMA_MINALIGN``, ``dma_get_cache_alignment()``) are device fields with **x86-64 defaults**:
  the option is not selectable on x86, ``ARCH_DMA_MINALIGN`` falls back to
  ``__alignof__(unsigned long long)`` = 8 (include/linux/cache.h) and ``dma_get_cache_alignment()``
  returns 1 (no ``ARCH_HAS_DMA_MINALIGN``). For a non-coherent arm64 device use
  ``bounce_unaligned_kmalloc=True, arch_dma_minalign=128, dma_cache_alignment=64``
  (arm64 ``ARCH_DMA_MINALIGN`` is 128; its ``dma_get_cache_alignment()`` is ``cache_line_size()``,
  64 on most cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iovalab.kernel.units import DMA_BIT_MASK, PAGE_SIZE, ULONG_MAX, U64_MASK

__all__ = [
    "DMA_BIDIRECTIONAL", "DMA_TO_DEVICE", "DMA_FROM_DEVICE", "DMA_NONE", "DMA_DIR_NAMES", "dma_dir_name",
    "valid_dma_direction",
    "DMA_ATTR_SKIP_CPU_SYNC", "DMA_ATTR_NO_WARN", "DMA_ATTR_PRIVILEGED",
    "U32_MAX", "NVME_CTRL_PAGE_SIZE", "KMALLOC_MIN_SIZE", "kmalloc_size_roundup",
    "Device",
]

# include/linux/dma-direction.h
DMA_BIDIRECTIONAL = 0
DMA_TO_DEVICE = 1
DMA_FROM_DEVICE = 2
DMA_NONE = 3
#: ``__print_symbolic`` names used by the ``dma`` tracepoints (include/trace/events/dma.h).
DMA_DIR_NAMES = {DMA_BIDIRECTIONAL: "BIDIRECTIONAL", DMA_TO_DEVICE: "TO_DEVICE",
                 DMA_FROM_DEVICE: "FROM_DEVICE", DMA_NONE: "NONE"}

# include/linux/dma-mapping.h (attrs bits)
DMA_ATTR_SKIP_CPU_SYNC = 1 << 5
DMA_ATTR_NO_WARN = 1 << 8
DMA_ATTR_PRIVILEGED = 1 << 9

U32_MAX = 0xFFFFFFFF
#: ``NVME_CTRL_PAGE_SIZE`` (drivers/nvme/host/nvme.h).
NVME_CTRL_PAGE_SIZE = 4096
#: ``KMALLOC_MIN_SIZE`` with 8-byte kmalloc alignment (include/linux/slab.h, ``KMALLOC_SHIFT_LOW`` 3).
KMALLOC_MIN_SIZE = 8
#: ``KMALLOC_MAX_CACHE_SIZE`` for SLUB: ``1 << (PAGE_SHIFT + 1)``.
_KMALLOC_MAX_CACHE_SIZE = 2 * PAGE_SIZE


def dma_dir_name(dir: int) -> str:
    """``BIDIRECTIONAL`` / ``TO_DEVICE`` / ``FROM_DEVICE`` / ``NONE`` (ValueError for others)."""
    try:
        return DMA_DIR_NAMES[dir]
    except KeyError:
        raise ValueError(f"dir {dir!r} is not an enum dma_data_direction value (0..3)") from None


def _check_dir(dir: int) -> None:
    dma_dir_name(dir)


def valid_dma_direction(dir: int) -> None:
    """``valid_dma_direction(dir)`` (include/linux/dma-direction.h) as the DMA API entry points use
    it: ``BIDIRECTIONAL``, ``TO_DEVICE`` or ``FROM_DEVICE``; a ValueError naming ``dir`` otherwise."""
    if dir not in DMA_DIR_NAMES or dir == DMA_NONE:
        raise ValueError(f"DMA direction {dir!r} is not one of BIDIRECTIONAL(0), TO_DEVICE(1), "
                         "FROM_DEVICE(2) (valid_dma_direction)")


def kmalloc_size_roundup(size: int) -> int:
    """``kmalloc_size_roundup(size_t size)`` (mm/slab_common.c): the object size kmalloc would use.

    Models the kmalloc caches present when kmalloc alignment is 8 bytes (what arm64 uses once
    ``CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC`` is on and swiotlb is allocated, ``__kmalloc_minalign``):
    8, 16, 32, 64, 96, 128, 192, 256, 512, ... ``KMALLOC_MAX_CACHE_SIZE`` (2 pages, SLUB); larger
    sizes are page allocations, ``PAGE_SIZE << get_order(size)``. ``0`` returns 0 as in the kernel.
    """
    if size < 0:
        raise ValueError(f"size {size} must be >= 0 (size_t)")
    if size == 0:
        return 0
    if size <= _KMALLOC_MAX_CACHE_SIZE:
        if size <= KMALLOC_MIN_SIZE:
            return KMALLOC_MIN_SIZE
        if 64 < size <= 96:
            return 96
        if 128 < size <= 192:
            return 192
        return 1 << (size - 1).bit_length()
    pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    return PAGE_SIZE << (pages - 1).bit_length()


def _is_mask(value: int) -> bool:
    """``value`` is ``2^n - 1`` for some ``n >= 1``."""
    return value > 0 and (value & (value + 1)) == 0


def _check_dma_mask(what: str, mask: object) -> None:
    if not isinstance(mask, int) or isinstance(mask, bool):
        raise ValueError(f"{what} {mask!r} must be an int")
    if not (_is_mask(mask) and mask <= U64_MASK):
        shown = hex(mask) if mask >= 0 else str(mask)
        raise ValueError(f"{what} {shown} is not DMA_BIT_MASK(n) for 1 <= n <= 64 "
                         "(a non-zero mask of the form 2^n - 1, at most 64 bits)")


@dataclass
class Device:
    """The DMA-relevant fields of ``struct device`` / ``struct pci_dev`` / ``struct dev_iommu``.

    :param name: ``dev_name(dev)``, e.g. ``"0000:01:00.0"`` (what tracepoints print).
    :param dma_mask: ``u64 *dma_mask`` (streaming mask), default ``DMA_BIT_MASK(64)``.
    :param coherent_dma_mask: ``u64 coherent_dma_mask``; ``None`` means "same as ``dma_mask``".
    :param bus_dma_limit: ``u64 bus_dma_limit``, highest bus address the interconnect can reach
        (from firmware ``dma-ranges``/``_DMA``); 0 = no limit.
    :param is_pci: ``dev_is_pci(dev)``.
    :param untrusted: ``struct pci_dev::untrusted`` (set by ``set_pcie_untrusted()`` below an
        external-facing port, e.g. Thunderbolt); only PCI devices have it.
    :param coherent: ``dev_is_dma_coherent(dev)`` (``dev->dma_coherent``; always true on x86).
    :param forcedac: ``iommu_dma_forcedac`` (boot option ``iommu.forcedac=1``), see module doc.
    :param min_align_mask: ``dma_parms->min_align_mask`` (``unsigned int``); NVMe sets 4095.
    :param seg_boundary: ``dma_parms->segment_boundary_mask`` (``unsigned long``); ``None`` picks
        the default: ``0xFFFFFFFF`` for PCI (``pci_device_add`` → ``dma_set_seg_boundary``),
        ``ULONG_MAX`` otherwise (``dma_get_seg_boundary`` with a zero field).
    :param max_seg_size: ``dma_parms->max_segment_size`` (``unsigned int``); 65536 is both the PCI
        default (``pci_device_add``) and ``dma_get_max_seg_size``'s fallback for 0.
    :param bounce_unaligned_kmalloc: ``IS_ENABLED(CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC)`` (x86: off).
    :param arch_dma_minalign: ``ARCH_DMA_MINALIGN`` in bytes (x86: 8).
    :param dma_cache_alignment: ``dma_get_cache_alignment()`` in bytes (x86: 1).

    Derived, mutable: ``pci_32bit_workaround`` (``dev->iommu->pci_32bit_workaround``) and
    ``dma_skip_sync`` (``dev->dma_skip_sync``, initialised to ``coherent`` by
    ``dma_setup_need_sync`` and cleared by the first swiotlb mapping).
    """

    name: str = "0000:01:00.0"
    dma_mask: int = DMA_BIT_MASK(64)
    coherent_dma_mask: int | None = None
    bus_dma_limit: int = 0
    is_pci: bool = True
    untrusted: bool = False
    coherent: bool = True
    forcedac: bool = False
    min_align_mask: int = 0
    seg_boundary: int | None = None
    max_seg_size: int = 65536
    bounce_unaligned_kmalloc: bool = False
    arch_dma_minalign: int = 8
    dma_cache_alignment: int = 1
    pci_32bit_workaround: bool = field(init=False)
    dma_skip_sync: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.coherent_dma_mask is None:
            self.coherent_dma_mask = self.dma_mask
        if self.seg_boundary is None:
            self.seg_boundary = U32_MAX if self.is_pci else ULONG_MAX
        self.validate()
        self.iommu_setup_dma_ops()
        self.dma_setup_need_sync()

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raises ``ValueError`` naming the bad value and the rule."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name {self.name!r} must be a non-empty string (dev_name)")
        _check_dma_mask("dma_mask", self.dma_mask)
        _check_dma_mask("coherent_dma_mask", self.coherent_dma_mask)
        b = self.bus_dma_limit
        if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b <= U64_MASK:
            raise ValueError(f"bus_dma_limit {b!r} must be an int in 0..2^64-1 (u64; 0 = no limit)")
        for flag in ("is_pci", "untrusted", "coherent", "forcedac", "bounce_unaligned_kmalloc"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} {getattr(self, flag)!r} must be a bool")
        if self.untrusted and not self.is_pci:
            raise ValueError("untrusted=True needs is_pci=True: 'untrusted' is a struct pci_dev field "
                             "(dev_is_untrusted() is false for every non-PCI device)")
        self._check_min_align_mask(self.min_align_mask)
        self._check_seg_boundary(self.seg_boundary)
        self._check_max_seg_size(self.max_seg_size)
        for knob in ("arch_dma_minalign", "dma_cache_alignment"):
            v = getattr(self, knob)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v & (v - 1):
                raise ValueError(f"{knob} {v!r} must be a power of two >= 1 (bytes)")

    @staticmethod
    def _check_min_align_mask(mask: int) -> None:
        if (not isinstance(mask, int) or isinstance(mask, bool) or not 0 <= mask <= U32_MAX
                or (mask and not _is_mask(mask))):
            raise ValueError(f"min_align_mask {mask!r} must be 0 or 2^n - 1 and fit in an unsigned int "
                             "(dma_set_min_align_mask; NVMe passes NVME_CTRL_PAGE_SIZE - 1 = 0xfff)")

    @staticmethod
    def _check_seg_boundary(mask: object) -> None:
        if not isinstance(mask, int) or isinstance(mask, bool) or not (_is_mask(mask) and mask <= ULONG_MAX):
            raise ValueError(f"seg_boundary {mask!r} must be 2^n - 1 within an unsigned long "
                             "(dma_set_seg_boundary; swiotlb BUG_ONs a boundary size that is not a "
                             "power of two)")

    @staticmethod
    def _check_max_seg_size(size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= U32_MAX:
            raise ValueError(f"max_seg_size {size!r} must be in 0..0xffffffff "
                             "(unsigned int; 0 means dma_get_max_seg_size's 64 KiB default)")

    # -- set-up steps ----------------------------------------------------------------------
    def iommu_setup_dma_ops(self) -> None:
        """The device part of ``iommu_setup_dma_ops(dev)`` (drivers/iommu/dma-iommu.c).

        For PCI devices ``dev->iommu->pci_32bit_workaround = !iommu_dma_forcedac``; ``dev_iommu`` is
        zero-allocated, so it stays false for everything else. Re-running it re-arms the 32-bit-first
        attempt, as a fresh probe would.
        """
        self.pci_32bit_workaround = self.is_pci and not self.forcedac

    def dma_setup_need_sync(self) -> None:
        """``dma_setup_need_sync(dev)`` (kernel/dma/mapping.c), IOMMU-DMA branch.

        ``dev->dma_skip_sync = dev_is_dma_coherent(dev)``; called at probe and by ``dma_set_mask``.
        """
        self.dma_skip_sync = self.coherent

    def dma_reset_need_sync(self) -> None:
        """``dma_reset_need_sync(dev)`` (include/linux/dma-map-ops.h): ``dma_skip_sync = false``.

        Called by ``swiotlb_tbl_map_single`` on every successful bounce mapping.
        """
        self.dma_skip_sync = False

    # -- masks -----------------------------------------------------------------------------
    def dma_get_mask(self) -> int:
        """``u64 dma_get_mask(struct device *dev)`` (include/linux/dma-mapping.h).

        ``*dev->dma_mask`` if set and non-zero, else ``DMA_BIT_MASK(32)``.
        """
        return self.dma_mask if self.dma_mask else DMA_BIT_MASK(32)

    def dma_set_mask(self, mask: int) -> int:
        """``int dma_set_mask(struct device *dev, u64 mask)`` (kernel/dma/mapping.c).

        For IOMMU-DMA devices ``dma_supported()`` is true for every mask, so the kernel only stores
        it (truncated to ``dma_addr_t``) and calls ``dma_setup_need_sync()``; returns 0. A mask that
        is not ``DMA_BIT_MASK(n)`` raises ``ValueError`` (simulator check, see module doc); the device
        is then unchanged.
        """
        _check_dma_mask("dma_mask", mask)
        self.dma_mask = mask
        self.dma_setup_need_sync()
        return 0

    def dma_set_coherent_mask(self, mask: int) -> int:
        """``int dma_set_coherent_mask(struct device *dev, u64 mask)`` (kernel/dma/mapping.c); 0."""
        _check_dma_mask("coherent_dma_mask", mask)
        self.coherent_dma_mask = mask
        return 0

    def dma_set_mask_and_coherent(self, mask: int) -> int:
        """``int dma_set_mask_and_coherent(struct device *dev, u64 mask)`` (dma-mapping.h).

        ``dma_set_mask`` and, if that succeeded, ``dma_set_coherent_mask`` with the same mask.
        """
        _check_dma_mask("dma_mask", mask)
        self.dma_set_mask(mask)
        self.dma_set_coherent_mask(mask)
        return 0

    def dma_get_required_mask(self) -> int:
        """``u64 dma_get_required_mask(struct device *dev)`` (kernel/dma/mapping.c).

        ``DMA_BIT_MASK(32)`` for IOMMU-DMA devices (the IOMMU can remap anything below 4 GiB).
        dma-direct devices would get a mask covering all of RAM instead (not modelled).
        """
        return DMA_BIT_MASK(32)

    def dma_addressing_limited(self) -> bool:
        """``bool dma_addressing_limited(struct device *dev)`` (kernel/dma/mapping.c).

        True iff ``min_not_zero(dma_get_mask(dev), dev->bus_dma_limit) < dma_get_required_mask(dev)``;
        for IOMMU-DMA devices the second test (``dma_direct_all_ram_mapped``) is skipped, so with the
        required mask being ``DMA_BIT_MASK(32)`` only devices that cannot reach all of the low 4 GiB
        are "limited" (kernel/dma/mapping.c: ``dma_addressing_limited()``, ``dma_get_required_mask()``;
        drivers/iommu/dma-iommu.c: ``iommu_dma_get_required_mask()``, 6.17). HMM refuses such devices
        (``hmm_dma_map_alloc``).
        """
        mask = self.dma_get_mask()
        lim = min(mask, self.bus_dma_limit) if self.bus_dma_limit else mask
        return lim < self.dma_get_required_mask()

    # -- dma_parms ---------------------------------------------------------------------------
    def dma_get_min_align_mask(self) -> int:
        """``unsigned int dma_get_min_align_mask(struct device *dev)`` (dma-mapping.h)."""
        return self.min_align_mask

    def dma_set_min_align_mask(self, min_align_mask: int) -> None:
        """``void dma_set_min_align_mask(struct device *dev, unsigned int min_align_mask)``.

        The address bits in the mask must survive bouncing: swiotlb picks slots whose address has
        the same bits (kernel/dma/swiotlb.c ``swiotlb_align_offset``).
        """
        self._check_min_align_mask(min_align_mask)
        self.min_align_mask = min_align_mask

    def dma_get_seg_boundary(self) -> int:
        """``unsigned long dma_get_seg_boundary(struct device *dev)``: the mask, or ``ULONG_MAX``."""
        return self.seg_boundary if self.seg_boundary else ULONG_MAX

    def dma_get_seg_boundary_nr_pages(self, page_shift: int) -> int:
        """``dma_get_seg_boundary_nr_pages(dev, page_shift)``: ``(boundary >> page_shift) + 1``."""
        if not 0 <= page_shift < 64:
            raise ValueError(f"page_shift {page_shift} must be in 0..63")
        return (self.dma_get_seg_boundary() >> page_shift) + 1

    def dma_set_seg_boundary(self, mask: int) -> None:
        """``void dma_set_seg_boundary(struct device *dev, unsigned long mask)``."""
        self._check_seg_boundary(mask)
        self.seg_boundary = mask

    def dma_get_max_seg_size(self) -> int:
        """``unsigned int dma_get_max_seg_size(struct device *dev)``: the size, or ``SZ_64K`` if 0."""
        return self.max_seg_size if self.max_seg_size else 0x10000

    def dma_set_max_seg_size(self, size: int) -> None:
        """``void dma_set_max_seg_size(struct device *dev, unsigned int size)`` (void since 6.11)."""
        self._check_max_seg_size(size)
        self.max_seg_size = size

    # -- predicates --------------------------------------------------------------------------
    def dev_is_pci(self) -> bool:
        """``dev_is_pci(dev)``."""
        return self.is_pci

    def dev_is_dma_coherent(self) -> bool:
        """``dev_is_dma_coherent(dev)`` (include/linux/dma-map-ops.h)."""
        return self.coherent

    def dev_is_untrusted(self) -> bool:
        """``dev_is_untrusted(dev)`` (drivers/iommu/dma-iommu.c): ``dev_is_pci && pdev->untrusted``."""
        return self.is_pci and self.untrusted

    def dma_kmalloc_safe(self, dir: int) -> bool:
        """``dma_kmalloc_safe(dev, enum dma_data_direction dir)`` (include/linux/dma-map-ops.h, 6.16).

        True if ``CONFIG_DMA_BOUNCE_UNALIGNED_KMALLOC`` is off, or the device is coherent, or
        ``dir == DMA_TO_DEVICE``. (A later patch also accepts ``DMA_ATTR_SKIP_CPU_SYNC``; not in 6.16.)
        """
        _check_dir(dir)
        return (not self.bounce_unaligned_kmalloc) or self.coherent or dir == DMA_TO_DEVICE

    def dma_kmalloc_size_aligned(self, size: int) -> bool:
        """``dma_kmalloc_size_aligned(size_t size)`` (include/linux/dma-map-ops.h).

        True if ``size >= 2 * ARCH_DMA_MINALIGN`` or ``kmalloc_size_roundup(size)`` is a multiple
        of ``dma_get_cache_alignment()``.
        """
        if size < 0:
            raise ValueError(f"size {size} must be >= 0 (size_t)")
        return (size >= 2 * self.arch_dma_minalign
                or kmalloc_size_roundup(size) % self.dma_cache_alignment == 0)

    def dma_kmalloc_needs_bounce(self, size: int, dir: int) -> bool:
        """``dma_kmalloc_needs_bounce(dev, size_t size, dir)`` (include/linux/dma-map-ops.h).

        ``!dma_kmalloc_safe(dev, dir) && !dma_kmalloc_size_aligned(size)``: a possibly-kmalloc'ed
        buffer too small to own its cache lines, on a non-coherent device, for a direction in which
        cache invalidation could destroy neighbouring data.
        """
        return not self.dma_kmalloc_safe(dir) and not self.dma_kmalloc_size_aligned(size)

    def dev_use_swiotlb(self, size: int, dir: int) -> bool:
        """``dev_use_swiotlb(dev, size_t size, dir)`` (drivers/iommu/dma-iommu.c).

        ``IS_ENABLED(CONFIG_SWIOTLB) && (dev_is_untrusted(dev) || dma_kmalloc_needs_bounce(...))``.
        The caller still bounces only if the buffer is not granule-aligned (``iova_unaligned``,
        drivers/iommu/dma-iommu.c: ``iommu_dma_map_page()``, 6.17); on x86 only untrusted devices ever get here
        with ``True``.
        """
        return self.dev_is_untrusted() or self.dma_kmalloc_needs_bounce(size, dir)

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def nvme(cls, name: str = "0000:01:00.0", **kw) -> Device:
        """An NVMe controller after ``nvme_pci_alloc_dev()`` (drivers/nvme/host/pci.c, 6.17).

        ``dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64))`` (48 with
        ``NVME_QUIRK_DMA_ADDRESS_BITS_48``), ``dma_set_min_align_mask(&pdev->dev,
        NVME_CTRL_PAGE_SIZE - 1)``, ``dma_set_max_seg_size(&pdev->dev, 0xffffffff)``; the segment
        boundary stays at the PCI default ``0xffffffff`` (drivers/nvme/host/pci.c: ``nvme_pci_alloc_dev()``;
        drivers/pci/probe.c: ``pci_device_add()``, 6.17).
        """
        dev = cls(name=name, **kw)
        _probe_masks(dev, kw, DMA_BIT_MASK(64))
        dev.dma_set_min_align_mask(NVME_CTRL_PAGE_SIZE - 1)
        dev.dma_set_max_seg_size(0xFFFFFFFF)
        return dev

    @classmethod
    def thunderbolt_nvme(cls, name: str = "0000:05:00.0", **kw) -> Device:
        """An NVMe SSD in a Thunderbolt/USB4 enclosure: :meth:`nvme` plus ``pdev->untrusted``.

        ``set_pcie_untrusted()`` (drivers/pci/probe.c) marks devices below an external-facing port
        (ACPI ``ExternalFacingPort`` / DT ``external-facing``) untrusted; ``iommu_get_def_domain_type``
        then forces a strict DMA domain, and unaligned mappings are bounced through swiotlb
        (drivers/iommu/iommu.c: ``iommu_get_def_domain_type()``; drivers/iommu/dma-iommu.c:
        ``dev_use_swiotlb()``, ``iommu_dma_map_page()``, 6.17).
        """
        return cls.nvme(name=name, untrusted=True, **kw)

    @classmethod
    def mlx5(cls, name: str = "0000:03:00.0", **kw) -> Device:
        """A ConnectX NIC after mlx5_core ``set_dma_caps()`` (drivers/net/ethernet/mellanox/mlx5/core/main.c).

        ``dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64))`` (falls back to 32 only if that
        fails, which it cannot behind an IOMMU), ``dma_set_max_seg_size(&pdev->dev, 2u * 1024 * 1024
        * 1024)``; min_align_mask and segment boundary keep the PCI defaults (0, ``0xffffffff``).
        """
        dev = cls(name=name, **kw)
        _probe_masks(dev, kw, DMA_BIT_MASK(64))
        dev.dma_set_max_seg_size(2 * 1024 * 1024 * 1024)
        return dev

    @classmethod
    def legacy_32bit(cls, name: str = "0000:02:00.0", **kw) -> Device:
        """A PCI device limited to 32-bit DMA.

        Either its driver never raises the PCI core defaults (``pci_setup_device`` sets
        ``dev->dma_mask = 0xffffffff``; ``pci_device_add`` sets ``coherent_dma_mask = 0xffffffffull``,
        max segment 65536, boundary ``0xffffffff``) or it calls
        ``dma_set_mask_and_coherent(dev, DMA_BIT_MASK(32))``. Its IOVAs always come from below 4 GiB
        (the 32-bit-first attempt does not apply: the limit is already 32-bit).
        """
        dev = cls(name=name, **kw)
        dev.dma_set_mask_and_coherent(DMA_BIT_MASK(32))
        return dev


def _probe_masks(dev: Device, kw: dict, driver_mask: int) -> None:
    """The driver's ``dma_set_mask_and_coherent(dev, driver_mask)`` at probe; a ``dma_mask`` (and
    ``coherent_dma_mask``) the caller passed stands for a driver that sets that mask instead
    (e.g. NVMe's ``NVME_QUIRK_DMA_ADDRESS_BITS_48``), so it is kept, not overwritten."""
    dev.dma_set_mask_and_coherent(kw.get("dma_mask", driver_mask))
    if "coherent_dma_mask" in kw:
        dev.dma_set_coherent_mask(kw["coherent_dma_mask"])
