"""runtime/pipeline.py without a model: what reaches ``infer``, and what comes back to the caller.

``infer`` is a stand-in that records each batch and answers with scores
made from the batch itself (the class of a pixel is its red value modulo
the class count), so every expected mask is known by hand. These are the
unit tests the mutation run of pipeline.py uses (docs/HARDENING.md);
tests/test_runtime.py runs real models.
"""

from __future__ import annotations

import numpy as np
import pytest

from unet_runtime.errors import InputImageError, SegmenterError
from unet_runtime.model_info import ModelInfo
from unet_runtime.pipeline import Pipeline

C = 3
NAMES = ("a", "b", "c")


def _info(**fields) -> ModelInfo:
    return ModelInfo(num_classes=C, class_names=NAMES, **fields)


class Infer:
    """Records every batch; returns one-hot-ish scores (or masks) of the red channel, in the model's layout."""

    def __init__(self, info: ModelInfo, scale: float = 255.0):
        self.info, self.scale, self.batches = info, scale, []

    def _classes(self, x: np.ndarray) -> np.ndarray:
        red = x[:, 0] if self.info.layout == "nchw" else x[..., 0]
        return (
            np.rint(red.astype(np.float64) * (1 if x.dtype == np.uint8 else self.scale)).astype(
                np.int64
            )
            % C
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x)
        cls = self._classes(x)
        if self.info.head == "argmax":
            return cls.astype(np.uint8)
        scores = np.eye(C, dtype=np.float32)[cls] * 0.7 + 0.1  # (N, H, W, C), sums to 1
        if self.info.head == "logits":
            scores = np.log(scores)
        return np.moveaxis(scores, -1, 1) if self.info.layout == "nchw" else scores


def _img(h: int, w: int, red: int | None = None, seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if red is not None:
        image[..., 0] = red
    return image


def _expected(image: np.ndarray) -> np.ndarray:
    return (image[..., 0].astype(np.int64) % C).astype(np.uint8)


# ------------------------------------------------------------------------ shapes
def test_one_image_gives_one_mask_a_list_gives_a_list():
    info = _info(head="argmax")  # size-agnostic, multiple 16
    pipe, infer = Pipeline(info), None
    infer = Infer(info)
    image = _img(32, 48)
    mask = pipe.predict(image, infer)
    assert isinstance(mask, np.ndarray) and mask.shape == (32, 48) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, _expected(image))
    masks = pipe.predict([image, _img(16, 16, seed=1)], infer)
    assert isinstance(masks, list) and [m.shape for m in masks] == [(32, 48), (16, 16)]
    batch = pipe.predict(np.stack([image, image]), infer)  # a 4-D array is a list of images
    assert isinstance(batch, list) and len(batch) == 2


def test_bad_batches_are_named():
    pipe = Pipeline(_info())
    with pytest.raises(InputImageError) as info:
        pipe.predict({"a": 1}, Infer(pipe.info))
    assert str(info.value) == ("images is a dict; pass an (H, W, 3) uint8 array or a list of them")
    with pytest.raises(InputImageError) as info:
        pipe.predict([], Infer(pipe.info))
    assert str(info.value) == "the batch is empty; pass at least one (H, W, 3) uint8 image"
    with pytest.raises(InputImageError, match="image 1"):
        pipe.predict([_img(16, 16), np.zeros((16, 16), np.uint8)], Infer(pipe.info))
    with pytest.raises(InputImageError, match="^image has"):
        pipe.predict(np.zeros((16, 16), np.uint8), Infer(pipe.info))
    small = Pipeline(_info(), max_pixels=100)
    assert small.max_pixels == 100
    with pytest.raises(InputImageError, match="pixels"):
        small.predict(_img(16, 16), Infer(small.info))


# ------------------------------------------------------------------------ sizes
def test_a_size_agnostic_model_gets_padded_images_and_cropped_masks():
    info = _info(head="softmax", size_multiple=16)
    infer = Infer(info)
    image = _img(20, 33)
    mask = Pipeline(info).predict(image, infer)
    assert infer.batches[0].shape == (1, 32, 48, 3)  # padded up to multiples of 16
    np.testing.assert_array_equal(mask, _expected(image))


def test_a_fixed_size_model_gets_resized_images_and_masks_at_the_images_size():
    info = _info(head="softmax", height=16, width=32)
    infer = Infer(info)
    image = _img(48, 64, red=4)  # one class everywhere: resizing keeps it
    mask = Pipeline(info).predict(image, infer)
    assert infer.batches[0].shape == (1, 16, 32, 3)
    assert mask.shape == (48, 64) and (mask == 4 % C).all()
    same = _img(16, 32, seed=2)
    np.testing.assert_array_equal(Pipeline(info).predict(same, infer), _expected(same))


