"""Every combination of every Dropdown of the comparison panels renders without an exception, shows a PNG
and no error (one refresh per combination, set inside ``panel.batch()``)."""

from __future__ import annotations

import itertools

from sweep_helpers import ok, options

from iovalab.book import widgets


def test_sweep_path_comparison():
    pc = widgets.PathComparison()
    for workload, lazy, cp in itertools.product(options(pc.workload), (False, True), options(pc.cost_preset)):
        with pc.batch():
            pc.workload.value, pc.lazy.value, pc.cost_preset.value = workload, lazy, cp
        ok(pc)
        assert cp in pc.text.value


def test_sweep_scaling_explorer():
    s = widgets.ScalingExplorer()
    for contiguous, lazy, cp, kind in itertools.product((False, True), (False, True), options(s.cost_preset),
                                                        options(s.kind)):
        with s.batch():
            s.contiguous.value, s.lazy.value, s.cost_preset.value, s.kind.value = contiguous, lazy, cp, kind
        ok(s)
        assert f">page: {kind}</th>" in s.text.value
