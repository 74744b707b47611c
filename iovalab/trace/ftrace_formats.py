"""The ``TP_printk`` formats of the events a trace file holds, and how to read their text back
(no kernel analogue: the kernel only prints them).

* ``include/trace/events/iommu.h``: ``map``, ``unmap``, ``io_page_fault``, the group and domain events;
* ``include/trace/events/dma.h``: ``dma_map_page`` ... ``dma_sync_sg_for_device`` (6.12), ``dma_map_phys``
  and ``dma_unmap_phys`` (7.3.4), the ``decode_dma_attrs`` table;
* ``include/trace/events/swiotlb.h``: ``swiotlb_bounced``;
* ``drivers/iommu/intel/trace.h``: ``qi_submit``, ``cache_tag_*`` (with and without ``pages``: 6.12 vs 7.3.4);
* the ``trace_marker`` entry (``tracing_mark_write``).

:data:`EVENT_FORMATS` maps each event name to its format (a regex of the ``TP_printk`` text, the format as
the kernel writes it, the conversion of each field); :func:`parse_fields` reads one event's text.
:mod:`iovalab.trace.ftrace` reads whole lines and files with it, :mod:`iovalab.trace.ftrace_write` writes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from iovalab.kernel.units import U64_MASK

__all__ = ["KNOWN_EVENTS", "DMA_DIRECTIONS", "DMA_ATTR_NAMES", "DMA_TRACE_MAX_ENTRIES", "EVENT_FORMATS",
           "parse_fields", "decode_dma_attrs", "parse_dma_attrs"]

#: Event name -> trace system, for every event this module parses (the text carries no system).
KNOWN_EVENTS: dict[str, str] = {
    **dict.fromkeys(("map", "unmap", "io_page_fault", "add_device_to_group",
                     "remove_device_from_group", "attach_device_to_domain",
                     "detach_device_from_domain"), "iommu"),
    **dict.fromkeys(("dma_map_page", "dma_map_resource", "dma_map_phys",
                     "dma_unmap_page", "dma_unmap_resource", "dma_unmap_phys",
                     "dma_alloc", "dma_alloc_pages", "dma_alloc_sgt_err", "dma_alloc_sgt",
                     "dma_free", "dma_free_pages", "dma_free_sgt",
                     "dma_map_sg", "dma_map_sg_err", "dma_unmap_sg",
                     "dma_sync_single_for_cpu", "dma_sync_single_for_device",
                     "dma_sync_sg_for_cpu", "dma_sync_sg_for_device"), "dma"),
    "swiotlb_bounced": "swiotlb",
    **dict.fromkeys(("qi_submit", "cache_tag_flush_range", "cache_tag_flush_range_np",
                     "cache_tag_flush_all", "cache_tag_assign", "cache_tag_unassign"),
                    "intel_iommu"),
    "tracing_mark_write": "ftrace",
}

#: ``enum dma_data_direction`` (include/linux/dma-direction.h) by the name ``dma.h`` prints.
DMA_DIRECTIONS: dict[str, int] = {"BIDIRECTIONAL": 0, "TO_DEVICE": 1, "FROM_DEVICE": 2, "NONE": 3}

#: ``decode_dma_attrs`` table of include/trace/events/dma.h, in print order (MMIO is 6.18+).
DMA_ATTR_NAMES: dict[str, int] = {
    "WEAK_ORDERING": 1 << 1, "WRITE_COMBINE": 1 << 2, "NO_KERNEL_MAPPING": 1 << 4,
    "SKIP_CPU_SYNC": 1 << 5, "FORCE_CONTIGUOUS": 1 << 6, "ALLOC_SINGLE_PAGES": 1 << 7,
    "NO_WARN": 1 << 8, "PRIVILEGED": 1 << 9, "MMIO": 1 << 10,
    # 7.3.4 (include/trace/events/dma.h): DMA_ATTR_DEBUGGING_IGNORE_CACHELINES prints CACHELINES_OVERLAP
    "CACHELINES_OVERLAP": 1 << 11, "REQUIRE_COHERENT": 1 << 12, "CC_SHARED": 1 << 13,
    "ALLOC_CC_SHARED": 1 << 14,
}

#: ``DMA_TRACE_MAX_ENTRIES`` (include/trace/events/dma.h, stable 6.12.y and mainline): arrays of
#: ``dma_map_sg`` are cut to this many entries.
DMA_TRACE_MAX_ENTRIES = 128


# Bounded digit runs: a garbled 5000-digit number must fail the match, not hit int()'s limit.
_HEX = r"[0-9a-fA-F]{1,16}"
_DEC = r"[0-9]{1,20}"
_SDEC = r"-?[0-9]{1,20}"
_ARR = r"\{(?:0x[0-9a-fA-F]{1,16}(?:,0x[0-9a-fA-F]{1,16})*)?\}"

_DEV = r"(?P<device>\S+)"
_DIR = r"dir=(?P<dir>\S+)"
_ATTRS = r"attrs=(?P<attrs>\S*)"


class _TooWide(ValueError):
    """A decimal field beyond 64 bits."""


def _dec(text: str) -> int:
    v = int(text)
    if v > U64_MASK:
        raise _TooWide(text)
    return v


def _hex(text: str) -> int:
    return int(text, 16)


def _str(text: str) -> str:
    return text


def _array(text: str) -> list[int]:
    inner = text[1:-1]
    return [int(x, 16) for x in inner.split(",")] if inner else []


_CONVERTERS = {"hex": _hex, "dec": _dec, "arr": _array, "str": _str}


def _make_converter(plan: tuple) -> Callable[[tuple], dict[str, Any]]:
    """One function that turns a match's groups into the fields dict, written out for the spec's
    groups (a loop over the plan costs twice as much per line; as ``collections.namedtuple`` does,
    the source is built from the spec's own, fixed group names). Optional groups that did not match
    are left out; a decimal beyond 64 bits raises ``_TooWide``."""
    names = {"_hex": _hex, "_dec": _dec, "_array": _array}
    body = []
    for i, (name, fn) in enumerate(plan):
        if not name.isidentifier():
            raise ValueError(f"group name {name!r}")
        expr = f"g[{i}]" if fn is _str else f"{fn.__name__}(g[{i}])"
        if fn is _hex:
            expr = f"int(g[{i}], 16)"
        body.append((name, i, expr))
    required = "{" + ", ".join(f"{name!r}: {expr}" for name, _, expr in body) + "}"
    lines = ["def convert(g):", f"    if None not in g: return {required}", "    f = {}"]
    for name, i, expr in body:
        lines.append(f"    if g[{i}] is not None: f[{name!r}] = {expr}")
    lines.append("    return f")
    exec("\n".join(lines), names)      # noqa: S102 - fixed text made from the spec's group names
    convert: Callable[[tuple], dict[str, Any]] = names["convert"]  # type: ignore[assignment]
    return convert


class _Spec:
    """One event's field regex, the kernel format it stands for, and how to convert each group."""

    __slots__ = ("regex", "expected", "conv", "check", "plan", "fullmatch", "convert")

    def __init__(self, pattern: str, expected: str, check=None, types: dict[str, str] | None = None):
        self.regex = re.compile(pattern, re.ASCII)
        self.fullmatch = self.regex.fullmatch
        self.expected = expected
        self.check = check
        conv = {}
        for name in self.regex.groupindex:
            if types and name in types:
                conv[name] = types[name]
            elif name in _HEX_FIELDS:
                conv[name] = "hex"
            elif name in _DEC_FIELDS:
                conv[name] = "dec"
            elif name in _ARR_FIELDS:
                conv[name] = "arr"
            else:
                conv[name] = "str"
        self.conv = conv
        # (name, converter) in group order, for m.groups()
        self.plan = tuple((name, _CONVERTERS[conv[name]])
                          for name, _ in sorted(self.regex.groupindex.items(), key=lambda x: x[1]))
        self.convert = _make_converter(self.plan)

    def fields_of(self, groups: tuple) -> dict[str, Any] | None:
        """The fields of text this format's regex already matched (its ``groups``, in group order),
        converted and checked as :func:`parse_fields` does; None when they do not pass (a number
        beyond 64 bits, a failed check), for :func:`parse_fields` to say why."""
        try:
            f = self.convert(groups)
        except _TooWide:
            return None
        return f if self.check is None or self.check(f) is None else None


_HEX_FIELDS = {"iova", "iova_end", "paddr", "dma_addr", "phys_addr", "dma_mask",
               "dev_addr", "qw0", "qw1", "qw2", "qw3", "start", "end", "addr", "pages", "mask"}
_DEC_FIELDS = {"size", "unmapped_size", "group_id", "nents", "nents_traced", "ents",
               "ents_traced", "err", "pasid", "domain_id", "ref"}
_ARR_FIELDS = {"dma_addrs", "sizes", "phys_addrs"}


def _check_map_end(f: dict) -> str | None:
    if f["iova_end"] != (f["iova"] + f["size"]) & U64_MASK:
        return f"end 0x{f['iova_end']:x} is not iova + size = 0x{(f['iova'] + f['size']) & U64_MASK:x}"
    return None


def _check_map_sg(f: dict) -> str | None:
    if len(f["dma_addrs"]) != len(f["sizes"]):
        return f"{len(f['dma_addrs'])} dma_addrs but {len(f['sizes'])} sizes"
    if "nents" in f:
        n, nt, e, et = f["nents"], f["nents_traced"], f["ents"], f["ents_traced"]
        if nt != min(n, DMA_TRACE_MAX_ENTRIES) or et != min(e, DMA_TRACE_MAX_ENTRIES):
            return f"nents={nt}/{n} ents={et}/{e} are not min(count, {DMA_TRACE_MAX_ENTRIES})/count"
        if len(f["phys_addrs"]) != nt or len(f["dma_addrs"]) != et:
            return (f"nents={nt}/{n} ents={et}/{e} but {len(f['phys_addrs'])} phys_addrs and "
                    f"{len(f['dma_addrs'])} dma_addrs")
        if f["truncated"] != (n > DMA_TRACE_MAX_ENTRIES or e > DMA_TRACE_MAX_ENTRIES):
            return "[TRUNCATED] does not agree with the counts"
    return None


def _check_sync_sg(f: dict) -> str | None:
    if len(f["dma_addrs"]) != len(f["sizes"]):
        return f"{len(f['dma_addrs'])} dma_addrs but {len(f['sizes'])} sizes"
    return None


_MAP_FMT = "'%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s'"
_UNMAP_FMT = "'%s dir=%s dma_addr=%llx size=%zu attrs=%s'"
_ALLOC_FMT = "'%s dir=%s dma_addr=%llx size=%zu virt_addr=%p flags=%s attrs=%s'"
_FREE_FMT = "'%s dir=%s dma_addr=%llx size=%zu virt_addr=%p attrs=%s'"
_SYNC_FMT = "'%s dir=%s dma_addr=%llx size=%zu'"
_SYNC_SG_FMT = "'%s dir=%s dma_addrs=%s sizes=%s'"
_CT_FLUSH_FMT = ("'%s %s[%d] type %s did %d [0x%lx-0x%lx] addr 0x%lx pages 0x%lx mask 0x%lx' (6.12) or "
                 "'%s %s[%d] type %s did %d [0x%lx-0x%lx] addr 0x%lx mask 0x%lx' (7.3)")
_CT_LOG_FMT = "'%s/%s type %s did %d pasid %d ref %d'"
_GROUP_FMT = "'IOMMU: groupID=%d device=%s'"
_DEVICE_FMT = "'IOMMU: device=%s'"

_map_spec = _Spec(rf"{_DEV} {_DIR} dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) "
                  rf"phys_addr=(?P<phys_addr>{_HEX}) {_ATTRS}", _MAP_FMT)
_unmap_spec = _Spec(rf"{_DEV} {_DIR} dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) {_ATTRS}",
                    _UNMAP_FMT)
_alloc_spec = _Spec(rf"{_DEV} (?:{_DIR} )?dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) "
                    rf"virt_addr=(?P<virt_addr>\S+) flags=(?P<flags>\S+) {_ATTRS}", _ALLOC_FMT)
_free_spec = _Spec(rf"{_DEV} (?:{_DIR} )?dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) "
                   rf"virt_addr=(?P<virt_addr>\S+) {_ATTRS}", _FREE_FMT)
_sync_spec = _Spec(rf"{_DEV} {_DIR} dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC})", _SYNC_FMT)
_sync_sg_spec = _Spec(rf"{_DEV} {_DIR} dma_addrs=(?P<dma_addrs>{_ARR}) sizes=(?P<sizes>{_ARR})",
                      _SYNC_SG_FMT, _check_sync_sg)
_ct_flush_spec = _Spec(
    rf"(?P<iommu>\S+) (?P<dev>\S+?)\[(?P<pasid>{_SDEC})\] type (?P<type>\S+) "
    rf"did (?P<domain_id>{_SDEC}) \[0x(?P<start>{_HEX})-0x(?P<end>{_HEX})\] "
    rf"addr 0x(?P<addr>{_HEX})(?: pages 0x(?P<pages>{_HEX}))? mask 0x(?P<mask>{_HEX})", _CT_FLUSH_FMT)
_ct_log_spec = _Spec(rf"(?P<iommu>[^/\s]+)/(?P<dev>\S+) type (?P<type>\S+) did (?P<domain_id>{_SDEC}) "
                     rf"pasid (?P<pasid>{_SDEC}) ref (?P<ref>{_SDEC})", _CT_LOG_FMT)
_group_spec = _Spec(rf"IOMMU: groupID=(?P<group_id>{_SDEC}) device=(?P<device>.*)", _GROUP_FMT)
_device_spec = _Spec(r"IOMMU: device=(?P<device>.*)", _DEVICE_FMT)

EVENT_FORMATS: dict[str, _Spec] = {
    "map": _Spec(rf"IOMMU: iova=0x(?P<iova>{_HEX}) - 0x(?P<iova_end>{_HEX}) "
                 rf"paddr=0x(?P<paddr>{_HEX}) size=(?P<size>{_DEC})",
                 "'IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu'", _check_map_end),
    "unmap": _Spec(rf"IOMMU: iova=0x(?P<iova>{_HEX}) - 0x(?P<iova_end>{_HEX}) "
                   rf"size=(?P<size>{_DEC}) unmapped_size=(?P<unmapped_size>{_DEC})",
                   "'IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu'", _check_map_end),
    "io_page_fault": _Spec(rf"IOMMU:(?P<driver>\S*) {_DEV} iova=0x(?P<iova>{_HEX}) "
                           rf"flags=0x(?P<flags>{_HEX})",
                           "'IOMMU:%s %s iova=0x%016llx flags=0x%04x' (driver, device)",
                           types={"flags": "hex"}),
    "add_device_to_group": _group_spec, "remove_device_from_group": _group_spec,
    "attach_device_to_domain": _device_spec, "detach_device_from_domain": _device_spec,
    "dma_map_page": _map_spec, "dma_map_resource": _map_spec, "dma_map_phys": _map_spec,
    "dma_unmap_page": _unmap_spec, "dma_unmap_resource": _unmap_spec, "dma_unmap_phys": _unmap_spec,
    "dma_alloc": _alloc_spec, "dma_alloc_pages": _alloc_spec, "dma_alloc_sgt_err": _alloc_spec,
    "dma_alloc_sgt": _Spec(rf"{_DEV} {_DIR} dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) "
                           rf"phys_addrs=(?P<phys_addrs>{_ARR}) flags=(?P<flags>\S+) {_ATTRS}",
                           "'%s dir=%s dma_addr=%llx size=%zu phys_addrs=%s flags=%s attrs=%s'"),
    "dma_free": _free_spec, "dma_free_pages": _free_spec,
    "dma_free_sgt": _Spec(rf"{_DEV} {_DIR} dma_addr=(?P<dma_addr>{_HEX}) size=(?P<size>{_DEC}) "
                          rf"phys_addrs=(?P<phys_addrs>{_ARR})",
                          "'%s dir=%s dma_addr=%llx size=%zu phys_addrs=%s'"),
    "dma_map_sg": _Spec(
        rf"{_DEV} {_DIR}(?: nents=(?P<nents_traced>{_DEC})/(?P<nents>{_DEC}) "
        rf"ents=(?P<ents_traced>{_DEC})/(?P<ents>{_DEC})(?P<truncated> \[TRUNCATED\])?)? "
        rf"dma_addrs=(?P<dma_addrs>{_ARR}) sizes=(?P<sizes>{_ARR}) "
        rf"phys_addrs=(?P<phys_addrs>{_ARR}) {_ATTRS}",
        "'%s dir=%s nents=%d/%d ents=%d/%d%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s' "
        "(6.12.y) or '%s dir=%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s' (6.12.0)", _check_map_sg),
    "dma_map_sg_err": _Spec(rf"{_DEV} {_DIR} dma_addrs=(?P<dma_addrs>{_ARR}) err=(?P<err>{_SDEC}) {_ATTRS}",
                            "'%s dir=%s dma_addrs=%s err=%d attrs=%s'"),
    "dma_unmap_sg": _Spec(rf"{_DEV} {_DIR} phys_addrs=(?P<phys_addrs>{_ARR}) {_ATTRS}",
                          "'%s dir=%s phys_addrs=%s attrs=%s'"),
    "dma_sync_single_for_cpu": _sync_spec, "dma_sync_single_for_device": _sync_spec,
    "dma_sync_sg_for_cpu": _sync_sg_spec, "dma_sync_sg_for_device": _sync_sg_spec,
    "swiotlb_bounced": _Spec(rf"dev_name: {_DEV} dma_mask=(?P<dma_mask>{_HEX}) "
                             rf"dev_addr=(?P<dev_addr>{_HEX}) size=(?P<size>{_DEC}) (?P<force>\S+)",
                             "'dev_name: %s dma_mask=%llx dev_addr=%llx size=%zu %s'"),
    "qi_submit": _Spec(rf"(?P<type>\S+) (?P<iommu>\S+): 0x(?P<qw0>{_HEX}) 0x(?P<qw1>{_HEX}) "
                       rf"0x(?P<qw2>{_HEX}) 0x(?P<qw3>{_HEX})",
                       "'%s %s: 0x%llx 0x%llx 0x%llx 0x%llx'"),
    "cache_tag_flush_range": _ct_flush_spec, "cache_tag_flush_range_np": _ct_flush_spec,
    "cache_tag_flush_all": _ct_log_spec, "cache_tag_assign": _ct_log_spec,
    "cache_tag_unassign": _ct_log_spec,
}
assert set(EVENT_FORMATS) | {"tracing_mark_write"} == set(KNOWN_EVENTS)


def parse_fields(event: str, text: str) -> tuple[dict[str, Any] | None, str, str]:
    """``(fields, expected, why)``; fields is None when the text does not fit the format."""
    if event == "tracing_mark_write":
        return {"text": text}, "", ""
    spec = EVENT_FORMATS[event]
    m = spec.fullmatch(text) or spec.fullmatch(text.rstrip())
    if m is None:
        return None, spec.expected, ""
    try:
        f: dict[str, Any] = spec.convert(m.groups())
    except _TooWide as e:
        name = next(n for (n, _), v in zip(spec.plan, m.groups(), strict=True) if v == e.args[0])
        return None, spec.expected, f"{name}={e.args[0]} does not fit in 64 bits"
    if event == "dma_map_sg" and "nents" in f:
        f["truncated"] = "truncated" in f
    if spec.check is not None:
        why = spec.check(f)
        if why:
            return None, spec.expected, why
    return f, spec.expected, ""


def decode_dma_attrs(attrs: int) -> str:
    """Text of ``decode_dma_attrs(attrs)`` (include/trace/events/dma.h, ``__print_flags`` with
    ``"|"``): known names in table order, left-over bits as ``0x%lx``; 0 gives ``""``.

    ``attrs``: ``unsigned long``.
    """
    if not 0 <= attrs <= U64_MASK:
        raise ValueError(f"attrs={attrs!r}: must be an unsigned long (0..2**64-1)")
    parts = []
    for name, bit in DMA_ATTR_NAMES.items():
        if attrs & bit:
            parts.append(name)
            attrs &= ~bit
    if attrs:
        parts.append(f"0x{attrs:x}")
    return "|".join(parts)


def parse_dma_attrs(text: str) -> int:
    """Inverse of :func:`decode_dma_attrs`: ``"SKIP_CPU_SYNC|NO_WARN"`` -> ``0x120``."""
    value = 0
    for part in text.split("|") if text else ():
        if part in DMA_ATTR_NAMES:
            value |= DMA_ATTR_NAMES[part]
        elif part.startswith("0x"):
            try:
                value |= int(part, 16)
            except ValueError:
                raise ValueError(f"attrs {text!r}: {part!r} is not a hex number") from None
        else:
            raise ValueError(f"attrs {text!r}: unknown DMA attribute {part!r} "
                             f"(known: {', '.join(DMA_ATTR_NAMES)})")
    return value
