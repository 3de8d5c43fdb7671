"""Tiled (sliding-window) inference: large images at native resolution, in bands of bounded memory.

A fixed-size model otherwise sees a 6000x4000 scene resized to 512x512, and
a size-agnostic one needs activations for the whole image at once. Here the
image is cut into windows of the model's size (``tile``), overlapping by
``overlap``, run ``batch`` windows per session call, and stitched:

* scores (softmax or logits heads): each window's probabilities are
  blended with ``gaussian`` weights (sigma = 1/8 of the window, as MONAI's
  ``sliding_window_inference``; pixels near a window's border count little)
  or ``constant`` ones;
* masks (argmax heads, or ``blend="deepest"``): each pixel is taken from
  the window in which it lies deepest (farthest from a window border that
  is not the image's border), so seams sit where both windows see the
  most context.

Windows start on multiples of 16 (the network's pooling grid, so a window
computes what the whole image would wherever its receptive field fits
inside it) and are taken in raster order. Rows are finished as soon as no
later window touches them, so the stitcher holds one band of ``tile`` rows
(``width x tile x classes`` float32), never the whole image: :func:`tile_bands`
yields the finished bands, and their memory does not grow with the image's
height.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from .errors import InputImageError

__all__ = ["Tiling", "TileSpec", "Band", "tile_bands", "window_starts", "BLENDS", "MAX_OVERLAP"]

BLENDS = ("gaussian", "constant", "deepest")
MAX_OVERLAP = 0.9
#: Windows start on this grid: the network pools four times by 2.
GRID = 16
#: MONAI's sigma_scale: the gaussian's sigma as a fraction of the window size.
SIGMA_SCALE = 0.125


@dataclass(frozen=True)
class Tiling:
    """How to segment an image in overlapping windows: what ``Segmenter.predict(tile=...)`` takes.

    Args:
        window: ``"model"`` (the model's own size) or ``(height, width)``,
            multiples of 16.
        overlap: fraction of a window its neighbours overlap, 0 to 0.9.
        blend: ``gaussian`` or ``constant`` weights for blending scores, or
            ``deepest`` (each pixel from the window it lies deepest in; what
            an argmax model always uses).
        batch: windows per session call (None: 8 on a GPU, 1 on the CPU).
    """

    window: Any = "model"
    overlap: float = 0.25
    blend: str = "gaussian"
    batch: int | None = None

    @classmethod
    def of(cls, tile) -> "Tiling | None":
        """``tile`` as a Tiling: None stays None, a window (``"model"`` or ``(h, w)``) gets the defaults."""
        if tile is None or isinstance(tile, Tiling):
            return tile
        return cls(window=tile)


@dataclass(frozen=True)
class TileSpec:
    """How to tile: window ``(height, width)``, ``overlap`` fraction, ``blend`` rule, windows per session call."""

    height: int
    width: int
    overlap: float = 0.25
    blend: str = "gaussian"
    batch: int = 1

    def stride(self, side: int) -> int:
        """Distance between window starts along a side of the window: (1 - overlap) of it, on the 16-pixel grid."""
        return max(GRID, int(side * (1 - self.overlap)) // GRID * GRID)


@dataclass
class Band:
    """Finished rows ``[top, top + len(mask))`` of the stitched image: the mask, and probabilities when asked."""

    top: int
    mask: np.ndarray
    probs: np.ndarray | None = None


def check_spec(
    tile,
    overlap: float,
    blend: str,
    batch: int,
    model_size: tuple[int, int] | None,
    multiple: int = GRID,
) -> TileSpec:
    """A :class:`TileSpec` from the public arguments, or :class:`InputImageError` naming the bad one and the fix."""
    if tile == "model":
        if model_size is None:
            raise InputImageError(
                "tile='model': this model is size-agnostic, so it has no window size of its own; "
                "pass tile=(H, W), e.g. (512, 512)"
            )
        tile = model_size
    try:
        h, w = (int(v) for v in tile)
    except (TypeError, ValueError) as exc:
        raise InputImageError(f"tile={tile!r} must be 'model' or (height, width)") from exc
    if min(h, w) < multiple or h % multiple or w % multiple:
        raise InputImageError(
            f"tile={tile!r}: the network pools four times, so window sides must be positive "
            f"multiples of {multiple}; use e.g. ({max(multiple, h // multiple * multiple)}, "
            f"{max(multiple, w // multiple * multiple)})"
        )
    if model_size is not None and (h > model_size[0] or w > model_size[1]):
        raise InputImageError(
            f"tile={tile!r} is larger than this model's {model_size[0]}x{model_size[1]}; "
            "use tile='model' (a smaller tile is padded to the model's size)"
        )
    if not 0 <= overlap <= MAX_OVERLAP:
        raise InputImageError(
            f"overlap={overlap!r} must lie in [0, {MAX_OVERLAP}] (0.25 is a good start)"
        )
    if blend not in BLENDS:
        raise InputImageError(f"blend={blend!r} is not one of {', '.join(BLENDS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputImageError(
            f"Tiling batch={batch!r} (windows per session call, --tile-batch) must be an integer >= 1"
        )
    return TileSpec(h, w, overlap, blend, batch)


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along a side of ``length`` (padded to the grid): every ``stride``, the last flush with the end."""
    padded = -(-length // GRID) * GRID
    if padded <= tile:
        return [0]
    starts = list(range(0, padded - tile, stride))
    return starts + [padded - tile]


def _gaussian(h: int, w: int) -> np.ndarray:
    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-0.5 * (x / (SIGMA_SCALE * n)) ** 2)

    g = np.outer(axis(h), axis(w))
    g /= g.max()
    # no zero weights: a pixel covered only by window edges still counts
    return np.maximum(g, 1e-3).astype(np.float32)


def _depth(h: int, w: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """Distance of each window pixel to the nearest window border that is not the image's border."""

    def side(n: int, first: bool, last: bool) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        d = np.full(n, 1e9, np.float32)
        if not first:
            d = np.minimum(d, i)
        if not last:
            d = np.minimum(d, n - 1 - i)
        return d

    return np.minimum(side(h, top, bottom)[:, None], side(w, left, right)[None, :])


class _Blend:
    """Scores blended with per-window weights: a band of weighted probability sums and weight sums."""

    def __init__(self, rows: int, width: int, classes: int, weight: np.ndarray):
        self.probs = np.zeros((rows, width, classes), np.float32)
        self.weights = np.zeros((rows, width), np.float32)
        self.weight = weight

    def add(self, x: int, out: np.ndarray, _depth: np.ndarray) -> None:
        w = self.weight.shape[1]
        self.probs[:, x : x + w] += out * self.weight[..., None]
        self.weights[:, x : x + w] += self.weight

    def finish(self, n: int, width: int, want_probs: bool):
        probs = self.probs[:n, :width] / self.weights[:n, :width, None]
        return probs.argmax(-1).astype(np.uint8), probs if want_probs else None

    def arrays(self) -> list[tuple[np.ndarray, float]]:
        return [(self.probs, 0.0), (self.weights, 0.0)]


class _Deepest:
    """Each pixel from the window it lies deepest in: a band of depths, masks and (when asked) probabilities."""

    def __init__(self, rows: int, width: int, classes: int, scores: bool, want_probs: bool):
        self.depth = np.full((rows, width), -1.0, np.float32)
        self.mask = np.zeros((rows, width), np.uint8)
        self.probs = np.zeros((rows, width, classes), np.float32) if want_probs else None
        self.scores = scores

    def add(self, x: int, out: np.ndarray, depth: np.ndarray) -> None:
        w = depth.shape[1]
        better = depth > self.depth[:, x : x + w]
        self.depth[:, x : x + w][better] = depth[better]
        self.mask[:, x : x + w][better] = (out.argmax(-1).astype(np.uint8) if self.scores else out)[
            better
        ]
        if self.probs is not None:
            self.probs[:, x : x + w][better] = out[better]

    def finish(self, n: int, width: int, want_probs: bool):
        return self.mask[:n, :width].copy(), None if self.probs is None else self.probs[
            :n, :width
        ].copy()

    def arrays(self) -> list[tuple[np.ndarray, float]]:
        out: list[tuple[np.ndarray, float]] = [(self.depth, -1.0), (self.mask, 0.0)]
        if self.probs is not None:
            out.append((self.probs, 0.0))
        return out


def tile_bands(
    image: np.ndarray,
    spec: TileSpec,
    run: Callable[[list], list],
    *,
    num_classes: int,
    scores: bool,
    want_probs: bool,
    progress: Callable[[int, int], None] | None = None,
    stats: dict | None = None,
) -> Iterator[Band]:
    """Tile ``image``, run the windows, stitch them; yield the finished bands top to bottom.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        spec: window size, overlap, blend, batch (:func:`check_spec`).
        run: windows (uint8 ``(h, w, 3)``, the tile's size) -> per window
            either probabilities ``(h, w, C)`` float32 (``scores``) or a
            uint8 mask ``(h, w)``.
        num_classes: C.
        scores: whether ``run`` returns probabilities (else masks).
        want_probs: also stitch and yield probabilities (needs ``scores``).
        progress: called with (windows done, windows in all) after each call.
        stats: filled with ``windows`` and ``accumulator_bytes`` (what the
            stitcher holds: one band, whatever the image's height).
    """
    H, W = image.shape[:2]
    th, tw = spec.height, spec.width
    ys, xs = window_starts(H, th, spec.stride(th)), window_starts(W, tw, spec.stride(tw))
    Hp, Wp = max(-(-H // GRID) * GRID, th), max(-(-W // GRID) * GRID, tw)
    padded = image if (Hp, Wp) == (H, W) else np.pad(image, ((0, Hp - H), (0, Wp - W), (0, 0)))
    # The band: rows [top, top + th) of the padded image.
    band: _Blend | _Deepest
    if spec.blend == "deepest" or not scores:
        band = _Deepest(th, Wp, num_classes, scores, want_probs and scores)
    else:
        band = _Blend(
            th,
            Wp,
            num_classes,
            _gaussian(th, tw) if spec.blend == "gaussian" else np.ones((th, tw), np.float32),
        )
    if stats is not None:
        stats.update(
            windows=len(ys) * len(xs), accumulator_bytes=sum(a.nbytes for a, _ in band.arrays())
        )
    total, done = len(ys) * len(xs), 0
    for row, top in enumerate(ys):
        windows = [(top, left) for left in xs]
        for first in range(0, len(windows), spec.batch):
            chunk = windows[first : first + spec.batch]
            outs = run([padded[y : y + th, x : x + tw] for y, x in chunk])
            for (y, x), out in zip(chunk, outs, strict=True):
                band.add(x, out, _depth(th, tw, y == 0, y + th >= Hp, x == 0, x + tw >= Wp))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        # rows above the next window row are finished
        bottom = ys[row + 1] if row + 1 < len(ys) else top + th
        n = min(bottom, H) - top
        if n > 0:
            mask, probs = band.finish(n, W, want_probs)
            yield Band(top, mask, probs)
        shift = min(bottom - top, th)  # the band moves down to the next window row
        for acc, empty in band.arrays():
            acc[: th - shift] = acc[shift:]
            acc[th - shift :] = empty
