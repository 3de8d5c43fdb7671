"""The runtime's bilinear resize: the one-shot four-neighbour form (before) against the separable form (now).

Cases: probabilities of a 512x512 model (21 channels) resized to common photo
sizes, as predict_proba does; and a 1080p uint8 photo resized to the model's
512x512, as the pre-processing does. Best of 5 runs each. Usage:
    python benchmarks/scripts/resize_bench.py
"""

import timeit

import numpy as np

from unet_runtime import images as im


def one_shot(array, height, width):
    """The implementation before session 7: four full-size gathers and four full-size products."""
    y0, y1, fy = im._source_coords(height, array.shape[0])
    x0, x1, fx = im._source_coords(width, array.shape[1])
    a = array.astype(np.float32, copy=False)
    top = a[y0][:, x0] * (1 - fx)[None, :, None] + a[y0][:, x1] * fx[None, :, None]
    bottom = a[y1][:, x0] * (1 - fx)[None, :, None] + a[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def main() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((512, 512, 21), dtype=np.float32)
    photo = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    cases = [("probabilities 512x512x21 -> 480x640", probs, (480, 640)),
             ("probabilities 512x512x21 -> 1080x1920", probs, (1080, 1920)),
             ("probabilities 512x512x21 -> 300x200", probs, (300, 200)),
             ("uint8 photo 1080x1920x3 -> 512x512", photo, (512, 512))]
    print("| case | one-shot ms | separable ms | speed-up | max abs difference |")
    print("|---|---|---|---|---|")
    for name, array, (h, w) in cases:
        before = min(timeit.repeat(lambda: one_shot(array, h, w), number=1, repeat=5)) * 1e3
        after = min(timeit.repeat(lambda: im.resize_bilinear(array, h, w), number=1, repeat=5)) * 1e3
        diff = float(np.abs(one_shot(array, h, w) - im.resize_bilinear(array, h, w)).max())
        print(f"| {name} | {before:.1f} | {after:.1f} | {before / after:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
