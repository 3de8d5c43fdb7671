"""The exported graph is clean: Resize upsampling, no shape chains, few Transposes, metadata."""

import json

import onnx
import pytest

from unet_export.graph import FORBIDDEN_OPS, op_histogram
from unet_runtime.model_info import VOC_CLASSES, ModelInfo

CORE = {"Conv": 25, "Relu": 24, "MaxPool": 4, "Resize": 4, "Concat": 4}


@pytest.mark.parametrize(
    "layout, head, dynamic, transposes",
    [
        ("nhwc", "softmax", False, 2),  # one at the input, one before the NHWC output
        ("nhwc", "argmax", False, 1),  # the mask has no channel axis to move
        ("nchw", "softmax", False, 0),
        ("nchw", "argmax", True, 0),
        ("nhwc", "logits", True, 2),
    ],
)
def test_clean_op_histogram(narrow_export, layout, head, dynamic, transposes):
    cfg = dict(layout=layout, head=head)
    if dynamic:
        cfg["dynamic_size"] = True
    hist = op_histogram(onnx.load(str(narrow_export(**cfg).path)))
    for op, n in CORE.items():
        assert hist.get(op) == n, hist
    assert not FORBIDDEN_OPS & hist.keys(), hist
    assert hist.get("Transpose", 0) == transposes, hist
    head_ops = {"softmax": {"Softmax": 1}, "logits": {}, "argmax": {"ArgMax": 1, "Cast": 1}}[head]
    extra = {k: v for k, v in hist.items() if k not in CORE and k != "Transpose"}
    assert extra == head_ops, hist


def test_resize_is_nearest_asymmetric_floor_with_constant_scales(narrow_export):
    model = onnx.load(str(narrow_export(dynamic_size=True).path))
    inits = {i.name for i in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "Resize"):
        attrs = {
            a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING
        }
        assert (
            attrs["mode"] == "nearest" and attrs["coordinate_transformation_mode"] == "asymmetric"
        )
        assert attrs["nearest_mode"] == "floor"
        assert node.input[2] in inits and (len(node.input) < 4 or not node.input[3])


def test_dynamic_dims_and_io_names(narrow_export):
    model = onnx.load(str(narrow_export(dynamic_size=True, layout="nchw").path))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input" and out.name == "probabilities"
    assert (
        isinstance(dims[0], str)
        and dims[1] == 3
        and isinstance(dims[2], str)
        and isinstance(dims[3], str)
    )


def test_fp16_graph_keeps_float32_io(narrow_export):
    model = onnx.load(str(narrow_export(precision="fp16").path))
    f32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    types = {i.data_type for i in model.graph.initializer if i.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}


def test_metadata_describes_the_model(narrow_export, confident_weights):
    from unet_export.weights import sha256_file

    model = onnx.load(str(narrow_export(head="argmax", layout="nchw").path))
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_metadata(props)
    assert (info.num_classes, info.layout, info.head, info.precision) == (
        5,
        "nchw",
        "argmax",
        "fp32",
    )
    assert (info.height, info.width, info.mean, info.std) == (
        32,
        32,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
    )
    assert info.class_names == tuple(f"class_{i}" for i in range(5))
    assert info.extra["weights_sha256"] == sha256_file(confident_weights)
    assert {"tensorflow", "tf2onnx", "onnx"} <= json.loads(info.extra["versions"]).keys()


def test_voc_names_by_default():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
