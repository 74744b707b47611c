"""Every combination of every Dropdown of each panel renders without an exception, shows a PNG and no
error. Each combination is set inside ``panel.batch()`` (one refresh per combination); checkboxes are swept
on top where they change what is computed. The player is swept in test_widgets_sweep_player.py, the
comparison panels in test_widgets_sweep_paths.py."""

from __future__ import annotations

import itertools

from sweep_helpers import ok, options

from iovalab.book import widgets


def test_sweep_granule_explorer():
    g = widgets.GranuleExplorer()
    for (phys, size), granule in itertools.product((("0x0", "0x1"), ("0x1234", "0x3000"), ("0xfff", "0x2"),
                                                    ("0x1234567", "1M")), options(g.granule)):
        with g.batch():
            g.phys.value, g.size.value, g.granule.value = phys, size, granule
        ok(g)
        assert g.footprint.granule == granule


def test_sweep_mask_explorer():
    m = widgets.MaskExplorer(count=6)
    for free, bus, bits in itertools.product(options(m.free_below_4g), options(m.bus_limit), options(m.mask_bits)):
        with m.batch():
            m.free_below_4g.value, m.bus_limit.value, m.mask_bits.value = free, bus, bits
        ok(m)
        assert len(m.walk.allocs) == 6 and m.walk.mask_bits == bits and m.walk.bus_limit_bits == bus
    for pci, forcedac, bits in itertools.product((False, True), (False, True), options(m.mask_bits)):
        with m.batch():
            m.pci.value, m.forcedac.value, m.mask_bits.value = pci, forcedac, bits
        ok(m)
