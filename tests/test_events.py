"""The event log's schema: kinds are a str enum, every kind's arguments are declared and typed, emit
checks them, counting goes through the log, and the module docstring lists the whole table."""

import json

import pytest

import iovalab.kernel.event_schema as events
from iovalab.kernel.event_schema import COUNTER_KINDS, SCHEMA, Kind, schema_text
from iovalab.kernel.events import Counters, EventLog


def test_kinds_are_strings():
    assert Kind.IOVA_ALLOCS == "iova_allocs" and f"{Kind.PTE_WRITES}" == "pte_writes"
    assert [f.name for f in Counters.__dataclass_fields__.values()] == list(COUNTER_KINDS)
    assert set(SCHEMA) == {k.value for k in Kind}
    log = EventLog()
    e = log.emit("iova", "iova_rcache_get", "rcache_miss", 0, size=1, limit_pfn=0xFFFFF)
    assert e.kind is Kind.RCACHE_MISS and e.kind == "rcache_miss"
    assert json.loads(json.dumps(e.as_dict()))["kind"] == "rcache_miss"
    assert list(log.totals) == ["rcache_miss"] and type(next(iter(log.totals))) is str
    assert log.of_kind("rcache_miss") == [e] == log.of_kind(Kind.RCACHE_MISS)


def test_docstring_lists_every_kind_and_argument():
    assert schema_text() in events.__doc__
    for spec in SCHEMA.values():
        assert f"``{spec.name}``" in events.__doc__


@pytest.mark.parametrize("keep", [True, False])
def test_unknown_kind_raises_and_changes_nothing(keep):
    log = EventLog(keep=keep)
    with pytest.raises(ValueError, match="event kind 'iova_alloc' is not declared"):
        log.emit("iova", "alloc_iova", "iova_alloc", 1, size=1, limit_pfn=2, size_aligned=True)
    with pytest.raises(ValueError, match="'bogus' is not declared"):
        log.tally("bogus")
    with pytest.raises(ValueError, match="'bogus' is not declared"):
        log.emit_values("iova", "f", "bogus", None, 0, ())
    assert (dict(log.totals), log.seq, len(log)) == ({}, 0, 0)


def test_bad_arguments_name_the_kind_and_argument():
    log = EventLog()
    with pytest.raises(ValueError, match=r"'tree_free' from remove_iova: missing argument\(s\) why"):
        log.emit("iova", "remove_iova", "tree_free", 1, pfn_lo=1, pfn_hi=1)
    with pytest.raises(ValueError, match="'tree_free' from remove_iova: unknown argument 'pfn'"):
        log.emit("iova", "remove_iova", "tree_free", 1, pfn_lo=1, pfn_hi=1, why="x", pfn=3)
    with pytest.raises(TypeError, match="'tree_free' from remove_iova: argument pfn_hi='1' is str, declared int"):
        log.emit("iova", "remove_iova", "tree_free", 1, pfn_lo=1, pfn_hi="1", why="x")
    with pytest.raises(TypeError, match="argument size_aligned=1 is int, declared bool"):
        log.emit("iova", "alloc_iova", "iova_allocs", 1, size=1, limit_pfn=2, size_aligned=1)
    with pytest.raises(ValueError, match="'step': no arguments declared for function 'nope'"):
        log.emit("iova", "nope", "step")
    with pytest.raises(ValueError, match="'dma_api_calls' from dma_map_page: missing argument"):
        log.emit("dma", "dma_map_page", "dma_api_calls", 0, dev="nvme")
    with pytest.raises(ValueError, match="'rcache_hits' from iova_rcache_get: 3 positional value"):
        log.emit_values("iova", "iova_rcache_get", "rcache_hits", 1, 0, (1, 2, 3))
    with pytest.raises(TypeError, match="'driver' from submit_bio: argument ios=.* not a scalar"):
        log.emit("driver", "submit_bio", "driver", None, ios=[1])
    assert len(log) == 0


def test_positional_values_make_the_same_event():
    a, b = EventLog(), EventLog()
    ea = a.emit("iova", "alloc_iova_fast", "iova_allocs", 7, cpu=1, size=1, limit_pfn=9, source="tree")
    eb = b.emit_values("iova", "alloc_iova_fast", Kind.IOVA_ALLOCS, 7, 1, (1, 9, "tree"))
    assert ea.as_dict() == eb.as_dict() and dict(a.totals) == dict(b.totals)
    assert b.emit_values("iova", "__alloc_and_insert_iova_range", "alloc_fail", -12, 0,
                         (1, 2, "no space")).args == {"size": 1, "limit_pfn": 2, "reason": "no space"}


def test_a_remembered_shape_never_lets_a_bad_event_through():
    """emit/emit_values/emit_fields remember the argument shapes they found valid; a bad event of a
    function whose good events were seen before is refused all the same, every time."""
    log = EventLog()
    for _ in range(2):
        log.emit("iova", "alloc_iova", "iova_allocs", 1, size=1, limit_pfn=2, size_aligned=True)
        log.emit_values("iova", "alloc_iova_fast", "iova_allocs", 1, 0, (1, 2, "tree"))
        log.emit_fields("iommu", "f", "iotlb_invalidations", None, 0, ("dropped", "scope"), (0, "all"))
    for _ in range(2):
        with pytest.raises(TypeError, match="argument size_aligned=1 is int, declared bool"):
            log.emit("iova", "alloc_iova", "iova_allocs", 1, size=1, limit_pfn=2, size_aligned=1)
        with pytest.raises(ValueError, match="unknown argument 'pfn'"):
            log.emit("iova", "alloc_iova", "iova_allocs", 1, size=1, limit_pfn=2, size_aligned=True, pfn=3)
        with pytest.raises(TypeError, match="argument source=3 is int, declared str"):
            log.emit_values("iova", "alloc_iova_fast", "iova_allocs", 1, 0, (1, 2, 3))
        with pytest.raises(TypeError, match="argument dropped=True is bool, declared int"):
            log.emit_fields("iommu", "f", "iotlb_invalidations", None, 0, ("dropped", "scope"), (True, "all"))
        with pytest.raises(ValueError, match="missing argument.*scope"):
            log.emit_fields("iommu", "f", "iotlb_invalidations", None, 0, ("dropped",), (0,))
    assert len(log) == 6


