"""runtime/metrics.py on cases worked by hand: every figure the gates and benchmarks report.

Pure numpy, no model: these are the unit tests the mutation run of
metrics.py uses (docs/HARDENING.md), so each expected value is written out,
not recomputed with the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_runtime.metrics import (
    compare,
    confusion_matrix,
    label_scores,
    mask_agreement,
    mean_iou,
    pixel_accuracy,
    top2_margin,
)


def test_compare_gives_max_abs_and_relative_l2():
    ref = np.array([3.0, 4.0])  # norm 5
    got = compare(ref, np.array([3.0, 5.0]))  # diff (0, 1)
    assert got == {"max_abs": 1.0, "rel_l2": 0.2}
    # a negative difference counts by its size
    assert compare(ref, np.array([1.0, 4.0]))["max_abs"] == 2.0
    assert compare(ref, ref) == {"max_abs": 0.0, "rel_l2": 0.0}


def test_compare_against_zeros_is_the_absolute_l2():
    assert compare(np.zeros(2), np.array([3.0, 4.0])) == {"max_abs": 4.0, "rel_l2": 5.0}
    assert compare(np.zeros(0), np.zeros(0)) == {"max_abs": 0.0, "rel_l2": 0.0}


def test_compare_works_in_float64():
    """float32 inputs whose difference float32 would round away still count."""
    ref = np.full(4, 1e8, np.float32)
    got = compare(ref, ref + np.float32(8))
    assert got["max_abs"] == 8.0 and got["rel_l2"] == pytest.approx(8e-8)


def test_compare_in_blocks_is_the_whole_array_sum():
    """Inputs of several blocks, the last one partial, and the largest error in the last block."""
    from unet_runtime.metrics import COMPARE_BLOCK

    rng = np.random.default_rng(5)
    ref = rng.standard_normal((3, COMPARE_BLOCK + 7)).astype(np.float32)
    cand = ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32)
    cand[-1, -1] += 0.5
    got = compare(ref, cand)
    diff = cand.astype(np.float64) - ref
    assert got["max_abs"] == np.abs(diff).max()
    # the same float64 sums in another order: equal to ~1e-15
    want = np.linalg.norm(diff) / np.linalg.norm(ref.astype(np.float64))
    assert got["rel_l2"] == pytest.approx(want, rel=1e-12)
    # shapes broadcast as numpy does: a scalar reference against an array
    assert compare(0.0, np.array([3.0, 4.0])) == {"max_abs": 4.0, "rel_l2": 5.0}


def test_compare_a_nan_fails_every_bound():
    from unet_runtime.metrics import COMPARE_BLOCK

    cand = np.zeros(2 * COMPARE_BLOCK + 3)
    # in the second block: the first block's figures must not hide it
    cand[COMPARE_BLOCK + 7] = np.nan
    got = compare(np.ones_like(cand), cand)
    assert np.isnan(got["max_abs"]) and np.isnan(got["rel_l2"])


def test_top2_margin_per_pixel():
    probs = np.array([[[0.7, 0.2, 0.1], [0.4, 0.45, 0.15]]])
    np.testing.assert_allclose(top2_margin(probs), [[0.5, 0.05]])
    assert top2_margin(np.array([0.5, 0.5])) == 0.0


def test_mask_agreement_counts_all_and_confident_pixels():
    probs = np.array(
        [
            [0.9, 0.1],  # class 0, margin 0.8
            [0.45, 0.55],  # class 1, margin 0.1
            [0.2, 0.8],  # class 1, margin 0.6
            [0.51, 0.49],  # class 0, margin 0.02
        ]
    )
    mask = np.array([0, 0, 1, 1])  # wrong at the 2nd and 4th
    got = mask_agreement(probs, mask, margin=0.1)
    assert got == {
        "pixels": 4,
        "agreement": 0.5,
        "confident_margin": 0.1,
        "confident_pixels": 3,  # margins 0.8, 0.1 (>= counts), 0.6
        "confident_agreement": pytest.approx(2 / 3),
    }
    # a margin exactly at the bound counts (0.75 - 0.25 = 0.5 exactly in binary)
    exact = mask_agreement(np.array([[0.75, 0.25]]), np.array([1]), margin=0.5)
    assert exact["confident_pixels"] == 1 and exact["confident_agreement"] == 0.0
    assert mask_agreement(probs, mask, margin=0.9)["confident_agreement"] is None
    assert mask_agreement(probs, mask, margin=0.9)["confident_pixels"] == 0


def test_confusion_matrix_rows_are_labels_and_ignore_is_dropped():
    labels = np.array([[0, 1, 2], [2, 255, 1]])
    mask = np.array([[0, 2, 2], [1, 0, 1]])
    want = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(confusion_matrix(labels, mask, 3), want)
    assert confusion_matrix(labels, mask, 3).dtype == np.int64


def test_confusion_matrix_drops_out_of_range_ids_and_keeps_255_without_ignore():
    labels = np.array([0, 3, -1, 1, 255])
    mask = np.array([0, 0, 0, 5, 1])
    # 3 and -1 are outside 3 classes, 5 too; 255 is out of range as well, ignored or not
    np.testing.assert_array_equal(
        confusion_matrix(labels, mask, 3, ignore=None), [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    )
    # with 256 classes, 255 is a class unless ignored
    assert confusion_matrix(labels, mask, 256, ignore=None)[255, 1] == 1
    assert confusion_matrix(labels, mask, 256)[255, 1] == 0
    # a label equal to the class count is out of range
    assert confusion_matrix(np.array([2]), np.array([0]), 2).sum() == 0
    assert confusion_matrix(np.array([0]), np.array([2]), 2).sum() == 0


def test_pixel_accuracy_and_mean_iou_by_hand():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    assert pixel_accuracy(confusion) == 5 / 8
    # IoU: class 0: 3 / (3 + 1 + 0) = 0.75; class 1: 2 / (3 + 4 - 2) = 0.4; class 2: 0 / (2 + 0 - 0) = 0
    assert mean_iou(confusion) == pytest.approx((0.75 + 0.4 + 0.0) / 3)


def test_mean_iou_leaves_out_classes_absent_from_labels_and_masks():
    confusion = np.array([[2, 0, 0], [0, 0, 0], [0, 0, 1]])  # class 1 nowhere
    assert mean_iou(confusion) == 1.0
    # a class seen once and never right counts with IoU 0 (its union is 1, not 0)
    assert mean_iou(np.array([[1, 1], [0, 0]])) == pytest.approx((0.5 + 0.0) / 2)
    assert math.isnan(mean_iou(np.zeros((2, 2), np.int64)))
    assert math.isnan(pixel_accuracy(np.zeros((2, 2), np.int64)))


def test_label_scores_accumulates_over_images():
    labels = [np.array([[0, 1]]), np.array([[1, 1]])]
    masks = [np.array([[0, 0]]), np.array([[1, 1]])]
    got = label_scores(labels, masks, 2)
    # confusion [[1, 0], [1, 2]]: accuracy 3/4; IoU 1/2 and 2/3
    assert got == {
        "pixel_accuracy": 0.75,
        "mean_iou": pytest.approx((0.5 + 2 / 3) / 2),
        "pixels": 4,
    }
    one = label_scores(labels[0], masks[0], 2)  # a single 2-D array pair
    assert one["pixels"] == 2 and one["pixel_accuracy"] == 0.5
    with pytest.raises(ValueError):
        label_scores(labels, masks[:1], 2)
    # 255 (VOC's "void") is ignored unless told otherwise
    void = label_scores(np.array([[255, 0]]), np.array([[0, 0]]), 256)
    assert void["pixels"] == 1 and void["pixel_accuracy"] == 1.0
    assert label_scores(np.array([[255, 0]]), np.array([[0, 0]]), 256, ignore=None)["pixels"] == 2


def test_mask_agreement_on_images_takes_the_class_axis():
    """(H, W, C) scores: the argmax runs over the classes, not a spatial axis."""
    probs = np.array([[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]])  # 1 x 2 pixels, 3 classes: 0 and 2
    got = mask_agreement(probs, np.array([[0, 1]]), margin=0.0)
    assert got["agreement"] == 0.5 and got["pixels"] == 2
