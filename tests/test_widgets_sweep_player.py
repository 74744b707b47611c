"""Every combination of every Dropdown of the scenario player (workload x path x step unit, and the lazy
checkbox) renders without an exception and shows a PNG, at the first and the last step."""

from __future__ import annotations

import itertools

from sweep_helpers import ok, options

from iovalab.book import widgets


def test_sweep_scenario_player():
    p = widgets.ScenarioPlayer()
    for workload in options(p.workload):
        with p.batch():
            p.workload.value = workload
        for path, lazy, unit in itertools.product(options(p.path), (False, True), options(p.unit)):
            with p.batch():
                p.path.value, p.lazy.value, p.unit.value = path, lazy, unit
            ok(p)
            assert (p.rec.workload, p.rec.path, p.rec.strict) == (workload, path, not lazy)
            if unit == "call":
                p.last.click()
                ok(p)
