"""Reduced-precision variants of the clean fp32 graph (library calls only).

fp16 uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``):
it is maintained with the runtime it targets and, unlike
onnxconverter-common's, knows that ``Resize``'s ``scales`` input must stay
float32 (the other converter either wraps every Resize in Casts or
makes the scales fp16, which is invalid).

I/O types of an fp16 model: the input stays float32 and probabilities/logits
come out float32 (``keep_io_types``), so callers need not care about the
precision inside; the argmax head outputs uint8 whatever the precision.
"""

from __future__ import annotations

import logging

from .errors import ConfigError

__all__ = [
    "to_fp16",
    "to_int8",
    "calibrate",
    "calibration_session",
    "CALIBRATION_METHODS",
    "CALIBRATION_CHUNK",
    "INT8_OPS",
]

log = logging.getLogger(__name__)

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
# pair (``bench-unet lab profile`` shows them), and the ReLU before each Resize
# keeps that Resize in float.
# Add, DepthToSpace, Transpose and Reshape appear when the decoder upsampling is folded (fold.py).
INT8_OPS = (
    "Conv",
    "Relu",
    "MaxPool",
    "Resize",
    "Concat",
    "Add",
    "DepthToSpace",
    "Transpose",
    "Reshape",
)


#: Images per ``collect_data`` call of ONNX Runtime's calibrator. Its histogram calibrators (percentile,
#: entropy) keep every calibrated tensor of every image of a call until the call ends (~1.5 GB per 512x512
#: image for this network): one image per call bounds that to one image, and the ranges and histograms are
#: merged across calls by the calibrator itself (``merge_range``, ``HistogramCollector.collect``).
CALIBRATION_CHUNK = 1


def calibration_session(model_path: str, providers=None):
    """The ONNX Runtime session the calibrator runs its augmented model in, set up for bounded memory.

    ORT's calibrator adds a ReduceMin/ReduceMax (or a histogram output) for
    every tensor to calibrate, and its own session (``CalibraterBase.
    create_inference_session``: default options) runs them after the whole
    network, with the arena on: 3.7 GB above the model at 512x512, where the
    fp32 model itself needs 0.5. With the priority-based execution order
    each reduction runs as soon as its tensor exists, and without the arena
    each tensor is freed when its last reader ran: 0.5 GB, and 25% faster
    (benchmarks/results/export-cost.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # what the calibrator uses
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path, opts, providers=providers or ["CPUExecutionProvider"])


def calibrate(model_path, calibration_inputs, *, method: str, workdir):
    """Activation ranges of the model at ``model_path`` over ``calibration_inputs`` (ORT's calibrators).

    Runs ONNX Runtime's calibrator (``create_calibrator``: the same
    calibrator and settings ``quantize_static`` uses) in
    :func:`calibration_session`, ``CALIBRATION_CHUNK`` images per
    ``collect_data`` call.

    Returns:
        ORT's ``TensorsData``, as ``quantize_static`` would compute it.
    """
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import create_calibrator

    inputs = list(calibration_inputs)
    if not inputs:
        raise ConfigError("INT8 calibration needs at least one image")

    class Chunk(CalibrationDataReader):
        def __init__(self, batches, name):
            self._it, self._name = iter(batches), name

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {self._name: batch}

    calibrator = create_calibrator(
        Path(model_path),
        INT8_OPS,
        augmented_model_path=str(Path(workdir, "augmented.onnx")),
        calibrate_method=_methods()[method],
    )
    # Its own session (default options) is replaced before any image runs.
    calibrator.infer_session = calibration_session(
        calibrator.augmented_model_path, calibrator.execution_providers
    )
    name = calibrator.infer_session.get_inputs()[0].name
    for start in range(0, len(inputs), CALIBRATION_CHUNK):
        calibrator.collect_data(Chunk(inputs[start : start + CALIBRATION_CHUNK], name))
    ranges = calibrator.compute_data()
    del calibrator
    return ranges


def to_int8(
    model,
    calibration_inputs,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    nodes_to_exclude=(),
    float_ops=(),
):
    """Static INT8 quantization (QDQ) with ONNX Runtime's quantization tool.

    Args:
        model: the clean fp32 graph (an fp16 graph cannot be quantized: its
            ranges were already rounded; quantize the fp32 export).
        calibration_inputs: model-ready input batches (the runtime's own
            pre-processing of the calibration images); an iterable, read once.
        method: activation range estimation, ``minmax`` | ``percentile`` | ``entropy``.
        per_channel: one weight scale per output channel (conv kernels vary a
            lot between channels; per-tensor scales lose the small ones).
        nodes_to_exclude: node names kept in float.
        float_ops: op types of INT8_OPS kept in float (``--int8-float-ops``): e.g.
            ``Add`` for a transformer's residual stream, whose outliers 8 bits
            cannot hold next to its typical values.

    Activations are uint8 and weights int8 (U8S8): the fast path of x86
    VNNI in ONNX Runtime's CPU kernels (its quantization docs). The ranges
    come from :func:`calibrate` and reach ``quantize_static`` through its
    calibration cache (``calibration_cache_path``), so the calibration runs
    with bounded memory and the quantization itself is ORT's, unchanged.
    """
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check_quantizable(model, method)
    with tempfile.TemporaryDirectory(prefix="unet-int8-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        cache = Path(tmp, "ranges.json")
        onnx.save(model, str(src))
        # ORT's recommended pre-processing: shape inference + graph optimization.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src.unlink()
        save_tensors_data(calibrate(pre, calibration_inputs, method=method, workdir=tmp), cache)
        quantize_static(
            str(pre),
            str(dst),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_methods()[method],
            nodes_to_exclude=list(nodes_to_exclude),
            op_types_to_quantize=[op for op in INT8_OPS if op not in set(float_ops)],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=cache,
        )
        quantized = onnx.load(str(dst))
    log.info(
        "precision: int8 QDQ (%s calibration, per-channel=%s, excluded %s)",
        method,
        per_channel,
        list(nodes_to_exclude),
    )
    return quantized


def _check_quantizable(model, method: str) -> None:
    """An fp32 graph, a known calibration method and an ONNX Runtime that takes ranges computed beforehand."""
    import inspect

    import onnx
    from onnxruntime.quantization import quantize_static

    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise ConfigError(
            "this model is fp16: INT8 quantization needs the fp32 graph; export with --precision int8 from Keras"
        )
    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}"
        )
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise ConfigError(
            "INT8 export needs onnxruntime >= 1.32 (its quantize_static takes calibration ranges "
            "computed beforehand): pip install -U onnxruntime"
        )


def _methods():
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
