"""The kernel model: one module per kernel source file of one idea (imports point down the list).

==========================  ====================================================================
module                      kernel file it models (Linux 6.17 unless a docstring says otherwise)
==========================  ====================================================================
``event_schema``            the event kinds and each kind's typed arguments (the log's schema)
``events``, ``units``       the event log every layer writes; sizes, masks, errno
``iova``                    ``drivers/iommu/iova.c``
``pgtable``                 one module per format: ``intel_vtd`` (``intel/iommu.c``), ``amd_v1``
                            (``amd/io_pgtable.c``), ``arm_lpae`` (``io-pgtable-arm.c``), ``ops``
                            (``struct io_pgtable_ops``), ``io_pgtable`` (``io-pgtable.c``); 7.3.4:
                            ``generic_pt`` (``generic_pt/iommu_pt.h``), its formats ``vtdss``
                            (``fmt/vtdss.h``) and ``amdv1_pt`` (``fmt/amdv1.h``)
``iommu``                   ``drivers/iommu/iommu.c``: ``iommu_map``/``iommu_unmap``/``iommu_pgsize``, gather
``device``                  ``struct device`` DMA fields, masks, limits
``swiotlb``                 ``kernel/dma/swiotlb.c``
``dma_debug``               ``kernel/dma/debug.c`` (``CONFIG_DMA_API_DEBUG``, read in 7.3.4)
``dma_iova``                ``drivers/iommu/dma-iommu.c``: the two-step ``dma_iova_*`` API
``dma_iommu``               ``drivers/iommu/dma-iommu.c``: classic paths, flush queue, the DMA domain
==========================  ====================================================================
"""
