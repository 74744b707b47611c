"""iovalab.kernel.device: defaults per pci_device_add, presets per the drivers, mask helpers, bounce tests."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iovalab.kernel.device import (
    DMA_BIDIRECTIONAL,
    DMA_FROM_DEVICE,
    DMA_TO_DEVICE,
    Device,
    kmalloc_size_roundup,
)
from iovalab.kernel.units import DMA_BIT_MASK, ULONG_MAX


def test_pci_defaults():
    d = Device()
    assert d.dma_get_mask() == DMA_BIT_MASK(64)
    assert d.coherent_dma_mask == DMA_BIT_MASK(64)
    assert d.dma_get_seg_boundary() == 0xFFFFFFFF          # pci_device_add
    assert d.dma_get_max_seg_size() == 65536               # pci_device_add
    assert d.dma_get_min_align_mask() == 0
    assert d.pci_32bit_workaround is True                  # iommu_setup_dma_ops: !forcedac
    assert d.dma_skip_sync is True                         # dma_setup_need_sync: coherent
    assert not d.dev_is_untrusted()


def test_non_pci_defaults_and_forcedac():
    d = Device(name="ff000000.dma", is_pci=False)
    assert d.dma_get_seg_boundary() == ULONG_MAX
    assert d.pci_32bit_workaround is False
    assert Device(forcedac=True).pci_32bit_workaround is False
    nc = Device(coherent=False)
    assert nc.dma_skip_sync is False


def test_coherent_mask_follows_dma_mask_unless_given():
    assert Device(dma_mask=DMA_BIT_MASK(40)).coherent_dma_mask == DMA_BIT_MASK(40)
    d = Device(dma_mask=DMA_BIT_MASK(64), coherent_dma_mask=DMA_BIT_MASK(32))
    assert d.coherent_dma_mask == DMA_BIT_MASK(32)


def test_nvme_preset():
    d = Device.nvme()
    assert d.dma_get_mask() == DMA_BIT_MASK(64) and d.coherent_dma_mask == DMA_BIT_MASK(64)
    assert d.dma_get_min_align_mask() == 4095
    assert d.dma_get_max_seg_size() == 0xFFFFFFFF
    assert d.dma_get_seg_boundary() == 0xFFFFFFFF
    assert not d.dev_is_untrusted() and d.pci_32bit_workaround


def test_thunderbolt_nvme_preset_is_untrusted_nvme():
    d = Device.thunderbolt_nvme()
    assert d.dev_is_untrusted()
    assert d.dma_get_min_align_mask() == 4095 and d.dma_get_max_seg_size() == 0xFFFFFFFF
    # untrusted devices bounce whatever the size or direction (the caller adds the alignment test)
    assert d.dev_use_swiotlb(512, DMA_TO_DEVICE)
    assert not Device.nvme().dev_use_swiotlb(512, DMA_FROM_DEVICE)


def test_mlx5_and_legacy_presets():
    m = Device.mlx5()
    assert m.dma_get_mask() == DMA_BIT_MASK(64) and m.dma_get_max_seg_size() == 2 << 30
    assert m.dma_get_min_align_mask() == 0
    leg = Device.legacy_32bit()
    assert leg.dma_get_mask() == DMA_BIT_MASK(32) and leg.coherent_dma_mask == DMA_BIT_MASK(32)
    assert not leg.dma_addressing_limited()  # 32 bits is exactly the IOMMU-DMA required mask


def test_preset_names_and_overrides():
    assert Device.nvme("0000:09:00.0").name == "0000:09:00.0"
    assert Device.nvme(forcedac=True).pci_32bit_workaround is False


@pytest.mark.parametrize("bad", [0, 5, 0x1FFFE, -1, 1 << 64, (1 << 65) - 1, True, "0xff"])
def test_dma_set_mask_rejects_non_masks_and_leaves_device_unchanged(bad):
    d = Device.nvme()
    before = (d.dma_mask, d.coherent_dma_mask, d.dma_skip_sync)
    with pytest.raises(ValueError, match="dma_mask"):
        d.dma_set_mask_and_coherent(bad)
    with pytest.raises(ValueError, match="dma_mask .*(DMA_BIT_MASK|must be an int)"):
        d.dma_set_mask(bad)
    assert (d.dma_mask, d.coherent_dma_mask, d.dma_skip_sync) == before


def test_constructor_validation_names_value_and_rule():
    with pytest.raises(ValueError, match=r"dma_mask 0x5 is not DMA_BIT_MASK"):
        Device(dma_mask=5)
    with pytest.raises(ValueError, match="untrusted.*pci_dev"):
        Device(is_pci=False, untrusted=True)
    with pytest.raises(ValueError, match="min_align_mask 4096"):
        Device(min_align_mask=4096)
    with pytest.raises(ValueError, match="seg_boundary"):
        Device(seg_boundary=0x10000)
    with pytest.raises(ValueError, match="max_seg_size"):
        Device(max_seg_size=1 << 32)
    with pytest.raises(ValueError, match="bus_dma_limit"):
        Device(bus_dma_limit=-1)
    with pytest.raises(ValueError, match="name"):
        Device(name="")
    with pytest.raises(ValueError, match="arch_dma_minalign"):
        Device(arch_dma_minalign=96)


def test_setter_validation():
    d = Device()
    with pytest.raises(ValueError, match="min_align_mask"):
        d.dma_set_min_align_mask(0x1001)
    with pytest.raises(ValueError, match="seg_boundary"):
        d.dma_set_seg_boundary(0)
    with pytest.raises(ValueError, match="max_seg_size"):
        d.dma_set_max_seg_size(-1)
    assert (d.min_align_mask, d.seg_boundary, d.max_seg_size) == (0, 0xFFFFFFFF, 65536)
    d.dma_set_seg_boundary(0xFFFF)
    assert d.dma_get_seg_boundary_nr_pages(12) == 16
    d.dma_set_max_seg_size(0)
    assert d.dma_get_max_seg_size() == 0x10000  # 0 -> SZ_64K fallback


def test_dma_set_mask_resets_skip_sync_after_swiotlb():
    d = Device.nvme()
    d.dma_reset_need_sync()  # what the first swiotlb mapping does
    assert d.dma_skip_sync is False
    assert d.dma_set_mask(DMA_BIT_MASK(48)) == 0
    assert d.dma_skip_sync is True and d.dma_get_mask() == DMA_BIT_MASK(48)
    assert d.coherent_dma_mask == DMA_BIT_MASK(64)  # dma_set_mask leaves the coherent mask


def test_dma_get_mask_zero_falls_back_to_32_bits():
    d = Device()
    d.dma_mask = 0  # a device without a mask (dma_mask pointer unset / zero)
    assert d.dma_get_mask() == DMA_BIT_MASK(32)


def test_pci_32bit_workaround_is_mutable_and_rearmed_by_setup():
    d = Device()
    d.pci_32bit_workaround = False  # what the DMA layer does after a failed 32-bit attempt
    assert d.pci_32bit_workaround is False
    d.iommu_setup_dma_ops()
    assert d.pci_32bit_workaround is True


@pytest.mark.parametrize("mask,limit,expected", [
    (DMA_BIT_MASK(64), 0, False),
    (DMA_BIT_MASK(32), 0, False),
    (DMA_BIT_MASK(31), 0, True),
    (DMA_BIT_MASK(24), 0, True),
    (DMA_BIT_MASK(64), 0x3FFFFFFF, True),   # bus limit below 4 GiB: min_not_zero picks it
    (DMA_BIT_MASK(64), DMA_BIT_MASK(40), False),
])
def test_dma_addressing_limited_iommu_case(mask, limit, expected):
    d = Device(dma_mask=mask, bus_dma_limit=limit)
    assert d.dma_get_required_mask() == DMA_BIT_MASK(32)
    assert d.dma_addressing_limited() is expected


def test_x86_defaults_never_bounce_kmalloc():
    for coherent in (True, False):
        d = Device(coherent=coherent)
        for size in (1, 8, 20, 96, 100, 4096):
            for dir in (DMA_TO_DEVICE, DMA_FROM_DEVICE, DMA_BIDIRECTIONAL):
                assert not d.dma_kmalloc_needs_bounce(size, dir)
                assert not d.dev_use_swiotlb(size, dir)


def arm64_nc():
    return Device(coherent=False, bounce_unaligned_kmalloc=True, arch_dma_minalign=128,
                  dma_cache_alignment=64)


@pytest.mark.parametrize("size,bounce", [
    (20, True),     # kmalloc-32: not a multiple of the 64-byte cache line
    (40, False),    # kmalloc-64
    (96, True),     # kmalloc-96
    (100, False),   # kmalloc-128
    (150, False),   # kmalloc-192 = 3 lines
    (255, False),   # >= 2 * ARCH_DMA_MINALIGN is always aligned
    (1, True),      # kmalloc-8
])
def test_arm64_noncoherent_kmalloc_bounce(size, bounce):
    d = arm64_nc()
    assert d.dma_kmalloc_needs_bounce(size, DMA_FROM_DEVICE) is bounce
    assert d.dma_kmalloc_needs_bounce(size, DMA_BIDIRECTIONAL) is bounce
    assert d.dma_kmalloc_needs_bounce(size, DMA_TO_DEVICE) is False  # TO_DEVICE is always safe
    assert d.dev_use_swiotlb(size, DMA_FROM_DEVICE) is bounce


def test_kmalloc_safe_rules():
    d = arm64_nc()
    assert not d.dma_kmalloc_safe(DMA_FROM_DEVICE)
    assert d.dma_kmalloc_safe(DMA_TO_DEVICE)
    d2 = Device(coherent=True, bounce_unaligned_kmalloc=True, arch_dma_minalign=128, dma_cache_alignment=64)
    assert d2.dma_kmalloc_safe(DMA_FROM_DEVICE)  # coherent
    with pytest.raises(ValueError, match="dma_data_direction"):
        d.dma_kmalloc_safe(7)


def test_kmalloc_size_roundup():
    assert [kmalloc_size_roundup(n) for n in (0, 1, 8, 9, 33, 65, 97, 129, 193, 4097, 8192, 8193)] == \
        [0, 8, 8, 16, 64, 96, 128, 192, 256, 8192, 8192, 16384]


@given(st.integers(min_value=1, max_value=64))
def test_every_dma_bit_mask_is_accepted(n):
    d = Device(dma_mask=DMA_BIT_MASK(n))
    assert d.dma_get_mask() == DMA_BIT_MASK(n)
    assert d.dma_addressing_limited() is (n < 32)


def test_nvme_keeps_the_mask_passed():
    """Regression: ``Device.nvme(dma_mask=...)`` used to overwrite the mask with DMA_BIT_MASK(64)."""
    d = Device.nvme(dma_mask=DMA_BIT_MASK(48))
    assert d.dma_get_mask() == DMA_BIT_MASK(48) and d.coherent_dma_mask == DMA_BIT_MASK(48)
    d = Device.nvme(dma_mask=DMA_BIT_MASK(48), coherent_dma_mask=DMA_BIT_MASK(32))
    assert (d.dma_mask, d.coherent_dma_mask) == (DMA_BIT_MASK(48), DMA_BIT_MASK(32))
    assert Device.nvme().dma_mask == DMA_BIT_MASK(64)
    assert Device.mlx5(dma_mask=DMA_BIT_MASK(40)).dma_get_mask() == DMA_BIT_MASK(40)
