"""A labelled fixture: the reference model trained on generated shapes, with ground-truth masks.

Accuracy gates mean nothing on random weights, whose softmax is flat. This
trains the reference network (or a narrow one), seeded, on images of saturated
shapes over grey backgrounds: class 0 is background and classes 1..N-1 are
hue bins of a shape's colour. The cue is local, so a model trained on
small crops also segments larger images of the same generator. It is a
test fixture, not a useful segmenter; nothing it produces is committed.

Two sizes:

* the full network, for the benchmarks' accuracy columns and the INT8
  bounds (``bench-unet lab fixture --out fixture/``: ~10 minutes on 2 cores at
  64x64 crops);
* :func:`small_fixture`, for the test suite: 1/8 of the filters, 5 classes,
  64x64 crops, 300 steps (~12 s on 2 cores), pixel accuracy ~0.99.

``--out DIR`` writes DIR/weights.weights.h5, DIR/images/*.png (calibration
images), their labels in DIR/labels/*.png (class ids as grey levels, the
same stems), DIR/eval/images and DIR/eval/labels (images of another seed
to score on: ``bench-unet --images DIR/eval/images --labels DIR/eval/labels``)
and DIR/fixture.json (the training run).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_runtime.helpformat import DefaultsHelpFormatter

__all__ = [
    "shapes_sample",
    "train_fixture",
    "small_fixture",
    "SmallFixture",
    "write_labelled_images",
    "main",
]

NUM_CLASSES = 21


def shapes_sample(
    rng: np.random.Generator, size: int, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 RGB) and its label mask (uint8 class ids) from the shapes generator."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grey = rng.uniform(40, 215)
    img = np.full((size, size, 3), grey, np.float32) + rng.normal(0, 5, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    bins = num_classes - 1
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, num_classes))
        hue = (cls - 1 + rng.uniform(0.15, 0.85)) / bins
        colour = (
            np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))) * 255
        )
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.06, 0.25, 2) * size
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[inside] = colour + rng.normal(0, 4, (int(inside.sum()), 3))
        label[inside] = cls
    return np.clip(img, 0, 255).astype(np.uint8), label


def train_fixture(
    steps: int = 700,
    batch: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    num_classes: int = NUM_CLASSES,
    width_multiplier: float = 1.0,
    learning_rate: float = 3e-4,
    log=print,
):
    """Train the reference network (softmax head, size-agnostic) on shapes; returns (model, summary)."""
    import keras

    from unet_export import build_vgg19_unet

    rng = np.random.default_rng(seed)
    model = build_vgg19_unet(
        (None, None, 3), num_classes, seed=seed, width_multiplier=width_multiplier
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t0, history = time.perf_counter(), []
    for step in range(steps):
        pairs = [shapes_sample(rng, size, num_classes) for _ in range(batch)]
        x = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
        y = np.stack([p[1] for p in pairs])
        loss, acc = model.train_on_batch(x, y)
        history.append((float(loss), float(acc)))
        if log and (step % 50 == 0 or step == steps - 1):
            log(
                f"step {step + 1}/{steps}: loss {loss:.3f} pixel accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    summary = {
        "steps": steps,
        "batch": batch,
        "size": size,
        "seed": seed,
        "num_classes": num_classes,
        "width_multiplier": width_multiplier,
        "final_loss": history[-1][0],
        "final_accuracy": float(np.mean([a for _, a in history[-10:]])),
        "seconds": time.perf_counter() - t0,
    }
    return model, summary


@dataclass
class SmallFixture:
    """A trained narrow model and labelled images of its generator."""

    weights: Path
    num_classes: int
    width_multiplier: float
    images: list  # uint8 (H, W, 3)
    labels: list  # uint8 (H, W) class ids
    summary: dict


#: The suite's labelled fixture: 5 classes, 1/8 of the filters, trained on 64x64 crops.
SMALL = dict(num_classes=5, width_multiplier=0.125, steps=300, batch=8, size=64, learning_rate=3e-3)


def small_fixture(
    folder: Path, *, images: int = 12, image_size: int = 64, seed: int = 0
) -> SmallFixture:
    """Train the test suite's labelled fixture (seeded, ~12 s on 2 cores) and draw ``images`` labelled images."""
    model, summary = train_fixture(
        SMALL["steps"],
        SMALL["batch"],
        SMALL["size"],
        seed,
        num_classes=SMALL["num_classes"],
        width_multiplier=SMALL["width_multiplier"],
        learning_rate=SMALL["learning_rate"],
        log=None,
    )
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "small.weights.h5"
    model.save_weights(weights)
    rng = np.random.default_rng(seed + 99)
    pairs = [shapes_sample(rng, image_size, SMALL["num_classes"]) for _ in range(images)]
    return SmallFixture(
        weights,
        SMALL["num_classes"],
        SMALL["width_multiplier"],
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        summary,
    )


def write_labelled_images(
    folder: Path, count: int, size: int, seed: int, num_classes: int = NUM_CLASSES
) -> None:
    """``folder/images/NNN.png`` and ``folder/labels/NNN.png`` (class ids as grey levels) from the generator."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, label = shapes_sample(rng, size, num_classes)
        Image.fromarray(img).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(folder / "labels" / f"{i:03d}.png")


def main(argv=None, prog: str = "bench-unet lab fixture") -> int:
    """Entry point: train and write the fixture folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument("--steps", type=int, default=700, help="training steps")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--size", type=int, default=64, help="training crop size")
    p.add_argument(
        "--image-size", type=int, default=512, help="size of the labelled images written"
    )
    p.add_argument(
        "--images",
        type=int,
        default=40,
        help="labelled images written (calibration: every 4th is held out)",
    )
    p.add_argument(
        "--eval-images",
        type=int,
        default=16,
        help="labelled images written to OUT/eval/ from another seed (for bench-unet --images/--labels)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = p.parse_args(argv)
    model, summary = train_fixture(
        args.steps,
        args.batch,
        args.size,
        args.seed,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_weights(args.out / "weights.weights.h5")
    write_labelled_images(args.out, args.images, args.image_size, args.seed + 99)
    write_labelled_images(args.out / "eval", args.eval_images, args.image_size, args.seed + 1234)
    (args.out / "fixture.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
