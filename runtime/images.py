"""Pre- and post-processing in pure numpy: validation, resize, pad, normalize, palette.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``. Model inputs are
``float32`` ``(N, H, W, 3)`` (NHWC) or ``(N, 3, H, W)`` (NCHW). Masks are
``uint8`` ``(H, W)`` class ids; probabilities are ``float32`` ``(H, W, C)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputImageError

__all__ = [
    "validate_image",
    "resize_image",
    "resize_bilinear",
    "resize_backend",
    "set_resize_backend",
    "resize_nearest",
    "pad_to_multiple",
    "normalization",
    "to_model_input",
    "channels_last",
    "softmax",
    "voc_palette",
    "overlay",
    "DEFAULT_MAX_PIXELS",
]

#: Larger images are refused: a 64-megapixel frame already needs ~0.8 GB of
#: float32 input and far more for activations. Configurable per Segmenter.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def validate_image(
    image, index: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Check that ``image`` is an RGB uint8 ``(H, W, 3)`` array within the pixel limit.

    Raises:
        InputImageError: naming the bad dtype/shape/size, what is allowed, and the fix.
    """
    where = f"image {index}" if index is not None else "image"
    if not isinstance(image, np.ndarray):
        raise InputImageError(
            f"{where} is a {type(image).__name__}, not a numpy array; pass np.asarray(pil_image.convert('RGB'))"
        )
    if image.dtype != np.uint8:
        conversions = {
            "f": "scale floats to 0..255 and use .astype(np.uint8)",
            "u": f"keep the top 8 bits: (image >> {8 * image.dtype.itemsize - 8}).astype(np.uint8)",
            "i": "clip to 0..255 and use .astype(np.uint8)",
            "b": "a boolean mask is not an image; pass (mask * 255).astype(np.uint8) stacked to 3 channels",
        }
        kind = image.dtype.kind
        hint = f" ({conversions[kind]})" if kind in conversions else ""
        raise InputImageError(f"{where} has dtype {image.dtype}; only uint8 RGB is allowed{hint}")
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else None
        if image.ndim == 2 or channels == 1:
            extra = "grayscale: stack it to 3 channels"
        elif image.ndim == 4:
            extra = "a batch of images: pass them as a list of (H, W, 3) arrays (list(batch))"
        elif channels is not None and image.shape[0] == 3:
            extra = "it looks channels-first (C, H, W): pass image.transpose(1, 2, 0)"
        elif channels == 4:
            extra = "RGBA: drop the alpha channel (image[..., :3])"
        else:
            extra = "convert it to RGB"
        raise InputImageError(
            f"{where} has shape {image.shape}; only (H, W, 3) RGB is allowed; {extra}"
        )
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise InputImageError(f"{where} has shape {image.shape}: it is empty; H and W must be >= 1")
    if h * w > max_pixels:
        raise InputImageError(
            f"{where} has {h}x{w} = {h * w:,} pixels, more than the limit of {max_pixels:,}; downscale it or raise max_pixels"
        )
    return image


