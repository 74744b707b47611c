"""iovalab: a kernel-exact simulator of Linux's IOVA-based DMA mapping, and the lab book built on it.

Layers (imports point down only): events -> units -> iova -> pgtable -> iommu -> device -> swiotlb
-> dma -> cost -> scenarios -> viz -> widgets. See DESIGN.md.
"""

__version__ = "0.1.0"


def check(*args, **kwargs):
    """Check a claim about dma_iova_try_alloc / dma_map_page / dma_iova_link (see iovalab.claims.check)."""
    from .claims import check as _check
    return _check(*args, **kwargs)
