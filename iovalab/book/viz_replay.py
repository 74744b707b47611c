"""Draw a real kernel capture's IOVA allocations next to the simulator's replay of it.

No kernel analogue: a view over :class:`iovalab.trace.replay.ReplayResult` (``kernel_iovas`` and
``sim_iovas``, each a list of ``(timestamp, iova, size)`` in allocation order). Pure function: result
in, matplotlib ``Figure`` out; nothing is computed here except the difference of the two lists.
"""

from __future__ import annotations

import textwrap
from typing import Any

__all__ = ["replay_summary", "plot_replay"]


def replay_summary(result: Any) -> dict:
    """Counts behind the figure: allocations on each side, how many have the same IOVA and size,
    the first differing allocation (index) or None, and the replay's TOTAL line."""
    k, s = result.kernel_iovas, result.sim_iovas
    same = sum(1 for a, b in zip(k, s, strict=False) if a[1:] == b[1:])
    first = next((i for i, (a, b) in enumerate(zip(k, s, strict=False)) if a[1:] != b[1:]), None)
    if first is None and len(k) != len(s):
        first = min(len(k), len(s))
    total = (f"TOTAL: {result.allocations} allocations, {result.matched} matched ({result.reordered} "
             f"reordered), {result.mismatched} mismatched")
    return dict(kernel=len(k), simulator=len(s), identical=same, first_difference=first, total=total)


def plot_replay(result: Any, capture: Any = None, title: str | None = None):
    """Two panels over time (seconds from the first allocation):

    * top: every allocation as a vertical bar from its IOVA to IOVA + size, the real kernel's in wide
      grey, the simulator's in a thin line on top (they coincide when the bars are fully covered);
    * bottom: simulator IOVA minus kernel IOVA for each allocation (0 everywhere when they agree),
      with the replay's TOTAL line.

    ``capture`` (the :class:`~iovalab.trace.ftrace.FtraceCapture`) adds the ``WORKLOAD:`` markers as
    dotted lines. Returns the ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    k, s = result.kernel_iovas, result.sim_iovas
    if not k:
        raise ValueError("the replay has no allocations to draw")
    t0 = k[0][0]
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(7.6, 5.6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True)
    kt = [t - t0 for t, _, _ in k]
    ax.vlines(kt, [a for _, a, _ in k], [a + n for _, a, n in k], colors="0.72", linewidth=5,
              label=f"real kernel ({len(k)} allocations)")
    st = [t - t0 for t, _, _ in s]
    ax.vlines(st, [a for _, a, _ in s], [a + n for _, a, n in s], colors="tab:blue", linewidth=1.2,
              label=f"simulator replay ({len(s)} allocations)")
    lo = min(min(a for _, a, _ in k), min((a for _, a, _ in s), default=k[0][1]))
    hi = max(max(a + n for _, a, n in k), max((a + n for _, a, n in s), default=k[0][1]))
    step = 1 << max(12, ((hi - lo) // 6).bit_length() - 1)      # a power of two, ~6 ticks
    ax.set_ylim(lo - step // 4, hi + step // 4)
    ax.yaxis.set_major_locator(MultipleLocator(step))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):#x}"))
    ax.set_ylabel("IOVA (bar = IOVA .. IOVA + size)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(textwrap.fill(title or f"{result.path}: IOVA of every allocation, kernel vs simulator", 64),
                 fontsize=10)
    diffs = [(b[1] - a[1]) for a, b in zip(k, s, strict=False)]
    dx.plot(kt[:len(diffs)], diffs, "o", ms=3, color="tab:green" if not any(diffs) else "tab:red")
    dx.axhline(0, color="0.5", lw=0.8)
    dx.set_ylabel("sim - kernel (bytes)")
    dx.set_xlabel("time since the first allocation (s)")
    summ = replay_summary(result)
    dx.set_title(f"{summ['identical']} of {summ['kernel']} allocations identical (IOVA and size)\n"
                 f"{summ['total']}", fontsize=9)
    if not any(diffs):
        dx.set_ylim(-1, 1)
    if capture is not None:
        for m in getattr(capture, "markers", []):
            if m.text.startswith("WORKLOAD:") and m.timestamp >= t0:
                for a in (ax, dx):
                    a.axvline(m.timestamp - t0, color="0.85", lw=0.6, ls=":", zorder=0)
    return fig
