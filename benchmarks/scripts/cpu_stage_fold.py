"""One decoder stage, fp32 and INT8 on ORT's CPU EP, three ways (a probe, not part of the toolkit).

resize:    Resize(x) -> Concat(skip) -> Conv3x3 -> Relu (the seed's graph)
phase:     4 phase Conv2x2(x) -> Concat -> DepthToSpace, + Conv3x3(skip), Add, Relu (export/fold.py "phase")
phasenhwc: the same, but the interleave written as NHWC Transpose/Reshape/Transpose/Reshape with constant
           shapes, so ORT's layout transposes around the NHWC integer convs can cancel (fixed sizes only).
Prints rel L2 against the resize fp32 output and interleaved timings (medians over rounds).
Usage: python benchmarks/scripts/cpu_stage_fold.py C_UP C_SKIP C_OUT H_LOW [ROUNDS]
  e.g. 128 64 64 256 10 (the 512x512 stage of the seed network)
"""
import sys, time, numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, numpy_helper as nh, TensorProto as T

def w_phase(Wu):
    # Wu [Cout, Cup, 3, 3] -> per-dim 2-tap kernels. Row phase 0 uses rows (h-1, h) with (w0, w1+w2);
    # phase 1 uses (h, h+1) with (w0+w1, w2). Index 0,1,2 = dy -1,0,+1.
    def taps(k, axis):
        a = np.take(k, [0], axis); b = np.take(k, [1], axis); c = np.take(k, [2], axis)
        return [np.concatenate([a, b + c], axis), np.concatenate([a + b, c], axis)]
    out = {}
    for i, ki in enumerate(taps(Wu, 2)):
        for j, kij in enumerate(taps(ki, 3)):
            out[(i, j)] = kij  # [Cout, Cup, 2, 2]
    return out

def w_convT(Wu):
    # ConvTranspose weight [Cin, Cout, 4, 4], stride 2, pads 1: per dim W=[w+1, w0+w+1, w-1+w0, w-1]
    def expand(k, axis):
        a = np.take(k, [0], axis); b = np.take(k, [1], axis); c = np.take(k, [2], axis)
        return np.concatenate([c, b + c, a + b, a], axis)
    k = expand(expand(Wu, 2), 3)  # [Cout, Cup, 4, 4]
    return k.transpose(1, 0, 2, 3).copy()

