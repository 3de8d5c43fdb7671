"""Segmenter.predict_with_proba against predict + predict_proba on the same image (CPU provider).

The saving is one model run; the post-processing of both (argmax and the
bilinear resize of every class channel) still runs, so the ratio is near 0.5
where the model dominates (full size) and higher for tiny models. Usage:
    python benchmarks/scripts/with_proba_bench.py MODEL.onnx [RUNS]
"""

import sys
import time

import numpy as np

from unet_runtime import Segmenter


def median_ms(fn, runs: int) -> float:
    """Median wall time of `runs` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    model, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with Segmenter(model, providers="cpu") as seg:
        print(f"model {model}: {seg.info.height}x{seg.info.width}, {seg.info.num_classes} classes, {seg.info.head}; "
              f"median of {runs} runs")
        for shape in ((512, 512, 3), (480, 640, 3)):
            img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
            both = median_ms(lambda: (seg.predict(img), seg.predict_proba(img)), runs)
            one = median_ms(lambda: seg.predict_with_proba(img), runs)
            print(f"image {shape[0]}x{shape[1]}: predict + predict_proba {both:.0f} ms, "
                  f"predict_with_proba {one:.0f} ms, ratio {one / both:.2f}")


if __name__ == "__main__":
    main()
