"""Peak memory of the benchmark's child processes, measured from the process itself.

``getrusage(RUSAGE_SELF).ru_maxrss`` is no good for a child: Linux keeps it across ``execve``
and takes in the memory of the process it was spawned from, so every child of a benchmark
that had just seeded 3.2 M rows reported that parent's 437 MB. ``VmHWM`` in
``/proc/self/status`` is the peak of this process's own memory since it started its program.
"""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process since its ``exec`` (MB); elsewhere than Linux,
    ``ru_maxrss`` (which may include the spawning process's memory)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
