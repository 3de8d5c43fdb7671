"""Pre-processing, batching and post-processing shared by every way of running the model.

The local :class:`~unet_runtime.Segmenter` and the Triton client differ only
in how one model-ready batch is run (the ``infer`` callable); everything
else (validation, resize or pad, normalization and layout, grouping by
network size, masks and probabilities at each image's own size) is here,
once.
"""

from __future__ import annotations

import numpy as np

from . import images as im
from .errors import InputImageError, SegmenterError
from .model_info import ModelInfo

__all__ = ["Pipeline"]

# infer: one model-ready batch in, the model's raw output out (Segmenter.run, TritonSegmenter's
# request).


class Pipeline:
    """Turns images into model batches and model outputs into masks, per :class:`ModelInfo`."""

    def __init__(
        self, info: ModelInfo, input_dtype=np.float32, max_pixels: int = im.DEFAULT_MAX_PIXELS
    ):
        self.info = info
        self._input_dtype = input_dtype
        self.max_pixels = max_pixels

    def predict(self, images, infer):
        """Class masks for one image or a list of images.

        Args:
            images: an RGB ``uint8`` ``(H, W, 3)`` array, or a list of them
                (sizes may differ).
            infer: runs one model-ready batch and returns the model's output.

        Returns:
            ``uint8`` ``(H, W)`` mask(s) at each image's own size; a single
            array for a single image, a list for a list.
        """
        single, batch = self._as_batch(images)
        masks = [self._to_mask(out, shape) for out, shape in self._run(batch, infer)]
        return masks[0] if single else masks

    def predict_proba(self, images, infer):
        """Class probabilities ``float32`` ``(H, W, num_classes)`` per image.

        Raises:
            SegmenterError: for a model exported with ``--head argmax``,
                which carries no probabilities.
        """
        self.require_probabilities()
        single, batch = self._as_batch(images)
        probs = [self._to_proba(out, shape) for out, shape in self._run(batch, infer)]
        return probs[0] if single else probs

    def predict_with_proba(self, images, infer):
        """``(mask, probabilities)`` per image from one model run.

        The mask is :meth:`predict`'s and the probabilities are
        :meth:`predict_proba`'s, from one model run instead of two. (Where an
        image is resized to a fixed-size model, the mask is the network's own
        argmax resized by nearest neighbour, so at a few edge pixels it can
        differ from the argmax of the bilinearly resized probabilities.)

        Raises:
            SegmenterError: for a model exported with ``--head argmax``.
        """
        self.require_probabilities()
        single, batch = self._as_batch(images)
        pairs = [
            (self._to_mask(out, shape), self._to_proba(out, shape))
            for out, shape in self._run(batch, infer)
        ]
        return pairs[0] if single else pairs

    def require_probabilities(self) -> None:
        if self.info.head == "argmax":
            raise SegmenterError(
                "this model was exported with --head argmax and outputs masks only; "
                "re-export with --head softmax or --head logits for probabilities"
            )

    def _as_batch(self, images):
        if isinstance(images, np.ndarray) and images.ndim != 4:
            # Any array that is not a batch is one image: validate_image says what is wrong with it.
            return True, [im.validate_image(images, None, self.max_pixels)]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise InputImageError(
                f"images is a {type(images).__name__}; pass an (H, W, 3) uint8 array or a list of them"
            )
        if not images:
            raise InputImageError("the batch is empty; pass at least one (H, W, 3) uint8 image")
        return False, [im.validate_image(x, i, self.max_pixels) for i, x in enumerate(images)]

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Resize (fixed-size model) or pad (size-agnostic); returns the network image and how to undo it."""
        h, w = image.shape[:2]
        if self.info.resize_in_graph:  # the model resizes (and returns masks at this size) itself
            return image, (h, w, 0, 0)
        if self.info.size is not None:  # a fixed-size model
            th, tw = self.info.size
            if (h, w) == (th, tw):  # already the model's size: no copy at all
                return image, (h, w, 0, 0)
            return im.resize_image(image, th, tw), (h, w, 0, 0)
        padded = im.pad_to_multiple(image, self.info.size_multiple)
        return padded, (h, w, h, w)

    def _run(self, batch, infer):
        """Run every image; images of one network size share a session call."""
        prepared = [self.prepare(x) for x in batch]
        groups: dict[tuple, list[int]] = {}
        for i, (net, _) in enumerate(prepared):
            groups.setdefault(net.shape[:2], []).append(i)
        results: list = [None] * len(batch)
        for _, idx in groups.items():
            x = im.to_model_input(
                [prepared[i][0] for i in idx],
                self.info.mean,
                self.info.std,
                self.info.layout,
                dtype=self._input_dtype,
            )
            out = infer(x)
            if self.info.head != "argmax":
                out = im.channels_last(out, self.info.layout)
            for j, i in enumerate(idx):
                results[i] = (out[j], prepared[i][1])
        return results

    def _to_proba(self, out: np.ndarray, undo: tuple) -> np.ndarray:
        h, w, ph, pw = undo
        p = (
            im.softmax(out.astype(np.float32))
            if self.info.head == "logits"
            else out.astype(np.float32, copy=False)
        )
        p = p[:ph, :pw] if ph else p
        return np.ascontiguousarray(im.resize_bilinear(p, h, w))

    def _to_mask(self, out: np.ndarray, undo: tuple) -> np.ndarray:
        h, w, ph, pw = undo
        mask = out if self.info.head == "argmax" else out.argmax(-1).astype(np.uint8)
        if ph:
            return np.ascontiguousarray(mask[:ph, :pw])
        return im.resize_nearest(mask, h, w)  # a no-op for a mask the graph already resized
