"""A confident fixture: the seed model briefly trained on generated shapes.

INT8 (and fp16) accuracy gates mean nothing on random weights, whose softmax
is flat. This trains the real 30M-parameter network, seeded, for a few
minutes on a 2-core CPU, on images of saturated shapes over grey
backgrounds: class 0 is background and classes 1..20 are 18-degree hue
bins of a shape's colour. The cue is local, so a model trained at 128x128
also segments 512x512 images of the same generator confidently. It is a
test fixture, not a useful segmenter; nothing it produces is committed.

    python -m unet_bench.fixture --out fixture/ --steps 150
writes fixture/weights.weights.h5, fixture/images/*.png (40 images from the
same generator; export-unet --calibration-images holds every 4th one out for
its accuracy gate) and fixture.json (the training run's summary).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from unet_runtime._help import DefaultsHelpFormatter

__all__ = ["shapes_sample", "train_fixture", "main"]

NUM_CLASSES = 21


def shapes_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 RGB) and its label mask (uint8 class ids) from the shapes generator."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grey = rng.uniform(40, 215)
    img = np.full((size, size, 3), grey, np.float32) + rng.normal(0, 5, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, NUM_CLASSES))
        hue = (cls - 1 + rng.uniform(0.15, 0.85)) / 20.0
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))) * 255
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.06, 0.25, 2) * size
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[inside] = colour + rng.normal(0, 4, (int(inside.sum()), 3))
        label[inside] = cls
    return np.clip(img, 0, 255).astype(np.uint8), label


def train_fixture(steps: int = 150, batch: int = 4, size: int = 128, seed: int = 0, log=print):
    """Train the seed network (softmax head) on shapes; returns (model, summary)."""
    import keras

    from unet_export import build_vgg19_unet

    rng = np.random.default_rng(seed)
    model = build_vgg19_unet((None, None, 3), NUM_CLASSES, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0, history = time.perf_counter(), []
    for step in range(steps):
        pairs = [shapes_sample(rng, size) for _ in range(batch)]
        x = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
        y = np.stack([p[1] for p in pairs])
        loss, acc = model.train_on_batch(x, y)
        history.append((float(loss), float(acc)))
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {loss:.3f} pixel accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)")
    summary = {"steps": steps, "batch": batch, "size": size, "seed": seed, "final_loss": history[-1][0],
               "final_accuracy": float(np.mean([a for _, a in history[-10:]])), "seconds": time.perf_counter() - t0}
    return model, summary


def main(argv=None) -> int:
    """Entry point: train and write the fixture folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(prog="python -m unet_bench.fixture", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument("--steps", type=int, default=150, help="training steps")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--size", type=int, default=128, help="training image size")
    p.add_argument("--image-size", type=int, default=512, help="size of the calibration/held-out images")
    p.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = p.parse_args(argv)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    model, summary = train_fixture(args.steps, args.batch, args.size, args.seed,
                                   log=lambda s: print(s, file=sys.stderr, flush=True))
    model.save_weights(args.out / "weights.weights.h5")
    rng = np.random.default_rng(args.seed + 99)
    (args.out / "images").mkdir(exist_ok=True)
    for i in range(40):
        img, _ = shapes_sample(rng, args.image_size)
        Image.fromarray(img).save(args.out / "images" / f"{i:03d}.png")
    (args.out / "fixture.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
