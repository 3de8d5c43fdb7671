"""INT8: calibrated static quantization end to end, its accuracy gate, and bad input."""

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.conftest import VNNI
from unet_export import ConfigError, ExportConfig, VerificationError, export_model
from unet_export import verify as verify_mod
from unet_export.calibration import MIN_CALIBRATION_IMAGES, held_out_count, synthetic_images
from unet_export.graph import op_histogram
from unet_export.precision import to_int8
from unet_runtime import Segmenter


def _cfg(weights, **kw):
    base = dict(
        input_size=(64, 64),
        num_classes=5,
        width_multiplier=0.125,
        weights=str(weights),
        precision="int8",
        calibration_count=12,
    )
    base.update(kw)
    return ExportConfig(**base)


@pytest.fixture(scope="module")
def int8_export(confident_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "m.onnx"
    return export_model(_cfg(confident_weights), out)


def _gate(report, text):
    (gate,) = [g for g in report["verification"]["gates"] if text in g["name"]]
    return gate


def test_int8_end_to_end(int8_export):
    report = int8_export.report
    acc = report["verification"]["held_out"]
    assert (
        acc["images"] == held_out_count(12) == 8 and acc["confident_pixels"] > 0.3 * acc["pixels"]
    ), acc
    mask_gate = _gate(report, "mask vs fp32 graph on confident pixels")
    assert mask_gate["passed"] and mask_gate["bound"] == verify_mod.INT8_MASK_AGREEMENT_MIN
    assert (
        mask_gate["value"]
        == acc["vs_fp32"]["confident_agreement"]
        >= verify_mod.INT8_MASK_AGREEMENT_MIN
    )
    logits_gate = _gate(report, "held-out (8 images): logits rel L2 vs fp32 graph")
    assert 0 < logits_gate["value"] <= verify_mod.INT8_REL_L2
    # What was quantized is the model: the fp32 graph is held against Keras first.
    assert _gate(report, "fp32 graph before quantization")["value"] <= verify_mod.FP32_REL_L2
    # all pixels, near-ties included: measured 98.4% (VNNI); 3x the disagreement
    assert 0 < acc["vs_fp32"]["mean_iou"] <= 1 and acc["vs_fp32"]["agreement"] > (
        0.95 if VNNI else 0.9
    )
    assert int8_export.report["calibration"]["method"] == "minmax"
    hist = op_histogram(onnx.load(str(int8_export.path)))
    # int8 folds the decoder upsampling by default (fold.py): 4 stages x 4 phase convs more.
    assert int8_export.report["fold_upsample"] == {"form": "phase_nhwc", "stages": 4}
    assert (
        hist["Conv"] == 25 + 16
        and "Resize" not in hist
        and "DepthToSpace" not in hist
        and hist["Reshape"] == 8
    )
    assert hist["QuantizeLinear"] > 0 and hist["DequantizeLinear"] > 0


def test_int8_masks_agree_with_fp32_on_images_the_export_never_saw(int8_export, narrow_export):
    """Independent of the report: INT8 vs an fp32 export of the same weights, on new images, here.

    The bound is the one users are promised (>= 98% of confident pixels); measured on this narrow
    model: 99.94% of 22,619 confident pixels, while a broken calibration gives far less (the
    constant-calibration test below).
    """
    fp32 = narrow_export(input_size=(64, 64), head="softmax")
    images = synthetic_images(6, 64, 64, seed=2024)  # not the calibration or held-out images
    with (
        Segmenter(int8_export.path, providers="cpu") as q,
        Segmenter(fp32.path, providers="cpu") as f,
    ):
        pairs = f.predict_with_proba(images)
        masks = q.predict(images)
    probs = np.stack([p for _, p in pairs])
    top2 = np.sort(probs, axis=-1)[..., -2:]
    confident = (top2[..., 1] - top2[..., 0]) >= 0.05
    agree = float(np.mean((np.stack(masks) == np.stack([m for m, _ in pairs]))[confident]))
    print(f"\nint8 vs fp32 on 6 new images: {agree:.4%} of {int(confident.sum())} confident pixels")
    # measured: 92% of the pixels confident, 99.94% of them agree (VNNI); 3x the misses
    assert confident.sum() > 0.76 * confident.size
    assert agree >= (0.998 if VNNI else verify_mod.INT8_MASK_AGREEMENT_MIN)


def test_int8_relus_fold_into_the_convs(int8_export, tmp_path):
    """Each ReLU is folded into its Conv's quantized output, so ORT chains integer kernels.

    Left as float ops, every Conv would pay a DequantizeLinear/QuantizeLinear pair
    (6% of the 512x512 run on a 2-core CPU) and its output range would include the
    negatives the ReLU throws away.
    """
    import onnxruntime as ort

    assert "Relu" not in op_histogram(onnx.load(str(int8_export.path)))
    opts = ort.SessionOptions()
    # ENABLE_ALL, as the runtime runs it: the NHWC layout of the integer convs is applied at that
    # level.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(int8_export.path), opts, providers=["CPUExecutionProvider"])
    hist = op_histogram(onnx.load(str(tmp_path / "opt.onnx")))
    # every Conv (phase ones included) runs in integers
    assert hist.get("QLinearConv") == 25 + 16, hist
    # Only the graph input is quantized and only the head's logits dequantized; the fold's Add is
    # integer too.
    assert hist.get("QLinearAdd") == 4, hist
    # The NHWC interleave's transposes cancel ORT's layout transposes: one block copy per stage is
    # left. (The NHWC graph input and output need none: ORT's integer convs are NHWC already.)
    assert hist.get("Transpose", 0) == 4 and "DepthToSpace" not in hist, hist
    assert hist.get("QuantizeLinear", 0) == 1 and hist.get("DequantizeLinear", 0) <= 1, hist
    assert "Relu" not in hist, hist


def test_runtime_runs_int8(int8_export):
    with Segmenter(int8_export.path, providers="cpu") as seg:
        assert seg.info.precision == "int8"
        # What it was calibrated on travels with the model (segment-unet --info prints it).
        assert (
            seg.info.extra["calibration"]
            == "12 synthetic shape images, minmax, QDQ U8S8 per-channel"
        )
        from unet_runtime.cli import describe

        assert "\n  calibrated 12 synthetic shape images, minmax" in describe(seg)
        mask = seg.predict(np.zeros((70, 50, 3), np.uint8))
    assert mask.shape == (70, 50) and mask.max() < 5


def test_constant_calibration_fails_the_held_out_gate(confident_weights, tmp_path, monkeypatch):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(12):
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(calib / f"{i}.png")
    # Lift the logits bounds so that the held-out mask gate is what must fail.
    monkeypatch.setattr(verify_mod, "INT8_NOISE_REL_L2", 1e9)
    monkeypatch.setattr(verify_mod, "INT8_REL_L2", 1e9)
    monkeypatch.setattr(
        "unet_export.pipeline._int8_images",
        lambda config: (_read(calib), synthetic_images(4, 64, 64, seed=5), "constant"),
    )
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    with pytest.raises(
        VerificationError, match="mask vs fp32 graph on confident pixels .* is 0.*below the bound"
    ) as info:
        export_model(_cfg(confident_weights), out)
    assert (
        info.value.report["held_out"]["vs_fp32"]["confident_agreement"]
        < verify_mod.INT8_MASK_AGREEMENT_MIN
    )
    assert list(out.parent.iterdir()) == []


def _read(folder):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]


