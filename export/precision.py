"""Reduced-precision variants of the clean fp32 graph (library calls only).

fp16 uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``):
it is maintained with the runtime it targets and, unlike
onnxconverter-common's, knows that ``Resize``'s ``scales`` input must stay
float32 (ANCHORS: the other converter either wraps every Resize in Casts or
makes the scales fp16, which is invalid).

I/O types of an fp16 model: the input stays float32 and probabilities/logits
come out float32 (``keep_io_types``), so callers need not care about the
precision inside; the argmax head outputs uint8 whatever the precision.
"""

from __future__ import annotations

import logging

__all__ = ["to_fp16", "to_int8", "PRECISIONS", "CALIBRATION_METHODS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")

#: Softmax stays fp32: summing 21 exponentials in fp16 loses the small
#: probabilities a user may threshold on, and its cost is negligible.
_FP32_OPS = ["Softmax"]


def to_fp16(model):
    """Return an fp16 copy of ``model`` (fp32 I/O, Softmax kept in fp32)."""
    from onnxruntime.transformers import float16

    block = list(float16.DEFAULT_OP_BLOCK_LIST) + _FP32_OPS
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # The converter appends its I/O Casts at the end of the node list, which
    # breaks ONNX's topological-order rule; onnxslim re-sorts the graph (and
    # drops Cast pairs that cancel).
    from .graph import slim

    converted = slim(converted)
    log.info("precision: fp16 (fp32 I/O, fp32 %s)", ", ".join(_FP32_OPS))
    return converted


# Relu must be listed: the quantizer then folds each Conv's ReLU into the
# Conv's output range ([0, max], ORT's QDQRemovableActivation) and ORT runs
# QLinearConv -> QLinearConv directly. Without it the Conv output is
# quantized over its pre-ReLU range (half of the uint8 codes wasted on
# negatives) and every Conv is followed by a DequantizeLinear/QuantizeLinear
# pair: 6% of the INT8 run on a 2-core AVX2 CPU (ORT profiler, see
# benchmarks/results/cpu-int8-profile-2026-11-25.md), and the ReLU before each
# Resize kept that Resize in float.
# Add, DepthToSpace, Transpose and Reshape appear when the decoder upsampling is folded (fold.py).
_INT8_OPS = ["Conv", "Relu", "MaxPool", "Resize", "Concat", "Add", "DepthToSpace", "Transpose", "Reshape"]


def to_int8(model, calibration_inputs, *, method: str = "minmax", per_channel: bool = True, nodes_to_exclude=()):
    """Static INT8 quantization (QDQ) with ONNX Runtime's quantization tool.

    Args:
        model: the clean fp32 graph (an fp16 graph cannot be quantized: its
            ranges were already rounded; quantize the fp32 export).
        calibration_inputs: model-ready input batches (the runtime's own
            pre-processing of the calibration images).
        method: activation range estimation, ``minmax`` | ``percentile`` | ``entropy``.
        per_channel: one weight scale per output channel (conv kernels vary a
            lot between channels; per-tensor scales lose the small ones).
        nodes_to_exclude: node names kept in float.

    Activations are uint8 and weights int8 (U8S8): the fast path of x86
    VNNI in ONNX Runtime's CPU kernels (its quantization docs).
    """
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .errors import ConfigError

    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise ConfigError("this model is fp16: INT8 quantization needs the fp32 graph; export with --precision int8 from Keras")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration_inputs)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="unet-int8-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save(model, str(src))
        # ORT's recommended pre-processing: shape inference + graph optimization.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
            nodes_to_exclude=list(nodes_to_exclude), op_types_to_quantize=_INT8_OPS,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        quantized = onnx.load(str(dst))
    log.info("precision: int8 QDQ (%s calibration, per-channel=%s, excluded %s)", method, per_channel, list(nodes_to_exclude))
    return quantized
