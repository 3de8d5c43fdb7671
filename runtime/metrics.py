"""Segmentation metrics in pure numpy: output error, mask agreement, pixel accuracy, mean IoU.

Used by ``export-unet``'s verification and ``bench-unet``, and useful on their
own to score masks against labels. Masks are integer class ids ``(..., H, W)``;
scores are ``(..., H, W, C)`` probabilities or logits.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "compare",
    "top2_margin",
    "mask_agreement",
    "confusion_matrix",
    "pixel_accuracy",
    "mean_iou",
    "label_scores",
]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max absolute and relative L2 error of ``candidate`` against ``reference`` (float64 arithmetic)."""
    ref = np.asarray(reference, np.float64)
    diff = np.asarray(candidate, np.float64) - ref
    norm = np.linalg.norm(ref)
    return {
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / norm) if norm else float(np.linalg.norm(diff)),
    }


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
