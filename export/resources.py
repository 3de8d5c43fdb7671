"""Wall time and peak resident memory of each export step.

A step's peak is sampled: a daemon thread reads this process's resident set
size (``/proc/self/statm``, or psutil where there is no ``/proc``) every
few milliseconds while the step runs. That sees TensorFlow's and ONNX
Runtime's allocators, which ``tracemalloc`` cannot, and leaves the kernel's
own peak counter (``VmHWM``, what ``getrusage`` and GNU ``time`` report)
untouched, so the whole run's peak stays exact and measurable from outside.
A growth of a few hundred MB takes far longer than the sampling interval
(the pages are touched one by one), so the sampled peak misses little.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

__all__ = ["StepMeter", "StepUsage", "process_peak_mb", "current_rss_mb"]

#: Seconds between samples: reading statm costs a few microseconds.
INTERVAL = 0.005


@dataclass(frozen=True)
class StepUsage:
    """What one step cost: seconds and peak RSS in MiB (None where RSS cannot be read)."""

    seconds: float
    peak_rss_mb: float | None

    def as_dict(self) -> dict:
        """``{"seconds", "peak_rss_mb"}`` for the report."""
        return {
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": None if self.peak_rss_mb is None else round(self.peak_rss_mb, 1),
        }


def current_rss_mb() -> float | None:
    """This process's resident set size now, in MiB (None if it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def process_peak_mb() -> float:
    """This process's peak RSS so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class StepMeter:
    """Times a step and samples its peak RSS: ``start()``, then ``stop()`` returns a :class:`StepUsage`."""

    def __init__(self, interval: float = INTERVAL):
        self._interval = interval
        self._t0 = time.perf_counter()
        self._peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin a step: the clock and the sampler."""
        self._peak = current_rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="unet-export-rss", daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            rss = current_rss_mb()
            if rss is not None and (self._peak is None or rss > self._peak):
                self._peak = rss

    def stop(self) -> StepUsage:
        """End the step."""
        seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = current_rss_mb()
        peak = self._peak if rss is None or (self._peak is not None and self._peak >= rss) else rss
        return StepUsage(seconds, peak)
