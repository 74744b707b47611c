"""The fuzz suite (iovalab.cli.fuzz): random operation sequences over IovaDomain and DmaDomain (classic
and two-step calls), every IOMMU preset, strict and lazy, 1 and 3 CPUs, swiotlb on and off; a whole-state
snapshot before every call, compared after every call that raises; invariants after every call.
Bounded by operation counts (no clock). The long run: ``pytest -m fuzz_long`` or
``python -m iovalab fuzz --ops 100000 --seed S``."""

import pytest

from iovalab.cli.fuzz import FuzzFailure, configs, fuzz_dma, fuzz_iova, run


def test_configs_cover_every_preset_mode_cpu_count_and_swiotlb():
    cs = configs()
    from iovalab.kernel.iommu import PRESETS
    assert {c["preset"] for c in cs} == set(PRESETS)
    assert {(c["strict"], c["ncpus"], c["swiotlb"]) for c in cs if c["preset"] == "intel-vtd"} == {
        (s, n, b) for s in (True, False) for n in (1, 3) for b in (False, True)}
    assert len(cs) == len(PRESETS) * 8


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_iova_domain(seed):
    r = fuzz_iova(seed, 1500)
    assert r.ops == 1500 and r.raised > 0


@pytest.mark.parametrize("cfg", configs(), ids=lambda c: "{preset}-{strict}-{ncpus}-{swiotlb}".format(**c))
def test_fuzz_dma_domain(cfg):
    r = fuzz_dma(7, 120, **cfg)
    assert r.ops == 120 and r.raised > 0


def test_fuzz_finds_the_finalise_sg_bug(monkeypatch):
    """The invariants see issue 15's first bug when it is put back."""
    from iovalab.kernel import dma_iommu_sg

    real = dma_iommu_sg.ScatterlistMixin._ScatterlistMixin__finalise_sg

    def buggy(self, dev, sgl, layout, dma_addr):
        n = real(self, dev, sgl, layout, dma_addr)
        if n > 1:
            sgl[n - 2].dma_length = 0   # what `out[-1][1] = cur_len` after the reset did
        return n
    monkeypatch.setattr(dma_iommu_sg.ScatterlistMixin, "_ScatterlistMixin__finalise_sg", buggy)
    with pytest.raises(FuzzFailure, match="do not add up"):
        fuzz_dma(1, 400, preset="intel-vtd")


@pytest.mark.fuzz_long
def test_fuzz_long():
    r = run(100_000, seed=1)
    assert r.failures == [] and r.ops >= 100_000
