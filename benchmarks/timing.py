"""Timing loops and their statistics (warm-up excluded, every raw timing kept)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

__all__ = ["time_calls", "summarize"]


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int,
    iters: int,
    sync: Callable[[], None] | None = None,
    on_iter: Callable[[], None] | None = None,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times; return seconds per call.

    ``sync`` (e.g. a device synchronize) runs inside the timed region, after
    each call, so asynchronous work is not under-counted.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
        if on_iter:
            on_iter()
    return out


def summarize(
    seconds: list[float], images_per_call: int, flops_per_call: int | None = None
) -> dict:
    """median, p90, p99, mean, min (ms), images/s and effective TFLOP/s."""
    ms = np.asarray(seconds) * 1e3
    med = float(np.median(ms))
    stats = {
        "n": len(ms),
        "median_ms": med,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "ms_per_image": med / images_per_call,
        "images_per_s": images_per_call / (med / 1e3),
    }
    if flops_per_call:
        stats["tflops"] = flops_per_call / (med / 1e3) / 1e12
    return stats
