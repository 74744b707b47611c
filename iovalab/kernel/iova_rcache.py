"""The IOVA range caches of ``drivers/iommu/iova.c`` (Linux 6.16/6.17): the section the kernel heads
"Magazine caches for IOVA ranges" (after Bonwick and Adams' magazines): ``struct iova_magazine``
(``iova_magazine_pop``, ``iova_magazine_free_pfns``), ``struct iova_cpu_rcache`` (the ``loaded`` and
``prev`` magazines of one CPU), ``struct iova_rcache`` (one per size bin: the per-CPU caches and the
depot, ``iova_depot_pop``/``iova_depot_push``/``iova_depot_work_func``), ``iova_domain_init_rcaches``,
``iova_rcache_insert``/``__iova_rcache_insert``, ``iova_rcache_get``/``__iova_rcache_get``,
``free_cpu_cached_iovas``, ``free_global_cached_iovas`` and ``iova_rcache_range``; plus the per-CPU
variable they live in (``alloc_percpu()``, include/linux/percpu.h), :class:`PerCpu`.

:class:`IovaRcacheMixin` holds these functions for :class:`iovalab.kernel.iova.IovaDomain`
(``struct iova_domain``), whose red-black tree (``find_iova``, ``remove_iova``) the magazines free
into; ``alloc_iova_fast``/``free_iova_fast``, which try the caches first, stay with the tree in
:mod:`iovalab.kernel.iova`, where iova.c has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from iovalab.kernel.events import EventLog
from iovalab.kernel.units import PAGE_SIZE

T = TypeVar("T")

__all__ = [
    "IOVA_MAG_SIZE", "IOVA_RANGE_CACHE_MAX_SIZE", "MAX_CPUS", "IOVA_DEPOT_DELAY_MS",
    "iova_rcache_range", "iova_rcache_roundup", "iova_rcache_bin", "IovaMagazine", "PerCpu", "IovaRcacheMixin",
]

#: ``IOVA_MAG_SIZE`` (iova.c): pfns per magazine (so ``struct iova_magazine`` is 1024 bytes).
IOVA_MAG_SIZE = 127
#: ``IOVA_RANGE_CACHE_MAX_SIZE`` (iova.c): number of rcache bins; bin = order_base_2(size) < 6.
IOVA_RANGE_CACHE_MAX_SIZE = 6
#: Most CPUs a domain may have: ``NR_CPUS`` with ``CONFIG_MAXSMP`` on x86_64 (arch/x86/Kconfig).
MAX_CPUS = 8192
#: ``IOVA_DEPOT_DELAY`` (iova.c) = msecs_to_jiffies(100).
IOVA_DEPOT_DELAY_MS = 100

_L = "iova"


def iova_rcache_range(page_size: int = PAGE_SIZE) -> int:
    """``iova_rcache_range()`` (iova.c): largest cached size in bytes, ``PAGE_SIZE << 5``."""
    return page_size << (IOVA_RANGE_CACHE_MAX_SIZE - 1)


def iova_rcache_roundup(size: int) -> int:
    """The size ``alloc_iova_fast()`` (iova.c) allocates for ``size`` granules: below
    ``1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`` (32) it is ``roundup_pow_of_two(size)``, so that the
    range fits an rcache bin when freed; larger sizes are unchanged."""
    if size < (1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)):
        return 1 << (size - 1).bit_length() if size > 1 else size
    return size


def iova_rcache_bin(size: int) -> int | None:
    """The rcache bin of ``size`` granules in ``iova_rcache_insert()``/``iova_rcache_get()``
    (iova.c): ``order_base_2(size)``, or None when that is ``>= IOVA_RANGE_CACHE_MAX_SIZE``
    (never cached)."""
    log_size = (size - 1).bit_length() if size > 1 else 0
    return log_size if log_size < IOVA_RANGE_CACHE_MAX_SIZE else None



@dataclass
class IovaMagazine:
    """``struct iova_magazine`` (iova.c): up to ``IOVA_MAG_SIZE`` pfns, used as a stack
    (``iova_magazine_full/empty/push`` are written inline on ``pfns`` by the callers)."""

    pfns: list

    @property
    def size(self) -> int:
        return len(self.pfns)

    def pop(self, limit_pfn: int) -> int:
        """``iova_magazine_pop(mag, limit_pfn)`` (iova.c).

        Scans from the top for the first pfn ``<= limit_pfn`` (inclusive); takes it and moves the
        last entry into its slot. Returns 0 when none fits (the caller then goes to the tree).
        """
        p = self.pfns
        i = len(p) - 1
        while p[i] > limit_pfn:
            if i == 0:
                return 0
            i -= 1
        pfn = p[i]
        last = p.pop()
        if i < len(p):
            p[i] = last
        return pfn



class PerCpu(Generic[T]):
    """A per-CPU variable of ``ncpus`` CPUs (``alloc_percpu()``, include/linux/percpu.h), each CPU's
    copy made on its first use.

    The kernel allocates every possible CPU's copy up front; the model makes only those a run
    touches, so a domain of ``MAX_CPUS`` CPUs costs what its busy CPUs use, and saving or
    scanning the state visits only them (no kernel analogue for the laziness; the values are
    the same). ``cpu`` outside ``0..ncpus-1`` raises ``IndexError``. Iteration yields every CPU's
    value in CPU order (an untouched CPU's a fresh one, not kept); :meth:`touched` only the made
    ones, in CPU order.
    """

    __slots__ = ("_n", "_make", "_d")

    def __init__(self, ncpus: int, make: Callable[[], T]):
        self._n = ncpus
        self._make = make
        self._d: dict[int, T] = {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, cpu: int) -> T:
        v = self._d.get(cpu)
        if v is None:
            if cpu.__class__ is not int or not 0 <= cpu < self._n:
                raise IndexError(f"cpu {cpu!r} is not one of the {self._n} CPUs (0..{self._n - 1})")
            v = self._d[cpu] = self._make()
        return v

    def __iter__(self) -> Iterator[T]:
        d = self._d
        for cpu in range(self._n):
            v = d.get(cpu)
            yield self._make() if v is None else v

    def touched(self) -> list[tuple[int, T]]:
        """``(cpu, value)`` of every CPU used so far, in CPU order."""
        return sorted(self._d.items())       # CPUs are unique: only the keys are compared

    def replace(self, values: dict[int, T]) -> None:
        """Set the used CPUs' values to ``values`` (the others become fresh again)."""
        self._d = dict(values)



class _CpuRcache:
    """``struct iova_cpu_rcache``: the ``loaded`` and ``prev`` magazines of one CPU and bin."""

    __slots__ = ("loaded", "prev")

    def __init__(self):
        self.loaded = IovaMagazine([])
        self.prev = IovaMagazine([])


class _Rcache:
    """``struct iova_rcache``: per-CPU magazines and the depot (a LIFO list) of one size bin."""

    __slots__ = ("cpu_rcaches", "depot")

    def __init__(self, ncpus: int):
        self.cpu_rcaches: PerCpu[_CpuRcache] = PerCpu(ncpus, _CpuRcache)
        self.depot: list[IovaMagazine] = []  # depot[-1] is the head (rcache->depot)

    @property
    def depot_size(self) -> int:
        return len(self.depot)



class IovaRcacheMixin:
    """The range caches of ``struct iova_domain`` (``iovad->rcaches``) and the functions over them
    (iova.c). The host (:class:`~iovalab.kernel.iova.IovaDomain`) provides what is declared below."""

    if TYPE_CHECKING:
        log: EventLog
        ncpus: int

        def find_iova(self, pfn: int) -> Any: ...

        def _remove_iova(self, node: Any, cpu: int, why: str) -> None: ...

        def _check_cpu(self, cpu: int) -> None: ...

    def iova_domain_init_rcaches(self) -> None:
        """``iova_domain_init_rcaches(iovad)`` (iova.c): ``IOVA_RANGE_CACHE_MAX_SIZE`` bins, each with
        empty ``loaded``/``prev`` magazines per CPU (made on first use here) and an empty depot.
        Magazine allocation never fails here (GFP_KERNEL in the kernel)."""
        self.rcaches = [_Rcache(self.ncpus) for _ in range(IOVA_RANGE_CACHE_MAX_SIZE)]

    def iova_rcache_insert(self, pfn: int, size: int, cpu: int = 0) -> bool:
        """``iova_rcache_insert()`` + ``__iova_rcache_insert()`` (iova.c).

        Bin ``order_base_2(size)`` of the *freeing* CPU: push into ``loaded``; if full, swap with
        ``prev`` when that has room; else push the full ``loaded`` onto the depot and start a new
        magazine. Returns False for sizes above the cached range.
        """
        log_size = iova_rcache_bin(size)
        if log_size is None:
            return False
        rcache = self.rcaches[log_size]
        c = rcache.cpu_rcaches[cpu]
        how = "loaded"
        if len(c.loaded.pfns) == IOVA_MAG_SIZE:
            if len(c.prev.pfns) != IOVA_MAG_SIZE:
                c.loaded, c.prev = c.prev, c.loaded
                how = "swap"
            else:
                rcache.depot.append(c.loaded)  # iova_depot_push
                c.loaded = IovaMagazine([])
                how = "depot_push"
                self.log.emit(_L, "iova_depot_push", "depot_push", None, cpu=cpu, bin=log_size,
                              depot_size=rcache.depot_size)
        c.loaded.pfns.append(pfn)
        self.log.emit_values(_L, "iova_rcache_insert", "rcache_insert", True, cpu, (pfn, size, log_size, how))
        return True

    def iova_rcache_get(self, size: int, limit_pfn: int, cpu: int = 0) -> int:
        """``iova_rcache_get()`` + ``__iova_rcache_get()`` (iova.c); ``limit_pfn`` exclusive.

        ``loaded`` if non-empty, else swap in ``prev``, else replace ``loaded`` by a full magazine
        popped from the depot; then ``iova_magazine_pop(mag, limit_pfn - size)``. 0 = miss.
        """
        log_size = iova_rcache_bin(size)
        if log_size is None:
            return 0
        rcache = self.rcaches[log_size]
        c = rcache.cpu_rcaches[cpu]
        src = "loaded"
        if not c.loaded.pfns:
            if c.prev.pfns:
                c.loaded, c.prev = c.prev, c.loaded
                src = "prev"
            elif rcache.depot:
                c.loaded = rcache.depot.pop()  # iova_depot_pop
                src = "depot"
                self.log.emit(_L, "iova_depot_pop", "depot_pop", None, cpu=cpu, bin=log_size,
                              depot_size=rcache.depot_size)
            else:
                return 0
        pfn = c.loaded.pop(limit_pfn - size)
        if pfn and src != "loaded":
            self.log.emit(_L, "__iova_rcache_get", "magazine_swap", pfn, cpu=cpu, bin=log_size,
                          source=src)
        return pfn

    def _magazine_free_pfns(self, mag: IovaMagazine, cpu: int, why: str) -> None:
        """``iova_magazine_free_pfns()`` (iova.c): every pfn back to the tree, in slot order."""
        for pfn in mag.pfns:
            node = self.find_iova(pfn)
            if node is None:  # WARN_ON(!iova) in the kernel
                self.log.warn(_L, "iova_magazine_free_pfns", 0, "cached pfn not in the tree", pfn=pfn)
                continue
            self._remove_iova(node, cpu, why)
        mag.pfns.clear()

    def free_cpu_cached_iovas(self, cpu: int) -> None:
        """``free_cpu_cached_iovas(cpu, iovad)`` (iova.c): ``loaded`` then ``prev`` of every bin."""
        self._check_cpu(cpu)
        for b, rcache in enumerate(self.rcaches):
            c = rcache.cpu_rcaches[cpu]
            n = c.loaded.size + c.prev.size
            self._magazine_free_pfns(c.loaded, cpu, "free_cpu_cached_iovas")
            self._magazine_free_pfns(c.prev, cpu, "free_cpu_cached_iovas")
            if n:
                self.log.emit(_L, "free_cpu_cached_iovas", "rcache_drain", None, cpu=cpu, bin=b,
                              count=n)

    def free_global_cached_iovas(self) -> None:
        """``free_global_cached_iovas(iovad)`` (iova.c): empty every depot into the tree."""
        for b, rcache in enumerate(self.rcaches):
            n = 0
            while rcache.depot:
                mag = rcache.depot.pop()
                n += mag.size
                self._magazine_free_pfns(mag, 0, "free_global_cached_iovas")
            if n:
                self.log.emit(_L, "free_global_cached_iovas", "rcache_drain", None, bin=b, count=n)

    def iova_depot_work_func(self, bin: int, online_cpus: int | None = None) -> bool:
        """``iova_depot_work_func()`` (iova.c), run on demand instead of every 100 ms.

        Frees one depot magazine of ``bin`` back to the tree while the depot holds more magazines
        than online CPUs. Returns True when it did (the kernel then reschedules itself).
        """
        if not isinstance(bin, int) or isinstance(bin, bool) or not 0 <= bin < IOVA_RANGE_CACHE_MAX_SIZE:
            raise ValueError(f"iova_depot_work_func: bin {bin!r} must be an int in "
                             f"0..{IOVA_RANGE_CACHE_MAX_SIZE - 1} (IOVA_RANGE_CACHE_MAX_SIZE bins)")
        if online_cpus is not None and (not isinstance(online_cpus, int) or isinstance(online_cpus, bool)
                                        or not 1 <= online_cpus <= MAX_CPUS):
            raise ValueError(f"iova_depot_work_func: online_cpus {online_cpus!r} must be an int in 1..{MAX_CPUS}")
        rcache = self.rcaches[bin]
        if rcache.depot_size > (online_cpus or self.ncpus):
            mag = rcache.depot.pop()
            self._magazine_free_pfns(mag, 0, "iova_depot_work_func")
            self.log.emit(_L, "iova_depot_work_func", "depot_trim", None, bin=bin,
                          depot_size=rcache.depot_size)
            return True
        return False

    def run_depot_work(self) -> int:
        """Let "enough time" pass: run the depot trim of every bin until it stops. Returns how many
        magazines went back to the tree."""
        n = 0
        for b in range(IOVA_RANGE_CACHE_MAX_SIZE):
            while self.iova_depot_work_func(b):
                n += 1
        return n

    # -- views -----------------------------------------------------------------------------
    def cached_pfns(self) -> dict[int, list[tuple[str, int, int]]]:
        """Every pfn parked in a cache: ``pfn -> [(where, cpu, bin), ...]``."""
        out: dict[int, list[tuple[str, int, int]]] = {}
        for b, rcache in enumerate(self.rcaches):
            for cpu, c in enumerate(rcache.cpu_rcaches):
                for where, mag in (("loaded", c.loaded), ("prev", c.prev)):
                    for p in mag.pfns:
                        out.setdefault(p, []).append((where, cpu, b))
            for d, mag in enumerate(rcache.depot):
                for p in mag.pfns:
                    out.setdefault(p, []).append((f"depot{d}", -1, b))
        return out

    def rcache_summary(self) -> list[dict]:
        """Per bin: sizes of each CPU's magazines and the depot (for players and tests)."""
        return [{"bin": b, "granules": 1 << b,
                 "cpus": [(c.loaded.size, c.prev.size) for c in r.cpu_rcaches],
                 "depot": r.depot_size} for b, r in enumerate(self.rcaches)]

    def _save_rcaches(self) -> list:
        """Copies of every bin's magazines, ``[({cpu: (loaded pfns, prev pfns)}, [depot pfns, ...]), ...]``,
        for :meth:`_restore_rcaches` (a trial of :class:`~iovalab.kernel.iova.IovaDomain`)."""
        return [({cpu: (c.loaded.pfns[:], c.prev.pfns[:]) for cpu, c in r.cpu_rcaches.touched()},
                 [m.pfns[:] for m in r.depot]) for r in self.rcaches]

    def _restore_rcaches(self, rc: list) -> None:
        for r, (cpus, depot) in zip(self.rcaches, rc, strict=True):
            made = {}
            for cpu, (loaded, prev) in cpus.items():
                c = made[cpu] = _CpuRcache()
                c.loaded = IovaMagazine(loaded[:])
                c.prev = IovaMagazine(prev[:])
            r.cpu_rcaches.replace(made)
            r.depot = [IovaMagazine(p[:]) for p in depot]
