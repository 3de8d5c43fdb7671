"""Channel padding for tensor cores (unet_export.pad): exact, only where it is invisible, refused where useless."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import NUM_CLASSES, bench_argv, run_cli
from unet_export import ConfigError, ExportConfig
from unet_export.errors import ConversionError
from unet_export.pad import PAD_LOGIT, pad_channels


def _tiny(head="argmax", classes=5, rgb=3, bias=True):
    """RGB -> Conv3x3 -> Relu -> Conv1x1 head -> ArgMax (uint8 mask) or Softmax: the reference model's two ends."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, rgb, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((classes, 4, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
    ]
    head_inputs = ["r", "w2"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b2"))
        head_inputs.append("b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", head_inputs, ["logits"], name="head"),
    ]
    if head == "argmax":
        nodes += [
            helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
            helper.make_node("Cast", ["idx"], ["y"], to=TensorProto.UINT8),
        ]
        out = helper.make_tensor_value_info("y", TensorProto.UINT8, ["n", 6, 7])
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", classes, 6, 7])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rgb, 6, 7])],
        [out],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


@pytest.mark.parametrize("bias", [True, False])
def test_argmax_model_pads_both_layers_and_keeps_every_mask_pixel(bias):
    x = np.random.default_rng(1).standard_normal((3, 3, 6, 7)).astype(np.float32)
    before = _run(_tiny(bias=bias), x)
    model, padded = pad_channels(_tiny(bias=bias))
    onnx.checker.check_model(model, full_check=True)
    assert padded == ["conv1", "head"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv1, head = (n for n in model.graph.node if n.op_type == "Conv")
    assert inits[conv1.input[1]].shape == (4, 8, 3, 3) and not inits[conv1.input[1]][:, 3:].any()
    assert inits[head.input[1]].shape == (8, 4, 1, 1) and not inits[head.input[1]][5:].any()
    assert np.all(inits[head.input[2]][5:] == PAD_LOGIT)
    assert [n.op_type for n in model.graph.node][0] == "Pad"
    np.testing.assert_array_equal(_run(model, x), before)


def test_padded_classes_never_win_even_on_all_negative_logits():
    # A head whose real logits are all very negative still picks a real class (ids 0..4).
    model = _tiny()
    for t in model.graph.initializer:
        if t.name == "b2":
            t.CopyFrom(numpy_helper.from_array(np.full(5, -6e4, np.float32), "b2"))
    x = np.zeros((1, 3, 6, 7), np.float32)
    model, _ = pad_channels(model)
    assert _run(model, x).max() < 5


def test_softmax_head_is_left_alone_and_conv1_padding_is_exact():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 7)).astype(np.float32)
    before = _run(_tiny("softmax"), x)
    model, padded = pad_channels(_tiny("softmax"))
    assert padded == ["conv1"]  # its 5 probabilities are the output: padding would show
    after = _run(model, x)
    assert after.shape == before.shape
    # measured equal to the bit (zero channels add exact zeros)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, value", [("select_last_index", 1), ("axis", 0)])
def test_argmax_where_a_padded_class_could_win_or_show_is_not_padded(name, value):
    # Last index on ties would let a padded class win a tie; another axis would not be the classes.
    model = _tiny()
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    kept = [a for a in argmax.attribute if a.name != name]
    del argmax.attribute[:]
    argmax.attribute.extend(kept + [helper.make_attribute(name, value)])
    _, padded = pad_channels(model)
    assert padded == ["conv1"]


def test_aligned_channels_are_not_touched():
    model, padded = pad_channels(_tiny(classes=8, rgb=3))
    assert padded == ["conv1"]
    model, padded = pad_channels(_tiny(classes=5), multiple=1)
    assert padded == [] and "Pad" not in [n.op_type for n in model.graph.node]


def test_graph_without_an_rgb_conv_is_refused():
    with pytest.raises(
        ConversionError, match="expected one Conv reading the 3 RGB channels, found 0"
    ):
        pad_channels(_tiny(rgb=4))


def test_int8_with_padding_is_a_config_error_naming_the_fix():
    with pytest.raises(
        ConfigError,
        match="--pad-channels aligns channels for GPU tensor cores.*drop --pad-channels",
    ):
        ExportConfig(precision="int8", pad_channels=True).validate()


def test_cli_refuses_int8_padding_before_any_work(tmp_path):
    proc = run_cli(
        "unet_export.cli",
        "--out",
        str(tmp_path / "m.onnx"),
        "--precision",
        "int8",
        "--pad-channels",
    )
    assert proc.returncode == 1 and "--pad-channels aligns channels" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_with_padding_is_verified_and_equals_the_plain_export(narrow_export, precision):
    plain = narrow_export(head="argmax", precision=precision, input_dtype="uint8")
    padded = narrow_export(
        head="argmax", precision=precision, input_dtype="uint8", pad_channels=True
    )
    assert len(padded.report["pad_channels"]) == 2 and "Pad" in padded.report["ops"]
    # Verified against Keras like any export; the fp16 conversion kept the padding (8 classes, fp16
    # weights).
    # measured: every pixel; one near-tie in a thousand may round the other way on another CPU
    assert all(c["agreement"] >= 0.999 for c in padded.report["verification"]["cases"])
    m = onnx.load(str(padded.path))
    head = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    w = next(t for t in m.graph.initializer if t.name == head.input[1])
    assert w.dims[0] == 8 and w.data_type == (
        TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    )
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a, b = (
        ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
        for r in (plain, padded)
    )
    ma, mb = a.run(None, {"input": x})[0], b.run(None, {"input": x})[0]
    assert mb.max() < NUM_CLASSES
    # fp32: bit-identical masks; fp16 may round a near-tie differently when the channel sum order
    # changes.
    assert np.mean(ma == mb) == 1.0 if precision == "fp32" else np.mean(ma == mb) >= 0.999


def test_bench_derives_padded_rows_from_plain_models(narrow_export, tmp_path):
    models = tmp_path / "m"
    models.mkdir()
    shutil.copy(narrow_export(head="softmax").path, models / "fp32-softmax-32.onnx")
    shutil.copy(narrow_export(head="argmax").path, models / "fp32-argmax-32.onnx")
    proc = run_cli(
        "unet_bench.cli",
        *bench_argv(
            tmp_path / "x",
            models,
            "--head",
            "argmax",
            "--pad-channels",
            "off",
            "on",
            "--fold-upsample",
            "auto",
            "convtranspose",
            size=32,
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "x.json").read_text())["rows"]}
    assert set(rows) == {
        "ort cpu fp32 argmax",
        "ort cpu fp32 argmax pad8",
        "ort cpu fp32 argmax fold=convtranspose",
        "ort cpu fp32 argmax fold=convtranspose pad8",
    }
    for row in rows.values():
        # Every derived model is the same function: the confident pixels all agree with the fp32
        # reference.
        assert (
            row["numerics"]["confident_pixels"] > 0
            and row["numerics"]["confident_agreement"] == 1.0
        )
