"""No export passes without a numeric gate, and every gate can fail.

Each precision and head is exported up to the verification step, then one
weight tensor, the first convolution's kernel, is negated in the ONNX graph (for
INT8, the scale that dequantizes it): the verification must refuse the model
and name the gate. An argmax model is caught by its logits, through the
same graph with the scores before its ArgMax as an extra output.
"""

import numpy as np
import pytest
from onnx import numpy_helper

from unet_export import ExportConfig, VerificationError
from unet_export.pipeline import STEPS, ExportState

HEADS = ("softmax", "logits", "argmax")
PRECISIONS = ("fp32", "fp16", "int8")


def _until_verify(config: ExportConfig) -> ExportState:
    state = ExportState(config=config.resolved())
    for name, step in STEPS:
        if name == "verify":
            return state
        step(state)
    raise AssertionError("no verify step")


def _negate_a_weight(model) -> str:
    """Negate conv1-1's kernel (or, in a QDQ graph, the scale its int8 kernel is dequantized with)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(
        n for n in model.graph.node if n.op_type == "Conv" and "conv1-1" in n.input[1] + n.name
    )
    name = conv.input[1]
    if name not in inits:  # QDQ: Conv <- DequantizeLinear(int8 kernel, scale, zero point)
        name = producer[name].input[1]
    tensor = inits[name]
    tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), name))
    return name


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("head", HEADS)
def test_a_perturbed_weight_fails_a_gate(precision, head, confident_weights):
    config = ExportConfig(
        input_size=(32, 32),
        num_classes=5,
        width_multiplier=0.125,
        weights=str(confident_weights),
        head=head,
        precision=precision,
        calibration_count=8,
    )
    state = _until_verify(config)
    _negate_a_weight(state.proto)
    with pytest.raises(VerificationError, match="logits rel L2") as info:
        dict(STEPS)["verify"](state)
    failed = [g["name"] for g in info.value.report["gates"] if not g["passed"]]
    assert failed and all("rel L2" in n or "mask" in n for n in failed), failed


@pytest.mark.exports
@pytest.mark.parametrize("precision, head", [("fp16", "argmax"), ("int8", "argmax")])
def test_untrained_argmax_models_still_pass_a_numeric_gate(precision, head):
    """A flat softmax (random weights) leaves no confident pixel for a mask gate: the logits gates carry it."""
    config = ExportConfig(
        input_size=(32, 32),
        num_classes=5,
        width_multiplier=0.125,
        head=head,
        precision=precision,
        calibration_count=8,
    )
    state = _until_verify(config)
    dict(STEPS)["verify"](state)
    report = state.verification
    assert report["gates"] and all(g["passed"] for g in report["gates"])
    assert any(
        "logits rel L2" in g["name"] and np.isfinite(g["value"]) and g["value"] > 0
        for g in report["gates"]
    )


def test_one_weight_off_by_one_percent_fails_the_fp32_gate(confident_weights):
    """The fp32 bound (1e-5) is tight enough that a single kernel value 1% off is refused.

    Measured on this narrow model: the largest value of the head's kernel scaled by 1.01 moves the
    logits by a relative L2 of 3.3e-3 (300x the bound), while the unchanged export sits near 1e-6.
    """
    config = ExportConfig(
        input_size=(32, 32), num_classes=5, width_multiplier=0.125, weights=str(confident_weights)
    )
    state = _until_verify(config)
    inits = {t.name: t for t in state.proto.graph.initializer}
    head = [n for n in state.proto.graph.node if n.op_type == "Conv"][-1]
    kernel = numpy_helper.to_array(inits[head.input[1]]).copy()
    flat = kernel.reshape(-1)
    i = int(np.argmax(np.abs(flat)))
    flat[i] *= 1.01  # one value of 30-odd thousand, 1% off
    inits[head.input[1]].CopyFrom(numpy_helper.from_array(kernel, head.input[1]))
    with pytest.raises(VerificationError, match="logits rel L2") as info:
        dict(STEPS)["verify"](state)
    failed = {g["name"]: g["value"] for g in info.value.report["gates"] if not g["passed"]}
    print(f"\none head weight 1% off: failed gates {failed}")
    assert any("logits rel L2" in name for name in failed), failed