def test_the_models_own_size_is_passed_without_a_copy():
    info = _info(height=16, width=32)
    image = _img(16, 32)
    net, undo = Pipeline(info).prepare(image)
    assert net is image and undo == (16, 32, 0, 0)
    net, undo = Pipeline(info).prepare(_img(8, 8))
    assert net.shape == (16, 32, 3) and undo == (8, 8, 0, 0)
    free = Pipeline(_info(size_multiple=16))
    net, undo = free.prepare(_img(20, 33))
    assert net.shape == (32, 48, 3) and undo == (20, 33, 20, 33)


def test_a_model_that_resizes_in_its_graph_gets_the_frame_as_it_is():
    info = _info(head="argmax", height=16, width=16, resize_in_graph=True, input_dtype="uint8")
    infer = Infer(info)
    image = _img(30, 50)
    mask = Pipeline(info, np.uint8).predict(image, infer)
    assert infer.batches[0].shape == (1, 30, 50, 3) and infer.batches[0].dtype == np.uint8
    np.testing.assert_array_equal(infer.batches[0][0], image)
    np.testing.assert_array_equal(mask, _expected(image))


def test_images_of_one_network_size_share_a_call_and_keep_their_order():
    info = _info(head="argmax", size_multiple=16)
    infer = Infer(info)
    images = [
        _img(16, 16, seed=0),
        _img(32, 16, seed=1),
        _img(10, 10, seed=2),
        _img(20, 16, seed=3),
    ]
    masks = Pipeline(info).predict(images, infer)
    assert sorted(b.shape[:3] for b in infer.batches) == [(2, 16, 16), (2, 32, 16)]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, _expected(image))


# ------------------------------------------------------------------------ input tensor
def test_normalization_layout_and_dtype_of_the_batch():
    info = _info(layout="nchw", mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 1.0))
    infer = Infer(info)
    image = _img(16, 16)
    Pipeline(info).predict(image, infer)
    x = infer.batches[0]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (image[..., 0] / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(x[0, 1], image[..., 1] / 255, atol=1e-6)
    raw = _info(input_dtype="uint8", head="argmax")
    infer = Infer(raw)
    Pipeline(raw, np.uint8).predict(image, infer)
    assert infer.batches[0].dtype == np.uint8
    np.testing.assert_array_equal(infer.batches[0][0], image)


# ------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_probabilities_whatever_the_head_and_layout(head, layout):
    info = _info(head=head, layout=layout, size_multiple=16)
    infer = Infer(info, scale=255.0)
    image = _img(20, 24)
    pipe = Pipeline(info)
    probs = pipe.predict_proba(image, infer)
    assert probs.shape == (20, 24, C) and probs.dtype == np.float32
    want = np.eye(C, dtype=np.float32)[_expected(image)] * 0.7 + 0.1
    np.testing.assert_allclose(probs, want, atol=1e-6)  # logits: softmax(log p) = p
    mask, probs2 = pipe.predict_with_proba(image, infer)
    np.testing.assert_array_equal(mask, _expected(image))
    np.testing.assert_allclose(probs2, want, atol=1e-6)
    pairs = pipe.predict_with_proba([image, image], infer)
    assert isinstance(pairs, list) and len(pairs) == 2
    assert isinstance(pipe.predict_proba([image], infer), list)


def test_probabilities_of_a_fixed_size_model_are_resized_bilinear():
    info = _info(head="softmax", height=16, width=16)
    probs = Pipeline(info).predict_proba(_img(32, 40, red=2), Infer(info))
    assert probs.shape == (32, 40, C) and probs.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(probs[..., 2], 0.8, atol=1e-6)


def test_an_argmax_model_has_no_probabilities():
    info = _info(head="argmax")
    pipe = Pipeline(info)
    for call in (pipe.predict_proba, pipe.predict_with_proba):
        with pytest.raises(SegmenterError) as caught:
            call(_img(16, 16), Infer(info))
        assert str(caught.value) == (
            "this model was exported with --head argmax and outputs masks only; "
            "re-export with --head softmax or --head logits for probabilities"
        )
    Pipeline(_info(head="logits")).require_probabilities()  # no error


def test_an_nchw_argmax_models_masks_are_not_transposed():
    """A mask has no class axis: only scores are moved from NCHW to channels last."""
    info = _info(head="argmax", layout="nchw", size_multiple=16)
    image = _img(16, 32)
    mask = Pipeline(info).predict(image, Infer(info))
    assert mask.shape == (16, 32)
    np.testing.assert_array_equal(mask, _expected(image))
