"""How the Keras baseline is built changes its timing: a probe of the Keras rows alone.

Builds the seed network twice in one process, at the timed size (512x512x3, as the seed specifies) and
size-agnostic ((None, None, 3), what bench-unet used before), with the same weights, and times
``model.predict`` and a ``tf.function`` of each in interleaved rounds (this VM drifts 10-20% over
minutes, so sequential blocks would compare different machines). Wall and process CPU time are both
kept: a call whose wall time grows while its CPU time does not ran part of its work on fewer cores.

Usage: python benchmarks/scripts/keras_baseline_probe.py WEIGHTS [ROUNDS] [SIZE]
  e.g. /tmp/fixture/weights.weights.h5 16 512  (fixture: python -m unet_bench.fixture)
"""

import os
import sys
import time

# Before TensorFlow is imported (through unet_export), or its C++ logging is already on: hence the late imports.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from unet_export import build_vgg19_unet  # noqa: E402
from unet_export.weights import load_weights  # noqa: E402


def main() -> None:
    weights = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    import tensorflow as tf

    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    xt = tf.constant(x)
    calls = {}
    for label, shape in (("fixed", (size, size, 3)), ("agnostic", (None, None, 3))):
        model = build_vgg19_unet(shape, 21)
        load_weights(model, weights)
        fn = tf.function(lambda t, m=model: m(t, training=False))
        calls[f"{label} predict"] = lambda m=model: m.predict(x, verbose=0, batch_size=1)
        calls[f"{label} tf.function"] = lambda f=fn: f(xt).numpy()
    for fn in calls.values():  # warm-up: tracing, oneDNN primitive creation
        fn()
        fn()
    wall = {k: [] for k in calls}
    cpu = {k: [] for k in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(1e3 * (time.perf_counter() - t))
            cpu[name].append(1e3 * (time.process_time() - c))
        print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    print("| row | median wall ms | min | max | calls > 1.3x min | median CPU ms | wall per call (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name in calls:
        w = np.asarray(wall[name])
        slow = int((w > 1.3 * w.min()).sum())
        print(f"| {name} | {np.median(w):.0f} | {w.min():.0f} | {w.max():.0f} | {slow}/{len(w)} | "
              f"{np.median(cpu[name]):.0f} | {' '.join(f'{v:.0f}' for v in w)} |")


if __name__ == "__main__":
    main()