def build(kind, cup, cskip, cout, H, rng):
    W = (rng.standard_normal((cout, cup + cskip, 3, 3)) * np.sqrt(2 / (9 * (cup + cskip)))).astype(np.float32)
    B = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    X = h.make_tensor_value_info("x", T.FLOAT, [1, cup, H, H]); S = h.make_tensor_value_info("skip", T.FLOAT, [1, cskip, 2 * H, 2 * H])
    Y = h.make_tensor_value_info("y", T.FLOAT, [1, cout, 2 * H, 2 * H])
    inits = [nh.from_array(B, "B")]
    if kind == "resize":
        inits += [nh.from_array(W, "W"), nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
        nodes = [h.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                 h.make_node("Concat", ["up", "skip"], ["cat"], axis=1),
                 h.make_node("Conv", ["cat", "W", "B"], ["pre"], pads=[1, 1, 1, 1]),
                 h.make_node("Relu", ["pre"], ["y"])]
    else:
        Wu, Ws = W[:, :cup], W[:, cup:]
        inits += [nh.from_array(np.ascontiguousarray(Ws), "Ws")]
        nodes = [h.make_node("Conv", ["skip", "Ws", "B"], ["ps"], pads=[1, 1, 1, 1])]
        if kind == "convT":
            inits.append(nh.from_array(w_convT(Wu), "Wt"))
            nodes.append(h.make_node("ConvTranspose", ["x", "Wt"], ["pu"], strides=[2, 2], pads=[1, 1, 1, 1]))
        else:
            ph = w_phase(Wu); outs = []
            for (i, j), k in ph.items():
                inits.append(nh.from_array(np.ascontiguousarray(k), f"Wp{i}{j}"))
                pads = [1 - i, 1 - j, i, j]  # top, left, bottom, right
                nodes.append(h.make_node("Conv", ["x", f"Wp{i}{j}"], [f"p{i}{j}"], pads=pads)); outs.append(f"p{i}{j}")
            nodes.append(h.make_node("Concat", outs, ["pc"], axis=1))
            if kind == "phase":
                nodes.append(h.make_node("DepthToSpace", ["pc"], ["pu"], blocksize=2, mode="DCR"))
            else:  # interleave written in NHWC: block copies of C channels, layout transposes cancel
                inits += [nh.from_array(np.array([0, 0, 0, 2, 2, cout], np.int64), "s6"), nh.from_array(np.array([0, 2 * H, 2 * H, cout], np.int64), "s4")]
                nodes += [h.make_node("Transpose", ["pc"], ["pc_nhwc"], perm=[0, 2, 3, 1]),
                          h.make_node("Reshape", ["pc_nhwc", "s6"], ["pc6"]),
                          h.make_node("Transpose", ["pc6"], ["pi6"], perm=[0, 1, 3, 2, 4, 5]),
                          h.make_node("Reshape", ["pi6", "s4"], ["pu_nhwc"]),
                          h.make_node("Transpose", ["pu_nhwc"], ["pu"], perm=[0, 3, 1, 2])]
        nodes += [h.make_node("Add", ["pu", "ps"], ["pre"]), h.make_node("Relu", ["pre"], ["y"])]
    g = h.make_graph(nodes, kind, [X, S], [Y], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m

def quant(m, path, rng, cup, cskip, H):
    from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader
    onnx.save(m, path + ".f.onnx")
    data = [{"x": np.maximum(rng.standard_normal((1, cup, H, H)), 0).astype(np.float32), "skip": np.maximum(rng.standard_normal((1, cskip, 2*H, 2*H)), 0).astype(np.float32)} for _ in range(4)]
    class R(CalibrationDataReader):
        def __init__(s): s.it = iter(data)
        def get_next(s): return next(s.it, None)
    quantize_static(path + ".f.onnx", path, R(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Relu", "Resize", "Concat", "Add", "DepthToSpace", "Transpose", "Reshape"],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})

def sess(path):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

import tempfile
tmpdir = tempfile.mkdtemp(prefix="stage-fold-")
cup, cskip, cout, H = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
feed = {"x": np.maximum(rng.standard_normal((1, cup, H, H)), 0).astype(np.float32), "skip": np.maximum(rng.standard_normal((1, cskip, 2*H, 2*H)), 0).astype(np.float32)}
kinds = ["resize", "phase", "phasenhwc"]
sessions = {}
for k in kinds:
    m = build(k, cup, cskip, cout, H, np.random.default_rng(1))
    p = f"{tmpdir}/{k}.onnx"; onnx.save(m, p); sessions[k] = sess(p)
    qp = f"{tmpdir}/{k}.q.onnx"; quant(m, qp, np.random.default_rng(2), cup, cskip, H); sessions[k + "-int8"] = sess(qp)
ref = sessions["resize"].run(None, feed)[0]
for k, s in sessions.items():
    y = s.run(None, feed)[0]
    print(k, "rel L2 vs resize fp32 %.2e" % (np.linalg.norm(y - ref) / np.linalg.norm(ref)))
times = {k: [] for k in sessions}
for r in range(int(sys.argv[5]) if len(sys.argv) > 5 else 7):
    for k, s in sessions.items():
        t = time.perf_counter(); s.run(None, feed); times[k].append((time.perf_counter() - t) * 1e3)
gmac = cout * (cup + cskip) * 9 * 4 * H * H / 1e9
for k, t in times.items():
    print(f"{k:14s} median {np.median(t):8.2f} ms  min {min(t):8.2f}  ({gmac:.1f} GMAC as resize)")
