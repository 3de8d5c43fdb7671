"""Segmentation metrics in pure numpy: output error, mask agreement, pixel accuracy, mean IoU.

Used by ``export-unet``'s verification and ``bench-unet``, and useful on their
own to score masks against labels. Masks are integer class ids ``(..., H, W)``;
scores are ``(..., H, W, C)`` probabilities or logits.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COMPARE_BLOCK",
    "squared_error",
    "relative_l2",
    "compare",
    "top2_margin",
    "mask_agreement",
    "confusion_matrix",
    "pixel_accuracy",
    "mean_iou",
    "label_scores",
]


#: Elements compared per block. Whole-array float64 copies of a 2x512x512x21 output are 88 MB each,
#: which the allocator maps fresh and the kernel zero-fills on every call: 0.6-1.3 s per call where
#: blocks that stay in the CPU's cache take under 0.1 s (same float64 sums, in a different order).
COMPARE_BLOCK = 1 << 16


def squared_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """``(sum of reference**2, sum of (candidate - reference)**2, max |candidate - reference|)``, in
    float64, block by block (``COMPARE_BLOCK``): the parts of :func:`compare`, to sum over many arrays.
    """
    ref, cand = (np.ravel(a) for a in np.broadcast_arrays(reference, candidate))
    sq_ref = sq_diff = 0.0
    max_abs = np.float64(0.0)
    for start in range(0, ref.size, COMPARE_BLOCK):
        r = ref[start : start + COMPARE_BLOCK].astype(np.float64)
        d = cand[start : start + COMPARE_BLOCK].astype(np.float64) - r
        sq_ref += float(r @ r)
        sq_diff += float(d @ d)
        max_abs = np.maximum(max_abs, np.abs(d).max())
    return sq_ref, sq_diff, float(max_abs)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max absolute and relative L2 error of ``candidate`` against ``reference`` (float64 arithmetic).

    A NaN anywhere makes both figures NaN, so no bound passes it.
    """
    sq_ref, sq_diff, max_abs = squared_error(reference, candidate)
    return {"max_abs": max_abs, "rel_l2": relative_l2(sq_ref, sq_diff)}


def relative_l2(sq_ref: float, sq_diff: float) -> float:
    """sqrt(sq_diff / sq_ref): the relative L2 error from :func:`squared_error`'s sums (the absolute
    one where the reference is all zeros)."""
    return float(np.sqrt(sq_diff / sq_ref)) if sq_ref else float(np.sqrt(sq_diff))


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per pixel (over the last axis)."""
    part = np.partition(probs, -2, axis=-1)
    return part[..., -1] - part[..., -2]


def mask_agreement(ref_probs: np.ndarray, mask: np.ndarray, margin: float) -> dict:
    """Agreement of ``mask`` with argmax(``ref_probs``), over all pixels and where the top-2 margin >= ``margin``."""
    ref_mask = ref_probs.argmax(-1)
    same = ref_mask == mask
    confident = top2_margin(ref_probs) >= margin
    n_conf = int(confident.sum())
    return {
        "pixels": int(same.size),
        "agreement": float(same.mean()),
        "confident_margin": margin,
        "confident_pixels": n_conf,
        "confident_agreement": float(same[confident].mean()) if n_conf else None,
    }


def confusion_matrix(
    labels: np.ndarray, mask: np.ndarray, num_classes: int, ignore: int | None = 255
) -> np.ndarray:
    """``num_classes`` x ``num_classes`` counts (row: label, column: prediction), ``ignore`` labels left out."""
    labels = np.asarray(labels).ravel().astype(np.int64)
    mask = np.asarray(mask).ravel().astype(np.int64)
    keep = (labels >= 0) & (labels < num_classes) & (mask >= 0) & (mask < num_classes)
    if ignore is not None:
        keep &= labels != ignore
    return np.bincount(labels[keep] * num_classes + mask[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Correct pixels over all counted pixels."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def mean_iou(confusion: np.ndarray) -> float:
    """Mean intersection-over-union over the classes present in the labels or the predictions (PASCAL VOC's mIoU)."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def label_scores(labels, masks, num_classes: int, ignore: int | None = 255) -> dict:
    """Pixel accuracy and mean IoU of ``masks`` against ``labels`` (arrays or lists of them), accumulated over all."""
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        labels, masks = [labels], [masks]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for a, b in zip(labels, masks, strict=True):
        confusion += confusion_matrix(a, b, num_classes, ignore)
    return {
        "pixel_accuracy": pixel_accuracy(confusion),
        "mean_iou": mean_iou(confusion),
        "pixels": int(np.asarray(confusion).sum()),
    }
