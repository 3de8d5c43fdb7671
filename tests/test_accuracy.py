"""Accuracy on labelled images, per precision: a trained fixture, ground truth, and Keras beside each export.

The fixture (conftest ``labelled``) is trained on a generator with known
masks, so these are real accuracy figures, not agreement between two
untrained models. Bounds: fp32 gives Keras' masks; fp16 and INT8 keep the
fp32 model's mean IoU within a margin chosen from measurement (fp16 moved
it by 4e-5 and INT8 by 1e-5 here; the margins are ~50x and ~500x that,
small next to what a broken conversion or calibration costs: > 0.3).
"""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import VNNI
from unet_export import ExportConfig, export_model
from unet_export.verify import INT8_MASK_AGREEMENT_MIN
from unet_runtime import Segmenter
from unet_runtime.metrics import label_scores

#: How far each precision's mean IoU may fall from the fp32 export's: 3x what was measured (fp16 4.2e-5,
#: INT8 5.8e-5 below fp32, 2-core Xeon with AVX-512 VNNI); INT8 without VNNI: conftest.VNNI.
MIOU_MARGIN = {"fp32": 0.0, "fp16": 1.3e-4, "int8": 1.8e-4 if VNNI else 0.005}
#: Masks equal to Keras' on at least this share of pixels: 3x the measured disagreement (fp16 0.0014%,
#: INT8 0.073%); INT8 without VNNI: the export's own INT8 mask bound.
AGREEMENT_MIN = {"fp16": 0.99996, "int8": 0.9978 if VNNI else INT8_MASK_AGREEMENT_MIN}
#: The fixture is trained to ~0.99 pixel accuracy: below this, the fixture (not the export) is broken.
FIXTURE_ACCURACY = 0.97


@pytest.fixture(scope="module")
def keras_scores(labelled):
    from unet_export import build_vgg19_unet

    model = build_vgg19_unet(
        (None, None, 3), labelled.num_classes, width_multiplier=labelled.width_multiplier
    )
    model.load_weights(labelled.weights)
    probs = model.predict(np.stack(labelled.images).astype(np.float32) / 255, verbose=0)
    masks = list(probs.argmax(-1).astype(np.uint8))
    return masks, label_scores(labelled.labels, masks, labelled.num_classes)


@pytest.fixture(scope="module")
def exports(labelled, tmp_path_factory):
    """fp32, fp16 and INT8 (calibrated on images of the fixture's generator) exports of the fixture, argmax head."""
    from unet_bench.fixture import shapes_sample

    root = tmp_path_factory.mktemp("accuracy")
    calibration = root / "calibration"
    calibration.mkdir()
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray(shapes_sample(rng, 96, labelled.num_classes)[0]).save(
            calibration / f"{i:02d}.png"
        )
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        config = ExportConfig(
            input_size=(96, 96),
            width_multiplier=labelled.width_multiplier,
            head="argmax",
            weights=str(labelled.weights),
            precision=precision,
            calibration_images=str(calibration) if precision == "int8" else None,
        )
        out[precision] = export_model(config, root / f"{precision}.onnx")
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_accuracy_against_labels_and_keras(precision, labelled, keras_scores, exports):
    keras_masks, keras = keras_scores
    # the fixture is trained: the figures mean something
    assert keras["pixel_accuracy"] >= FIXTURE_ACCURACY, keras
    with Segmenter(exports[precision].path, providers="cpu") as seg:
        masks = seg.predict(labelled.images)
    ours = label_scores(labelled.labels, masks, labelled.num_classes)
    agreement = float(np.mean([(a == b).mean() for a, b in zip(masks, keras_masks, strict=True)]))
    if precision == "fp32":
        assert agreement == 1.0 and ours == keras, (ours, keras)
    else:
        assert ours["mean_iou"] >= keras["mean_iou"] - MIOU_MARGIN[precision], (
            precision,
            ours,
            keras,
        )
        assert agreement >= AGREEMENT_MIN[precision], agreement
    assert ours["pixel_accuracy"] >= FIXTURE_ACCURACY


def test_label_scores_count_right():
    """Pixel accuracy and mIoU from a confusion matrix, checked on a case worked by hand."""
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.uint8)
    mask = np.array([[0, 1, 1, 1], [2, 0, 0, 1]], np.uint8)
    s = label_scores(labels, mask, 3)
    # 7 counted pixels (255 ignored), 5 right. IoU: class 0 1/3, class 1 3/4, class 2 1/2.
    assert s["pixels"] == 7 and s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["mean_iou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
