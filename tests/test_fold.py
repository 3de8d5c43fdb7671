"""The decoder fold (unet_export.fold): its kernel algebra, its pattern matching, its bad input."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from unet_export import ConfigError, ExportConfig
from unet_export.errors import ConversionError
from unet_export.fold import _phase_kernels, fold_upsample_convs, transpose_kernel


def _conv3x3_same(x, w):
    """Plain numpy reference: x [C, H, W], w [O, C, 3, 3], zero padding 1."""
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy : dy + h, dx : dx + wd])
    return out


def test_phase_kernels_equal_conv_over_upsampled_input():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 5, 4)), rng.standard_normal((2, 3, 3, 3))
    ref = _conv3x3_same(x.repeat(2, 1).repeat(2, 2), w)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    for (i, j), k in _phase_kernels(w).items():
        # phase (i, j) at (h, w) reads rows h-1+i..h+i and cols w-1+j..w+j of x (padded by 1).
        got = sum(
            np.einsum("oc,chw->ohw", k[:, :, a, b], xp[:, i + a : i + a + 5, j + b : j + b + 4])
            for a in range(2)
            for b in range(2)
        )
        np.testing.assert_allclose(got, ref[:, i::2, j::2], rtol=1e-10, atol=1e-10)


def test_transpose_kernel_equals_conv_over_upsampled_input():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 5, 4)), rng.standard_normal((2, 3, 3, 3))
    ref = _conv3x3_same(x.repeat(2, 1).repeat(2, 2), w)
    kt = transpose_kernel(w)  # [I, O, 4, 4], stride 2, pads 1
    full = np.zeros((2, 2 * 5 + 2, 2 * 4 + 2))  # output before cropping the pads
    for h in range(5):
        for v in range(4):
            full[:, 2 * h : 2 * h + 4, 2 * v : 2 * v + 4] += np.einsum(
                "c,cokl->okl", x[:, h, v], kt
            )
    np.testing.assert_allclose(full[:, 1:-1, 1:-1], ref, rtol=1e-10, atol=1e-10)


def _stage_model(
    mode="nearest",
    kernel=3,
    scales=(1, 1, 2, 2),
    up_first=False,
    same_upper=False,
    bias=True,
    fixed=False,
):
    """One decoder stage: Resize(x) and skip concatenated, a Conv, a Relu."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 5, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    resize_attrs = dict(mode=mode, coordinate_transformation_mode="asymmetric")
    if mode == "nearest":
        resize_attrs["nearest_mode"] = "floor"
    cat_inputs = ["up", "skip"] if up_first else ["skip", "up"]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], **resize_attrs),
        helper.make_node("Concat", cat_inputs, ["cat"], axis=1),
        helper.make_node(
            "Conv",
            ["cat", "w", "b"] if bias else ["cat", "w"],
            ["pre"],
            name="stage",
            **(dict(auto_pad="SAME_UPPER") if same_upper else dict(pads=[kernel // 2] * 4)),
        ),
        helper.make_node("Relu", ["pre"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stage",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, ["n", 3] + ([5, 7] if fixed else ["h", "w"])
            ),
            helper.make_tensor_value_info(
                "skip", TensorProto.FLOAT, ["n", 2] + ([10, 14] if fixed else ["h2", "w2"])
            ),
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, ["n", 4] + ([10, 14] if fixed else ["h2", "w2"])
            )
        ],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array(scales, np.float32), "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x, skip):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "skip": skip}
    )[0]


@pytest.mark.parametrize("form", ["convtranspose", "phase", "phase_nhwc"])
@pytest.mark.parametrize(
    "variant",
    [{}, dict(up_first=True), dict(same_upper=True, bias=False), dict(fixed=True)],
    ids=["skip-first", "up-first", "same_upper-no-bias", "fixed-size"],
)
def test_fold_is_the_same_function(form, variant):
    rng = np.random.default_rng(3)
    x, skip = (
        rng.standard_normal((2, 3, 5, 7)).astype(np.float32),
        rng.standard_normal((2, 2, 10, 14)).astype(np.float32),
    )
    ref = _run(_stage_model(**variant), x, skip)
    folded, n = fold_upsample_convs(_stage_model(**variant), form)
    onnx.checker.check_model(folded, full_check=True)
    ops = [node.op_type for node in folded.graph.node]
    assert n == 1 and "Resize" not in ops and ops[-1] == "Relu"
    if form.startswith("phase"):
        # The NHWC interleave needs a static size; otherwise the stage falls back to DepthToSpace.
        nhwc = form == "phase_nhwc" and variant.get("fixed", False)
        assert ("DepthToSpace" in ops) != nhwc and (ops.count("Transpose") == 3) == nhwc, ops
    # replaced, not left behind
    assert {i.name for i in folded.graph.initializer}.isdisjoint({"w", "scales"})
    got = _run(folded, x, skip)
    assert got.shape == ref.shape == (2, 4, 10, 14)
    # fp32, another summation order: measured at most 2.03e-6 (values up to 26, 2-core Xeon); 3x that.
    np.testing.assert_allclose(got, ref, rtol=0, atol=6e-6)


@pytest.mark.parametrize(
    "variant", [dict(mode="linear"), dict(kernel=1), dict(scales=(1, 1, 3, 3))]
)
def test_other_stages_are_left_alone(variant):
    model = _stage_model(**variant)
    before = model.SerializeToString()
    folded, n = fold_upsample_convs(model, "phase")
    assert n == 0 and folded.SerializeToString() == before


def test_bad_form():
    with pytest.raises(ConversionError, match="'stride' is not one of off, convtranspose, phase"):
        fold_upsample_convs(_stage_model(), "stride")
    with pytest.raises(
        ConfigError, match="--fold-upsample 'fast' is not supported; choose one of auto, off"
    ):
        ExportConfig(fold_upsample="fast").validate()


def test_auto_is_the_fold_measured_fastest_per_precision():
    assert ExportConfig(precision="int8").fold_form() == "phase_nhwc"
    assert ExportConfig(precision="fp16").fold_form() == "convtranspose"
    assert ExportConfig(precision="fp32").fold_form() == "off"
    assert (
        ExportConfig(precision="fp32", fold_upsample="convtranspose").fold_form() == "convtranspose"
    )


def test_fold_keeps_an_fp16_graph_fp16(narrow_export):
    """bench-unet folds fp16 models exported without the fold (on a machine without TensorFlow)."""
    path = narrow_export(precision="fp16", layout="nchw", head="logits", fold_upsample="off").path
    x = np.random.default_rng(4).random((1, 3, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    folded, n = fold_upsample_convs(onnx.load(str(path)), "convtranspose")
    onnx.checker.check_model(folded, full_check=True)
    assert n == 4
    assert {t.data_type for t in folded.graph.initializer if "fold_" in t.name} == {
        TensorProto.FLOAT16
    }
    got = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    # fp16 rounding of the summed taps only: measured rel L2 1.9e-4 (2-core Xeon); 3x that
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 6e-4
    # measured: every argmax the same; one near-tie in a thousand may round the other way on another CPU
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_export_warns_when_nothing_folds(confident_weights, tmp_path, monkeypatch):
    import unet_export.fold as fold_mod
    from unet_export import export_model

    monkeypatch.setattr(fold_mod, "fold_upsample_convs", lambda model, form: (model, 0))
    lines = []
    cfg = ExportConfig(
        input_size=(32, 32),
        num_classes=5,
        width_multiplier=0.125,
        weights=str(confident_weights),
        fold_upsample="phase",
    )
    result = export_model(cfg, tmp_path / "m.onnx", progress=lines.append)
    assert result.report["fold_upsample"] == {"form": "phase", "stages": 0}
    assert any(
        line.startswith("WARNING: --fold-upsample phase: no decoder stage matched")
        for line in lines
    ), lines
    assert result.report["verification"]["passed"]  # unfolded, still verified
