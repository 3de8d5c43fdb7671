"""Ground-truth masks for benchmark images: ``bench-unet --labels DIR``.

A label is a PNG with the image's stem in ``DIR``: class ids as grey levels
(mode ``L``), palette indices (mode ``P``, as Pascal VOC's SegmentationClass
files and ``segment-unet``'s masks are), or the VOC colours in RGB. Pixels
of an unknown colour, and VOC's 255 border, are ignored by the scores.
Labels are resized to the benchmark size with nearest sampling, as the
runtime resizes masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_labels", "IGNORE"]

#: The label value left out of accuracy and IoU (VOC's object borders; unknown colours).
IGNORE = 255


def _from_rgb(rgb: np.ndarray) -> np.ndarray:
    """VOC colours -> class ids (IGNORE for any other colour)."""
    from unet_runtime.images import voc_palette

    palette = voc_palette(256).astype(np.int32)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    lookup = {
        int(r) << 16 | int(g) << 8 | int(b): i for i, (r, g, b) in enumerate(palette[:IGNORE])
    }
    out = np.full(code.shape, IGNORE, np.uint8)
    for value, cls in lookup.items():
        out[code == value] = cls
    return out


def load_labels(folder: str | Path, images: list[Path], size: int) -> list[np.ndarray]:
    """The label of each image (same stem, ``.png``) in ``folder``, as uint8 class ids at ``size`` x ``size``.

    Raises:
        ValueError: a missing folder or label, or an unreadable file, naming it and the fix.
    """
    from PIL import Image

    from unet_runtime.images import resize_nearest

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"--labels {str(folder)!r} is not a folder; give the folder of label PNGs (the images' stems)"
        )
    out = []
    for image in images:
        path = folder / f"{image.stem}.png"
        if not path.is_file():
            raise ValueError(
                f"--labels: {str(path)!r} is missing; every image needs a label PNG with its stem"
            )
        try:
            with Image.open(path) as img:
                if img.mode in ("L", "P"):
                    label = np.asarray(img)
                else:
                    label = _from_rgb(np.asarray(img.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"--labels: {str(path)!r} cannot be read ({type(exc).__name__})"
            ) from exc
        out.append(np.ascontiguousarray(resize_nearest(label.astype(np.uint8), size, size)))
    return out