def _source_coords(out_size: int, in_size: int):
    # Half-pixel centres (as cv2/PIL/tf.image.resize do), clamped at the edges.
    scale = in_size / out_size
    x = (np.arange(out_size, dtype=np.float32) + 0.5) * scale - 0.5
    x = np.clip(x, 0, in_size - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (x - lo).astype(np.float32)


def _lerp(
    array: np.ndarray, lo: np.ndarray, hi: np.ndarray, frac: np.ndarray, axis: int
) -> np.ndarray:
    """``array[lo] + (array[hi] - array[lo]) * frac`` along ``axis``, float32, in two arrays of the output's size."""
    shape = [1] * array.ndim
    shape[axis] = -1
    # a fresh array: safe to update in place
    out = np.take(array, hi, axis=axis).astype(np.float32, copy=False)
    low = np.take(array, lo, axis=axis).astype(np.float32, copy=False)
    out -= low
    out *= frac.reshape(shape)
    out += low
    return out


#: The bilinear resize: "opencv" (cv2.resize, when opencv-python is installed) or "numpy"; None: not chosen yet.
_backend: str | None = None
#: OpenCV resizes at most this many channels at once (CV_CN_MAX).
_CV_MAX_CHANNELS = 512


def set_resize_backend(name: str) -> None:
    """Choose the host's bilinear resize: ``"opencv"``, ``"numpy"``, or ``"auto"`` (OpenCV when it imports).

    OpenCV's ``INTER_LINEAR`` uses the same half-pixel sampling and was 18x
    faster for a 1080p frame to 512x512 and 6x for probabilities on a
    2-core CPU (benchmarks/results/frames-cpu.md). It rounds uint8 images
    in fixed point, so their values can differ from numpy's by one grey
    level (as PIL's do), and float32 ones by ~5e-5; masks are resized in
    numpy either way (OpenCV's exact nearest mode picks other rows).

    Raises:
        ValueError: an unknown name, or ``"opencv"`` without OpenCV installed.
    """
    global _backend
    if name == "auto":
        _backend = None
        return
    if name not in ("opencv", "numpy"):
        raise ValueError(f"resize backend {name!r} is not one of 'auto', 'opencv', 'numpy'")
    if name == "opencv" and _cv2() is None:
        raise ValueError(
            "resize backend 'opencv' needs OpenCV: pip install opencv-python-headless (the 'opencv' extra)"
        )
    _backend = name


def resize_backend() -> str:
    """The bilinear resize in use: ``"opencv"`` or ``"numpy"`` (``auto`` resolved on first call)."""
    global _backend
    if _backend is None:
        _backend = "opencv" if _cv2() is not None else "numpy"
    return _backend


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` image to ``(height, width, 3)`` uint8 (rounded, as PIL/OpenCV do)."""
    if image.shape[:2] == (height, width):
        return image
    if resize_backend() == "opencv":
        return _cv2().resize(
            np.ascontiguousarray(image), (width, height), interpolation=_cv2().INTER_LINEAR
        )
    return np.clip(np.rint(_resize_numpy(image, height, width)), 0, 255).astype(np.uint8)


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(H, W[, C])`` to ``(height, width[, C])``, float32 out (half-pixel centres, edges clamped).

    With the OpenCV backend (see :func:`set_resize_backend`) for up to 512
    channels, else in numpy: separable, one axis then the other, the pass
    that leaves the smaller intermediate first; gathering before converting
    means a large uint8 photo is never converted to float32 whole.
    """
    if array.shape[:2] == (height, width):
        return array.astype(np.float32, copy=False)
    channels = array.shape[2] if array.ndim == 3 else 1
    if resize_backend() == "opencv" and channels <= _CV_MAX_CHANNELS:
        cv2 = _cv2()
        return cv2.resize(
            np.ascontiguousarray(array, np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
    return _resize_numpy(array, height, width)


def _resize_numpy(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The numpy bilinear resize (see :func:`resize_bilinear`)."""
    in_h, in_w = array.shape[:2]
    y0, y1, fy = _source_coords(height, in_h)
    x0, x1, fx = _source_coords(width, in_w)
    if height * in_w <= in_h * width:  # rows first leaves (height, W) in between
        return _lerp(_lerp(array, y0, y1, fy, 0), x0, x1, fx, 1)
    return _lerp(_lerp(array, x0, x1, fx, 1), y0, y1, fy, 0)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (for masks: no new class ids)."""
    if array.shape[:2] == (height, width):
        return array
    rows = np.minimum(
        ((np.arange(height) + 0.5) * array.shape[0] / height).astype(np.intp), array.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(width) + 0.5) * array.shape[1] / width).astype(np.intp), array.shape[1] - 1
    )
    return array[rows][:, cols]


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad ``(H, W, C)`` at the bottom and right to multiples of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)))


def normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(scale, shift)`` per channel with ``(x/255 - mean)/std == x * scale + shift``.

    One definition for both sides: export-unet writes these constants into a
    ``--input-dtype uint8`` model's graph (a Mul and an Add), and
    :func:`to_model_input` applies them on the host for a float32-input model.
    """
    mean64, std64 = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (1.0 / (255.0 * std64)).astype(np.float32), (-mean64 / std64).astype(np.float32)


def to_model_input(
    images: Sequence[np.ndarray], mean, std, layout: str, dtype=np.float32
) -> np.ndarray:
    """Stack same-size ``(H, W, 3)`` uint8 images, normalize ``(x/255 - mean)/std``, lay out as NHWC or NCHW.

    The normalization is computed as ``x * scale + shift`` in float32, the
    same operations a ``--input-dtype uint8`` model runs in its graph, so a
    float32-input and a uint8-input model see bit-identical inputs. Each image
    is converted straight into its slot of the output (one pass, with the
    NCHW transpose folded in), then scaled in place. For a single NHWC uint8
    image nothing is copied at all: the model gets a view of the image.
    (A per-channel lookup table through ``np.take`` into strided slices is
    slower: the gather cannot vectorize as the multiply-add does.)
    """
    first = images[0]
    for i, x in enumerate(images):
        if x.dtype != np.uint8 or x.shape != first.shape:
            raise InputImageError(
                f"to_model_input needs same-size uint8 images; image {i} is {x.dtype} {x.shape}, "
                f"image 0 is {first.dtype} {first.shape}"
            )
    n, (h, w) = len(images), first.shape[:2]
    nchw = layout == "nchw"
    if dtype == np.uint8 and not nchw and n == 1 and first.flags.c_contiguous:
        return first[None]  # the model normalizes inside its graph, and reads the image as it is
    out = np.empty(
        (n, 3, h, w) if nchw else (n, h, w, 3), np.uint8 if dtype == np.uint8 else np.float32
    )
    for i, x in enumerate(images):
        out[i] = x.transpose(2, 0, 1) if nchw else x
    if dtype == np.uint8:
        return out
    scale, shift = normalization(mean, std)
    if nchw:
        out *= scale[:, None, None]
        out += shift[:, None, None]
    else:
        # Rows of W*3 values with the constants tiled along them: a 3-long broadcast axis is slow in
        # numpy.
        rows = out.reshape(n * h, w * 3)
        rows *= np.tile(scale, w)
        rows += np.tile(shift, w)
    return out if dtype == np.float32 else out.astype(dtype)


def channels_last(batch: np.ndarray, layout: str) -> np.ndarray:
    """A model's ``(N, C, H, W)`` output as ``(N, H, W, C)`` (a view) when ``layout`` is ``nchw``; NHWC as it is.

    The inverse of the transpose :func:`to_model_input` applies to an NCHW
    model's input: the one place the runtime, the export's verification and
    the benchmarks turn an NCHW output back into images.
    """
    return batch.transpose(0, 2, 3, 1) if layout == "nchw" else batch


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (for models exported with the logits head)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def voc_palette(num_classes: int = 256) -> np.ndarray:
    """Pascal VOC's colour map: ``(num_classes, 3)`` uint8, class 0 black.

    The standard bit-interleaving construction from the VOC devkit.
    """
    palette = np.zeros((num_classes, 3), np.uint8)
    for c in range(num_classes):
        r = g = b = 0
        cid = c
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        palette[c] = (r, g, b)
    return palette


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the VOC colours of ``mask`` over ``image`` (background left as is)."""
    colours = voc_palette()[mask]
    blend = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(
        np.uint8
    )
    return np.where((mask > 0)[..., None], blend, image)