def test_calibration_folder_errors(confident_weights, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for i in range(MIN_CALIBRATION_IMAGES - 1):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(few / f"{i}.png")
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=f"at least {MIN_CALIBRATION_IMAGES}"):
        export_model(_cfg(confident_weights, calibration_images=str(few)), out)
    (few / "7.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="7.png.*cannot be read"):
        export_model(_cfg(confident_weights, calibration_images=str(few)), out)
    with pytest.raises(ConfigError, match="is not a folder"):
        export_model(_cfg(confident_weights, calibration_images=str(tmp_path / "nope")), out)
    with pytest.raises(ConfigError, match="only used with --precision int8"):
        export_model(_cfg(confident_weights, precision="fp32", calibration_images=str(few)), out)
    with pytest.raises(ConfigError, match="--calibration-count 3 is too small"):
        export_model(_cfg(confident_weights, calibration_count=3), out)
    assert not out.exists()


def test_fp16_model_cannot_be_quantized(narrow_export):
    fp16 = onnx.load(str(narrow_export(precision="fp16").path))
    with pytest.raises(ConfigError, match="needs the fp32 graph"):
        to_int8(fp16, [np.zeros((1, 32, 32, 3), np.float32)])


def test_int8_with_uint8_input(confident_weights, int8_export, tmp_path):
    """Raw pixels in, normalized in the graph, then quantized: calibrated and gated like the float-input model."""
    result = export_model(_cfg(confident_weights, input_dtype="uint8"), tmp_path / "u8.onnx")
    assert _gate(result.report, "mask vs fp32 graph on confident pixels")["passed"]
    assert (
        result.report["verification"]["held_out"]["vs_fp32"]["confident_agreement"]
        >= verify_mod.INT8_MASK_AGREEMENT_MIN
    )
    images = synthetic_images(4, 64, 64, seed=99)
    with (
        Segmenter(result.path, providers="cpu") as u8,
        Segmenter(int8_export.path, providers="cpu") as f32,
    ):
        assert u8.engine.input_spec.dtype == np.uint8
        a, b = np.stack(u8.predict(images)), np.stack(f32.predict(images))
    assert (a == b).mean() >= 0.98


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_holds_one_image_of_activations_at_a_time(
    narrow_export, tmp_path, monkeypatch, method
):
    """ORT's calibrators keep every intermediate output of a ``collect_data`` call until it ends (tens of GiB
    for 32 full-size images of this network): ``calibrate`` must hand them CALIBRATION_CHUNK (one) image per
    call, and still merge the ranges of every image."""
    from onnxruntime.quantization import calibrate as ort_calibrate

    from unet_export.precision import calibrate

    held = []  # images' worth of activations the calibrator holds at each reduction
    minmax_compute = ort_calibrate.MinMaxCalibrater.compute_data
    histogram_collect = ort_calibrate.HistogramCollector.collect

    def minmax_spy(self):
        held.append(len(self.intermediate_outputs))
        return minmax_compute(self)

    def histogram_spy(self, name_to_arr):
        held.append(max(len(v) for v in name_to_arr.values()))
        return histogram_collect(self, name_to_arr)

    monkeypatch.setattr(ort_calibrate.MinMaxCalibrater, "compute_data", minmax_spy)
    monkeypatch.setattr(ort_calibrate.HistogramCollector, "collect", histogram_spy)
    model = narrow_export()
    dims = [
        d.dim_value or 1 for d in onnx.load(model.path).graph.input[0].type.tensor_type.shape.dim
    ]
    inputs = [np.random.default_rng(i).random(dims, np.float32) for i in range(5)]
    ranges = calibrate(model.path, inputs, method=method, workdir=tmp_path)
    assert max(held) == 1, f"the calibrator held {max(held)} images' activations at once"
    assert held.count(1) == len(inputs)  # every image was collected, one per call
    assert len(list(ranges)) > 0