def test_events_of_values_and_fields_read_as_keyword_events():
    """emit_values (declared order) and emit_fields (the caller's order) make the event emit makes:
    the same args, in the same order, read as often as wanted, and the dict they give is the event's."""
    a, b = EventLog(), EventLog()
    ea = a.emit("iommu", "iommu_iotlb_sync", "iotlb_invalidations", None, cpu=1, start=0x1000, end=0x1fff,
                scope="range", dropped=2)
    eb = b.emit_fields("iommu", "iommu_iotlb_sync", "iotlb_invalidations", None, 1,
                       ("start", "end", "scope", "dropped"), (0x1000, 0x1FFF, "range", 2))
    assert eb is not None and list(eb.args) == ["start", "end", "scope", "dropped"]
    assert ea.as_dict() == eb.as_dict() and ea.describe() == eb.describe() and repr(ea) == repr(eb)
    eb.args["dropped"] = 3
    assert eb.args["dropped"] == 3 and eb.as_dict()["args"]["dropped"] == 3
    ec = b.emit_values("pgtable", "intel_iommu_map_pages", "pte_writes", 0x2000, 0, (0, 0, 0x1000, 2, "PTE"), 2)
    assert ec is not None and ec.count == 2 and ec.args == {"iova": 0, "paddr": 0, "pgsize": 0x1000,
                                                             "pgcount": 2, "level": "PTE"}


def test_not_keeping_counts_the_same_without_checking_arguments():
    keep, tally = EventLog(), EventLog(keep=False)
    for log in (keep, tally):
        log.emit("dma", "fq_ring_free", "fq_free", None, count=3)
        log.emit_values("iova", "iova_rcache_get", "rcache_hits", 5, 0, (1, 9))
    assert dict(keep.totals) == dict(tally.totals) == {"fq_free": 3, "rcache_hits": 1}
    assert keep.seq == tally.seq == 2 and len(tally) == 0
    tally.emit("iova", "remove_iova", "tree_free", 1)        # no event kept: arguments are not checked
    assert tally.count("tree_free") == 1


def test_bulk_tallies_go_through_the_log():
    log = EventLog(keep=False)
    m = log.mark()
    log.emit_values("iova", "iova_rcache_get", "rcache_hits", 5, 0, (1, 9))
    log.emit("pgtable", "intel_iommu_map_pages", "pte_writes", 0x1000, count=1)
    delta = log.tallies_since(m)
    assert delta == {"rcache_hits": 1, "pte_writes": 1}
    log.tally_many(delta, 9)
    assert log.counters() == Counters(rcache_hits=10, pte_writes=10)
    with pytest.raises(ValueError, match="keeps events"):
        EventLog().tally_many(delta, 2)


def test_a_log_can_keep_only_some_kinds():
    """EventLog(kinds=...) keeps the events of those kinds; the others are tallied only (neither built
    nor checked), and an unknown kind is refused."""
    from iovalab.kernel.dma_iommu import DmaDomain
    from iovalab.kernel.device import Device
    from iovalab.kernel.units import DMA_BIT_MASK

    full = EventLog()
    some = EventLog(kinds=(Kind.IOMMU_MAP_CALLS, "iommu_unmap"))
    for log in (full, some):
        dom = DmaDomain("intel-vtd", log=log)
        dev = Device(dma_mask=DMA_BIT_MASK(64))
        a = dom.dma_map_page(dev, 0x1234000, 8192)
        dom.dma_unmap_page(dev, a, 8192)
    assert [e.kind for e in some.events] == ["iommu_map_calls", "iommu_unmap"]
    assert [e.args for e in some.events] == [e.args for e in full.events if e.kind in ("iommu_map_calls",
                                                                                      "iommu_unmap")]
    assert some.counters() == full.counters() and some.seq == full.seq
    with pytest.raises(ValueError, match="not declared"):
        EventLog(kinds=("no_such_kind",))


def test_pick_reads_arguments_as_args_does():
    """Event.pick gives the values args gives, in any order, whether or not the dict was built."""
    from iovalab.kernel.device import Device
    from iovalab.kernel.dma_iommu import DmaDomain
    from iovalab.kernel.units import DMA_BIT_MASK

    logs = []
    for _ in range(2):
        dom = DmaDomain("intel-vtd")
        dom.dma_map_page(Device(dma_mask=DMA_BIT_MASK(64)), 0x1234000, 8192)
        logs.append(dom.log.events)
    for fresh, twin in zip(*logs, strict=True):
        names = tuple(twin.args)
        want = tuple(twin.args[n] for n in names[::-1])
        assert fresh.pick(names[::-1]) == want and fresh.pick(names[:2]) == tuple(twin.args.values())[:2]
        assert fresh.args == twin.args and fresh.pick(names[::-1]) == want
