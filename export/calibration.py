"""Calibration and held-out images for INT8: real ones from a folder, or synthetic shapes.

Real images go through the runtime's own pre-processing (resize to the
model size, the model's normalization and layout), so calibration sees
exactly what inference will. The synthetic fallback draws random
rectangles and ellipses on smooth random backgrounds: flat regions, sharp
edges and a spread of colours, closer to photographs than uniform noise
(whose activation ranges are unlike any real input). It is a stop-gap: INT8
ranges calibrated on your own images are more accurate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = [
    "image_files",
    "load_images",
    "synthetic_images",
    "held_out_count",
    "MIN_CALIBRATION_IMAGES",
    "HELD_OUT_MIN",
    "IMAGE_SUFFIXES",
]

#: Fewer images give activation ranges set by a handful of frames; 8 is the
#: floor (the issue asks for a stated minimum), 32+ is recommended.
MIN_CALIBRATION_IMAGES = 8
#: Synthetic held-out images for the INT8 gates: at least this many (a quarter of the calibration count above 32).
HELD_OUT_MIN = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(
    folder: str | Path, *, minimum: int = MIN_CALIBRATION_IMAGES, flag: str = "--calibration-images"
) -> list[Path]:
    """The image files of ``folder`` (sorted), at least ``minimum`` of them.

    Raises:
        ConfigError: missing folder or too few images, naming ``flag``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{flag} {str(folder)!r} is not a folder; give a folder of PNG/JPEG images"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < minimum:
        need = (
            f"INT8 calibration needs at least {minimum} (32 or more recommended)"
            if minimum > 1
            else "give at least one"
        )
        raise ConfigError(
            f"{flag} {str(folder)!r} has {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); {need}"
        )
    return files


def load_images(source, height: int, width: int) -> list[np.ndarray]:
    """Read images as RGB uint8, resized to ``(height, width)`` as the runtime resizes.

    ``source``: a folder (its :func:`image_files`, at least
    ``MIN_CALIBRATION_IMAGES``) or a list of files.

    Raises:
        ConfigError: missing folder, too few images, or an unreadable file
            (named), so a typo cannot silently calibrate on nothing.
    """
    from unet_runtime.images import resize_image

    files = image_files(source) if isinstance(source, (str, Path)) else list(source)
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError(
            "reading images needs Pillow: install the 'images' extra (pip install '.[images]' in a clone)"
        ) from exc
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ConfigError(
                f"image {str(path)!r} cannot be read ({type(exc).__name__}); remove or replace it"
            ) from exc
        out.append(resize_image(rgb, height, width))
    return out


def held_out_count(calibration_count: int) -> int:
    """How many synthetic images are held out of calibration for the INT8 gates."""
    return max(HELD_OUT_MIN, calibration_count // 4)


def synthetic_images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """``count`` seeded images of random rectangles and ellipses on smooth backgrounds (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        # Smooth background: a random colour gradient plus low-amplitude noise.
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (
            (xx / max(width - 1, 1)) * rng.uniform(0, 1)
            + (yy / max(height - 1, 1)) * rng.uniform(0, 1)
        )[..., None] / 2
        img = c0 * (1 - t) + c1 * t + rng.normal(0, 6, (height, width, 3))
        for _ in range(rng.integers(2, 7)):
            colour = rng.uniform(0, 255, 3)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            img[inside] = colour + rng.normal(0, 4, (int(inside.sum()), 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images
