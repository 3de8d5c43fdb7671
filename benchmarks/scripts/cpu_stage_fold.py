"""One decoder stage, fp32 and INT8 on ORT's CPU EP, as the seed graph and as fold.py's forms (a probe).

resize:     Resize(x) -> Concat(up, skip) -> Conv3x3 -> Relu (the seed's graph)
phase:      fold_upsample_convs(..., "phase"): phase convs, Concat, DepthToSpace, + Conv3x3(skip), Add
phase_nhwc: fold_upsample_convs(..., "phase_nhwc"): the interleave as NHWC Transpose/Reshape
Prints rel L2 against the resize fp32 output, then timings over interleaved rounds (median and min).
Usage: python benchmarks/scripts/cpu_stage_fold.py C_UP C_SKIP C_OUT H_LOW [ROUNDS]
  e.g. 128 64 64 256 10 (the 512x512 stage of the seed network)
"""

import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from unet_export.fold import fold_upsample_convs
from unet_export.precision import _INT8_OPS
from unet_runtime.segmenter import session_options


def stage(cup, cskip, cout, h):
    """The seed's stage with He-scaled random weights, fixed shapes (phase_nhwc needs them)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((cout, cup + cskip, 3, 3)) * np.sqrt(2 / (9 * (cup + cskip)))).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Concat", ["up", "skip"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w", "b"], ["pre"], name="stage", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["pre"], ["y"])]
    graph = helper.make_graph(
        nodes, "stage",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cup, h, h]),
         helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, cskip, 2 * h, 2 * h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 2 * h, 2 * h])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def feed(cup, cskip, h, rng):
    """Non-negative activations, like the ReLU outputs a stage receives."""
    return {"x": np.maximum(rng.standard_normal((1, cup, h, h)), 0).astype(np.float32),
            "skip": np.maximum(rng.standard_normal((1, cskip, 2 * h, 2 * h)), 0).astype(np.float32)}


def quantize(src, dst, cup, cskip, h):
    """The exporter's INT8 settings (QDQ, U8S8, per-channel, its op list) on 4 random calibration inputs."""
    data = iter([feed(cup, cskip, h, np.random.default_rng(2 + i)) for i in range(4)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(data, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=_INT8_OPS,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def main():
    cup, cskip, cout, h = map(int, sys.argv[1:5])
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 7
    tmp = tempfile.mkdtemp(prefix="stage-fold-")
    sessions = {}
    for form in ("off", "phase", "phase_nhwc"):
        model, _ = fold_upsample_convs(stage(cup, cskip, cout, h), form)
        name = "resize" if form == "off" else form
        path = f"{tmp}/{name}.onnx"
        onnx.save(model, path)
        quantize(path, f"{tmp}/{name}.q.onnx", cup, cskip, h)
        for suffix, p in (("", path), ("-int8", f"{tmp}/{name}.q.onnx")):
            sessions[name + suffix] = ort.InferenceSession(p, session_options(), providers=["CPUExecutionProvider"])
    x = feed(cup, cskip, h, np.random.default_rng(0))
    ref = sessions["resize"].run(None, x)[0]
    for name, s in sessions.items():
        y = s.run(None, x)[0]
        print(f"{name} rel L2 vs resize fp32 {np.linalg.norm(y - ref) / np.linalg.norm(ref):.2e}")
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, x)
            times[name].append((time.perf_counter() - t) * 1e3)
    gmac = cout * (cup + cskip) * 9 * 4 * h * h / 1e9
    for name, t in times.items():
        print(f"{name:16s} median {np.median(t):8.2f} ms  min {min(t):8.2f}  ({gmac:.1f} GMAC as resize)")


if __name__ == "__main__":
    main()
