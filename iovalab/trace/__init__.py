"""Kernel traces: ftrace text in (:mod:`.ftrace`) and out (:mod:`.ftrace_write`), the replay of real
captures (:mod:`.replay`) and the kernel-oracle reference traces (:mod:`.reference`)."""
