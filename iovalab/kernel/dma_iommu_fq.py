"""The flush queue of ``drivers/iommu/dma-iommu.c`` (Linux 6.17; unchanged in 7.3.4): a lazy
(``IOMMU_DOMAIN_DMA_FQ``) domain does not invalidate the IOTLB on every unmap; ``queue_iova()`` parks
the freed IOVA in ``struct iova_fq`` (a ring per CPU, or one ring with ``IOMMU_DMA_OPTS_SINGLE_QUEUE``)
stamped with ``fq_flush_start_cnt``, and ``fq_ring_free_locked()`` gives it back to the IOVA rcache
once a ``fq_flush_iotlb()`` (queue full, or the ``fq_timer`` firing ``fq_flush_timeout()``) has
finished after it was queued. ``iommu_dma_init_fq()`` sizes the rings (``IOVA_DEFAULT_FQ_SIZE`` /
``IOVA_SINGLE_FQ_SIZE``) and the timeout (``IOVA_DEFAULT_FQ_TIMEOUT`` / ``IOVA_SINGLE_FQ_TIMEOUT``).

:class:`FlushQueueMixin` holds these functions for :class:`iovalab.kernel.dma_iommu.DmaDomain` (the
``struct iommu_dma_cookie`` that owns the queues); ``iommu_dma_free_iova()``, which calls
``queue_iova()``, stays with the IOVA alloc/free in :mod:`iovalab.kernel.dma_iommu`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from iovalab.kernel.events import EventLog
from iovalab.kernel.iommu import IommuDomain
from iovalab.kernel.iova import IovaDomain
from iovalab.kernel.iova_rcache import PerCpu
from iovalab.kernel.units import check_cpu
from iovalab.kernel.version import timer_wheel_fires

__all__ = ["IOVA_DEFAULT_FQ_SIZE", "IOVA_DEFAULT_FQ_TIMEOUT", "IOVA_SINGLE_FQ_SIZE", "IOVA_SINGLE_FQ_TIMEOUT",
           "FqEntry", "FlushQueue", "FlushQueueMixin"]

# flush queue parameters (drivers/iommu/dma-iommu.c)
IOVA_DEFAULT_FQ_SIZE = 256
IOVA_DEFAULT_FQ_TIMEOUT = 10      # ms
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_SINGLE_FQ_TIMEOUT = 1000     # ms

_L = "dma"


@dataclass
class FqEntry:
    """``struct iova_fq_entry`` (dma-iommu.c)."""
    iova_pfn: int
    pages: int
    counter: int


@dataclass
class FlushQueue:
    """``struct iova_fq`` (dma-iommu.c): a ring of ``size`` slots, usable ``size - 1``."""
    size: int
    entries: deque[FqEntry] = field(default_factory=deque)  # head first

    def full(self) -> bool:
        """``fq_full()``: one slot of the ring always stays empty."""
        return len(self.entries) == self.size - 1


class FlushQueueMixin:
    """The flush-queue half of ``struct iommu_dma_cookie`` and the functions over it (dma-iommu.c).
    The host (:class:`~iovalab.kernel.dma_iommu.DmaDomain`) provides the attributes declared below."""

    if TYPE_CHECKING:
        log: EventLog
        iommu: IommuDomain
        iovad: IovaDomain
        ncpus: int
        hz: int

    def iommu_dma_init_fq(self, single_queue: bool, ncpus: int) -> None:
        """``iommu_dma_init_fq()`` (dma-iommu.c): ``iommu_dma_init_fq_single()`` (one queue of
        ``IOVA_SINGLE_FQ_SIZE``, ``IOVA_SINGLE_FQ_TIMEOUT``) or ``iommu_dma_init_fq_percpu()`` (a queue
        of ``IOVA_DEFAULT_FQ_SIZE`` per CPU, ``IOVA_DEFAULT_FQ_TIMEOUT``), both counters at 0, the timer
        idle. Here every domain has them (a strict one never queues); a CPU's ring is made on its first use."""
        self.single_queue = single_queue
        fq_size = IOVA_SINGLE_FQ_SIZE if single_queue else IOVA_DEFAULT_FQ_SIZE
        self.fq_timeout = IOVA_SINGLE_FQ_TIMEOUT if single_queue else IOVA_DEFAULT_FQ_TIMEOUT
        nq = 1 if single_queue else ncpus
        self.fqs: PerCpu[FlushQueue] = PerCpu(nq, lambda: FlushQueue(fq_size))  # made on first use
        self.fq_flush_start_cnt = 0
        self.fq_flush_finish_cnt = 0
        self.fq_timer_on = False
        self.fq_timer_deadline = 0.0
        self.now_ms = 0.0

    def _fq(self, cpu: int) -> FlushQueue:
        return self.fqs[0 if self.single_queue else cpu]

    def fq_ring_free(self, fq: FlushQueue, cpu: int) -> int:
        """``fq_ring_free_locked()`` (dma-iommu.c): free head entries whose counter is below
        ``fq_flush_finish_cnt`` into the rcache of ``cpu``. Returns how many."""
        n = 0
        while fq.entries and fq.entries[0].counter < self.fq_flush_finish_cnt:
            e = fq.entries.popleft()
            self.iovad.free_iova_fast(e.iova_pfn, e.pages, cpu)
            n += 1
        if n:
            self.log.emit(_L, "fq_ring_free", "fq_free", None, cpu=cpu, count=n)
        return n

    def fq_flush_iotlb(self, cpu: int = 0, why: str = "") -> None:
        """``fq_flush_iotlb()`` (dma-iommu.c): start count, ``flush_iotlb_all``, finish count."""
        self.fq_flush_start_cnt += 1
        self.iommu.iommu_flush_iotlb_all(cpu=cpu)
        self.fq_flush_finish_cnt += 1
        self.log.emit(_L, "fq_flush_iotlb", "fq_flush", None, cpu=cpu, why=why,
                      finish_cnt=self.fq_flush_finish_cnt)

    def queue_iova(self, pfn: int, pages: int, cpu: int = 0) -> None:
        """``queue_iova(cookie, pfn, pages, freelist)`` (dma-iommu.c): defer a free until a flush."""
        fq = self._fq(cpu)
        self.fq_ring_free(fq, cpu)
        if fq.full():
            self.fq_flush_iotlb(cpu, why="queue full")
            self.fq_ring_free(fq, cpu)
        fq.entries.append(FqEntry(pfn, pages, self.fq_flush_start_cnt))
        self.log.emit(_L, "queue_iova", "fq_add", None, cpu=cpu, pfn=pfn, pages=pages,
                      counter=self.fq_flush_start_cnt, queued=len(fq.entries))
        if not self.fq_timer_on:
            self.fq_timer_on = True
            # mod_timer(&fq_timer, jiffies + msecs_to_jiffies(fq_timeout)): runs on the timer wheel's tick
            self.fq_timer_deadline = timer_wheel_fires(self.now_ms, self.fq_timeout, self.hz)

    def fq_timer_ms(self) -> float:
        """How long after ``queue_iova`` arms it now (at ``now_ms``) the flush-queue timer fires, in ms.

        ``queue_iova`` (dma-iommu.c, 6.17 and 7.3.4) arms ``mod_timer(&cookie->fq_timer, jiffies +
        msecs_to_jiffies(fq_timeout))``; the timer wheel runs ``fq_flush_timeout`` one tick after
        ``jiffies`` reaches that expiry (``calc_index()``, kernel/time/timer.c:
        :func:`~iovalab.kernel.version.timer_wheel_fires`; ticks at multiples of ``1000 / HZ`` ms from
        time 0). Armed on a tick: ``msecs_to_jiffies + 1`` ticks (10 ms at HZ=250 is 3 jiffies, run 16 ms
        later; at HZ=100, 1 jiffy: 20 ms; at HZ=1000, 10 jiffies: 11 ms); armed between ticks: up to one
        tick less.
        """
        return timer_wheel_fires(self.now_ms, self.fq_timeout, self.hz) - self.now_ms

    def fq_flush_timeout(self, cpu: int = 0) -> None:
        """``fq_flush_timeout()`` (dma-iommu.c), the timer callback, run on ``cpu``: one
        ``flush_iotlb_all``, then free what is ready in every queue (into ``cpu``'s rcache)."""
        self.fq_timer_on = False
        self.fq_flush_iotlb(cpu, why="timeout")
        for _, fq in self.fqs.touched():   # an unused CPU's queue is empty: nothing to free
            self.fq_ring_free(fq, cpu)

    def advance_time(self, ms: float, cpu: int = 0) -> bool:
        """Let ``ms`` milliseconds pass; fires the flush-queue timer if it is due. True if fired."""
        if not isinstance(ms, int | float) or isinstance(ms, bool) or not math.isfinite(ms) or ms < 0:
            raise ValueError(f"advance_time: ms {ms!r} must be a finite number >= 0")
        check_cpu("advance_time", cpu, self.ncpus)
        self.now_ms += ms
        if self.fq_timer_on and self.now_ms >= self.fq_timer_deadline:
            self.fq_flush_timeout(cpu)
            return True
        return False

    def fq_pending(self) -> int:
        """IOVA ranges waiting in flush queues."""
        return sum(len(fq.entries) for _, fq in self.fqs.touched())
