"""iovalab: a kernel-exact simulator of Linux's IOVA-based DMA mapping, and the lab book built on it.

Layers (imports point down only): events -> units -> iova -> pgtable -> iommu -> device -> swiotlb
-> dma -> cost -> scenarios -> viz -> widgets. See DESIGN.md.
"""

__version__ = "0.1.0"
